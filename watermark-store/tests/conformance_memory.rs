//! The suite against offload-core's reference store, plus proof that the suite
//! catches broken stores.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use offload_core::memory::MemoryStore;
use offload_core::{Error, Lease, RunEvent, SystemClock, TableState, Watermark, WatermarkStore};
use offload_watermark_store::conformance;

async fn fresh() -> MemoryStore {
    MemoryStore::new(SystemClock)
}

offload_watermark_store::conformance_tests!(fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes_on_the_reference_store() {
    conformance::run_all(fresh).await;
}

/// How a mutant departs from the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    /// `load` of an unknown table is an error.
    UnknownIsError,
    /// CAS stores `new` whatever is stored.
    CasIgnoresExpected,
    /// CAS checks, then writes in a separate step (check-then-act race).
    CasNotAtomic,
    /// `record_run` under a superseded token is silently accepted.
    RecordRunUnfenced,
    /// A second holder is let in while the lease is live (by stealing it).
    LeaseNotExclusive,
    /// `recover_stale_runs` never recovers anything.
    RecoverNothing,
}

/// The reference store with one bug.
#[derive(Debug)]
struct Mutant {
    inner: MemoryStore,
    bug: Bug,
}

#[async_trait]
impl WatermarkStore for Mutant {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        let s = self.inner.load(table).await?;
        if self.bug == Bug::UnknownIsError && s.created_at.is_none() {
            return Err(Error::store(std::io::Error::other("no such table"), false));
        }
        Ok(s)
    }
    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        match self.inner.acquire_lease(table, holder, ttl).await {
            Err(Error::LeaseHeld { holder: h, .. }) if self.bug == Bug::LeaseNotExclusive => {
                // Steal: re-acquire as the current holder, hand it to the caller.
                let stolen = self.inner.acquire_lease(table, &h, ttl).await?;
                Ok(Lease {
                    holder: holder.to_owned(),
                    ..stolen
                })
            }
            other => other,
        }
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        self.inner.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release_lease(lease).await
    }
    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        match self.bug {
            Bug::CasIgnoresExpected => {
                let stored = self.inner.load(&lease.table).await?.watermark;
                self.inner.compare_and_set(lease, stored, new).await
            }
            Bug::CasNotAtomic => {
                let stored = self.inner.load(&lease.table).await?.watermark;
                if stored != expected {
                    return Err(Error::WatermarkMismatch {
                        table: lease.table.clone(),
                        expected,
                        found: stored,
                    });
                }
                tokio::task::yield_now().await;
                let now = self.inner.load(&lease.table).await?.watermark;
                self.inner.compare_and_set(lease, now, new).await
            }
            _ => self.inner.compare_and_set(lease, expected, new).await,
        }
    }
    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        match self.inner.record_run(lease, event).await {
            Err(Error::LeaseLost { .. }) if self.bug == Bug::RecordRunUnfenced => Ok(()),
            other => other,
        }
    }
    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        if self.bug == Bug::RecoverNothing {
            return Ok(Vec::new());
        }
        self.inner.recover_stale_runs(older_than).await
    }
}

fn mutant(bug: Bug) -> conformance::SharedStore {
    Arc::new(Mutant {
        inner: MemoryStore::new(SystemClock),
        bug,
    })
}

/// Each mutant must fail the check aimed at its bug: the suite can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_suite_catches_broken_stores() {
    type Check =
        fn(conformance::SharedStore) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let cases: [(Bug, Check); 6] = [
        (Bug::UnknownIsError, |s| {
            Box::pin(conformance::unknown_table_loads_as_new(s))
        }),
        (Bug::CasIgnoresExpected, |s| {
            Box::pin(conformance::compare_and_set_compares(s))
        }),
        (Bug::CasNotAtomic, |s| {
            Box::pin(conformance::compare_and_set_race_has_one_winner(s))
        }),
        (Bug::RecordRunUnfenced, |s| {
            Box::pin(conformance::record_run_is_fenced(s))
        }),
        (Bug::LeaseNotExclusive, |s| {
            Box::pin(conformance::lease_is_exclusive(s))
        }),
        (Bug::RecoverNothing, |s| {
            Box::pin(conformance::recover_stale_runs_recovers_only_abandoned_runs(s))
        }),
    ];
    for (bug, check) in cases {
        let outcome = tokio::spawn(check(mutant(bug))).await;
        assert!(
            outcome.as_ref().is_err_and(|e| e.is_panic()),
            "the check aimed at {bug:?} passed a store with that bug"
        );
    }
}

/// `run_all` stops at the first failing check and names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_names_the_failing_check() {
    let outcome = tokio::spawn(conformance::run_all(|| async {
        Mutant {
            inner: MemoryStore::new(SystemClock),
            bug: Bug::UnknownIsError,
        }
    }))
    .await;
    let panic = outcome
        .expect_err("run_all must fail on a broken store")
        .into_panic();
    let msg = panic.downcast_ref::<String>().expect("a formatted panic message");
    assert!(
        msg.starts_with("conformance check `unknown_table_loads_as_new` failed"),
        "{msg}"
    );
}
