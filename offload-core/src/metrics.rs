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
