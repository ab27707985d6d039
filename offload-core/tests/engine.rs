//! Engine behaviour outside the exactly-once state machine.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use offload_core::memory::{MemorySink, MemorySource, MemoryStore, schema};
use offload_core::{CancellationToken, ManualClock, Offloader, RunId, Sink, TableConfig};

fn table() -> TableConfig {
    TableConfig::builder("t")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap()
}

#[tokio::test]
async fn run_every_cleans_orphans_left_by_crashes() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10_000));
    let sink = Arc::new(MemorySink::new());
    // A crashed run's staged, never-committed output.
    let handle = sink.open(&table()).await.unwrap();
    let writer = handle.begin(RunId::new(), schema(&table())).await.unwrap();
    let _orphan = writer.finish().await.unwrap();
    assert_eq!(sink.orphans(), 1);

    let engine = Offloader::builder(
        Arc::new(MemorySource::new(clock.clone())),
        sink.clone(),
        Arc::new(MemoryStore::new(clock)),
    )
    .build()
    .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let cycles = engine
        .run_every(&[table()], Duration::from_millis(1), &shutdown, |_| stop.cancel())
        .await;
    assert_eq!(cycles, 1);
    assert_eq!(sink.orphans(), 0, "the first cycle removes orphans");
}

#[tokio::test]
async fn one_failing_table_does_not_stop_the_others() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10_000));
    let source = Arc::new(MemorySource::new(clock.clone()));
    source.insert("good", &[(1, 1, 1), (2, 1, 2)]);
    source.insert("bad", &[(1, 1, 1)]);
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let engine = Offloader::builder(source, Arc::new(MemorySink::new()), store.clone())
        .build()
        .unwrap();
    let good = TableConfig::builder("good")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap();
    let bad = TableConfig::builder("bad")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap();
    // Someone else holds "bad".
    let _held =
        offload_core::WatermarkStore::acquire_lease(store.as_ref(), "bad", "other", Duration::from_secs(60))
            .await
            .unwrap();
    let results = engine.run_all(&[bad, good], &CancellationToken::new()).await;
    let by_name = |n: &str| results.iter().find(|r| r.0 == n).unwrap().1.as_ref();
    assert!(matches!(
        by_name("bad"),
        Err(offload_core::Error::LeaseHeld { .. })
    ));
    assert_eq!(by_name("good").unwrap().rows, 2);
}

/// A wall clock that moves with tokio's (paused) time, so lease expiry in the
/// store follows the virtual time the test advances.
#[derive(Debug, Clone)]
struct TokioClock {
    start: std::time::SystemTime,
    at: tokio::time::Instant,
}

impl TokioClock {
    fn new() -> Self {
        Self {
            start: UNIX_EPOCH + Duration::from_secs(10_000),
            at: tokio::time::Instant::now(),
        }
    }
}

impl offload_core::Clock for TokioClock {
    fn now(&self) -> std::time::SystemTime {
        self.start + self.at.elapsed()
    }
}

const TTL: Duration = Duration::from_secs(30);

/// Delays chosen operations by a fixed (virtual) time.
#[derive(Debug)]
struct Delay(offload_core::layer::Op, Duration);

impl offload_core::layer::Policy for Delay {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: offload_core::layer::Op,
        _table: &'a str,
        call: &'a mut (
                    dyn FnMut() -> futures::future::BoxFuture<'a, Result<T, offload_core::Error>> + Send + 'a
                ),
    ) -> futures::future::BoxFuture<'a, Result<T, offload_core::Error>> {
        Box::pin(async move {
            if op == self.0 {
                tokio::time::sleep(self.1).await;
            }
            call().await
        })
    }
}

/// A source whose batches come `gap` apart (a quiet stream).
#[derive(Debug)]
struct Quiet(Arc<MemorySource>, Option<Duration>);

#[derive(Debug)]
struct QuietTable(Arc<dyn offload_core::SourceTable>, Option<Duration>);

#[async_trait::async_trait]
impl offload_core::Source for Quiet {
    async fn open(&self, t: &TableConfig) -> Result<Arc<dyn offload_core::SourceTable>, offload_core::Error> {
        Ok(Arc::new(QuietTable(self.0.open(t).await?, self.1)))
    }
}

#[async_trait::async_trait]
impl offload_core::SourceTable for QuietTable {
    fn config(&self) -> &TableConfig {
        self.0.config()
    }
    fn schema(&self) -> arrow_schema::SchemaRef {
        self.0.schema()
    }
    async fn high_watermark(&self) -> Result<Option<offload_core::Watermark>, offload_core::Error> {
        self.0.high_watermark().await
    }
    async fn read(&self, w: offload_core::Window) -> Result<offload_core::BatchStream, offload_core::Error> {
        use futures::StreamExt;
        let inner = self.0.read(w).await?;
        Ok(match self.1 {
            // Each batch after a pause.
            Some(gap) => inner
                .then(move |b| async move {
                    tokio::time::sleep(gap).await;
                    b
                })
                .boxed(),
            // One batch, then silence.
            None => inner.take(1).chain(futures::stream::pending()).boxed(),
        })
    }
}

fn quiet_table() -> TableConfig {
    TableConfig::builder("t")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::ZERO)
        .batch_size(1)
        .build()
        .unwrap()
}

/// A run lasting several lease lengths (a quiet stream, then a slow sink
/// write) keeps its lease throughout: another engine is refused at every
/// point, and the run commits.
#[tokio::test(start_paused = true)]
async fn a_quiet_stream_and_a_slow_sink_longer_than_the_lease_keep_the_lease() {
    let clock = TokioClock::new();
    let memory = Arc::new(MemorySource::new(clock.clone()));
    memory.insert("t", &[(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 1, 4)]);
    let sink = MemorySink::new();
    let store = MemoryStore::new(clock.clone());
    let engine = Offloader::builder(
        // Four batches 0.8 TTL apart: 3.2 TTL of reading.
        Arc::new(Quiet(memory, Some(TTL * 4 / 5))),
        // And each write takes 0.5 TTL more: back-pressure.
        offload_core::layer::stack(sink.clone())
            .with(Delay(offload_core::layer::Op::Write, TTL / 2))
            .into_sink(),
        Arc::new(store.clone()),
    )
    .lease_ttl(TTL)
    .clock(Arc::new(clock.clone()))
    .build()
    .unwrap();
    let table = quiet_table();
    let run = tokio::spawn(async move { engine.run_once(&table).await });
    let mut probes = 0;
    for _ in 0..10 {
        tokio::time::sleep(TTL / 2).await;
        if run.is_finished() {
            break;
        }
        probes += 1;
        let other = offload_core::WatermarkStore::acquire_lease(&store, "t", "other", TTL).await;
        assert!(
            matches!(other, Err(offload_core::Error::LeaseHeld { .. })),
            "probe {probes}: the running engine's lease lapsed: {other:?}"
        );
    }
    assert!(
        probes >= 6,
        "the run lasted {probes} half-TTLs: three leases or more"
    );
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.rows, 4);
    assert_eq!(sink.rows("t").len(), 4);
}

/// A source that goes silent fails the run (retryably) within one lease
/// length, before the lease could lapse, and commits nothing.
#[tokio::test(start_paused = true)]
async fn a_silent_source_fails_the_run_within_the_lease() {
    let clock = TokioClock::new();
    let memory = Arc::new(MemorySource::new(clock.clone()));
    memory.insert("t", &[(1, 1, 1), (2, 1, 2)]);
    let sink = MemorySink::new();
    let engine = Offloader::builder(
        Arc::new(Quiet(memory, None)),
        Arc::new(sink.clone()),
        Arc::new(MemoryStore::new(clock.clone())),
    )
    .lease_ttl(TTL)
    .build()
    .unwrap();
    let started = tokio::time::Instant::now();
    let err = engine.run_once(&quiet_table()).await.unwrap_err();
    assert!(err.is_retryable() && err.kind() == "source", "{err}");
    assert_eq!(
        started.elapsed(),
        TTL,
        "the wait for a batch is bounded by the lease"
    );
    assert!(sink.rows("t").is_empty());
    assert_eq!(sink.orphans(), 0, "the staging was aborted");
}

/// When the heartbeat cannot renew (someone else took the table), the run is
/// abandoned before its commit, even while the sink is busy writing.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_abandons_the_run_before_its_commit() {
    let clock = TokioClock::new();
    let memory = Arc::new(MemorySource::new(clock.clone()));
    memory.insert("t", &[(1, 1, 1)]);
    let sink = MemorySink::new();
    let store = MemoryStore::new(clock.clone());
    let engine = Offloader::builder(
        memory,
        offload_core::layer::stack(sink.clone())
            .with(Delay(offload_core::layer::Op::Write, TTL * 10))
            .into_sink(),
        Arc::new(store.clone()),
    )
    .lease_ttl(TTL)
    .engine_id("engine-a")
    .build()
    .unwrap();
    let table = quiet_table();
    let run = tokio::spawn(async move { engine.run_once(&table).await });
    // While the write stalls, the table is acquired again under the same
    // holder name (a second process with the same engine id): the running
    // engine's token is superseded, and its next renewal says so.
    tokio::time::sleep(TTL / 6).await;
    offload_core::WatermarkStore::acquire_lease(&store, "t", "engine-a", TTL * 100)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, offload_core::Error::LeaseLost { .. }), "{err}");
    assert!(
        started.elapsed() <= TTL / 3,
        "noticed by the next heartbeat, not after the write"
    );
    assert!(sink.rows("t").is_empty(), "nothing committed");
    assert_eq!(sink.orphans(), 0, "the staging was aborted");
}
