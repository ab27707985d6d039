//! Metric names and the one place they are emitted, through the `metrics` facade.
//!
//! Install any `metrics` recorder (for example `metrics-exporter-prometheus`) to
//! collect them; without one they cost almost nothing. Every metric carries a
//! `table` label.

use std::time::{Duration, SystemTime};

use crate::{Error, Watermark};

/// Rows committed (counter).
pub const ROWS_TOTAL: &str = "offload_rows_total";
/// Bytes staged and committed, as encoded by the sink (counter).
pub const BYTES_TOTAL: &str = "offload_bytes_total";
/// Files committed (counter).
pub const FILES_TOTAL: &str = "offload_files_total";
/// Runs, by `outcome` = committed | empty | failed | skipped (counter).
pub const RUNS_TOTAL: &str = "offload_runs_total";
/// Failed runs, by error `kind` (counter).
pub const FAILURES_TOTAL: &str = "offload_failures_total";
/// Run wall time (histogram, seconds).
pub const RUN_DURATION_SECONDS: &str = "offload_run_duration_seconds";
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
    if rows > 0 && !duration.is_zero() {
        metrics::gauge!(ROWS_PER_SECOND, "table" => t.clone()).set(rows as f64 / duration.as_secs_f64());
    }
    metrics::gauge!(LAST_SUCCESS_SECONDS, "table" => t).set(epoch_seconds(now));
}

pub(crate) fn failure(table: &str, err: &Error, duration: Duration, now: SystemTime) {
    let t = table.to_owned();
    if matches!(err, Error::LeaseHeld { .. }) {
        // Another worker has the table: normal when scaled out, not a failure.
        metrics::counter!(RUNS_TOTAL, "table" => t, "outcome" => "skipped").increment(1);
        return;
    }
    metrics::counter!(RUNS_TOTAL, "table" => t.clone(), "outcome" => "failed").increment(1);
    metrics::counter!(FAILURES_TOTAL, "table" => t.clone(), "kind" => err.kind()).increment(1);
    metrics::histogram!(RUN_DURATION_SECONDS, "table" => t.clone()).record(duration.as_secs_f64());
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
