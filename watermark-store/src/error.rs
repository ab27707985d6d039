//! The crate's error type and its mapping onto `offload_core::Error`.

#[cfg(feature = "file")]
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in this crate's stores, short of the
/// contract's own outcomes (lease held, lease lost, watermark mismatch), which
/// are returned as the matching [`offload_core::Error`] variants.
///
/// Converts into [`offload_core::Error::Store`], keeping
/// [`is_retryable`](Self::is_retryable); callers can `downcast_ref` the
/// `source` back to a `StoreError`.
///
/// No variant carries a password: URLs are stored redacted.
///
/// ```
/// use offload_watermark_store::StoreError;
/// let e = StoreError::InvalidTableName { name: String::new(), reason: "must not be empty".into() };
/// assert!(!e.is_retryable());
/// let core: offload_core::Error = e.into();
/// assert_eq!(core.kind(), "store");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The table name cannot be stored (empty, NUL byte, too long).
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The first characters of the name.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// The lease holder id cannot be stored (empty, NUL byte, too long).
    #[error("invalid lease holder {holder:?}: {reason}")]
    InvalidHolder {
        /// The first characters of the holder id.
        holder: String,
        /// Why it was refused.
        reason: String,
    },

    /// A lease TTL or stale-run age beyond [`MAX_DURATION`](crate::MAX_DURATION).
    #[error("{what} of {value:?} is out of range (at most {max:?})")]
    DurationOutOfRange {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The largest accepted.
        max: Duration,
    },

    /// A file system operation of the file store failed.
    #[cfg(feature = "file")]
    #[error("{operation} {} failed: {source}", path.display())]
    Io {
        /// What was being done (`"read"`, `"rename"`, `"lock"`, ...).
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A state file is torn or corrupt: it is never read as "no watermark".
    ///
    /// The file is left as it is for a person to inspect; every operation on
    /// the table fails until it is repaired or removed.
    #[cfg(feature = "file")]
    #[error("corrupt watermark file {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The PostgreSQL schema name cannot be used.
    #[cfg(feature = "postgres")]
    #[error("invalid PostgreSQL schema name {name:?}: {reason}")]
    InvalidSchemaName {
        /// The first characters of the name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The connection URL does not parse.
    #[cfg(feature = "postgres")]
    #[error("invalid PostgreSQL URL {url}: {source}")]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        /// The parser's complaint.
        #[source]
        source: sqlx::Error,
    },

    /// The first connection failed (unreachable server, unknown database or
    /// role, refused credentials, ...).
    #[cfg(feature = "postgres")]
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The URL with its password replaced by `***`.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The first connection did not complete within the connect timeout.
    #[cfg(feature = "postgres")]
    #[error("connecting to PostgreSQL at {url} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The URL with its password replaced by `***`.
        url: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },

    /// A statement failed.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL {operation} failed: {source}")]
    Database {
        /// What the store was doing (`"load"`, `"compare_and_set"`, ...).
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The schema was migrated by a newer version of this crate.
    #[cfg(feature = "postgres")]
    #[error(
        "PostgreSQL schema {schema:?} is at version {found}, newer than version {supported} this build knows: upgrade the engine"
    )]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// Version found in the database.
        found: i32,
        /// Newest version this build can use.
        supported: i32,
    },

    /// A stored row holds a value the store never writes (edited by hand?).
    #[error("stored state of table {table:?} is invalid: {reason}")]
    InvalidStoredState {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },

    /// An operation kept racing with others and gave up; trying again is safe.
    #[error(
        "{operation} on table {table:?} kept racing with concurrent updates; gave up after {attempts} attempts"
    )]
    Contention {
        /// The operation.
        operation: &'static str,
        /// The table.
        table: String,
        /// How many times it was tried.
        attempts: u32,
    },

    /// A background task running a blocking operation panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether the same call may succeed if tried again after a pause
    /// (connection loss, timeouts, lock contention, a full disk); `false` for
    /// bad input, corruption, missing databases, refused credentials and bugs.
    ///
    /// ```
    /// use offload_watermark_store::StoreError;
    /// let e = StoreError::Contention { operation: "acquire_lease", table: "t".into(), attempts: 5 };
    /// assert!(e.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::InvalidTableName { .. }
            | StoreError::InvalidHolder { .. }
            | StoreError::DurationOutOfRange { .. }
            | StoreError::InvalidStoredState { .. }
            | StoreError::Task(_) => false,
            StoreError::Contention { .. } => true,
            #[cfg(feature = "file")]
            StoreError::Io { source, .. } => io_retryable(source),
            #[cfg(feature = "file")]
            StoreError::Corrupt { .. } => false,
            #[cfg(feature = "postgres")]
            StoreError::InvalidSchemaName { .. }
            | StoreError::InvalidUrl { .. }
            | StoreError::SchemaTooNew { .. } => false,
            #[cfg(feature = "postgres")]
            StoreError::ConnectTimeout { .. } => true,
            #[cfg(feature = "postgres")]
            StoreError::Connect { source, .. } | StoreError::Database { source, .. } => {
                sqlx_retryable(source)
            }
        }
    }
}

impl From<StoreError> for offload_core::Error {
    fn from(e: StoreError) -> Self {
        let retryable = e.is_retryable();
        offload_core::Error::store(e, retryable)
    }
}

/// Transient file system conditions; everything else (permissions, missing
/// directory, unsupported locking) needs a person.
#[cfg(feature = "file")]
fn io_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        Interrupted | WouldBlock | TimedOut | ResourceBusy | StorageFull | QuotaExceeded
    )
}

/// Classifies a driver error: lost connections, timeouts and the server's
/// transient SQLSTATEs are retryable; authentication, missing objects,
/// constraint violations and decode errors are not.
#[cfg(feature = "postgres")]
pub(crate) fn sqlx_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| sqlstate_retryable(&code)),
        _ => false,
    }
}

/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
#[cfg(feature = "postgres")]
fn sqlstate_retryable(code: &str) -> bool {
    code.starts_with("08") // connection_exception
        || code.starts_with("53") // insufficient_resources (too many connections, disk full)
        || matches!(
            code,
            "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "55P03" // lock_not_available
                | "57014" // query_canceled (statement_timeout)
                | "57P01" // admin_shutdown (backend terminated)
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (starting up)
        )
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in ["08006", "53300", "40001", "40P01", "57P01", "57014"] {
            assert!(sqlstate_retryable(code), "{code}");
        }
        for code in ["28P01", "28000", "3D000", "42P01", "23505", "22021", "XX000"] {
            assert!(!sqlstate_retryable(code), "{code}");
        }
    }
}
