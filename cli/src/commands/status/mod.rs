//! `offload status`: per table, what the Iceberg table holds (committed
//! watermark, lag, rows, data files, snapshots, the last maintenance commit),
//! what the store says of the runs (last run, its outcome, consecutive
//! failures, the lease), and how many late rows the next sweep would repair,
//! under a first line that says whether anything needs a person.
//!
//! Reads only. Late rows are counted the way the sweep counts them (rows per
//! time bucket in ClickHouse against the Iceberg table's file metadata, over
//! the late horizon and the one below it), so status connects to ClickHouse
//! read-only for one aggregate per table; `--no-source` skips that.
//!
//! The verdict uses the thresholds of the shipped alert rules
//! (`monitoring/alerts.yml`): [`FAILURES`] consecutive failures, lag over
//! [`MAX_LAG`] (over [`STALE`] and not catching up: stale), rows beyond the
//! late horizon, the store ahead of the table, maintenance overdue. Where an
//! alert reads a metric of the running program that a separate process cannot
//! see, status reads the same fact from the table: maintenance is overdue when
//! main still holds snapshots expiry would have removed. Exit status: 0 nothing needs you, 1 something does
//! (or could not be read), 2 could not start.

mod report;

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use offload_core::{
    BucketGrid, Source, TableConfig, Watermark, WatermarkStore, repair_edge, system_time_to_micros,
};
use offload_sink_iceberg::{IcebergSink, MaintenanceConfig, SUMMARY_MAINTENANCE, expirable_snapshots};
use serde_json::json;

use report::text;
pub use report::{FAILURES, Late, LateRows, MAX_LAG, Maintenance, STALE, TableStatus, verdict};

use super::{Common, startup_failed};
use crate::app::{AppError, clickhouse_source, connect_sink, connect_store, maintenance_config};
use crate::config::Config;
use crate::stack::Stack;

/// How often maintenance is assumed to run when `offload run` does not
/// maintain (`interval = "0s"`: left to `offload maintain` from cron).
const CRON_MAINTENANCE: Duration = Duration::from_secs(24 * 3600);

/// `offload status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Print JSON (the verdict and a `tables` array) instead of text.
    #[arg(long)]
    json: bool,
    /// Do not connect to ClickHouse: late rows are not counted.
    #[arg(long)]
    no_source: bool,
}

/// What the status reads besides the store.
struct Readers<'a> {
    iceberg: &'a IcebergSink,
    sink: &'a dyn offload_core::Sink,
    /// `None` with `--no-source`.
    source: Option<&'a dyn Source>,
    store: &'a dyn WatermarkStore,
    cfg: &'a Config,
    /// `[maintenance]` as `maintain` applies it.
    maintenance: &'a MaintenanceConfig,
}

/// Reads one table's status.
async fn table_status(r: &Readers<'_>, t: &TableConfig, now: SystemTime) -> TableStatus {
    let mut s = TableStatus {
        table: t.name().to_owned(),
        sink_table: t.sink_table().to_owned(),
        ..TableStatus::default()
    };
    // The store first: it only ever follows the table, so a store read
    // before the table is never ahead of it unless it really is.
    match r.store.load(t.name()).await {
        Ok(state) => s.state = Some(state),
        Err(e) => s.errors.push(format!("store: {e}")),
    }
    let sink_table = match r.sink.open(t).await {
        Ok(table) => Some(table),
        Err(e) => {
            s.errors.push(format!("iceberg table: {e}"));
            None
        }
    };
    if let Some(table) = &sink_table {
        match table.committed().await {
            Ok(c) => s.committed = c.map(|c| c.until),
            Err(e) => s.errors.push(format!("committed watermark: {e}")),
        }
    }
    if let Some(w) = s.committed {
        let now = system_time_to_micros(now);
        s.lag = Some(Duration::from_micros(
            now.saturating_sub(w.timestamp_micros()).max(0) as u64,
        ));
    }
    match async { r.iceberg.open_table(t)?.load_if_exists().await }.await {
        Ok(Some(table)) => {
            let meta = table.metadata();
            s.snapshots = Some(meta.snapshots().count() as u64);
            let total = |key: &str| {
                meta.current_snapshot().map_or(0, |snap| {
                    snap.summary()
                        .additional_properties
                        .get(key)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                })
            };
            s.files = Some(total("total-data-files"));
            s.rows = Some(total("total-records"));
            let last_commit = meta
                .snapshots()
                .filter(|s| {
                    s.summary()
                        .additional_properties
                        .contains_key(SUMMARY_MAINTENANCE)
                })
                .map(|s| s.timestamp_ms())
                .max()
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
            // Twice the interval, as the alert `OffloadMaintenanceOverdue`
            // allows: what a maintenance that long ago would already have
            // expired, by the sink's own selection, is overdue.
            let interval = 2 * r.cfg.maintenance.run_interval().unwrap_or(CRON_MAINTENANCE);
            let due_at = now.checked_sub(interval).unwrap_or(SystemTime::UNIX_EPOCH);
            s.maintenance = Some(Maintenance {
                last_commit,
                overdue_snapshots: expirable_snapshots(meta, r.maintenance, due_at) as u64,
                interval,
            });
        }
        Ok(None) => {}
        Err(e) => s.errors.push(format!("iceberg table: {e}")),
    }
    let horizon = !t.late_horizon().is_zero();
    s.late = match (s.committed, &sink_table, r.source) {
        (Some(w), Some(table), Some(source)) if horizon => {
            match late_rows(source, table.as_ref(), t, w).await {
                Ok(l) => Late::Counted(l),
                Err(e) => {
                    s.errors.push(format!("late rows: {e}"));
                    Late::Skipped
                }
            }
        }
        (Some(_), Some(_), _) if !horizon => Late::Off,
        (Some(_), Some(_), None) => Late::Skipped,
        _ => Late::NothingCommitted,
    };
    s
}

/// Counts late rows over the buckets the sweep compares: the late horizon
/// below `committed` (repaired) and the one below it (reported). A count
/// difference per bucket, so a bucket holding as many excess as late rows
/// shows neither; the sweep's key diff is exact.
async fn late_rows(
    source: &dyn Source,
    sink: &dyn offload_core::SinkTable,
    t: &TableConfig,
    committed: Watermark,
) -> Result<LateRows, offload_core::Error> {
    let horizon = i64::try_from(t.late_horizon().as_micros()).unwrap_or(i64::MAX);
    let repair_from = repair_edge(committed, t.late_horizon(), t.sweep_bucket()).unwrap_or(i64::MIN);
    let report_from = committed
        .timestamp_micros()
        .saturating_sub(horizon)
        .saturating_sub(horizon);
    let grid = BucketGrid::covering(report_from, committed, t.sweep_bucket())?;
    let src = source.open(t).await?.bucket_counts(&grid).await?;
    let dst = sink.bucket_counts(&grid).await?;
    let mut late = LateRows::default();
    for (i, (a, b)) in src.iter().zip(&dst).enumerate() {
        if grid.lo_micros(i) >= repair_from {
            late.pending += a.saturating_sub(*b);
            late.excess += b.saturating_sub(*a);
            late.buckets_differing += usize::from(a != b);
        } else {
            late.beyond_horizon += a.saturating_sub(*b);
        }
    }
    Ok(late)
}

/// Runs the subcommand.
pub async fn main(args: StatusArgs) -> ExitCode {
    let start = async {
        let cfg = args.common.load()?;
        let stack = Stack::from_config(&cfg)?;
        let iceberg = connect_sink(&cfg).await?;
        let sink = stack.sink(iceberg.clone());
        let store = stack.store(connect_store(&cfg).await?);
        let source = if args.no_source {
            None
        } else {
            Some(stack.source(clickhouse_source(&cfg.clickhouse)?))
        };
        let maintenance = maintenance_config(&cfg)?;
        Ok::<_, AppError>((
            cfg.table_configs()?,
            cfg,
            maintenance,
            iceberg,
            sink,
            store,
            source,
        ))
    };
    let (tables, cfg, maintenance, iceberg, sink, store, source) = match start.await {
        Ok(v) => v,
        Err(e) => return startup_failed(&e),
    };
    let readers = Readers {
        iceberg: &iceberg,
        sink: sink.as_ref(),
        source: source.as_deref(),
        store: store.as_ref(),
        cfg: &cfg,
        maintenance: &maintenance,
    };
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for t in &tables {
        rows.push(table_status(&readers, t, now).await);
    }
    let (attention, first) = verdict(&rows, now);
    if args.json {
        let doc = json!({
            "verdict": if attention { "ATTENTION" } else { "OK" },
            "summary": first,
            "thresholds": {
                "consecutive_failures": FAILURES,
                "lag_seconds": MAX_LAG.as_secs(),
                "stale_seconds": STALE.as_secs(),
            },
            "tables": rows.iter().map(|r| r.to_json(now)).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialise")
        );
    } else {
        print!("{}", text(&rows, now));
    }
    if attention {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
