//! The side-by-side harness: one run, one machine, the same rows, every system.
//!
//! ```sh
//! cargo bench -p offload-benches --bench harness -- [--quick] [--rows N] [--repeat R]
//! ```
//!
//! It starts the real ClickHouse engine (chdb behind `testing/chdb-front`),
//! generates `N` rows of `bronze_trades` inside it, and then measures, each
//! in a child process of its own (so CPU time and peak RSS are that system's
//! alone):
//!
//! 0. `ceiling`: the window's `ArrowStream` read over the same HTTP
//!    connection the engine uses, and thrown away;
//!    `source`: the same, decoded and converted by `offload-source-clickhouse`
//!    (diagnostic: where the engine's read side stands);
//! 1. `engine`: this engine, ClickHouse -> committed Iceberg (SQLite catalog,
//!    local files, zstd-3 Parquet, day partitions), one `Offloader::run_once`;
//!    `memory`: the same engine and sink fed from Arrow batches already in
//!    memory (in-memory Arrow -> committed Iceberg);
//! 2. `clickhouse`: ClickHouse's own Iceberg writer, `INSERT INTO` an
//!    `IcebergLocal` table `SELECT` from the source table;
//! 3. `pyiceberg`: `benches/peers/pyiceberg_append.py`.
//!
//! Every output is read back through ClickHouse (`icebergLocal`) and checked
//! (row count and a content hash over every column) before its time counts.
//! See the package README for the reading of the numbers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use offload_benches::data::{self, DATABASE};
use offload_benches::ipc::IpcRowCounter;
use offload_benches::memory::BatchSource;
use offload_benches::procfs;
use offload_core::{Offloader, Source, SourceTable, TableConfig, Watermark, Window};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::{ArrowStreamDecoder, ClickHouseSource, Compression, UInt64Mapping};
use offload_testkit::ClickHouseFront;
use offload_watermark_store::FileStore;
use serde_json::{Value, json};

/// The seed's measured rate: 3.78M rows in 16 s (ClickHouse 4 CPU + Spark 2 CPU).
const SEED_ROWS_PER_S: f64 = 236_000.0;
const SOURCE_TABLE: &str = "bronze_trades";
const RSS_TABLE: &str = "bronze_trades_rss";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Ceiling,
    Source,
    Engine,
    EngineDefaults,
    Memory,
    Clickhouse,
    ClickhouseDefaults,
    Pyiceberg,
}

impl System {
    const ALL: [System; 8] = [
        System::Ceiling,
        System::Source,
        System::Engine,
        System::EngineDefaults,
        System::Memory,
        System::Clickhouse,
        System::ClickhouseDefaults,
        System::Pyiceberg,
    ];

    fn label(self) -> &'static str {
        match self {
            System::Ceiling => "0  ceiling: ArrowStream read, discarded",
            System::Source => "0b source: read + decode + convert, discarded",
            System::Engine => "1  offload: ClickHouse -> Iceberg",
            System::EngineDefaults => "1d offload, all defaults (1 task, lz4)",
            System::Memory => "1b offload: in-memory Arrow -> Iceberg",
            System::Clickhouse => "2  ClickHouse INSERT INTO IcebergLocal",
            System::ClickhouseDefaults => "2d ClickHouse INSERT, default threads",
            System::Pyiceberg => "3  pyiceberg: ArrowStream -> append",
        }
    }

    fn name(self) -> &'static str {
        match self {
            System::Ceiling => "ceiling",
            System::Source => "source",
            System::Engine => "engine",
            System::EngineDefaults => "engine-defaults",
            System::Memory => "memory",
            System::Clickhouse => "clickhouse",
            System::ClickhouseDefaults => "clickhouse-defaults",
            System::Pyiceberg => "pyiceberg",
        }
    }

    /// Whether the system writes an Iceberg table (checked by content hash).
    fn writes(self) -> bool {
        !matches!(self, System::Ceiling | System::Source)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// Plain HTTP body.
    None,
    /// `Accept-Encoding: lz4` (the source's default).
    Lz4,
}

#[derive(Parser, Debug)]
#[command(about = "offload vs. ClickHouse's Iceberg writer vs. pyiceberg, side by side")]
struct Args {
    /// About a minute: 1M rows, one repetition, no 10M-row RSS check.
    #[arg(long)]
    quick: bool,
    /// Rows of bronze_trades to generate (default 5,000,000; 1,000,000 with --quick).
    #[arg(long)]
    rows: Option<u64>,
    /// Measure every system this many times and report the median (default 3; 1 with --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// Systems to run, comma separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    systems: Option<Vec<System>>,
    /// Also run the engine once on a window of this many rows and report its
    /// peak RSS (default 10,000,000; 0 to skip; skipped with --quick).
    #[arg(long)]
    rss_rows: Option<u64>,
    /// HTTP compression between ClickHouse and the readers (ceiling, source, engine).
    #[arg(long, value_enum, default_value = "none")]
    wire: Wire,
    /// The Iceberg sink's background encoder tasks for row 1 (the sink's
    /// default, used by row 1d, is 1; two use both cores for Parquet
    /// encoding, at the price of two files per partition).
    #[arg(long, default_value_t = 2)]
    writer_tasks: usize,
    /// Row 1 (and the ceiling) leave ClickHouse's block size alone instead
    /// of asking for blocks of `batch_size` rows (`max_block_size`,
    /// `preferred_block_size_bytes = 0`), which the source then passes on
    /// without re-cutting.
    #[arg(long)]
    no_block_tuning: bool,
    /// Rows per batch (TableConfig::batch_size).
    #[arg(long, default_value_t = 65_536)]
    batch_size: usize,
    /// A further ClickHouse setting for the queries of rows 0, 0b, 1, 1b and 3,
    /// `name=value`; repeatable.
    #[arg(long = "source-setting", value_parser = parse_setting)]
    source_settings: Vec<(String, String)>,
    /// Where to write the JSON results (default .run/bench-results/harness-<time>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep every system's output (default: only the last repetition's).
    #[arg(long)]
    keep: bool,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run one system in this (child) process.
    #[arg(long, hide = true, value_enum)]
    child: Option<System>,
    #[arg(long, hide = true)]
    url: Option<String>,
    #[arg(long, hide = true)]
    table: Option<String>,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 0)]
    front_pid: u32,
}

fn main() {
    let args = Args::parse();
    if let Some(system) = args.child {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        match runtime.block_on(child(system, &args)) {
            Ok(result) => println!("RESULT {result}"),
            Err(e) => {
                eprintln!("{} failed: {e}", system.name());
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(e) = parent(args) {
        eprintln!("harness failed: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------
// Child side: one system, timed from its first request to its commit.
// ---------------------------------------------------------------------------

struct Timer {
    started: Instant,
    cpu: f64,
    server_cpu: f64,
    front_pid: u32,
}

impl Timer {
    fn start(front_pid: u32) -> Timer {
        Timer {
            started: Instant::now(),
            cpu: procfs::self_cpu_seconds(),
            server_cpu: server_cpu(front_pid),
            front_pid,
        }
    }

    fn stop(&self, rows: u64, extra: Value) -> Value {
        let mut v = json!({
            "rows": rows,
            "seconds": self.started.elapsed().as_secs_f64(),
            "client_cpu": procfs::self_cpu_seconds() - self.cpu,
            "server_cpu": server_cpu(self.front_pid) - self.server_cpu,
        });
        if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
            v.extend(extra);
        }
        v
    }
}

fn server_cpu(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    procfs::process_cpu_seconds(pid).unwrap_or(0.0)
}

fn table_config(table: &str, batch_size: usize) -> Result<TableConfig, BoxError> {
    Ok(TableConfig::builder(table)
        .sink_table(format!("{DATABASE}.{table}"))
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .lag(Duration::from_secs(60))
        .batch_size(batch_size)
        .build()?)
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

fn source(args: &Args, url: &str) -> Result<ClickHouseSource, BoxError> {
    let mut builder = ClickHouseSource::builder(url);
    for (name, value) in &args.source_settings {
        builder = builder.setting(name, value);
    }
    Ok(builder
        .database(DATABASE)
        .compression(match args.wire {
            Wire::None => Compression::None,
            Wire::Lz4 => Compression::Lz4,
        })
        // Iceberg `long`, like ClickHouse's writer and the pyiceberg peer
        // (the default, Decimal(20, 0), is exact for values above i64::MAX).
        .uint64_mapping(UInt64Mapping::Int64)
        .build()?)
}

async fn sink(args: &Args, out: &Path) -> Result<IcebergSink, BoxError> {
    let warehouse = out.join("warehouse");
    std::fs::create_dir_all(&warehouse)?;
    let catalog = CatalogConfig::sqlite(
        out.join("catalog.db"),
        warehouse.to_str().ok_or("non-UTF-8 path")?,
    );
    Ok(IcebergSink::connect(IcebergSinkConfig::new(catalog).writer_tasks(args.writer_tasks)).await?)
}

async fn child(system: System, args: &Args) -> Result<Value, BoxError> {
    let url = args.url.as_deref().ok_or("--url")?;
    let table_name = args.table.as_deref().ok_or("--table")?;
    let out = args.out.as_deref().ok_or("--out")?;
    std::fs::create_dir_all(out)?;
    let table = table_config(table_name, args.batch_size)?;
    match system {
        System::Ceiling => {
            let opened = source(args, url)?.open_table(&table).await?;
            let high = opened.high_watermark().await?.ok_or("empty table")?;
            let sql = opened.window_sql(Window::new(Watermark::MIN, high)?);
            let client = clickhouse::Client::default()
                .with_url(url)
                .with_database(DATABASE)
                .with_compression(match args.wire {
                    Wire::None => clickhouse::Compression::None,
                    Wire::Lz4 => clickhouse::Compression::Lz4,
                });
            let timer = Timer::start(args.front_pid);
            let mut query = client.query_raw(&sql);
            for (name, value) in &args.source_settings {
                query = query.with_setting(name, value);
            }
            for (name, value) in ArrowStreamDecoder::server_settings() {
                query = query.with_setting(*name, *value);
            }
            let mut cursor = query.fetch_bytes("ArrowStream")?;
            let mut counter = IpcRowCounter::default();
            let mut bytes = 0u64;
            while let Some(chunk) = cursor.next().await? {
                bytes += chunk.len() as u64;
                counter.push(&chunk)?;
            }
            if !counter.finished() {
                return Err("the stream ended without its end-of-stream marker".into());
            }
            Ok(timer.stop(counter.rows(), json!({ "wire_bytes": bytes })))
        }
        System::Source => {
            let source = source(args, url)?;
            let timer = Timer::start(args.front_pid);
            let opened = source.open(&table).await?;
            let high = opened.high_watermark().await?.ok_or("empty table")?;
            let mut batches = opened.read(Window::new(Watermark::MIN, high)?).await?;
            let mut rows = 0;
            while let Some(batch) = batches.next().await {
                rows += batch?.num_rows() as u64;
            }
            Ok(timer.stop(rows, json!({})))
        }
        System::Engine | System::EngineDefaults => {
            let sink = sink(args, out).await?;
            let store = FileStore::open(out.join("watermarks"))?;
            let engine = Offloader::builder(
                Arc::new(source(args, url)?),
                Arc::new(sink.clone()),
                Arc::new(store),
            )
            .build()?;
            let timer = Timer::start(args.front_pid);
            let summary = engine.run_once(&table).await?;
            let result = timer.stop(summary.rows, json!({ "committed_files": summary.files }));
            let location = sink.load_table(&table).await?.metadata().location().to_owned();
            Ok(with(result, "table_location", location.into()))
        }
        System::Memory => {
            // Untimed: the window, decoded into memory.
            let opened = source(args, url)?.open(&table).await?;
            let schema = opened.schema();
            let high = opened.high_watermark().await?.ok_or("empty table")?;
            let mut stream = opened.read(Window::new(Watermark::MIN, high)?).await?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch?);
            }
            let memory = BatchSource::new(schema, batches, high);
            let arrow_bytes = memory.bytes();

            let sink = sink(args, out).await?;
            let store = FileStore::open(out.join("watermarks"))?;
            let engine =
                Offloader::builder(Arc::new(memory), Arc::new(sink.clone()), Arc::new(store)).build()?;
            let timer = Timer::start(args.front_pid);
            let summary = engine.run_once(&table).await?;
            let result = timer.stop(
                summary.rows,
                json!({ "committed_files": summary.files, "arrow_bytes_in_memory": arrow_bytes }),
            );
            let location = sink.load_table(&table).await?.metadata().location().to_owned();
            Ok(with(result, "table_location", location.into()))
        }
        System::Clickhouse | System::ClickhouseDefaults => {
            let location = out.join("table");
            let mut client = clickhouse::Client::default()
                .with_url(url)
                .with_database(DATABASE)
                .with_setting("allow_insert_into_iceberg", "1")
                .with_setting("output_format_parquet_compression_method", "zstd")
                .with_setting("output_format_compression_level", "3")
                // Our writer (arrow-rs) writes no bloom filters either.
                .with_setting("output_format_parquet_write_bloom_filter", "0");
            if system == System::Clickhouse {
                // Both cores, like the engine's two encoder tasks.
                client = client.with_setting("max_insert_threads", "2");
            }
            let target = format!("ice_{}", out.file_name().and_then(|n| n.to_str()).unwrap_or("t"))
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let timer = Timer::start(args.front_pid);
            // The engine's Iceberg schema; ClickHouse refuses LowCardinality here.
            client
                .query_raw(&format!(
                    "CREATE TABLE {DATABASE}.{target} (
                        exchange_timestamp DateTime64(6, 'UTC'), sequence_number Int64, symbol String,
                        price Decimal(18, 8), quantity Decimal(18, 8), quote_volume Decimal(18, 8),
                        event_time DateTime64(6, 'UTC'), kafka_offset Int64, kafka_partition Int32,
                        ingestion_timestamp DateTime64(6, 'UTC')
                     ) ENGINE = IcebergLocal('{}', 'Parquet')
                     PARTITION BY toRelativeDayNum(exchange_timestamp)",
                    location.display()
                ))
                .execute()
                .await?;
            client
                .query_raw(&format!(
                    "INSERT INTO {DATABASE}.{target} SELECT exchange_timestamp, sequence_number, \
                     CAST(symbol AS String), price, quantity, quote_volume, event_time, kafka_offset, \
                     kafka_partition, ingestion_timestamp FROM {DATABASE}.{table_name}"
                ))
                .execute()
                .await?;
            let rows: u64 = client
                .query_raw(&format!("SELECT count() FROM {DATABASE}.{table_name}"))
                .fetch_one()
                .await?;
            let result = timer.stop(rows, json!({}));
            client
                .query_raw(&format!("DROP TABLE {DATABASE}.{target}"))
                .execute()
                .await?;
            Ok(with(
                result,
                "table_location",
                location.display().to_string().into(),
            ))
        }
        System::Pyiceberg => Err("pyiceberg runs as a Python process, not a harness child".into()),
    }
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    if let Value::Object(map) = &mut v {
        map.insert(key.to_owned(), value);
    }
    v
}

// ---------------------------------------------------------------------------
// Parent side: set up, run every system in a child, check, report.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Run {
    system: System,
    rows: u64,
    seconds: f64,
    client_cpu: f64,
    server_cpu: f64,
    client_peak_rss: u64,
    server_peak_rss: u64,
    files: usize,
    parquet_bytes: u64,
    checked: String,
    raw: Value,
}

struct Setup {
    front: ClickHouseFront,
    front_pid: u32,
    run_dir: PathBuf,
    checksum: (u64, u64),
}

fn parent(args: Args) -> Result<(), BoxError> {
    let rows = args
        .rows
        .unwrap_or(if args.quick { 1_000_000 } else { 5_000_000 });
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let rss_rows = if args.quick {
        args.rss_rows.unwrap_or(0)
    } else {
        args.rss_rows.unwrap_or(10_000_000)
    };
    let systems = args.systems.clone().unwrap_or_else(|| System::ALL.to_vec());
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let load_before = procfs::load_average();
    let wall = Instant::now();

    // chdb only opens Iceberg paths under its working directory: the repo root.
    let root = offload_benches::repo_root();
    std::env::set_current_dir(&root)?;
    let run_dir = root.join(".run/bench-harness");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;

    eprintln!("starting ClickHouse (chdb front)");
    let front = ClickHouseFront::start();
    let front_pid = procfs::find_child(std::process::id(), "chdb-front/server.py").unwrap_or_else(|| {
        eprintln!("warning: the front's pid was not found; ClickHouse-side CPU and RSS are not measured");
        0
    });
    front.query(&format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"));
    let checksum = generate(&front, SOURCE_TABLE, rows)?;
    let setup = Setup {
        front,
        front_pid,
        run_dir,
        checksum,
    };

    // Warm-up (not recorded): caches, and the window's ArrowStream size.
    let warm = run_system(&args, &setup, System::Ceiling, SOURCE_TABLE, "warmup")?;
    let arrow_bytes = warm.raw["wire_bytes"].as_u64().unwrap_or(0);
    if args.wire == Wire::Lz4 {
        eprintln!("note: with --wire lz4, MB/s counts compressed wire bytes");
    }

    let mut runs: Vec<Run> = Vec::new();
    for i in 0..repeat {
        for &system in &systems {
            let tag = format!("{}-{i}", system.name());
            let run = run_system(&args, &setup, system, SOURCE_TABLE, &tag)?;
            eprintln!(
                "[{}/{repeat}] {:<10} {:>8.3} s  {:>12.0} rows/s  {}",
                i + 1,
                system.name(),
                run.seconds,
                run.rows as f64 / run.seconds,
                run.checked
            );
            runs.push(run);
            if !args.keep && i + 1 < repeat {
                let _ = std::fs::remove_dir_all(setup.run_dir.join(&tag));
            }
        }
    }

    let rss_run = if rss_rows > 0 {
        eprintln!("generating {rss_rows} rows for the RSS check");
        let check = generate(&setup.front, RSS_TABLE, rss_rows)?;
        let setup = Setup {
            checksum: check,
            ..setup
        };
        let run = run_system(&args, &setup, System::Engine, RSS_TABLE, "engine-rss")?;
        eprintln!(
            "[rss] engine on {rss_rows} rows: {:.3} s, peak RSS {} MiB",
            run.seconds,
            run.client_peak_rss >> 20
        );
        let _ = std::fs::remove_dir_all(setup.run_dir.join("engine-rss"));
        Some(run)
    } else {
        None
    };
    let load_after = procfs::load_average();

    let summary = summarise(&systems, &runs);
    let report = Report {
        rows,
        repeat,
        arrow_bytes,
        wire: args.wire,
        summary: &summary,
        rss: rss_run.as_ref().map(|r| (rss_rows, r)),
        load: (load_before, load_after),
    };
    println!("{}", report.render());

    let json_path = args.json.clone().unwrap_or_else(|| {
        root.join(".run/bench-results").join(format!(
            "harness-{started_at}{}.json",
            if args.quick { "-quick" } else { "" }
        ))
    });
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let document = json!({
        "harness": "offload-benches/harness",
        "started_at_unix": started_at,
        "wall_seconds": wall.elapsed().as_secs_f64(),
        "machine": machine(),
        "load_average_1m": { "before": load_before, "after": load_after },
        "config": {
            "rows": rows, "repeat": repeat, "quick": args.quick, "wire": format!("{:?}", args.wire),
            "writer_tasks": args.writer_tasks, "batch_size": args.batch_size, "uint64_mapping": "Int64",
            "source_settings": source_settings(&args).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "zstd_level": 3, "partitioning": "day(exchange_timestamp)",
        },
        "source": { "table": SOURCE_TABLE, "rows": rows, "arrow_stream_bytes": arrow_bytes,
                    "count": checksum.0, "content_hash": checksum.1.to_string() },
        "seed_rows_per_second": SEED_ROWS_PER_S,
        "summary": summary.iter().map(|s| s.to_json(arrow_bytes, rows)).collect::<Vec<_>>(),
        "targets": report.targets_json(),
        "rss_check": rss_run.as_ref().map(|r| json!({ "rows": rss_rows, "run": r.to_json() })),
        "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&document)? + "\n")?;
    println!("results: {}", json_path.display());
    Ok(())
}

/// Creates and fills a bronze_trades table; returns its (count, content hash).
fn generate(front: &ClickHouseFront, table: &str, rows: u64) -> Result<(u64, u64), BoxError> {
    let t = Instant::now();
    front.query(&format!("DROP TABLE IF EXISTS {DATABASE}.{table}"));
    front.query(&data::bronze_ddl(table));
    front.query(&data::bronze_insert(table, rows));
    // One part, and no background merge left to steal CPU from the measurements.
    front.query(&format!("OPTIMIZE TABLE {DATABASE}.{table} FINAL"));
    let checksum = data::parse_checksum(&front.query(&data::bronze_checksum(&format!("{DATABASE}.{table}"))))
        .ok_or("unreadable checksum")?;
    if checksum.0 != rows {
        return Err(format!("generated {} rows, wanted {rows}", checksum.0).into());
    }
    eprintln!(
        "generated {rows} rows of {DATABASE}.{table} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(checksum)
}

/// The ClickHouse settings of the engine's queries (row 1, and the rows
/// reading the same window).
fn source_settings(args: &Args) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    if !args.no_block_tuning {
        settings.push(("max_block_size".to_owned(), args.batch_size.to_string()));
        settings.push(("preferred_block_size_bytes".to_owned(), "0".to_owned()));
    }
    settings.extend(args.source_settings.iter().cloned());
    settings
}

fn run_system(args: &Args, setup: &Setup, system: System, table: &str, tag: &str) -> Result<Run, BoxError> {
    let source_settings = source_settings(args);
    let writer_tasks = args.writer_tasks.to_string();
    let out = setup.run_dir.join(tag);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let mut command = match system {
        System::Pyiceberg => {
            let mut c = Command::new(offload_testkit::venv_python());
            c.arg(offload_benches::repo_root().join("benches/peers/pyiceberg_append.py"));
            c
        }
        _ => {
            let defaults = system == System::EngineDefaults;
            let mut c = Command::new(std::env::current_exe()?);
            let wire = if defaults {
                // The source's default: LZ4 on the wire.
                "lz4".to_owned()
            } else {
                format!("{:?}", args.wire).to_lowercase()
            };
            c.args(["--child", system.name()])
                .args(["--wire", &wire])
                .args(["--writer-tasks", if defaults { "1" } else { &writer_tasks }])
                .args(["--batch-size", &args.batch_size.to_string()]);
            if !defaults {
                for (name, value) in &source_settings {
                    c.arg(format!("--source-setting={name}={value}"));
                }
            }
            c
        }
    };
    if system == System::Pyiceberg {
        for (name, value) in &source_settings {
            command.arg(format!("--setting={name}={value}"));
        }
    }
    command
        .args(["--url", setup.front.url()])
        .args(["--table", table])
        .arg("--out")
        .arg(&out)
        .args(["--front-pid", &setup.front_pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());

    if setup.front_pid != 0 {
        procfs::reset_peak_rss(setup.front_pid)?;
    }
    let mut child = command.spawn()?;
    let mut stdout = String::new();
    child.stdout.take().ok_or("stdout")?.read_to_string(&mut stdout)?;
    let usage = procfs::wait_with_usage(child)?;
    let server_peak_rss = if setup.front_pid != 0 {
        procfs::process_peak_rss(setup.front_pid)?
    } else {
        0
    };
    if usage.code != Some(0) {
        return Err(format!(
            "{} exited with {:?}; output:\n{stdout}",
            system.name(),
            usage.code
        )
        .into());
    }
    let raw: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("{} printed no RESULT line:\n{stdout}", system.name()))
        .and_then(|l| serde_json::from_str(l).map_err(|e| e.to_string()))?;
    let number = |k: &str| raw[k].as_f64().unwrap_or(0.0);
    let rows = raw["rows"].as_u64().unwrap_or(0);

    // The check that makes the time count.
    let (expected_rows, expected_hash) = setup.checksum;
    if rows != expected_rows {
        return Err(format!(
            "{}: {rows} rows reported, {expected_rows} expected",
            system.name()
        )
        .into());
    }
    let checked = if system.writes() {
        let location = raw["table_location"].as_str().ok_or("no table_location")?;
        let got = data::parse_checksum(
            &setup
                .front
                .query(&data::bronze_checksum(&format!("icebergLocal('{location}')"))),
        )
        .ok_or("unreadable checksum")?;
        if got != (expected_rows, expected_hash) {
            return Err(format!(
                "{}: the Iceberg table holds {got:?}, the source {:?}",
                system.name(),
                setup.checksum
            )
            .into());
        }
        "count + content hash match".to_owned()
    } else {
        "row count matches".to_owned()
    };
    let (files, parquet_bytes) = procfs::parquet_files(&out);
    Ok(Run {
        system,
        rows,
        seconds: number("seconds"),
        client_cpu: number("client_cpu"),
        server_cpu: number("server_cpu"),
        client_peak_rss: usage.peak_rss,
        server_peak_rss,
        files,
        parquet_bytes,
        checked,
        raw,
    })
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "system": self.system.name(), "rows": self.rows, "seconds": self.seconds,
            "client_cpu_s": self.client_cpu, "server_cpu_s": self.server_cpu,
            "client_peak_rss_bytes": self.client_peak_rss, "server_peak_rss_bytes": self.server_peak_rss,
            "files": self.files, "parquet_bytes": self.parquet_bytes, "checked": self.checked,
            "child_report": self.raw,
        })
    }
}

/// The median run of one system.
struct Summary {
    system: System,
    median: Run,
    samples: Vec<f64>,
}

impl Summary {
    fn rows_per_s(&self) -> f64 {
        self.median.rows as f64 / self.median.seconds
    }

    fn to_json(&self, arrow_bytes: u64, rows: u64) -> Value {
        let rps = self.rows_per_s();
        json!({
            "system": self.system.name(), "label": self.system.label(),
            "rows_per_s": rps, "mb_per_s": rps * arrow_bytes as f64 / rows as f64 / 1e6,
            "seconds_median": self.median.seconds, "seconds_samples": self.samples,
            "client_cpu_s": self.median.client_cpu, "server_cpu_s": self.median.server_cpu,
            "client_peak_rss_bytes": self.median.client_peak_rss,
            "server_peak_rss_bytes": self.median.server_peak_rss,
            "files": self.median.files, "parquet_bytes": self.median.parquet_bytes,
        })
    }
}

fn summarise(systems: &[System], runs: &[Run]) -> Vec<Summary> {
    systems
        .iter()
        .filter_map(|&system| {
            let mut mine: Vec<&Run> = runs.iter().filter(|r| r.system == system).collect();
            mine.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            let median = (*mine.get(mine.len() / 2)?).clone();
            Some(Summary {
                system,
                samples: mine.iter().map(|r| r.seconds).collect(),
                median,
            })
        })
        .collect()
}

struct Report<'a> {
    rows: u64,
    repeat: usize,
    arrow_bytes: u64,
    wire: Wire,
    summary: &'a [Summary],
    rss: Option<(u64, &'a Run)>,
    load: (Option<f64>, Option<f64>),
}

impl Report<'_> {
    fn rate(&self, system: System) -> Option<f64> {
        self.summary
            .iter()
            .find(|s| s.system == system)
            .map(Summary::rows_per_s)
    }

    /// (what, measured text, target text, met) for each target the run covers.
    fn targets(&self) -> Vec<(String, String, String, Option<bool>)> {
        let mut t = Vec::new();
        let engine = self.rate(System::Engine);
        if let (Some(e), Some(c)) = (engine, self.rate(System::Ceiling)) {
            t.push((
                "end to end / ceiling".into(),
                format!("{:.0}%", 100.0 * e / c),
                ">= 80%".into(),
                Some(e >= 0.8 * c),
            ));
        }
        if let Some(e) = engine {
            t.push((
                "end to end rows/s (2 cores)".into(),
                human(e),
                ">= 2.5M".into(),
                Some(e >= 2.5e6),
            ));
        }
        for (system, what) in [
            (System::Clickhouse, "engine / ClickHouse (2 threads)"),
            (System::ClickhouseDefaults, "engine / ClickHouse (defaults)"),
        ] {
            if let (Some(e), Some(c)) = (engine, self.rate(system)) {
                t.push((
                    what.into(),
                    format!("{:.2}x", e / c),
                    ">= 2x".into(),
                    Some(e >= 2.0 * c),
                ));
            }
        }
        if let (Some(e), Some(p)) = (engine, self.rate(System::Pyiceberg)) {
            t.push((
                "engine / pyiceberg".into(),
                format!("{:.2}x", e / p),
                ">= 5x".into(),
                Some(e >= 5.0 * p),
            ));
        }
        if let Some(m) = self.rate(System::Memory) {
            t.push((
                "in-memory Arrow -> Iceberg".into(),
                format!("{} rows/s", human(m)),
                ">= 4M rows/s".into(),
                Some(m >= 4e6),
            ));
        }
        match self.rss {
            Some((rows, run)) => t.push((
                format!("peak RSS, {} row window", human(rows as f64)),
                format!("{} MiB", run.client_peak_rss >> 20),
                "<= 512 MiB".into(),
                Some(run.client_peak_rss <= 512 << 20),
            )),
            None => t.push((
                "peak RSS, 10M row window".into(),
                "not run".into(),
                "<= 512 MiB".into(),
                None,
            )),
        }
        t
    }

    fn targets_json(&self) -> Value {
        self.targets()
            .into_iter()
            .map(|(what, measured, target, met)| json!({ "what": what, "measured": measured, "target": target, "met": met }))
            .collect()
    }

    fn render(&self) -> String {
        let mut s = String::new();
        let per_row = self.arrow_bytes as f64 / self.rows as f64;
        s += &format!(
            "\noffload harness: {} rows of bronze_trades ({:.1} MB as ArrowStream, {:.0} B/row), median of {}, wire: {:?}\n",
            thousands(self.rows),
            self.arrow_bytes as f64 / 1e6,
            per_row,
            self.repeat,
            self.wire
        );
        let m = machine();
        s += &format!(
            "machine: {} CPUs ({}), {} GiB RAM, Linux {}; load average {} -> {}\n\n",
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["memory_gib"],
            m["kernel"].as_str().unwrap_or("?"),
            self.load.0.map_or("?".into(), |l| format!("{l:.2}")),
            self.load.1.map_or("?".into(), |l| format!("{l:.2}")),
        );
        s += &format!(
            "{:<47} {:>11} {:>8} {:>17} {:>19} {:>6} {:>9}\n",
            "system", "rows/s", "MB/s", "CPU s cli+srv", "peak RSS cli / srv", "files", "÷ engine"
        );
        let engine = self.rate(System::Engine);
        for sum in self.summary {
            let r = &sum.median;
            let rps = sum.rows_per_s();
            s += &format!(
                "{:<47} {:>11} {:>8.1} {:>17} {:>19} {:>6} {:>9}\n",
                sum.system.label(),
                thousands(rps as u64),
                rps * per_row / 1e6,
                format!("{:.2} + {:.2}", r.client_cpu, r.server_cpu),
                format!("{} / {} MiB", r.client_peak_rss >> 20, r.server_peak_rss >> 20),
                if sum.system.writes() {
                    r.files.to_string()
                } else {
                    "-".into()
                },
                engine.map_or("-".into(), |e| format!("{:.2}x", rps / e)),
            );
        }
        s += &format!(
            "{:<47} {:>11} {:>8} {:>17} {:>19} {:>6} {:>9}\n",
            "ref: seed (ClickHouse 4 CPU + Spark 2 CPU)",
            thousands(SEED_ROWS_PER_S as u64),
            format!("{:.1}", SEED_ROWS_PER_S * per_row / 1e6),
            "-",
            "-",
            "-",
            engine.map_or("-".into(), |e| format!("{:.2}x", SEED_ROWS_PER_S / e)),
        );
        s += "\nMB/s: the window's ArrowStream bytes per second. CPU: client process over the timed part + the\n\
              ClickHouse front process (chdb + Python HTTP) over the same span. Peak RSS: the client process\n\
              (whole life) / the front (reset before each system). ÷ engine: rows/s relative to row 1.\n\n";
        s += "targets:\n";
        for (what, measured, target, met) in self.targets() {
            s += &format!(
                "  {what:<32} {measured:>14}  ({target:<12}) {}\n",
                match met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "-",
                }
            );
        }
        s
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": (mem_kb as f64 / (1 << 20) as f64).round(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "os": std::fs::read_to_string("/etc/debian_version").map(|s| format!("Debian {}", s.trim())).ok(),
    })
}
