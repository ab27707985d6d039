//! The [`Sink`] trait: where rows go, committed atomically with their window;
//! [`SinkTable`], one opened table; [`StagingWriter`] and [`Staged`], one run's
//! uncommitted output.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use crate::{
    BucketGrid, Error, MaintenanceSummary, RepairMetadata, RunId, SinkVersion, TableConfig, Watermark, Window,
};

/// What a commit records beside its data, atomically with it.
///
/// ```
/// use offload_core::{CommitMetadata, RunId, Watermark, Window};
/// let meta = CommitMetadata {
///     window: Window::new(Watermark::MIN, Watermark::new(10, 0)).unwrap(),
///     run_id: RunId::new(),
///     engine_id: "worker-1".into(),
///     fencing_token: 3,
/// };
/// assert_eq!(meta.window.until(), Watermark::new(10, 0));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitMetadata {
    /// The window whose rows the commit adds; `window.until()` becomes the committed watermark.
    pub window: Window,
    /// The run, so an unknown outcome can be resolved with [`SinkTable::was_committed`](crate::SinkTable::was_committed).
    pub run_id: RunId,
    /// The engine that ran it, for operators.
    pub engine_id: String,
    /// The store lease's fencing token, for audit and for sinks that can check it.
    pub fencing_token: u64,
}

/// The last commit a sink holds for a table, read back from the sink itself.
///
/// ```
/// use offload_core::{CommittedWindow, Watermark};
/// use offload_core::SinkVersion;
/// let c = CommittedWindow {
///     until: Watermark::new(5, 1),
///     version: SinkVersion::new("3"),
///     run_id: None,
///     engine_id: None,
///     fencing_token: None,
/// };
/// assert_eq!(c.until, Watermark::new(5, 1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedWindow {
    /// The committed watermark: every source row at or below it is in the sink.
    pub until: Watermark,
    /// The table's current version (the latest commit of any kind, repairs
    /// included): what a repair commit is fenced on.
    pub version: SinkVersion,
    /// The run that committed it, when the sink still knows.
    pub run_id: Option<RunId>,
    /// The engine that committed it, when the sink still knows.
    pub engine_id: Option<String>,
    /// The fencing token it was committed under, when the sink still knows.
    pub fencing_token: Option<u64>,
}

/// What a [`Staged`] holds: for logs, metrics and orphan cleanup.
///
/// ```
/// use offload_core::{RunId, StagedStats};
/// let s = StagedStats::new(RunId::new(), 10, 1024, vec!["f1.parquet".into()]);
/// assert_eq!((s.rows, s.files.len()), (10, 1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StagedStats {
    /// The run that staged it.
    pub run_id: RunId,
    /// Rows staged.
    pub rows: u64,
    /// Bytes written (encoded size).
    pub bytes: u64,
    /// Locations of the staged files.
    pub files: Vec<String>,
}

impl StagedStats {
    /// Bundles the figures.
    pub fn new(run_id: RunId, rows: u64, bytes: u64, files: Vec<String>) -> Self {
        Self {
            run_id,
            rows,
            bytes,
            files,
        }
    }
}

/// Writes one run's batches to uncommitted storage.
#[async_trait]
pub trait StagingWriter: Send {
    /// Stages one batch. May encode in the background; errors may surface on a later call.
    async fn write(&mut self, batch: RecordBatch) -> Result<(), Error>;
    /// Flushes and closes everything, returning what to commit.
    async fn finish(self: Box<Self>) -> Result<Box<dyn Staged>, Error>;
    /// Gives up, deleting what was written so far (best effort: leftovers are
    /// orphans that [`SinkTable::cleanup`] removes).
    async fn abort(self: Box<Self>) -> Result<(), Error>;
}

/// One run's staged output, not yet visible. It can only be committed to the
/// table it was staged for: the adapter's own type holds what it needs (data
/// file descriptors, batches), so nothing is downcast.
///
/// # Contract
/// 1. **Staging is invisible.** Nothing staged is visible to readers or to
///    [`SinkTable::committed`] until [`commit`](Staged::commit) succeeds.
/// 2. **Atomic, fenced commit.** `commit` makes all staged rows and the
///    [`CommitMetadata`] visible together, or nothing. It succeeds only if the
///    table's committed watermark is exactly `meta.window.after()` at the
///    moment of commit (no committed window counts as [`Watermark::MIN`]);
///    otherwise it fails with [`Error::CommitConflict`] and changes nothing.
///    This one check is what makes two racing writers, or a retry after a lost
///    reply, unable to add a window twice.
/// 3. **Honest about doubt.** When the outcome cannot be known (timeout after
///    sending, connection lost), return [`Error::CommitOutcomeUnknown`]; the
///    engine then asks [`SinkTable::was_committed`].
/// 4. `commit` may be called again after a retryable error or a resolved
///    unknown outcome.
/// 5. [`discard`](Staged::discard) deletes the staged files and must refuse
///    (typed error) if the run's commit is part of the table.
#[async_trait]
pub trait Staged: Send + Sync + std::fmt::Debug {
    /// What was staged.
    fn stats(&self) -> &StagedStats;
    /// Commits the staged data with its metadata, atomically and fenced.
    async fn commit(&self, meta: &CommitMetadata) -> Result<(), Error>;
    /// Commits the staged rows as a repair of late rows: atomically with
    /// `meta`, leaving the committed watermark unchanged, and only if the
    /// table is still at `meta.base` (otherwise [`Error::RepairConflict`],
    /// changing nothing). Outcome doubt is reported as for
    /// [`commit`](Staged::commit), and `meta.run_id` must be found by
    /// [`SinkTable::was_committed`] once it landed.
    async fn commit_repair(&self, meta: &RepairMetadata) -> Result<(), Error>;
    /// Deletes staged data that will not be committed.
    async fn discard(self: Box<Self>) -> Result<(), Error>;
}

/// A table store that windows are committed to. [`open`](Sink::open) resolves
/// one table once (its identifier, adapter options such as partitioning) and
/// returns a [`SinkTable`]; the sink keeps no per-table state.
///
/// The in-memory `memory::MemorySink` (feature `testing`)
/// is the reference implementation; `conformance::sink`
/// (feature `conformance`) checks any implementation.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Resolves `table`. Does not create anything: a table that does not exist
    /// yet has no committed window until [`SinkTable::prepare`] creates it.
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SinkTable>, Error>;
}

/// One table of a [`Sink`], opened with [`Sink::open`].
///
/// # Contract
/// 1. **Self-describing.** [`committed`](SinkTable::committed) reads the last
///    committed window from the table itself, so after any crash the sink is
///    the source of truth.
/// 2. **Prepare before begin.** [`prepare`](SinkTable::prepare) creates the
///    table on first use, evolves compatible schema changes and refuses
///    incompatible ones with a typed, non-retryable error.
/// 3. [`cleanup`](SinkTable::cleanup) never deletes a committed file.
/// 4. **Keys and counts agree with the data.** [`positions`](SinkTable::positions)
///    and [`bucket_counts`](SinkTable::bucket_counts) describe exactly the
///    committed rows, and [`committed`](SinkTable::committed)'s `version`
///    changes with every commit, repairs included.
#[async_trait]
pub trait SinkTable: Send + Sync + std::fmt::Debug {
    /// The configuration this handle was opened with.
    fn config(&self) -> &TableConfig;

    /// Makes sure the destination exists and accepts `schema`.
    async fn prepare(&self, schema: SchemaRef) -> Result<(), Error>;

    /// Starts staging one run's data of `schema`.
    async fn begin(&self, run_id: RunId, schema: SchemaRef) -> Result<Box<dyn StagingWriter>, Error>;

    /// The last committed window, or `None` when nothing was ever committed.
    async fn committed(&self) -> Result<Option<CommittedWindow>, Error>;

    /// Whether a commit by `run_id` is part of the table.
    async fn was_committed(&self, run_id: RunId) -> Result<bool, Error>;

    /// Deletes staged files that no commit references (left by crashes). Returns
    /// how many were removed. Must never delete a committed file.
    async fn cleanup(&self) -> Result<u64, Error> {
        Ok(0)
    }

    /// The position of every committed row in `window`, in any order, a row
    /// held twice listed twice: what the late-row sweep diffs the source
    /// against. Reads only what it needs (key columns, pruned files).
    async fn positions(&self, window: Window) -> Result<Vec<Watermark>, Error>;

    /// How many committed rows each bucket of `grid` holds. The default lists
    /// [`positions`](SinkTable::positions) over the grid; adapters answer from
    /// metadata (file record counts and bounds) where they can.
    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        Ok(grid.histogram(self.positions(grid.span()).await?))
    }

    /// Keeps the table healthy: compacts small files, rewrites manifests,
    /// expires old snapshots and deletes what nothing references any more,
    /// as the sink's own maintenance configuration says. Must never change
    /// the committed rows or the committed window, and must be safe to run
    /// concurrently with commits, repairs and another `maintain` (one of them
    /// retries on the new state or gives up; none loses or doubles a row).
    /// The default does nothing.
    async fn maintain(&self) -> Result<MaintenanceSummary, Error> {
        Ok(MaintenanceSummary::default())
    }
}

#[async_trait]
impl<T: Sink + ?Sized> Sink for Arc<T> {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SinkTable>, Error> {
        (**self).open(table).await
    }
}

#[async_trait]
impl<T: SinkTable + ?Sized> SinkTable for Arc<T> {
    fn config(&self) -> &TableConfig {
        (**self).config()
    }
    async fn prepare(&self, schema: SchemaRef) -> Result<(), Error> {
        (**self).prepare(schema).await
    }
    async fn begin(&self, run_id: RunId, schema: SchemaRef) -> Result<Box<dyn StagingWriter>, Error> {
        (**self).begin(run_id, schema).await
    }
    async fn committed(&self) -> Result<Option<CommittedWindow>, Error> {
        (**self).committed().await
    }
    async fn was_committed(&self, run_id: RunId) -> Result<bool, Error> {
        (**self).was_committed(run_id).await
    }
    async fn cleanup(&self) -> Result<u64, Error> {
        (**self).cleanup().await
    }
    async fn positions(&self, window: Window) -> Result<Vec<Watermark>, Error> {
        (**self).positions(window).await
    }
    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        (**self).bucket_counts(grid).await
    }
    async fn maintain(&self) -> Result<MaintenanceSummary, Error> {
        (**self).maintain().await
    }
}

#[async_trait]
impl<T: StagingWriter + ?Sized> StagingWriter for Box<T> {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        (**self).write(batch).await
    }
    async fn finish(self: Box<Self>) -> Result<Box<dyn Staged>, Error> {
        T::finish(*self).await
    }
    async fn abort(self: Box<Self>) -> Result<(), Error> {
        T::abort(*self).await
    }
}

#[async_trait]
impl<T: Staged + ?Sized> Staged for Box<T> {
    fn stats(&self) -> &StagedStats {
        (**self).stats()
    }
    async fn commit(&self, meta: &CommitMetadata) -> Result<(), Error> {
        (**self).commit(meta).await
    }
    async fn commit_repair(&self, meta: &RepairMetadata) -> Result<(), Error> {
        (**self).commit_repair(meta).await
    }
    async fn discard(self: Box<Self>) -> Result<(), Error> {
        T::discard(*self).await
    }
}
