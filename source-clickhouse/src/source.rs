//! [`ClickHouseSource`]: the `offload_core::Source` implementation, and its builder.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use clickhouse::Client;
use futures::StreamExt;
use offload_core::{BatchStream, Error, Source, TableConfig, Watermark, Window};

use crate::ClickHouseError;
use crate::decode::ArrowStreamDecoder;
use crate::ident::{TableRef, quote_identifier, validate_filter, validate_identifier};
use crate::sql::{Cond, Positions, SeqColumn, TimeColumn};
use crate::stream::{BatchShape, WindowReader};
use crate::types::{ChType, MappingOptions, SubMicrosecond, UInt64Mapping};

/// Settings this crate sets on every window query so that the ArrowStream it
/// decodes has a known shape. Users may not override them.
pub(crate) const ARROW_SETTINGS: &[(&str, &str)] = &[
    // Strings are bytes in ClickHouse: receive Binary and validate UTF-8 per
    // column, so an invalid value is reported with its column's name.
    ("output_format_arrow_string_as_string", "0"),
    ("output_format_arrow_low_cardinality_as_dictionary", "0"),
    ("output_format_arrow_fixed_string_as_fixed_byte_array", "1"),
    // The HTTP body is already compressed (lz4 by default); compressing the
    // IPC buffers again would only cost CPU on both ends.
    ("output_format_arrow_compression_method", "none"),
];

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

/// Wire compression of responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4 (`Accept-Encoding: lz4`), ClickHouse's own default. Needs the `lz4`
    /// feature (on by default).
    #[cfg(feature = "lz4")]
    Lz4,
}

impl Default for Compression {
    fn default() -> Self {
        #[cfg(feature = "lz4")]
        return Compression::Lz4;
        #[cfg(not(feature = "lz4"))]
        return Compression::None;
    }
}

impl Compression {
    fn client(self) -> clickhouse::Compression {
        match self {
            Compression::None => clickhouse::Compression::None,
            #[cfg(feature = "lz4")]
            Compression::Lz4 => clickhouse::Compression::Lz4,
        }
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
///     .password("s3cret")
///     .database("market")
///     .setting("max_execution_time", "600")
///     .request_timeout(Duration::from_secs(30))
///     .filter("bronze_trades", "exchange != 'TEST'")
///     .build()
///     .unwrap();
/// // The password never appears in Debug output.
/// assert!(!format!("{source:?}").contains("s3cret"));
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
    request_timeout: Duration,
    stream_idle_timeout: Duration,
    filters: BTreeMap<String, String>,
    mapping: MappingOptions,
}

impl fmt::Debug for ClickHouseSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSourceBuilder")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("compression", &self.compression)
            .field("settings", &self.settings)
            .field("request_timeout", &self.request_timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("filters", &self.filters)
            .field("mapping", &self.mapping)
            .finish()
    }
}

impl ClickHouseSourceBuilder {
    /// User name (default: the server's `default` user).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Password. Never printed: `Debug` shows `<redacted>`.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Database for tables named without one (default: the user's default database).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Response compression (default: [`Compression::Lz4`] with the `lz4` feature).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// A ClickHouse setting sent with every query, e.g. `max_execution_time`,
    /// `max_memory_usage`, `max_threads`. Names are validated; protocol
    /// parameters and the `output_format_arrow_*` settings this crate relies
    /// on are refused.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(name.into(), value.into());
        self
    }

    /// Limit for each metadata call (schema discovery, high watermark),
    /// connecting included (default 60 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Longest wait for the next piece of a window's response, connecting
    /// and the server's time to the first row included (default 5 min). A
    /// window may take any time in total as long as data keeps arriving; bound
    /// the server side with the `max_execution_time` setting.
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// An extra `WHERE` condition for the table whose [`TableConfig::name`] is
    /// `table`, applied to windows and to the high watermark alike.
    ///
    /// The filter is trusted SQL from the operator, not user input. It is
    /// checked lexically — balanced parentheses and quotes, no `;`, no
    /// comments — so it cannot escape the `AND (...)` it is wrapped in. It must
    /// depend only on the row (not on `now()` or other tables): a window must
    /// select the same rows whenever it is read.
    pub fn filter(mut self, table: impl Into<String>, sql: impl Into<String>) -> Self {
        self.filters.insert(table.into(), sql.into());
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
        for (table, filter) in &self.filters {
            validate_filter(filter).map_err(|e| match e {
                ClickHouseError::InvalidConfig { reason, .. } => {
                    invalid("filter", format!("filter for table {table:?}: {reason}"))
                }
                e => e,
            })?;
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be positive".into()));
        }
        if self.stream_idle_timeout.is_zero() {
            return Err(invalid("stream_idle_timeout", "must be positive".into()));
        }

        let mut client = Client::default()
            .with_url(self.url.clone())
            .with_compression(self.compression.client());
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
            config: self,
            layouts: Mutex::default(),
        })
    }
}

/// Hides `user:password@` in a URL.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The Source: reads windows of a ClickHouse table over HTTP as Arrow batches.
///
/// * [`schema`](Source::schema) reads `system.columns` and maps every column
///   (see the README for the table); it refuses, naming the column, any type
///   it cannot map exactly.
/// * [`high_watermark`](Source::high_watermark) is the newest row position
///   whose timestamp is at most `now() - lag` on the **server's** clock.
/// * [`read`](Source::read) sends one query per window, filtered on the
///   `(timestamp, sequence)` pair with a plain timestamp range the primary key
///   can prune on, and streams the `ArrowStream` response in batches of
///   [`TableConfig::batch_size`] rows.
///
/// ```no_run
/// use std::time::Duration;
/// use futures::TryStreamExt;
/// use offload_core::{Source, TableConfig, Watermark, Window};
/// use offload_source_clickhouse::ClickHouseSource;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let source = ClickHouseSource::builder("http://localhost:8123").database("market").build()?;
/// let trades = TableConfig::builder("bronze_trades")
///     .timestamp_column("exchange_timestamp")
///     .sequence_column("sequence_number")
///     .lag(Duration::from_secs(300))
///     .build()?;
/// let schema = source.schema(&trades).await?;
/// if let Some(high) = source.high_watermark(&trades).await? {
///     let window = Window::new(Watermark::MIN, high)?;
///     let mut batches = source.read(&trades, window).await?;
///     while let Some(batch) = batches.try_next().await? {
///         assert_eq!(batch.schema(), schema);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ClickHouseSource {
    client: Client,
    config: ClickHouseSourceBuilder,
    /// Per table (by `TableConfig::name`): the layout from the last `schema()`
    /// call, so `read` yields exactly the schema the engine was given.
    layouts: Mutex<HashMap<String, Arc<Layout>>>,
}

impl fmt::Debug for ClickHouseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Everything needed to query one table, derived from its config and columns.
#[derive(Debug)]
struct Layout {
    /// The parts of the `TableConfig` this was derived from.
    key: LayoutKey,
    /// `` `db`.`table` ``
    table_sql: String,
    select_sql: String,
    filter: Option<String>,
    positions: Positions,
    shape: Arc<BatchShape>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LayoutKey {
    source_table: String,
    timestamp_column: String,
    sequence_column: String,
    columns: Option<Vec<String>>,
}

impl LayoutKey {
    fn of(table: &TableConfig) -> Self {
        LayoutKey {
            source_table: table.source_table().to_owned(),
            timestamp_column: table.timestamp_column().to_owned(),
            sequence_column: table.sequence_column().to_owned(),
            columns: table.columns().map(<[String]>::to_vec),
        }
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
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(300),
            filters: BTreeMap::new(),
            mapping: MappingOptions::default(),
        }
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, ClickHouseError> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(r) => r.map_err(ClickHouseError::from_client),
            Err(_) => Err(ClickHouseError::Timeout {
                what,
                after: self.config.request_timeout,
            }),
        }
    }

    /// Reads `system.columns` and derives the table's layout.
    async fn discover(&self, table: &TableConfig) -> Result<Layout, ClickHouseError> {
        let tref = TableRef::parse(table.source_table())?;
        let database = tref.database.clone().or_else(|| self.config.database.clone());
        // Names are bound as query parameters, never spliced into this query.
        let db_sql = if database.is_some() {
            "{db:String}"
        } else {
            "currentDatabase()"
        };
        let sql = format!(
            "SELECT name, type, default_kind, toString({db_sql}) FROM system.columns \
             WHERE database = {db_sql} AND table = {{tbl:String}} ORDER BY position"
        );
        let mut query = self.client.query_raw(&sql).param("tbl", tref.table.as_str());
        if let Some(db) = &database {
            query = query.param("db", db.as_str());
        }
        let rows: Vec<(String, String, String, String)> =
            self.timed("schema discovery", query.fetch_all()).await?;
        let Some(resolved_db) = rows.first().map(|r| r.3.clone()) else {
            return Err(ClickHouseError::TableNotFound {
                database: database.unwrap_or_else(|| "currentDatabase()".into()),
                table: tref.table,
            });
        };
        let table_name = format!("{resolved_db}.{}", tref.table);
        let all: HashMap<&str, (&str, &str)> = rows
            .iter()
            .map(|(n, t, k, _)| (n.as_str(), (t.as_str(), k.as_str())))
            .collect();

        let selected: Vec<&str> = match table.columns() {
            Some(cols) => cols.iter().map(String::as_str).collect(),
            // Every stored column, MATERIALIZED ones included (which `SELECT *`
            // would leave out): ALIAS columns are computed on read and
            // EPHEMERAL ones are not stored at all.
            None => rows
                .iter()
                .filter(|(_, _, kind, _)| !matches!(kind.as_str(), "ALIAS" | "EPHEMERAL"))
                .map(|(n, ..)| n.as_str())
                .collect(),
        };

        let parse = |column: &str| -> Result<(ChType, String), ClickHouseError> {
            validate_identifier("column", column)?;
            let (type_name, kind) = all.get(column).ok_or_else(|| ClickHouseError::ColumnNotFound {
                table: table_name.clone(),
                column: column.to_owned(),
            })?;
            if *kind == "EPHEMERAL" {
                return Err(ClickHouseError::UnsupportedType {
                    column: column.to_owned(),
                    type_name: (*type_name).to_owned(),
                    reason: "EPHEMERAL columns are not stored and cannot be read".into(),
                });
            }
            let ch = ChType::parse(type_name).map_err(|e| ClickHouseError::UnsupportedType {
                column: column.to_owned(),
                type_name: (*type_name).to_owned(),
                reason: format!("cannot parse the type: {}", e.0),
            })?;
            Ok((ch, (*type_name).to_owned()))
        };

        let watermark_column = |column: &str, role: &'static str| -> Result<ChType, ClickHouseError> {
            let (ch, type_name) = parse(column)?;
            let ok = match role {
                "timestamp" => TimeColumn::from_type(&ch).is_some(),
                _ => SeqColumn::from_type(&ch).is_some(),
            };
            if !ok {
                let reason = match role {
                    "timestamp" => "must be DateTime or DateTime64 (not Nullable)",
                    _ => "must be an integer of at most 64 bits, signed or unsigned (not Nullable)",
                };
                return Err(ClickHouseError::InvalidWatermarkColumn {
                    column: column.to_owned(),
                    role,
                    type_name,
                    reason: reason.into(),
                });
            }
            Ok(ch)
        };
        let ts_type = watermark_column(table.timestamp_column(), "timestamp")?;
        let seq_type = watermark_column(table.sequence_column(), "sequence")?;
        let positions = Positions {
            ts: TimeColumn::from_type(&ts_type).expect("checked"),
            ts_sql: quote_identifier(table.timestamp_column()),
            seq: SeqColumn::from_type(&seq_type).expect("checked"),
            seq_sql: quote_identifier(table.sequence_column()),
        };

        let columns = selected
            .into_iter()
            .map(|column| parse(column).map(|(ch, type_name)| (column.to_owned(), ch, type_name)))
            .collect::<Result<Vec<_>, _>>()?;
        let (shape, select_sql) = BatchShape::for_columns(columns, self.config.mapping)?;
        Ok(Layout {
            key: LayoutKey::of(table),
            table_sql: tref.quoted(Some(&resolved_db)),
            select_sql,
            filter: self.config.filters.get(table.name()).cloned(),
            positions,
            shape: Arc::new(shape),
        })
    }

    /// The cached layout for `table`, or a fresh one.
    async fn layout(&self, table: &TableConfig) -> Result<Arc<Layout>, ClickHouseError> {
        let cached = self
            .layouts
            .lock()
            .expect("layout cache")
            .get(table.name())
            .cloned();
        match cached {
            Some(layout) if layout.key == LayoutKey::of(table) => Ok(layout),
            _ => self.refresh(table).await,
        }
    }

    async fn refresh(&self, table: &TableConfig) -> Result<Arc<Layout>, ClickHouseError> {
        let layout = Arc::new(self.discover(table).await?);
        self.layouts
            .lock()
            .expect("layout cache")
            .insert(table.name().to_owned(), layout.clone());
        Ok(layout)
    }

    fn where_clause(layout: &Layout, cond: Cond) -> String {
        match &layout.filter {
            Some(filter) => format!("({}) AND ({filter})", cond.render()),
            None => cond.render(),
        }
    }

    /// The SQL [`read`](Source::read) sends for `window` (for logs and tests).
    pub async fn window_sql(&self, table: &TableConfig, window: Window) -> Result<String, ClickHouseError> {
        let layout = self.layout(table).await?;
        Ok(Self::window_query(&layout, window))
    }

    /// The decoder [`read`](Source::read) uses for `table`: the same target
    /// schema (discovered like [`schema`](Source::schema), or the cached
    /// layout), the same conversions, and `table`'s batch size. For decoding
    /// `ArrowStream` bytes obtained some other way, or for measuring the
    /// decoding stage on its own.
    pub async fn decoder(&self, table: &TableConfig) -> Result<ArrowStreamDecoder, ClickHouseError> {
        let layout = self.layout(table).await?;
        Ok(ArrowStreamDecoder::from_shape(
            layout.shape.clone(),
            layout.select_sql.clone(),
            table.batch_size(),
        ))
    }

    fn window_query(layout: &Layout, window: Window) -> String {
        format!(
            "SELECT {} FROM {} WHERE {}",
            layout.select_sql,
            layout.table_sql,
            Self::where_clause(layout, layout.positions.window(window))
        )
    }

    async fn schema_inner(&self, table: &TableConfig) -> Result<SchemaRef, ClickHouseError> {
        // Always re-read: the engine calls this at the start of every run, and
        // a changed table must be noticed then.
        Ok(self.refresh(table).await?.shape.schema.clone())
    }

    async fn high_watermark_inner(&self, table: &TableConfig) -> Result<Option<Watermark>, ClickHouseError> {
        let layout = self.layout(table).await?;
        // The server's clock, not ours: the lag protects rows the *server*
        // may still receive.
        let now: i64 = self
            .timed(
                "high watermark (server clock)",
                self.client
                    .query_raw("SELECT toUnixTimestamp64Micro(now64(6))")
                    .fetch_one(),
            )
            .await?;
        let lag = i64::try_from(table.lag().as_micros()).unwrap_or(i64::MAX);
        let horizon = layout.positions.timestamp_at_or_before(now.saturating_sub(lag));
        if horizon == Cond::False {
            return Ok(None);
        }
        let p = &layout.positions;
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} ORDER BY {} DESC, {} DESC LIMIT 1",
            p.ts.ticks_sql(&p.ts_sql),
            p.seq.position_sql(&p.seq_sql),
            layout.table_sql,
            Self::where_clause(&layout, horizon),
            p.ts_sql,
            p.seq_sql,
        );
        let row: Option<(i64, u64)> = self
            .timed("high watermark", self.client.query_raw(&sql).fetch_optional())
            .await?;
        Ok(row.map(|(ticks, seq)| Watermark::new(p.ts.ticks_to_micros(ticks), seq)))
    }

    async fn read_inner(&self, table: &TableConfig, window: Window) -> Result<WindowReader, ClickHouseError> {
        let layout = self.layout(table).await?;
        let sql = Self::window_query(&layout, window);
        tracing::debug!(table = table.name(), %window, sql, "reading window");
        let mut query = self.client.query_raw(&sql);
        for (name, value) in ARROW_SETTINGS {
            query = query.with_setting(*name, *value);
        }
        let cursor = query
            .fetch_bytes("ArrowStream")
            .map_err(ClickHouseError::from_client)?;
        WindowReader::start(
            cursor,
            layout.shape.clone(),
            table.batch_size(),
            self.config.stream_idle_timeout,
        )
        .await
    }
}

#[async_trait]
impl Source for ClickHouseSource {
    async fn schema(&self, table: &TableConfig) -> Result<SchemaRef, Error> {
        Ok(self.schema_inner(table).await?)
    }

    async fn high_watermark(&self, table: &TableConfig) -> Result<Option<Watermark>, Error> {
        Ok(self.high_watermark_inner(table).await?)
    }

    async fn read(&self, table: &TableConfig, window: Window) -> Result<BatchStream, Error> {
        let reader = self.read_inner(table, window).await?;
        Ok(reader.into_stream().map(|r| r.map_err(Error::from)).boxed())
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
            (ok().filter("t", "1) OR (1"), "filter"),
            (ok().request_timeout(Duration::ZERO), "request_timeout"),
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
        let s = ClickHouseSource::builder("http://admin:hunter2@localhost:8123/")
            .password("s3cret")
            .build()
            .unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("s3cret") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert_eq!(redact_url("http://localhost:8123"), "http://localhost:8123");
    }
}
