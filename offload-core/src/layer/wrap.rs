//! The trait impls of [`Layered`]: every call goes through the policy, and
//! every handle returned comes back wrapped.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Elapsed, Layered, Op, Policy, reinvoked};
use crate::{
    BatchStream, BucketGrid, CommitMetadata, CommittedWindow, Error, Lease, MaintenanceSummary,
    RepairMetadata, RunEvent, RunId, Sink, SinkTable, Source, SourceTable, Staged, StagedStats,
    StagingWriter, TableConfig, TableState, Watermark, WatermarkStore, Window,
};

fn once<'a, T: Send + 'a>(op: Op) -> BoxFuture<'a, Result<T, Error>> {
    futures::future::ready(Err(reinvoked(op))).boxed()
}

#[async_trait]
impl<P: Policy, S: Source> Source for Layered<P, S> {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        let inner = &self.inner;
        let mut call = || inner.open(table);
        let handle = self
            .policy
            .around(Op::SourceOpen, table.name(), &mut call)
            .await?;
        Ok(Arc::new(self.handle(Arc::from(table.name()), handle)))
    }
}

#[async_trait]
impl<P: Policy, S: SourceTable> SourceTable for Layered<P, S> {
    fn config(&self) -> &TableConfig {
        self.inner.config()
    }

    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        let inner = &self.inner;
        let mut call = || inner.high_watermark();
        self.policy
            .around(Op::HighWatermark, &self.table, &mut call)
            .await
    }

    async fn low_watermark(&self, after: Watermark) -> Result<Option<Watermark>, Error> {
        let inner = &self.inner;
        let mut call = || inner.low_watermark(after);
        self.policy.around(Op::LowWatermark, &self.table, &mut call).await
    }

    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        let inner = &self.inner;
        let mut call = || inner.read(window);
        self.policy.around(Op::Read, &self.table, &mut call).await
    }

    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        let inner = &self.inner;
        let mut call = || inner.bucket_counts(grid);
        self.policy
            .around(Op::SourceBucketCounts, &self.table, &mut call)
            .await
    }
}

#[async_trait]
impl<P: Policy, S: Sink> Sink for Layered<P, S> {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SinkTable>, Error> {
        let inner = &self.inner;
        let mut call = || inner.open(table);
        let handle = self.policy.around(Op::SinkOpen, table.name(), &mut call).await?;
        Ok(Arc::new(self.handle(Arc::from(table.name()), handle)))
    }
}

#[async_trait]
impl<P: Policy, S: SinkTable> SinkTable for Layered<P, S> {
    fn config(&self) -> &TableConfig {
        self.inner.config()
    }

    async fn prepare(&self, schema: SchemaRef) -> Result<(), Error> {
        let inner = &self.inner;
        let mut call = || inner.prepare(schema.clone());
        self.policy.around(Op::Prepare, &self.table, &mut call).await
    }

    async fn begin(&self, run_id: RunId, schema: SchemaRef) -> Result<Box<dyn StagingWriter>, Error> {
        let inner = &self.inner;
        let mut call = || inner.begin(run_id, schema.clone());
        let writer = self.policy.around(Op::Begin, &self.table, &mut call).await?;
        Ok(Box::new(self.handle(self.table.clone(), writer)))
    }

    async fn committed(&self) -> Result<Option<CommittedWindow>, Error> {
        let inner = &self.inner;
        let mut call = || inner.committed();
        self.policy.around(Op::Committed, &self.table, &mut call).await
    }

    async fn was_committed(&self, run_id: RunId) -> Result<bool, Error> {
        let inner = &self.inner;
        let mut call = || inner.was_committed(run_id);
        self.policy.around(Op::WasCommitted, &self.table, &mut call).await
    }

    async fn cleanup(&self) -> Result<u64, Error> {
        let inner = &self.inner;
        let mut call = || inner.cleanup();
        self.policy.around(Op::Cleanup, &self.table, &mut call).await
    }

    async fn positions(&self, window: Window) -> Result<Vec<Watermark>, Error> {
        let inner = &self.inner;
        let mut call = || inner.positions(window);
        self.policy.around(Op::Positions, &self.table, &mut call).await
    }

    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        let inner = &self.inner;
        let mut call = || inner.bucket_counts(grid);
        self.policy
            .around(Op::SinkBucketCounts, &self.table, &mut call)
            .await
    }

    async fn maintain(&self) -> Result<MaintenanceSummary, Error> {
        let inner = &self.inner;
        let mut call = || inner.maintain();
        self.policy.around(Op::Maintain, &self.table, &mut call).await
    }
}

#[async_trait]
impl<P: Policy, S: StagingWriter + 'static> StagingWriter for Layered<P, S> {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        let mut slot = Some((&mut self.inner, batch));
        let mut call = move || match slot.take() {
            Some((w, b)) => w.write(b),
            None => once(Op::Write),
        };
        self.policy.around(Op::Write, &self.table, &mut call).await
    }

    async fn finish(self: Box<Self>) -> Result<Box<dyn Staged>, Error> {
        let Layered { policy, inner, table } = *self;
        let mut slot = Some(Box::new(inner));
        let mut call = move || match slot.take() {
            Some(w) => w.finish(),
            None => once(Op::Finish),
        };
        let staged = policy.around(Op::Finish, &table, &mut call).await?;
        Ok(Box::new(Layered {
            policy: policy.clone(),
            inner: staged,
            table,
        }))
    }

    async fn abort(self: Box<Self>) -> Result<(), Error> {
        let Layered { policy, inner, table } = *self;
        let mut slot = Some(Box::new(inner));
        let mut call = move || match slot.take() {
            Some(w) => w.abort(),
            None => once(Op::Abort),
        };
        policy.around(Op::Abort, &table, &mut call).await
    }
}

#[async_trait]
impl<P: Policy, S: Staged + 'static> Staged for Layered<P, S> {
    fn stats(&self) -> &StagedStats {
        self.inner.stats()
    }

    async fn commit(&self, meta: &CommitMetadata) -> Result<(), Error> {
        let inner = &self.inner;
        let mut call = || inner.commit(meta);
        match self.policy.around(Op::Commit, &self.table, &mut call).await {
            // A commit interrupted by a deadline may have landed: never report
            // it as a plain failure, whichever policy gave up on it.
            Err(Error::Sink { source, .. }) if source.is::<Elapsed>() => Err(Error::CommitOutcomeUnknown {
                run_id: meta.run_id,
                source,
            }),
            other => other,
        }
    }

    async fn commit_repair(&self, meta: &RepairMetadata) -> Result<(), Error> {
        let inner = &self.inner;
        let mut call = || inner.commit_repair(meta);
        match self.policy.around(Op::CommitRepair, &self.table, &mut call).await {
            Err(Error::Sink { source, .. }) if source.is::<Elapsed>() => Err(Error::CommitOutcomeUnknown {
                run_id: meta.run_id,
                source,
            }),
            other => other,
        }
    }

    async fn discard(self: Box<Self>) -> Result<(), Error> {
        let Layered { policy, inner, table } = *self;
        let mut slot = Some(Box::new(inner));
        let mut call = move || match slot.take() {
            Some(s) => s.discard(),
            None => once(Op::Discard),
        };
        policy.around(Op::Discard, &table, &mut call).await
    }
}

#[async_trait]
impl<P: Policy, S: WatermarkStore> WatermarkStore for Layered<P, S> {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        let inner = &self.inner;
        let mut call = || inner.load(table);
        self.policy.around(Op::Load, table, &mut call).await
    }

    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        let inner = &self.inner;
        let mut call = || inner.acquire_lease(table, holder, ttl);
        self.policy.around(Op::AcquireLease, table, &mut call).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let inner = &self.inner;
        let mut call = || inner.renew_lease(lease, ttl);
        self.policy.around(Op::RenewLease, &lease.table, &mut call).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        let inner = &self.inner;
        let mut call = || inner.release_lease(lease);
        self.policy
            .around(Op::ReleaseLease, &lease.table, &mut call)
            .await
    }

    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let mut call = || inner.compare_and_set(lease, expected, new);
        self.policy
            .around(Op::CompareAndSet, &lease.table, &mut call)
            .await
    }

    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        let inner = &self.inner;
        let mut call = || inner.record_run(lease, event.clone());
        self.policy.around(Op::RecordRun, &lease.table, &mut call).await
    }

    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        let inner = &self.inner;
        let mut call = || inner.recover_stale_runs(older_than);
        self.policy.around(Op::RecoverStaleRuns, "", &mut call).await
    }
}
