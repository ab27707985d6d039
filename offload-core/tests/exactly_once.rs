//! Property-based state machine: random inserts, runs with a fault injected at
//! any trait call (error, crash before or after the call takes effect, lost
//! reply, pause while another engine takes over), lease expiry and restarts.
//!
//! Invariants after every step:
//! - the sink holds exactly the source rows at or below its committed watermark, each once;
//! - the store is never ahead of the sink;
//! - no run ever sees the store ahead of the sink.
//!
//! And at the end, once faults stop, everything is offloaded.
//!
//! `OFFLOAD_PROPTEST_CASES=10000` turns it into a soak.

use std::future::pending;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use offload_core::memory::{MemorySink, MemorySource, MemoryStore, Row};
use offload_core::{
    BatchStream, CommitMetadata, CommittedWindow, Error, Lease, ManualClock, Offloader, RetryPolicy,
    RunEvent, RunId, Sink, Source, Staged, StagingWriter, TableConfig, TableState, Watermark, WatermarkStore,
    Window,
};
use proptest::prelude::*;
use tokio::sync::Notify;

const LAG_SECS: i64 = 60;
const LEASE_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The call fails before taking effect.
    Error { retryable: bool },
    /// The process dies before the call takes effect.
    CrashBefore,
    /// The process dies right after the call took effect.
    CrashAfter,
    /// The call takes effect but its reply is lost (commit: outcome unknown).
    LostReply,
    /// The engine stalls here while its lease lapses and another engine runs.
    Pause,
}

#[derive(Clone, Debug)]
enum Op {
    /// Rows that arrive now: `count` rows sharing one timestamp `offset_ms` past
    /// the lag horizon (so never older than the lag allows).
    Insert {
        offset_ms: i64,
        count: u8,
        seqs: Vec<u16>,
    },
    Advance {
        secs: u8,
    },
    Run {
        fault: Option<(u8, Fault)>,
    },
    ExpireLeases,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        any::<bool>().prop_map(|retryable| Fault::Error { retryable }),
        Just(Fault::CrashBefore),
        Just(Fault::CrashAfter),
        Just(Fault::LostReply),
        Just(Fault::Pause),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0i64..(2 * LAG_SECS * 1000), 1u8..6, proptest::collection::vec(any::<u16>(), 6))
            .prop_map(|(offset_ms, count, seqs)| Op::Insert { offset_ms, count, seqs }),
        3 => (0u8..90).prop_map(|secs| Op::Advance { secs }),
        4 => proptest::option::weighted(0.8, (0u8..24, fault())).prop_map(|fault| Op::Run { fault }),
        1 => Just(Op::ExpireLeases),
    ]
}

/// Decides which call of a run misbehaves, and how.
#[derive(Debug, Default)]
struct Plan {
    calls: AtomicU32,
    target: Mutex<Option<(u32, Fault)>>,
    crashed: Notify,
    paused: Notify,
    resume: Notify,
}

impl Plan {
    fn arm(&self, fault: Option<(u8, Fault)>) {
        self.calls.store(0, Ordering::SeqCst);
        *self.target.lock().unwrap() = fault.map(|(n, f)| (u32::from(n), f));
    }

    fn hit(&self) -> Option<Fault> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match *self.target.lock().unwrap() {
            Some((at, f)) if at == n => Some(f),
            _ => None,
        }
    }

    async fn before(&self, f: Option<Fault>) -> Result<(), Error> {
        match f {
            Some(Fault::Error { retryable }) => {
                Err(Error::source(std::io::Error::other("injected"), retryable))
            }
            Some(Fault::CrashBefore) => self.crash().await,
            Some(Fault::Pause) => {
                self.paused.notify_one();
                self.resume.notified().await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn after<T>(&self, f: Option<Fault>, r: Result<T, Error>) -> Result<T, Error> {
        match f {
            Some(Fault::CrashAfter) if r.is_ok() => self.crash().await,
            Some(Fault::LostReply) if r.is_ok() => {
                Err(Error::store(std::io::Error::other("reply lost"), true))
            }
            _ => r,
        }
    }

    async fn crash<T>(&self) -> T {
        self.crashed.notify_one();
        pending().await
    }
}

macro_rules! faulty {
    ($plan:expr, $call:expr) => {{
        let f = $plan.hit();
        $plan.before(f).await?;
        let r = $call.await;
        $plan.after(f, r).await
    }};
}

#[derive(Debug)]
struct FSource(Arc<MemorySource>, Arc<Plan>);
#[derive(Debug)]
struct FSink(MemorySink, Arc<Plan>);
#[derive(Debug)]
struct FStore(MemoryStore, Arc<Plan>);
struct FWriter(Box<dyn StagingWriter>, Arc<Plan>);

#[async_trait]
impl Source for FSource {
    async fn schema(&self, t: &TableConfig) -> Result<SchemaRef, Error> {
        faulty!(self.1, self.0.schema(t))
    }
    async fn high_watermark(&self, t: &TableConfig) -> Result<Option<Watermark>, Error> {
        faulty!(self.1, self.0.high_watermark(t))
    }
    async fn read(&self, t: &TableConfig, w: Window) -> Result<BatchStream, Error> {
        faulty!(self.1, self.0.read(t, w))
    }
}

#[async_trait]
impl StagingWriter for FWriter {
    async fn write(&mut self, b: RecordBatch) -> Result<(), Error> {
        faulty!(self.1, self.0.write(b))
    }
    async fn finish(self: Box<Self>) -> Result<Staged, Error> {
        let plan = self.1.clone();
        faulty!(plan, self.0.finish())
    }
    async fn abort(self: Box<Self>) -> Result<(), Error> {
        let plan = self.1.clone();
        faulty!(plan, self.0.abort())
    }
}

#[async_trait]
impl Sink for FSink {
    async fn prepare(&self, t: &TableConfig, s: SchemaRef) -> Result<(), Error> {
        faulty!(self.1, self.0.prepare(t, s))
    }
    async fn begin(&self, t: &TableConfig, r: RunId, s: SchemaRef) -> Result<Box<dyn StagingWriter>, Error> {
        let w = faulty!(self.1, self.0.begin(t, r, s))?;
        Ok(Box::new(FWriter(w, self.1.clone())))
    }
    async fn commit(&self, t: &TableConfig, s: &Staged, m: &CommitMetadata) -> Result<(), Error> {
        let f = self.1.hit();
        self.1.before(f).await?;
        let r = self.0.commit(t, s, m).await;
        match f {
            Some(Fault::LostReply) => Err(Error::CommitOutcomeUnknown {
                run_id: m.run_id,
                source: "connection reset during commit".into(),
            }),
            _ => self.1.after(f, r).await,
        }
    }
    async fn abort(&self, t: &TableConfig, s: Staged) -> Result<(), Error> {
        faulty!(self.1, self.0.abort(t, s))
    }
    async fn committed(&self, t: &TableConfig) -> Result<Option<CommittedWindow>, Error> {
        faulty!(self.1, self.0.committed(t))
    }
    async fn was_committed(&self, t: &TableConfig, r: RunId) -> Result<bool, Error> {
        faulty!(self.1, self.0.was_committed(t, r))
    }
}

#[async_trait]
impl WatermarkStore for FStore {
    async fn load(&self, t: &str) -> Result<TableState, Error> {
        faulty!(self.1, self.0.load(t))
    }
    async fn acquire_lease(&self, t: &str, h: &str, ttl: Duration) -> Result<Lease, Error> {
        faulty!(self.1, self.0.acquire_lease(t, h, ttl))
    }
    async fn renew_lease(&self, l: &Lease, ttl: Duration) -> Result<Lease, Error> {
        faulty!(self.1, self.0.renew_lease(l, ttl))
    }
    async fn release_lease(&self, l: &Lease) -> Result<(), Error> {
        faulty!(self.1, self.0.release_lease(l))
    }
    async fn compare_and_set(&self, l: &Lease, e: Option<Watermark>, n: Watermark) -> Result<(), Error> {
        faulty!(self.1, self.0.compare_and_set(l, e, n))
    }
    async fn record_run(&self, l: &Lease, e: RunEvent) -> Result<(), Error> {
        faulty!(self.1, self.0.record_run(l, e))
    }
    async fn recover_stale_runs(&self, d: Duration) -> Result<Vec<String>, Error> {
        faulty!(self.1, self.0.recover_stale_runs(d))
    }
}

struct World {
    clock: ManualClock,
    source: Arc<MemorySource>,
    sink: MemorySink,
    store: MemoryStore,
    table: TableConfig,
    next_engine: u32,
}

impl World {
    fn new(max_window: Option<u8>) -> Self {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let mut b = TableConfig::builder("t")
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(Duration::from_secs(LAG_SECS as u64))
            .batch_size(3);
        if let Some(w) = max_window {
            b = b.max_window(Duration::from_secs(u64::from(w) + 1));
        }
        World {
            source: Arc::new(MemorySource::new(clock.clone())),
            sink: MemorySink::new(),
            store: MemoryStore::new(clock.clone()),
            table: b.build().unwrap(),
            clock,
            next_engine: 0,
        }
    }

    /// A fresh engine process (a restart), its calls going through `plan`.
    fn engine(&mut self, plan: &Arc<Plan>) -> Offloader {
        self.next_engine += 1;
        Offloader::builder(
            Arc::new(FSource(self.source.clone(), plan.clone())),
            Arc::new(FSink(self.sink.clone(), plan.clone())),
            Arc::new(FStore(self.store.clone(), plan.clone())),
        )
        .engine_id(format!("engine-{}", self.next_engine))
        .lease_ttl(LEASE_TTL)
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(5)),
        )
        .clock(Arc::new(self.clock.clone()))
        .build()
        .unwrap()
    }

    fn now_micros(&self) -> i64 {
        offload_core::system_time_to_micros(offload_core::Clock::now(&self.clock))
    }

    fn insert(&self, offset_ms: i64, count: u8, seqs: &[u16]) {
        // Strictly newer than the lag horizon: rows arrive at most `lag` late.
        let ts = self.now_micros() - LAG_SECS * 1_000_000 + 1 + offset_ms * 1000;
        let existing = self.source.rows("t");
        let mut rows: Vec<Row> = Vec::new();
        for (i, s) in seqs.iter().take(usize::from(count)).enumerate() {
            let seq = u64::from(*s);
            if !existing.iter().chain(&rows).any(|r| (r.0, r.1) == (ts, seq)) {
                rows.push((ts, seq, (existing.len() + i) as i64));
            }
        }
        self.source.insert("t", &rows);
    }

    async fn run(&mut self, fault: Option<(u8, Fault)>) -> Result<(), TestCaseError> {
        let plan = Arc::new(Plan::default());
        plan.arm(fault);
        let engine = self.engine(&plan);
        let table = self.table.clone();
        let run = engine.run_once(&table);
        tokio::pin!(run);
        let result = tokio::select! {
            biased;
            r = &mut run => Some(r),
            _ = plan.crashed.notified() => None,
            _ = plan.paused.notified() => {
                // Engine A stalls past its lease; engine B takes the table and runs.
                self.clock.advance(LEASE_TTL + Duration::from_secs(1));
                let quiet = Arc::new(Plan::default());
                let b = self.engine(&quiet);
                let rb = b.run_once(&table).await;
                self.check_run_result(&rb)?;
                self.check()?;
                plan.resume.notify_one();
                tokio::select! {
                    biased;
                    r = &mut run => Some(r),
                    _ = plan.crashed.notified() => None,
                }
            }
        };
        if let Some(r) = &result {
            self.check_run_result(r)?;
        }
        Ok(())
    }

    fn check_run_result(&self, r: &Result<offload_core::RunSummary, Error>) -> Result<(), TestCaseError> {
        prop_assert!(
            !matches!(r, Err(Error::StoreAheadOfSink { .. })),
            "a run saw the store ahead of the sink: {r:?}"
        );
        Ok(())
    }

    fn committed(&self) -> Option<Watermark> {
        self.sink.commits("t").last().map(|c| c.window.until())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let committed = self.committed();
        let expected: Vec<Row> = self
            .source
            .rows("t")
            .into_iter()
            .filter(|r| committed.is_some_and(|c| Watermark::new(r.0, r.1) <= c))
            .collect();
        let actual = self.sink.rows("t");
        prop_assert_eq!(
            &actual,
            &expected,
            "sink must hold each source row <= {:?} exactly once",
            committed
        );
        let stored = futures::executor::block_on(self.store.load("t"))
            .unwrap()
            .watermark;
        prop_assert!(
            stored <= committed,
            "store {stored:?} ahead of sink {committed:?}"
        );
        Ok(())
    }

    /// Faults stop: the table must drain completely and the store catch up.
    async fn drain(&mut self) -> Result<(), TestCaseError> {
        self.clock
            .advance(LEASE_TTL + Duration::from_secs(LAG_SECS as u64 * 3));
        let quiet = Arc::new(Plan::default());
        let engine = self.engine(&quiet);
        for _ in 0..10_000 {
            let s = engine.run_once(&self.table).await;
            prop_assert!(s.is_ok(), "clean run failed: {s:?}");
            self.check()?;
            if s.unwrap().window.is_none() {
                break;
            }
        }
        prop_assert_eq!(
            self.sink.rows("t"),
            self.source.rows("t"),
            "everything offloaded once"
        );
        let stored = self.store.load("t").await.unwrap().watermark;
        prop_assert_eq!(stored, self.committed(), "store caught up with the sink");
        // Crashes leave staged files behind; cleanup removes exactly those.
        let orphans = self.sink.orphans() as u64;
        prop_assert_eq!(self.sink.cleanup(&self.table).await.unwrap(), orphans);
        prop_assert_eq!(self.sink.orphans(), 0);
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("OFFLOAD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn exactly_once_under_faults(
        max_window in proptest::option::of(0u8..120),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let mut world = World::new(max_window);
            for op in &ops {
                match op {
                    Op::Insert { offset_ms, count, seqs } => world.insert(*offset_ms, *count, seqs),
                    Op::Advance { secs } => world.clock.advance(Duration::from_secs(u64::from(*secs))),
                    Op::Run { fault } => world.run(*fault).await?,
                    Op::ExpireLeases => world.clock.advance(LEASE_TTL + Duration::from_secs(1)),
                }
                world.check()?;
            }
            world.drain().await
        })?;
    }
}
