//! Row 6, `--systems backfill`: the first offload of a table with a long
//! history (issue #15), timed as a whole.
//!
//! The parent generates `--backfill-rows` rows of bronze trades (default
//! 20,000,000; 2,000,000 with `--quick`) the way the source table is made,
//! and a child runs the engine on it with every default except `max_window`,
//! set to the data's span / [`WINDOWS`] so the backfill takes that many
//! windows (the span of 20M rows is 83 minutes; the 1 h default would make
//! two). The child drives `Offloader::run_every` with an hour's interval, as
//! `offload run` would, and stops when a run reports no backlog: a backfill
//! that waited for the interval between its windows would not finish.
//! Checked before it counts: the Iceberg table's count and content hash
//! through ClickHouse (`icebergLocal`) equal the source's, and the child
//! committed at least [`WINDOWS`] windows. Peak RSS is the child's (wait4).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use offload_benches::data::DATABASE;
use offload_core::{CancellationToken, Offloader, TableConfig};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::ClickHouseSource;
use offload_watermark_store::FileStore;
use serde_json::{Value, json};

use super::{Args, BoxError, Setup, System, Timer, generate, run_system, thousands, tsv, with};

/// The table the backfill reads.
pub(super) const TABLE: &str = "bronze_trades_backfill";
/// Windows the backfill is cut into (`max_window` = span / this, rounded up).
const WINDOWS: i64 = 9;

/// Parent: generates the table, runs the child once, checks it, and returns
/// the setup (its checksum restored) with the figures.
pub(super) fn run(args: &Args, setup: Setup, rows: u64) -> Result<(Setup, Value), BoxError> {
    let bronze = setup.checksum;
    let setup = Setup {
        checksum: generate(&setup.front, TABLE, rows)?,
        ..setup
    };
    let run = run_system(args, &setup, System::Backfill, TABLE, "backfill")?;
    let windows = run.raw["windows"].as_u64().unwrap_or(0);
    if windows < WINDOWS as u64 {
        return Err(format!("backfill: {windows} windows, expected at least {WINDOWS}").into());
    }
    let rows_per_s = run.rows as f64 / run.seconds;
    eprintln!(
        "[backfill] {} rows in {windows} windows: {:.3} s, {} rows/s, engine CPU {:.2} s, peak RSS {} MiB  {}",
        thousands(run.rows),
        run.seconds,
        thousands(rows_per_s as u64),
        run.client_cpu,
        run.client_peak_rss >> 20,
        run.checked
    );
    if !args.keep {
        let _ = std::fs::remove_dir_all(setup.run_dir.join("backfill"));
    }
    setup
        .front
        .query(&format!("DROP TABLE IF EXISTS {DATABASE}.{TABLE}"));
    let v = json!({
        "rows": run.rows, "windows": windows, "window_ms": run.raw["window_ms"],
        "seconds": run.seconds, "rows_per_s": rows_per_s,
        "client_cpu_s": run.client_cpu, "cpu_s_per_million_rows": run.client_cpu / (run.rows as f64 / 1e6),
        "client_peak_rss_bytes": run.client_peak_rss, "server_peak_rss_bytes": run.server_peak_rss,
        "checked": run.checked, "run": run.to_json(),
    });
    Ok((
        Setup {
            checksum: bronze,
            ..setup
        },
        v,
    ))
}

/// The report's section.
pub(super) fn render(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let window_min = f("window_ms") / 60_000.0;
    format!(
        "\n### Backfill (row 6): {} rows, first run, {} windows of {window_min:.1} min\n\n\
         | rows/s | seconds | engine CPU s / M rows | peak RSS | check |\n| ---: | ---: | ---: | ---: | --- |\n\
         | {} | {:.3} | {:.3} | {} MiB | {} |\n",
        thousands(f("rows") as u64),
        v["windows"],
        thousands(f("rows_per_s") as u64),
        f("seconds"),
        f("cpu_s_per_million_rows"),
        v["client_peak_rss_bytes"].as_u64().unwrap_or(0) >> 20,
        v["checked"].as_str().unwrap_or("")
    )
}

/// Child: the engine with every default but `max_window`, `run_every` until
/// the table has caught up.
pub(super) async fn child(
    url: &str,
    table_name: &str,
    out: &Path,
    front_pid: u32,
) -> Result<Value, BoxError> {
    // Untimed: the data's span, for the window.
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_database(DATABASE);
    let span = tsv(
        &client,
        &format!(
            "SELECT toUnixTimestamp64Milli(max(exchange_timestamp)) - toUnixTimestamp64Milli(min(exchange_timestamp)) \
             FROM {DATABASE}.{table_name}"
        ),
    )
    .await?;
    let span_ms: i64 = span.trim().parse()?;
    let window_ms = (span_ms / WINDOWS + 1).max(1);
    let table = TableConfig::builder(table_name)
        .sink_table(format!("{DATABASE}.{table_name}"))
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .max_window(Duration::from_millis(u64::try_from(window_ms)?))
        .build()?;
    let source = ClickHouseSource::builder(url).database(DATABASE).build()?;
    let warehouse = out.join("warehouse");
    std::fs::create_dir_all(&warehouse)?;
    let catalog = CatalogConfig::sqlite(
        out.join("catalog.db"),
        warehouse.to_str().ok_or("non-UTF-8 path")?,
    );
    let sink = IcebergSink::connect(IcebergSinkConfig::new(catalog)).await?;
    let store = FileStore::open(out.join("watermarks"))?;
    let engine = Offloader::builder(Arc::new(source), Arc::new(sink.clone()), Arc::new(store)).build()?;

    let shutdown = CancellationToken::new();
    let (mut rows, mut files) = (0u64, 0usize);
    let mut windows: Vec<Value> = Vec::new();
    let mut failure: Option<String> = None;
    let timer = Timer::start(front_pid);
    // An hour's interval: only going on at once while behind finishes this.
    engine
        .run_every(
            std::slice::from_ref(&table),
            Duration::from_secs(3600),
            &shutdown,
            |results| {
                for (_, r) in results {
                    match r {
                        Ok(s) => {
                            if s.window.is_some() {
                                rows += s.rows;
                                files += s.files;
                                windows.push(json!({
                                    "rows": s.rows, "seconds": s.duration.as_secs_f64(),
                                    "backlog_s": s.backlog.as_secs_f64(),
                                    "eta_s": s.eta.map(|e| e.as_secs_f64()),
                                }));
                            }
                            if s.backlog.is_zero() {
                                shutdown.cancel();
                            }
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            shutdown.cancel();
                        }
                    }
                }
            },
        )
        .await;
    if let Some(e) = failure {
        return Err(format!("backfill run failed: {e}").into());
    }
    let result = timer.stop(
        rows,
        json!({
            "committed_files": files, "windows": windows.len(), "window_ms": window_ms,
            "per_window": windows,
        }),
    );
    let location = sink.load_table(&table).await?.metadata().location().to_owned();
    Ok(with(result, "table_location", location.into()))
}
