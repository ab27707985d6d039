//! [`IcebergStaged`]: one run's staged data files, and its fenced commit.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use iceberg::Catalog;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use offload_core::{CommitMetadata, Error, RepairMetadata, RunId, SinkTable, Staged, StagedStats};

use crate::catalog::{Fence, FenceState, FencedCatalog, Observed, Phase};
use crate::{IcebergSinkError, IcebergTable, markers};

/// What an Iceberg staging produced: its data files, written but referenced
/// by no snapshot, and the [`IcebergTable`] they were staged for, so they can
/// only be committed (or discarded) there. Returned, boxed as
/// `offload_core::Staged`, by the staging writer's `finish`.
pub struct IcebergStaged {
    table: IcebergTable,
    stats: StagedStats,
    data_files: Vec<DataFile>,
}

impl fmt::Debug for IcebergStaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcebergStaged")
            .field("table", &self.table.ident())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// How one commit attempt ended, from the sink's point of view.
#[derive(Debug)]
enum Attempt {
    /// The catalog acknowledged the commit (still to be read back).
    Committed,
    /// The fence refused: the table is at `found`, not at what the commit
    /// requires. Nothing was applied.
    Conflict(Observed),
    /// Certainly not applied: the commit never reached the catalog, or the
    /// catalog refused it.
    Failed(IcebergSinkError),
    /// Handed to the catalog, then interrupted: it may have been applied.
    InDoubt(IcebergSinkError),
}

/// How the hand-over of the transaction ended, before the fence's
/// observations are taken into account.
enum Sent {
    /// The table was not where the commit requires already when the base
    /// was loaded: nothing was built.
    Stale(Observed),
    /// The transaction could not be built (or its base not loaded).
    NotBuilt(IcebergSinkError),
    /// `Transaction::commit` returned.
    Returned(iceberg::Result<Table>),
    /// The commit deadline passed first.
    TimedOut(IcebergSinkError),
}

impl Attempt {
    /// Reads the outcome: what the transaction returned, and how far the
    /// fence saw the commit get.
    fn classify(sent: Sent, fence: FenceState, ident: &iceberg::TableIdent) -> Attempt {
        let by_phase = |e: IcebergSinkError| match fence.phase {
            Phase::Idle => Attempt::Failed(e),
            Phase::Sending | Phase::InDoubt(_) | Phase::Acknowledged => Attempt::InDoubt(e),
        };
        match sent {
            Sent::Stale(found) => Attempt::Conflict(found),
            Sent::NotBuilt(e) => Attempt::Failed(e),
            Sent::Returned(Ok(_)) => Attempt::Committed,
            Sent::Returned(Err(e)) => match fence.conflict {
                Some(found) => Attempt::Conflict(found),
                None => by_phase(IcebergSinkError::iceberg(format!("commit to {ident}"), e)),
            },
            Sent::TimedOut(e) => by_phase(e),
        }
    }
}

/// What is being committed: a window, or a repair of late rows below the
/// committed watermark. Both append the staged files in one fenced snapshot.
#[derive(Clone, Copy)]
enum Request<'a> {
    Window(&'a CommitMetadata),
    Repair(&'a RepairMetadata),
}

impl Request<'_> {
    fn fence(&self) -> Fence {
        match self {
            Request::Window(m) => Fence::Watermark(m.window.after()),
            Request::Repair(m) => Fence::Version(m.base.clone()),
        }
    }

    fn summary(&self) -> HashMap<String, String> {
        match self {
            Request::Window(m) => markers::summary(m),
            Request::Repair(m) => markers::repair_summary(m),
        }
    }

    fn properties(&self) -> HashMap<String, String> {
        match self {
            Request::Window(m) => markers::properties(m),
            Request::Repair(m) => markers::repair_properties(m),
        }
    }

    /// A repair's base state must record the watermark the repair claims
    /// (it leaves it in place); a caller mixing up tables or versions is
    /// refused before anything is written.
    fn check_base(&self, base: &Observed, ident: &iceberg::TableIdent) -> Result<(), IcebergSinkError> {
        match self {
            Request::Repair(m) if base.watermark != Some(m.watermark) => {
                Err(IcebergSinkError::RepairWatermarkMismatch {
                    table: ident.to_string(),
                    version: base.version.to_string(),
                    claimed: m.watermark,
                    found: base.watermark,
                })
            }
            _ => Ok(()),
        }
    }
}

impl IcebergStaged {
    pub(crate) fn new(table: IcebergTable, stats: StagedStats, data_files: Vec<DataFile>) -> Self {
        Self {
            table,
            stats,
            data_files,
        }
    }

    /// The table the files were staged for.
    pub fn table(&self) -> &IcebergTable {
        &self.table
    }

    /// The staged data files.
    pub fn data_files(&self) -> &[DataFile] {
        &self.data_files
    }

    /// Builds the transaction on the state the fence hands out and commits
    /// it through the fence.
    async fn send(&self, fence: &FencedCatalog, fenced: &Fence, request: Request<'_>) -> Sent {
        let ident = self.table.ident();
        let base = match fence.load_table(ident).await {
            Ok(base) => base,
            Err(e) => return Sent::NotBuilt(IcebergSinkError::iceberg(format!("load table {ident}"), e)),
        };
        if let Some(found) = fence.base() {
            // Cheap early exit before iceberg writes manifests for a stale commit.
            if !fenced.admits(&found) {
                return Sent::Stale(found);
            }
            if let Err(e) = request.check_base(&found, ident) {
                return Sent::NotBuilt(e);
            }
        }
        let tx = Transaction::new(&base);
        let append = tx
            .fast_append()
            .with_check_duplicate(self.table.sink_config().check_duplicate_files)
            .set_snapshot_properties(request.summary())
            .add_data_files(self.data_files.iter().cloned());
        let tx = match append.apply(tx) {
            Ok(tx) => tx,
            Err(e) => return Sent::NotBuilt(IcebergSinkError::iceberg("build the append", e)),
        };
        let mut props = tx.update_table_properties();
        for (k, v) in request.properties() {
            props = props.set(k, v);
        }
        match props.apply(tx) {
            Ok(tx) => Sent::Returned(tx.commit(fence).await),
            Err(e) => Sent::NotBuilt(IcebergSinkError::iceberg("build the property update", e)),
        }
    }

    /// One fenced commit attempt, within the configured commit timeout.
    async fn attempt(&self, request: Request<'_>) -> Attempt {
        let ident = self.table.ident();
        let fenced = request.fence();
        let fence = FencedCatalog::new(self.table.catalog().clone(), ident.clone(), fenced.clone());
        let after = self.table.sink_config().commit_timeout;
        let sent = match tokio::time::timeout(after, self.send(&fence, &fenced, request)).await {
            Ok(sent) => sent,
            Err(_elapsed) => Sent::TimedOut(IcebergSinkError::Timeout {
                operation: "commit",
                after,
            }),
        };
        Attempt::classify(sent, fence.take_state(), ident)
    }

    /// The SQL catalog in iceberg-catalog-sql 0.10.1 ignores the result of
    /// its database transaction's COMMIT, so an acknowledgement is not proof:
    /// read the table back.
    async fn verify_visible(&self, run_id: RunId) -> Result<(), Error> {
        match self.table.load().await {
            Ok(t) if markers::contains_run(t.metadata(), run_id) => Ok(()),
            Ok(_) => Err(IcebergSinkError::CommitNotVisible {
                run_id: run_id.to_string(),
            }
            .into()),
            Err(e) => Err(in_doubt(run_id, e)),
        }
    }

    fn check_run(&self, run_id: RunId) -> Result<(), Error> {
        if self.stats.run_id != run_id {
            return Err(IcebergSinkError::RunMismatch {
                staged: self.stats.run_id.to_string(),
                committed: run_id.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

fn in_doubt(run_id: RunId, e: IcebergSinkError) -> Error {
    Error::CommitOutcomeUnknown {
        run_id,
        source: Box::new(e),
    }
}

#[async_trait]
impl Staged for IcebergStaged {
    fn stats(&self) -> &StagedStats {
        &self.stats
    }

    /// Appends the staged files in one transaction that records `meta`, fenced
    /// on `meta.window.after()` (see the crate README, "Commits and fencing").
    async fn commit(&self, meta: &CommitMetadata) -> Result<(), Error> {
        self.check_run(meta.run_id)?;
        match self.attempt(Request::Window(meta)).await {
            Attempt::Committed => self.verify_visible(meta.run_id).await,
            Attempt::Conflict(found) => Err(Error::CommitConflict {
                table: self.table.config().sink_table().to_owned(),
                expected: meta.window.after(),
                found: found.watermark,
            }),
            Attempt::Failed(e) => Err(e.into()),
            Attempt::InDoubt(e) => Err(in_doubt(meta.run_id, e)),
        }
    }

    /// Appends the staged files in one transaction that records `meta` (the
    /// watermark unchanged, the repair's figures in the snapshot summary),
    /// fenced on main still being at snapshot `meta.base`: any commit in
    /// between, of any kind, makes it [`Error::RepairConflict`].
    async fn commit_repair(&self, meta: &RepairMetadata) -> Result<(), Error> {
        self.check_run(meta.run_id)?;
        match self.attempt(Request::Repair(meta)).await {
            Attempt::Committed => self.verify_visible(meta.run_id).await,
            Attempt::Conflict(found) => Err(Error::RepairConflict {
                table: self.table.config().sink_table().to_owned(),
                base: meta.base.clone(),
                found: Some(found.version),
            }),
            Attempt::Failed(e) => Err(e.into()),
            Attempt::InDoubt(e) => Err(in_doubt(meta.run_id, e)),
        }
    }

    /// Deletes the staged files, unless the run's commit is part of the table
    /// ([`IcebergSinkError::DiscardOfCommittedRun`]: deleting them would lose
    /// committed rows).
    async fn discard(self: Box<Self>) -> Result<(), Error> {
        let run_id = self.stats.run_id;
        let Some(current) = self.table.load_if_exists().await? else {
            // No table: nothing can reference the files, and there is no
            // FileIO to delete them with; cleanup handles them once it exists.
            return Ok(());
        };
        if markers::contains_run(current.metadata(), run_id) {
            return Err(IcebergSinkError::DiscardOfCommittedRun {
                run_id: run_id.to_string(),
            }
            .into());
        }
        let mut first_err = None;
        for f in &self.data_files {
            if let Err(e) = current.file_io().delete(f.file_path()).await {
                first_err.get_or_insert(IcebergSinkError::iceberg(format!("delete {}", f.file_path()), e));
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }
}
