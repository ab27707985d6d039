//! Property-based state machine: random inserts, runs with a fault injected at
//! any trait call (error, crash before or after the call takes effect, lost
//! reply, pause while another engine takes over), lease expiry and restarts.
//!
//! Rows also arrive *late*: below the committed watermark (at its exact
//! timestamp with smaller and larger sequences, into buckets already swept,
//! and older than the late horizon). Every trait call of the sweep is a fault
//! point like any other.
//!
//! Invariants after every step:
//! - the sink holds each row at most once, and only source rows at or below
//!   its committed watermark;
//! - it holds every row that was on time (above the watermark when it
//!   arrived) and is now at or below the watermark;
//! - it holds every late row that a completed sweep had in its horizon (as of
//!   the last completed sweep);
//! - the store is never ahead of the sink;
//! - no run ever sees the store ahead of the sink.
//!
//! And at the end, once faults stop, everything within the horizon is offloaded.
//!
//! `OFFLOAD_PROPTEST_CASES=10000` turns it into a soak.

use std::collections::{BTreeSet, HashSet};
use std::future::pending;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures::future::BoxFuture;
use offload_core::layer::{Elapsed, Layered, Op as LayerOp, Policy};
use offload_core::memory::{MemorySink, MemorySource, MemoryStore, Row};
use offload_core::{
    Error, ManualClock, Offloader, RetryPolicy, Sink, TableConfig, Watermark, WatermarkStore,
};
use proptest::prelude::*;
use tokio::sync::Notify;

const LAG_SECS: i64 = 60;
const LEASE_TTL: Duration = Duration::from_secs(30);
const HORIZON_SECS: i64 = 120;
const BUCKET: Duration = Duration::from_secs(7);

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
    /// Rows that arrive after their window was committed: `below_ms` below
    /// the committed watermark (or at its exact timestamp when `exact`, with
    /// sequences on both sides of the watermark's).
    LateInsert {
        below_ms: u32,
        exact: bool,
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
        2 => (0u32..(3 * HORIZON_SECS as u32 * 1000), any::<bool>(), 1u8..5, proptest::collection::vec(any::<u16>(), 5))
            .prop_map(|(below_ms, exact, count, seqs)| Op::LateInsert { below_ms, exact, count, seqs }),
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

/// The plan as a layer: every trait call of the run goes through it.
#[derive(Debug)]
struct PlanPolicy(Arc<Plan>);

impl Policy for PlanPolicy {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: LayerOp,
        _table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        Box::pin(async move {
            let plan = &self.0;
            let f = plan.hit();
            plan.before(f).await?;
            let r = call().await;
            match f {
                // The commit's reply never arrives: the layer reports a deadline,
                // which a wrapped `Staged` turns into CommitOutcomeUnknown.
                Some(Fault::LostReply) if op.is_commit() => Err(Error::sink(
                    Elapsed {
                        op,
                        after: Duration::ZERO,
                    },
                    false,
                )),
                _ => plan.after(f, r).await,
            }
        })
    }
}

struct World {
    clock: ManualClock,
    source: Arc<MemorySource>,
    sink: MemorySink,
    store: MemoryStore,
    table: TableConfig,
    next_engine: u32,
    /// Rows that were above the committed watermark when they arrived.
    on_time: HashSet<(i64, u64)>,
    /// Late rows no completed sweep has had in its horizon yet.
    late_pending: Vec<(i64, u64)>,
    /// Late rows a completed sweep had in its horizon: owed to the sink.
    late_owed: HashSet<(i64, u64)>,
}

impl World {
    fn new(max_window: Option<u8>, sink: MemorySink, sweep: bool) -> Self {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let horizon = if sweep { HORIZON_SECS as u64 } else { 0 };
        let mut b = TableConfig::builder("t")
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(Duration::from_secs(LAG_SECS as u64))
            .late_horizon(Duration::from_secs(horizon))
            .sweep_bucket(BUCKET)
            .batch_size(3);
        if let Some(w) = max_window {
            b = b.max_window(Duration::from_secs(u64::from(w) + 1));
        }
        World {
            source: Arc::new(MemorySource::new(clock.clone())),
            sink,
            store: MemoryStore::new(clock.clone()),
            table: b.build().unwrap(),
            clock,
            next_engine: 0,
            on_time: HashSet::new(),
            late_pending: Vec::new(),
            late_owed: HashSet::new(),
        }
    }

    /// A fresh engine process (a restart), its calls going through `plan`.
    fn engine(&mut self, plan: &Arc<Plan>) -> Offloader {
        self.next_engine += 1;
        Offloader::builder(
            Arc::new(Layered::new(PlanPolicy(plan.clone()), self.source.clone())),
            Arc::new(Layered::new(PlanPolicy(plan.clone()), self.sink.clone())),
            Arc::new(Layered::new(PlanPolicy(plan.clone()), self.store.clone())),
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

    fn insert(&mut self, offset_ms: i64, count: u8, seqs: &[u16]) {
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
        self.arrive(&rows);
    }

    /// Rows below (or at) the committed watermark, as a lagging consumer delivers them.
    fn late_insert(&mut self, below_ms: u32, exact: bool, count: u8, seqs: &[u16]) {
        let Some(w) = self.committed() else {
            return;
        };
        let ts = if exact {
            w.timestamp_micros()
        } else {
            w.timestamp_micros() - i64::from(below_ms) * 1000 - 1
        };
        let existing = self.source.rows("t");
        let mut rows: Vec<Row> = Vec::new();
        for (i, s) in seqs.iter().take(usize::from(count)).enumerate() {
            // Around the watermark's own sequence, on both sides of it.
            let seq = if exact {
                w.sequence().saturating_add(u64::from(*s % 7)).saturating_sub(3)
            } else {
                u64::from(*s)
            };
            if !existing.iter().chain(&rows).any(|r| (r.0, r.1) == (ts, seq)) {
                rows.push((ts, seq, -((existing.len() + i) as i64)));
            }
        }
        self.arrive(&rows);
    }

    /// Classifies arriving rows against the committed watermark, then inserts them.
    fn arrive(&mut self, rows: &[Row]) {
        let w = self.committed().unwrap_or(Watermark::MIN);
        for r in rows {
            if Watermark::new(r.0, r.1) > w {
                self.on_time.insert((r.0, r.1));
            } else {
                self.late_pending.push((r.0, r.1));
            }
        }
        self.source.insert("t", rows);
    }

    /// A run that finished its sweep below `w` owes the sink every late row
    /// that arrived before it, within its horizon.
    fn swept(&mut self, w: Watermark) {
        let from = w.timestamp_micros().saturating_sub(HORIZON_SECS * 1_000_000);
        let (owed, pending): (Vec<_>, Vec<_>) = self
            .late_pending
            .iter()
            .partition(|&&(ts, seq)| Watermark::new(ts, seq) <= w && ts >= from);
        self.late_owed.extend(owed);
        self.late_pending = pending;
    }

    fn record(&mut self, r: &Result<offload_core::RunSummary, Error>) {
        // With the sweep switched off (only to show that this test can fail)
        // the model still expects what a sweep would have repaired.
        let off = self.table.late_horizon().is_zero();
        if let Ok(s) = r
            && (s.sweep.is_some() || off)
            && (s.window.is_some() || s.watermark.is_some())
        {
            let w = s
                .window
                .map(|w| w.after())
                .or(s.watermark)
                .expect("a sweep needs a watermark");
            self.swept(w);
        }
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
                self.record(&rb);
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
            self.record(r);
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
        let below = |p: (i64, u64)| committed.is_some_and(|c| Watermark::new(p.0, p.1) <= c);
        let allowed: BTreeSet<Row> = self
            .source
            .rows("t")
            .into_iter()
            .filter(|r| below((r.0, r.1)))
            .collect();
        let actual = self.sink.rows("t");
        let unique: BTreeSet<Row> = actual.iter().copied().collect();
        prop_assert_eq!(
            unique.len(),
            actual.len(),
            "sink must hold each row exactly once: {:?}",
            actual
        );
        let foreign: Vec<_> = unique.difference(&allowed).collect();
        prop_assert!(
            foreign.is_empty(),
            "sink must hold only source rows <= {:?} (exactly once): extra {:?}",
            committed,
            foreign
        );
        let held: HashSet<(i64, u64)> = actual.iter().map(|r| (r.0, r.1)).collect();
        let mut missing: Vec<_> = self
            .on_time
            .iter()
            .filter(|p| below(**p))
            .chain(&self.late_owed)
            .filter(|p| !held.contains(*p))
            .collect();
        missing.sort_unstable();
        prop_assert!(
            missing.is_empty(),
            "sink must hold each owed source row <= {:?} exactly once: missing {:?}",
            committed,
            missing
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
            self.record(&s);
            self.check()?;
            if s.unwrap().window.is_none() {
                break;
            }
        }
        // Everything on time, and every late row within the horizon, once.
        let lost: HashSet<(i64, u64)> = self.late_pending.iter().copied().collect();
        let want: Vec<Row> = self
            .source
            .rows("t")
            .into_iter()
            .filter(|r| !lost.contains(&(r.0, r.1)))
            .collect();
        let got: Vec<Row> = self
            .sink
            .rows("t")
            .into_iter()
            .filter(|r| !lost.contains(&(r.0, r.1)))
            .collect();
        prop_assert_eq!(got, want, "everything offloaded once");
        let stored = self.store.load("t").await.unwrap().watermark;
        prop_assert_eq!(stored, self.committed(), "store caught up with the sink");
        // Crashes leave staged files behind; cleanup removes exactly those.
        let orphans = self.sink.orphans() as u64;
        let handle = self.sink.open(&self.table).await.unwrap();
        prop_assert_eq!(handle.cleanup().await.unwrap(), orphans);
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

/// One generated history: apply the ops, checking after each, then drain.
fn scenario(max_window: Option<u8>, ops: &[Op], sink: MemorySink) -> Result<(), TestCaseError> {
    scenario_with(max_window, ops, sink, true)
}

fn scenario_with(
    max_window: Option<u8>,
    ops: &[Op],
    sink: MemorySink,
    sweep: bool,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut world = World::new(max_window, sink, sweep);
        for op in ops {
            match op {
                Op::Insert {
                    offset_ms,
                    count,
                    seqs,
                } => world.insert(*offset_ms, *count, seqs),
                Op::LateInsert {
                    below_ms,
                    exact,
                    count,
                    seqs,
                } => world.late_insert(*below_ms, *exact, *count, seqs),
                Op::Advance { secs } => world.clock.advance(Duration::from_secs(u64::from(*secs))),
                Op::Run { fault } => world.run(*fault).await?,
                Op::ExpireLeases => world.clock.advance(LEASE_TTL + Duration::from_secs(1)),
            }
            world.check()?;
        }
        world.drain().await
    })
}

fn history() -> impl Strategy<Value = (Option<u8>, Vec<Op>)> {
    (
        proptest::option::of(0u8..120),
        proptest::collection::vec(op(), 1..40),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn exactly_once_under_faults((max_window, ops) in history()) {
        scenario(max_window, &ops, MemorySink::new())?;
    }
}

/// The state machine can fail: with the sink's fence switched off, some
/// history (a lost commit reply retried, a stalled engine whose lease lapsed)
/// appends a window twice, and the invariants say so.
#[test]
fn a_sink_without_its_fence_is_caught() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&history(), |(max_window, ops)| {
        scenario(max_window, &ops, MemorySink::unfenced())
    });
    match outcome {
        Err(proptest::test_runner::TestError::Fail(why, _)) => {
            assert!(why.to_string().contains("exactly once"), "{why}");
        }
        other => panic!("an unfenced sink passed the exactly-once state machine: {other:?}"),
    }
}

/// The state machine can fail without the sweep: with the late horizon at
/// zero (no sweep), some history leaves a late row out, and the invariants say so.
#[test]
fn an_engine_without_the_sweep_is_caught() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&history(), |(max_window, ops)| {
        scenario_with(max_window, &ops, MemorySink::new(), false)
    });
    match outcome {
        Err(proptest::test_runner::TestError::Fail(why, _)) => {
            assert!(why.to_string().contains("owed"), "{why}");
        }
        other => panic!("an engine without the sweep passed the late-row state machine: {other:?}"),
    }
}
