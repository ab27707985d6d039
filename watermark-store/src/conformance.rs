//! The [`WatermarkStore`] conformance suite (feature `conformance`).
//!
//! One `async fn` per clause of the contract in `offload_core::WatermarkStore`,
//! each taking a fresh, empty store and panicking with a message that names
//! what broke. Run them all with [`run_all`], or generate one `#[tokio::test]`
//! per check with [`conformance_tests!`](crate::conformance_tests). The memory,
//! file and PostgreSQL stores all pass them; a third-party store can run the
//! same suite against itself.
//!
//! No check sleeps or reads the wall clock. Expiry is made deterministic with
//! a TTL of zero: such a lease expires at the moment it is issued by the
//! store's own clock, so any later call sees it expired, and a TTL of an hour
//! is never reached. Every time compared is one the store reported.
//!
//! The checks need a multi-threaded tokio runtime for the races to be real
//! (they still pass, less usefully, on a current-thread one).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use offload_core::{SystemClock, memory::MemoryStore};
//! offload_watermark_store::conformance::run_all(|| async { MemoryStore::new(SystemClock) }).await;
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use offload_core::{
    Error, Lease, MAX_ERROR_LEN, RunEvent, RunId, RunStatus, TableState, Watermark, WatermarkStore,
    truncate_error,
};
use tokio::sync::Barrier;

/// A store as the checks take it: shared, so races can run it from many tasks.
pub type SharedStore = Arc<dyn WatermarkStore>;

/// A lease that expires the moment it is issued (by the store's clock).
const EXPIRED: Duration = Duration::ZERO;

/// A lease no check outlives.
const LONG: Duration = Duration::from_secs(3600);

/// Rounds of each race; every round must have exactly one winner.
const RACE_ROUNDS: i64 = 50;

/// Concurrent contenders per race round.
const RACERS: usize = 8;

/// Table names that break naive SQL, paths or encodings; every store must
/// keep them apart and return them unchanged.
pub const HOSTILE_TABLE_NAMES: &[&str] = &[
    "a'b;\"c` DROP TABLE x; --",
    "Robert'); DROP TABLE watermarks;--",
    "$1",
    "%s%n",
    "../../../etc/passwd",
    "..",
    ".",
    "a/b\\c",
    "CON",
    "nul",
    "Orders",
    "orders",
    "ORDERS",
    "%41",
    "A",
    "t-a",
    "with space ",
    "tab\tnew\nline",
    "日本語のテーブル",
    "таблица",
    "emoji 🚀🔥",
    "\u{e9}",
    "e\u{301}",
];

type CheckFn = fn(SharedStore) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// The one list of checks, in the order `run_all` runs them. It feeds both
/// `CHECK_NAMES` / `run_all` here and `conformance_tests!` in the caller's
/// crate: `$callback` is invoked with `$args` followed by every check's name,
/// comma-separated. Exported only for `conformance_tests!`; not an API.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*! {
            $($args)*
            unknown_table_loads_as_new,
            acquire_issues_the_lease_load_reports,
            lease_is_exclusive,
            same_holder_may_reacquire,
            tokens_strictly_increase,
            expired_lease_is_taken_over_and_fenced,
            expired_holder_stays_current_until_superseded,
            release_frees_the_lease,
            renew_extends_the_lease,
            compare_and_set_compares,
            compare_and_set_round_trips_extreme_watermarks,
            compare_and_set_is_fenced,
            compare_and_set_race_has_one_winner,
            acquire_race_has_one_winner,
            record_run_applies_table_state,
            record_run_truncates_long_errors,
            record_run_is_fenced,
            recover_stale_runs_recovers_only_abandoned_runs,
            hostile_table_names_round_trip,
            tables_are_independent,
        }
    };
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// The name of every check, in the order [`run_all`] runs them.
        pub const CHECK_NAMES: &[&str] = &[$(stringify!($name)),*];

        fn all_checks() -> Vec<(&'static str, CheckFn)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as CheckFn)),*]
        }
    };
}

crate::__conformance_checks!([checks]);

/// Runs every check, each on a fresh store from `factory`, and panics naming
/// the first check that fails.
///
/// Each check runs in its own tokio task, so call this from a tokio runtime.
/// The store is dropped when its check ends, which is where a factory's store
/// can clean up after itself (drop a schema, remove a directory).
pub async fn run_all<F, Fut, S>(mut factory: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: WatermarkStore + 'static,
{
    for (name, check) in all_checks() {
        let store: SharedStore = Arc::new(factory().await);
        if let Err(e) = tokio::spawn(check(store)).await {
            let why = offload_core::conformance::failure_message(e);
            panic!("conformance check `{name}` failed: {why}");
        }
    }
}

/// Generates one `#[tokio::test]` per conformance check, each on a fresh
/// store from `$factory` (an expression callable with no arguments that
/// returns a future of the store, such as the path of an `async fn`).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features among its dev-dependencies.
///
/// ```no_run
/// // In a test file of the crate that implements the store; here the
/// // in-memory reference store stands in for yours.
/// use offload_core::{SystemClock, memory::MemoryStore};
/// async fn fresh_store() -> MemoryStore { MemoryStore::new(SystemClock) }
/// offload_watermark_store::conformance_tests!(fresh_store);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__conformance_checks!([$crate::conformance_tests] @tests $factory;);
    };
    (@tests $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store = ($factory)().await;
                $crate::conformance::$check(::std::sync::Arc::new(store)).await;
            }
        )*
    };
}

fn wm(ts: i64, seq: u64) -> Watermark {
    Watermark::new(ts, seq)
}

#[track_caller]
fn ok<T>(r: Result<T, Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

#[track_caller]
fn expect_lease_lost<T: std::fmt::Debug>(r: Result<T, Error>, lease: &Lease, what: &str) {
    match r {
        Err(Error::LeaseLost { table, token }) => {
            assert_eq!(
                (table.as_str(), token),
                (lease.table.as_str(), lease.token),
                "{what}: LeaseLost names the wrong lease"
            );
        }
        other => panic!("{what}: expected Error::LeaseLost for {lease:?}, got {other:?}"),
    }
}

#[track_caller]
fn expect_lease_held<T: std::fmt::Debug>(r: Result<T, Error>, holder: &Lease, what: &str) {
    match r {
        Err(Error::LeaseHeld {
            table,
            holder: h,
            expires_at,
        }) => {
            assert_eq!(table, holder.table, "{what}: LeaseHeld names the wrong table");
            assert_eq!(h, holder.holder, "{what}: LeaseHeld names the wrong holder");
            assert_eq!(
                expires_at, holder.expires_at,
                "{what}: LeaseHeld must report the holder's expiry as the store recorded it"
            );
        }
        other => panic!("{what}: expected Error::LeaseHeld by {holder:?}, got {other:?}"),
    }
}

#[track_caller]
fn expect_mismatch(
    r: Result<(), Error>,
    want_expected: Option<Watermark>,
    want_found: Option<Watermark>,
    what: &str,
) {
    match r {
        Err(Error::WatermarkMismatch { expected, found, .. }) => {
            assert_eq!(
                expected, want_expected,
                "{what}: mismatch reports the wrong expected"
            );
            assert_eq!(
                found, want_found,
                "{what}: mismatch reports the wrong stored watermark"
            );
        }
        other => panic!("{what}: expected Error::WatermarkMismatch, got {other:?}"),
    }
}

async fn load(store: &SharedStore, table: &str) -> TableState {
    ok(store.load(table).await, &format!("load({table:?})"))
}

/// Contract 4: `load` of an unknown table is `TableState::new`, not an error.
pub async fn unknown_table_loads_as_new(store: SharedStore) {
    for table in ["never-seen", HOSTILE_TABLE_NAMES[0]] {
        assert_eq!(
            load(&store, table).await,
            TableState::new(table),
            "load of an unknown table must equal TableState::new"
        );
    }
}

/// Contract 1: a lease names its table and holder, has a non-zero token, and
/// is what `load` reports afterwards; the table now exists.
pub async fn acquire_issues_the_lease_load_reports(store: SharedStore) {
    let lease = ok(store.acquire_lease("t", "holder-a", LONG).await, "acquire");
    assert_eq!((lease.table.as_str(), lease.holder.as_str()), ("t", "holder-a"));
    assert!(lease.token > 0, "tokens start above zero, got {}", lease.token);
    let s = load(&store, "t").await;
    assert_eq!(
        s.lease.as_ref(),
        Some(&lease),
        "load must report the lease just issued"
    );
    assert_eq!(s.status, RunStatus::Initialized);
    assert_eq!(s.watermark, None);
    let (Some(created), Some(updated)) = (s.created_at, s.updated_at) else {
        panic!("an acquired table must have created_at and updated_at: {s:?}");
    };
    assert!(
        created <= updated,
        "created_at {created:?} after updated_at {updated:?}"
    );
    assert!(
        lease.expires_at > updated,
        "a one-hour lease must expire after the update that issued it (store clock)"
    );
}

/// Contract 1: while a holder's lease is unexpired nobody else gets it, and a
/// refused attempt changes nothing.
pub async fn lease_is_exclusive(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", LONG).await, "a acquires");
    for other in ["b", "c"] {
        expect_lease_held(
            store.acquire_lease("t", other, LONG).await,
            &a,
            "another holder acquires an unexpired lease",
        );
    }
    assert_eq!(
        load(&store, "t").await.lease,
        Some(a.clone()),
        "a refused attempt must not touch the lease"
    );
    ok(
        store.compare_and_set(&a, None, wm(1, 0)).await,
        "the holder must still be current after refused attempts",
    );
}

/// Contract 1: the holder may re-acquire its own unexpired lease, with a new
/// token that fences the old one.
pub async fn same_holder_may_reacquire(store: SharedStore) {
    let first = ok(store.acquire_lease("t", "a", LONG).await, "first acquire");
    let second = ok(
        store.acquire_lease("t", "a", LONG).await,
        "the same holder re-acquires its unexpired lease",
    );
    assert!(
        second.token > first.token,
        "re-acquiring must issue a new, larger token"
    );
    expect_lease_lost(
        store.renew_lease(&first, LONG).await,
        &first,
        "renew under the replaced token",
    );
    ok(
        store.renew_lease(&second, LONG).await,
        "renew under the new token",
    );
}

/// Contract 1: every acquisition, by anyone, issues a token strictly greater
/// than all before it.
pub async fn tokens_strictly_increase(store: SharedStore) {
    enum Step {
        Acquire(&'static str, Duration),
        ReleaseLast,
    }
    use Step::{Acquire, ReleaseLast};
    let steps = [
        Acquire("a", EXPIRED),
        Acquire("b", EXPIRED),
        Acquire("a", EXPIRED),
        Acquire("a", LONG),
        Acquire("a", LONG),
        ReleaseLast,
        Acquire("c", EXPIRED),
        Acquire("d", LONG),
    ];
    let mut last: Option<Lease> = None;
    for step in steps {
        match step {
            ReleaseLast => {
                let lease = last.as_ref().expect("a lease to release");
                ok(store.release_lease(lease).await, "release");
            }
            Acquire(holder, ttl) => {
                let lease = ok(store.acquire_lease("t", holder, ttl).await, "acquire");
                let previous = last.as_ref().map_or(0, |l| l.token);
                assert!(
                    lease.token > previous,
                    "token {} issued after {previous}: tokens must strictly increase",
                    lease.token
                );
                last = Some(lease);
            }
        }
    }
}

/// Contracts 1 and 2: after expiry another holder takes over, and the old
/// holder is fenced everywhere; its release is a no-op.
pub async fn expired_lease_is_taken_over_and_fenced(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", EXPIRED).await, "a acquires");
    let b = ok(
        store.acquire_lease("t", "b", LONG).await,
        "another holder takes over an expired lease",
    );
    assert!(b.token > a.token);
    expect_lease_lost(
        store.compare_and_set(&a, None, wm(1, 0)).await,
        &a,
        "CAS under a superseded token",
    );
    expect_lease_lost(
        store.renew_lease(&a, LONG).await,
        &a,
        "renew under a superseded token",
    );
    expect_lease_lost(
        store
            .record_run(&a, RunEvent::Started { run_id: RunId::new() })
            .await,
        &a,
        "record_run under a superseded token",
    );
    ok(
        store.release_lease(&a).await,
        "releasing a superseded lease is a no-op, not an error",
    );

    let s = load(&store, "t").await;
    assert_eq!(s.lease, Some(b.clone()), "the fenced holder changed the lease");
    assert_eq!(
        (s.watermark, s.status),
        (None, RunStatus::Initialized),
        "the fenced holder changed state"
    );
    expect_lease_held(
        store.acquire_lease("t", "c", LONG).await,
        &b,
        "a stale release must not free the current lease",
    );
    ok(
        store.compare_and_set(&b, None, wm(1, 0)).await,
        "the new holder writes",
    );
}

/// Contract 2: expiry alone does not fence; a holder stays current (and can
/// renew) until someone takes a newer token.
pub async fn expired_holder_stays_current_until_superseded(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", EXPIRED).await, "acquire");
    ok(
        store.compare_and_set(&a, None, wm(1, 0)).await,
        "CAS under an expired but latest token",
    );
    ok(
        store
            .record_run(&a, RunEvent::Started { run_id: RunId::new() })
            .await,
        "record_run under an expired but latest token",
    );
    let renewed = ok(
        store.renew_lease(&a, LONG).await,
        "renew an expired but latest lease",
    );
    expect_lease_held(
        store.acquire_lease("t", "b", LONG).await,
        &renewed,
        "a renewed lease is exclusive again",
    );
}

/// Contract 2: releasing the current lease lets the next holder in at once,
/// with a larger token.
pub async fn release_frees_the_lease(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", LONG).await, "acquire");
    ok(store.release_lease(&a).await, "release");
    let s = load(&store, "t").await;
    let l = s.lease.expect("a released lease is still on record");
    assert_eq!(
        (l.holder.as_str(), l.token),
        ("a", a.token),
        "release must not change holder or token"
    );
    assert!(
        l.expires_at < a.expires_at,
        "release must bring the expiry forward"
    );
    let b = ok(
        store.acquire_lease("t", "b", LONG).await,
        "acquire right after the holder released",
    );
    assert!(b.token > a.token);
    expect_lease_lost(
        store.compare_and_set(&a, None, wm(1, 0)).await,
        &a,
        "CAS after release and takeover",
    );
}

/// Contract 2: renewing keeps the token and moves the expiry later (store
/// clock), making an expired lease exclusive again.
pub async fn renew_extends_the_lease(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", EXPIRED).await, "acquire");
    let r = ok(store.renew_lease(&a, LONG).await, "renew");
    assert_eq!(
        (&r.table, &r.holder, r.token),
        (&a.table, &a.holder, a.token),
        "renew must keep table, holder and token"
    );
    assert!(r.expires_at > a.expires_at, "renew must extend the expiry");
    assert_eq!(
        load(&store, "t").await.lease,
        Some(r.clone()),
        "load must report the renewed lease"
    );
    expect_lease_held(store.acquire_lease("t", "b", LONG).await, &r, "after renewal");
}

/// Contract 3: the new watermark is stored only if the stored one is `expected`.
pub async fn compare_and_set_compares(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", LONG).await, "acquire");
    ok(
        store.compare_and_set(&a, None, wm(10, 1)).await,
        "first CAS from None",
    );
    assert_eq!(load(&store, "t").await.watermark, Some(wm(10, 1)));
    expect_mismatch(
        store.compare_and_set(&a, None, wm(20, 0)).await,
        None,
        Some(wm(10, 1)),
        "CAS expecting None when a watermark is stored",
    );
    expect_mismatch(
        store.compare_and_set(&a, Some(wm(10, 2)), wm(20, 0)).await,
        Some(wm(10, 2)),
        Some(wm(10, 1)),
        "CAS expecting a different sequence",
    );
    assert_eq!(
        load(&store, "t").await.watermark,
        Some(wm(10, 1)),
        "a failed CAS must not change the watermark"
    );
    ok(
        store.compare_and_set(&a, Some(wm(10, 1)), wm(20, 0)).await,
        "CAS from the stored value",
    );
    assert_eq!(load(&store, "t").await.watermark, Some(wm(20, 0)));
}

/// Contract 3 and 6: watermarks at the edges of their range come back exactly.
pub async fn compare_and_set_round_trips_extreme_watermarks(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", LONG).await, "acquire");
    let mut stored = None;
    for w in [
        Watermark::MIN,
        wm(i64::MAX, u64::MAX),
        wm(-1, 0),
        wm(0, u64::MAX),
        wm(i64::MIN, u64::MAX),
        wm(1_767_225_600_123_456, (1 << 63) + 1),
    ] {
        ok(store.compare_and_set(&a, stored, w).await, &format!("CAS to {w}"));
        assert_eq!(
            load(&store, "t").await.watermark,
            Some(w),
            "watermark {w} must round-trip"
        );
        stored = Some(w);
    }
}

/// Contract 2: CAS under a superseded token is `LeaseLost`, checked before the
/// watermark, and changes nothing.
pub async fn compare_and_set_is_fenced(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", EXPIRED).await, "acquire");
    ok(
        store.compare_and_set(&a, None, wm(1, 0)).await,
        "CAS while current",
    );
    let _b = ok(store.acquire_lease("t", "b", LONG).await, "takeover");
    expect_lease_lost(
        store.compare_and_set(&a, Some(wm(1, 0)), wm(2, 0)).await,
        &a,
        "CAS with the right expected",
    );
    expect_lease_lost(
        store.compare_and_set(&a, Some(wm(9, 9)), wm(2, 0)).await,
        &a,
        "CAS with a wrong expected",
    );
    assert_eq!(
        load(&store, "t").await.watermark,
        Some(wm(1, 0)),
        "a fenced CAS changed the watermark"
    );
}

/// Contract 3: of many callers racing CAS from the same expected value,
/// exactly one wins, every round; the losers see the winner's value.
pub async fn compare_and_set_race_has_one_winner(store: SharedStore) {
    let lease = ok(store.acquire_lease("t", "a", LONG).await, "acquire");
    let mut current = None;
    for round in 0..RACE_ROUNDS {
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS as u64)
            .map(|racer| {
                let (store, lease, barrier) = (Arc::clone(&store), lease.clone(), Arc::clone(&barrier));
                let new = wm(round, racer);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (new, store.compare_and_set(&lease, current, new).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for t in tasks {
            match t.await.expect("racer task") {
                (new, Ok(())) => winners.push(new),
                (_, Err(Error::WatermarkMismatch { found, .. })) => losers.push(found),
                (_, Err(e)) => panic!("round {round}: a racer failed with {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one CAS must win, got {winners:?}"
        );
        let winner = winners[0];
        assert!(
            losers.iter().all(|f| *f == Some(winner)),
            "round {round}: losers must see the winner's {winner}, saw {losers:?}"
        );
        assert_eq!(load(&store, "t").await.watermark, Some(winner), "round {round}");
        current = Some(winner);
    }
}

/// Contract 1: of many holders racing for a free table, exactly one gets it,
/// every round.
pub async fn acquire_race_has_one_winner(store: SharedStore) {
    for round in 0..RACE_ROUNDS {
        let table = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|racer| {
                let (store, table, barrier) = (Arc::clone(&store), table.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .acquire_lease(&table, &format!("holder-{racer}"), LONG)
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut refused_by = Vec::new();
        for t in tasks {
            match t.await.expect("racer task") {
                Ok(lease) => winners.push(lease),
                Err(Error::LeaseHeld { holder, .. }) => refused_by.push(holder),
                Err(e) => panic!("round {round}: a racer failed with {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one holder must win, got {winners:?}"
        );
        let winner = &winners[0];
        assert!(
            refused_by.iter().all(|h| *h == winner.holder),
            "round {round}: losers must be refused by the winner {}, were refused by {refused_by:?}",
            winner.holder
        );
        assert_eq!(
            load(&store, &table).await.lease.as_ref(),
            Some(winner),
            "round {round}"
        );
    }
}

/// `record_run` changes exactly what `TableState::apply` changes, at one
/// store-clock instant per call.
pub async fn record_run_applies_table_state(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", LONG).await, "acquire");
    ok(store.compare_and_set(&a, None, wm(5, 5)).await, "CAS");
    let (r1, r2, r3) = (RunId::new(), RunId::new(), RunId::new());
    let events = [
        RunEvent::Started { run_id: r1 },
        RunEvent::Failed {
            run_id: r1,
            error: "first failure".into(),
            duration: Duration::from_millis(1500),
        },
        RunEvent::Started { run_id: r2 },
        RunEvent::Failed {
            run_id: r2,
            error: "second failure".into(),
            duration: Duration::from_millis(250),
        },
        RunEvent::Started { run_id: r3 },
        RunEvent::Succeeded {
            run_id: r3,
            rows: u64::MAX - 1,
            duration: Duration::from_secs(2),
        },
        RunEvent::Started { run_id: r1 },
    ];
    for event in events {
        let before = load(&store, "t").await;
        ok(
            store.record_run(&a, event.clone()).await,
            &format!("record {event:?}"),
        );
        let after = load(&store, "t").await;
        let now = after.updated_at.expect("updated_at after record_run");
        let mut expected = before.clone();
        expected.apply(&event, now);
        assert_eq!(
            after, expected,
            "record_run({event:?}) must have TableState::apply's effect"
        );
        if let RunEvent::Failed { .. } = event {
            assert!(
                after.consecutive_failures > before.consecutive_failures,
                "failures must count up"
            );
        }
    }
    let s = load(&store, "t").await;
    assert_eq!(
        (s.status, s.consecutive_failures, s.last_row_count, s.last_run_id),
        (RunStatus::Running, 0, u64::MAX - 1, Some(r1))
    );
    assert_eq!(
        s.watermark,
        Some(wm(5, 5)),
        "record_run must not touch the watermark"
    );
    assert!(s.last_success_at.is_some() && s.last_run_duration == Some(Duration::from_secs(2)));
}

/// Errors longer than [`MAX_ERROR_LEN`] are cut at a char boundary, never lost
/// and never split.
pub async fn record_run_truncates_long_errors(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", LONG).await, "acquire");
    // 1 + 2 × 700 bytes: byte 1000 falls inside an 'é', so a correct cut is 999 bytes.
    let long = format!("x{}", "é".repeat(700));
    ok(
        store
            .record_run(
                &a,
                RunEvent::Failed {
                    run_id: RunId::new(),
                    error: long.clone(),
                    duration: Duration::ZERO,
                },
            )
            .await,
        "record a failure with a long error",
    );
    let stored = load(&store, "t")
        .await
        .last_error
        .expect("last_error after a failure");
    assert_eq!(
        stored.len(),
        999,
        "cut at the last char boundary at or below {MAX_ERROR_LEN} bytes"
    );
    assert_eq!(stored, truncate_error(&long));
    assert!(long.starts_with(&stored));
}

/// Contract 2: `record_run` under a superseded token is `LeaseLost` and
/// changes nothing.
pub async fn record_run_is_fenced(store: SharedStore) {
    let a = ok(store.acquire_lease("t", "a", EXPIRED).await, "acquire");
    ok(
        store
            .record_run(&a, RunEvent::Started { run_id: RunId::new() })
            .await,
        "start",
    );
    let _b = ok(store.acquire_lease("t", "b", LONG).await, "takeover");
    let before = load(&store, "t").await;
    let failed = RunEvent::Failed {
        run_id: RunId::new(),
        error: "late".into(),
        duration: Duration::ZERO,
    };
    expect_lease_lost(
        store.record_run(&a, failed).await,
        &a,
        "record_run after takeover",
    );
    assert_eq!(
        load(&store, "t").await,
        before,
        "a fenced record_run changed state"
    );
}

/// Contract 5: only tables that are `running`, with an expired lease, and not
/// updated for `older_than` are marked failed, counting one failure each,
/// once.
pub async fn recover_stale_runs_recovers_only_abandoned_runs(store: SharedStore) {
    let hostile = HOSTILE_TABLE_NAMES[0];
    let mut abandoned = Vec::new();
    for table in ["abandoned", hostile] {
        let l = ok(store.acquire_lease(table, "a", EXPIRED).await, "acquire");
        let run_id = RunId::new();
        ok(store.record_run(&l, RunEvent::Started { run_id }).await, "start");
        abandoned.push((table, run_id, l));
    }
    let live = ok(store.acquire_lease("live", "b", LONG).await, "acquire");
    ok(
        store
            .record_run(&live, RunEvent::Started { run_id: RunId::new() })
            .await,
        "start",
    );
    let done = ok(store.acquire_lease("done", "c", EXPIRED).await, "acquire");
    let run_id = RunId::new();
    ok(
        store.record_run(&done, RunEvent::Started { run_id }).await,
        "start",
    );
    ok(
        store
            .record_run(
                &done,
                RunEvent::Succeeded {
                    run_id,
                    rows: 1,
                    duration: Duration::ZERO,
                },
            )
            .await,
        "succeed",
    );
    let _idle = ok(store.acquire_lease("idle", "d", EXPIRED).await, "acquire");

    let recovered = ok(
        store.recover_stale_runs(LONG).await,
        "recover runs older than an hour",
    );
    assert_eq!(
        recovered,
        Vec::<String>::new(),
        "nothing has been running for an hour"
    );

    let mut recovered = ok(store.recover_stale_runs(Duration::ZERO).await, "recover");
    recovered.sort();
    let mut want: Vec<String> = abandoned.iter().map(|(t, ..)| (*t).to_owned()).collect();
    want.sort();
    assert_eq!(recovered, want, "exactly the running tables with expired leases");

    for (table, run_id, lease) in &abandoned {
        let s = load(&store, table).await;
        assert_eq!(s.status, RunStatus::Failed, "{table}");
        assert_eq!(s.consecutive_failures, 1, "{table}: recovery counts one failure");
        assert_eq!(s.last_run_id, Some(*run_id), "{table}: recovery keeps the run id");
        assert!(
            s.last_error.as_deref().is_some_and(|e| !e.is_empty()),
            "{table}: says why"
        );
        assert_eq!(
            s.lease.as_ref().map(|l| l.token),
            Some(lease.token),
            "{table}: recovery issues no token"
        );
    }
    assert_eq!(
        load(&store, "live").await.status,
        RunStatus::Running,
        "live lease"
    );
    assert_eq!(
        load(&store, "done").await.status,
        RunStatus::Success,
        "finished run"
    );
    assert_eq!(
        load(&store, "idle").await.status,
        RunStatus::Initialized,
        "never ran"
    );

    let again = ok(store.recover_stale_runs(Duration::ZERO).await, "recover again");
    assert_eq!(
        again,
        Vec::<String>::new(),
        "a recovered run is not recovered twice"
    );
    assert_eq!(load(&store, "abandoned").await.consecutive_failures, 1);
}

/// Names with quotes, semicolons, path syntax, case variants and non-ASCII are
/// just names: each keeps its own state and comes back unchanged.
pub async fn hostile_table_names_round_trip(store: SharedStore) {
    for (i, table) in (0..).zip(HOSTILE_TABLE_NAMES) {
        let l = ok(
            store.acquire_lease(table, "a", LONG).await,
            &format!("acquire {table:?}"),
        );
        assert_eq!(l.table, *table);
        ok(
            store.compare_and_set(&l, None, wm(i, i as u64)).await,
            &format!("CAS {table:?}"),
        );
    }
    for (i, table) in (0..).zip(HOSTILE_TABLE_NAMES) {
        let s = load(&store, table).await;
        assert_eq!(s.table, *table, "the name must come back unchanged");
        assert_eq!(
            s.watermark,
            Some(wm(i, i as u64)),
            "{table:?} must keep its own watermark"
        );
        assert_eq!(s.lease.map(|l| l.table), Some((*table).to_owned()));
    }
    assert_eq!(
        load(&store, "a'b").await,
        TableState::new("a'b"),
        "prefix of a stored name"
    );
}

/// Leases and watermarks are per table.
pub async fn tables_are_independent(store: SharedStore) {
    let a1 = ok(store.acquire_lease("t1", "a", LONG).await, "a takes t1");
    let b2 = ok(
        store.acquire_lease("t2", "b", LONG).await,
        "b takes t2 while a holds t1",
    );
    ok(store.compare_and_set(&a1, None, wm(1, 0)).await, "CAS t1");
    ok(store.compare_and_set(&b2, None, wm(2, 0)).await, "CAS t2");
    assert_eq!(load(&store, "t1").await.watermark, Some(wm(1, 0)));
    assert_eq!(load(&store, "t2").await.watermark, Some(wm(2, 0)));
    ok(store.release_lease(&a1).await, "release t1");
    expect_lease_held(
        store.acquire_lease("t2", "c", LONG).await,
        &b2,
        "releasing t1 must not free t2",
    );
}
