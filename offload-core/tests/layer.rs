//! The layers: what Retry retries, what Timeout reports, when Faults fire,
//! what Metrics records.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures::future::BoxFuture;
use offload_core::layer::{self, Elapsed, Faults, Layered, Metrics, Op, Policy, Retry, Timeout};
use offload_core::memory::{MemorySink, MemorySource, MemoryStore, schema};
use offload_core::{
    CommitMetadata, Error, ManualClock, RetryPolicy, RunId, Sink, Source, TableConfig, Watermark,
    WatermarkStore, Window,
};

fn table() -> TableConfig {
    TableConfig::builder("t")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::ZERO)
        .build()
        .unwrap()
}

fn clock() -> ManualClock {
    ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000))
}

fn quick_retries() -> Retry {
    Retry::new(
        RetryPolicy::default()
            .max_attempts(5)
            .initial_backoff(Duration::ZERO),
    )
}

/// Counts calls per operation and fails the first `fail_first` calls of the
/// chosen operations with an injected error.
#[derive(Debug, Default)]
struct Inject {
    ops: HashSet<Op>,
    fail_first: u32,
    retryable: bool,
    calls: Mutex<HashMap<Op, u32>>,
}

impl Inject {
    fn new(ops: &[Op], fail_first: u32, retryable: bool) -> Arc<Self> {
        Arc::new(Self {
            ops: ops.iter().copied().collect(),
            fail_first,
            retryable,
            calls: Mutex::default(),
        })
    }
    fn calls(&self, op: Op) -> u32 {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }
}

/// A shared policy, so the test keeps a handle on the counts.
#[derive(Debug, Clone)]
struct Shared<P>(Arc<P>);

impl Policy for Shared<Inject> {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        Box::pin(async move {
            let n = {
                let mut calls = self.0.calls.lock().unwrap();
                let n = calls.entry(op).or_default();
                *n += 1;
                *n
            };
            if self.0.ops.contains(&op) && n <= self.0.fail_first {
                return Err(match op {
                    Op::SourceOpen | Op::HighWatermark | Op::Read => {
                        Error::source(std::io::Error::other("injected"), self.0.retryable)
                    }
                    Op::Load | Op::AcquireLease | Op::CompareAndSet => {
                        Error::store(std::io::Error::other("injected"), self.0.retryable)
                    }
                    _ => Error::sink(std::io::Error::other("injected"), self.0.retryable),
                });
            }
            call().await
        })
    }
}

fn meta(after: Watermark, until: Watermark, run_id: RunId) -> CommitMetadata {
    CommitMetadata {
        window: Window::new(after, until).unwrap(),
        run_id,
        engine_id: "test".into(),
        fencing_token: 1,
    }
}

#[test]
fn only_commits_write_finish_discard_and_abort_are_not_idempotent() {
    let not: Vec<Op> = Op::ALL.into_iter().filter(|op| !op.is_idempotent()).collect();
    assert_eq!(
        not,
        [
            Op::Write,
            Op::Finish,
            Op::Abort,
            Op::Commit,
            Op::CommitRepair,
            Op::Discard
        ]
    );
    for op in Op::ALL {
        assert_eq!(Op::parse(op.name()), Some(op), "{op:?}");
    }
    let names: HashSet<_> = Op::ALL.iter().map(|op| op.name()).collect();
    assert_eq!(names.len(), Op::ALL.len(), "names are unique");
}

#[tokio::test]
async fn retry_retries_retryable_errors_of_idempotent_source_and_store_calls() {
    let source = MemorySource::new(clock());
    source.insert("t", &[(1, 1, 1)]);
    let inject = Inject::new(&[Op::SourceOpen, Op::HighWatermark, Op::Read], 2, true);
    let source = layer::stack(source)
        .with(Shared(inject.clone()))
        .with(quick_retries())
        .into_source();
    let handle = source.open(&table()).await.unwrap();
    assert_eq!(handle.high_watermark().await.unwrap(), Some(Watermark::new(1, 1)));
    let _stream = handle
        .read(Window::new(Watermark::MIN, Watermark::new(1, 1)).unwrap())
        .await
        .unwrap();
    for op in [Op::SourceOpen, Op::HighWatermark, Op::Read] {
        assert_eq!(inject.calls(op), 3, "{op}: two injected failures, then success");
    }

    let inject = Inject::new(&[Op::AcquireLease, Op::CompareAndSet], 2, true);
    let store = layer::stack(MemoryStore::new(clock()))
        .with(Shared(inject.clone()))
        .with(quick_retries())
        .into_store();
    let lease = store
        .acquire_lease("t", "me", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(1, 0))
        .await
        .unwrap();
    assert_eq!(inject.calls(Op::AcquireLease), 3);
    assert_eq!(inject.calls(Op::CompareAndSet), 3);
}

#[tokio::test]
async fn retry_gives_up_at_once_on_errors_that_are_not_retryable() {
    let inject = Inject::new(&[Op::HighWatermark], 1, false);
    let source = layer::stack(MemorySource::new(clock()))
        .with(Shared(inject.clone()))
        .with(quick_retries())
        .into_source();
    let handle = source.open(&table()).await.unwrap();
    assert!(handle.high_watermark().await.is_err());
    assert_eq!(inject.calls(Op::HighWatermark), 1);
}

#[tokio::test]
async fn retry_never_repeats_a_commit_a_write_or_a_finish() {
    for op in [Op::Write, Op::Finish, Op::Commit] {
        let inner = MemorySink::new();
        let inject = Inject::new(&[op], 10, true);
        let sink = layer::stack(inner.clone())
            .with(Shared(inject.clone()))
            .with(quick_retries())
            .into_sink();
        let t = table();
        let handle = sink.open(&t).await.unwrap();
        handle.prepare(schema(&t)).await.unwrap();
        let run = RunId::new();
        let mut writer = handle.begin(run, schema(&t)).await.unwrap();
        let batch = offload_core_batch(&t, &[(1, 1, 1)]);
        let wrote = writer.write(batch).await;
        let result = match wrote {
            Err(e) => Err(e),
            Ok(()) => match writer.finish().await {
                Err(e) => Err(e),
                Ok(staged) => {
                    staged
                        .commit(&meta(Watermark::MIN, Watermark::new(1, 1), run))
                        .await
                }
            },
        };
        assert!(result.is_err(), "{op}: the injected error surfaces");
        assert_eq!(inject.calls(op), 1, "{op} must be called exactly once");
        assert!(inner.rows("t").is_empty());
    }
}

/// A batch of in-memory rows (the test has no access to `memory::to_batch`).
fn offload_core_batch(t: &TableConfig, rows: &[(i64, u64, i64)]) -> arrow_array::RecordBatch {
    use arrow_array::{Int64Array, TimestampMicrosecondArray, UInt64Array};
    arrow_array::RecordBatch::try_new(
        schema(t),
        vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC"),
            ),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

/// Never lets the chosen operation finish.
#[derive(Debug)]
struct Hang(Op);

impl Policy for Hang {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        if op == self.0 {
            return Box::pin(futures::future::pending());
        }
        call()
    }
}

#[tokio::test(start_paused = true)]
async fn an_elapsed_commit_is_an_unknown_outcome_never_a_plain_failure() {
    let inner = MemorySink::new();
    let sink = layer::stack(inner.clone())
        .with(Hang(Op::Commit))
        .with(Timeout::new(Duration::from_secs(5)).op(Op::Commit, Duration::from_secs(60)))
        .with(quick_retries())
        .into_sink();
    let t = table();
    let handle = sink.open(&t).await.unwrap();
    let run = RunId::new();
    let mut w = handle.begin(run, schema(&t)).await.unwrap();
    w.write(offload_core_batch(&t, &[(1, 1, 1)])).await.unwrap();
    let staged = w.finish().await.unwrap();
    let started = tokio::time::Instant::now();
    match staged
        .commit(&meta(Watermark::MIN, Watermark::new(1, 1), run))
        .await
    {
        Err(Error::CommitOutcomeUnknown { run_id, source }) => {
            assert_eq!(run_id, run);
            assert!(source.is::<Elapsed>(), "{source}");
        }
        other => panic!("expected CommitOutcomeUnknown, got {other:?}"),
    }
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(60),
        "the commit's own deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn an_elapsed_read_is_a_retryable_error_of_its_family_and_is_retried() {
    let inject = Inject::new(&[], 0, true);
    let source = layer::stack(MemorySource::new(clock()))
        .with(Hang(Op::HighWatermark))
        .with(Shared(inject.clone()))
        .with(Timeout::new(Duration::from_secs(5)))
        .with(quick_retries())
        .into_source();
    let handle = source.open(&table()).await.unwrap();
    match handle.high_watermark().await {
        Err(e @ Error::Source { retryable: true, .. }) => assert!(e.to_string().contains("timed out"), "{e}"),
        other => panic!("expected a retryable source error, got {other:?}"),
    }
    assert_eq!(inject.calls(Op::HighWatermark), 5, "retried up to max_attempts");
    let t = Timeout::new(Duration::from_secs(1)).without(Op::Write);
    assert_eq!(t.deadline(Op::Write), None);
}

#[test]
fn fault_specs_parse_strictly() {
    let f = Faults::parse(" sink.commit.before , store.compare_and_set.after=2:stop,").unwrap();
    assert_eq!(f.points(), ["sink.commit.before", "store.compare_and_set.after"]);
    for bad in [
        "sink.comit.before",
        "sink.commit",
        "sink.commit.during",
        "sink.commit.before=0",
        "sink.commit.before=x",
        "engine.after_lease",
    ] {
        match Faults::parse(bad) {
            Err(Error::InvalidConfig {
                field: "faults",
                reason,
            }) => {
                assert!(reason.contains(bad.split('=').next().unwrap()), "{reason}")
            }
            other => panic!("{bad:?}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_fault_fires_on_the_nth_successful_call_and_stop_runs_the_hook() {
    let hits = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = hits.clone();
    let faults = Faults::parse("store.compare_and_set.after=2:stop")
        .unwrap()
        .on_stop(Arc::new(move |p: &str| log.lock().unwrap().push(p.to_owned())));
    let store = layer::stack(MemoryStore::new(clock())).with(faults).into_store();
    let lease = store
        .acquire_lease("t", "me", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(1, 0))
        .await
        .unwrap();
    // A failed call is no "after" hit.
    assert!(
        store
            .compare_and_set(&lease, None, Watermark::new(2, 0))
            .await
            .is_err()
    );
    assert!(hits.lock().unwrap().is_empty(), "one successful CAS so far");
    store
        .compare_and_set(&lease, Some(Watermark::new(1, 0)), Watermark::new(2, 0))
        .await
        .unwrap();
    assert_eq!(*hits.lock().unwrap(), ["store.compare_and_set.after"]);
    store
        .compare_and_set(&lease, Some(Watermark::new(2, 0)), Watermark::new(3, 0))
        .await
        .unwrap();
    assert_eq!(hits.lock().unwrap().len(), 1, "only the N-th hit acts");
}

#[tokio::test]
async fn a_before_point_fires_before_the_call_takes_effect() {
    let inner = MemorySink::new();
    let seen = Arc::new(Mutex::new(None));
    let (probe, rows_then) = (inner.clone(), seen.clone());
    let faults = Faults::parse("sink.commit.before:stop")
        .unwrap()
        .on_stop(Arc::new(move |_: &str| {
            *rows_then.lock().unwrap() = Some(probe.rows("t").len())
        }));
    // One Faults shared by two stacks: its counters are shared too.
    let sink = layer::stack(inner.clone()).with(faults.clone()).into_sink();
    let t = table();
    let handle = sink.open(&t).await.unwrap();
    let run = RunId::new();
    let mut w = handle.begin(run, schema(&t)).await.unwrap();
    w.write(offload_core_batch(&t, &[(1, 1, 1)])).await.unwrap();
    let staged = w.finish().await.unwrap();
    staged
        .commit(&meta(Watermark::MIN, Watermark::new(1, 1), run))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        Some(0),
        "the hook ran before the commit landed"
    );
    assert_eq!(inner.rows("t").len(), 1, "and the commit went on after it");
}

/// A recorder keeping counters and histogram sample counts by name and labels.
#[derive(Debug, Default, Clone)]
struct Recorded(Arc<Mutex<HashMap<String, u64>>>);

struct Cell(Arc<Mutex<HashMap<String, u64>>>, String);

impl metrics::CounterFn for Cell {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, _value: f64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += 1;
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

impl Recorded {
    fn cell(&self, key: &metrics::Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Cell(
            self.0.clone(),
            format!("{}{{{}}}", key.name(), labels.join(",")),
        ))
    }
    fn get(&self, k: &str) -> u64 {
        self.0.lock().unwrap().get(k).copied().unwrap_or(0)
    }
}

impl metrics::Recorder for Recorded {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
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

#[test]
fn metrics_records_each_call_and_each_error_by_op_table_and_kind() {
    let recorded = Recorded::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorded, || {
        rt.block_on(async {
            let inject = Inject::new(&[Op::HighWatermark], 1, true);
            let source = layer::stack(MemorySource::new(clock()))
                .with(Shared(inject))
                .with(Metrics)
                .into_source();
            let handle = source.open(&table()).await.unwrap();
            assert!(handle.high_watermark().await.is_err());
            handle.high_watermark().await.unwrap();
        })
    });
    let d = offload_core::metrics::OPERATION_DURATION_SECONDS;
    let e = offload_core::metrics::OPERATION_ERRORS_TOTAL;
    assert_eq!(recorded.get(&format!("{d}{{op=source.open,table=t}}")), 1);
    assert_eq!(
        recorded.get(&format!("{d}{{op=source.high_watermark,table=t}}")),
        2
    );
    assert_eq!(
        recorded.get(&format!("{e}{{kind=source,op=source.high_watermark,table=t}}")),
        1
    );
    assert_eq!(
        recorded.get(&format!("{e}{{kind=source,op=source.open,table=t}}")),
        0
    );
}

#[test]
fn layered_exposes_its_parts() {
    let l = Layered::new(Metrics, MemoryStore::new(clock()));
    let _: &Metrics = l.policy();
    let _: &MemoryStore = l.inner();
    assert!(format!("{l:?}").starts_with("Layered"));
}
