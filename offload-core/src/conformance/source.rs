//! The [`Source`] conformance suite: one check per clause of the
//! [`SourceTable`] contract.
//!
//! An implementation provides a [`SourceFixture`]: the source under test, a
//! way to create an empty table for one check, to insert rows at positions the
//! check chooses, and the source's own clock. Only the watermark columns are
//! the suite's business; the fixture fills any other columns as it likes.
//!
//! The checks place rows relative to the source's clock with margins of many
//! minutes, so a real server (ClickHouse) whose clock moves during the run, or
//! differs from the test machine's, passes as long as [`SourceFixture::now`]
//! reads the server's clock. Positions are whole milliseconds apart, so a
//! `DateTime64(3)` column works too.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use offload_core::conformance::source::{MemorySourceFixture, run};
//! let results = run(|| async { MemorySourceFixture::new() }).await;
//! assert!(results.iter().all(|r| r.passed()), "{results:?}");
//! # });
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;

use super::{CheckFn, CheckResult, assert_passed, ok, positions, run_checks};
use crate::memory::MemorySource;
use crate::{
    BucketGrid, Error, ManualClock, Source, SourceTable, TableConfig, Watermark, Window,
    system_time_to_micros,
};

/// What a check asks of a fresh table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableSpec {
    /// A name unique to the check; the fixture may decorate it (a prefix, a
    /// random suffix) to keep concurrent runs apart.
    pub name: String,
    /// The lag the returned [`TableConfig`] must carry.
    pub lag: Duration,
    /// The batch size the returned [`TableConfig`] must carry.
    pub batch_size: usize,
}

/// How the suite drives a source implementation.
///
/// A ClickHouse fixture, for example, creates a `MergeTree` table with a
/// `DateTime64(6)` timestamp and a `UInt64` sequence column in
/// [`create_table`](Self::create_table), `INSERT`s in [`insert`](Self::insert)
/// (synchronously, so the rows are visible when it returns), and reads
/// `now64(6)` in [`now`](Self::now).
#[async_trait]
pub trait SourceFixture: Send + Sync + 'static {
    /// The source under test.
    fn source(&self) -> Arc<dyn Source>;

    /// Creates an empty table and returns its configuration, with the spec's
    /// lag and batch size.
    async fn create_table(&self, spec: &TableSpec) -> Result<TableConfig, Error>;

    /// Inserts one row at each `(timestamp_micros, sequence)` position; the
    /// rows are readable when this returns. The suite never inserts a position twice.
    async fn insert(&self, table: &TableConfig, rows: &[(i64, u64)]) -> Result<(), Error>;

    /// "Now" on the source's clock: the one its lag hold-back measures from.
    async fn now(&self) -> Result<SystemTime, Error>;
}

/// A fixture as the checks take it.
pub type SharedSourceFixture = Arc<dyn SourceFixture>;

/// The in-memory reference source on a manual clock, as a fixture.
///
/// ```
/// use offload_core::conformance::source::MemorySourceFixture;
/// let fx = MemorySourceFixture::new();
/// assert!(fx.memory().rows("anything").is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct MemorySourceFixture {
    clock: ManualClock,
    source: Arc<MemorySource>,
}

impl MemorySourceFixture {
    /// A fresh, empty source whose clock stands at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_767_225_600));
        Self {
            source: Arc::new(MemorySource::new(clock.clone())),
            clock,
        }
    }

    /// The source itself, for wrapping (a fixture for a broken variant).
    pub fn memory(&self) -> &Arc<MemorySource> {
        &self.source
    }

    /// Its clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

impl Default for MemorySourceFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SourceFixture for MemorySourceFixture {
    fn source(&self) -> Arc<dyn Source> {
        self.source.clone()
    }

    async fn create_table(&self, spec: &TableSpec) -> Result<TableConfig, Error> {
        TableConfig::builder(spec.name.clone())
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(spec.lag)
            .batch_size(spec.batch_size)
            .build()
    }

    async fn insert(&self, table: &TableConfig, rows: &[(i64, u64)]) -> Result<(), Error> {
        let rows: Vec<_> = rows.iter().map(|&(ts, seq)| (ts, seq, seq as i64)).collect();
        self.source.insert(table.source_table(), &rows);
        Ok(())
    }

    async fn now(&self) -> Result<SystemTime, Error> {
        Ok(crate::Clock::now(&self.clock))
    }
}

/// The list of checks, in the order [`run`] runs them; feeds [`CHECK_NAMES`]
/// and [`source_conformance_tests!`](crate::source_conformance_tests). Not an API of its own.
#[doc(hidden)]
#[macro_export]
macro_rules! __source_conformance_checks {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*! {
            $($args)*
            open_keeps_the_config,
            exact_windows_cut_inside_equal_timestamps,
            positions_compare_as_pairs,
            high_watermark_respects_the_lag,
            low_watermark_is_the_oldest_row_above,
            empty_windows_yield_nothing,
            reads_stream_in_batches,
            schema_is_stable,
            bucket_counts_agree_with_reads,
        }
    };
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// The name of every check, in the order [`run`] runs them.
        pub const CHECK_NAMES: &[&str] = &[$(stringify!($name)),*];

        fn all_checks() -> Vec<(&'static str, CheckFn<SharedSourceFixture>)> {
            vec![$((stringify!($name), (|f| Box::pin($name(f))) as CheckFn<SharedSourceFixture>)),*]
        }
    };
}

crate::__source_conformance_checks!([checks]);

/// Runs every check, each on a fresh fixture from `factory` and in its own
/// tokio task, and returns one result per check (call it from a tokio runtime).
pub async fn run<F, Fut, X>(mut factory: F) -> Vec<CheckResult>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = X>,
    X: SourceFixture,
{
    run_checks(all_checks(), || {
        let fut = factory();
        async move { Arc::new(fut.await) as SharedSourceFixture }
    })
    .await
}

/// Like [`run`], panicking with the name of the first check that failed.
pub async fn run_all<F, Fut, X>(factory: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = X>,
    X: SourceFixture,
{
    assert_passed(&run(factory).await);
}

/// Generates one `#[tokio::test]` per source check, in a module
/// `source_conformance`, each on a fresh fixture from `$factory` (an
/// expression callable with no arguments that returns a future of the
/// fixture, such as the path of an `async fn`, resolved in the calling module).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies.
///
/// ```no_run
/// use offload_core::conformance::source::MemorySourceFixture;
/// async fn fresh() -> MemorySourceFixture { MemorySourceFixture::new() }
/// offload_core::source_conformance_tests!(fresh);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! source_conformance_tests {
    ($factory:expr) => {
        mod source_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__source_conformance_checks!([$crate::source_conformance_tests] @tests $factory;);
        }
    };
    (@tests $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let fixture = ($factory)().await;
                $crate::conformance::source::$check(::std::sync::Arc::new(fixture)).await;
            }
        )*
    };
}

const LAG: Duration = Duration::from_secs(3600);
const MS: i64 = 1_000;
const MINUTE: i64 = 60_000_000;

fn wm(ts: i64, seq: u64) -> Watermark {
    Watermark::new(ts, seq)
}

/// A fresh table, opened, and the source's "now" in microseconds.
async fn setup(fx: &SharedSourceFixture, name: &str, batch_size: usize) -> (TableConfig, i64) {
    let spec = TableSpec {
        name: format!("conformance_{name}"),
        lag: LAG,
        batch_size,
    };
    let table = ok(fx.create_table(&spec).await, "create_table");
    assert_eq!(table.lag(), LAG, "create_table must keep the spec's lag");
    assert_eq!(
        table.batch_size(),
        batch_size,
        "create_table must keep the spec's batch size"
    );
    let now = system_time_to_micros(ok(fx.now().await, "now"));
    (table, now)
}

/// Well below the lag horizon, on a whole second.
fn old_base(now: i64) -> i64 {
    (now - 3 * 60 * MINUTE).div_euclid(1_000_000) * 1_000_000
}

async fn open(fx: &SharedSourceFixture, table: &TableConfig) -> Arc<dyn SourceTable> {
    ok(fx.source().open(table).await, "open")
}

struct Read {
    rows: Vec<(i64, u64)>,
    batches: usize,
    largest: usize,
}

async fn read(handle: &Arc<dyn SourceTable>, window: Window) -> Read {
    let table = handle.config().clone();
    let schema = handle.schema();
    let mut stream = ok(handle.read(window).await, &format!("read {window}"));
    let mut out = Read {
        rows: Vec::new(),
        batches: 0,
        largest: 0,
    };
    while let Some(batch) = stream.next().await {
        let batch = ok(batch, &format!("a batch of {window}"));
        assert_eq!(
            batch.schema().fields(),
            schema.fields(),
            "every batch of {window} must have the schema schema() reported"
        );
        if batch.num_rows() == 0 {
            continue;
        }
        out.batches += 1;
        out.largest = out.largest.max(batch.num_rows());
        let pos = positions(&table, &batch).unwrap_or_else(|e| panic!("batch of {window}: {e}"));
        out.rows.extend(pos);
    }
    out.rows.sort_unstable();
    out
}

fn expected(all: &[(i64, u64)], window: Window) -> Vec<(i64, u64)> {
    let mut v: Vec<_> = all
        .iter()
        .copied()
        .filter(|&(ts, seq)| window.contains(wm(ts, seq)))
        .collect();
    v.sort_unstable();
    v
}

#[track_caller]
fn assert_rows(got: &[(i64, u64)], want: &[(i64, u64)], what: &str) {
    if got == want {
        return;
    }
    let g: BTreeSet<_> = got.iter().collect();
    let w: BTreeSet<_> = want.iter().collect();
    let missing: Vec<_> = w.difference(&g).collect();
    let extra: Vec<_> = g.difference(&w).collect();
    panic!(
        "{what}: expected {} rows, got {}; missing {missing:?}, extra {extra:?}{}",
        want.len(),
        got.len(),
        if g.len() < got.len() {
            ", and duplicates"
        } else {
            ""
        }
    );
}

/// Contract (open): the handle carries the configuration it was opened with,
/// and the schema holds both watermark columns.
pub async fn open_keeps_the_config(fx: SharedSourceFixture) {
    let (table, _) = setup(&fx, "open_keeps_the_config", 1000).await;
    let handle = open(&fx, &table).await;
    assert_eq!(handle.config().name(), table.name(), "config().name()");
    assert_eq!(handle.config().source_table(), table.source_table());
    let schema = handle.schema();
    for col in [table.timestamp_column(), table.sequence_column()] {
        assert!(
            schema.field_with_name(col).is_ok(),
            "schema() must hold the watermark column {col:?}: {schema:?}"
        );
    }
}

/// Contract 3: a window holds exactly the rows with `after < position <= until`,
/// each once, also when its bounds cut through rows sharing a timestamp; windows
/// that tile the table read every row exactly once.
pub async fn exact_windows_cut_inside_equal_timestamps(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "exact_windows", 1000).await;
    let base = old_base(now);
    let ts: Vec<i64> = (0..4).map(|k| base + k * MS).collect();
    let all: Vec<(i64, u64)> = ts.iter().flat_map(|&t| (1..=5).map(move |s| (t, s))).collect();
    ok(fx.insert(&table, &all).await, "insert");
    let handle = open(&fx, &table).await;

    let cuts = [
        Watermark::MIN,
        wm(ts[0], 2),
        wm(ts[0], 3),
        wm(ts[1], 5),
        wm(ts[2], 0),
        wm(ts[2] + MS / 2, 0),
        wm(ts[3], 4),
        wm(ts[3], u64::MAX),
    ];
    let mut union = Vec::new();
    for pair in cuts.windows(2) {
        let window = Window::new(pair[0], pair[1]).expect("ascending cuts");
        let got = read(&handle, window).await.rows;
        assert_rows(&got, &expected(&all, window), &format!("window {window}"));
        union.extend(got);
    }
    union.sort_unstable();
    assert_rows(&union, &all, "windows tiling the table");

    let window = Window::new(wm(ts[1], 2), wm(ts[1], 4)).unwrap();
    let first = read(&handle, window).await.rows;
    let again = read(&handle, window).await.rows;
    assert_eq!(first, again, "reading a window twice gives the same rows");
}

/// Contract 1: positions are compared as `(timestamp, sequence)` pairs, the
/// sequence numerically: a window inside one timestamp is not empty, and
/// sequence 1000 sorts after 11 and 2.
pub async fn positions_compare_as_pairs(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "pairs", 1000).await;
    let t = old_base(now);
    let big = (1u64 << 40) + 7;
    let all = vec![
        (t, 1),
        (t, 2),
        (t, 10),
        (t, 11),
        (t, 1000),
        (t, big),
        (t + MS, 0),
        (t + MS, 3),
    ];
    ok(fx.insert(&table, &all).await, "insert");
    let handle = open(&fx, &table).await;
    let cases = [
        (wm(t, 2), wm(t, 11)),
        (wm(t, 11), wm(t + MS, 0)),
        (wm(t, 1000), wm(t, big)),
        (wm(t, big), wm(t + MS, 3)),
        (wm(t - MS, u64::MAX), wm(t, 1)),
        (wm(t, 0), wm(t + MS, u64::MAX)),
    ];
    for (after, until) in cases {
        let window = Window::new(after, until).unwrap();
        let got = read(&handle, window).await.rows;
        assert_rows(&got, &expected(&all, window), &format!("window {window}"));
    }
}

/// Contract 2: the high watermark is the largest position whose timestamp is
/// at least `lag` old on the source's clock, or `None` while there is none.
pub async fn high_watermark_respects_the_lag(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "high_watermark", 1000).await;
    let handle = open(&fx, &table).await;
    assert_eq!(
        ok(handle.high_watermark().await, "high_watermark of an empty table"),
        None,
        "an empty table has no complete position"
    );
    let lag = LAG.as_micros() as i64;
    let young = vec![(now - lag / 2, 1), (now - lag / 2, 2), (now - 10 * MINUTE, 1)];
    ok(fx.insert(&table, &young).await, "insert young rows");
    assert_eq!(
        ok(handle.high_watermark().await, "high_watermark"),
        None,
        "rows younger than the lag are not complete"
    );
    let old_ts = now - lag - 60 * MINUTE;
    let old = vec![(old_ts, 1), (old_ts, 3), (old_ts, 7), (old_ts - MS, 9)];
    ok(fx.insert(&table, &old).await, "insert old rows");
    assert_eq!(
        ok(handle.high_watermark().await, "high_watermark"),
        Some(wm(old_ts, 7)),
        "the largest old position, by pair"
    );
    let newer = (now - lag - 10 * MINUTE, 2);
    ok(fx.insert(&table, &[newer]).await, "insert a newer old row");
    let hw = ok(handle.high_watermark().await, "high_watermark").expect("some");
    assert_eq!(
        hw,
        wm(newer.0, newer.1),
        "the high watermark follows new complete rows"
    );
    let mut want = old.clone();
    want.push(newer);
    want.sort_unstable();
    let got = read(&handle, Window::new(Watermark::MIN, hw).unwrap()).await.rows;
    assert_rows(&got, &want, "reading up to the high watermark gives no young row");
}

/// Contract 6: the low watermark above a position is the oldest row above
/// it (pairs compared as pairs, rows younger than the lag included), `None`
/// above every row and on an empty table. A source that cannot tell answers
/// `None` everywhere (the trait's default), which passes: it only costs the
/// engine its window sizing.
pub async fn low_watermark_is_the_oldest_row_above(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "low_watermark", 1000).await;
    let handle = open(&fx, &table).await;
    assert_eq!(
        ok(
            handle.low_watermark(Watermark::MIN).await,
            "low_watermark of an empty table"
        ),
        None,
        "an empty table has no oldest row"
    );
    let t = old_base(now);
    // On a whole millisecond, so a millisecond column holds it exactly.
    let young = (now - (LAG.as_micros() as i64) / 2).div_euclid(MS) * MS;
    let all = vec![
        (t, 2),
        (t, 11),
        (t, 1000),
        (t + MS, 0),
        (t + 60 * MINUTE, 5),
        (young, 1),
    ];
    ok(fx.insert(&table, &all).await, "insert");
    let handle = open(&fx, &table).await;
    let afters = [
        Watermark::MIN,
        wm(t - MS, u64::MAX),
        wm(t, 1),
        wm(t, 2),
        wm(t, 100),
        wm(t, u64::MAX),
        wm(t + MS, 0),
        wm(t + 30 * MINUTE, 0),
        wm(t + 60 * MINUTE, 5),
        wm(young, 1),
    ];
    let mut answered = 0;
    for after in afters {
        let got = ok(
            handle.low_watermark(after).await,
            &format!("low_watermark({after})"),
        );
        let want = all
            .iter()
            .map(|&(ts, seq)| wm(ts, seq))
            .filter(|&p| p > after)
            .min();
        match got {
            None => {}
            Some(_) => {
                answered += 1;
                assert_eq!(got, want, "low_watermark({after}): the oldest position above it");
            }
        }
    }
    // All or nothing: a source that answers must answer wherever a row is above.
    let rows_above = afters
        .iter()
        .filter(|&&a| all.iter().any(|&(ts, seq)| wm(ts, seq) > a))
        .count();
    assert!(
        answered == 0 || answered == rows_above,
        "low_watermark answered {answered} of {rows_above} positions that have rows above them: \
         a source answers everywhere or nowhere"
    );
}

/// A window that holds no row reads as no rows (not an error), on an empty
/// table too; a window cannot be empty (`after < until` is enforced by
/// [`Window::new`], so a source never sees one).
pub async fn empty_windows_yield_nothing(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "empty_windows", 1000).await;
    let handle = open(&fx, &table).await;
    let t = old_base(now);
    let everything = Window::new(Watermark::MIN, wm(now + 24 * 60 * MINUTE, u64::MAX)).unwrap();
    assert!(
        read(&handle, everything).await.rows.is_empty(),
        "an empty table reads as nothing"
    );
    ok(fx.insert(&table, &[(t, 1), (t + 10 * MS, 1)]).await, "insert");
    let gap = Window::new(wm(t, 1), wm(t + 5 * MS, 0)).unwrap();
    assert!(read(&handle, gap).await.rows.is_empty(), "a window between rows");
    let above = Window::new(wm(t + 10 * MS, 1), wm(t + 20 * MS, 0)).unwrap();
    assert!(
        read(&handle, above).await.rows.is_empty(),
        "a window above every row"
    );
    assert!(
        matches!(Window::new(wm(t, 1), wm(t, 1)), Err(Error::EmptyWindow { .. })),
        "Window::new refuses an empty window"
    );
}

/// Contract 4: a window is streamed in batches of at most `batch_size` rows,
/// not buffered into one.
pub async fn reads_stream_in_batches(fx: SharedSourceFixture) {
    const BATCH: usize = 7;
    let (table, now) = setup(&fx, "batches", BATCH).await;
    let t = old_base(now);
    let all: Vec<(i64, u64)> = (0..100).map(|i| (t + (i / 3) * MS, (i % 3) as u64)).collect();
    ok(fx.insert(&table, &all).await, "insert");
    let handle = open(&fx, &table).await;
    let r = read(&handle, Window::new(Watermark::MIN, wm(t + 100 * MS, 0)).unwrap()).await;
    assert_rows(&r.rows, &all, "the whole table");
    assert!(
        r.largest <= BATCH,
        "a batch of {} rows exceeds batch_size {BATCH}",
        r.largest
    );
    assert!(
        r.batches >= all.len().div_ceil(BATCH),
        "{} rows came in {} batches of at most {BATCH}",
        all.len(),
        r.batches
    );
}

/// The schema is the same from every handle, before and after rows arrive,
/// and every batch carries it.
pub async fn schema_is_stable(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "schema", 1000).await;
    let before = open(&fx, &table).await.schema();
    ok(fx.insert(&table, &[(old_base(now), 1)]).await, "insert");
    let handle = open(&fx, &table).await;
    assert_eq!(
        before.fields(),
        handle.schema().fields(),
        "the schema must not change when rows arrive"
    );
    // `read` checks every batch against `schema()`.
    let r = read(
        &handle,
        Window::new(Watermark::MIN, wm(now + 24 * 60 * MINUTE, 0)).unwrap(),
    )
    .await;
    assert_eq!(r.rows.len(), 1);
}

/// Contract 5: `bucket_counts` counts exactly the rows `read` yields per
/// bucket: at bucket edges, at the grid's watermark inside one timestamp
/// (smaller and larger sequences), before the epoch, on split grids.
pub async fn bucket_counts_agree_with_reads(fx: SharedSourceFixture) {
    let (table, now) = setup(&fx, "bucket_counts", 7).await;
    let base = old_base(now);
    let mut all: Vec<(i64, u64)> = Vec::new();
    // Rows every 250 ms over 10 s, several per timestamp, some on whole seconds.
    for k in 0..40i64 {
        for s in 1..=(k as u64 % 3 + 1) {
            all.push((base + k * 250 * MS, s));
        }
    }
    // Edge rows: the last millisecond of a second, and the first of the next
    // (whole milliseconds, so sources of millisecond precision hold them).
    all.push((base + 2_999 * MS, 9));
    all.push((base + 3_000 * MS, 9));
    // Before the epoch.
    all.extend([(-1_500_000, 1), (-MS, 2), (0, 3)]);
    ok(fx.insert(&table, &all).await, "insert");
    let handle = open(&fx, &table).await;
    let until_cases = [
        wm(base + 9_750 * MS, u64::MAX),
        wm(base + 5_000 * MS, 1),
        wm(base + 2_999 * MS, 8),
    ];
    for until in until_cases {
        for width in [
            Duration::from_secs(1),
            Duration::from_millis(300),
            Duration::from_secs(60),
        ] {
            let grid = ok(BucketGrid::covering(base - 2_000 * MS, until, width), "grid");
            check_counts(&handle, &grid, &all).await;
            if let Some(sub) = grid.split(grid.len() - 1, 4) {
                check_counts(&handle, &sub, &all).await;
            }
        }
    }
    let grid = ok(
        BucketGrid::covering(-2_000_000, wm(0, 3), Duration::from_millis(700)),
        "grid",
    );
    check_counts(&handle, &grid, &all).await;
}

async fn check_counts(handle: &Arc<dyn SourceTable>, grid: &BucketGrid, all: &[(i64, u64)]) {
    let got = ok(handle.bucket_counts(grid).await, "bucket_counts");
    let want = grid.histogram(all.iter().map(|&(t, s)| wm(t, s)));
    assert_eq!(got, want, "bucket_counts over {grid:?}");
    // And each figure is what reading the bucket yields (on small grids: a
    // read per bucket).
    for i in (0..grid.len()).filter(|_| grid.len() <= 12) {
        let n = read(handle, grid.bucket(i)).await.rows.len() as u64;
        assert_eq!(
            got[i], n,
            "bucket {i} of {grid:?}: counted {} but read {n}",
            got[i]
        );
    }
}
