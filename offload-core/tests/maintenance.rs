//! Maintenance scheduled by the engine: when `run_every` calls
//! `SinkTable::maintain`, what a run reports of it, and that a failing
//! maintenance changes nothing about the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures::future::BoxFuture;
use offload_core::layer::{self, Op, Policy};
use offload_core::memory::{MemorySink, MemorySource, MemoryStore};
use offload_core::{
    CancellationToken, Error, MaintenanceSummary, ManualClock, Offloader, OffloaderBuilder, Sink, SinkTable,
    TableConfig, WatermarkStore,
};

const SEC: i64 = 1_000_000;
/// "Now" in the tests: 1,000,000 s after the epoch.
const NOW: i64 = 1_000_000 * SEC;

struct World {
    clock: ManualClock,
    source: Arc<MemorySource>,
    sink: Arc<MemorySink>,
    store: Arc<MemoryStore>,
}

impl World {
    fn new() -> Self {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_micros(NOW as u64));
        Self {
            source: Arc::new(MemorySource::new(clock.clone())),
            sink: Arc::new(MemorySink::new()),
            store: Arc::new(MemoryStore::new(clock.clone())),
            clock,
        }
    }

    fn engine(&self) -> OffloaderBuilder {
        Offloader::builder(self.source.clone(), self.sink.clone(), self.store.clone())
            .clock(Arc::new(self.clock.clone()))
    }
}

fn table(name: &str) -> TableConfig {
    TableConfig::builder(name)
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One row `k` seconds after a fixed point well below the lag.
fn row(k: i64) -> (i64, u64, i64) {
    (NOW - 1000 * SEC + k * SEC, k as u64, k)
}

#[tokio::test(start_paused = true)]
async fn run_every_maintains_each_table_at_its_own_cadence() {
    let w = World::new();
    w.source.insert("a", &[row(0)]);
    w.source.insert("b", &[row(0)]);
    // Someone else holds "b" for the first cycle: its run fails (is skipped),
    // so it is maintained after its first successful run instead.
    let _held = w
        .store
        .acquire_lease("b", "other", Duration::from_secs(1))
        .await
        .unwrap();
    let engine = w
        .engine()
        .maintenance_interval(Some(Duration::from_secs(3)))
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut compacted = None;
    let mut k = 0;
    engine
        .run_every(
            &[table("a"), table("b")],
            Duration::from_secs(1),
            &shutdown,
            |results| {
                let by = |n: &str| &results.iter().find(|r| r.0 == n).unwrap().1;
                let ra = by("a").as_ref().expect("a's runs succeed");
                assert!(ra.rows > 0, "every cycle commits a window of a");
                a.push(ra.maintenance.is_some());
                b.push(by("b").as_ref().map(|s| s.maintenance.is_some()).ok());
                if a.len() == 4 {
                    compacted = ra.maintenance.clone();
                }
                if a.len() == 7 {
                    stop.cancel();
                    return;
                }
                // The lease on "b" lapses; one more row per table per cycle.
                w.clock.advance(Duration::from_secs(2));
                k += 1;
                w.source.insert("a", &[row(k)]);
                w.source.insert("b", &[row(k)]);
            },
        )
        .await;
    // Virtual seconds 0..=6: "a" at 0, 3 and 6; "b" first at 1 (its first
    // successful run), then at 4.
    assert_eq!(a, [true, false, false, true, false, false, true]);
    assert_eq!(
        b,
        [
            None,
            Some(true),
            Some(false),
            Some(false),
            Some(true),
            Some(false),
            Some(false)
        ]
    );
    assert_eq!(w.sink.maintenance_runs("a"), 3);
    assert_eq!(w.sink.maintenance_runs("b"), 2);
    // At second 3, "a" held the four files of four windows: merged into one,
    // every row still there once, no commit added.
    let s = compacted.unwrap().unwrap();
    assert_eq!((s.files_rewritten, s.files_written, s.rows_rewritten), (4, 1, 4));
    assert!(!s.is_noop());
    assert_eq!(w.sink.rows("a"), w.source.rows("a"));
    assert_eq!(w.sink.commits("a").len(), 7);
    // The one file of second 3 and the three windows after it, merged again at second 6.
    assert_eq!(w.sink.files("a"), 1);
}

#[tokio::test]
async fn run_once_and_run_all_never_maintain_unless_asked() {
    let w = World::new();
    w.source.insert("a", &[row(0)]);
    let engine = w
        .engine()
        .maintenance_interval(Some(Duration::ZERO))
        .build()
        .unwrap();
    let run = engine.run_once(&table("a")).await.unwrap();
    assert_eq!(run.maintenance, None);
    w.source.insert("a", &[row(1)]);
    let all = engine.run_all(&[table("a")], &CancellationToken::new()).await;
    assert_eq!(all[0].1.as_ref().unwrap().maintenance, None);
    assert_eq!(w.sink.maintenance_runs("a"), 0);
    assert_eq!(w.sink.files("a"), 2);

    // On request.
    let s = engine.maintain(&table("a")).await.unwrap();
    assert_eq!((s.files_rewritten, s.files_written), (2, 1));
    assert_eq!(w.sink.files("a"), 1);
    assert!(engine.maintain(&table("a")).await.unwrap().is_noop());
    assert_eq!(w.sink.maintenance_runs("a"), 2);
}

#[tokio::test]
async fn no_interval_means_no_maintenance() {
    let w = World::new();
    w.source.insert("a", &[row(0)]);
    let engine = w.engine().build().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut seen = Vec::new();
    engine
        .run_every(&[table("a")], Duration::from_millis(1), &shutdown, |r| {
            seen.push(r[0].1.as_ref().unwrap().maintenance.clone());
            if seen.len() == 2 {
                stop.cancel();
            }
        })
        .await;
    assert_eq!(seen, [None, None]);
    assert_eq!(w.sink.maintenance_runs("a"), 0);
}

/// Fails every `sink.maintain` call.
#[derive(Debug)]
struct FailMaintain;

impl Policy for FailMaintain {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        Box::pin(async move {
            if op == Op::Maintain {
                return Err(Error::sink(std::io::Error::other("the catalog said no"), false));
            }
            call().await
        })
    }
}

#[tokio::test]
async fn a_failed_maintenance_fails_neither_the_run_nor_the_watermark() {
    let w = World::new();
    w.source.insert("a", &[row(0), row(1)]);
    let sink = layer::stack(w.sink.clone()).with(FailMaintain).into_sink();
    let engine = Offloader::builder(w.source.clone(), sink, w.store.clone())
        .maintenance_interval(Some(Duration::ZERO))
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut runs = Vec::new();
    let mut k = 1;
    engine
        .run_every(&[table("a")], Duration::from_millis(1), &shutdown, |r| {
            runs.push(r[0].1.as_ref().expect("the run itself succeeds").clone());
            k += 1;
            w.source.insert("a", &[row(k)]);
            if runs.len() == 2 {
                stop.cancel();
            }
        })
        .await;
    for run in &runs {
        let failure = run.maintenance.clone().expect("maintenance was due").unwrap_err();
        assert_eq!(failure.kind, "sink");
        assert!(failure.to_string().contains("the catalog said no"), "{failure}");
        assert!(run.rows > 0);
    }
    // The watermark moved with the runs, in the sink and in the store.
    let committed = runs[1].watermark;
    assert_eq!(committed.unwrap().sequence(), 2);
    let state = w.store.load("a").await.unwrap();
    assert_eq!(state.watermark, committed);
    assert_eq!(state.consecutive_failures, 0);
    assert_eq!(w.sink.rows("a").len(), 3);
}

/// A sink table that reports fixed maintenance figures (everything else is
/// the memory sink's).
#[derive(Debug)]
struct Reporting(Arc<dyn SinkTable>);

#[derive(Debug)]
struct ReportingSink(MemorySink);

#[async_trait::async_trait]
impl Sink for ReportingSink {
    async fn open(&self, t: &TableConfig) -> Result<Arc<dyn SinkTable>, Error> {
        Ok(Arc::new(Reporting(self.0.open(t).await?)))
    }
}

#[async_trait::async_trait]
impl SinkTable for Reporting {
    fn config(&self) -> &TableConfig {
        self.0.config()
    }
    async fn prepare(&self, schema: arrow_schema::SchemaRef) -> Result<(), Error> {
        self.0.prepare(schema).await
    }
    async fn begin(
        &self,
        run_id: offload_core::RunId,
        schema: arrow_schema::SchemaRef,
    ) -> Result<Box<dyn offload_core::StagingWriter>, Error> {
        self.0.begin(run_id, schema).await
    }
    async fn committed(&self) -> Result<Option<offload_core::CommittedWindow>, Error> {
        self.0.committed().await
    }
    async fn was_committed(&self, run_id: offload_core::RunId) -> Result<bool, Error> {
        self.0.was_committed(run_id).await
    }
    async fn positions(&self, window: offload_core::Window) -> Result<Vec<offload_core::Watermark>, Error> {
        self.0.positions(window).await
    }
    async fn maintain(&self) -> Result<MaintenanceSummary, Error> {
        let mut s = MaintenanceSummary::default();
        s.files_rewritten = 7;
        s.files_written = 2;
        s.commits = 2;
        s.snapshots_expired = 5;
        s.files_deleted = 11;
        s.orphans_deleted = 3;
        Ok(s)
    }
}

/// Counters, and gauges as their last value, by name and labels.
#[derive(Debug, Default, Clone)]
struct Recorded(Arc<Mutex<HashMap<String, f64>>>);

struct Cell(Arc<Mutex<HashMap<String, f64>>>, String);

impl metrics::CounterFn for Cell {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value as f64);
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, _: f64) {}
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
    fn get(&self, k: &str) -> Option<f64> {
        self.0.lock().unwrap().get(k).copied()
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
fn maintenance_metrics_count_runs_rewrites_expiries_and_deletions() {
    use offload_core::metrics as m;
    let recorded = Recorded::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = World::new();
    w.source.insert("a", &[row(0)]);
    metrics::with_local_recorder(&recorded, || {
        rt.block_on(async {
            let reporting = Offloader::builder(
                w.source.clone(),
                Arc::new(ReportingSink(MemorySink::new())),
                w.store.clone(),
            )
            .clock(Arc::new(w.clock.clone()))
            .build()
            .unwrap();
            reporting.maintain(&table("a")).await.unwrap();
            reporting.maintain(&table("a")).await.unwrap();
            // One that finds nothing, one that fails.
            let plain = w.engine().build().unwrap();
            plain.maintain(&table("a")).await.unwrap();
            let failing = Offloader::builder(
                w.source.clone(),
                layer::stack(w.sink.clone()).with(FailMaintain).into_sink(),
                w.store.clone(),
            )
            .build()
            .unwrap();
            failing.maintain(&table("a")).await.unwrap_err();
        })
    });
    let get = |name: &str, labels: &str| recorded.get(&format!("{name}{{{labels}}}"));
    assert_eq!(
        get(m::MAINTENANCE_RUNS_TOTAL, "outcome=changed,table=a"),
        Some(2.0)
    );
    assert_eq!(get(m::MAINTENANCE_RUNS_TOTAL, "outcome=noop,table=a"), Some(1.0));
    assert_eq!(
        get(m::MAINTENANCE_RUNS_TOTAL, "outcome=failed,table=a"),
        Some(1.0)
    );
    assert_eq!(get(m::MAINTENANCE_FILES_REWRITTEN_TOTAL, "table=a"), Some(14.0));
    assert_eq!(get(m::MAINTENANCE_SNAPSHOTS_EXPIRED_TOTAL, "table=a"), Some(10.0));
    assert_eq!(get(m::MAINTENANCE_FILES_DELETED_TOTAL, "table=a"), Some(28.0));
    assert_eq!(
        get(m::LAST_MAINTENANCE_SECONDS, "table=a"),
        Some((NOW / SEC) as f64),
        "the engine's clock, at the last successful maintenance"
    );
}

#[test]
fn named_fault_points_fire_on_their_nth_hit_with_the_layer_syntax() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let named = ["maintain.outputs", "maintain.commit"];
    let faults = layer::Faults::parse_with(
        "maintain.commit=2:stop, maintain.outputs:stop, sink.maintain.after",
        &named,
    )
    .unwrap()
    .on_stop(Arc::new(move |p: &str| log.lock().unwrap().push(p.to_owned())));
    assert_eq!(
        faults.points(),
        ["maintain.commit", "maintain.outputs", "sink.maintain.after"]
    );
    faults.hit("maintain.commit");
    faults.hit("maintain.delete");
    // An operation's point is not reached by name.
    faults.hit("sink.maintain.after");
    assert!(seen.lock().unwrap().is_empty());
    faults.hit("maintain.commit");
    faults.hit("maintain.outputs");
    faults.hit("maintain.commit");
    assert_eq!(*seen.lock().unwrap(), ["maintain.commit", "maintain.outputs"]);
    for bad in ["maintain.comit", "maintain.commit=0", "maintain.commit.before"] {
        let err = layer::Faults::parse_with(bad, &named).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
    assert!(
        layer::Faults::parse("maintain.commit").is_err(),
        "named points must be declared"
    );
}
