//! The crate's error type and its classification for the engine.

use std::time::Duration;

use offload_core::sql::sqlx_retryable;

/// Everything the Iceberg sink can fail with, classified by [`is_retryable`](Self::is_retryable).
///
/// The fence and in-doubt outcomes are *not* here: [`IcebergStaged::commit`](crate::IcebergStaged)
/// returns `offload_core::Error::CommitConflict` and `offload_core::Error::CommitOutcomeUnknown`
/// directly, because the engine matches on those variants.
///
/// ```
/// use offload_sink_iceberg::IcebergSinkError;
/// let e = IcebergSinkError::IncompatibleSchema {
///     column: "price".into(),
///     reason: "decimal(18,8) cannot be written to long".into(),
/// };
/// assert!(!e.is_retryable());
/// assert!(e.to_string().contains("price"));
/// let core: offload_core::Error = e.into();
/// assert_eq!(core.kind(), "sink");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IcebergSinkError {
    /// A configuration value is invalid; nothing was attempted.
    #[error("invalid iceberg sink configuration: {field}: {reason}")]
    Config {
        /// The offending setting.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The sink table name cannot be turned into an Iceberg identifier.
    #[error("invalid sink table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name as configured.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A source column has an Arrow type with no faithful Iceberg counterpart.
    #[error("column {column:?}: Arrow type {data_type} is not supported by the Iceberg sink: {reason}")]
    UnsupportedType {
        /// The column path (`a.b` for nested fields).
        column: String,
        /// The Arrow type, as text.
        data_type: String,
        /// What to do instead.
        reason: String,
    },

    /// The source schema cannot be written to the existing table without losing
    /// or corrupting data (type change, nullable into required, dropped required column).
    #[error("column {column:?} is incompatible with the existing Iceberg table: {reason}")]
    IncompatibleSchema {
        /// The column path (`a.b` for nested fields).
        column: String,
        /// What differs.
        reason: String,
    },

    /// A column needed for partitioning or ordering is missing from the schema.
    #[error(
        "column {column:?} is required by the table configuration ({purpose}) but is not in the source schema"
    )]
    MissingColumn {
        /// The missing column.
        column: String,
        /// What needed it.
        purpose: &'static str,
    },

    /// An Iceberg operation (catalog, metadata, writer) failed.
    #[error("{context}: {source}")]
    Iceberg {
        /// What the sink was doing.
        context: String,
        /// The iceberg-rust error (boxed: it carries a backtrace).
        #[source]
        source: Box<iceberg::Error>,
    },

    /// An Arrow conversion (cast, batch assembly) failed.
    #[error("{context}: {source}")]
    Arrow {
        /// What the sink was doing.
        context: String,
        /// The Arrow error.
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// Local file-system access failed (orphan cleanup, catalog file creation).
    #[error("{context}: {source}")]
    Io {
        /// What the sink was doing, usually with the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A SQL catalog database operation failed outside the catalog crate.
    #[error("{context}: {source}")]
    Sql {
        /// What the sink was doing.
        context: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },

    /// An operation did not finish in time. Retryable: nothing was committed
    /// (commits that time out after sending are reported as unknown outcomes instead).
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The limit that was hit.
        after: Duration,
    },

    /// The background Parquet writer stopped unexpectedly (panic, cancellation,
    /// or rows lost between the queue and the files): a bug, not retried.
    #[error("background parquet writer failed: {reason}")]
    WriterTask {
        /// What happened.
        reason: String,
    },

    /// A staging was committed under another run's metadata: the commit
    /// metadata's run id must be the run that staged the files.
    #[error("staged by run {staged} but committed as run {committed}")]
    RunMismatch {
        /// The run that staged the files.
        staged: String,
        /// The run id in the commit metadata.
        committed: String,
    },

    /// Another writer changed the table's schema while this one planned its
    /// own schema change, so the change was refused. Retryable: the next
    /// attempt plans against the new schema (the `Retry` layer around
    /// `prepare` makes it).
    #[error("the schema of {table} changed concurrently: {source}")]
    ConcurrentSchemaChange {
        /// The table.
        table: String,
        /// The refusal.
        #[source]
        source: Box<iceberg::Error>,
    },

    /// The catalog acknowledged a commit that a fresh read does not show.
    /// Nothing was committed; trying again is safe.
    #[error("catalog acknowledged the commit of run {run_id} but the table does not show it")]
    CommitNotVisible {
        /// The run.
        run_id: String,
    },

    /// `discard` was asked to delete files of a run whose commit is part of the table.
    /// Refused: deleting them would lose committed rows.
    #[error("refusing to delete the staged files of run {run_id}: its commit is part of the table")]
    DiscardOfCommittedRun {
        /// The run.
        run_id: String,
    },

    /// A table property or snapshot summary written by this sink holds text
    /// that does not parse (edited by hand or by another tool).
    #[error("table marker {key} = {value:?} does not parse: {reason}")]
    InvalidMarker {
        /// The property or summary key.
        key: String,
        /// Its value (first characters).
        value: String,
        /// What was expected.
        reason: String,
    },

    /// A repair commit claims a committed watermark its base version does not
    /// record (the caller read another table, or mixed up versions). Nothing
    /// was committed; not retryable.
    #[error(
        "repair of {table} claims the committed watermark {claimed}, but snapshot {version} records {found:?}"
    )]
    RepairWatermarkMismatch {
        /// The table.
        table: String,
        /// The base version (main's snapshot id).
        version: String,
        /// The watermark the repair metadata carries.
        claimed: offload_core::Watermark,
        /// The watermark the base version records.
        found: Option<offload_core::Watermark>,
    },

    /// A key column (timestamp or sequence) read back from the table has a
    /// type or value that cannot be a position (`(µs, u64)`).
    #[error("column {column:?} of {table} cannot be read as a position: {reason}")]
    KeyColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What is wrong (its type, a NULL, a negative sequence).
        reason: String,
    },

    /// `cleanup` cannot list files at this location (object storage without a lister).
    #[error("orphan cleanup is not supported for table location {location:?}: {reason}")]
    CleanupUnsupported {
        /// The table location.
        location: String,
        /// Why.
        reason: String,
    },

    /// A maintenance replace commit lost to a concurrent change it cannot be
    /// rebuilt on (the files it replaces are no longer live), or kept losing
    /// races. Nothing was applied; the next `maintain` plans again.
    #[error("maintenance of {table} gave up its replace commit: {reason}")]
    ReplaceConflict {
        /// The table.
        table: String,
        /// What changed underneath.
        reason: String,
    },

    /// A maintenance replace commit was handed to the catalog and the reply
    /// was lost; reading the table back did not show it either. Its files are
    /// kept (it may still land); orphan cleanup removes them if it did not.
    #[error("maintenance commit of snapshot {snapshot_id} to {table} has an unknown outcome: {reason}")]
    ReplaceOutcomeUnknown {
        /// The table.
        table: String,
        /// The snapshot the commit would have added.
        snapshot_id: i64,
        /// What interrupted it.
        reason: String,
    },

    /// Maintenance cannot run on this table or catalog.
    #[error("maintenance is not supported for {table}: {reason}")]
    MaintenanceUnsupported {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },

    /// A compaction read or wrote another number of rows than the files it
    /// replaces hold: a bug or a corrupt input. Nothing was committed and its
    /// outputs were deleted; not retried.
    #[error(
        "compaction of {table} partition {partition} would replace {expected} rows with {written}; nothing was committed"
    )]
    CompactionRowMismatch {
        /// The table.
        table: String,
        /// The partition (its path, `ts_day=2024-03-01`).
        partition: String,
        /// Rows in the replaced files (their record counts).
        expected: u64,
        /// Rows read or written (whichever differed).
        written: u64,
    },
}

impl IcebergSinkError {
    /// Whether the same call may succeed if tried again after a pause.
    ///
    /// Retryable: catalog commit conflicts that are not fence conflicts (the base
    /// moved), a schema change refused because another writer changed the
    /// schema, lock contention (`SQLITE_BUSY`, PostgreSQL serialization
    /// failures; one classification: `offload_core::sql::sqlx_retryable`),
    /// connection and I/O errors, timeouts, a commit the catalog acknowledged
    /// but does not show. Not retryable: configuration, schema and
    /// type errors, data that cannot be cast.
    ///
    /// ```
    /// use std::time::Duration;
    /// use offload_sink_iceberg::IcebergSinkError;
    /// assert!(IcebergSinkError::Timeout { operation: "load table", after: Duration::from_secs(1) }.is_retryable());
    /// assert!(!IcebergSinkError::Config { field: "zstd_level", reason: "x".into() }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            IcebergSinkError::Iceberg { source, .. } => iceberg_retryable(source),
            IcebergSinkError::Io { .. }
            | IcebergSinkError::Timeout { .. }
            | IcebergSinkError::ConcurrentSchemaChange { .. }
            | IcebergSinkError::CommitNotVisible { .. }
            | IcebergSinkError::ReplaceConflict { .. }
            | IcebergSinkError::ReplaceOutcomeUnknown { .. } => true,
            IcebergSinkError::Sql { source, .. } => sqlx_retryable(source),
            IcebergSinkError::Config { .. }
            | IcebergSinkError::WriterTask { .. }
            | IcebergSinkError::InvalidTableName { .. }
            | IcebergSinkError::UnsupportedType { .. }
            | IcebergSinkError::IncompatibleSchema { .. }
            | IcebergSinkError::MissingColumn { .. }
            | IcebergSinkError::Arrow { .. }
            | IcebergSinkError::RunMismatch { .. }
            | IcebergSinkError::DiscardOfCommittedRun { .. }
            | IcebergSinkError::InvalidMarker { .. }
            | IcebergSinkError::RepairWatermarkMismatch { .. }
            | IcebergSinkError::KeyColumn { .. }
            | IcebergSinkError::CleanupUnsupported { .. }
            | IcebergSinkError::MaintenanceUnsupported { .. }
            | IcebergSinkError::CompactionRowMismatch { .. } => false,
        }
    }

    pub(crate) fn iceberg(context: impl Into<String>, source: iceberg::Error) -> Self {
        IcebergSinkError::Iceberg {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn arrow(context: impl Into<String>, source: arrow_schema::ArrowError) -> Self {
        IcebergSinkError::Arrow {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        IcebergSinkError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<IcebergSinkError> for offload_core::Error {
    fn from(e: IcebergSinkError) -> Self {
        let retryable = e.is_retryable();
        offload_core::Error::sink(e, retryable)
    }
}

/// iceberg-rust marks few errors retryable itself; the SQL catalog wraps every
/// driver error as `Unexpected`, so look at the source chain for the causes
/// that are worth another attempt.
pub(crate) fn iceberg_retryable(e: &iceberg::Error) -> bool {
    if e.retryable() || e.kind() == iceberg::ErrorKind::CatalogCommitConflicts {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(sql) = c.downcast_ref::<sqlx::Error>() {
            return sqlx_retryable(sql);
        }
        if c.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        cause = c.source();
    }
    // Local-FS storage reports I/O failures as Unexpected without a source;
    // the message is all we have.
    let msg = e.message();
    e.kind() == iceberg::ErrorKind::Unexpected
        && (msg.starts_with("Failed to write") || msg.starts_with("Failed to create"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_and_io_are_retryable_data_errors_are_not() {
        let conflict = iceberg::Error::new(iceberg::ErrorKind::CatalogCommitConflicts, "moved");
        assert!(IcebergSinkError::iceberg("commit", conflict).is_retryable());
        let io = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "sqlx")
            .with_source(sqlx::Error::Io(std::io::Error::other("reset")));
        assert!(IcebergSinkError::iceberg("load", io).is_retryable());
        let bad = iceberg::Error::new(iceberg::ErrorKind::DataInvalid, "bad schema");
        assert!(!IcebergSinkError::iceberg("create", bad).is_retryable());
        let busy = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "sqlx")
            .with_source(sqlx::Error::PoolTimedOut);
        assert!(IcebergSinkError::iceberg("load", busy).is_retryable());
        let gone =
            iceberg::Error::new(iceberg::ErrorKind::Unexpected, "sqlx").with_source(sqlx::Error::RowNotFound);
        assert!(!IcebergSinkError::iceberg("load", gone).is_retryable());
    }

    #[test]
    fn converts_into_core_sink_error_keeping_the_type() {
        let e: offload_core::Error = IcebergSinkError::Timeout {
            operation: "x",
            after: Duration::from_secs(1),
        }
        .into();
        assert!(e.is_retryable());
        match e {
            offload_core::Error::Sink { source, .. } => {
                assert!(source.downcast_ref::<IcebergSinkError>().is_some())
            }
            other => panic!("{other:?}"),
        }
    }
}
