//! The [`Sink`] conformance suite: one check per clause of the [`SinkTable`]
//! and [`Staged`] contracts.
//!
//! An implementation provides a [`SinkFixture`]: the sink under test, a fresh
//! table configuration per check, and a way to read a table's committed rows
//! back *without* the sink (a catalog scan, pyiceberg, a query), so that
//! "staging is invisible" and "committed exactly once" are checked against
//! what a reader sees. Rows are staged in the in-memory schema
//! ([`memory::schema`](crate::memory::schema): timestamp, sequence, value)
//! unless the fixture supplies its own batches.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use offload_core::conformance::sink::{MemorySinkFixture, run};
//! let results = run(|| async { MemorySinkFixture::new() }).await;
//! assert!(results.iter().all(|r| r.passed()), "{results:?}");
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use super::{CheckFn, CheckResult, assert_passed, ok};
use crate::memory::MemorySink;
use crate::{
    BucketGrid, CommitMetadata, Error, RepairMetadata, RunId, Sink, SinkTable, SinkVersion, Staged,
    TableConfig, Watermark, Window,
};

/// How the suite drives a sink implementation.
#[async_trait]
pub trait SinkFixture: Send + Sync + 'static {
    /// The sink under test. Called again where a check "reopens" the sink:
    /// return a fresh instance over the same storage if the sink can be
    /// reopened (a new catalog connection), or the same one.
    fn sink(&self) -> Arc<dyn Sink>;

    /// The configuration of a table that does not exist yet, unique to the
    /// check `name` (the fixture may decorate the name to keep runs apart).
    async fn create_table(&self, name: &str) -> Result<TableConfig, Error>;

    /// Every committed row's `(timestamp_micros, sequence)`, in any order, read
    /// from storage independently of the sink. A table that does not exist has none.
    async fn committed_rows(&self, table: &TableConfig) -> Result<Vec<(i64, u64)>, Error>;

    /// The schema of staged batches (default: [`memory::schema`](crate::memory::schema)).
    fn schema(&self, table: &TableConfig) -> SchemaRef {
        crate::memory::schema(table)
    }

    /// A batch holding one row per position, of [`schema`](Self::schema)
    /// (default: the in-memory rows `(ts, seq, seq as value)`).
    fn batch(&self, table: &TableConfig, rows: &[(i64, u64)]) -> RecordBatch {
        let rows: Vec<_> = rows.iter().map(|&(ts, seq)| (ts, seq, seq as i64)).collect();
        crate::memory::to_batch(self.schema(table), &rows)
    }
}

/// A fixture as the checks take it.
pub type SharedSinkFixture = Arc<dyn SinkFixture>;

/// The in-memory reference sink as a fixture.
///
/// ```
/// use offload_core::conformance::sink::MemorySinkFixture;
/// let fx = MemorySinkFixture::new();
/// assert_eq!(fx.memory().orphans(), 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemorySinkFixture {
    sink: MemorySink,
}

impl MemorySinkFixture {
    /// A fresh, empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fixture over `sink` (for example a deliberately broken one).
    pub fn with_sink(sink: MemorySink) -> Self {
        Self { sink }
    }

    /// The sink itself.
    pub fn memory(&self) -> &MemorySink {
        &self.sink
    }
}

#[async_trait]
impl SinkFixture for MemorySinkFixture {
    fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(self.sink.clone())
    }

    async fn create_table(&self, name: &str) -> Result<TableConfig, Error> {
        TableConfig::builder(name)
            .timestamp_column("ts")
            .sequence_column("seq")
            .build()
    }

    async fn committed_rows(&self, table: &TableConfig) -> Result<Vec<(i64, u64)>, Error> {
        Ok(self
            .sink
            .rows(table.sink_table())
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect())
    }
}

/// The list of checks, in the order [`run`] runs them; feeds [`CHECK_NAMES`]
/// and [`sink_conformance_tests!`](crate::sink_conformance_tests). Not an API of its own.
#[doc(hidden)]
#[macro_export]
macro_rules! __sink_conformance_checks {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*! {
            $($args)*
            fresh_table_has_no_commit,
            staging_is_invisible,
            commit_is_fenced,
            retried_commit_after_success_conflicts,
            was_committed_names_the_run,
            discard_refuses_a_committed_run,
            committed_survives_reopening,
            racing_commits_have_one_winner,
            cleanup_never_deletes_committed_rows,
            positions_and_counts_describe_committed_rows,
            repair_is_fenced_on_the_version,
            racing_repairs_have_one_winner,
        }
    };
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// The name of every check, in the order [`run`] runs them.
        pub const CHECK_NAMES: &[&str] = &[$(stringify!($name)),*];

        fn all_checks() -> Vec<(&'static str, CheckFn<SharedSinkFixture>)> {
            vec![$((stringify!($name), (|f| Box::pin($name(f))) as CheckFn<SharedSinkFixture>)),*]
        }
    };
}

crate::__sink_conformance_checks!([checks]);

/// Runs every check, each on a fresh fixture from `factory` and in its own
/// tokio task, and returns one result per check (call it from a tokio runtime).
pub async fn run<F, Fut, X>(mut factory: F) -> Vec<CheckResult>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = X>,
    X: SinkFixture,
{
    super::run_checks(all_checks(), || {
        let fut = factory();
        async move { Arc::new(fut.await) as SharedSinkFixture }
    })
    .await
}

/// Like [`run`], panicking with the name of the first check that failed.
pub async fn run_all<F, Fut, X>(factory: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = X>,
    X: SinkFixture,
{
    assert_passed(&run(factory).await);
}

/// Generates one `#[tokio::test]` per sink check, in a module
/// `sink_conformance`, each on a fresh fixture from `$factory` (an expression
/// callable with no arguments that returns a future of the fixture, resolved
/// in the calling module).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies.
///
/// ```no_run
/// use offload_core::conformance::sink::MemorySinkFixture;
/// async fn fresh() -> MemorySinkFixture { MemorySinkFixture::new() }
/// offload_core::sink_conformance_tests!(fresh);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! sink_conformance_tests {
    ($factory:expr) => {
        mod sink_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__sink_conformance_checks!([$crate::sink_conformance_tests] @tests $factory;);
        }
    };
    (@tests $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let fixture = ($factory)().await;
                $crate::conformance::sink::$check(::std::sync::Arc::new(fixture)).await;
            }
        )*
    };
}

/// Racing committers per round.
const RACERS: usize = 4;
/// Rounds of the race; each must have exactly one winner.
const RACE_ROUNDS: i64 = 5;

/// 2026-01-01T00:00:00Z, where the checks' rows live.
const T0: i64 = 1_767_225_600_000_000;

fn wm(ms: i64, seq: u64) -> Watermark {
    Watermark::new(T0 + ms * 1_000, seq)
}

/// Rows `(ms, seq)` for `seq` in `1..=n` at millisecond `ms` past `T0`.
fn rows_at(ms: i64, n: u64) -> Vec<(i64, u64)> {
    (1..=n).map(|s| (T0 + ms * 1_000, s)).collect()
}

fn meta(after: Watermark, until: Watermark, run_id: RunId) -> CommitMetadata {
    CommitMetadata {
        window: Window::new(after, until).expect("after < until"),
        run_id,
        engine_id: "conformance".into(),
        fencing_token: 1,
    }
}

struct Table {
    fx: SharedSinkFixture,
    config: TableConfig,
    handle: Arc<dyn SinkTable>,
}

impl Table {
    /// A fresh table, opened and prepared.
    async fn new(fx: &SharedSinkFixture, name: &str) -> Self {
        let config = ok(
            fx.create_table(&format!("conformance_{name}")).await,
            "create_table",
        );
        let handle = ok(fx.sink().open(&config).await, "open");
        ok(handle.prepare(fx.schema(&config)).await, "prepare");
        Self {
            fx: fx.clone(),
            config,
            handle,
        }
    }

    /// Stages `rows` under a fresh run id (in two batches when there are several).
    async fn stage(&self, rows: &[(i64, u64)]) -> Box<dyn Staged> {
        let run_id = RunId::new();
        let mut w = ok(
            self.handle.begin(run_id, self.fx.schema(&self.config)).await,
            "begin",
        );
        let (a, b) = rows.split_at(rows.len() / 2);
        for part in [a, b] {
            if !part.is_empty() {
                ok(w.write(self.fx.batch(&self.config, part)).await, "write");
            }
        }
        let staged = ok(w.finish().await, "finish");
        assert_eq!(
            staged.stats().run_id,
            run_id,
            "stats().run_id is the run that staged it"
        );
        assert_eq!(
            staged.stats().rows,
            rows.len() as u64,
            "stats().rows counts the staged rows"
        );
        staged
    }

    async fn rows(&self) -> Vec<(i64, u64)> {
        let mut r = ok(self.fx.committed_rows(&self.config).await, "committed_rows");
        r.sort_unstable();
        r
    }

    async fn committed(&self) -> Option<Watermark> {
        ok(self.handle.committed().await, "committed").map(|c| c.until)
    }
}

fn sorted(mut v: Vec<(i64, u64)>) -> Vec<(i64, u64)> {
    v.sort_unstable();
    v
}

#[track_caller]
fn expect_conflict(r: Result<(), Error>, what: &str) {
    match r {
        Err(Error::CommitConflict { .. }) => {}
        other => panic!("{what}: expected Error::CommitConflict, got {other:?}"),
    }
}

/// A table that was never committed to has no committed window, before and
/// after `prepare` (which may be called again), and knows no run.
pub async fn fresh_table_has_no_commit(fx: SharedSinkFixture) {
    let config = ok(fx.create_table("conformance_fresh").await, "create_table");
    let handle = ok(
        fx.sink().open(&config).await,
        "open a table that does not exist yet",
    );
    assert_eq!(
        ok(handle.committed().await, "committed() before prepare").map(|c| c.until),
        None,
        "nothing committed before prepare"
    );
    ok(handle.prepare(fx.schema(&config)).await, "prepare");
    ok(handle.prepare(fx.schema(&config)).await, "prepare again");
    assert_eq!(ok(handle.committed().await, "committed()").map(|c| c.until), None);
    assert!(
        !ok(handle.was_committed(RunId::new()).await, "was_committed"),
        "an unknown run"
    );
    assert!(ok(fx.committed_rows(&config).await, "committed_rows").is_empty());
}

/// Contract 1 (Staged): nothing staged is visible until its commit; then all
/// of it is, with the window's `until` and the run id.
pub async fn staging_is_invisible(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "staging").await;
    let rows = rows_at(1, 6);
    let staged = t.stage(&rows).await;
    assert_eq!(t.committed().await, None, "staged data must not be committed()");
    assert!(
        t.rows().await.is_empty(),
        "staged rows must not be visible to readers"
    );
    let m = meta(Watermark::MIN, wm(1, 6), staged.stats().run_id);
    ok(staged.commit(&m).await, "commit");
    assert_eq!(
        t.rows().await,
        sorted(rows),
        "every staged row, once, after the commit"
    );
    let c = ok(t.handle.committed().await, "committed").expect("a committed window");
    assert_eq!(c.until, wm(1, 6), "committed().until is the window's until");
    if let Some(run) = c.run_id {
        assert_eq!(run, m.run_id, "committed().run_id names the committing run");
    }
}

/// Contract 2 (Staged): a commit succeeds only if the committed watermark is
/// exactly the window's `after`; otherwise CommitConflict, and nothing changes.
pub async fn commit_is_fenced(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "fence").await;
    let a = t.stage(&rows_at(1, 3)).await;
    ok(
        a.commit(&meta(Watermark::MIN, wm(1, 3), a.stats().run_id)).await,
        "first commit",
    );

    let b = t.stage(&rows_at(2, 2)).await;
    expect_conflict(
        b.commit(&meta(Watermark::MIN, wm(2, 2), b.stats().run_id)).await,
        "a second window from MIN (a stale after)",
    );
    let c = t.stage(&rows_at(2, 2)).await;
    expect_conflict(
        c.commit(&meta(wm(1, 2), wm(2, 2), c.stats().run_id)).await,
        "after below the committed watermark",
    );
    let d = t.stage(&rows_at(2, 2)).await;
    expect_conflict(
        d.commit(&meta(wm(1, 4), wm(2, 2), d.stats().run_id)).await,
        "after above the committed watermark",
    );
    assert_eq!(
        t.rows().await,
        sorted(rows_at(1, 3)),
        "refused commits change nothing"
    );
    assert_eq!(t.committed().await, Some(wm(1, 3)));

    let e = t.stage(&rows_at(2, 2)).await;
    ok(
        e.commit(&meta(wm(1, 3), wm(2, 2), e.stats().run_id)).await,
        "the next window",
    );
    let mut want = rows_at(1, 3);
    want.extend(rows_at(2, 2));
    assert_eq!(t.rows().await, sorted(want));
    assert_eq!(t.committed().await, Some(wm(2, 2)));
}

/// A commit retried after it succeeded (its reply was lost) is refused by the
/// fence: the window is never appended twice.
pub async fn retried_commit_after_success_conflicts(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "retry").await;
    let s = t.stage(&rows_at(1, 4)).await;
    let m = meta(Watermark::MIN, wm(1, 4), s.stats().run_id);
    ok(s.commit(&m).await, "commit");
    expect_conflict(s.commit(&m).await, "the same commit again");
    assert_eq!(t.rows().await, sorted(rows_at(1, 4)), "the rows are there once");
    assert!(ok(t.handle.was_committed(m.run_id).await, "was_committed"));
}

/// `was_committed` is true exactly for runs whose commit is part of the table.
pub async fn was_committed_names_the_run(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "was_committed").await;
    let s = t.stage(&rows_at(1, 2)).await;
    let run = s.stats().run_id;
    assert!(
        !ok(t.handle.was_committed(run).await, "was_committed"),
        "before its commit"
    );
    ok(s.commit(&meta(Watermark::MIN, wm(1, 2), run)).await, "commit");
    assert!(
        ok(t.handle.was_committed(run).await, "was_committed"),
        "after its commit"
    );
    assert!(
        !ok(t.handle.was_committed(RunId::new()).await, "was_committed"),
        "another run"
    );
    let s2 = t.stage(&rows_at(2, 2)).await;
    let run2 = s2.stats().run_id;
    ok(s2.commit(&meta(wm(1, 2), wm(2, 2), run2)).await, "second commit");
    let reopened = ok(fx.sink().open(&t.config).await, "reopen");
    assert!(
        ok(reopened.was_committed(run).await, "was_committed"),
        "an older commit, reopened"
    );
    assert!(
        ok(reopened.was_committed(run2).await, "was_committed"),
        "the latest commit, reopened"
    );
}

/// Contract 5 (Staged): `discard` deletes an uncommitted run's data, and
/// refuses (with an error) when the run's commit is part of the table.
pub async fn discard_refuses_a_committed_run(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "discard").await;
    let kept = t.stage(&rows_at(1, 3)).await;
    ok(
        kept.commit(&meta(Watermark::MIN, wm(1, 3), kept.stats().run_id))
            .await,
        "commit",
    );
    assert!(
        kept.discard().await.is_err(),
        "discarding a committed run must be refused"
    );
    assert_eq!(
        t.rows().await,
        sorted(rows_at(1, 3)),
        "a refused discard deletes nothing"
    );

    let dropped = t.stage(&rows_at(2, 3)).await;
    let dropped_run = dropped.stats().run_id;
    ok(dropped.discard().await, "discard an uncommitted run");
    assert_eq!(
        t.rows().await,
        sorted(rows_at(1, 3)),
        "discarded rows never appear"
    );
    assert_eq!(t.committed().await, Some(wm(1, 3)));
    assert!(!ok(t.handle.was_committed(dropped_run).await, "was_committed"));
}

/// Contract 1 (SinkTable): the committed window is read from the table
/// itself, so a reopened sink reports the last commit.
pub async fn committed_survives_reopening(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "reopen").await;
    let a = t.stage(&rows_at(1, 2)).await;
    ok(
        a.commit(&meta(Watermark::MIN, wm(1, 2), a.stats().run_id)).await,
        "commit 1",
    );
    let b = t.stage(&rows_at(2, 2)).await;
    let run_b = b.stats().run_id;
    ok(b.commit(&meta(wm(1, 2), wm(2, 2), run_b)).await, "commit 2");
    drop(t.handle);
    let handle = ok(fx.sink().open(&t.config).await, "reopen");
    let c = ok(handle.committed().await, "committed after reopening").expect("a committed window");
    assert_eq!(c.until, wm(2, 2), "the last commit's until");
    if let Some(run) = c.run_id {
        assert_eq!(run, run_b, "the last commit's run");
    }
}

/// Of several commits racing for the same window, exactly one lands; the
/// others fail (CommitConflict, or a retryable error) and add nothing.
pub async fn racing_commits_have_one_winner(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "race").await;
    let mut after = Watermark::MIN;
    let mut want = Vec::new();
    for round in 1..=RACE_ROUNDS {
        let until = wm(round, RACERS as u64);
        let mut contenders = Vec::new();
        for racer in 0..RACERS {
            // Each racer's rows differ, so the winner can be told from the rows.
            let rows = vec![(T0 + round * 1_000, racer as u64 + 1)];
            let staged = t.stage(&rows).await;
            contenders.push((rows, staged));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = contenders
            .into_iter()
            .map(|(rows, staged)| {
                let barrier = barrier.clone();
                let m = meta(after, until, staged.stats().run_id);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (rows, m.run_id, staged.commit(&m).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (rows, run, r) = task.await.expect("commit task");
            match r {
                Ok(()) => winners.push((rows, run)),
                Err(Error::CommitConflict { .. }) => {}
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("round {round}: a losing commit must be a conflict, got {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {RACERS} racing commits must win"
        );
        let (rows, run) = winners.pop().unwrap();
        want.extend(rows);
        assert_eq!(
            t.rows().await,
            sorted(want.clone()),
            "round {round}: only the winner's rows"
        );
        assert!(
            ok(t.handle.was_committed(run).await, "was_committed"),
            "round {round}: the winner"
        );
        assert_eq!(t.committed().await, Some(until));
        after = until;
    }
}

/// Contract 3 (SinkTable): cleanup may delete staged orphans but never a
/// committed file, and the table keeps working afterwards.
pub async fn cleanup_never_deletes_committed_rows(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "cleanup").await;
    let a = t.stage(&rows_at(1, 5)).await;
    ok(
        a.commit(&meta(Watermark::MIN, wm(1, 5), a.stats().run_id)).await,
        "commit",
    );
    // A crashed run's output: staged, never committed, never discarded.
    let orphan = t.stage(&rows_at(2, 5)).await;
    drop(orphan);
    ok(t.handle.cleanup().await, "cleanup");
    ok(t.handle.cleanup().await, "cleanup again");
    assert_eq!(
        t.rows().await,
        sorted(rows_at(1, 5)),
        "committed rows survive cleanup"
    );
    assert_eq!(t.committed().await, Some(wm(1, 5)));
    let b = t.stage(&rows_at(3, 2)).await;
    ok(
        b.commit(&meta(wm(1, 5), wm(3, 2), b.stats().run_id)).await,
        "commit after cleanup",
    );
    let mut want = rows_at(1, 5);
    want.extend(rows_at(3, 2));
    assert_eq!(t.rows().await, sorted(want));
}

fn repair(base: SinkVersion, watermark: Watermark, run_id: RunId, rows: u64) -> RepairMetadata {
    RepairMetadata::new(base, watermark, run_id, "conformance", 1, Vec::new(), rows)
}

async fn version(t: &Table) -> SinkVersion {
    ok(t.handle.committed().await, "committed")
        .expect("a committed window")
        .version
}

#[track_caller]
fn expect_repair_conflict(r: Result<(), Error>, what: &str) {
    match r {
        Err(Error::RepairConflict { .. }) => {}
        other => panic!("{what}: expected Error::RepairConflict, got {other:?}"),
    }
}

/// Contract 4 (SinkTable): `positions` lists exactly the committed rows of a
/// window (cut inside one timestamp too), and `bucket_counts` counts them per
/// bucket, also on grids whose watermark lies below the committed one.
pub async fn positions_and_counts_describe_committed_rows(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "positions").await;
    let mut all = Vec::new();
    let mut after = Watermark::MIN;
    // Three windows; rows every 100 ms, several per timestamp, one on an edge.
    for w in 0..3i64 {
        let mut rows = Vec::new();
        for k in 0..10 {
            let ms = w * 1_000 + k * 100;
            rows.extend((1..=(k as u64 % 3 + 1)).map(|s| (T0 + ms * 1_000, s)));
        }
        if w == 1 {
            rows.push((T0 + 2_000 * 1_000 - 1, 4));
        }
        let until = rows.iter().map(|&(ts, s)| Watermark::new(ts, s)).max().unwrap();
        let staged = t.stage(&rows).await;
        ok(
            staged.commit(&meta(after, until, staged.stats().run_id)).await,
            "commit",
        );
        all.extend(rows);
        after = until;
    }
    let windows = [
        Window::new(Watermark::MIN, after).unwrap(),
        Window::new(wm(100, 1), wm(1_500, 1)).unwrap(),
        Window::new(wm(999, u64::MAX), wm(2_000, 0)).unwrap(),
        Window::new(wm(1_900, 1), wm(1_900, 2)).unwrap(),
        Window::new(after, Watermark::new(i64::MAX, 0)).unwrap(),
    ];
    for window in windows {
        let mut got: Vec<(i64, u64)> = ok(t.handle.positions(window).await, "positions")
            .into_iter()
            .map(|p| (p.timestamp_micros(), p.sequence()))
            .collect();
        got.sort_unstable();
        let want = sorted(
            all.iter()
                .copied()
                .filter(|&(ts, s)| window.contains(Watermark::new(ts, s)))
                .collect(),
        );
        assert_eq!(got, want, "positions({window})");
    }
    let untils = [after, wm(1_500, 1), wm(1_999, 0), wm(2_000, 0)];
    for until in untils {
        for width in [1_000_000u64, 300_000, 250_000, 60_000_000] {
            let grid = ok(
                BucketGrid::covering(T0 - 5_000_000, until, std::time::Duration::from_micros(width)),
                "grid",
            );
            let got = ok(t.handle.bucket_counts(&grid).await, "bucket_counts");
            let want = grid.histogram(all.iter().map(|&(ts, s)| Watermark::new(ts, s)));
            assert_eq!(got, want, "bucket_counts over {grid:?}");
        }
    }
}

/// Contract (Staged::commit_repair): a repair adds its rows atomically and
/// keeps the committed watermark; it is refused (RepairConflict, nothing
/// changed) unless the table is at the repair's base version, so a retried or
/// stale repair never adds a row twice; the version changes with every
/// commit; the next window still commits.
pub async fn repair_is_fenced_on_the_version(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "repair").await;
    let first = rows_at(5, 3);
    let a = t.stage(&first).await;
    ok(
        a.commit(&meta(Watermark::MIN, wm(5, 3), a.stats().run_id)).await,
        "commit",
    );
    let v0 = version(&t).await;

    // Late rows: below the watermark, at its timestamp with a smaller
    // sequence, and earlier.
    let late = vec![(T0 + 5_000, 0), (T0 + 2_000, 7), (T0 + 1_000, 1)];
    let r = t.stage(&late).await;
    let run = r.stats().run_id;
    assert!(
        t.rows().await.len() == first.len(),
        "a staged repair is invisible"
    );
    let m = repair(v0.clone(), wm(5, 3), run, late.len() as u64);
    ok(r.commit_repair(&m).await, "commit_repair");
    let mut want = first.clone();
    want.extend(late.iter().copied());
    assert_eq!(t.rows().await, sorted(want.clone()), "the repaired rows, once");
    assert_eq!(
        t.committed().await,
        Some(wm(5, 3)),
        "a repair keeps the committed watermark"
    );
    let v1 = version(&t).await;
    assert_ne!(v1, v0, "a repair changes the version");
    assert!(
        ok(t.handle.was_committed(run).await, "was_committed"),
        "the repair's run"
    );

    expect_repair_conflict(r.commit_repair(&m).await, "the same repair again");
    let stale = t.stage(&[(T0 + 3_000, 1)]).await;
    let sm = repair(v0.clone(), wm(5, 3), stale.stats().run_id, 1);
    expect_repair_conflict(stale.commit_repair(&sm).await, "a repair on a stale version");
    assert_eq!(
        t.rows().await,
        sorted(want.clone()),
        "refused repairs change nothing"
    );
    assert!(
        r.discard().await.is_err(),
        "discarding a committed repair must be refused"
    );

    let b = t.stage(&rows_at(6, 2)).await;
    ok(
        b.commit(&meta(wm(5, 3), wm(6, 2), b.stats().run_id)).await,
        "the next window after a repair",
    );
    assert_ne!(version(&t).await, v1, "a window commit changes the version");
    let old = t.stage(&[(T0 + 4_000, 1)]).await;
    let om = repair(v1, wm(5, 3), old.stats().run_id, 1);
    expect_repair_conflict(
        old.commit_repair(&om).await,
        "a repair computed before the last window",
    );
    want.extend(rows_at(6, 2));
    assert_eq!(t.rows().await, sorted(want));
    assert_eq!(t.committed().await, Some(wm(6, 2)));
}

/// Of several repairs computed against the same version, exactly one lands.
pub async fn racing_repairs_have_one_winner(fx: SharedSinkFixture) {
    let t = Table::new(&fx, "repair_race").await;
    let a = t.stage(&rows_at(9, 2)).await;
    ok(
        a.commit(&meta(Watermark::MIN, wm(9, 2), a.stats().run_id)).await,
        "commit",
    );
    let base = version(&t).await;
    let mut contenders = Vec::new();
    for racer in 0..RACERS {
        let rows = vec![(T0 + 1_000, racer as u64 + 1)];
        contenders.push((rows.clone(), t.stage(&rows).await));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = contenders
        .into_iter()
        .map(|(rows, staged)| {
            let barrier = barrier.clone();
            let m = repair(base.clone(), wm(9, 2), staged.stats().run_id, 1);
            tokio::spawn(async move {
                barrier.wait().await;
                (rows, staged.commit_repair(&m).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (rows, r) = task.await.expect("repair task");
        match r {
            Ok(()) => winners.push(rows),
            Err(Error::RepairConflict { .. }) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("a losing repair must be a conflict, got {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {RACERS} racing repairs must win"
    );
    let mut want = rows_at(9, 2);
    want.extend(winners.pop().unwrap());
    assert_eq!(t.rows().await, sorted(want), "only the winner's rows");
    assert_eq!(t.committed().await, Some(wm(9, 2)));
}
