//! The Source and Sink suites against the in-memory reference parts, plus
//! proof that the suites fail deliberately broken ones.

use std::sync::Arc;
use std::time::SystemTime;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use offload_core::conformance::CheckResult;
use offload_core::conformance::sink::{self as sink_suite, MemorySinkFixture};
use offload_core::conformance::source::{
    self as source_suite, MemorySourceFixture, SourceFixture, TableSpec,
};
use offload_core::memory::MemorySink;
use offload_core::{BatchStream, Error, Source, SourceTable, TableConfig, Watermark, Window};

async fn fresh_source() -> MemorySourceFixture {
    MemorySourceFixture::new()
}

async fn fresh_sink() -> MemorySinkFixture {
    MemorySinkFixture::new()
}

offload_core::source_conformance_tests!(fresh_source);
offload_core::sink_conformance_tests!(fresh_sink);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_every_check_passing_on_the_reference_parts() {
    let source = source_suite::run(fresh_source).await;
    let names: Vec<_> = source.iter().map(|r| r.name).collect();
    assert_eq!(names, source_suite::CHECK_NAMES);
    assert!(source.iter().all(CheckResult::passed), "{source:#?}");

    let sink = sink_suite::run(fresh_sink).await;
    let names: Vec<_> = sink.iter().map(|r| r.name).collect();
    assert_eq!(names, sink_suite::CHECK_NAMES);
    assert!(sink.iter().all(CheckResult::passed), "{sink:#?}");
}

/// The classic bug this project exists to fix: a source that compares the
/// timestamp alone, so a window edge inside a run of equal timestamps loses
/// rows on one side and duplicates them on the other.
#[derive(Debug)]
struct TimestampOnly(Arc<dyn Source>);

#[derive(Debug)]
struct TimestampOnlyTable(Arc<dyn SourceTable>);

#[async_trait]
impl Source for TimestampOnly {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        Ok(Arc::new(TimestampOnlyTable(self.0.open(table).await?)))
    }
}

#[async_trait]
impl SourceTable for TimestampOnlyTable {
    fn config(&self) -> &TableConfig {
        self.0.config()
    }
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }
    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        self.0.high_watermark().await
    }
    async fn low_watermark(&self, after: Watermark) -> Result<Option<Watermark>, Error> {
        // `ts > after.ts`: rows sharing `after`'s timestamp are skipped.
        self.0
            .low_watermark(Watermark::new(after.timestamp_micros(), u64::MAX))
            .await
    }
    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        // `ts > after.ts AND ts <= until.ts`: the sequence is ignored.
        let by_ts = |w: Watermark| Watermark::new(w.timestamp_micros(), u64::MAX);
        match Window::new(by_ts(window.after()), by_ts(window.until())) {
            Ok(w) => self.0.read(w).await,
            Err(_) => Ok(Box::pin(futures::stream::empty())),
        }
    }
}

#[derive(Debug, Clone)]
struct BrokenSourceFixture(MemorySourceFixture);

#[async_trait]
impl SourceFixture for BrokenSourceFixture {
    fn source(&self) -> Arc<dyn Source> {
        Arc::new(TimestampOnly(self.0.memory().clone()))
    }
    async fn create_table(&self, spec: &TableSpec) -> Result<TableConfig, Error> {
        self.0.create_table(spec).await
    }
    async fn insert(&self, table: &TableConfig, rows: &[(i64, u64)]) -> Result<(), Error> {
        self.0.insert(table, rows).await
    }
    async fn now(&self) -> Result<SystemTime, Error> {
        self.0.now().await
    }
}

fn failed(results: &[CheckResult]) -> Vec<&'static str> {
    results.iter().filter(|r| !r.passed()).map(|r| r.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_suite_fails_a_timestamp_only_source() {
    let results = source_suite::run(|| async { BrokenSourceFixture(MemorySourceFixture::new()) }).await;
    let failed = failed(&results);
    for check in [
        "exact_windows_cut_inside_equal_timestamps",
        "positions_compare_as_pairs",
        "low_watermark_is_the_oldest_row_above",
    ] {
        assert!(
            failed.contains(&check),
            "{check} passed a timestamp-only source: {results:#?}"
        );
    }
    // The checks that do not cut through a timestamp still pass: the suite
    // names the broken clause rather than failing everything.
    assert!(failed.len() < results.len(), "{results:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_suite_fails_a_sink_without_a_fence() {
    let results = sink_suite::run(|| async { MemorySinkFixture::with_sink(MemorySink::unfenced()) }).await;
    let failed = failed(&results);
    for check in [
        "commit_is_fenced",
        "retried_commit_after_success_conflicts",
        "racing_commits_have_one_winner",
    ] {
        assert!(
            failed.contains(&check),
            "{check} passed an unfenced sink: {results:#?}"
        );
    }
    assert!(failed.len() < results.len(), "{results:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_names_the_failing_check() {
    let outcome = tokio::spawn(sink_suite::run_all(|| async {
        MemorySinkFixture::with_sink(MemorySink::unfenced())
    }))
    .await;
    let panic = outcome
        .expect_err("run_all must fail on a broken sink")
        .into_panic();
    let msg = panic.downcast_ref::<String>().expect("a formatted panic message");
    assert!(
        msg.starts_with("conformance check `commit_is_fenced` failed"),
        "{msg}"
    );
}
