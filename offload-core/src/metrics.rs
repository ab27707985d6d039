//! Metric names and the one place they are emitted, through the `metrics` facade.
//!
//! Install any `metrics` recorder (for example `metrics-exporter-prometheus`) to
//! collect them; without one they cost almost nothing. Every metric carries a
//! `table` label but the program-wide [`INFO`] and [`TABLES_CONFIGURED`].
//!
//! A program calls [`register`] once at start-up: it describes every metric
//! (Prometheus `# HELP`) and creates each table's series at zero, so alert
//! rules see them from the first scrape (a counter that first appears at 1
//! has no `increase()` in Prometheus). The rules and the dashboard that use
//! these names live in the repository's `monitoring/` folder, and a test
//! checks both against a real run's `/metrics`.

use std::time::{Duration, SystemTime};

use crate::{Error, TableConfig, TableState, Watermark};

/// Rows committed (counter).
pub const ROWS_TOTAL: &str = "offload_rows_total";
/// Bytes staged and committed, as encoded by the sink (counter).
pub const BYTES_TOTAL: &str = "offload_bytes_total";
/// Files committed (counter).
pub const FILES_TOTAL: &str = "offload_files_total";
/// Runs, by `outcome` = committed | empty | failed | skipped | cancelled
/// (counter). `skipped`: another worker held the table's lease (lease
/// contention; normal when several workers share the tables). `cancelled`: a
/// shutdown abandoned the run before its commit (nothing committed; not a
/// failure).
pub const RUNS_TOTAL: &str = "offload_runs_total";
/// Failed runs, by error `kind` ([`Error::kind`]; counter). `lease_lost`:
/// another worker took the table over mid-run.
pub const FAILURES_TOTAL: &str = "offload_failures_total";
/// Run wall time, failed runs included (histogram, seconds; the Prometheus
/// exporter renders it as a summary: `_sum`, `_count`, quantiles).
pub const RUN_DURATION_SECONDS: &str = "offload_run_duration_seconds";
/// Wall time of the latest finished run, failed or not (gauge, seconds; 0
/// before the first).
pub const LAST_RUN_DURATION_SECONDS: &str = "offload_last_run_duration_seconds";
/// Failures since the table's last success, as the watermark store counts
/// them across restarts and workers, read back after each run (gauge).
pub const CONSECUTIVE_FAILURES: &str = "offload_consecutive_failures";
/// Runs that found the watermark store behind the sink's committed watermark
/// and rolled it forward: the trace of a stop between a commit and its store
/// update, repaired without rewriting anything (counter).
pub const STORE_BEHIND_SINK_TOTAL: &str = "offload_store_behind_sink_total";
/// Runs refused because the store claimed more than the sink committed
/// ([`Error::StoreAheadOfSink`]): continuing would skip rows, so the table
/// stops until a person looks (counter).
pub const STORE_AHEAD_OF_SINK_TOTAL: &str = "offload_store_ahead_of_sink_total";
/// Tables the program is configured with (gauge, no `table` label).
pub const TABLES_CONFIGURED: &str = "offload_tables_configured";
/// Always 1, labelled with the program's `version` (gauge, no `table` label).
pub const INFO: &str = "offload_info";
/// The configured interval between a table's scheduled maintenances
/// (gauge, seconds; 0 = after every run; absent when maintenance is not
/// scheduled). Next to [`LAST_MAINTENANCE_SECONDS`] it tells when
/// maintenance is overdue.
pub const MAINTENANCE_INTERVAL_SECONDS: &str = "offload_maintenance_interval_seconds";
/// Rows per second of the latest committed run (gauge).
pub const ROWS_PER_SECOND: &str = "offload_rows_per_second";
/// Event-time lag: now minus the committed watermark's timestamp (gauge, seconds).
pub const LAG_SECONDS: &str = "offload_lag_seconds";
/// The committed watermark's timestamp (gauge, seconds since the epoch).
pub const WATERMARK_SECONDS: &str = "offload_watermark_seconds";
/// When the latest successful run finished (gauge, seconds since the epoch).
pub const LAST_SUCCESS_SECONDS: &str = "offload_last_success_timestamp_seconds";
/// When the latest failed run finished (gauge, seconds since the epoch).
pub const LAST_FAILURE_SECONDS: &str = "offload_last_failure_timestamp_seconds";

/// Event time a table is still behind the source after its latest run: the
/// source's high watermark minus the committed watermark (gauge, seconds).
/// Zero when caught up; large during a backfill, which proceeds in
/// `max_window` steps ([`RunSummary::backlog`](crate::RunSummary::backlog)).
pub const BACKLOG_SECONDS: &str = "offload_backlog_seconds";
/// How long the backlog takes at the latest run's pace (gauge, seconds; zero
/// when caught up, left as it was when the run gave no pace to go by;
/// [`RunSummary::eta`](crate::RunSummary::eta)).
pub const BACKLOG_ETA_SECONDS: &str = "offload_backlog_eta_seconds";

pub(crate) fn backlog(table: &str, backlog: Duration, eta: Option<Duration>) {
    let t = table.to_owned();
    metrics::gauge!(BACKLOG_SECONDS, "table" => t.clone()).set(backlog.as_secs_f64());
    if let Some(eta) = eta {
        metrics::gauge!(BACKLOG_ETA_SECONDS, "table" => t).set(eta.as_secs_f64());
    }
}

/// Orphaned staged files deleted by cleanup (counter).
pub const ORPHANS_REMOVED_TOTAL: &str = "offload_orphans_removed_total";

pub(crate) fn orphans_removed(table: &str, n: u64) {
    metrics::counter!(ORPHANS_REMOVED_TOTAL, "table" => table.to_owned()).increment(n);
}

/// The error kinds a run can fail with, each table's
/// [`FAILURES_TOTAL`] series created at zero by [`register`].
const RUN_FAILURE_KINDS: [&str; 9] = [
    "source",
    "sink",
    "store",
    "commit_unknown",
    "conflict",
    "repair_conflict",
    "lease_lost",
    "watermark_mismatch",
    "store_ahead",
];

/// Describes every metric and creates every per-table series at zero (see the
/// module docs): call once at start-up, with the program's `version`, its
/// tables, and the maintenance interval it schedules (`None`: none).
///
/// Timestamps created at zero read "not since this start" (1970): the rules
/// in `monitoring/alerts.yml` skip a zero, or (maintenance overdue) give it
/// a grace period. A summary created with no sample renders its quantiles as
/// 0 and `_count` 0.
pub fn register(version: &str, tables: &[TableConfig], maintenance_interval: Option<Duration>) {
    describe();
    metrics::gauge!(INFO, "version" => version.to_owned()).set(1.0);
    metrics::gauge!(TABLES_CONFIGURED).set(tables.len() as f64);
    for t in tables {
        register_table(t.name(), maintenance_interval);
    }
}

fn register_table(table: &str, maintenance_interval: Option<Duration>) {
    let t = || table.to_owned();
    for name in [
        ROWS_TOTAL,
        BYTES_TOTAL,
        FILES_TOTAL,
        STORE_BEHIND_SINK_TOTAL,
        STORE_AHEAD_OF_SINK_TOTAL,
        ORPHANS_REMOVED_TOTAL,
        LATE_ROWS_TOTAL,
        LATE_ROWS_REPAIRED_TOTAL,
        MAINTENANCE_FILES_REWRITTEN_TOTAL,
        MAINTENANCE_SNAPSHOTS_EXPIRED_TOTAL,
        MAINTENANCE_FILES_DELETED_TOTAL,
    ] {
        metrics::counter!(name, "table" => t()).increment(0);
    }
    for outcome in ["committed", "empty", "failed", "skipped", "cancelled"] {
        metrics::counter!(RUNS_TOTAL, "table" => t(), "outcome" => outcome).increment(0);
    }
    for kind in RUN_FAILURE_KINDS {
        metrics::counter!(FAILURES_TOTAL, "table" => t(), "kind" => kind).increment(0);
    }
    for outcome in ["clean", "repaired"] {
        metrics::counter!(SWEEPS_TOTAL, "table" => t(), "outcome" => outcome).increment(0);
    }
    for outcome in ["changed", "noop", "failed"] {
        metrics::counter!(MAINTENANCE_RUNS_TOTAL, "table" => t(), "outcome" => outcome).increment(0);
    }
    for name in [
        ROWS_PER_SECOND,
        LAG_SECONDS,
        WATERMARK_SECONDS,
        LAST_SUCCESS_SECONDS,
        LAST_FAILURE_SECONDS,
        LAST_RUN_DURATION_SECONDS,
        CONSECUTIVE_FAILURES,
        BACKLOG_SECONDS,
        BACKLOG_ETA_SECONDS,
        LATE_OLDEST_AGE_SECONDS,
        LATE_BEYOND_HORIZON_ROWS,
        SINK_EXCESS_ROWS,
        LAST_SWEEP_SECONDS,
        LAST_MAINTENANCE_SECONDS,
    ] {
        metrics::gauge!(name, "table" => t()).set(0.0);
    }
    if let Some(every) = maintenance_interval {
        metrics::gauge!(MAINTENANCE_INTERVAL_SECONDS, "table" => t()).set(every.as_secs_f64());
    }
    // Registered without a sample, so `_sum` and `_count` exist at 0.
    let _ = metrics::histogram!(RUN_DURATION_SECONDS, "table" => t());
}

/// What a metric is, for its `# HELP` line.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// `# HELP` text for every metric: a short form of each constant's docs.
const HELP: &[(&str, Kind, &str)] = &[
    (ROWS_TOTAL, Kind::Counter, "Rows committed."),
    (
        BYTES_TOTAL,
        Kind::Counter,
        "Bytes staged and committed, as encoded by the sink.",
    ),
    (FILES_TOTAL, Kind::Counter, "Files committed."),
    (
        RUNS_TOTAL,
        Kind::Counter,
        "Runs by outcome: committed, empty, failed, skipped (lease held elsewhere), cancelled (shutdown).",
    ),
    (FAILURES_TOTAL, Kind::Counter, "Failed runs by error kind."),
    (
        RUN_DURATION_SECONDS,
        Kind::Histogram,
        "Run wall time in seconds, failed runs included.",
    ),
    (
        LAST_RUN_DURATION_SECONDS,
        Kind::Gauge,
        "Wall time of the latest finished run, seconds.",
    ),
    (
        CONSECUTIVE_FAILURES,
        Kind::Gauge,
        "Failures since the last success, as the watermark store counts them.",
    ),
    (
        STORE_BEHIND_SINK_TOTAL,
        Kind::Counter,
        "Runs that found the store behind the sink and rolled it forward.",
    ),
    (
        STORE_AHEAD_OF_SINK_TOTAL,
        Kind::Counter,
        "Runs refused because the store was ahead of the sink.",
    ),
    (
        TABLES_CONFIGURED,
        Kind::Gauge,
        "Tables the program is configured with.",
    ),
    (
        INFO,
        Kind::Gauge,
        "Always 1, labelled with the program's version.",
    ),
    (
        ROWS_PER_SECOND,
        Kind::Gauge,
        "Rows per second of the latest committed run.",
    ),
    (
        LAG_SECONDS,
        Kind::Gauge,
        "Now minus the committed watermark's timestamp at the latest run, seconds.",
    ),
    (
        WATERMARK_SECONDS,
        Kind::Gauge,
        "The committed watermark's timestamp, seconds since the epoch.",
    ),
    (
        LAST_SUCCESS_SECONDS,
        Kind::Gauge,
        "When the latest successful run finished (0: none yet).",
    ),
    (
        LAST_FAILURE_SECONDS,
        Kind::Gauge,
        "When the latest failed run finished (0: none yet).",
    ),
    (
        BACKLOG_SECONDS,
        Kind::Gauge,
        "Event time the table is behind the source after its latest run.",
    ),
    (
        BACKLOG_ETA_SECONDS,
        Kind::Gauge,
        "How long the backlog takes at the latest run's pace, seconds.",
    ),
    (
        ORPHANS_REMOVED_TOTAL,
        Kind::Counter,
        "Orphaned staged files deleted by cleanup.",
    ),
    (
        OPERATION_DURATION_SECONDS,
        Kind::Histogram,
        "Duration of one source, sink or store call, seconds.",
    ),
    (
        OPERATION_ERRORS_TOTAL,
        Kind::Counter,
        "Failed source, sink or store calls (after retries).",
    ),
    (
        LATE_ROWS_TOTAL,
        Kind::Counter,
        "Late rows the sweep found missing from the sink.",
    ),
    (
        LATE_ROWS_REPAIRED_TOTAL,
        Kind::Counter,
        "Late rows the sweep committed.",
    ),
    (
        LATE_OLDEST_AGE_SECONDS,
        Kind::Gauge,
        "Age of the oldest late row the latest sweep found, seconds.",
    ),
    (
        LATE_BEYOND_HORIZON_ROWS,
        Kind::Gauge,
        "Rows the latest sweep saw arrive older than the late horizon: never offloaded.",
    ),
    (
        SINK_EXCESS_ROWS,
        Kind::Gauge,
        "Rows the sink holds inside the horizon that the source does not.",
    ),
    (
        SWEEPS_TOTAL,
        Kind::Counter,
        "Late-row sweeps by outcome: clean, repaired.",
    ),
    (
        LAST_SWEEP_SECONDS,
        Kind::Gauge,
        "When the latest sweep finished (0: none yet).",
    ),
    (
        MAINTENANCE_RUNS_TOTAL,
        Kind::Counter,
        "Maintenance runs by outcome: changed, noop, failed.",
    ),
    (
        MAINTENANCE_FILES_REWRITTEN_TOTAL,
        Kind::Counter,
        "Data files compaction rewrote.",
    ),
    (
        MAINTENANCE_SNAPSHOTS_EXPIRED_TOTAL,
        Kind::Counter,
        "Snapshots expired.",
    ),
    (
        MAINTENANCE_FILES_DELETED_TOTAL,
        Kind::Counter,
        "Files maintenance deleted.",
    ),
    (
        LAST_MAINTENANCE_SECONDS,
        Kind::Gauge,
        "When the latest successful maintenance finished (0: none yet).",
    ),
    (
        MAINTENANCE_INTERVAL_SECONDS,
        Kind::Gauge,
        "Configured interval between scheduled maintenances, seconds.",
    ),
];

fn describe() {
    for &(name, kind, help) in HELP {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// The store's view of the table after a run: its consecutive failures.
pub(crate) fn store_state(state: &TableState) {
    metrics::gauge!(CONSECUTIVE_FAILURES, "table" => state.table.clone())
        .set(f64::from(state.consecutive_failures));
}

/// The store was found behind the sink and rolled forward.
pub(crate) fn store_behind(table: &str) {
    metrics::counter!(STORE_BEHIND_SINK_TOTAL, "table" => table.to_owned()).increment(1);
}

fn epoch_seconds(t: SystemTime) -> f64 {
    crate::system_time_to_micros(t) as f64 / 1e6
}

pub(crate) fn watermark(table: &str, wm: Watermark, now: SystemTime) {
    let t = table.to_owned();
    metrics::gauge!(WATERMARK_SECONDS, "table" => t.clone()).set(wm.as_seconds_f64());
    metrics::gauge!(LAG_SECONDS, "table" => t).set((epoch_seconds(now) - wm.as_seconds_f64()).max(0.0));
}

pub(crate) fn success(table: &str, rows: u64, bytes: u64, files: usize, duration: Duration, now: SystemTime) {
    let t = table.to_owned();
    let outcome = if rows == 0 && files == 0 {
        "empty"
    } else {
        "committed"
    };
    metrics::counter!(RUNS_TOTAL, "table" => t.clone(), "outcome" => outcome).increment(1);
    metrics::counter!(ROWS_TOTAL, "table" => t.clone()).increment(rows);
    metrics::counter!(BYTES_TOTAL, "table" => t.clone()).increment(bytes);
    metrics::counter!(FILES_TOTAL, "table" => t.clone()).increment(files as u64);
    metrics::histogram!(RUN_DURATION_SECONDS, "table" => t.clone()).record(duration.as_secs_f64());
    metrics::gauge!(LAST_RUN_DURATION_SECONDS, "table" => t.clone()).set(duration.as_secs_f64());
    if rows > 0 && !duration.is_zero() {
        metrics::gauge!(ROWS_PER_SECOND, "table" => t.clone()).set(rows as f64 / duration.as_secs_f64());
    }
    metrics::gauge!(LAST_SUCCESS_SECONDS, "table" => t).set(epoch_seconds(now));
}

pub(crate) fn failure(table: &str, err: &Error, duration: Duration, now: SystemTime) {
    let t = table.to_owned();
    match err {
        // Another worker has the table: normal when scaled out, not a failure.
        Error::LeaseHeld { .. } => {
            metrics::counter!(RUNS_TOTAL, "table" => t, "outcome" => "skipped").increment(1);
            return;
        }
        // A graceful stop: nothing committed, the next run takes the window.
        Error::Cancelled => {
            metrics::counter!(RUNS_TOTAL, "table" => t, "outcome" => "cancelled").increment(1);
            return;
        }
        Error::StoreAheadOfSink { .. } => {
            metrics::counter!(STORE_AHEAD_OF_SINK_TOTAL, "table" => t.clone()).increment(1)
        }
        _ => {}
    }
    metrics::counter!(RUNS_TOTAL, "table" => t.clone(), "outcome" => "failed").increment(1);
    metrics::counter!(FAILURES_TOTAL, "table" => t.clone(), "kind" => err.kind()).increment(1);
    metrics::histogram!(RUN_DURATION_SECONDS, "table" => t.clone()).record(duration.as_secs_f64());
    metrics::gauge!(LAST_RUN_DURATION_SECONDS, "table" => t.clone()).set(duration.as_secs_f64());
    metrics::gauge!(LAST_FAILURE_SECONDS, "table" => t).set(epoch_seconds(now));
}

/// Duration of one trait call, by `op` (e.g. `sink.commit`) and `table`
/// (histogram, seconds; recorded by [`layer::Metrics`](crate::layer::Metrics)).
pub const OPERATION_DURATION_SECONDS: &str = "offload_operation_duration_seconds";
/// Failed trait calls, by `op`, `table` and error `kind` (counter; recorded by
/// [`layer::Metrics`](crate::layer::Metrics)).
pub const OPERATION_ERRORS_TOTAL: &str = "offload_operation_errors_total";

pub(crate) fn operation(op: &'static str, table: &str, duration: Duration, err: Option<&Error>) {
    metrics::histogram!(OPERATION_DURATION_SECONDS, "op" => op, "table" => table.to_owned())
        .record(duration.as_secs_f64());
    if let Some(e) = err {
        metrics::counter!(OPERATION_ERRORS_TOTAL, "op" => op, "table" => table.to_owned(), "kind" => e.kind())
            .increment(1);
    }
}

/// Late rows the sweep found missing from the sink, inside the horizon (counter).
pub const LATE_ROWS_TOTAL: &str = "offload_late_rows_total";
/// Late rows the sweep committed (counter).
pub const LATE_ROWS_REPAIRED_TOTAL: &str = "offload_late_rows_repaired_total";
/// Age of the oldest late row the latest sweep found: now minus its event
/// timestamp; 0 when it found none (gauge, seconds).
pub const LATE_OLDEST_AGE_SECONDS: &str = "offload_late_oldest_age_seconds";
/// Rows the latest sweep saw that arrived older than the late horizon and are
/// therefore never repaired (gauge; anything above 0 needs a person).
pub const LATE_BEYOND_HORIZON_ROWS: &str = "offload_late_beyond_horizon_rows";
/// Rows the sink holds inside the horizon that the source does not (expired
/// upstream, or duplicates), as of the latest sweep; never deleted (gauge).
pub const SINK_EXCESS_ROWS: &str = "offload_sink_excess_rows";
/// Sweeps, by `outcome` = clean | repaired (counter).
pub const SWEEPS_TOTAL: &str = "offload_sweeps_total";
/// When the latest sweep finished (gauge, seconds since the epoch).
pub const LAST_SWEEP_SECONDS: &str = "offload_last_sweep_timestamp_seconds";

pub(crate) fn sweep(table: &str, s: &crate::SweepSummary, now: SystemTime) {
    let t = table.to_owned();
    let outcome = if s.repaired_rows > 0 { "repaired" } else { "clean" };
    metrics::counter!(SWEEPS_TOTAL, "table" => t.clone(), "outcome" => outcome).increment(1);
    metrics::counter!(LATE_ROWS_TOTAL, "table" => t.clone()).increment(s.late_rows);
    metrics::counter!(LATE_ROWS_REPAIRED_TOTAL, "table" => t.clone()).increment(s.repaired_rows);
    let age = s
        .oldest_late
        .map_or(0.0, |o| (epoch_seconds(now) - o.as_seconds_f64()).max(0.0));
    metrics::gauge!(LATE_OLDEST_AGE_SECONDS, "table" => t.clone()).set(age);
    metrics::gauge!(LATE_BEYOND_HORIZON_ROWS, "table" => t.clone()).set(s.beyond_horizon_rows as f64);
    metrics::gauge!(SINK_EXCESS_ROWS, "table" => t.clone()).set(s.excess_rows as f64);
    metrics::gauge!(LAST_SWEEP_SECONDS, "table" => t).set(epoch_seconds(now));
}

/// Maintenance runs ([`SinkTable::maintain`](crate::SinkTable::maintain)
/// called by the engine), by `outcome` = changed | noop | failed (counter).
pub const MAINTENANCE_RUNS_TOTAL: &str = "offload_maintenance_runs_total";
/// Data files compaction removed from the live table, their rows rewritten
/// into fewer files (counter).
pub const MAINTENANCE_FILES_REWRITTEN_TOTAL: &str = "offload_maintenance_files_rewritten_total";
/// Snapshots expired (counter).
pub const MAINTENANCE_SNAPSHOTS_EXPIRED_TOTAL: &str = "offload_maintenance_snapshots_expired_total";
/// Files maintenance deleted: those only expired snapshots referenced, and
/// orphans no snapshot ever referenced (counter).
pub const MAINTENANCE_FILES_DELETED_TOTAL: &str = "offload_maintenance_files_deleted_total";
/// When the latest successful maintenance finished (gauge, seconds since the epoch).
pub const LAST_MAINTENANCE_SECONDS: &str = "offload_last_maintenance_timestamp_seconds";

pub(crate) fn maintenance(table: &str, r: Result<&crate::MaintenanceSummary, &Error>, now: SystemTime) {
    let t = table.to_owned();
    let s = match r {
        Ok(s) => s,
        Err(_) => {
            metrics::counter!(MAINTENANCE_RUNS_TOTAL, "table" => t, "outcome" => "failed").increment(1);
            return;
        }
    };
    let outcome = if s.is_noop() { "noop" } else { "changed" };
    metrics::counter!(MAINTENANCE_RUNS_TOTAL, "table" => t.clone(), "outcome" => outcome).increment(1);
    metrics::counter!(MAINTENANCE_FILES_REWRITTEN_TOTAL, "table" => t.clone()).increment(s.files_rewritten);
    metrics::counter!(MAINTENANCE_SNAPSHOTS_EXPIRED_TOTAL, "table" => t.clone())
        .increment(s.snapshots_expired);
    metrics::counter!(MAINTENANCE_FILES_DELETED_TOTAL, "table" => t.clone())
        .increment(s.files_deleted + s.orphans_deleted);
    metrics::gauge!(LAST_MAINTENANCE_SECONDS, "table" => t).set(epoch_seconds(now));
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::memory::{MemorySink, MemorySource, MemoryStore};
    use crate::{ManualClock, Offloader, WatermarkStore};

    /// Values by `name{k=v,...}` (labels sorted), each key present from its
    /// registration on: counters and gauges their value, histograms their
    /// sample count.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<HashMap<String, f64>>>);

    struct Cell(Arc<Mutex<HashMap<String, f64>>>, String);

    impl Cell {
        fn update(&self, f: impl FnOnce(&mut f64)) {
            f(self.0.lock().unwrap().entry(self.1.clone()).or_default());
        }
    }

    impl metrics::CounterFn for Cell {
        fn increment(&self, v: u64) {
            self.update(|x| *x += v as f64);
        }
        fn absolute(&self, v: u64) {
            self.update(|x| *x = v as f64);
        }
    }

    impl metrics::GaugeFn for Cell {
        fn increment(&self, v: f64) {
            self.update(|x| *x += v);
        }
        fn decrement(&self, v: f64) {
            self.update(|x| *x -= v);
        }
        fn set(&self, v: f64) {
            self.update(|x| *x = v);
        }
    }

    impl metrics::HistogramFn for Cell {
        fn record(&self, _: f64) {
            self.update(|x| *x += 1.0);
        }
    }

    impl Recorded {
        fn cell(&self, key: &metrics::Key) -> Arc<Cell> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let k = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0.lock().unwrap().entry(k.clone()).or_default();
            Arc::new(Cell(self.0.clone(), k))
        }
        fn get(&self, k: &str) -> Option<f64> {
            self.0.lock().unwrap().get(k).copied()
        }
        fn names(&self) -> std::collections::BTreeSet<String> {
            let m = self.0.lock().unwrap();
            m.keys()
                .map(|k| k.split('{').next().unwrap().to_owned())
                .collect()
        }
    }

    impl metrics::Recorder for Recorded {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            metrics::Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::from_arc(self.cell(key))
        }
    }

    fn table(name: &str) -> TableConfig {
        TableConfig::builder(name)
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    #[test]
    fn register_creates_every_per_table_series_at_zero() {
        let r = Recorded::default();
        metrics::with_local_recorder(&r, || {
            register(
                "1.2.3",
                &[table("a"), table("b")],
                Some(Duration::from_secs(3600)),
            );
        });
        assert_eq!(r.get(&format!("{INFO}{{version=1.2.3}}")), Some(1.0));
        assert_eq!(r.get(&format!("{TABLES_CONFIGURED}{{}}")), Some(2.0));
        for t in ["a", "b"] {
            for outcome in ["committed", "empty", "failed", "skipped", "cancelled"] {
                let k = format!("{RUNS_TOTAL}{{outcome={outcome},table={t}}}");
                assert_eq!(r.get(&k), Some(0.0), "{k}");
            }
            for kind in ["store_ahead", "lease_lost", "source"] {
                let k = format!("{FAILURES_TOTAL}{{kind={kind},table={t}}}");
                assert_eq!(r.get(&k), Some(0.0), "{k}");
            }
            for name in [
                CONSECUTIVE_FAILURES,
                STORE_AHEAD_OF_SINK_TOTAL,
                RUN_DURATION_SECONDS,
            ] {
                assert_eq!(r.get(&format!("{name}{{table={t}}}")), Some(0.0), "{name}");
            }
            assert_eq!(
                r.get(&format!("{MAINTENANCE_INTERVAL_SECONDS}{{table={t}}}")),
                Some(3600.0)
            );
        }
        // Every metric of this module but the per-call ones, which carry an
        // `op` label and appear with the first call.
        let all = [
            ROWS_TOTAL,
            BYTES_TOTAL,
            FILES_TOTAL,
            RUNS_TOTAL,
            FAILURES_TOTAL,
            RUN_DURATION_SECONDS,
            LAST_RUN_DURATION_SECONDS,
            CONSECUTIVE_FAILURES,
            STORE_BEHIND_SINK_TOTAL,
            STORE_AHEAD_OF_SINK_TOTAL,
            TABLES_CONFIGURED,
            INFO,
            MAINTENANCE_INTERVAL_SECONDS,
            ROWS_PER_SECOND,
            LAG_SECONDS,
            WATERMARK_SECONDS,
            LAST_SUCCESS_SECONDS,
            LAST_FAILURE_SECONDS,
            BACKLOG_SECONDS,
            BACKLOG_ETA_SECONDS,
            ORPHANS_REMOVED_TOTAL,
            LATE_ROWS_TOTAL,
            LATE_ROWS_REPAIRED_TOTAL,
            LATE_OLDEST_AGE_SECONDS,
            LATE_BEYOND_HORIZON_ROWS,
            SINK_EXCESS_ROWS,
            SWEEPS_TOTAL,
            LAST_SWEEP_SECONDS,
            MAINTENANCE_RUNS_TOTAL,
            MAINTENANCE_FILES_REWRITTEN_TOTAL,
            MAINTENANCE_SNAPSHOTS_EXPIRED_TOTAL,
            MAINTENANCE_FILES_DELETED_TOTAL,
            LAST_MAINTENANCE_SECONDS,
        ];
        let names = r.names();
        let missing: Vec<_> = all.iter().filter(|n| !names.contains(**n)).collect();
        assert!(missing.is_empty(), "not registered: {missing:?}");
        let described: Vec<&str> = HELP.iter().map(|h| h.0).collect();
        for name in all
            .iter()
            .chain(&[OPERATION_DURATION_SECONDS, OPERATION_ERRORS_TOTAL])
        {
            assert!(described.contains(name), "{name} has no # HELP");
        }
        assert_eq!(described.len(), all.len() + 2, "one # HELP per metric");

        // Maintenance not scheduled: no interval to be overdue against.
        let r = Recorded::default();
        metrics::with_local_recorder(&r, || register("1.2.3", &[table("c")], None));
        assert_eq!(r.get(&format!("{MAINTENANCE_INTERVAL_SECONDS}{{table=c}}")), None);
    }

    /// Every kind a run can fail with is created at zero; kinds that never
    /// fail a run are not. Exhaustive, so a new variant must be placed.
    #[test]
    fn every_run_failure_kind_is_registered() {
        fn fails_runs(e: &Error) -> bool {
            match e {
                Error::InvalidConfig { .. }
                | Error::InvalidWatermark { .. }
                | Error::EmptyWindow { .. }
                | Error::LeaseHeld { .. }
                | Error::Cancelled => false,
                Error::Source { .. }
                | Error::Sink { .. }
                | Error::Store { .. }
                | Error::CommitOutcomeUnknown { .. }
                | Error::CommitConflict { .. }
                | Error::RepairConflict { .. }
                | Error::LeaseLost { .. }
                | Error::WatermarkMismatch { .. }
                | Error::StoreAheadOfSink { .. } => true,
            }
        }
        let io = || std::io::Error::other("x");
        let t = || "t".to_owned();
        let w = Watermark::new(1, 1);
        let all = [
            Error::source(io(), true),
            Error::sink(io(), true),
            Error::store(io(), true),
            Error::CommitOutcomeUnknown {
                run_id: crate::RunId::new(),
                source: io().into(),
            },
            Error::CommitConflict {
                table: t(),
                expected: w,
                found: None,
            },
            Error::RepairConflict {
                table: t(),
                base: crate::SinkVersion::new("1"),
                found: None,
            },
            Error::LeaseLost { table: t(), token: 1 },
            Error::WatermarkMismatch {
                table: t(),
                expected: None,
                found: None,
            },
            Error::StoreAheadOfSink {
                table: t(),
                store: w,
                sink: None,
            },
            Error::Cancelled,
            Error::LeaseHeld {
                table: t(),
                holder: t(),
                expires_at: UNIX_EPOCH,
            },
        ];
        for e in &all {
            assert_eq!(
                RUN_FAILURE_KINDS.contains(&e.kind()),
                fails_runs(e),
                "{}",
                e.kind()
            );
        }
        assert_eq!(
            all.iter().filter(|e| fails_runs(e)).count(),
            RUN_FAILURE_KINDS.len()
        );
    }

    /// The engine exports the store's failure count after each run, counts a
    /// store ahead of the sink (refused) and one behind it (rolled forward),
    /// and a run skipped for another worker's lease.
    #[test]
    fn engine_exports_store_state_divergence_and_lease_contention() {
        let r = Recorded::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
        let source = Arc::new(MemorySource::new(clock.clone()));
        for t in ["ahead", "behind", "held"] {
            source.insert(t, &[(500_000_000, 1, 10), (500_000_000, 2, 11)]);
        }
        let sink = Arc::new(MemorySink::new());
        let engine = |store: &Arc<MemoryStore>| {
            Offloader::builder(source.clone(), sink.clone(), store.clone())
                .clock(Arc::new(clock.clone()))
                .build()
                .unwrap()
        };
        let get = |name: &str, labels: &str| r.get(&format!("{name}{{{labels}}}"));
        metrics::with_local_recorder(&r, || {
            rt.block_on(async {
                // A store that claims more than the (empty) sink: refused, every run.
                let store = Arc::new(MemoryStore::new(clock.clone()));
                let lease = store
                    .acquire_lease("ahead", "someone", Duration::from_secs(1))
                    .await
                    .unwrap();
                store
                    .compare_and_set(&lease, None, Watermark::new(900_000_000, 1))
                    .await
                    .unwrap();
                store.release_lease(&lease).await.unwrap();
                let e = engine(&store);
                for _ in 0..3 {
                    let err = e.run_once(&table("ahead")).await.unwrap_err();
                    assert!(matches!(err, Error::StoreAheadOfSink { .. }), "{err}");
                }

                // One engine commits; another, on its own empty store over the
                // same sink, finds its store behind and rolls it forward.
                let first = Arc::new(MemoryStore::new(clock.clone()));
                assert_eq!(engine(&first).run_once(&table("behind")).await.unwrap().rows, 2);
                let behind = Arc::new(MemoryStore::new(clock.clone()));
                assert!(
                    engine(&behind)
                        .run_once(&table("behind"))
                        .await
                        .unwrap()
                        .rolled_forward
                );

                // Another worker holds the lease: skipped, not failed.
                let store = Arc::new(MemoryStore::new(clock.clone()));
                store
                    .acquire_lease("held", "other", Duration::from_secs(3600))
                    .await
                    .unwrap();
                let err = engine(&store).run_once(&table("held")).await.unwrap_err();
                assert!(matches!(err, Error::LeaseHeld { .. }), "{err}");
            })
        });
        assert_eq!(get(STORE_AHEAD_OF_SINK_TOTAL, "table=ahead"), Some(3.0));
        assert_eq!(get(FAILURES_TOTAL, "kind=store_ahead,table=ahead"), Some(3.0));
        assert_eq!(get(RUNS_TOTAL, "outcome=failed,table=ahead"), Some(3.0));
        assert_eq!(
            get(CONSECUTIVE_FAILURES, "table=ahead"),
            Some(3.0),
            "the store's count"
        );
        assert!(get(LAST_RUN_DURATION_SECONDS, "table=ahead").is_some());

        assert_eq!(get(STORE_BEHIND_SINK_TOTAL, "table=behind"), Some(1.0));
        assert_eq!(get(CONSECUTIVE_FAILURES, "table=behind"), Some(0.0));
        assert_eq!(get(RUNS_TOTAL, "outcome=committed,table=behind"), Some(1.0));
        assert_eq!(get(RUNS_TOTAL, "outcome=empty,table=behind"), Some(1.0));

        assert_eq!(get(RUNS_TOTAL, "outcome=skipped,table=held"), Some(1.0));
        assert_eq!(get(RUNS_TOTAL, "outcome=failed,table=held"), None);
        assert_eq!(
            get(CONSECUTIVE_FAILURES, "table=held"),
            Some(0.0),
            "read back on a skip"
        );
        assert_eq!(
            get(LAST_RUN_DURATION_SECONDS, "table=held"),
            None,
            "a skip is not a run"
        );
    }
}
