//! Criterion benches for each stage of an offload and for the whole, on the
//! seed's `bronze_trades` shape and on a 50-column table with arrays and maps.
//!
//! ```sh
//! cargo bench -p offload-benches --bench stages            # everything
//! cargo bench -p offload-benches --bench stages -- decode  # one group
//! ```
//!
//! The input is real: both tables are generated inside ClickHouse (chdb
//! behind `testing/chdb-front`, started once) and fetched once as
//! `ArrowStream` bytes; every bench then works from memory. Throughput is
//! reported as rows/s and as bytes/s, the bytes being those of the same rows'
//! `ArrowStream` body (one yardstick for every stage).
//!
//! | group | what one iteration does |
//! |---|---|
//! | `ipc` | arrow-ipc decodes the body (no conversion): the floor under `decode` |
//! | `decode` | `ArrowStreamDecoder::decode`: IPC decode + type mapping + re-cut into 65,536-row batches, from ClickHouse's default blocks and from blocks of the batch size |
//! | `convert` | `ArrowStreamDecoder::convert` on the wire batches: the type mapping/casts alone |
//! | `parquet` | arrow-rs `ArrowWriter`, zstd-3, into memory: the encoder alone, no Iceberg; the sink's properties (`sink`) against the alternatives |
//! | `stage` | the Iceberg table's `begin` / `write` / `finish`: partition split + zstd-3 Parquet files in the table's layout, not committed |
//! | `commit` | `Staged::commit` of one staged window (two day partitions, two files) on a SQLite catalog |
//! | `memory_to_iceberg` | `Offloader::run_once` from Arrow batches in memory to a committed Iceberg table (fresh table each time), with one encoder task and with two (the sink's default on two cores) |

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use offload_benches::data::{self, DATABASE};
use offload_benches::memory::BatchSource;
use offload_core::memory::MemoryStore;
use offload_core::{
    CommitMetadata, Offloader, RunId, Sink, SourceTable, SystemClock, TableConfig, Watermark, Window,
};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::{ArrowStreamDecoder, ClickHouseSource, Compression, UInt64Mapping};
use offload_testkit::ClickHouseFront;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Rows of each table (`OFFLOAD_BENCH_ROWS` / `OFFLOAD_BENCH_WIDE_ROWS` override).
const BRONZE_ROWS: u64 = 1_000_000;
const WIDE_ROWS: u64 = 100_000;

/// One table's input, fetched once.
struct Shape {
    name: &'static str,
    rows: u64,
    /// The window's ArrowStream body (ClickHouse's default block sizes).
    body: Bytes,
    /// The same rows with the server asked for blocks of the batch size
    /// (`max_block_size`, `preferred_block_size_bytes = 0`).
    body_aligned: Bytes,
    decoder: ArrowStreamDecoder,
    /// The body as arrow-ipc decodes it (ClickHouse's types).
    wire: Vec<RecordBatch>,
    /// The body as the source yields it (target types, 65,536-row batches).
    batches: Vec<RecordBatch>,
    table: TableConfig,
    /// The largest (timestamp, sequence) position.
    high: Watermark,
}

impl Shape {
    fn throughput(&self) -> Throughput {
        Throughput::ElementsAndBytes {
            elements: self.rows,
            bytes: self.body.len() as u64,
        }
    }
}

struct Fixture {
    _front: ClickHouseFront,
    runtime: tokio::runtime::Runtime,
    shapes: Vec<Shape>,
    dir: tempfile::TempDir,
}

fn env_rows(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let front = ClickHouseFront::start();
    front.query(&format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"));
    let bronze_rows = env_rows("OFFLOAD_BENCH_ROWS", BRONZE_ROWS);
    let wide_rows = env_rows("OFFLOAD_BENCH_WIDE_ROWS", WIDE_ROWS);
    front.query(&data::bronze_ddl("bronze_trades"));
    front.query(&data::bronze_insert("bronze_trades", bronze_rows));
    front.query(&data::wide_ddl("wide"));
    front.query(&data::wide_insert("wide", wide_rows));
    for t in ["bronze_trades", "wide"] {
        front.query(&format!("OPTIMIZE TABLE {DATABASE}.{t} FINAL"));
    }

    let shapes = runtime.block_on(async {
        vec![
            // As the harness runs it: UInt64 as Iceberg long.
            shape(
                &front,
                "bronze_trades",
                "exchange_timestamp",
                "sequence_number",
                UInt64Mapping::Int64,
            )
            .await,
            // The source's defaults (UInt64 as Decimal(20, 0)).
            shape(&front, "wide", "ts", "seq", UInt64Mapping::Decimal).await,
        ]
    });
    Fixture {
        _front: front,
        runtime,
        shapes,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

async fn shape(
    front: &ClickHouseFront,
    name: &'static str,
    ts: &str,
    seq: &str,
    uint64: UInt64Mapping,
) -> Shape {
    let source = ClickHouseSource::builder(front.url())
        .database(DATABASE)
        .compression(Compression::None)
        .uint64_mapping(uint64)
        .build()
        .expect("source");
    let table = TableConfig::builder(name)
        .sink_table(format!("{DATABASE}.{name}"))
        .timestamp_column(ts)
        .sequence_column(seq)
        .build()
        .expect("table config");
    let opened = source.open_table(&table).await.expect("open table");
    let decoder = opened.decoder();
    let high = opened
        .high_watermark()
        .await
        .expect("high watermark")
        .expect("rows");

    let sql = format!(
        "SELECT {} FROM {DATABASE}.{name} ORDER BY {ts}, {seq}",
        decoder.select_list()
    );
    let body = fetch(front, &sql, &[]).await;
    let body_aligned = fetch(
        front,
        &sql,
        &[("max_block_size", "65536"), ("preferred_block_size_bytes", "0")],
    )
    .await;
    let wire = ipc_decode(&body);
    let batches = decoder.decode(body.clone()).expect("decode");
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    eprintln!(
        "{name}: {rows} rows, {} columns, {:.1} MB ArrowStream ({:.0} B/row), {} wire batches ({} with batch-size blocks)",
        decoder.schema().fields().len(),
        body.len() as f64 / 1e6,
        body.len() as f64 / rows as f64,
        wire.len(),
        ipc_decode(&body_aligned).len(),
    );
    Shape {
        name,
        rows,
        body,
        body_aligned,
        decoder,
        wire,
        batches,
        table,
        high,
    }
}

/// The ArrowStream body of `sql`, sent with the decoder's settings and `extra`.
async fn fetch(front: &ClickHouseFront, sql: &str, extra: &[(&str, &str)]) -> Bytes {
    let client = clickhouse::Client::default()
        .with_url(front.url())
        .with_compression(clickhouse::Compression::None);
    let mut query = client.query_raw(sql);
    for (k, v) in ArrowStreamDecoder::server_settings().iter().chain(extra) {
        query = query.with_setting(*k, *v);
    }
    let mut cursor = query.fetch_bytes("ArrowStream").expect("query");
    let mut body = Vec::new();
    while let Some(chunk) = cursor.next().await.expect("fetch") {
        body.extend_from_slice(&chunk);
    }
    Bytes::from(body)
}

fn ipc_decode(body: &Bytes) -> Vec<RecordBatch> {
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut buffer = arrow_buffer::Buffer::from(body.clone());
    let mut out = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer).expect("ipc") {
            out.push(batch);
        }
    }
    out
}

fn sink(fixture: &Fixture, name: &str) -> IcebergSink {
    sink_with(fixture, name, 1)
}

/// A sink on its own SQLite catalog and warehouse, with `tasks` encoder tasks.
fn sink_with(fixture: &Fixture, name: &str, tasks: usize) -> IcebergSink {
    let dir = fixture.dir.path().join(name);
    let warehouse = dir.join("warehouse");
    std::fs::create_dir_all(&warehouse).expect("warehouse dir");
    let catalog = CatalogConfig::sqlite(dir.join("catalog.db"), warehouse.to_str().expect("UTF-8 path"));
    fixture
        .runtime
        .block_on(IcebergSink::connect(
            IcebergSinkConfig::new(catalog).writer_tasks(tasks),
        ))
        .expect("sink")
}

fn benches(c: &mut Criterion) {
    let f = fixture();

    let mut g = c.benchmark_group("ipc");
    g.sample_size(20);
    for s in &f.shapes {
        g.throughput(s.throughput());
        g.bench_function(s.name, |b| b.iter(|| ipc_decode(&s.body)));
    }
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for s in &f.shapes {
        g.throughput(s.throughput());
        // ClickHouse's default blocks (8,192 rows here) are concatenated into
        // 65,536-row batches; blocks of the batch size pass through.
        for (blocks, body) in [("server_blocks", &s.body), ("batch_size_blocks", &s.body_aligned)] {
            g.bench_function(format!("{}/{blocks}", s.name), |b| {
                b.iter(|| s.decoder.decode(body.clone()).expect("decode"))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("convert");
    g.sample_size(20);
    for s in &f.shapes {
        g.throughput(s.throughput());
        g.bench_function(s.name, |b| {
            b.iter(|| {
                s.wire
                    .iter()
                    .map(|w| s.decoder.convert(w).expect("convert"))
                    .collect::<Vec<_>>()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parquet");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for s in &f.shapes {
        g.throughput(s.throughput());
        for (variant, props) in parquet_variants(s.decoder.schema(), &s.table) {
            let encode = || {
                let mut w = ArrowWriter::try_new(Vec::new(), s.decoder.schema().clone(), Some(props.clone()))
                    .expect("writer");
                for batch in &s.batches {
                    w.write(batch).expect("write");
                }
                w.into_inner().expect("close").len()
            };
            eprintln!("parquet/{}/{variant}: {:.1} MB", s.name, encode() as f64 / 1e6);
            g.bench_function(format!("{}/{variant}", s.name), |b| b.iter(encode));
        }
    }
    g.finish();

    let mut g = c.benchmark_group("stage");
    g.sample_size(10).measurement_time(Duration::from_secs(25));
    for s in &f.shapes {
        let sink = sink(&f, &format!("stage-{}", s.name));
        let schema = s.decoder.schema().clone();
        let table = f.runtime.block_on(sink.open(&s.table)).expect("open");
        f.runtime
            .block_on(table.prepare(schema.clone()))
            .expect("prepare");
        g.throughput(s.throughput());
        g.bench_function(s.name, |b| {
            b.iter_custom(|iters| {
                f.runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        let mut writer = table.begin(RunId::new(), schema.clone()).await.expect("begin");
                        for batch in &s.batches {
                            writer.write(batch.clone()).await.expect("write");
                        }
                        let staged = writer.finish().await.expect("finish");
                        total += started.elapsed();
                        staged.discard().await.expect("delete staged files");
                    }
                    total
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("commit");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for s in &f.shapes {
        // A small window across two day partitions: what a commit costs does
        // not depend on the rows, only on the files and the table's history.
        let mid = s.rows as usize / 2;
        let small: Vec<RecordBatch> = s
            .batches
            .iter()
            .scan(0usize, |at, b| {
                let start = *at;
                *at += b.num_rows();
                Some((start, b))
            })
            .filter_map(|(start, b)| {
                let end = start + b.num_rows();
                (start <= mid + 500 && end > mid - 500).then(|| {
                    let from = (mid - 500).saturating_sub(start).min(b.num_rows());
                    let to = (mid + 500 - start).min(b.num_rows());
                    b.slice(from, to - from)
                })
            })
            .collect();
        let sink = sink(&f, &format!("commit-{}", s.name));
        let schema = s.decoder.schema().clone();
        let mut round = 0u32;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{}/2 files", s.name), |b| {
            b.iter_custom(|iters| {
                // A fresh table per sample: commit n lands on a table with n-1 snapshots.
                round += 1;
                let table = TableConfig::builder(format!("{}_{round}", s.name))
                    .sink_table(format!("{DATABASE}.commit_{}_{round}", s.name))
                    .timestamp_column(s.table.timestamp_column())
                    .sequence_column(s.table.sequence_column())
                    .build()
                    .expect("table");
                f.runtime.block_on(async {
                    let table = sink.open(&table).await.expect("open");
                    table.prepare(schema.clone()).await.expect("prepare");
                    let mut total = Duration::ZERO;
                    let mut after = Watermark::MIN;
                    for i in 0..iters {
                        let run_id = RunId::new();
                        let mut writer = table.begin(run_id, schema.clone()).await.expect("begin");
                        for batch in &small {
                            writer.write(batch.clone()).await.expect("write");
                        }
                        let staged = writer.finish().await.expect("finish");
                        let until = Watermark::new(i64::try_from(i).unwrap_or(i64::MAX) + 1, 0);
                        let meta = CommitMetadata {
                            window: Window::new(after, until).expect("window"),
                            run_id,
                            engine_id: "bench".into(),
                            fencing_token: 1,
                        };
                        let started = Instant::now();
                        staged.commit(&meta).await.expect("commit");
                        total += started.elapsed();
                        after = until;
                    }
                    total
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("memory_to_iceberg");
    g.sample_size(10).measurement_time(Duration::from_secs(25));
    for s in &f.shapes {
        g.throughput(s.throughput());
        // The sink's default (one encoder task) and both cores.
        for tasks in [1, 2] {
            let name = format!("e2e-{}-{tasks}", s.name);
            let sink = sink_with(&f, &name, tasks);
            let warehouse = f.dir.path().join(&name).join("warehouse");
            let source = BatchSource::new(s.decoder.schema().clone(), s.batches.clone(), s.high);
            let engine = Offloader::builder(
                Arc::new(source),
                Arc::new(sink),
                Arc::new(MemoryStore::new(SystemClock)),
            )
            .build()
            .expect("engine");
            let mut round = 0u32;
            g.bench_function(format!("{}/{tasks}_encoder_tasks", s.name), |b| {
                b.iter_custom(|iters| {
                    f.runtime.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            // A fresh table each time: the window is always the whole set.
                            round += 1;
                            let table = TableConfig::builder(format!("{}_{round}", s.name))
                                .sink_table(format!("{DATABASE}.e2e_{}_{round}", s.name))
                                .timestamp_column(s.table.timestamp_column())
                                .sequence_column(s.table.sequence_column())
                                .build()
                                .expect("table");
                            let started = Instant::now();
                            let summary = engine.run_once(&table).await.expect("run");
                            total += started.elapsed();
                            assert_eq!(summary.rows, s.rows);
                            remove_table_files(&warehouse);
                        }
                        total
                    })
                })
            });
        }
    }
    g.finish();
    check_columns(&f);
}

/// Writer properties to compare. `sink` is what the sink writes with
/// (`sink-iceberg/src/writer/props.rs`, `data_file_properties`, also used by
/// compaction; here with 1Mi-row row groups): zstd-3, no dictionary on numeric
/// columns (they rarely repeat; arrow-rs tries a dictionary on every column
/// until it overflows) and `DELTA_BINARY_PACKED` on every INT32/INT64 column
/// but decimals. The others are the alternatives it was chosen over:
/// arrow-rs's defaults (dictionaries everywhere, the sink before issue #15),
/// dictionaries off alone, delta on the two watermark columns only (the sink's
/// first choice), delta on every integer column including decimals (fastest,
/// but random decimals grow), and smaller row groups (the sink's default
/// 256Ki rows: less buffered per open file).
fn parquet_variants(
    schema: &arrow_schema::SchemaRef,
    table: &TableConfig,
) -> Vec<(&'static str, WriterProperties)> {
    use arrow_schema::DataType;
    use parquet::basic::Encoding;
    use parquet::schema::types::ColumnPath;

    let base = || {
        WriterProperties::builder()
            .set_compression(ParquetCompression::ZSTD(ZstdLevel::try_new(3).expect("level")))
            .set_max_row_group_row_count(Some(1 << 20))
    };
    let numeric: Vec<ColumnPath> = schema
        .fields()
        .iter()
        .filter(|f| f.data_type().is_primitive() || matches!(f.data_type(), DataType::Decimal128(..)))
        .map(|f| ColumnPath::from(f.name().as_str()))
        .collect();
    // Physical INT32/INT64 in Parquet (a UInt64 mapped to Decimal(20, 0) is not one).
    let integer = |f: &arrow_schema::Field| {
        matches!(
            f.data_type(),
            DataType::Int32 | DataType::Int64 | DataType::Timestamp(..) | DataType::Date32
        ) || matches!(f.data_type(), DataType::Decimal128(p, _) if *p <= 18)
    };
    let mut no_dict = base();
    for c in &numeric {
        no_dict = no_dict.set_column_dictionary_enabled(c.clone(), false);
    }
    let mut watermark_only = no_dict.clone();
    for c in [table.timestamp_column(), table.sequence_column()] {
        if schema.field_with_name(c).is_ok_and(&integer) {
            watermark_only =
                watermark_only.set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
        }
    }
    let mut delta_all = no_dict.clone();
    for f in schema.fields().iter().filter(|f| integer(f)) {
        delta_all =
            delta_all.set_column_encoding(ColumnPath::from(f.name().as_str()), Encoding::DELTA_BINARY_PACKED);
    }
    let mut sink = no_dict.clone();
    for f in schema
        .fields()
        .iter()
        .filter(|f| integer(f) && !matches!(f.data_type(), DataType::Decimal128(..)))
    {
        sink = sink.set_column_encoding(ColumnPath::from(f.name().as_str()), Encoding::DELTA_BINARY_PACKED);
    }
    let small_groups = sink.clone().set_max_row_group_row_count(Some(256 << 10));
    vec![
        ("all_dictionaries", base().build()),
        ("no_dict_numbers", no_dict.build()),
        ("watermark_delta_only", watermark_only.build()),
        ("sink", sink.build()),
        ("delta_all_integers", delta_all.build()),
        ("sink_256ki_row_groups", small_groups.build()),
    ]
}

/// Deletes the data files written so far (the catalog keeps its entries), so
/// a long bench does not fill the disk.
fn remove_table_files(warehouse: &Path) {
    let Ok(entries) = std::fs::read_dir(warehouse) else {
        return;
    };
    for ns in entries.flatten() {
        if let Ok(tables) = std::fs::read_dir(ns.path()) {
            for t in tables.flatten() {
                let _ = std::fs::remove_dir_all(t.path().join("data"));
            }
        }
    }
}

/// The fixtures are what they claim to be.
fn check_columns(f: &Fixture) {
    for s in &f.shapes {
        let rows: usize = s.batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows as u64, s.rows, "{}", s.name);
        assert!(
            s.batches
                .iter()
                .all(|b| b.columns().iter().all(|c| c.len() == b.num_rows()))
        );
    }
    assert_eq!(
        f.shapes[1].decoder.schema().fields().len(),
        data::WIDE_COLUMNS.len()
    );
}

criterion_group!(stages, benches);
criterion_main!(stages);
