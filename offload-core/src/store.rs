//! The [`WatermarkStore`] trait: per-table watermark, lease and run status.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Error, RunId, Watermark};

/// Longest `last_error` a store keeps; longer messages are cut at a char boundary.
pub const MAX_ERROR_LEN: usize = 1000;

/// Cuts an error message to [`MAX_ERROR_LEN`] bytes without splitting a character.
///
/// ```
/// let long = "é".repeat(600); // 1200 bytes
/// let cut = offload_core::truncate_error(&long);
/// assert!(cut.len() <= 1000 && cut.chars().all(|c| c == 'é'));
/// ```
pub fn truncate_error(msg: &str) -> &str {
    if msg.len() <= MAX_ERROR_LEN {
        return msg;
    }
    let mut end = MAX_ERROR_LEN;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// Status of a table's latest run, as operators of the replaced system knew it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunStatus {
    /// Never ran.
    Initialized,
    /// A run started and has not reported back.
    Running,
    /// The latest run succeeded.
    Success,
    /// The latest run failed (or was abandoned and recovered).
    Failed,
}

impl RunStatus {
    /// The lower-case name stored in databases and files.
    ///
    /// ```
    /// use offload_core::RunStatus;
    /// assert_eq!(RunStatus::parse(RunStatus::Running.as_str()), Some(RunStatus::Running));
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Initialized => "initialized",
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "initialized" => RunStatus::Initialized,
            "running" => RunStatus::Running,
            "success" => RunStatus::Success,
            "failed" => RunStatus::Failed,
            _ => return None,
        })
    }
}

/// A time-limited, exclusive claim on one table, with a fencing token.
///
/// The token grows with every acquisition of the table, by anyone. A holder is
/// current while its token is the latest issued; expiry only lets someone else
/// take a newer one. Stores refuse writes under a token that is not current.
#[derive(Clone, PartialEq, Eq)]
pub struct Lease {
    /// The table.
    pub table: String,
    /// Who holds it (engine id).
    pub holder: String,
    /// Fencing token; strictly greater than every token issued before for this table.
    pub token: u64,
    /// When it lapses unless renewed (store's clock).
    pub expires_at: SystemTime,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease({} by {} #{})", self.table, self.holder, self.token)
    }
}

/// Everything a store keeps about one table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableState {
    /// The table.
    pub table: String,
    /// The last watermark stored, `None` before the first commit.
    pub watermark: Option<Watermark>,
    /// Status of the latest run.
    pub status: RunStatus,
    /// Id of the latest run.
    pub last_run_id: Option<RunId>,
    /// Rows committed by the latest successful run.
    pub last_row_count: u64,
    /// When the latest successful run finished.
    pub last_success_at: Option<SystemTime>,
    /// How long the latest finished run took.
    pub last_run_duration: Option<Duration>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The latest failure's message, cut to [`MAX_ERROR_LEN`].
    pub last_error: Option<String>,
    /// The current (possibly expired) lease.
    pub lease: Option<Lease>,
    /// When the store first saw the table.
    pub created_at: Option<SystemTime>,
    /// Last change.
    pub updated_at: Option<SystemTime>,
}

impl TableState {
    /// The state of a table the store has never seen.
    ///
    /// ```
    /// let s = offload_core::TableState::new("t");
    /// assert_eq!(s.status, offload_core::RunStatus::Initialized);
    /// assert!(s.watermark.is_none());
    /// ```
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            watermark: None,
            status: RunStatus::Initialized,
            last_run_id: None,
            last_row_count: 0,
            last_success_at: None,
            last_run_duration: None,
            consecutive_failures: 0,
            last_error: None,
            lease: None,
            created_at: None,
            updated_at: None,
        }
    }

    /// Applies a run event the way every store must (shared so backends agree).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use offload_core::{RunEvent, RunId, RunStatus, TableState};
    /// let mut s = TableState::new("t");
    /// s.apply(&RunEvent::Failed { run_id: RunId::new(), error: "boom".into(), duration: Duration::ZERO }, UNIX_EPOCH);
    /// assert_eq!((s.status, s.consecutive_failures), (RunStatus::Failed, 1));
    /// ```
    pub fn apply(&mut self, event: &RunEvent, now: SystemTime) {
        match event {
            RunEvent::Started { run_id } => {
                self.status = RunStatus::Running;
                self.last_run_id = Some(*run_id);
            }
            RunEvent::Succeeded {
                run_id,
                rows,
                duration,
            } => {
                self.status = RunStatus::Success;
                self.last_run_id = Some(*run_id);
                self.last_row_count = *rows;
                self.last_run_duration = Some(*duration);
                self.last_success_at = Some(now);
                self.consecutive_failures = 0;
            }
            RunEvent::Failed {
                run_id,
                error,
                duration,
            } => {
                self.status = RunStatus::Failed;
                self.last_run_id = Some(*run_id);
                self.last_run_duration = Some(*duration);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(truncate_error(error).to_owned());
            }
        }
        self.created_at.get_or_insert(now);
        self.updated_at = Some(now);
    }
}

/// A run's progress, recorded under its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEvent {
    /// The run took the lease and started.
    Started {
        /// The run.
        run_id: RunId,
    },
    /// The run committed (or found nothing to do).
    Succeeded {
        /// The run.
        run_id: RunId,
        /// Rows committed.
        rows: u64,
        /// Wall time.
        duration: Duration,
    },
    /// The run failed.
    Failed {
        /// The run.
        run_id: RunId,
        /// What went wrong (stores cut it to [`MAX_ERROR_LEN`]).
        error: String,
        /// Wall time.
        duration: Duration,
    },
}

/// Durable per-table state: the watermark, a lease with a fencing token, and
/// the latest run's status.
///
/// # Contract
/// 1. **Leases are exclusive.** [`acquire_lease`](Self::acquire_lease) fails with
///    [`Error::LeaseHeld`] while another holder's lease is unexpired (by the
///    store's clock, not the caller's), and otherwise issues a token strictly
///    greater than any issued before for the table. The same holder may
///    re-acquire its own unexpired lease (it gets a new token).
/// 2. **Fenced writes.** `renew_lease`, `compare_and_set` and `record_run` fail
///    with [`Error::LeaseLost`] unless the lease's token is the table's latest;
///    `release_lease` with a stale token is a no-op.
/// 3. **Compare-and-set** stores `new` only if the stored watermark equals
///    `expected`, else [`Error::WatermarkMismatch`]; atomically, so of two racing
///    callers exactly one wins.
/// 4. `load` of an unknown table returns [`TableState::new`], not an error.
/// 5. **Stale runs.** [`recover_stale_runs`](Self::recover_stale_runs) marks
///    `failed` (counting a failure) every table whose status is `running`, whose
///    lease has expired, and whose last update is older than `older_than`.
/// 6. State survives process restarts (except for the in-memory store) and a
///    torn or corrupt record is an error, never a silent reset to "no watermark".
///
/// The conformance suite in `offload-watermark-store` checks all of it.
#[async_trait]
pub trait WatermarkStore: Send + Sync + std::fmt::Debug {
    /// The table's state.
    async fn load(&self, table: &str) -> Result<TableState, Error>;

    /// Claims the table for `ttl`.
    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error>;

    /// Extends a current lease; returns it with the new expiry.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error>;

    /// Gives the lease up (expires it now) if still current.
    async fn release_lease(&self, lease: &Lease) -> Result<(), Error>;

    /// Stores `new` if the stored watermark is `expected`.
    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error>;

    /// Records a run's progress ([`TableState::apply`] semantics).
    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error>;

    /// Marks abandoned runs failed; returns the tables recovered.
    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error>;
}

#[async_trait]
impl<T: WatermarkStore + ?Sized> WatermarkStore for Arc<T> {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        (**self).load(table).await
    }
    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        (**self).acquire_lease(table, holder, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        (**self).renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        (**self).release_lease(lease).await
    }
    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        (**self).compare_and_set(lease, expected, new).await
    }
    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        (**self).record_run(lease, event).await
    }
    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        (**self).recover_stale_runs(older_than).await
    }
}
