//! The crate's one error type.

use std::time::Duration;

/// Everything that can stop a reconciliation. A failure inside one table is
/// reported as that table's `error` verdict; these errors surface from
/// configuration and from the layer clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// A ClickHouse request failed.
    #[error("ClickHouse: {context}: {source}")]
    ClickHouse {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: Box<clickhouse::error::Error>,
    },

    /// Listing a ClickHouse table's columns failed (the table does not exist,
    /// or the request failed), as the ClickHouse source reports it.
    #[error("ClickHouse: columns of {table}: {source}")]
    Columns {
        /// The table as given.
        table: String,
        /// The source's error.
        #[source]
        source: Box<offload_source_clickhouse::ClickHouseError>,
    },

    /// An Iceberg catalog, metadata or data read failed.
    #[error("Iceberg: {context}: {source}")]
    Iceberg {
        /// What was being done.
        context: String,
        /// The iceberg crate's error.
        #[source]
        source: Box<iceberg::Error>,
    },

    /// A Kafka client call failed.
    #[cfg(feature = "kafka")]
    #[error("Kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The rdkafka error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },

    /// The broker cannot do what was asked (for example it does not answer
    /// `offsets_for_times` lookups, as librdkafka's mock cluster).
    #[error("Kafka broker unsupported: {reason}")]
    KafkaUnsupported {
        /// What is missing.
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What.
        what: String,
        /// The limit.
        after: Duration,
    },

    /// Something kept changing while it was being read (e.g. offloads kept
    /// committing while the Iceberg table was loaded).
    #[error("{what} kept changing while being read; try again")]
    Unstable {
        /// What.
        what: String,
    },

    /// A layer answered with text this crate could not read.
    #[error("cannot parse {what} from {text:?}: {reason}")]
    Parse {
        /// What was expected.
        what: &'static str,
        /// The text (truncated).
        text: String,
        /// Why.
        reason: String,
    },

    /// A column is absent from a layer.
    #[error("column {column:?} not found in {layer} table {table}")]
    MissingColumn {
        /// The layer.
        layer: &'static str,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },

    /// A column's type cannot play the role asked of it.
    #[error("column {column:?} ({type_name}) cannot be used as {role}: {reason}")]
    UnsupportedColumn {
        /// The column.
        column: String,
        /// Its type in the layer that refused it.
        type_name: String,
        /// timestamp, sequence, content or sum.
        role: &'static str,
        /// Why.
        reason: String,
    },

    /// An exact sum no longer fits in an `i128`.
    #[error("the exact sum of {column:?} overflows i128")]
    SumOverflow {
        /// The column.
        column: String,
    },

    /// Reading the sink's committed watermark failed.
    #[error("reading the committed watermark: {0}")]
    Sink(#[source] Box<offload_core::Error>),

    /// A background task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    /// The process exit status when a reconciliation cannot even start (bad
    /// configuration, unreachable catalog): 2, as for the `error` verdict.
    ///
    /// ```
    /// let e = offload_reconcile::parse_instant("yesterday").unwrap_err();
    /// assert_eq!(e.exit_code(), 2);
    /// ```
    pub fn exit_code(&self) -> i32 {
        crate::Verdict::Error.exit_code()
    }

    pub(crate) fn clickhouse(context: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> Error {
        let context = context.into();
        move |source| Error::ClickHouse {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn iceberg(context: impl Into<String>) -> impl FnOnce(iceberg::Error) -> Error {
        let context = context.into();
        move |source| Error::Iceberg {
            context,
            source: Box::new(source),
        }
    }

    #[cfg(feature = "kafka")]
    pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        let context = context.into();
        move |source| Error::Kafka {
            context,
            source: Box::new(source),
        }
    }
}
