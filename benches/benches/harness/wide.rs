//! `--systems wide`: the same comparison on two wider tables than
//! `bronze_trades`, generated inside ClickHouse like it:
//!
//! * `silver_trades`: the seed's silver schema ([`data::SILVER_COLUMNS`]:
//!   `Decimal128(8)`, `DateTime64(6, 'UTC')`, `LowCardinality(String)`,
//!   `trade_conditions Array(String)`, `vendor_data Map(String, String)`,
//!   plus the bronze columns at that precision), 14 columns;
//! * `wide_50`: the criterion suite's 50-column table ([`data::WIDE_COLUMNS`]:
//!   every integer width, floats, decimals, strings, fixed strings, UUIDs,
//!   dates and times, a bool, nullables, arrays, maps, a tuple, an enum, an IPv4).
//!
//! For each, with `--repeat` repetitions: the ceiling (row 0's child: the
//! window's `ArrowStream`, read and thrown away), **the engine with every
//! default** (source, sink and table: no setting, no encoder count, no
//! compression choice, no type-mapping choice — whatever the crates default
//! to when the harness runs; `run_once` until the window is empty, so a
//! `max_window` default cannot cut it short) and ClickHouse's own Iceberg
//! writer (row 2's settings: zstd-3, no bloom filters, two insert threads)
//! writing the engine's Iceberg schema. Every output is checked like the
//! other rows: row count, and count + content hash over every column
//! ([`data::content_checksum`]) read back through `icebergLocal`.
//!
//! ClickHouse's writer refuses some types ("Unsupported type for iceberg"):
//! `LowCardinality` (cast to `String`, as row 2 does), `FixedString(N)`
//! (written as `string`; the engine writes `fixed[N]`) and `Bool` (written as
//! `int`; the engine writes `boolean`). The child reports each substitution
//! and the output prints them.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use offload_benches::data::{self, DATABASE};
use offload_core::{Offloader, SourceTable, TableConfig};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::ClickHouseSource;
use offload_source_clickhouse::types::ChType;
use offload_watermark_store::FileStore;
use serde_json::{Value, json};

use super::{
    Args, BoxError, Run, Setup, Summary, System, Timer, human, iceberg_local_insert, run_system, summarise,
    thousands, with,
};

/// One of the wide benchmark tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Silver,
    Wide50,
}

impl Shape {
    const ALL: [Shape; 2] = [Shape::Silver, Shape::Wide50];

    /// The ClickHouse (and Iceberg) table name.
    fn table(self) -> &'static str {
        match self {
            Shape::Silver => "silver_trades",
            Shape::Wide50 => "wide_50",
        }
    }

    /// The shape of the harness table `table`, if it is one of these.
    pub(super) fn of(table: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.table() == table)
    }

    fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Shape::Silver => data::SILVER_COLUMNS,
            Shape::Wide50 => data::WIDE_COLUMNS,
        }
    }

    /// The (timestamp, sequence) watermark columns.
    pub(super) fn watermark(self) -> (&'static str, &'static str) {
        match self {
            Shape::Silver => ("exchange_timestamp", "sequence_number"),
            Shape::Wide50 => ("ts", "seq"),
        }
    }

    /// The content-hash query over `from` (a table or `icebergLocal(...)`).
    pub(super) fn checksum(self, from: &str) -> String {
        data::content_checksum(self.columns(), from)
    }

    /// Creates and fills the table (one part, no merge left to run);
    /// returns its (count, content hash).
    fn generate(self, setup: &Setup, rows: u64) -> Result<(u64, u64), BoxError> {
        let t = Instant::now();
        let table = self.table();
        setup
            .front
            .query(&format!("DROP TABLE IF EXISTS {DATABASE}.{table}"));
        setup.front.query(&match self {
            Shape::Silver => data::silver_ddl(table),
            Shape::Wide50 => data::wide_ddl(table),
        });
        setup.front.query(&match self {
            Shape::Silver => data::silver_insert(table, rows),
            Shape::Wide50 => data::wide_insert(table, rows),
        });
        setup
            .front
            .query(&format!("OPTIMIZE TABLE {DATABASE}.{table} FINAL"));
        let checksum =
            data::parse_checksum(&setup.front.query(&self.checksum(&format!("{DATABASE}.{table}"))))
                .ok_or("unreadable checksum")?;
        if checksum.0 != rows {
            return Err(format!("generated {} rows of {table}, wanted {rows}", checksum.0).into());
        }
        eprintln!(
            "generated {rows} rows of {DATABASE}.{table} ({} columns) in {:.1} s",
            self.columns().len(),
            t.elapsed().as_secs_f64()
        );
        Ok(checksum)
    }
}

/// The engine's Iceberg schema for ClickHouse's writer: the type the
/// engine's defaults give `ty` (the source's type mapping, `UInt64` as
/// `decimal(20, 0)`), as a ClickHouse type `IcebergLocal` accepts. Types
/// ClickHouse's writer refuses get the nearest one it takes, and a note.
fn peer_type(column: &str, ty: &ChType, notes: &mut Vec<String>) -> Result<String, BoxError> {
    Ok(match ty {
        ChType::Nullable(t) => format!("Nullable({})", peer_type(column, t, notes)?),
        // A storage detail in ClickHouse; its Iceberg writer refuses it.
        ChType::LowCardinality(t) => peer_type(column, t, notes)?,
        ChType::Int {
            bits: 8 | 16 | 32,
            signed: true,
        }
        | ChType::Int {
            bits: 8 | 16,
            signed: false,
        } => "Int32".into(),
        ChType::Int {
            bits: 64,
            signed: true,
        }
        | ChType::Int {
            bits: 32,
            signed: false,
        } => "Int64".into(),
        ChType::Int {
            bits: 64,
            signed: false,
        } => "Decimal(20, 0)".into(),
        ChType::Float32 => "Float32".into(),
        ChType::Float64 => "Float64".into(),
        ChType::Decimal { precision, scale } if *precision <= 38 => format!("Decimal({precision}, {scale})"),
        ChType::String | ChType::Enum { .. } | ChType::Ipv4 | ChType::Ipv6 => "String".into(),
        ChType::Date | ChType::Date32 => "Date32".into(),
        ChType::DateTime { .. } | ChType::DateTime64 { .. } => "DateTime64(6, 'UTC')".into(),
        ChType::Uuid => "UUID".into(),
        ChType::Bool => {
            notes.push(format!("{column}: Bool written as int (the engine: boolean)"));
            "Int32".into()
        }
        ChType::FixedString(n) => {
            notes.push(format!(
                "{column}: FixedString({n}) written as string (the engine: fixed[{n}])"
            ));
            "String".into()
        }
        ChType::Array(t) => format!("Array({})", peer_type(column, t, notes)?),
        ChType::Map(k, v) => format!(
            "Map({}, {})",
            peer_type(column, k, notes)?,
            peer_type(column, v, notes)?
        ),
        ChType::Tuple(elements) => {
            let mut parts = Vec::new();
            for (name, t) in elements {
                let t = peer_type(column, t, notes)?;
                parts.push(match name {
                    Some(n) => format!("{n} {t}"),
                    None => t,
                });
            }
            format!("Tuple({})", parts.join(", "))
        }
        other => return Err(format!("{column}: no peer type for {}", other.sql()).into()),
    })
}

/// Child: ClickHouse's Iceberg writer on a wide table (row 2's settings),
/// into the engine's schema.
pub(super) async fn clickhouse_child(
    args: &Args,
    url: &str,
    table_name: &str,
    out: &Path,
) -> Result<Value, BoxError> {
    let shape = Shape::of(table_name).ok_or_else(|| format!("{table_name} is not a wide table"))?;
    let mut notes = Vec::new();
    let mut columns = Vec::new();
    let mut select = Vec::new();
    for (name, ty) in shape.columns() {
        let peer = peer_type(name, &ChType::parse(ty)?, &mut notes)?;
        columns.push(format!("{name} {peer}"));
        select.push(format!("CAST({name} AS {peer})"));
    }
    let result = iceberg_local_insert(
        args,
        url,
        System::Clickhouse,
        table_name,
        out,
        &columns.join(", "),
        &select.join(", "),
        shape.watermark().0,
    )
    .await?;
    Ok(with(result, "substitutions", notes.into()))
}

/// Child: the engine with every default, ClickHouse -> Iceberg.
pub(super) async fn engine_child(
    url: &str,
    table_name: &str,
    out: &Path,
    front_pid: u32,
) -> Result<Value, BoxError> {
    let shape = Shape::of(table_name).ok_or_else(|| format!("{table_name} is not a wide table"))?;
    let (ts, seq) = shape.watermark();
    let table = TableConfig::builder(table_name)
        .sink_table(format!("{DATABASE}.{table_name}"))
        .timestamp_column(ts)
        .sequence_column(seq)
        .build()?;
    let source = ClickHouseSource::builder(url).database(DATABASE).build()?;
    // Untimed: where the offload is done.
    let high = source
        .open_table(&table)
        .await?
        .high_watermark()
        .await?
        .ok_or("empty table")?;
    let warehouse = out.join("warehouse");
    std::fs::create_dir_all(&warehouse)?;
    let catalog = CatalogConfig::sqlite(
        out.join("catalog.db"),
        warehouse.to_str().ok_or("non-UTF-8 path")?,
    );
    let config = IcebergSinkConfig::new(catalog);
    // What the defaults resolved to in this run (the JSON keeps it).
    let defaults = json!({ "source": format!("{source:?}"), "sink": format!("{config:?}") });
    let sink = IcebergSink::connect(config).await?;
    let store = FileStore::open(out.join("watermarks"))?;
    let engine = Offloader::builder(Arc::new(source), Arc::new(sink.clone()), Arc::new(store)).build()?;
    let timer = Timer::start(front_pid);
    // Until the high watermark: with a max_window default shorter than the
    // data's span one run_once would offload only the first window (and a
    // run with nothing left would time a late-row sweep).
    let (mut rows, mut files, mut windows) = (0, 0, 0u32);
    loop {
        let summary = engine.run_once(&table).await?;
        let window = summary
            .window
            .ok_or("a run_once committed nothing before the high watermark")?;
        rows += summary.rows;
        files += summary.files;
        windows += 1;
        if window.until() >= high {
            break;
        }
    }
    let result = timer.stop(
        rows,
        json!({ "committed_files": files, "windows": windows, "defaults": defaults }),
    );
    let location = sink.load_table(&table).await?.metadata().location().to_owned();
    Ok(with(result, "table_location", location.into()))
}

/// The systems measured per wide table.
const SYSTEMS: [System; 3] = [System::Ceiling, System::WideEngine, System::WideClickhouse];

/// Parent: generates each wide table of `rows` rows, runs [`SYSTEMS`]
/// `repeat` times on it (each run checked by `run_system` against the
/// table's content hash) and returns the setup (its bronze checksum
/// restored) with the figures.
pub(super) fn run(args: &Args, setup: Setup, rows: u64, repeat: usize) -> Result<(Setup, Value), BoxError> {
    let bronze = setup.checksum;
    let mut setup = setup;
    let mut tables = Vec::new();
    for shape in Shape::ALL {
        let table = shape.table();
        setup = Setup {
            checksum: shape.generate(&setup, rows)?,
            ..setup
        };
        // Warm-up (not recorded): caches, and the window's ArrowStream size.
        let warm = run_system(args, &setup, System::Ceiling, table, &format!("{table}-warmup"))?;
        let arrow_bytes = warm.raw["wire_bytes"].as_u64().unwrap_or(0);
        let mut runs: Vec<Run> = Vec::new();
        for i in 0..repeat {
            for system in SYSTEMS {
                let tag = format!("{table}-{}-{i}", system.name());
                let run = run_system(args, &setup, system, table, &tag)?;
                eprintln!(
                    "[{}/{repeat}] {table} {:<16} {:>8.3} s  {:>12.0} rows/s  peak RSS {} MiB  {}",
                    i + 1,
                    system.name(),
                    run.seconds,
                    run.rows as f64 / run.seconds,
                    run.client_peak_rss >> 20,
                    run.checked
                );
                runs.push(run);
                if !args.keep && i + 1 < repeat {
                    let _ = std::fs::remove_dir_all(setup.run_dir.join(&tag));
                }
            }
        }
        let summary = summarise(&SYSTEMS, &runs);
        let notes = runs
            .iter()
            .find(|r| r.system == System::WideClickhouse)
            .map(|r| r.raw["substitutions"].clone())
            .unwrap_or(Value::Null);
        tables.push(json!({
            "table": table, "columns": shape.columns().len(), "rows": rows, "repeat": repeat,
            "arrow_stream_bytes": arrow_bytes,
            "count": setup.checksum.0, "content_hash": setup.checksum.1.to_string(),
            "clickhouse_substitutions": notes,
            "summary": summary.iter().map(|s| summary_json(s, arrow_bytes, rows)).collect::<Vec<_>>(),
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        }));
        setup
            .front
            .query(&format!("DROP TABLE IF EXISTS {DATABASE}.{table}"));
    }
    Ok((
        Setup {
            checksum: bronze,
            ..setup
        },
        json!({ "tables": tables }),
    ))
}

/// [`Summary::to_json`] plus the engine-side CPU per million rows.
fn summary_json(s: &Summary, arrow_bytes: u64, rows: u64) -> Value {
    let mut v = s.to_json(arrow_bytes, rows);
    let per_m = |cpu: f64| cpu / (s.median.rows as f64 / 1e6);
    v = with(v, "client_cpu_s_per_m_rows", per_m(s.median.client_cpu).into());
    with(v, "server_cpu_s_per_m_rows", per_m(s.median.server_cpu).into())
}

fn label(system: System) -> &'static str {
    match system {
        System::Ceiling => "0w ceiling: ArrowStream read, discarded",
        System::WideEngine => "1w offload, engine defaults",
        _ => "2w ClickHouse INSERT INTO IcebergLocal",
    }
}

/// The wide tables' section of the report.
pub(super) fn render(v: &Value) -> String {
    let mut s = String::from(
        "\nwide tables (--systems wide): the engine with every default vs the ceiling and ClickHouse's writer\n",
    );
    for t in v["tables"].as_array().into_iter().flatten() {
        let rows = t["rows"].as_u64().unwrap_or(0);
        let bytes = t["arrow_stream_bytes"].as_f64().unwrap_or(f64::NAN);
        s += &format!(
            "\n{}: {} rows, {} columns ({:.1} MB as ArrowStream, {:.0} B/row), median of {}\n",
            t["table"].as_str().unwrap_or("?"),
            thousands(rows),
            t["columns"],
            bytes / 1e6,
            bytes / rows as f64,
            t["repeat"],
        );
        s += &format!(
            "{:<47} {:>11} {:>8} {:>15} {:>15} {:>19} {:>6} {:>9}\n",
            "system",
            "rows/s",
            "MB/s",
            "CPU s cli+srv",
            "CPU-s/M cli+srv",
            "peak RSS cli / srv",
            "files",
            "÷ engine"
        );
        let summary = t["summary"].as_array().cloned().unwrap_or_default();
        let rate = |name: &str| {
            summary
                .iter()
                .find(|x| x["system"] == name)
                .and_then(|x| x["rows_per_s"].as_f64())
        };
        let engine = rate(System::WideEngine.name());
        for x in &summary {
            let f = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
            let system = SYSTEMS
                .into_iter()
                .find(|sy| x["system"] == sy.name())
                .unwrap_or(System::Ceiling);
            s += &format!(
                "{:<47} {:>11} {:>8.1} {:>15} {:>15} {:>19} {:>6} {:>9}\n",
                label(system),
                thousands(f("rows_per_s") as u64),
                f("mb_per_s"),
                format!("{:.2} + {:.2}", f("client_cpu_s"), f("server_cpu_s")),
                format!(
                    "{:.2} + {:.2}",
                    f("client_cpu_s_per_m_rows"),
                    f("server_cpu_s_per_m_rows")
                ),
                format!(
                    "{} / {} MiB",
                    x["client_peak_rss_bytes"].as_u64().unwrap_or(0) >> 20,
                    x["server_peak_rss_bytes"].as_u64().unwrap_or(0) >> 20
                ),
                if system == System::Ceiling {
                    "-".into()
                } else {
                    x["files"].to_string()
                },
                engine.map_or("-".into(), |e| format!("{:.2}x", f("rows_per_s") / e)),
            );
        }
        if let (Some(e), Some(c), Some(w)) = (
            engine,
            rate(System::Ceiling.name()),
            rate(System::WideClickhouse.name()),
        ) {
            s += &format!(
                "  engine: {} rows/s = {:.0}% of the ceiling, {:.2}x ClickHouse's writer\n",
                human(e),
                100.0 * e / c,
                e / w
            );
        }
        for note in t["clickhouse_substitutions"].as_array().into_iter().flatten() {
            s += &format!("  ClickHouse's writer: {}\n", note.as_str().unwrap_or("?"));
        }
    }
    s
}
