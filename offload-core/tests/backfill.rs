//! A first run on a long history (a backfill): windows of `max_window` from
//! the oldest row, gaps crossed in one step, the progress figures, and
//! `run_every` going on at once while a table is behind.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use offload_core::memory::{MemorySink, MemorySource, MemoryStore};
use offload_core::{
    CancellationToken, DEFAULT_MAX_WINDOW, ManualClock, Offloader, RunSummary, Source, SourceTable,
    TableConfig, Watermark,
};

const HOUR: i64 = 3_600_000_000;
const MINUTE: i64 = 60_000_000;
/// 2026-01-01T00:00:00Z in microseconds.
const T0: i64 = 1_767_225_600_000_000;

fn table(name: &str) -> TableConfig {
    TableConfig::builder(name)
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap()
}

/// Rows every `step` from `from` (inclusive) to `to` (exclusive), two per
/// timestamp, so window edges fall between rows sharing a timestamp too.
fn rows(from: i64, to: i64, step: i64) -> Vec<(i64, u64, i64)> {
    (0..)
        .map(|k| from + k * step)
        .take_while(|&ts| ts < to)
        .flat_map(|ts| [(ts, 1, ts / MINUTE), (ts, 2, ts / MINUTE)])
        .collect()
}

struct World {
    source: Arc<MemorySource>,
    sink: Arc<MemorySink>,
    engine: Offloader,
}

impl World {
    /// "Now" a day after the data's last row, so the lag holds nothing back.
    fn new(source_of: impl FnOnce(Arc<MemorySource>) -> Arc<dyn Source>) -> Self {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 40 * 86_400));
        let source = Arc::new(MemorySource::new(clock.clone()));
        let sink = Arc::new(MemorySink::new());
        let engine = Offloader::builder(
            source_of(source.clone()),
            sink.clone(),
            Arc::new(MemoryStore::new(clock.clone())),
        )
        .build()
        .unwrap();
        Self { source, sink, engine }
    }

    /// `run_once` until a run commits nothing; the summaries of the runs that did.
    async fn drain(&self, t: &TableConfig) -> Vec<RunSummary> {
        let mut runs = Vec::new();
        loop {
            let s = self.engine.run_once(t).await.unwrap();
            if s.window.is_none() {
                assert_eq!(
                    s.backlog,
                    Duration::ZERO,
                    "a run with nothing to do is not behind"
                );
                return runs;
            }
            runs.push(s);
            assert!(runs.len() < 1_000, "no progress");
        }
    }
}

fn until_micros(s: &RunSummary) -> i64 {
    s.window.unwrap().until().timestamp_micros()
}

#[tokio::test]
async fn a_first_run_on_ten_hours_takes_one_hour_from_the_oldest_row() {
    let w = World::new(|s| s);
    let start = T0 + 17 * MINUTE;
    let all = rows(start, start + 10 * HOUR, MINUTE);
    w.source.insert("t", &all);
    let t = table("t");
    assert_eq!(t.max_window(), Some(DEFAULT_MAX_WINDOW));

    let first = w.engine.run_once(&t).await.unwrap();
    // Measured from the oldest row, not from the beginning of time.
    assert_eq!(until_micros(&first), start + HOUR);
    assert_eq!(first.rows, 2 * 61, "an hour of rows, both ends included");
    let last = all.last().unwrap().0;
    assert_eq!(first.backlog, Duration::from_micros((last - start - HOUR) as u64));
    assert!(
        first.eta.is_some(),
        "a window that covered event time gives a pace"
    );

    let mut runs = vec![first];
    runs.extend(w.drain(&t).await);
    assert_eq!(runs.len(), 10, "ten hours in hour windows: {runs:?}");
    assert_eq!(runs.iter().map(|s| s.rows).sum::<u64>(), all.len() as u64);
    let mut want = all.clone();
    want.sort_unstable();
    assert_eq!(w.sink.rows("t"), want, "every row exactly once");
    let final_run = runs.last().unwrap();
    assert_eq!(final_run.backlog, Duration::ZERO);
    assert_eq!(final_run.eta, Some(Duration::ZERO));
    for pair in runs.windows(2) {
        assert!(pair[1].backlog < pair[0].backlog, "the backlog shrinks");
    }
}

#[tokio::test]
async fn a_gap_without_rows_is_crossed_in_one_window() {
    let w = World::new(|s| s);
    let before = rows(T0, T0 + 2 * HOUR, 10 * MINUTE);
    // A month later (a table offloaded, paused, and fed again).
    let resume = T0 + 30 * 24 * HOUR;
    let after = rows(resume, resume + 30 * MINUTE, 10 * MINUTE);
    w.source.insert("t", &before);
    w.source.insert("t", &after);
    let t = table("t");
    let runs = w.drain(&t).await;
    assert_eq!(
        runs.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [2 * 7, 2 * 5, 2 * 3],
        "two hours, then the month's gap skipped to its first row: {runs:?}"
    );
    assert_eq!(
        until_micros(&runs[2]),
        *w.source.rows("t").iter().map(|r| &r.0).max().unwrap()
    );
    assert_eq!(w.sink.rows("t").len(), before.len() + after.len());
}

#[tokio::test]
async fn the_steady_state_is_not_cut_and_an_unbounded_window_takes_everything() {
    let w = World::new(|s| s);
    w.source.insert("t", &rows(T0, T0 + 50 * MINUTE, MINUTE));
    w.source.insert("u", &rows(T0, T0 + 10 * HOUR, MINUTE));
    let one = w.engine.run_once(&table("t")).await.unwrap();
    assert_eq!(one.rows, 100, "less than max_window behind: one window");
    assert_eq!(one.backlog, Duration::ZERO);

    let unbounded = TableConfig::builder("u")
        .timestamp_column("ts")
        .sequence_column("seq")
        .unbounded_window()
        .build()
        .unwrap();
    let all = w.engine.run_once(&unbounded).await.unwrap();
    assert_eq!(all.rows, 1200);
    assert_eq!((all.backlog, all.eta), (Duration::ZERO, Some(Duration::ZERO)));
}

/// A source that does not know where its rows start: the trait's default.
#[derive(Debug)]
struct NoLowWatermark(Arc<MemorySource>);

#[derive(Debug)]
struct NoLowTable(Arc<dyn SourceTable>);

#[async_trait::async_trait]
impl Source for NoLowWatermark {
    async fn open(&self, t: &TableConfig) -> Result<Arc<dyn SourceTable>, offload_core::Error> {
        Ok(Arc::new(NoLowTable(self.0.open(t).await?)))
    }
}

#[async_trait::async_trait]
impl SourceTable for NoLowTable {
    fn config(&self) -> &TableConfig {
        self.0.config()
    }
    fn schema(&self) -> arrow_schema::SchemaRef {
        self.0.schema()
    }
    async fn high_watermark(&self) -> Result<Option<Watermark>, offload_core::Error> {
        self.0.high_watermark().await
    }
    async fn read(&self, w: offload_core::Window) -> Result<offload_core::BatchStream, offload_core::Error> {
        self.0.read(w).await
    }
}

#[tokio::test]
async fn without_a_low_watermark_the_first_window_is_whole_and_later_ones_are_cut_from_the_watermark() {
    let w = World::new(|s| Arc::new(NoLowWatermark(s)));
    w.source.insert("t", &rows(T0, T0 + 3 * HOUR, MINUTE));
    let t = table("t");
    let first = w.engine.run_once(&t).await.unwrap();
    assert_eq!(first.rows, 360, "nothing to measure the first window from");
    // Three hours later, measured from the committed watermark.
    w.source.insert("t", &rows(T0 + 3 * HOUR, T0 + 6 * HOUR, MINUTE));
    let second = w.engine.run_once(&t).await.unwrap();
    assert_eq!(second.rows, 120, "one hour past the watermark");
    assert!(!second.backlog.is_zero());
    assert_eq!(w.drain(&t).await.len(), 2);
    assert_eq!(w.sink.rows("t").len(), 720);
}

#[tokio::test(start_paused = true)]
async fn run_every_goes_on_at_once_while_a_table_is_behind() {
    let w = World::new(|s| s);
    w.source.insert("behind", &rows(T0, T0 + 5 * HOUR, 10 * MINUTE));
    w.source
        .insert("current", &rows(T0, T0 + 30 * MINUTE, 10 * MINUTE));
    let tables = [table("behind"), table("current")];
    let interval = Duration::from_secs(24 * 3600);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut cycles: Vec<Vec<(String, Duration)>> = Vec::new();
    // Tokio's clock, paused: waiting for the interval would move it a day.
    let started = tokio::time::Instant::now();
    w.engine
        .run_every(&tables, interval, &shutdown, |results| {
            let mut cycle: Vec<_> = results
                .iter()
                .map(|(name, r)| (name.clone(), r.as_ref().unwrap().backlog))
                .collect();
            cycle.sort();
            if cycle.iter().all(|(_, b)| b.is_zero()) {
                stop.cancel();
            }
            cycles.push(cycle);
        })
        .await;
    assert!(
        started.elapsed() < interval,
        "the backfill did not wait for the interval between its windows"
    );
    assert_eq!(cycles.len(), 5, "five hour windows: {cycles:?}");
    assert_eq!(cycles[0].len(), 2, "the first cycle runs every table");
    for c in &cycles[1..] {
        assert_eq!(c.len(), 1, "catch-up cycles run only the table behind: {c:?}");
        assert_eq!(c[0].0, "behind");
    }
    assert_eq!(w.sink.rows("behind").len(), 2 * 30);
    assert_eq!(w.sink.rows("current").len(), 2 * 3);
}

/// Gauges by name and labels, as a recorder sees them.
#[derive(Default)]
struct Gauges(std::sync::Mutex<std::collections::HashMap<String, f64>>);

struct Gauge(String, Arc<Gauges>);

impl metrics::GaugeFn for Gauge {
    fn increment(&self, v: f64) {
        *self.1.0.lock().unwrap().entry(self.0.clone()).or_default() += v;
    }
    fn decrement(&self, v: f64) {
        self.increment(-v);
    }
    fn set(&self, v: f64) {
        self.1.0.lock().unwrap().insert(self.0.clone(), v);
    }
}

struct Recorder(Arc<Gauges>);

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(Gauge(key.name().to_owned(), self.0.clone())))
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn the_backlog_gauges_follow_the_runs() {
    let gauges = Arc::new(Gauges::default());
    let recorder = Recorder(gauges.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = |name: &str| gauges.0.lock().unwrap().get(name).copied();
    let (backlog, eta) = (
        offload_core::metrics::BACKLOG_SECONDS,
        offload_core::metrics::BACKLOG_ETA_SECONDS,
    );
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let w = World::new(|s| s);
            w.source.insert("t", &rows(T0, T0 + 3 * HOUR, MINUTE));
            let first = w.engine.run_once(&table("t")).await.unwrap();
            assert_eq!(get(backlog), Some(first.backlog.as_secs_f64()));
            assert!(get(backlog).unwrap() > 3600.0, "{first:?}");
            assert_eq!(get(eta), first.eta.map(|e| e.as_secs_f64()));
            w.drain(&table("t")).await;
        })
    });
    assert_eq!(get(backlog), Some(0.0), "caught up");
    assert_eq!(get(eta), Some(0.0));
}
