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

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use offload_core::duration::format_approx;
use offload_core::{
    BucketGrid, Source, TableConfig, TableState, Watermark, WatermarkStore, repair_edge,
    system_time_to_micros,
};
use offload_sink_iceberg::{IcebergSink, MaintenanceConfig, SUMMARY_MAINTENANCE, expirable_snapshots};
use serde_json::{Value, json};

use super::{Common, startup_failed, utc};
use crate::app::{AppError, clickhouse_source, connect_sink, connect_store, maintenance_config};
use crate::config::Config;
use crate::stack::Stack;

/// Consecutive failures that need a person (alert `OffloadConsecutiveFailures`).
pub const FAILURES: u32 = 3;
/// Lag (now minus the committed watermark) that needs a person (alert `OffloadLagHigh`).
pub const MAX_LAG: Duration = Duration::from_secs(30 * 60);
/// Lag at which a watermark that is not catching up is stale (alert
/// `OffloadWatermarkStale`).
pub const STALE: Duration = Duration::from_secs(3600);
/// A watermark moved this recently (a successful run committed rows) is
/// catching up, not stale (the alert's `changes(...[15m])`).
const CATCHING_UP: Duration = Duration::from_secs(15 * 60);

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

/// Late rows as the next sweep would find them, from per-bucket counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LateRows {
    /// Rows ClickHouse holds inside the late horizon beyond what Iceberg
    /// holds there: the next sweep repairs them.
    pub pending: u64,
    /// Rows ClickHouse holds in the horizon below the late horizon beyond
    /// what Iceberg holds: they arrived too late and are never offloaded.
    pub beyond_horizon: u64,
    /// Rows Iceberg holds inside the horizon that ClickHouse does not
    /// (expired upstream): kept, reported.
    pub excess: u64,
    /// Buckets inside the horizon whose counts differ.
    pub buckets_differing: usize,
}

/// Whether and how late rows were counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Late {
    /// Nothing committed yet: nothing to sweep below.
    #[default]
    NothingCommitted,
    /// `late_horizon = "0s"`: the table is never swept.
    Off,
    /// `--no-source`.
    Skipped,
    /// Counted.
    Counted(LateRows),
}

/// What the Iceberg table says of its maintenance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// When the newest maintenance (compaction, manifest rewrite) snapshot
    /// still in the metadata was committed.
    pub last_commit: Option<SystemTime>,
    /// Snapshots on main that a maintenance within the allowed interval
    /// would have expired: more than `keep_snapshots`, older than
    /// `snapshot_retention` (and replaced longer than `delete_grace` ago) by
    /// more than that interval. Above 0: maintenance is overdue.
    pub overdue_snapshots: u64,
    /// The interval allowed: twice `[maintenance] interval` (a day when it is
    /// `"0s"`: `offload maintain` from cron).
    pub interval: Duration,
}

/// One table's status.
#[derive(Debug, Clone, Default)]
pub struct TableStatus {
    /// The table's `name`.
    pub table: String,
    /// The sink table as configured.
    pub sink_table: String,
    /// What the Iceberg table holds.
    pub committed: Option<Watermark>,
    /// Now minus the committed watermark's timestamp.
    pub lag: Option<Duration>,
    /// Rows in the current snapshot (its summary's `total-records`).
    pub rows: Option<u64>,
    /// Data files in the current snapshot (`None`: no table yet).
    pub files: Option<u64>,
    /// Snapshots in the table's metadata.
    pub snapshots: Option<u64>,
    /// Late rows.
    pub late: Late,
    /// Maintenance, once the table exists.
    pub maintenance: Option<Maintenance>,
    /// The store's view of the runs.
    pub state: Option<TableState>,
    /// What could not be read.
    pub errors: Vec<String>,
}

impl TableStatus {
    /// What needs a person, one phrase each; empty when nothing does.
    pub fn problems(&self, now: SystemTime) -> Vec<String> {
        let mut out: Vec<String> = self.errors.iter().map(|e| format!("cannot read {e}")).collect();
        if let Some(s) = &self.state
            && s.consecutive_failures >= FAILURES
        {
            out.push(format!("{} consecutive failures", s.consecutive_failures));
        }
        if let Some(lag) = self.lag {
            // Catching up: the latest run succeeded lately and moved the watermark.
            let moving = self.state.as_ref().is_some_and(|s| {
                s.last_row_count > 0
                    && s.last_success_at
                        .and_then(|at| now.duration_since(at).ok())
                        .is_some_and(|age| age <= CATCHING_UP)
            });
            if lag > STALE && !moving {
                out.push(format!(
                    "lag {} > {} and not catching up",
                    format_approx(lag),
                    format_approx(STALE)
                ));
            } else if lag > MAX_LAG {
                out.push(format!("lag {} > {}", format_approx(lag), format_approx(MAX_LAG)));
            }
        }
        // The engine refuses to run past a store that claims more than the
        // table holds (a restored or recreated table): only a person can say
        // which side is right. Not judged when the table could not be read.
        let store = self.state.as_ref().and_then(|s| s.watermark);
        if let Some(store) = store
            && self.errors.is_empty()
            && self.committed.is_none_or(|table| store > table)
        {
            let table = self
                .committed
                .map_or_else(|| "nothing".to_owned(), |t| t.to_string());
            out.push(format!(
                "store ahead of Iceberg ({store} > {table}): runs are refused until a person looks"
            ));
        }
        if let Late::Counted(l) = &self.late
            && l.beyond_horizon > 0
        {
            out.push(format!(
                "{} rows arrived older than late_horizon and are not offloaded",
                l.beyond_horizon
            ));
        }
        if let Some(m) = &self.maintenance
            && m.overdue_snapshots > 0
        {
            out.push(format!(
                "maintenance overdue ({} snapshots past retention)",
                m.overdue_snapshots
            ));
        }
        out
    }

    /// The status as JSON.
    pub fn to_json(&self, now: SystemTime) -> Value {
        let wm = |w: &Option<Watermark>| {
            w.map(|w| {
                json!({
                    "timestamp_micros": w.timestamp_micros(),
                    "sequence": w.sequence(),
                    "utc": utc(w.timestamp_micros()),
                })
            })
        };
        let at = |t: Option<SystemTime>| t.map(|t| utc(system_time_to_micros(t)));
        let last_run = self.state.as_ref().map(|s| {
            json!({
                "status": s.status.as_str(),
                "run_id": s.last_run_id.map(|r| r.to_string()),
                "started_at": at(started(s)),
                "at": at(finished(s)),
                "rows": s.last_row_count,
                "duration_seconds": s.last_run_duration.map(|d| d.as_secs_f64()),
                "last_success_at": at(s.last_success_at),
                "last_error": s.last_error,
            })
        });
        let late = match &self.late {
            Late::Counted(l) => json!({
                "checked": "counted",
                "pending": l.pending,
                "beyond_horizon": l.beyond_horizon,
                "excess": l.excess,
                "buckets_differing": l.buckets_differing,
            }),
            other => json!({ "checked": match other {
                Late::NothingCommitted => "nothing_committed",
                Late::Off => "off",
                _ => "skipped",
            } }),
        };
        let problems = self.problems(now);
        json!({
            "table": self.table,
            "sink_table": self.sink_table,
            "committed": wm(&self.committed),
            "lag_seconds": self.lag.map(|d| d.as_secs_f64()),
            "store_watermark": wm(&self.state.as_ref().and_then(|s| s.watermark)),
            "last_run": last_run,
            "consecutive_failures": self.state.as_ref().map_or(0, |s| s.consecutive_failures),
            "lease": self.state.as_ref().and_then(|s| s.lease.as_ref()).map(|l| json!({
                "holder": l.holder,
                "token": l.token,
                "expires_at": at(Some(l.expires_at)),
                "held": l.expires_at > now,
            })),
            "rows": self.rows,
            "files": self.files,
            "snapshots": self.snapshots,
            "late_rows": late,
            "maintenance": self.maintenance.as_ref().map(|m| json!({
                "last_commit_at": at(m.last_commit),
                "overdue": m.overdue_snapshots > 0,
                "overdue_snapshots": m.overdue_snapshots,
                "interval_seconds": m.interval.as_secs_f64(),
            })),
            "errors": self.errors,
            "problems": problems,
            "ok": problems.is_empty(),
        })
    }
}

/// When the latest run started (its run id is a UUIDv7).
fn started(s: &TableState) -> Option<SystemTime> {
    s.last_run_id.and_then(|r| r.started_at())
}

/// When the latest run finished: its start plus its duration, else the
/// store's last change.
fn finished(s: &TableState) -> Option<SystemTime> {
    match (started(s), s.last_run_duration) {
        (Some(t), Some(d)) => Some(t + d),
        _ => s.updated_at,
    }
}

/// The verdict over every table: `(needs a person, first line)`.
pub fn verdict(rows: &[TableStatus], now: SystemTime) -> (bool, String) {
    let bad: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let p = r.problems(now);
            (!p.is_empty()).then(|| format!("{}: {}", r.table, p.join(", ")))
        })
        .collect();
    if bad.is_empty() {
        let n = rows.len();
        let tables = if n == 1 { "table" } else { "tables" };
        (false, format!("OK  {n} {tables}, nothing needs you"))
    } else {
        (true, format!("ATTENTION  {}", bad.join("; ")))
    }
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

/// `1 file`, `2 files`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn text(rows: &[TableStatus], now: SystemTime) -> String {
    let (_, first) = verdict(rows, now);
    let mut out = format!("{first}\n");
    let at = |t: SystemTime| utc(system_time_to_micros(t));
    for r in rows {
        out.push_str(&format!("\n{} ({})\n", r.table, r.sink_table));
        let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
        line(
            "watermark",
            match (r.committed, r.lag) {
                (Some(w), Some(lag)) => format!(
                    "{} (seq {}), lag {}",
                    utc(w.timestamp_micros()),
                    w.sequence(),
                    format_approx(lag)
                ),
                _ => "nothing committed".into(),
            },
        );
        if let Some(s) = &r.state {
            let when = finished(s).map_or_else(|| "-".into(), at);
            let took = s
                .last_run_duration
                .map(|d| format!(" in {:.2}s", d.as_secs_f64()))
                .unwrap_or_default();
            let rows = if s.status == offload_core::RunStatus::Success {
                format!(", {} rows", s.last_row_count)
            } else {
                String::new()
            };
            line(
                "last run",
                if s.last_run_id.is_none() {
                    "never".into()
                } else {
                    format!("{} {when}{rows}{took}", s.status.as_str())
                },
            );
            line(
                "failures",
                format!("{} in a row (attention at {FAILURES})", s.consecutive_failures),
            );
            if s.consecutive_failures > 0
                && let Some(e) = &s.last_error
            {
                line("last error", e.clone());
            }
            line(
                "lease",
                match &s.lease {
                    Some(l) if l.expires_at > now => {
                        format!("held by {} until {}", l.holder, at(l.expires_at))
                    }
                    Some(l) => format!("free (last held by {})", l.holder),
                    None => "free".into(),
                },
            );
        }
        if let (Some(n), Some(f), Some(sn)) = (r.rows, r.files, r.snapshots) {
            line(
                "table",
                format!(
                    "{} in {}, {}",
                    count(n, "row"),
                    count(f, "file"),
                    count(sn, "snapshot")
                ),
            );
        } else {
            line("table", "not created yet".into());
        }
        line(
            "late rows",
            match &r.late {
                Late::Counted(l) => {
                    let mut v = format!("{} pending (the next sweep repairs them)", l.pending);
                    if l.beyond_horizon > 0 {
                        v.push_str(&format!(
                            ", {} beyond the horizon (never offloaded)",
                            l.beyond_horizon
                        ));
                    }
                    if l.excess > 0 {
                        v.push_str(&format!(", {} in Iceberg only (expired upstream?)", l.excess));
                    }
                    v
                }
                Late::NothingCommitted => "-".into(),
                Late::Off => "sweep off (late_horizon = 0s)".into(),
                Late::Skipped => "not counted".into(),
            },
        );
        if let Some(m) = &r.maintenance {
            let last = m.last_commit.map_or_else(
                || "no maintenance commit in the metadata".into(),
                |t| format!("last commit {}", at(t)),
            );
            let state = if m.overdue_snapshots > 0 {
                format!("OVERDUE: {} snapshots past retention", m.overdue_snapshots)
            } else {
                "not overdue".into()
            };
            line("maintenance", format!("{last}, {state}"));
        }
        for e in &r.errors {
            line("cannot read", e.clone());
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_each_table_that_needs_a_person() {
        let now = SystemTime::now();
        let mut state = TableState::new("trades");
        state.consecutive_failures = 4;
        let failing = TableStatus {
            table: "trades".into(),
            state: Some(state),
            ..TableStatus::default()
        };
        // Catching up: its latest run committed rows a minute ago.
        let mut moving = TableState::new("quotes");
        moving.last_row_count = 500;
        moving.last_success_at = Some(now - Duration::from_secs(60));
        let behind = TableStatus {
            table: "quotes".into(),
            lag: Some(Duration::from_secs(2 * 3600 + 600)),
            state: Some(moving),
            ..TableStatus::default()
        };
        // Not moving: stale.
        let stale = TableStatus {
            state: None,
            ..behind.clone()
        };
        assert_eq!(stale.problems(now), ["lag 2h 10m > 1h and not catching up"]);
        let mut ahead = TableState::new("bars");
        ahead.watermark = Some(Watermark::new(10, 2));
        let ahead = TableStatus {
            table: "bars".into(),
            committed: Some(Watermark::new(10, 1)),
            state: Some(ahead),
            ..TableStatus::default()
        };
        assert_eq!(ahead.problems(now).len(), 1);
        assert!(ahead.problems(now)[0].starts_with("store ahead of Iceberg"));
        let fine = TableStatus {
            table: "bars".into(),
            lag: Some(Duration::from_secs(60)),
            ..TableStatus::default()
        };
        assert_eq!(
            verdict(std::slice::from_ref(&fine), now),
            (false, "OK  1 table, nothing needs you".into())
        );
        assert_eq!(
            verdict(&[failing, behind, fine], now),
            (
                true,
                "ATTENTION  trades: 4 consecutive failures; quotes: lag 2h 10m > 30m".into()
            )
        );
    }
}
