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

    /// The URL asks for TLS (`sslmode=require`, `verify-ca` or `verify-full`)
    /// and this build has none: it never falls back to plaintext.
    #[cfg(feature = "postgres")]
    #[error(
        "PostgreSQL URL {url} asks for TLS (sslmode={sslmode}), but offload-watermark-store was built \
         without its `rustls` feature: rebuild with it (the `offload` program has it by default)"
    )]
    TlsUnavailable {
        /// The URL with its password replaced by `***`.
        url: String,
        /// The `sslmode` asked for.
        sslmode: &'static str,
    },

    /// The TLS handshake failed: the server's certificate is not trusted or
    /// not valid for the host, or the server does not speak TLS.
    #[cfg(feature = "postgres")]
    #[error("TLS to PostgreSQL at {url} failed: {reason}")]
    Tls {
        /// The URL with its password replaced by `***`.
        url: String,
        /// What failed, and what to change (e.g. set `sslrootcert`).
        reason: String,
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

    /// An operation lost a race with a concurrent update that left its answer
    /// undecided (a lease released or expired between the claim and the
    /// look at who holds it, a watermark changed and changed back): nothing
    /// was changed, and trying again is safe. The store does not retry
    /// itself; the caller's retry policy (`offload_core::layer::Retry`) does.
    #[error("{operation} on table {table:?} lost a race with a concurrent update; trying again is safe")]
    Contention {
        /// The operation.
        operation: &'static str,
        /// The table.
        table: String,
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
    /// let e = StoreError::Contention { operation: "acquire_lease", table: "t".into() };
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
            | StoreError::TlsUnavailable { .. }
            // A certificate that is not trusted today is not trusted in a minute.
            | StoreError::Tls { .. }
            | StoreError::SchemaTooNew { .. } => false,
            #[cfg(feature = "postgres")]
            StoreError::ConnectTimeout { .. } => true,
            #[cfg(feature = "postgres")]
            StoreError::Connect { source, .. } | StoreError::Database { source, .. } => {
                offload_core::sql::sqlx_retryable(source)
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
