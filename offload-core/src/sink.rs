//! The [`Sink`] trait: where rows go, committed atomically with their window.

use std::any::Any;
use std::fmt;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use crate::{Error, RunId, TableConfig, Watermark, Window};

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
    /// The run, so an unknown outcome can be resolved with [`Sink::was_committed`].
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
/// let c = CommittedWindow { until: Watermark::new(5, 1), run_id: None, engine_id: None, fencing_token: None };
/// assert_eq!(c.until, Watermark::new(5, 1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedWindow {
    /// The committed watermark: every source row at or below it is in the sink.
    pub until: Watermark,
    /// The run that committed it, when the sink still knows.
    pub run_id: Option<RunId>,
    /// The engine that committed it, when the sink still knows.
    pub engine_id: Option<String>,
    /// The fencing token it was committed under, when the sink still knows.
    pub fencing_token: Option<u64>,
}

/// Data written by a [`StagingWriter`] but not yet visible: files, rows, and a
/// sink-specific payload (for example the data-file descriptors to append).
pub struct Staged {
    run_id: RunId,
    rows: u64,
    bytes: u64,
    files: Vec<String>,
    payload: Box<dyn Any + Send + Sync>,
}

impl Staged {
    /// Bundles staged output. `files` are locations, for logs and orphan cleanup.
    ///
    /// ```
    /// use offload_core::{RunId, Staged};
    /// let s = Staged::new(RunId::new(), 10, 1024, vec!["f1.parquet".into()], 42u32);
    /// assert_eq!(s.payload::<u32>(), Some(&42));
    /// assert_eq!(s.rows(), 10);
    /// ```
    pub fn new<P: Any + Send + Sync>(
        run_id: RunId,
        rows: u64,
        bytes: u64,
        files: Vec<String>,
        payload: P,
    ) -> Self {
        Self {
            run_id,
            rows,
            bytes,
            files,
            payload: Box::new(payload),
        }
    }
    /// The run that staged it.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }
    /// Rows staged.
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// Bytes written (encoded size).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Locations of the staged files.
    pub fn files(&self) -> &[String] {
        &self.files
    }
    /// The sink's own payload, if it is a `P`.
    pub fn payload<P: Any>(&self) -> Option<&P> {
        self.payload.downcast_ref()
    }
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged")
            .field("run_id", &self.run_id)
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

/// Writes one run's batches to uncommitted storage.
#[async_trait]
pub trait StagingWriter: Send {
    /// Stages one batch. May encode in the background; errors may surface on a later call.
    async fn write(&mut self, batch: RecordBatch) -> Result<(), Error>;
    /// Flushes and closes everything, returning what to commit.
    async fn finish(self: Box<Self>) -> Result<Staged, Error>;
    /// Gives up, deleting what was written so far (best effort: leftovers are
    /// orphans that [`Sink::cleanup`] removes).
    async fn abort(self: Box<Self>) -> Result<(), Error>;
}

/// A table store that windows are committed to.
///
/// # Contract
/// 1. **Staging is invisible.** Nothing a [`StagingWriter`] writes is visible to
///    readers or to [`committed`](Sink::committed) until `commit` succeeds.
/// 2. **Atomic, fenced commit.** [`commit`](Sink::commit) makes all staged rows
///    and the [`CommitMetadata`] visible together, or nothing. It succeeds only
///    if the sink's committed watermark is exactly `meta.window.after()` at the
///    moment of commit (no committed window counts as [`Watermark::MIN`]);
///    otherwise it fails with [`Error::CommitConflict`] and changes nothing. This
///    one check is what makes two racing writers, or a retry after a lost reply,
///    unable to add a window twice.
/// 3. **Honest about doubt.** When the outcome cannot be known (timeout after
///    sending, connection lost), return [`Error::CommitOutcomeUnknown`]; the
///    engine then asks [`was_committed`](Sink::was_committed).
/// 4. **Self-describing.** [`committed`](Sink::committed) reads the last committed
///    window from the sink itself, so after any crash the sink is the source of truth.
/// 5. `commit` may be called again with the same [`Staged`] after a retryable
///    error or a resolved unknown outcome.
///
/// The in-memory [`MemorySink`](crate::memory::MemorySink) (feature `testing`)
/// is the reference implementation.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Makes sure the destination exists and accepts `schema` (create on first
    /// use, evolve compatible changes, refuse incompatible ones).
    async fn prepare(&self, table: &TableConfig, schema: SchemaRef) -> Result<(), Error>;

    /// Starts staging one run's data.
    async fn begin(
        &self,
        table: &TableConfig,
        run_id: RunId,
        schema: SchemaRef,
    ) -> Result<Box<dyn StagingWriter>, Error>;

    /// Commits staged data with its metadata, atomically and fenced (see the contract).
    async fn commit(&self, table: &TableConfig, staged: &Staged, meta: &CommitMetadata) -> Result<(), Error>;

    /// Deletes staged data that will not be committed.
    async fn abort(&self, table: &TableConfig, staged: Staged) -> Result<(), Error>;

    /// The last committed window, or `None` when nothing was ever committed.
    async fn committed(&self, table: &TableConfig) -> Result<Option<CommittedWindow>, Error>;

    /// Whether a commit by `run_id` is part of the table.
    async fn was_committed(&self, table: &TableConfig, run_id: RunId) -> Result<bool, Error>;

    /// Deletes staged files that no commit references (left by crashes). Returns
    /// how many were removed. Must never delete a committed file.
    async fn cleanup(&self, table: &TableConfig) -> Result<u64, Error> {
        let _ = table;
        Ok(0)
    }
}
