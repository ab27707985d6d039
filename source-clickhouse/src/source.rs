//! [`ClickHouseSource`]: the `offload_core::Source` implementation, its
//! builder, and the per-table options.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clickhouse::Client;
use offload_core::redact::{redact_opt, redact_url};
use offload_core::{Error, Source, SourceTable, TableConfig};

use crate::ClickHouseError;
use crate::compression::Compression;
use crate::ident::{validate_filter, validate_identifier};
use crate::table::ClickHouseTable;
use crate::types::{MappingOptions, SubMicrosecond, UInt64Mapping};

/// Settings this crate sets on every window query so that the ArrowStream it
/// decodes has a known shape. Users may not override them.
pub(crate) const ARROW_SETTINGS: &[(&str, &str)] = &[
    // Strings are bytes in ClickHouse: receive Binary and validate UTF-8 per
    // column, so an invalid value is reported with its column's name.
    ("output_format_arrow_string_as_string", "0"),
    ("output_format_arrow_low_cardinality_as_dictionary", "0"),
    ("output_format_arrow_fixed_string_as_fixed_byte_array", "1"),
    // The HTTP body is compressed when it crosses a network (LZ4, see
    // `Compression::Auto`); compressing the IPC buffers as well would only
    // cost CPU on both ends.
    ("output_format_arrow_compression_method", "none"),
];

/// Settings that decide the size of the blocks ClickHouse sends. Each
/// window query sets both to ask for blocks of exactly the table's batch size
/// ([`ClickHouseTable::window_settings`]) unless the user set either with
/// [`ClickHouseSourceBuilder::setting`]: then the user's block sizing stands
/// alone, not mixed with half of ours.
pub(crate) const BLOCK_SETTINGS: [&str; 2] = ["max_block_size", "preferred_block_size_bytes"];

/// URL parameters the HTTP interface interprets itself, or that this crate
/// controls: refused as query settings.
const RESERVED_SETTINGS: &[&str] = &[
    "query",
    "database",
    "default_format",
    "user",
    "password",
    "compress",
    "decompress",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "quota_key",
    "role",
    "buffer_size",
    "wait_end_of_query",
    "stacktrace",
];

/// Options of one table for the ClickHouse source, attached to its
/// [`TableConfig`] with [`TableConfigBuilder::option`](offload_core::TableConfigBuilder::option)
/// and read when the table is [opened](Source::open).
///
/// ```
/// use offload_core::TableConfig;
/// use offload_source_clickhouse::ClickHouseTableOptions;
///
/// let trades = TableConfig::builder("bronze_trades")
///     .timestamp_column("exchange_timestamp")
///     .sequence_column("sequence_number")
///     .option(ClickHouseTableOptions::new().filter("exchange != 'TEST'"))
///     .build()
///     .unwrap();
/// let options = trades.option::<ClickHouseTableOptions>().unwrap();
/// assert_eq!(options.filter_sql(), Some("exchange != 'TEST'"));
/// assert!(options.validate().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct ClickHouseTableOptions {
    filter: Option<String>,
    key_columns: Option<Vec<String>>,
}

impl ClickHouseTableOptions {
    /// No options: every row of the table.
    pub fn new() -> Self {
        Self::default()
    }

    /// An extra `WHERE` condition, applied to windows and to the high
    /// watermark alike.
    ///
    /// The filter is trusted SQL from the operator, not user input. It is
    /// checked lexically when the table is opened (or by
    /// [`validate`](Self::validate)) — balanced parentheses and quotes, no
    /// `;`, no comments — so it cannot escape the `AND (...)` it is wrapped
    /// in. It must depend only on the row (not on `now()` or other tables): a
    /// window must select the same rows whenever it is read.
    pub fn filter(mut self, sql: impl Into<String>) -> Self {
        self.filter = Some(sql.into());
        self
    }

    /// The extra condition, if any.
    pub fn filter_sql(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    /// The table has no sequence column: derive one from these key columns,
    /// which together must be unique per row (see [`crate::derived`]).
    ///
    /// The sequence is computed by ClickHouse
    /// ([`derived::sequence_sql`](crate::derived::sequence_sql)) and appears
    /// as an extra `Int64` column named by `TableConfig::sequence_column`,
    /// which must then *not* be a column of the table.
    ///
    /// ```
    /// use offload_source_clickhouse::ClickHouseTableOptions;
    /// let o = ClickHouseTableOptions::new().key_columns(["symbol", "trade_id"]);
    /// assert_eq!(o.key_columns_list().unwrap(), ["symbol", "trade_id"]);
    /// assert_eq!(
    ///     o.sequence_sql().unwrap(),
    ///     "toInt64(bitShiftRight(sipHash64(`symbol`, `trade_id`), 1))"
    /// );
    /// assert!(o.validate().is_ok());
    /// assert!(ClickHouseTableOptions::new().key_columns(Vec::<String>::new()).validate().is_err());
    /// ```
    pub fn key_columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.key_columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// The key columns of a derived sequence, if set.
    pub fn key_columns_list(&self) -> Option<&[String]> {
        self.key_columns.as_deref()
    }

    /// The SQL of the derived sequence when key columns are set
    /// ([`derived::sequence_sql`](crate::derived::sequence_sql)); `None` for
    /// a table with a real sequence column.
    pub fn sequence_sql(&self) -> Option<String> {
        self.key_columns.as_deref().map(crate::derived::sequence_sql)
    }

    /// The checks [`open`](Source::open) makes, for refusing a bad
    /// configuration before any connection: a filter that could escape its
    /// parentheses is [`ClickHouseError::InvalidConfig`] with field `"filter"`.
    /// Key columns, when set, must be a non-empty list of valid,
    /// distinct names ([`ClickHouseError::InvalidConfig`] with field
    /// `"key_columns"`, or [`ClickHouseError::InvalidIdentifier`]).
    pub fn validate(&self) -> Result<(), ClickHouseError> {
        if let Some(filter) = &self.filter {
            validate_filter(filter)?;
        }
        if let Some(keys) = &self.key_columns {
            if keys.is_empty() {
                return Err(ClickHouseError::InvalidConfig {
                    field: "key_columns",
                    reason: "must name at least one column".into(),
                });
            }
            for (i, key) in keys.iter().enumerate() {
                validate_identifier("key column", key)?;
                if keys[..i].contains(key) {
                    return Err(ClickHouseError::InvalidConfig {
                        field: "key_columns",
                        reason: format!("column {key:?} listed twice"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Builder for [`ClickHouseSource`]; [`build`](Self::build) validates.
///
/// ```
/// use std::time::Duration;
/// use offload_source_clickhouse::ClickHouseSource;
///
/// let source = ClickHouseSource::builder("http://localhost:8123")
///     .user("offload")
///     .password("s3/cret")
///     .database("market")
///     .setting("max_execution_time", "600")
///     .stream_idle_timeout(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// // The password never appears in Debug output.
/// assert!(!format!("{source:?}").contains("s3/cret"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct ClickHouseSourceBuilder {
    url: String,
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
    compression: Compression,
    settings: BTreeMap<String, String>,
    stream_idle_timeout: Duration,
    mapping: MappingOptions,
    tls_ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClickHouseSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSourceBuilder")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &redact_opt(&self.password))
            .field("database", &self.database)
            .field("compression", &self.compression)
            .field("settings", &self.settings)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("mapping", &self.mapping)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl ClickHouseSourceBuilder {
    /// User name (default: the server's `default` user).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Password. Never printed: `Debug` shows `***`.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Database for tables named without one (default: the user's default database).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Response compression (default [`Compression::Auto`]: none when the
    /// URL's host is a loopback address or `localhost`, LZ4 otherwise;
    /// resolved by [`build`](Self::build), see
    /// [`ClickHouseSource::compression`]).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// A ClickHouse setting sent with every query, e.g. `max_execution_time`,
    /// `max_memory_usage`, `max_threads`. Names are validated; protocol
    /// parameters and the `output_format_arrow_*` settings this crate relies
    /// on are refused.
    ///
    /// Window queries ask for blocks of the table's batch size
    /// (`max_block_size = batch_size`, `preferred_block_size_bytes = 0`, see
    /// [`ClickHouseTable::window_settings`]). Setting either of those two here
    /// replaces that: the user's values go to every query and the source sets
    /// neither.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(name.into(), value.into());
        self
    }

    /// Longest wait for the next piece of a window's response, connecting
    /// and the server's time to the first row included (default 60 s). A
    /// window may take any time in total as long as data keeps arriving; bound
    /// the server side with the `max_execution_time` setting.
    ///
    /// This is a transport-level guard against a silent connection. Deadlines
    /// per operation (opening a table, the high watermark, starting a read)
    /// are not set here: wrap the source in `offload_core::layer::Timeout`.
    /// The engine also bounds its wait for the next batch by its lease, so
    /// this timeout cannot keep a run past its lease whatever its value (the
    /// default stays below the engine's default lease of 300 s).
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// For an `https://` URL (feature `rustls`): trust the CA certificate(s)
    /// in this PEM file instead of webpki's roots (Mozilla's list), e.g. a
    /// private CA that signed the server's certificate. Read by
    /// [`build`](Self::build).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// How `UInt64` columns are represented (default [`UInt64Mapping::Decimal`]).
    pub fn uint64_mapping(mut self, mapping: UInt64Mapping) -> Self {
        self.mapping.uint64 = mapping;
        self
    }

    /// What to do with `DateTime64(7..9)` (default [`SubMicrosecond::Truncate`]).
    pub fn sub_microsecond(mut self, policy: SubMicrosecond) -> Self {
        self.mapping.sub_micros = policy;
        self
    }

    /// Validates the configuration and creates the source. Nothing is sent
    /// to the server until the first call.
    pub fn build(self) -> Result<ClickHouseSource, ClickHouseError> {
        let invalid = |field, reason: String| ClickHouseError::InvalidConfig { field, reason };
        let scheme = self.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http") => {}
            Some("https") if cfg!(feature = "rustls") => {}
            Some("https") => {
                return Err(invalid(
                    "url",
                    "https:// needs the `rustls` feature of offload-source-clickhouse".into(),
                ));
            }
            _ => {
                return Err(invalid(
                    "url",
                    format!("{:?} is not an http:// or https:// URL", redact_url(&self.url)),
                ));
            }
        }
        if let Some(db) = &self.database {
            validate_identifier("database", db)?;
        }
        for (name, value) in &self.settings {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid("setting", format!("{name:?} is not a setting name")));
            }
            let lower = name.to_ascii_lowercase();
            if RESERVED_SETTINGS.contains(&lower.as_str()) || lower.starts_with("param_") {
                return Err(invalid(
                    "setting",
                    format!("{name:?} is a protocol parameter, not a setting"),
                ));
            }
            if lower.starts_with("output_format_arrow_") {
                return Err(invalid(
                    "setting",
                    format!("{name:?} is controlled by this crate"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid(
                    "setting",
                    format!("value of {name:?} contains control characters"),
                ));
            }
        }
        if self.stream_idle_timeout.is_zero() {
            return Err(invalid("stream_idle_timeout", "must be positive".into()));
        }

        let compression = self.compression.resolve(&self.url);
        let tune_blocks = !self
            .settings
            .keys()
            .any(|name| BLOCK_SETTINGS.iter().any(|b| name.eq_ignore_ascii_case(b)));
        let mut client =
            client_for(&self.url, self.tls_ca_file.as_deref())?.with_compression(compression.client());
        if let Some(user) = &self.user {
            client = client.with_user(user.clone());
        }
        if let Some(password) = &self.password {
            client = client.with_password(password.clone());
        }
        if let Some(db) = &self.database {
            client = client.with_database(db.clone());
        }
        for (name, value) in &self.settings {
            client = client.with_setting(name.clone(), value.clone());
        }
        Ok(ClickHouseSource {
            client,
            compression,
            tune_blocks,
            config: self,
        })
    }
}

/// A `clickhouse::Client` for `url` that reaches the server the way the
/// source does, for other readers of the same server (the CLI's reconcile):
/// `https://` (feature `rustls`) through rustls with the ring provider,
/// trusting the CA certificate(s) of `tls_ca_file` or else webpki's roots;
/// `http://` through the crate's default client. Only the URL is set: user,
/// password, database and settings are the caller's.
///
/// ```
/// let client = offload_source_clickhouse::client_for("http://127.0.0.1:8123", None).unwrap();
/// # let _ = client;
/// let err = offload_source_clickhouse::client_for("http://h:8123", Some("ca.pem".as_ref())).unwrap_err();
/// assert!(err.to_string().contains("tls_ca_file"));
/// ```
pub fn client_for(url: &str, tls_ca_file: Option<&Path>) -> Result<Client, ClickHouseError> {
    let invalid = |field, reason: &str| ClickHouseError::InvalidConfig {
        field,
        reason: reason.to_owned(),
    };
    let https = url
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"));
    if tls_ca_file.is_some() && !https {
        return Err(invalid(
            "tls_ca_file",
            "is set but the URL is not https://: the connection would not use it",
        ));
    }
    #[cfg(feature = "rustls")]
    if https {
        return Ok(crate::tls::https_client(tls_ca_file)?.with_url(url));
    }
    if https {
        return Err(invalid(
            "url",
            "https:// needs the `rustls` feature of offload-source-clickhouse",
        ));
    }
    Ok(Client::default().with_url(url))
}

/// The Source: reads windows of a ClickHouse table over HTTP as Arrow batches.
///
/// [`open`](Source::open) (or [`open_table`](Self::open_table), which returns
/// the concrete [`ClickHouseTable`]) reads `system.columns` once and maps
/// every column (see the README for the table); it refuses, naming the
/// column, any type it cannot map exactly. The handle then reads the table:
///
/// * [`high_watermark`](SourceTable::high_watermark) is the newest row
///   position whose timestamp is at most `now() - lag` on the **server's** clock.
/// * [`read`](SourceTable::read) sends one query per window, filtered on the
///   `(timestamp, sequence)` pair with a plain timestamp range the primary key
///   can prune on, and streams the `ArrowStream` response in batches of
///   [`TableConfig::batch_size`] rows.
///
/// The source keeps no per-table state: open a fresh handle to see a changed
/// table (the engine does, once per run).
///
/// ```no_run
/// use std::time::Duration;
/// use futures::TryStreamExt;
/// use offload_core::{Source, TableConfig, Watermark, Window};
/// use offload_source_clickhouse::{ClickHouseSource, ClickHouseTableOptions};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let source = ClickHouseSource::builder("http://localhost:8123").database("market").build()?;
/// let trades = TableConfig::builder("bronze_trades")
///     .timestamp_column("exchange_timestamp")
///     .sequence_column("sequence_number")
///     .lag(Duration::from_secs(300))
///     .option(ClickHouseTableOptions::new().filter("exchange != 'TEST'"))
///     .build()?;
/// let table = source.open(&trades).await?;
/// if let Some(high) = table.high_watermark().await? {
///     let window = Window::new(Watermark::MIN, high)?;
///     let mut batches = table.read(window).await?;
///     while let Some(batch) = batches.try_next().await? {
///         assert_eq!(batch.schema(), table.schema());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ClickHouseSource {
    client: Client,
    /// The builder's choice resolved for its URL (never `Auto`).
    compression: Compression,
    /// Whether window queries set [`BLOCK_SETTINGS`] (the user set neither).
    tune_blocks: bool,
    config: ClickHouseSourceBuilder,
}

impl fmt::Debug for ClickHouseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSource")
            .field("compression", &self.compression)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClickHouseSource {
    /// Starts a builder for the server at `url` (`http://host:8123`, or
    /// `https://...` with the `rustls` feature).
    pub fn builder(url: impl Into<String>) -> ClickHouseSourceBuilder {
        ClickHouseSourceBuilder {
            url: url.into(),
            user: None,
            password: None,
            database: None,
            compression: Compression::default(),
            settings: BTreeMap::new(),
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            mapping: MappingOptions::default(),
            tls_ca_file: None,
        }
    }

    /// The wire compression in use: the builder's
    /// [`compression`](ClickHouseSourceBuilder::compression) with
    /// [`Compression::Auto`] resolved for the URL ([`Compression::resolve`]).
    ///
    /// ```
    /// use offload_source_clickhouse::{ClickHouseSource, Compression};
    ///
    /// let local = ClickHouseSource::builder("http://127.0.0.1:8123").build().unwrap();
    /// assert_eq!(local.compression(), Compression::None);
    /// # #[cfg(feature = "lz4")]
    /// # {
    /// let remote = ClickHouseSource::builder("http://clickhouse.internal:8123").build().unwrap();
    /// assert_eq!(remote.compression(), Compression::Lz4);
    /// # }
    /// ```
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The configured client (URL, credentials, database, compression,
    /// settings): for other queries against the same server, e.g.
    /// [`columns::discover`](crate::columns::discover).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// [`Source::open`] with the concrete handle type, for its extra methods
    /// ([`window_sql`](ClickHouseTable::window_sql),
    /// [`decoder`](ClickHouseTable::decoder)) and the crate's own error type.
    pub async fn open_table(&self, table: &TableConfig) -> Result<ClickHouseTable, ClickHouseError> {
        ClickHouseTable::open(
            self.client.clone(),
            self.config.database.as_deref(),
            self.config.mapping,
            self.config.stream_idle_timeout,
            self.tune_blocks,
            table,
        )
        .await
        // The first request of a run: say which server refused the handshake.
        .map_err(|e| match e {
            ClickHouseError::Tls { at: None, reason } => ClickHouseError::Tls {
                at: Some(redact_url(&self.config.url)),
                reason,
            },
            e => e,
        })
    }
}

/// The default of [`ClickHouseSourceBuilder::stream_idle_timeout`]: below the
/// engine's default lease (300 s), so a silent stream fails the read, and is
/// retried, well within the lease.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[async_trait]
impl Source for ClickHouseSource {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        Ok(Arc::new(self.open_table(table).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let ok = || ClickHouseSource::builder("http://localhost:8123");
        assert!(ok().build().is_ok());
        let cases: Vec<(ClickHouseSourceBuilder, &str)> = vec![
            (ClickHouseSource::builder("localhost:8123"), "url"),
            (ClickHouseSource::builder("ftp://x"), "url"),
            (ok().setting("max threads", "1"), "setting"),
            (ok().setting("query", "SELECT 1"), "setting"),
            (ok().setting("param_x", "1"), "setting"),
            (
                ok().setting("output_format_arrow_string_as_string", "1"),
                "setting",
            ),
            (ok().setting("max_threads", "1\n2"), "setting"),
            (ok().stream_idle_timeout(Duration::ZERO), "stream_idle_timeout"),
        ];
        for (builder, field) in cases {
            match builder.build() {
                Err(ClickHouseError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(matches!(
            ok().database("a\0b").build(),
            Err(ClickHouseError::InvalidIdentifier { what: "database", .. })
        ));
        #[cfg(not(feature = "rustls"))]
        assert!(ClickHouseSource::builder("https://example.com").build().is_err());
        #[cfg(feature = "rustls")]
        assert!(ClickHouseSource::builder("https://example.com").build().is_ok());
    }

    #[test]
    fn secrets_are_redacted() {
        for url in [
            "http://admin:hun/ter2@localhost:8123/",
            "http://admin:hunter2@localhost:8123/",
            "http://admin:hun@ter2@localhost:8123/?password=hunter2",
        ] {
            let builder = ClickHouseSource::builder(url).password("s3/cr@et");
            let source = builder.clone().build().unwrap();
            for text in [
                format!("{builder:?}"),
                format!("{source:?}"),
                format!("{source:#?}"),
            ] {
                assert!(!text.contains("s3/cr@et") && !text.contains("ter2"), "{text}");
                assert!(text.contains("***"), "{text}");
            }
        }
        // Without secrets the URL is shown as given.
        let text = format!("{:?}", ClickHouseSource::builder("http://localhost:8123"));
        assert!(text.contains("\"http://localhost:8123\""), "{text}");
        // An invalid URL is reported without its secrets either.
        let err = ClickHouseSource::builder("ftp://u:pa/ss@h").build().unwrap_err();
        assert!(!err.to_string().contains("pa/ss"), "{err}");
    }

    #[test]
    fn table_options() {
        let o = ClickHouseTableOptions::new();
        assert_eq!(o.filter_sql(), None);
        assert!(o.validate().is_ok());
        let o = o.filter("1) OR (1");
        assert!(matches!(
            o.validate(),
            Err(ClickHouseError::InvalidConfig { field: "filter", .. })
        ));
        assert!(DEFAULT_STREAM_IDLE_TIMEOUT < Duration::from_secs(300));
    }
}
