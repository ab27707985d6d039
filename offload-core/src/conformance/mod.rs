//! Conformance suites for [`Source`](crate::Source) and [`Sink`](crate::Sink)
//! implementations (feature `conformance`), in the style of object_store's
//! `integration.rs`: one public `async fn` per clause of the trait's contract,
//! each panicking with a message that names what broke.
//!
//! - [`source`]: exact windows with cuts inside runs of equal timestamps, a
//!   high watermark that respects the lag, positions compared as pairs, empty
//!   windows, streaming in batches, a stable schema. An implementation provides
//!   a [`SourceFixture`](source::SourceFixture) that can create a table and
//!   insert rows at chosen `(timestamp, sequence)` positions.
//! - [`sink`]: invisible staging, the fenced commit, a retried commit after
//!   success, `was_committed`, `discard` of a committed run, `committed()`
//!   after reopening, racing commits, cleanup. An implementation provides a
//!   [`SinkFixture`](sink::SinkFixture) that can read a table's committed rows
//!   back independently of the sink.
//!
//! Run a suite with `run` (a result per check), `run_all` (panics naming the
//! first failure), or generate one `#[tokio::test]` per check with
//! [`source_conformance_tests!`](crate::source_conformance_tests) /
//! [`sink_conformance_tests!`](crate::sink_conformance_tests). The in-memory
//! reference parts pass both suites; deliberately broken ones fail them
//! (offload-core's `tests/conformance.rs`).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use offload_core::conformance::{sink::MemorySinkFixture, source::MemorySourceFixture};
//! offload_core::conformance::source::run_all(|| async { MemorySourceFixture::new() }).await;
//! offload_core::conformance::sink::run_all(|| async { MemorySinkFixture::new() }).await;
//! # });
//! ```

pub mod sink;
pub mod source;

use std::future::Future;
use std::pin::Pin;

use arrow_array::RecordBatch;

use crate::{Error, TableConfig};

/// One check's outcome, as [`source::run`] and [`sink::run`] report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// The check (its function's name).
    pub name: &'static str,
    /// `Err` holds the check's failure message.
    pub outcome: Result<(), String>,
}

impl CheckResult {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// A check as the runners hold it.
pub(crate) type CheckFn<X> = fn(X) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs each check on its own task with a fresh fixture, collecting outcomes.
pub(crate) async fn run_checks<X, F, Fut>(
    checks: Vec<(&'static str, CheckFn<X>)>,
    mut factory: F,
) -> Vec<CheckResult>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = X>,
{
    let mut results = Vec::with_capacity(checks.len());
    for (name, check) in checks {
        let fixture = factory().await;
        let outcome = tokio::spawn(check(fixture)).await.map_err(failure_message);
        results.push(CheckResult { name, outcome });
    }
    results
}

/// Why a check run on its own task failed: its panic message (an `assert!`'s
/// text), or the task error. Shared by every conformance runner, the store
/// suite's included.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let e = tokio::spawn(async { panic!("window lost a row") }).await.unwrap_err();
/// assert_eq!(offload_core::conformance::failure_message(e), "window lost a row");
/// # });
/// ```
pub fn failure_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(non-text panic)".to_owned())
}

/// Panics naming the first failed check.
pub(crate) fn assert_passed(results: &[CheckResult]) {
    if let Some(failed) = results.iter().find(|r| !r.passed()) {
        panic!(
            "conformance check `{}` failed: {}",
            failed.name,
            failed.outcome.as_ref().unwrap_err()
        );
    }
}

#[track_caller]
pub(crate) fn ok<T>(r: Result<T, Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

/// The `(timestamp_micros, sequence)` positions of a batch's rows, read from
/// the table's watermark columns. Timestamps of any unit (or plain `Int64`
/// microseconds) and unsigned or non-negative signed integer sequences are
/// understood.
///
/// ```
/// use offload_core::conformance::positions;
/// use offload_core::memory::{Row, schema};
/// use offload_core::TableConfig;
/// let t = TableConfig::builder("t").timestamp_column("ts").sequence_column("seq").build().unwrap();
/// # let batch = {
/// #     use std::sync::Arc;
/// #     use arrow_array::{Int64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
/// #     RecordBatch::try_new(schema(&t), vec![
/// #         Arc::new(TimestampMicrosecondArray::from(vec![5]).with_timezone("UTC")),
/// #         Arc::new(UInt64Array::from(vec![2])), Arc::new(Int64Array::from(vec![0]))]).unwrap()
/// # };
/// assert_eq!(positions(&t, &batch).unwrap(), vec![(5, 2)]);
/// ```
pub fn positions(table: &TableConfig, batch: &RecordBatch) -> Result<Vec<(i64, u64)>, String> {
    crate::batch_positions(batch, table.timestamp_column(), table.sequence_column())
        .map(|v| {
            v.into_iter()
                .map(|p| (p.timestamp_micros(), p.sequence()))
                .collect()
        })
        .map_err(|e| e.to_string())
}
