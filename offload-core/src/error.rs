//! The one error type of `offload-core`, shared by the traits and the engine.

use std::time::SystemTime;

use crate::{RunId, Watermark};

/// A boxed error from an adapter crate (ClickHouse, Iceberg, PostgreSQL, ...).
///
/// Adapters keep their own rich error enums and convert into [`Error`] at the
/// trait boundary, so callers can still `downcast_ref` to the adapter's type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in an offload, classified so the engine knows
/// what to do next: retry ([`Error::is_retryable`]), ask the sink whether a
/// commit landed ([`Error::CommitOutcomeUnknown`]), or stop and tell a person.
///
/// ```
/// use offload_core::Error;
/// let e = Error::source(std::io::Error::other("connection reset"), true);
/// assert!(e.is_retryable());
/// assert!(e.to_string().contains("connection reset"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; nothing was attempted.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// Text that should hold a watermark (`"<micros>:<sequence>"`) does not.
    #[error("invalid watermark text {text:?}: expected \"<timestamp_micros>:<sequence>\"")]
    InvalidWatermark {
        /// The first characters of the offending text.
        text: String,
    },

    /// A window must hold at least one position: `after < until`.
    #[error("empty window: after {after} is not below until {until}")]
    EmptyWindow {
        /// Lower bound that was given.
        after: Watermark,
        /// Upper bound that was given.
        until: Watermark,
    },

    /// The source failed (query error, connection loss, unsupported column type, ...).
    #[error("source failed: {source}")]
    Source {
        /// Whether trying again may succeed.
        retryable: bool,
        /// The adapter's error.
        source: BoxError,
    },

    /// The sink failed before or while writing, or refused a commit; nothing was committed.
    #[error("sink failed: {source}")]
    Sink {
        /// Whether trying again may succeed.
        retryable: bool,
        /// The adapter's error.
        source: BoxError,
    },

    /// The watermark store failed.
    #[error("watermark store failed: {source}")]
    Store {
        /// Whether trying again may succeed.
        retryable: bool,
        /// The adapter's error.
        source: BoxError,
    },

    /// A commit was sent but its outcome is unknown (timeout, connection lost).
    /// The engine resolves it with [`SinkTable::was_committed`](crate::SinkTable::was_committed)
    /// before anything else happens.
    #[error("outcome of commit for run {run_id} is unknown: {source}")]
    CommitOutcomeUnknown {
        /// The run whose commit is in doubt.
        run_id: RunId,
        /// What interrupted the commit.
        source: BoxError,
    },

    /// The sink's committed watermark is no longer the window's lower bound:
    /// another writer committed first. Never retried: the window is stale.
    #[error(
        "commit conflict on table {table}: window starts after {expected} but the sink has committed up to {found:?}"
    )]
    CommitConflict {
        /// The table.
        table: String,
        /// The watermark this run's window starts after.
        expected: Watermark,
        /// What the sink actually holds.
        found: Option<Watermark>,
    },

    /// A repair commit found the sink table at another version than the one its
    /// diff was computed against. Never retried: the diff is stale; the next
    /// sweep computes a new one.
    #[error(
        "repair conflict on table {table}: the repair was computed at version {base} but the table is at {found:?}"
    )]
    RepairConflict {
        /// The table.
        table: String,
        /// The version the repair's diff was computed against.
        base: crate::SinkVersion,
        /// The table's current version.
        found: Option<crate::SinkVersion>,
    },

    /// Another engine holds the table's lease.
    #[error("table {table} is leased to {holder} until {expires_at:?}")]
    LeaseHeld {
        /// The table.
        table: String,
        /// The current holder.
        holder: String,
        /// When the holder's lease expires unless renewed.
        expires_at: SystemTime,
    },

    /// This engine's lease was taken over (its fencing token is no longer current).
    #[error("lease on table {table} was lost: fencing token {token} is no longer current")]
    LeaseLost {
        /// The table.
        table: String,
        /// The token that was superseded.
        token: u64,
    },

    /// Compare-and-set found a different stored watermark than expected.
    #[error("watermark of table {table} changed underneath: expected {expected:?}, found {found:?}")]
    WatermarkMismatch {
        /// The table.
        table: String,
        /// What the caller expected.
        expected: Option<Watermark>,
        /// What the store holds.
        found: Option<Watermark>,
    },

    /// The store claims more than the sink committed. Continuing would skip the
    /// rows in between, so the engine refuses until a person looks.
    #[error(
        "watermark store for table {table} is at {store} but the sink has only committed {sink:?}: refusing to skip data"
    )]
    StoreAheadOfSink {
        /// The table.
        table: String,
        /// The store's watermark.
        store: Watermark,
        /// The sink's committed watermark.
        sink: Option<Watermark>,
    },

    /// The run was cancelled before its commit; nothing was committed.
    #[error("run cancelled before commit")]
    Cancelled,
}

impl Error {
    /// Wraps a source adapter's error.
    pub fn source(err: impl Into<BoxError>, retryable: bool) -> Self {
        Error::Source {
            retryable,
            source: err.into(),
        }
    }

    /// Wraps a sink adapter's error.
    ///
    /// ```
    /// let e = offload_core::Error::sink(std::io::Error::other("disk full"), false);
    /// assert!(!e.is_retryable());
    /// ```
    pub fn sink(err: impl Into<BoxError>, retryable: bool) -> Self {
        Error::Sink {
            retryable,
            source: err.into(),
        }
    }

    /// Wraps a watermark store adapter's error.
    ///
    /// ```
    /// let e = offload_core::Error::store(std::io::Error::other("timeout"), true);
    /// assert!(e.is_retryable());
    /// ```
    pub fn store(err: impl Into<BoxError>, retryable: bool) -> Self {
        Error::Store {
            retryable,
            source: err.into(),
        }
    }

    /// Whether the same call may succeed if tried again after a pause.
    ///
    /// Unknown commit outcomes are *not* retryable as such: they must be resolved first.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Source { retryable, .. }
            | Error::Sink { retryable, .. }
            | Error::Store { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// A short stable label for metrics and logs (`"source"`, `"conflict"`, ...).
    ///
    /// ```
    /// assert_eq!(offload_core::Error::Cancelled.kind(), "cancelled");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidConfig { .. } => "config",
            Error::InvalidWatermark { .. } => "invalid_watermark",
            Error::EmptyWindow { .. } => "empty_window",
            Error::Source { .. } => "source",
            Error::Sink { .. } => "sink",
            Error::Store { .. } => "store",
            Error::CommitOutcomeUnknown { .. } => "commit_unknown",
            Error::CommitConflict { .. } => "conflict",
            Error::RepairConflict { .. } => "repair_conflict",
            Error::LeaseHeld { .. } => "lease_held",
            Error::LeaseLost { .. } => "lease_lost",
            Error::WatermarkMismatch { .. } => "watermark_mismatch",
            Error::StoreAheadOfSink { .. } => "store_ahead",
            Error::Cancelled => "cancelled",
        }
    }
}
