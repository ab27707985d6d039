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
//!    `engine-mimalloc`: the same on mimalloc instead of the system allocator
//!    (the `offload` program's; every child picks one from
//!    `OFFLOAD_BENCH_ALLOCATOR`, see `offload_benches::alloc`), and with
//!    `--rss-rows` also the RSS check on it;
//!    `memory`: the same engine and sink fed from Arrow batches already in
//!    memory (in-memory Arrow -> committed Iceberg);
//! 2. `clickhouse`: ClickHouse's own Iceberg writer, `INSERT INTO` an
//!    `IcebergLocal` table `SELECT` from the source table;
//! 3. `pyiceberg`: `benches/peers/pyiceberg_append.py`.
//! 4. `sweep`: the late-row sweep on a copy of the table the engine
//!    offloaded: `run_once` with nothing new, sweep on vs `late_horizon = 0`,
//!    and the `run_once` that repairs 1% of one sweep bucket arriving late.
//! 5. `maintain`: table maintenance (`IcebergTable::maintain_with`:
//!    compaction of the closed day partition + expiry) on tables the engine
//!    offloaded in many small windows, closed partitions of a fifth and four
//!    fifths of the rows, each maintained in a child of its own
//!    (`harness/maintain.rs`).
//!
//! `wide` (not in the default set): the seed's silver table and a 50-column
//! table, each with the ceiling, the engine with every default and
//! ClickHouse's writer (`harness/wide.rs`).
//!
//! Every output is read back through ClickHouse (`icebergLocal`) and checked
//! (row count and a content hash over every column) before its time counts.
//! See the package README for the reading of the numbers.

#[path = "harness/backfill.rs"]
mod backfill;
#[path = "harness/maintain.rs"]
mod maintain;
#[path = "harness/wide.rs"]
mod wide;

// The system allocator like the `offload` program, or mimalloc in a child
// started with OFFLOAD_BENCH_ALLOCATOR=mimalloc (row 1m).
#[global_allocator]
static GLOBAL: offload_benches::alloc::Selectable = offload_benches::alloc::Selectable;

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
use offload_source_clickhouse::{ClickHouseSource, Compression, UInt64Mapping};
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
    EngineMimalloc,
    EngineDefaults,
    Memory,
    Clickhouse,
    ClickhouseDefaults,
    Pyiceberg,
    Sweep,
    Maintain,
    /// Internal: the table [`System::Maintain`] compacts, offloaded in many
    /// small windows (a child of its own, before the timed maintenance).
    #[value(hide = true)]
    MaintainSetup,
    /// The wide tables (`harness/wide.rs`): ceiling, engine defaults and
    /// ClickHouse's writer on the silver and the 50-column table. Not in the
    /// default set (it adds about a minute).
    Wide,
    /// Row 6 (`harness/backfill.rs`): a first run on `--backfill-rows` rows
    /// in ~9 `max_window` windows, timed as a whole. Not in the default set
    /// (it generates a table of its own, 20M rows).
    Backfill,
    /// Internal: [`System::Wide`]'s engine, every default.
    #[value(hide = true)]
    WideEngine,
    /// Internal: [`System::Wide`]'s ClickHouse writer.
    #[value(hide = true)]
    WideClickhouse,
}

impl System {
    const ALL: [System; 11] = [
        System::Ceiling,
        System::Source,
        System::Engine,
        System::EngineMimalloc,
        System::EngineDefaults,
        System::Memory,
        System::Clickhouse,
        System::ClickhouseDefaults,
        System::Pyiceberg,
        System::Sweep,
        System::Maintain,
    ];

    fn label(self) -> &'static str {
        match self {
            System::Ceiling => "0  ceiling: ArrowStream read, discarded",
            System::Source => "0b source: read + decode + convert, discarded",
            System::Engine => "1  offload: ClickHouse -> Iceberg",
            System::EngineMimalloc => "1m offload, mimalloc (1: system allocator)",
            System::EngineDefaults => "1d offload, earlier defaults (1 task, CH blocks, lz4)",
            System::Memory => "1b offload: in-memory Arrow -> Iceberg",
            System::Clickhouse => "2  ClickHouse INSERT INTO IcebergLocal",
            System::ClickhouseDefaults => "2d ClickHouse INSERT, default threads",
            System::Pyiceberg => "3  pyiceberg: ArrowStream -> append",
            System::Sweep => "4  late-row sweep (own table below)",
            System::Maintain => "5  maintenance: compaction + expiry (below)",
            System::MaintainSetup => "5s maintenance setup: offload in small windows",
            System::Wide => "w  wide tables (below)",
            System::Backfill => "6  backfill: first run in max_window windows (below)",
            System::WideEngine => "1w offload, engine defaults (wide table)",
            System::WideClickhouse => "2w ClickHouse INSERT INTO IcebergLocal (wide table)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            System::Ceiling => "ceiling",
            System::Source => "source",
            System::Engine => "engine",
            System::EngineMimalloc => "engine-mimalloc",
            System::EngineDefaults => "engine-defaults",
            System::Memory => "memory",
            System::Clickhouse => "clickhouse",
            System::ClickhouseDefaults => "clickhouse-defaults",
            System::Pyiceberg => "pyiceberg",
            System::Sweep => "sweep",
            System::Maintain => "maintain",
            System::MaintainSetup => "maintain-setup",
            System::Wide => "wide",
            System::Backfill => "backfill",
            System::WideEngine => "wide-engine",
            System::WideClickhouse => "wide-clickhouse",
        }
    }

    /// Whether the system writes an Iceberg table (checked by content hash).
    fn writes(self) -> bool {
        !matches!(self, System::Ceiling | System::Source)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// The source's default (`Compression::Auto`): none to a loopback host
    /// such as the harness's front, LZ4 otherwise.
    Auto,
    /// Plain HTTP body.
    None,
    /// `Accept-Encoding: lz4`.
    Lz4,
}

impl Wire {
    /// The source's setting for this choice.
    fn compression(self) -> Compression {
        match self {
            Wire::Auto => Compression::Auto,
            Wire::None => Compression::None,
            Wire::Lz4 => Compression::Lz4,
        }
    }

    /// What the connection to `url` really uses (`Auto` resolved as the source resolves it).
    fn client(self, url: &str) -> clickhouse::Compression {
        match self.compression().resolve(url) {
            Compression::Lz4 => clickhouse::Compression::Lz4,
            _ => clickhouse::Compression::None,
        }
    }
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
    /// HTTP compression between ClickHouse and the readers (ceiling, source,
    /// engine; default: the source's own, `auto`).
    #[arg(long, value_enum, default_value = "auto")]
    wire: Wire,
    /// The Iceberg sink's background encoder tasks for rows 1 and 1m
    /// (default: the sink's, `offload_sink_iceberg::default_writer_tasks()`,
    /// one per core up to 4; row 1d always uses 1, the earlier default).
    #[arg(long)]
    writer_tasks: Option<usize>,
    /// Rows per batch (TableConfig::batch_size).
    #[arg(long, default_value_t = 65_536)]
    batch_size: usize,
    /// A further ClickHouse setting for the queries of rows 0, 0b, 1, 1b and 3,
    /// `name=value`; repeatable.
    #[arg(long = "source-setting", value_parser = parse_setting)]
    source_settings: Vec<(String, String)>,
    /// `maintain`: the number of windows the engine offloads each of its
    /// tables in (`max_window` = the data's span / this), so that the closed
    /// day partition holding a fifth of the rows gets >= 50 small files.
    #[arg(long, default_value_t = 300)]
    maintain_windows: u64,
    /// `maintain`: `MaintenanceConfig::target_file_size`, in bytes (default
    /// 32 MiB, so the bigger partition is rolled into more than one file).
    #[arg(long, default_value_t = 32 << 20)]
    maintain_target_file_size: u64,
    /// Where to write the JSON results (default .run/bench-results/harness-<time>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep every system's output (default: only the last repetition's).
    #[arg(long)]
    keep: bool,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// `backfill`: rows of the backfilled table (default 20,000,000; 2,000,000 with --quick).
    #[arg(long)]
    backfill_rows: Option<u64>,
    /// `wide`: rows of each wide table (default 1,000,000; 200,000 with --quick).
    #[arg(long)]
    wide_rows: Option<u64>,

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
    /// Internal (maintain-setup): rows of the closed day partition.
    #[arg(long, hide = true)]
    partition_rows: Option<u64>,
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
    table_config_with(table, batch_size, None)
}

/// [`table_config`] with a late horizon (`None`: the engine's default, 7 days).
fn table_config_with(
    table: &str,
    batch_size: usize,
    late_horizon: Option<Duration>,
) -> Result<TableConfig, BoxError> {
    let (ts, seq) =
        wide::Shape::of(table).map_or(("exchange_timestamp", "sequence_number"), |s| s.watermark());
    let mut builder = TableConfig::builder(table)
        .sink_table(format!("{DATABASE}.{table}"))
        .timestamp_column(ts)
        .sequence_column(seq)
        .lag(Duration::from_secs(60))
        .batch_size(batch_size)
        // These rows time one window of the whole table, like ClickHouse's
        // one INSERT; row 6 (backfill) times the windows of max_window.
        .unbounded_window();
    if let Some(h) = late_horizon {
        builder = builder.late_horizon(h);
    }
    Ok(builder.build()?)
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
        .compression(args.wire.compression())
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
    let mut config = IcebergSinkConfig::new(catalog);
    if let Some(n) = args.writer_tasks {
        config = config.writer_tasks(n);
    }
    Ok(IcebergSink::connect(config).await?)
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
                .with_compression(args.wire.client(url));
            let timer = Timer::start(args.front_pid);
            let mut query = client.query_raw(&sql);
            for (name, value) in &args.source_settings {
                query = query.with_setting(name, value);
            }
            // Exactly what the source's read sends: its Arrow settings and,
            // unless a --source-setting names one, blocks of the batch size.
            for (name, value) in opened.window_settings() {
                query = query.with_setting(name, value);
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
        System::Engine | System::EngineMimalloc | System::EngineDefaults => {
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
            let result = timer.stop(
                summary.rows,
                json!({ "committed_files": summary.files, "allocator": offload_benches::alloc::choice().name() }),
            );
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
            // The engine's Iceberg schema; ClickHouse refuses LowCardinality here.
            iceberg_local_insert(
                args,
                url,
                system,
                table_name,
                out,
                "exchange_timestamp DateTime64(6, 'UTC'), sequence_number Int64, symbol String, \
                 price Decimal(18, 8), quantity Decimal(18, 8), quote_volume Decimal(18, 8), \
                 event_time DateTime64(6, 'UTC'), kafka_offset Int64, kafka_partition Int32, \
                 ingestion_timestamp DateTime64(6, 'UTC')",
                "exchange_timestamp, sequence_number, CAST(symbol AS String), price, quantity, quote_volume, \
                 event_time, kafka_offset, kafka_partition, ingestion_timestamp",
                "exchange_timestamp",
            )
            .await
        }
        System::Wide => Err("the wide tables run in the parent, not a harness child".into()),
        System::Backfill => backfill::child(url, table_name, out, args.front_pid).await,
        System::WideEngine => wide::engine_child(url, table_name, out, args.front_pid).await,
        System::WideClickhouse => wide::clickhouse_child(args, url, table_name, out).await,
        System::Pyiceberg => Err("pyiceberg runs as a Python process, not a harness child".into()),
        System::Sweep => sweep_child(args, url, table_name, out).await,
        System::MaintainSetup => maintain::maintain_setup_child(args, url, table_name, out).await,
        System::Maintain => maintain::maintain_child(args, table_name, out).await,
    }
}

/// ClickHouse's own Iceberg writer (rows 2 and 2d, and the wide tables' 2w):
/// `CREATE TABLE ... ENGINE = IcebergLocal` with `columns` (the engine's
/// Iceberg schema as ClickHouse types), day partitions on `day_column`, and
/// `INSERT INTO ... SELECT select FROM source_table`, timed from CREATE to
/// the INSERT done. zstd level 3 and no bloom filters like our writer;
/// [`System::Clickhouse`] (and anything but `ClickhouseDefaults`) gets two
/// insert threads, one per core, like the engine's encoder tasks.
#[allow(clippy::too_many_arguments)]
async fn iceberg_local_insert(
    args: &Args,
    url: &str,
    system: System,
    source_table: &str,
    out: &Path,
    columns: &str,
    select: &str,
    day_column: &str,
) -> Result<Value, BoxError> {
    let location = out.join("table");
    let mut client = clickhouse::Client::default()
        .with_url(url)
        .with_database(DATABASE)
        .with_setting("allow_insert_into_iceberg", "1")
        .with_setting("output_format_parquet_compression_method", "zstd")
        .with_setting("output_format_compression_level", "3")
        // Our writer (arrow-rs) writes no bloom filters either.
        .with_setting("output_format_parquet_write_bloom_filter", "0");
    if system != System::ClickhouseDefaults {
        // Both cores, like the engine's two encoder tasks.
        client = client.with_setting("max_insert_threads", "2");
    }
    let target = format!("ice_{}", out.file_name().and_then(|n| n.to_str()).unwrap_or("t"))
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let timer = Timer::start(args.front_pid);
    client
        .query_raw(&format!(
            "CREATE TABLE {DATABASE}.{target} ({columns}) ENGINE = IcebergLocal('{}', 'Parquet') \
             PARTITION BY toRelativeDayNum({day_column})",
            location.display()
        ))
        .execute()
        .await?;
    client
        .query_raw(&format!(
            "INSERT INTO {DATABASE}.{target} SELECT {select} FROM {DATABASE}.{source_table}"
        ))
        .execute()
        .await?;
    let rows: u64 = client
        .query_raw(&format!("SELECT count() FROM {DATABASE}.{source_table}"))
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

/// Idle sweep samples per child: sweep on and sweep off, alternating.
const SWEEP_IDLE_SAMPLES: usize = 5;
/// One late row per this many rows of the chosen bucket (1%).
const LATE_EVERY: u64 = 100;
/// Added to a copied row's sequence number: the late copies are new rows.
const LATE_SEQUENCE_OFFSET: u64 = 1_000_000_000_000;

async fn tsv(client: &clickhouse::Client, sql: &str) -> Result<String, BoxError> {
    let mut cursor = client.query_raw(sql).fetch_bytes("TSV")?;
    let mut text = Vec::new();
    while let Some(chunk) = cursor.next().await? {
        text.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(text)?)
}

async fn execute(client: &clickhouse::Client, sql: &str) -> Result<(), BoxError> {
    Ok(client.query_raw(sql).execute().await?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The late-row sweep on the engine's table (a copy of the source table, so
/// the late rows disturb no other system): the window is offloaded, then
/// `run_once` with nothing new is timed with the sweep on and off
/// (alternating), then 1% of one sweep bucket's rows arrive late, below the
/// committed watermark, and the `run_once` that repairs them is timed. Every
/// run's summary is checked; the parent then checks the Iceberg table
/// against the copy's count and content hash.
async fn sweep_child(args: &Args, url: &str, table_name: &str, out: &Path) -> Result<Value, BoxError> {
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_database(DATABASE)
        .with_compression(clickhouse::Compression::None);
    let suffix = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("t")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let copy = format!("{table_name}_sweep_{suffix}");

    // Untimed: the engine's table, as a copy of the source table (one part).
    execute(&client, &format!("DROP TABLE IF EXISTS {DATABASE}.{copy}")).await?;
    execute(
        &client,
        &format!("CREATE TABLE {DATABASE}.{copy} AS {DATABASE}.{table_name}"),
    )
    .await?;
    execute(
        &client,
        &format!("INSERT INTO {DATABASE}.{copy} SELECT * FROM {DATABASE}.{table_name}"),
    )
    .await?;
    execute(&client, &format!("OPTIMIZE TABLE {DATABASE}.{copy} FINAL")).await?;
    let source_rows: u64 = client
        .query_raw(&format!("SELECT count() FROM {DATABASE}.{copy}"))
        .fetch_one()
        .await?;

    // The data's span; the horizon covers all of it (at least the default 7 days).
    let span_text = tsv(
        &client,
        &format!(
            "SELECT toUnixTimestamp64Micro(min(exchange_timestamp)), toUnixTimestamp64Micro(max(exchange_timestamp)) \
             FROM {DATABASE}.{copy}"
        ),
    )
    .await?;
    let (min_ts, max_ts) = span_text
        .trim()
        .split_once('\t')
        .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
        .ok_or_else(|| format!("unreadable span {span_text:?}"))?;
    let hour = 3_600_000_000i64;
    let span_hours = u64::try_from((max_ts - min_ts) / hour + 2)?;
    let horizon = offload_core::DEFAULT_LATE_HORIZON.max(Duration::from_secs(3600 * span_hours));
    let on = table_config_with(&copy, args.batch_size, Some(horizon))?;
    let off = table_config_with(&copy, args.batch_size, Some(Duration::ZERO))?;
    if on.sweep_bucket() != Duration::from_secs(3600) {
        return Err(format!(
            "the sweep bucket is {:?}, the late rows assume 1 h",
            on.sweep_bucket()
        )
        .into());
    }

    let sink = sink(args, out).await?;
    let store = FileStore::open(out.join("watermarks"))?;
    let engine = Offloader::builder(
        Arc::new(source(args, url)?),
        Arc::new(sink.clone()),
        Arc::new(store),
    )
    .build()?;

    // The window, offloaded (timed: what the sweep is compared with).
    let timer = Timer::start(args.front_pid);
    let summary = engine.run_once(&on).await?;
    let offload = timer.stop(summary.rows, json!({ "committed_files": summary.files }));
    if summary.rows != source_rows || summary.sweep.is_some() {
        return Err(format!(
            "offload: {} rows (source {source_rows}), sweep {:?} on an empty table",
            summary.rows, summary.sweep
        )
        .into());
    }
    let watermark = summary.window.ok_or("the offload committed no window")?.until();

    // Nothing new, nothing late: run_once with the sweep on, then off (order
    // alternating between samples).
    let mut idle_on = Vec::new();
    let mut idle_off = Vec::new();
    let mut buckets_compared = 0;
    for i in 0..SWEEP_IDLE_SAMPLES {
        for sweep_on in if i % 2 == 0 { [true, false] } else { [false, true] } {
            let cfg = if sweep_on { &on } else { &off };
            let timer = Timer::start(args.front_pid);
            let s = engine.run_once(cfg).await?;
            let mut sample = timer.stop(s.rows, json!({}));
            if s.rows != 0 || s.window.is_some() {
                return Err(format!("idle run_once committed a window of {} rows", s.rows).into());
            }
            match (&s.sweep, sweep_on) {
                (Some(sw), true) => {
                    if sw.late_rows != 0
                        || sw.buckets_differing != 0
                        || sw.excess_rows != 0
                        || sw.beyond_horizon_rows != 0
                    {
                        return Err(format!("idle sweep found differences: {sw:?}").into());
                    }
                    buckets_compared = sw.buckets;
                    sample = with(sample, "sweep_seconds", sw.duration.as_secs_f64().into());
                    idle_on.push(sample);
                }
                (None, false) => idle_off.push(sample),
                (sw, _) => return Err(format!("sweep {sw:?} with sweep_on = {sweep_on}").into()),
            }
        }
    }

    // 1% of one sweep bucket (the hour of the first row) arrives late: copies of
    // every 100th row of the bucket under new sequence numbers, below the
    // committed watermark.
    let bucket_lo = min_ts.div_euclid(hour) * hour;
    let in_bucket = format!(
        "toUnixTimestamp64Micro(exchange_timestamp) >= {bucket_lo} AND toUnixTimestamp64Micro(exchange_timestamp) < {}",
        bucket_lo + hour
    );
    let bucket_rows: u64 = client
        .query_raw(&format!(
            "SELECT count() FROM {DATABASE}.{copy} WHERE {in_bucket}"
        ))
        .fetch_one()
        .await?;
    execute(
        &client,
        &format!(
            "INSERT INTO {DATABASE}.{copy} SELECT exchange_timestamp, sequence_number + {LATE_SEQUENCE_OFFSET}, \
             symbol, price, quantity, quote_volume, event_time, kafka_offset, kafka_partition, ingestion_timestamp \
             FROM {DATABASE}.{copy} WHERE {in_bucket} AND sequence_number % {LATE_EVERY} = 0"
        ),
    )
    .await?;
    execute(&client, &format!("OPTIMIZE TABLE {DATABASE}.{copy} FINAL")).await?;
    let late_text = tsv(
        &client,
        &format!(
            "SELECT count(), toUnixTimestamp64Micro(max(exchange_timestamp)) FROM {DATABASE}.{copy} \
             WHERE sequence_number >= {LATE_SEQUENCE_OFFSET}"
        ),
    )
    .await?;
    let (late_rows, late_max_ts) = late_text
        .trim()
        .split_once('\t')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<i64>().ok()?)))
        .ok_or_else(|| format!("unreadable late rows {late_text:?}"))?;
    if late_rows == 0 || late_max_ts >= watermark.timestamp_micros() {
        return Err(
            format!("{late_rows} late rows, newest at {late_max_ts} µs, watermark {watermark}").into(),
        );
    }

    // The repair.
    let timer = Timer::start(args.front_pid);
    let s = engine.run_once(&on).await?;
    let mut repair = timer.stop(s.rows, json!({}));
    let sw = s.sweep.ok_or("the repair run did not sweep")?;
    if s.rows != 0 || sw.late_rows != late_rows || sw.repaired_rows != late_rows || sw.excess_rows != 0 {
        return Err(format!(
            "repair of {late_rows} late rows: window {} rows, sweep {sw:?}",
            s.rows
        )
        .into());
    }
    repair = with(repair, "sweep_seconds", sw.duration.as_secs_f64().into());
    repair = with(repair, "buckets_differing", sw.buckets_differing.into());
    // The engine's own view afterwards: nothing left to repair.
    let after = engine
        .run_once(&on)
        .await?
        .sweep
        .ok_or("no sweep after the repair")?;
    if after.late_rows != 0 || after.excess_rows != 0 {
        return Err(format!("after the repair the sweep still finds {after:?}").into());
    }

    let mut on_s: Vec<f64> = idle_on
        .iter()
        .map(|v| v["seconds"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let mut off_s: Vec<f64> = idle_off
        .iter()
        .map(|v| v["seconds"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let mut sweep_s: Vec<f64> = idle_on
        .iter()
        .map(|v| v["sweep_seconds"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let (on_median, off_median, sweep_median) = (median(&mut on_s), median(&mut off_s), median(&mut sweep_s));
    let location = sink.load_table(&on).await?.metadata().location().to_owned();
    Ok(json!({
        "rows": summary.rows,
        // The system's time: run_once with nothing new, sweep on (median).
        "seconds": on_median,
        "client_cpu": 0.0,
        "server_cpu": 0.0,
        "table_location": location,
        "source_table": copy,
        "late_horizon_seconds": horizon.as_secs(),
        "sweep_bucket_seconds": on.sweep_bucket().as_secs(),
        "buckets_compared": buckets_compared,
        "data_span_micros": [min_ts, max_ts],
        "offload": offload,
        "idle_on": idle_on,
        "idle_off": idle_off,
        "idle_on_median_s": on_median,
        "idle_off_median_s": off_median,
        "idle_sweep_median_s": sweep_median,
        "late_bucket_start_micros": bucket_lo,
        "late_bucket_rows": bucket_rows,
        "late_rows": late_rows,
        "repair": repair,
    }))
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
    if args.wire.client(setup.front.url()) == clickhouse::Compression::Lz4 {
        eprintln!("note: with --wire lz4, MB/s counts compressed wire bytes");
    }

    let mut runs: Vec<Run> = Vec::new();
    let mut prepared: Vec<maintain::Prepared> = Vec::new();
    for i in 0..repeat {
        for &system in &systems {
            if system == System::Wide || system == System::Backfill {
                // Its own tables and repetitions, after this loop.
                continue;
            }
            if system == System::Maintain {
                if prepared.is_empty() {
                    // Closed partitions of a fifth and four fifths of the rows.
                    for p in [rows / 5 / 4 * 4, rows * 4 / 5 / 4 * 4] {
                        prepared.push(maintain::prepare(&args, &setup, p)?);
                    }
                }
                for p in &prepared {
                    let mut run = maintain::measure(&args, &setup, p)?;
                    run.raw = with(run.raw, "repetition", i.into());
                    eprintln!(
                        "[{}/{repeat}] {:<10} {} rows compacted in {:.3} s ({:.0} rows/s), maintain {:.3} s, \
                         peak RSS {} MiB  {}",
                        i + 1,
                        system.name(),
                        run.rows,
                        run.seconds,
                        run.rows as f64 / run.seconds,
                        run.raw["seconds"].as_f64().unwrap_or(f64::NAN),
                        run.client_peak_rss >> 20,
                        run.checked
                    );
                    runs.push(run);
                }
                continue;
            }
            let tag = format!("{}-{i}", system.name());
            let run = run_system(&args, &setup, system, SOURCE_TABLE, &tag)?;
            if system == System::Sweep {
                let r = &run.raw;
                eprintln!(
                    "[{}/{repeat}] {:<10} offload {:.3} s, idle run_once sweep on {:.3} s / off {:.3} s, \
                     repair of {} rows {:.3} s  {}",
                    i + 1,
                    system.name(),
                    r["offload"]["seconds"].as_f64().unwrap_or(f64::NAN),
                    r["idle_on_median_s"].as_f64().unwrap_or(f64::NAN),
                    r["idle_off_median_s"].as_f64().unwrap_or(f64::NAN),
                    r["late_rows"],
                    r["repair"]["seconds"].as_f64().unwrap_or(f64::NAN),
                    run.checked
                );
            } else {
                eprintln!(
                    "[{}/{repeat}] {:<10} {:>8.3} s  {:>12.0} rows/s  {}",
                    i + 1,
                    system.name(),
                    run.seconds,
                    run.rows as f64 / run.seconds,
                    run.checked
                );
            }
            runs.push(run);
            if !args.keep && i + 1 < repeat {
                let _ = std::fs::remove_dir_all(setup.run_dir.join(&tag));
            }
        }
    }

    let (setup, wide) = if systems.contains(&System::Wide) {
        let wide_rows = args
            .wide_rows
            .unwrap_or(if args.quick { 200_000 } else { 1_000_000 });
        let (setup, v) = wide::run(&args, setup, wide_rows, repeat)?;
        (setup, Some(v))
    } else {
        (setup, None)
    };

    let (setup, backfill) = if systems.contains(&System::Backfill) {
        let backfill_rows = args
            .backfill_rows
            .unwrap_or(if args.quick { 2_000_000 } else { 20_000_000 });
        let (setup, v) = backfill::run(&args, setup, backfill_rows)?;
        (setup, Some(v))
    } else {
        (setup, None)
    };

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
        // The same window on mimalloc, when row 1m is run.
        let mimalloc = if systems.contains(&System::EngineMimalloc) {
            let run = run_system(
                &args,
                &setup,
                System::EngineMimalloc,
                RSS_TABLE,
                "engine-rss-mimalloc",
            )?;
            eprintln!(
                "[rss] engine on {rss_rows} rows, mimalloc: {:.3} s, peak RSS {} MiB",
                run.seconds,
                run.client_peak_rss >> 20
            );
            let _ = std::fs::remove_dir_all(setup.run_dir.join("engine-rss-mimalloc"));
            Some(run)
        } else {
            None
        };
        Some((run, mimalloc))
    } else {
        None
    };
    let (rss_run, rss_mimalloc) = rss_run.unzip();
    let rss_mimalloc = rss_mimalloc.flatten();
    let load_after = procfs::load_average();

    let summary = summarise(
        &systems
            .iter()
            .copied()
            .filter(|&s| s != System::Maintain)
            .collect::<Vec<_>>(),
        &runs,
    );
    let report = Report {
        rows,
        repeat,
        arrow_bytes,
        wire: args.wire,
        summary: &summary,
        rss: rss_run.as_ref().map(|r| (rss_rows, r)),
        load: (load_before, load_after),
        sweep_runs: runs.iter().filter(|r| r.system == System::Sweep).collect(),
        maintain_runs: runs.iter().filter(|r| r.system == System::Maintain).collect(),
        engine_runs: runs.iter().filter(|r| r.system == System::Engine).collect(),
    };
    println!("{}", report.render());
    if let Some(v) = &wide {
        println!("{}", wide::render(v));
    }
    if let Some(v) = &backfill {
        println!("{}", backfill::render(v));
    }

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
            "writer_tasks": args.writer_tasks.unwrap_or_else(offload_sink_iceberg::default_writer_tasks), "batch_size": args.batch_size, "uint64_mapping": "Int64",
            "source_settings": args.source_settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "zstd_level": 3, "partitioning": "day(exchange_timestamp)",
            "maintain_windows": args.maintain_windows, "maintain_target_file_size": args.maintain_target_file_size,
        },
        "source": { "table": SOURCE_TABLE, "rows": rows, "arrow_stream_bytes": arrow_bytes,
                    "count": checksum.0, "content_hash": checksum.1.to_string() },
        "seed_rows_per_second": SEED_ROWS_PER_S,
        "summary": summary.iter().map(|s| s.to_json(arrow_bytes, rows)).collect::<Vec<_>>(),
        "targets": report.targets_json(),
        "sweep": report.sweep(),
        "maintain": report.maintain(),
        "wide": wide,
        "backfill": backfill,
        "rss_check": rss_run.as_ref().map(|r| json!({ "rows": rss_rows, "run": r.to_json() })),
        "rss_check_mimalloc": rss_mimalloc.as_ref().map(|r| json!({ "rows": rss_rows, "run": r.to_json() })),
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

/// The ClickHouse settings pyiceberg's queries send: the blocks the source
/// asks for by default (`ClickHouseTable::window_settings`), unless a
/// `--source-setting` names a block setting, and every `--source-setting`.
/// The engine rows get only the `--source-setting`s: the source adds the rest.
fn peer_settings(args: &Args) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    let user_blocks = args.source_settings.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("max_block_size") || k.eq_ignore_ascii_case("preferred_block_size_bytes")
    });
    if !user_blocks {
        settings.push(("max_block_size".to_owned(), args.batch_size.to_string()));
        settings.push(("preferred_block_size_bytes".to_owned(), "0".to_owned()));
    }
    settings.extend(args.source_settings.iter().cloned());
    settings
}

/// Row 1d: the defaults before issue #15, one encoder task, LZ4 on the wire
/// and ClickHouse's own blocks (naming a block setting turns the source's
/// alignment off; 1,048,576 bytes is ClickHouse's default).
const EARLIER_DEFAULTS_BLOCKS: &str = "preferred_block_size_bytes=1048576";

/// The command that runs `system` as a child on `table`, writing under `out`.
fn child_command(
    args: &Args,
    setup: &Setup,
    system: System,
    table: &str,
    out: &Path,
) -> Result<Command, BoxError> {
    let peer_settings = peer_settings(args);
    let mut command = match system {
        System::Pyiceberg => {
            let mut c = Command::new(offload_testkit::venv_python());
            c.arg(offload_benches::repo_root().join("benches/peers/pyiceberg_append.py"));
            c
        }
        _ => {
            let defaults = system == System::EngineDefaults;
            let mut c = Command::new(std::env::current_exe()?);
            if system == System::EngineMimalloc {
                c.env(offload_benches::alloc::ALLOCATOR_ENV, "mimalloc");
            } else {
                c.env_remove(offload_benches::alloc::ALLOCATOR_ENV);
            }
            let wire = if defaults {
                "lz4".to_owned()
            } else {
                format!("{:?}", args.wire).to_lowercase()
            };
            c.args(["--child", system.name()]).args(["--wire", &wire]);
            if defaults {
                c.args(["--writer-tasks", "1"])
                    .arg(format!("--source-setting={EARLIER_DEFAULTS_BLOCKS}"));
            } else if let Some(n) = args.writer_tasks {
                c.args(["--writer-tasks", &n.to_string()]);
            }
            c.args(["--batch-size", &args.batch_size.to_string()])
                .args(["--maintain-windows", &args.maintain_windows.to_string()])
                .args([
                    "--maintain-target-file-size",
                    &args.maintain_target_file_size.to_string(),
                ]);
            for (name, value) in &args.source_settings {
                c.arg(format!("--source-setting={name}={value}"));
            }
            c
        }
    };
    if system == System::Pyiceberg {
        for (name, value) in &peer_settings {
            command.arg(format!("--setting={name}={value}"));
        }
    }
    command
        .args(["--url", setup.front.url()])
        .args(["--table", table])
        .arg("--out")
        .arg(out)
        .args(["--front-pid", &setup.front_pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(command)
}

/// What one child reported: its RESULT line, its resource usage, and the
/// front's peak RSS over its life.
struct ChildReport {
    raw: Value,
    usage: procfs::ChildUsage,
    server_peak_rss: u64,
}

/// Runs `command` (a child of [`child_command`]) to completion.
fn spawn_child(setup: &Setup, system: System, mut command: Command) -> Result<ChildReport, BoxError> {
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
    Ok(ChildReport {
        raw,
        usage,
        server_peak_rss,
    })
}

fn run_system(args: &Args, setup: &Setup, system: System, table: &str, tag: &str) -> Result<Run, BoxError> {
    let out = setup.run_dir.join(tag);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let command = child_command(args, setup, system, table, &out)?;
    let ChildReport {
        raw,
        usage,
        server_peak_rss,
    } = spawn_child(setup, system, command)?;
    let number = |k: &str| raw[k].as_f64().unwrap_or(0.0);
    let rows = raw["rows"].as_u64().unwrap_or(0);
    // Row 1m compares allocators: make sure each child ran on the one asked for.
    if let Some(allocator) = raw["allocator"].as_str() {
        let wanted = if system == System::EngineMimalloc {
            "mimalloc"
        } else {
            "system"
        };
        if allocator != wanted {
            return Err(format!("{}: ran on {allocator}, not {wanted}", system.name()).into());
        }
    }

    // The check that makes the time count.
    let (expected_rows, expected_hash) = setup.checksum;
    if rows != expected_rows {
        return Err(format!(
            "{}: {rows} rows reported, {expected_rows} expected",
            system.name()
        )
        .into());
    }
    // The sweep's source is its own copy of the table, with the late rows in it.
    let expected = if system == System::Sweep {
        let copy = raw["source_table"].as_str().ok_or("no source_table")?;
        let late = raw["late_rows"].as_u64().ok_or("no late_rows")?;
        let got = data::parse_checksum(
            &setup
                .front
                .query(&data::bronze_checksum(&format!("{DATABASE}.{copy}"))),
        )
        .ok_or("unreadable checksum")?;
        setup
            .front
            .query(&format!("DROP TABLE IF EXISTS {DATABASE}.{copy}"));
        if got.0 != expected_rows + late || got.1 == expected_hash {
            return Err(format!(
                "sweep: the source copy holds {got:?}, expected {} rows (with {late} late) and a new hash",
                expected_rows + late
            )
            .into());
        }
        got
    } else {
        (expected_rows, expected_hash)
    };
    let checked = if system.writes() {
        let location = raw["table_location"].as_str().ok_or("no table_location")?;
        let from = format!("icebergLocal('{location}')");
        let query =
            wide::Shape::of(table).map_or_else(|| data::bronze_checksum(&from), |s| s.checksum(&from));
        let got = data::parse_checksum(&setup.front.query(&query)).ok_or("unreadable checksum")?;
        if got != expected {
            return Err(format!(
                "{}: the Iceberg table holds {got:?}, the source {expected:?}",
                system.name(),
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
    /// Every run of the sweep system (its figures are medians over all their samples).
    sweep_runs: Vec<&'a Run>,
    /// Every run of the maintain system (both partition sizes).
    maintain_runs: Vec<&'a Run>,
    /// Every run of row 1, in repetition order.
    engine_runs: Vec<&'a Run>,
}

impl Report<'_> {
    /// The maintenance figures and their ratios to row 1.
    fn maintain(&self) -> Option<Value> {
        maintain::summary(
            &self.maintain_runs,
            self.summary.iter().find(|s| s.system == System::Engine),
            &self.engine_runs,
        )
    }

    /// The late-row sweep's figures: medians over every sample of every sweep
    /// run, and their ratios.
    fn sweep(&self) -> Option<Value> {
        if self.sweep_runs.is_empty() {
            return None;
        }
        // `raw[part][key]` of every run, or of every sample when `raw[part]` is a list.
        let all = |path: &[&str; 2]| -> Vec<f64> {
            let [part, key] = *path;
            let mut out = Vec::new();
            for r in &self.sweep_runs {
                match &r.raw[part] {
                    Value::Array(samples) => out.extend(samples.iter().filter_map(|s| s[key].as_f64())),
                    one => out.extend(one[key].as_f64()),
                }
            }
            out
        };
        let m = |path: &[&str; 2]| median(&mut all(path));
        let first = &self.sweep_runs[0].raw;
        let offload_s = m(&["offload", "seconds"]);
        let offload_rows = first["offload"]["rows"].as_f64().unwrap_or(f64::NAN);
        let on = m(&["idle_on", "seconds"]);
        let off = m(&["idle_off", "seconds"]);
        let sweep = m(&["idle_on", "sweep_seconds"]);
        let repair = m(&["repair", "seconds"]);
        let repair_sweep = m(&["repair", "sweep_seconds"]);
        let late = first["late_rows"].as_f64().unwrap_or(f64::NAN);
        let bucket_rows = first["late_bucket_rows"].as_f64().unwrap_or(f64::NAN);
        let offload_rps = offload_rows / offload_s;
        let repair_rps = late / repair;
        Some(json!({
            "late_horizon_seconds": first["late_horizon_seconds"], "sweep_bucket_seconds": first["sweep_bucket_seconds"],
            "buckets_compared": first["buckets_compared"],
            "samples": { "runs": self.sweep_runs.len(), "idle_per_run": SWEEP_IDLE_SAMPLES },
            "offload": { "rows": offload_rows, "seconds": offload_s, "rows_per_s": offload_rps,
                         "client_cpu_s": m(&["offload", "client_cpu"]), "server_cpu_s": m(&["offload", "server_cpu"]) },
            "idle": {
                "run_once_sweep_on_s": on, "run_once_sweep_off_s": off, "sweep_s": sweep,
                "sweep_on_client_cpu_s": m(&["idle_on", "client_cpu"]), "sweep_on_server_cpu_s": m(&["idle_on", "server_cpu"]),
                "sweep_off_client_cpu_s": m(&["idle_off", "client_cpu"]), "sweep_off_server_cpu_s": m(&["idle_off", "server_cpu"]),
                "added_by_sweep_s": on - off,
                "sweep_on_over_offload": on / offload_s, "added_over_offload": (on - off) / offload_s,
                "sweep_over_offload": sweep / offload_s, "sweep_on_over_sweep_off": on / off,
            },
            "repair": {
                "late_rows": late, "bucket_rows": bucket_rows, "fraction_of_bucket": late / bucket_rows,
                "buckets_differing": first["repair"]["buckets_differing"],
                "run_once_s": repair, "sweep_s": repair_sweep,
                "client_cpu_s": m(&["repair", "client_cpu"]), "server_cpu_s": m(&["repair", "server_cpu"]),
                "over_idle_sweep_on": repair / on, "over_offload": repair / offload_s,
                "rows_per_s": repair_rps, "rows_per_s_over_offload": repair_rps / offload_rps,
                "bucket_rows_per_s": bucket_rows / repair,
                "rows_per_s_over_engine_row": self.rate(System::Engine).map(|e| repair_rps / e),
            },
        }))
    }

    fn render_sweep(&self, v: &Value) -> String {
        let f = |p: &str, k: &str| v[p][k].as_f64().unwrap_or(f64::NAN);
        let mut s = format!(
            "\nlate-row sweep: a copy of the table offloaded by the engine; late_horizon {} h (covers the data), \
             {} s buckets, {} compared; medians of {} x {} idle samples, {} repair(s)\n",
            v["late_horizon_seconds"].as_u64().unwrap_or(0) / 3600,
            v["sweep_bucket_seconds"],
            v["buckets_compared"],
            v["samples"]["runs"],
            v["samples"]["idle_per_run"],
            v["samples"]["runs"],
        );
        s += &format!(
            "  {:<52} {:>9} {:>15}  {}\n",
            "run", "seconds", "CPU s cli+srv", "ratio"
        );
        s += &format!(
            "  {:<52} {:>9.3} {:>15}  {} rows/s\n",
            format!(
                "offload of the window ({} rows)",
                thousands(f("offload", "rows") as u64)
            ),
            f("offload", "seconds"),
            format!(
                "{:.2} + {:.2}",
                f("offload", "client_cpu_s"),
                f("offload", "server_cpu_s")
            ),
            thousands(f("offload", "rows_per_s") as u64),
        );
        s += &format!(
            "  {:<52} {:>9.3} {:>15}\n",
            "run_once, nothing new, sweep off (late_horizon 0)",
            f("idle", "run_once_sweep_off_s"),
            format!(
                "{:.2} + {:.2}",
                f("idle", "sweep_off_client_cpu_s"),
                f("idle", "sweep_off_server_cpu_s")
            ),
        );
        s += &format!(
            "  {:<52} {:>9.3} {:>15}  {:.2}% of the offload, {:.2}x sweep off; the sweep itself {:.3} s ({:.2}%)\n",
            "run_once, nothing new, sweep on",
            f("idle", "run_once_sweep_on_s"),
            format!(
                "{:.2} + {:.2}",
                f("idle", "sweep_on_client_cpu_s"),
                f("idle", "sweep_on_server_cpu_s")
            ),
            100.0 * f("idle", "sweep_on_over_offload"),
            f("idle", "sweep_on_over_sweep_off"),
            f("idle", "sweep_s"),
            100.0 * f("idle", "sweep_over_offload"),
        );
        s += &format!(
            "  {:<52} {:>9.3} {:>15}  {:.2}x the idle sweep run, {:.0}% of the offload; {} late rows/s = {:.2}% of the offload's rows/s; \
             the {} rows of the bucket diffed at {} rows/s\n",
            format!(
                "run_once repairing {} late rows ({:.2}% of a bucket)",
                thousands(f("repair", "late_rows") as u64),
                100.0 * f("repair", "fraction_of_bucket")
            ),
            f("repair", "run_once_s"),
            format!(
                "{:.2} + {:.2}",
                f("repair", "client_cpu_s"),
                f("repair", "server_cpu_s")
            ),
            f("repair", "over_idle_sweep_on"),
            100.0 * f("repair", "over_offload"),
            thousands(f("repair", "rows_per_s") as u64),
            100.0 * f("repair", "rows_per_s_over_offload"),
            thousands(f("repair", "bucket_rows") as u64),
            thousands((f("repair", "bucket_rows") / f("repair", "run_once_s")) as u64),
        );
        s
    }

    fn rate(&self, system: System) -> Option<f64> {
        self.summary
            .iter()
            .find(|s| s.system == system)
            .map(Summary::rows_per_s)
    }

    /// (what, measured text, target text, met) for each target the run
    /// covers: issue #15's, for the engine with every default (row 1).
    fn targets(&self) -> Vec<(String, String, String, Option<bool>)> {
        let mut t = Vec::new();
        let engine = self.rate(System::Engine);
        if let (Some(e), Some(c)) = (engine, self.rate(System::Ceiling)) {
            t.push((
                "end to end / ceiling".into(),
                format!("{:.0}%", 100.0 * e / c),
                ">= 75%".into(),
                Some(e >= 0.75 * c),
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
        if let (Some(e), Some(c)) = (engine, self.rate(System::ClickhouseDefaults)) {
            t.push((
                "engine / ClickHouse (default threads)".into(),
                format!("{:.2}x", e / c),
                ">= 1.3x".into(),
                Some(e >= 1.3 * c),
            ));
        }
        if let (Some(e), Some(c)) = (engine, self.rate(System::Clickhouse)) {
            t.push((
                "engine / ClickHouse (2 threads)".into(),
                format!("{:.2}x", e / c),
                "(shown)".into(),
                None,
            ));
        }
        if let (Some(e), Some(p)) = (engine, self.rate(System::Pyiceberg)) {
            t.push((
                "engine / pyiceberg".into(),
                format!("{:.2}x", e / p),
                ">= 4x".into(),
                Some(e >= 4.0 * p),
            ));
        }
        if let Some(run) = self
            .summary
            .iter()
            .find(|s| s.system == System::Engine)
            .map(|s| &s.median)
        {
            let per_million = run.client_cpu / (run.rows as f64 / 1e6);
            t.push((
                "engine CPU per million rows".into(),
                format!("{per_million:.2} CPU-s"),
                "<= 0.25 CPU-s".into(),
                Some(per_million <= 0.25),
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
                format!("peak RSS, {} row window (2 days)", human(rows as f64)),
                format!("{} MiB", run.client_peak_rss >> 20),
                "<= 256 MiB".into(),
                Some(run.client_peak_rss <= 256 << 20),
            )),
            None => t.push((
                "peak RSS, 10M row window (2 days)".into(),
                "not run".into(),
                "<= 256 MiB".into(),
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
        for sum in self.summary.iter().filter(|s| s.system != System::Sweep) {
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
        if let Some(v) = self.sweep() {
            s += &self.render_sweep(&v);
            s += "\n";
        }
        if let Some(v) = self.maintain() {
            s += &maintain::render(&v);
            s += "\n";
        }
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
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
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
