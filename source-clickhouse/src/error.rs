//! [`ClickHouseError`]: everything this crate can fail with, classified.

use std::time::Duration;

/// An error from the ClickHouse source.
///
/// Every variant answers two questions the engine asks:
/// [`is_retryable`](Self::is_retryable) (may the same call succeed after a
/// pause?) and [`code`](Self::code) (the ClickHouse error code, when the
/// server reported one). It converts into [`offload_core::Error::Source`]
/// with `retryable` set accordingly; callers can `downcast_ref` the boxed
/// source back to this type.
///
/// ```
/// use offload_source_clickhouse::ClickHouseError;
///
/// let e = ClickHouseError::from_server_message(
///     "Code: 241. DB::Exception: Query memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)",
/// );
/// assert_eq!(e.code(), Some(241));
/// assert!(e.is_retryable());
///
/// let core: offload_core::Error = e.into();
/// assert!(core.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClickHouseError {
    /// A configuration value was refused before anything was sent.
    #[error("invalid ClickHouse source configuration: {field}: {reason}")]
    InvalidConfig {
        /// The offending setting.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A table or column name was refused before it reached any SQL text.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidIdentifier {
        /// What the name was for (`"table"`, `"column"`, ...).
        what: &'static str,
        /// The first characters of the name.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// `system.columns` lists no columns for the table: it does not exist
    /// (or the user may not see it).
    #[error("table {database}.{table} not found (no columns in system.columns)")]
    TableNotFound {
        /// The database that was searched (`currentDatabase()` when not configured).
        database: String,
        /// The table name.
        table: String,
    },

    /// A configured column (watermark or selected) is not a column of the table.
    #[error("table {table} has no column {column:?}")]
    ColumnNotFound {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
    },

    /// A column's ClickHouse type has no mapping to Arrow (JSON, Dynamic,
    /// Variant, AggregateFunction, geo types, ...). Never silently dropped:
    /// exclude the column with `TableConfig::columns` or cast it in a view.
    #[error("column {column:?} has unsupported type {type_name}: {reason}")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its full ClickHouse type.
        type_name: String,
        /// What is unsupported and why.
        reason: String,
    },

    /// The timestamp or sequence column has a type that cannot order rows.
    #[error("column {column:?} (type {type_name}) cannot be the {role} column: {reason}")]
    InvalidWatermarkColumn {
        /// The column.
        column: String,
        /// `"timestamp"` or `"sequence"`.
        role: &'static str,
        /// Its ClickHouse type.
        type_name: String,
        /// What is required instead.
        reason: String,
    },

    /// The table's sequence is derived from key columns
    /// ([`ClickHouseTableOptions::key_columns`](crate::ClickHouseTableOptions::key_columns)),
    /// but the name configured for it (`TableConfig::sequence_column`) is
    /// already a column of the table: the derived column would shadow it.
    #[error(
        "table {table} already has a column {column:?}: a sequence derived from key columns needs a \
         sequence_column name that is not a column of the table"
    )]
    DerivedSequenceClash {
        /// The table.
        table: String,
        /// The configured sequence column name.
        column: String,
    },

    /// A value does not fit the column's documented Arrow type (for example an
    /// `Int256` beyond `Decimal(38, 0)`, or a `UInt64` above `i64::MAX` when
    /// mapped to `Int64`).
    #[error("column {column:?}: value {value} does not fit {target}")]
    ValueOutOfRange {
        /// The column.
        column: String,
        /// The value, as text.
        value: String,
        /// The Arrow type it had to fit.
        target: String,
    },

    /// A `String` column holds bytes that are not UTF-8, so it cannot become an
    /// Arrow `Utf8` value without changing the data.
    #[error("column {column:?} holds a String value that is not valid UTF-8: {detail}")]
    InvalidUtf8 {
        /// The column.
        column: String,
        /// Where the invalid bytes are.
        detail: String,
    },

    /// The server reported an exception (`Code: N. DB::Exception: ...`),
    /// before or in the middle of a response.
    #[error("ClickHouse error {code}{}: {message}", name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Server {
        /// The ClickHouse error code, e.g. 60 for `UNKNOWN_TABLE`.
        code: i32,
        /// The symbolic name, e.g. `UNKNOWN_TABLE`, when the message carried it.
        name: Option<String>,
        /// The server's message.
        message: String,
    },

    /// An HTTP-level failure without a ClickHouse exception (e.g. `502 Bad Gateway`).
    #[error("HTTP error {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The response text.
        message: String,
    },

    /// The connection failed or broke (refused, reset, closed mid-stream).
    #[error("ClickHouse transport error: {0}")]
    Transport(#[source] clickhouse::error::Error),

    /// The TLS handshake with the server failed (its certificate is not
    /// trusted or not valid for the URL's host). Not transient: the CA file
    /// or the URL must change.
    #[error("TLS to ClickHouse{} failed: {reason}", at.as_deref().map(|u| format!(" at {u}")).unwrap_or_default())]
    Tls {
        /// The server's URL (password redacted), when the caller knows it.
        at: Option<String>,
        /// What failed, and what to change.
        reason: String,
    },

    /// A window's response made no progress within the configured
    /// `stream_idle_timeout`.
    #[error("ClickHouse {what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The configured limit.
        after: Duration,
    },

    /// The response body ended before the ArrowStream end-of-stream marker:
    /// the stream was cut short and rows may be missing.
    #[error("ArrowStream response ended early after {bytes} bytes (no end-of-stream marker)")]
    Truncated {
        /// Bytes received before the end.
        bytes: u64,
    },

    /// The ArrowStream could not be decoded, or a column arrived in a shape
    /// this crate does not expect for its ClickHouse type.
    #[error("cannot decode the ArrowStream response: {reason}")]
    Decode {
        /// What went wrong.
        reason: String,
    },

    /// The client library failed in a way that is neither a server error nor
    /// a transport error (bad parameters, unexpected metadata rows, ...).
    #[error("ClickHouse client error: {0}")]
    Client(#[source] clickhouse::error::Error),
}

/// Codes that describe a transient condition: overload, timeouts, network
/// trouble, cancellation. Everything else (unknown table, syntax, types,
/// access) will fail the same way on a retry, so it is not listed.
const RETRYABLE_CODES: &[i32] = &[
    3,    // UNEXPECTED_END_OF_FILE
    32,   // ATTEMPT_TO_READ_AFTER_EOF
    159,  // TIMEOUT_EXCEEDED
    160,  // TOO_SLOW
    164,  // READONLY: a replica in read-only mode recovers
    198,  // DNS_ERROR
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    236,  // ABORTED
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    252,  // TOO_MANY_PARTS
    279,  // ALL_CONNECTION_TRIES_FAILED
    285,  // TOO_FEW_LIVE_REPLICAS
    319,  // UNKNOWN_STATUS_OF_INSERT
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION (network layer)
];

impl ClickHouseError {
    /// Whether the same call may succeed if tried again after a pause.
    ///
    /// Retryable: server codes for overload, memory limits, timeouts,
    /// network trouble and cancellation (3, 32, 159, 160, 164, 198, 202, 203,
    /// 209, 210, 236, 241, 242, 252, 279, 285, 319, 394, 425, 439, 999, 1000),
    /// HTTP 5xx without a code, transport failures, timeouts and truncated
    /// streams. Everything else — unknown tables and columns, syntax and type
    /// errors, unsupported types, out-of-range values, configuration — fails
    /// the same way again and is not retryable.
    ///
    /// ```
    /// use offload_source_clickhouse::ClickHouseError;
    /// let unknown_table = ClickHouseError::from_server_message(
    ///     "Code: 60. DB::Exception: Table default.nope does not exist. (UNKNOWN_TABLE)",
    /// );
    /// assert!(!unknown_table.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            ClickHouseError::Server { code, .. } => RETRYABLE_CODES.contains(code),
            ClickHouseError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            ClickHouseError::Transport(_)
            | ClickHouseError::Timeout { .. }
            | ClickHouseError::Truncated { .. } => true,
            _ => false,
        }
    }

    /// The ClickHouse error code, when the server reported one.
    ///
    /// ```
    /// use offload_source_clickhouse::ClickHouseError;
    /// let e = ClickHouseError::from_server_message("Code: 62. DB::Exception: Syntax error");
    /// assert_eq!(e.code(), Some(62));
    /// ```
    pub fn code(&self) -> Option<i32> {
        match self {
            ClickHouseError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Classifies an error text from the server.
    ///
    /// Parses `Code: N. DB::Exception: ... (NAME)` into [`Server`](Self::Server),
    /// a bare HTTP status line (`"503 Service Unavailable"`, which the client
    /// reports when the body was empty) into [`Http`](Self::Http), and
    /// anything else into `Http` with status 500.
    pub fn from_server_message(message: &str) -> Self {
        let message = message.trim();
        if let Some(code) = parse_code(message) {
            return ClickHouseError::Server {
                code,
                name: parse_name(message),
                message: message.to_owned(),
            };
        }
        let status = message
            .get(..3)
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        ClickHouseError::Http {
            status,
            message: message.to_owned(),
        }
    }

    /// Classifies an error from the `clickhouse` crate.
    pub(crate) fn from_client(err: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        // A refused certificate is a network error to the client, but
        // retrying cannot help: said as what it is.
        #[cfg(feature = "rustls")]
        if let Some(reason) = crate::tls::failure(&err) {
            return ClickHouseError::Tls { at: None, reason };
        }
        match err {
            E::BadResponse(msg) => Self::from_server_message(&msg),
            // Network: refused, reset, closed mid-body. Decompression: a body
            // cut or garbled in transit. TimedOut: the client's own timer.
            e @ (E::Network(_) | E::Decompression(_) | E::TimedOut) => ClickHouseError::Transport(e),
            E::Other(inner) => match inner.downcast::<std::io::Error>() {
                Ok(io) => ClickHouseError::Transport(E::Other(io)),
                Err(inner) => ClickHouseError::Client(E::Other(inner)),
            },
            e => ClickHouseError::Client(e),
        }
    }
}

impl From<clickhouse::error::Error> for ClickHouseError {
    fn from(err: clickhouse::error::Error) -> Self {
        Self::from_client(err)
    }
}

impl From<ClickHouseError> for offload_core::Error {
    fn from(err: ClickHouseError) -> Self {
        let retryable = err.is_retryable();
        offload_core::Error::source(err, retryable)
    }
}

/// `Code: 60.` anywhere in the text (chdb and proxies may prefix it).
fn parse_code(message: &str) -> Option<i32> {
    let start = message.find("Code: ")? + "Code: ".len();
    let digits: String = message[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The last `(UPPER_CASE_NAME)` in the text: ClickHouse ends its messages
/// with the error name, optionally followed by `(version ...)`.
fn parse_name(message: &str) -> Option<String> {
    let mut rest = message;
    let mut found = None;
    while let Some(open) = rest.find('(') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(')') else { break };
        let inner = &after[..close];
        if inner.len() >= 3
            && inner
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && inner.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        {
            found = Some(inner.to_owned());
        }
        rest = after;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_parsed() {
        let e = ClickHouseError::from_server_message(
            "Code: 60. DB::Exception: Table default.t does not exist. (UNKNOWN_TABLE) (version 26.9.2.1 (official build))",
        );
        match &e {
            ClickHouseError::Server { code, name, .. } => {
                assert_eq!(*code, 60);
                assert_eq!(name.as_deref(), Some("UNKNOWN_TABLE"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("(UNKNOWN_TABLE)"), "{e}");

        let prefixed =
            ClickHouseError::from_server_message("[Streaming query failed: ]Code: 394. DB::Exception: x");
        assert_eq!(prefixed.code(), Some(394));
        assert!(prefixed.is_retryable());
    }

    #[test]
    fn classification_table() {
        for (code, retryable) in [
            (3, true),
            (47, false),
            (53, false),
            (60, false),
            (62, false),
            (159, true),
            (202, true),
            (209, true),
            (210, true),
            (241, true),
            (386, false),
            (394, true),
            (395, false),
            (497, false),
            (516, false),
        ] {
            let e = ClickHouseError::from_server_message(&format!("Code: {code}. DB::Exception: x"));
            assert_eq!(e.code(), Some(code));
            assert_eq!(e.is_retryable(), retryable, "code {code}");
            let core: offload_core::Error = e.into();
            assert_eq!(core.is_retryable(), retryable, "code {code}");
        }
    }

    #[test]
    fn http_statuses() {
        let e = ClickHouseError::from_server_message("503 Service Unavailable");
        assert!(matches!(e, ClickHouseError::Http { status: 503, .. }));
        assert!(e.is_retryable());
        let e = ClickHouseError::from_server_message("404 Not Found");
        assert!(!e.is_retryable());
        assert_eq!(e.code(), None);
        let e = ClickHouseError::from_server_message("garbage");
        assert!(matches!(e, ClickHouseError::Http { status: 500, .. }));
    }

    #[test]
    fn client_errors_are_classified() {
        use clickhouse::error::Error as E;
        let net = ClickHouseError::from(E::Network("reset".into()));
        assert!(net.is_retryable());
        let io = ClickHouseError::from(E::Other(Box::new(std::io::Error::other("reset"))));
        assert!(matches!(io, ClickHouseError::Transport(_)), "{io:?}");
        let bad = ClickHouseError::from(E::BadResponse("Code: 62. DB::Exception: Syntax error".into()));
        assert_eq!(bad.code(), Some(62));
        let fmt = ClickHouseError::from(E::NotEnoughData);
        assert!(!fmt.is_retryable());
    }

    #[test]
    fn downcast_through_core_error() {
        let core: offload_core::Error = ClickHouseError::ColumnNotFound {
            table: "t".into(),
            column: "c".into(),
        }
        .into();
        let offload_core::Error::Source { source, retryable } = &core else {
            panic!("{core:?}")
        };
        assert!(!retryable);
        assert!(matches!(
            source.downcast_ref::<ClickHouseError>(),
            Some(ClickHouseError::ColumnNotFound { .. })
        ));
    }
}
