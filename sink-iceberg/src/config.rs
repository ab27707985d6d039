//! Typed configuration: which catalog, which storage, how to write.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use offload_core::redact::{redact_opt, redact_url};

use crate::MaintenanceConfig;
use crate::{DEFAULT_NAMESPACE, IcebergSinkError};

/// Which catalog implementation holds the tables' metadata pointers.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatalogBackend {
    /// The SQL (JDBC-schema) catalog in a SQLite file: the embedded default.
    /// The file is created (in WAL mode) if missing.
    Sqlite {
        /// Path of the SQLite database file.
        path: PathBuf,
    },
    /// The SQL (JDBC-schema) catalog in PostgreSQL: production, shared by many engines.
    Postgres {
        /// A `postgres://user:password@host:port/database` URL (the password is redacted in `Debug`).
        url: String,
    },
    /// An Iceberg REST catalog (feature `rest`).
    Rest {
        /// The catalog's base URI, e.g. `http://localhost:8181`.
        uri: String,
    },
    /// iceberg-rust's in-memory catalog: tables vanish with the process. For tests.
    Memory,
}

/// Where data and metadata files are stored.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageConfig {
    /// The local file system (or a mounted one); the warehouse is a path or `file://` URL.
    LocalFs,
    /// S3 or an S3-compatible store (MinIO, Ceph, R2, ...) through iceberg's
    /// OpenDAL storage. Needs the `s3` feature.
    S3(S3Config),
}

/// S3 connection settings. Unset credentials fall back to the usual AWS
/// environment (variables, profile, instance metadata).
///
/// ```
/// use offload_sink_iceberg::S3Config;
/// let s3 = S3Config {
///     endpoint: Some("http://127.0.0.1:9000".into()),
///     region: Some("us-east-1".into()),
///     access_key_id: Some("minio".into()),
///     secret_access_key: Some("minio-secret".into()),
///     path_style_access: true, // most non-AWS endpoints need it
///     ..S3Config::default()
/// };
/// assert!(!format!("{s3:?}").contains("minio-secret"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint URL for non-AWS stores, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` is fine for most S3-compatible stores).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key (redacted in `Debug`).
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials (redacted in `Debug`).
    pub session_token: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub path_style_access: bool,
    /// Send unsigned requests (public buckets, test servers).
    pub allow_anonymous: bool,
}

impl S3Config {
    /// The iceberg FileIO properties (`s3.*`) these settings translate to.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub(crate) fn to_props(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                p.insert(k.to_owned(), v.clone());
            }
        };
        put("s3.endpoint", &self.endpoint);
        put("s3.region", &self.region);
        put("s3.access-key-id", &self.access_key_id);
        put("s3.secret-access-key", &self.secret_access_key);
        put("s3.session-token", &self.session_token);
        p.insert("s3.path-style-access".into(), self.path_style_access.to_string());
        if self.allow_anonymous {
            p.insert("s3.allow-anonymous".into(), "true".into());
        }
        p
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact_opt(&self.secret_access_key))
            .field("session_token", &redact_opt(&self.session_token))
            .field("path_style_access", &self.path_style_access)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::LocalFs => f.write_str("LocalFs"),
            StorageConfig::S3(s3) => f.debug_tuple("S3").field(s3).finish(),
        }
    }
}

impl fmt::Debug for CatalogBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogBackend::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            CatalogBackend::Postgres { url } => {
                f.debug_struct("Postgres").field("url", &redact_url(url)).finish()
            }
            CatalogBackend::Rest { uri } => f.debug_struct("Rest").field("uri", &redact_url(uri)).finish(),
            CatalogBackend::Memory => f.write_str("Memory"),
        }
    }
}

/// Which catalog to use, where the warehouse is, how to reach storage.
///
/// Build it with a constructor per backend, or parse a URI with
/// [`from_uri`](Self::from_uri). Credentials (database passwords, S3 secrets,
/// every extra catalog property value) are redacted in `Debug`.
///
/// ```
/// use offload_sink_iceberg::CatalogConfig;
/// let c = CatalogConfig::sqlite("/var/lib/offload/catalog.db", "/var/lib/offload/warehouse")
///     .with_name("prod");
/// assert_eq!(c.warehouse(), "/var/lib/offload/warehouse");
///
/// let pg = CatalogConfig::from_uri(
///     "postgres://offload:s3cret@db:5432/iceberg?warehouse=/mnt/warehouse",
/// ).unwrap();
/// assert!(!format!("{pg:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    backend: CatalogBackend,
    name: String,
    warehouse: String,
    storage: StorageConfig,
    props: BTreeMap<String, String>,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self.props.keys().map(|k| (k.as_str(), "***")).collect();
        f.debug_struct("CatalogConfig")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .field("warehouse", &redact_location(&self.warehouse))
            .field("storage", &self.storage)
            .field("props", &props)
            .finish()
    }
}

/// A warehouse location for `Debug`: URLs (`s3://`, `file://`, ...) go through
/// [`redact_url`]; a plain path holds no secret and is shown as it is.
fn redact_location(location: &str) -> String {
    if location.contains("://") {
        redact_url(location)
    } else {
        location.to_owned()
    }
}

/// The catalog name used when none is given: tables registered by one name
/// are invisible under another, so every engine and reader must agree on it.
pub const DEFAULT_CATALOG_NAME: &str = "offload";

impl CatalogConfig {
    fn new(backend: CatalogBackend, warehouse: String) -> Self {
        let storage = default_storage_for(&warehouse);
        Self {
            backend,
            name: DEFAULT_CATALOG_NAME.into(),
            warehouse,
            storage,
            props: BTreeMap::new(),
        }
    }

    /// The SQL catalog on a SQLite file, with a warehouse path (or `s3://` URL).
    pub fn sqlite(path: impl Into<PathBuf>, warehouse: impl Into<String>) -> Self {
        Self::new(CatalogBackend::Sqlite { path: path.into() }, warehouse.into())
    }

    /// The SQL catalog on PostgreSQL (`postgres://user:password@host:port/db`).
    ///
    /// ```
    /// let c = offload_sink_iceberg::CatalogConfig::postgres("postgres://u:pw@h/db", "s3://bucket/wh");
    /// assert!(format!("{c:?}").contains("S3")); // an s3:// warehouse selects S3 storage
    /// ```
    pub fn postgres(url: impl Into<String>, warehouse: impl Into<String>) -> Self {
        Self::new(CatalogBackend::Postgres { url: url.into() }, warehouse.into())
    }

    /// A REST catalog at `uri`; `warehouse` is the catalog's warehouse identifier
    /// (a location or a name, depending on the server).
    pub fn rest(uri: impl Into<String>, warehouse: impl Into<String>) -> Self {
        Self::new(CatalogBackend::Rest { uri: uri.into() }, warehouse.into())
    }

    /// iceberg-rust's in-memory catalog over a warehouse location (tests, examples).
    pub fn memory(warehouse: impl Into<String>) -> Self {
        Self::new(CatalogBackend::Memory, warehouse.into())
    }

    /// Sets the catalog name (default [`DEFAULT_CATALOG_NAME`]). Readers such as
    /// pyiceberg's `SqlCatalog` must open the catalog under the same name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the storage (default: S3 for `s3://`/`s3a://` warehouses, else the local file system).
    pub fn with_storage(mut self, storage: StorageConfig) -> Self {
        self.storage = storage;
        self
    }

    /// Adds a catalog/FileIO property passed through verbatim (e.g. `pool.max-connections`,
    /// `credential`, `token`). Values are redacted in `Debug`.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.props.insert(key.into(), value.into());
        self
    }

    /// The backend.
    pub fn backend(&self) -> &CatalogBackend {
        &self.backend
    }
    /// The catalog name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The warehouse location.
    pub fn warehouse(&self) -> &str {
        &self.warehouse
    }
    /// The storage.
    pub fn storage(&self) -> &StorageConfig {
        &self.storage
    }
    /// Extra properties.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.props
    }

    /// Parses a URI-style catalog string.
    ///
    /// | form | catalog |
    /// |---|---|
    /// | `sqlite:///abs/catalog.db?warehouse=/abs/wh` (or `sqlite:rel.db?...`) | SQL on SQLite |
    /// | `postgres://user:pw@host:5432/db?warehouse=s3://bucket/wh` | SQL on PostgreSQL |
    /// | `rest+http://host:8181?warehouse=wh` / `rest+https://...` | REST |
    /// | `memory:?warehouse=/tmp/wh` | in-memory |
    ///
    /// Query parameters: `warehouse` (required), `catalog` (name), `s3.endpoint`,
    /// `s3.region`, `s3.access-key-id`, `s3.secret-access-key`, `s3.session-token`,
    /// `s3.path-style-access`, `s3.allow-anonymous` (any of these selects S3 storage),
    /// `prop.<key>=<value>` (extra catalog property). For PostgreSQL, other
    /// parameters (`sslmode`, ...) stay in the database URL. Values are percent-decoded.
    ///
    /// ```
    /// use offload_sink_iceberg::{CatalogBackend, CatalogConfig, StorageConfig};
    /// let c = CatalogConfig::from_uri(
    ///     "sqlite:///tmp/cat.db?warehouse=s3://lake/wh&s3.endpoint=http://127.0.0.1:9000&s3.path-style-access=true&catalog=lake",
    /// ).unwrap();
    /// assert!(matches!(c.backend(), CatalogBackend::Sqlite { .. }));
    /// assert_eq!(c.name(), "lake");
    /// match c.storage() {
    ///     StorageConfig::S3(s3) => assert!(s3.path_style_access),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(CatalogConfig::from_uri("mysql://x?warehouse=/w").is_err());
    /// ```
    pub fn from_uri(uri: &str) -> Result<Self, IcebergSinkError> {
        let bad = |reason: String| IcebergSinkError::Config {
            field: "catalog uri",
            reason,
        };
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| bad("expected <scheme>:...".into()))?;
        let (base, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let mut warehouse = None;
        let mut name = None;
        let mut s3 = S3Config::default();
        let mut s3_set = false;
        let mut props = BTreeMap::new();
        let mut passthrough = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).map_err(&bad)?;
            let value = percent_decode(v).map_err(&bad)?;
            let flag = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on");
            match key.as_str() {
                "warehouse" => warehouse = Some(value),
                "catalog" | "name" => name = Some(value),
                "s3.endpoint" => (s3.endpoint, s3_set) = (Some(value), true),
                "s3.region" => (s3.region, s3_set) = (Some(value), true),
                "s3.access-key-id" => (s3.access_key_id, s3_set) = (Some(value), true),
                "s3.secret-access-key" => (s3.secret_access_key, s3_set) = (Some(value), true),
                "s3.session-token" => (s3.session_token, s3_set) = (Some(value), true),
                "s3.path-style-access" => (s3.path_style_access, s3_set) = (flag(&value), true),
                "s3.allow-anonymous" => (s3.allow_anonymous, s3_set) = (flag(&value), true),
                k if k.starts_with("prop.") => {
                    props.insert(k["prop.".len()..].to_owned(), value);
                }
                _ => passthrough.push(pair),
            }
        }
        let warehouse = warehouse.ok_or_else(|| bad("missing the warehouse=<location> parameter".into()))?;
        let backend = match scheme {
            "sqlite" => {
                let path = base.strip_prefix("//").unwrap_or(base);
                if path.is_empty() {
                    return Err(bad("sqlite: needs a database file path".into()));
                }
                CatalogBackend::Sqlite {
                    path: PathBuf::from(percent_decode(path).map_err(&bad)?),
                }
            }
            "postgres" | "postgresql" => {
                let mut url = format!("{scheme}:{base}");
                if !passthrough.is_empty() {
                    url.push('?');
                    url.push_str(&passthrough.join("&"));
                }
                passthrough.clear();
                CatalogBackend::Postgres { url }
            }
            "rest+http" | "rest+https" => CatalogBackend::Rest {
                uri: format!("{}:{base}", &scheme["rest+".len()..]),
            },
            "memory" => CatalogBackend::Memory,
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?}: expected sqlite, postgres, rest+http(s) or memory"
                )));
            }
        };
        if let Some(p) = passthrough.first() {
            let key = p.split_once('=').map_or(*p, |(k, _)| k);
            return Err(bad(format!("unknown parameter {key:?}")));
        }
        let mut cfg = Self::new(backend, warehouse);
        if let Some(name) = name {
            cfg.name = name;
        }
        if s3_set {
            cfg.storage = StorageConfig::S3(s3);
        }
        cfg.props = props;
        Ok(cfg)
    }
}

fn default_storage_for(warehouse: &str) -> StorageConfig {
    if warehouse.starts_with("s3://") || warehouse.starts_with("s3a://") {
        StorageConfig::S3(S3Config::default())
    } else {
        StorageConfig::LocalFs
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 after percent-decoding"))
}

/// The most encoder tasks [`default_writer_tasks`] picks. One HTTP stream
/// from ClickHouse feeds all of them, and one core encodes ~3.4M
/// `bronze_trades` rows/s (criterion `stage`), so four already outrun what
/// ClickHouse serves over one connection (~6M rows/s merely read and
/// discarded, harness row 0); more would only add files per partition (one
/// per task) and open row groups in memory. Set
/// [`writer_tasks`](IcebergSinkConfig::writer_tasks) to go beyond.
pub const MAX_DEFAULT_WRITER_TASKS: usize = 4;

/// Default of [`IcebergSinkConfig::row_group_rows`]: 256 Ki rows (Polars'
/// default; DuckDB writes 122,880). arrow-rs's 1 Mi rows held ~50 MiB more
/// at the peak of a 10M-row window crossing midnight (harness `--rss-rows`,
/// two encoder tasks, median of 5-7 runs on a loaded 2-core VM: 235 against
/// 284 MiB), for `bronze_trades` rows of ~14 B in Parquet that is row groups
/// of ~3.5 MB instead of ~14 MB; finer row groups also prune time ranges
/// finer.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 256 << 10;

/// Default of [`IcebergSinkConfig::partition_idle_batches`].
pub const DEFAULT_PARTITION_IDLE_BATCHES: u64 = 4;

/// Default of [`IcebergSinkConfig::max_open_partitions`].
pub const DEFAULT_MAX_OPEN_PARTITIONS: usize = 8;

/// The default number of encoder tasks: the CPUs this process may use
/// (`std::thread::available_parallelism`, which honours cgroup quotas and
/// affinity masks), at most [`MAX_DEFAULT_WRITER_TASKS`], 1 if unknown.
///
/// ```
/// let n = offload_sink_iceberg::default_writer_tasks();
/// assert!((1..=offload_sink_iceberg::MAX_DEFAULT_WRITER_TASKS).contains(&n));
/// ```
pub fn default_writer_tasks() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_WRITER_TASKS))
}

/// Everything the sink needs: the catalog plus write and commit settings.
///
/// ```
/// use std::time::Duration;
/// use offload_sink_iceberg::{CatalogConfig, IcebergSinkConfig};
/// let cfg = IcebergSinkConfig::new(CatalogConfig::sqlite("/tmp/c.db", "/tmp/wh"))
///     .zstd_level(6)
///     .target_file_size(64 << 20)
///     .commit_timeout(Duration::from_secs(30));
/// assert_eq!(cfg.get_zstd_level(), 6);
/// assert!(cfg.validate().is_ok());
/// assert!(cfg.clone().zstd_level(99).validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct IcebergSinkConfig {
    pub(crate) catalog: CatalogConfig,
    pub(crate) default_namespace: String,
    pub(crate) zstd_level: i32,
    pub(crate) target_file_size: u64,
    pub(crate) row_group_rows: usize,
    pub(crate) writer_tasks: usize,
    pub(crate) queue_depth: usize,
    pub(crate) partition_idle_batches: u64,
    pub(crate) max_open_partitions: usize,
    pub(crate) commit_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) check_duplicate_files: bool,
    pub(crate) maintenance: MaintenanceConfig,
}

impl IcebergSinkConfig {
    /// Defaults: zstd level 3, 128 MiB target files, row groups of
    /// [`DEFAULT_ROW_GROUP_ROWS`] (256 Ki) rows,
    /// [`default_writer_tasks`] encoder tasks (the machine's cores, at most
    /// [`MAX_DEFAULT_WRITER_TASKS`]), a partition's file closed after
    /// [`DEFAULT_PARTITION_IDLE_BATCHES`] batches without its rows and at most
    /// [`DEFAULT_MAX_OPEN_PARTITIONS`] open per task, commit timeout 120 s,
    /// connect timeout 60 s, orphan grace period 24 h, namespace
    /// [`DEFAULT_NAMESPACE`] (`offload`) for unqualified table names,
    /// duplicate-file check off (see
    /// [`check_duplicate_files`](Self::check_duplicate_files)).
    pub fn new(catalog: CatalogConfig) -> Self {
        Self {
            catalog,
            default_namespace: DEFAULT_NAMESPACE.into(),
            zstd_level: 3,
            target_file_size: 128 << 20,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            writer_tasks: default_writer_tasks(),
            queue_depth: 4,
            partition_idle_batches: DEFAULT_PARTITION_IDLE_BATCHES,
            max_open_partitions: DEFAULT_MAX_OPEN_PARTITIONS,
            commit_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(60),
            check_duplicate_files: false,
            maintenance: MaintenanceConfig::default(),
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &CatalogConfig {
        &self.catalog
    }
    /// zstd level for Parquet pages (1..=22, default 3).
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }
    /// The configured zstd level.
    pub fn get_zstd_level(&self) -> i32 {
        self.zstd_level
    }
    /// Size at which a data file is closed and the next one started (default 128 MiB).
    pub fn target_file_size(mut self, bytes: u64) -> Self {
        self.target_file_size = bytes;
        self
    }
    /// Maximum rows per Parquet row group (default [`DEFAULT_ROW_GROUP_ROWS`],
    /// 262,144). Every open data file buffers its row group in memory
    /// (compressed pages plus one uncompressed page per column), and the
    /// staging writer has one or two open per encoder task (two around a
    /// partition change), compaction one per output.
    pub fn row_group_rows(mut self, rows: usize) -> Self {
        self.row_group_rows = rows;
        self
    }
    /// Background encoder tasks per run (default [`default_writer_tasks`]:
    /// one per core, at most [`MAX_DEFAULT_WRITER_TASKS`]). Each owns its own
    /// files and buffers; more tasks encode in parallel at the price of more,
    /// smaller files (a partition gets a file from every task that saw its
    /// rows) and one more set of open row groups each.
    pub fn writer_tasks(mut self, n: usize) -> Self {
        self.writer_tasks = n;
        self
    }
    /// The configured number of encoder tasks.
    pub fn get_writer_tasks(&self) -> usize {
        self.writer_tasks
    }
    /// Closes a partition's data file once this many consecutive input
    /// batches of an encoder task brought no row for it (default
    /// [`DEFAULT_PARTITION_IDLE_BATCHES`], at least 1). The input has then
    /// moved past the partition (a window crossing midnight leaves the old
    /// day behind), and its buffered row group is written out instead of
    /// being held to the end of the window. Rows that do come back for it
    /// go into another file: correct either way, one more file at worst.
    pub fn partition_idle_batches(mut self, n: u64) -> Self {
        self.partition_idle_batches = n;
        self
    }
    /// At most this many partition files open per encoder task (default
    /// [`DEFAULT_MAX_OPEN_PARTITIONS`], at least 1); opening one more closes
    /// the least recently written. Bounds memory (each open file buffers a
    /// row group) even when the input interleaves many partitions.
    pub fn max_open_partitions(mut self, n: usize) -> Self {
        self.max_open_partitions = n;
        self
    }
    /// Batches queued per encoder task before `write` waits (default 4): the
    /// back-pressure that bounds memory.
    pub fn queue_depth(mut self, n: usize) -> Self {
        self.queue_depth = n;
        self
    }
    /// Namespace for sink table names without a dot (default [`DEFAULT_NAMESPACE`],
    /// `offload`; see [`TableName::parse`](crate::TableName::parse)).
    pub fn default_namespace(mut self, ns: impl Into<String>) -> Self {
        self.default_namespace = ns.into();
        self
    }
    /// Upper bound for one commit (default 120 s). A commit that times out
    /// after reaching the catalog is reported as an unknown outcome, one that
    /// times out before as a retryable failure. The sink keeps this deadline
    /// itself because only it knows how far the commit got; deadlines for the
    /// other operations belong in `offload_core::layer::Timeout` around the sink.
    pub fn commit_timeout(mut self, d: Duration) -> Self {
        self.commit_timeout = d;
        self
    }
    /// Upper bound for [`IcebergSink::connect`](crate::IcebergSink::connect)
    /// (default 60 s): building the catalog client, which no layer wraps.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Files younger than this are never deleted by `cleanup` (default 24 h):
    /// they may belong to a run that is still staging or committing. Keep it
    /// well above the engine's lease TTL and longest run.
    /// The same setting as [`MaintenanceConfig::orphan_grace`] (one value).
    pub fn orphan_grace(mut self, d: Duration) -> Self {
        self.maintenance = self.maintenance.orphan_grace(d);
        self
    }
    /// What [`SinkTable::maintain`](offload_core::SinkTable::maintain) does
    /// (default [`MaintenanceConfig::default`]).
    pub fn maintenance(mut self, cfg: MaintenanceConfig) -> Self {
        self.maintenance = cfg;
        self
    }
    /// Let iceberg re-read every manifest of the current snapshot on each commit
    /// to refuse files already in the table (default off: the fence already makes
    /// a second commit of the same staging impossible, and the check costs one
    /// manifest read per earlier commit, on every commit).
    pub fn check_duplicate_files(mut self, on: bool) -> Self {
        self.check_duplicate_files = on;
        self
    }

    /// Checks every value; [`IcebergSink::connect`](crate::IcebergSink::connect) calls it.
    pub fn validate(&self) -> Result<(), IcebergSinkError> {
        let bad = |field, reason: &str| {
            Err(IcebergSinkError::Config {
                field,
                reason: reason.into(),
            })
        };
        if !(1..=22).contains(&self.zstd_level) {
            return bad("zstd_level", "must be within 1..=22");
        }
        if self.target_file_size < 1 << 20 {
            return bad("target_file_size", "must be at least 1 MiB");
        }
        if self.row_group_rows == 0 {
            return bad("row_group_rows", "must be positive");
        }
        if !(1..=64).contains(&self.writer_tasks) {
            return bad("writer_tasks", "must be within 1..=64");
        }
        if self.queue_depth == 0 {
            return bad("queue_depth", "must be positive");
        }
        if self.partition_idle_batches == 0 {
            return bad("partition_idle_batches", "must be positive");
        }
        if self.max_open_partitions == 0 {
            return bad("max_open_partitions", "must be positive");
        }
        if self.commit_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts", "must be positive");
        }
        if self.default_namespace.is_empty() || self.default_namespace.split('.').any(str::is_empty) {
            return bad("default_namespace", "must not be empty or have an empty segment");
        }
        if self.catalog.name.trim().is_empty() {
            return bad("catalog name", "must not be empty");
        }
        if self.catalog.warehouse.is_empty() {
            return bad("warehouse", "must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let c = CatalogConfig::from_uri("sqlite:rel/cat.db?warehouse=/w%20x").unwrap();
        assert_eq!(
            c.backend(),
            &CatalogBackend::Sqlite {
                path: "rel/cat.db".into()
            }
        );
        assert_eq!(c.warehouse(), "/w x");
        assert_eq!(c.storage(), &StorageConfig::LocalFs);

        let c = CatalogConfig::from_uri(
            "postgres://u:pw@h:5432/db?sslmode=disable&warehouse=/w&prop.pool.max-connections=3",
        )
        .unwrap();
        assert_eq!(
            c.backend(),
            &CatalogBackend::Postgres {
                url: "postgres://u:pw@h:5432/db?sslmode=disable".into()
            }
        );
        assert_eq!(c.properties()["pool.max-connections"], "3");

        let c = CatalogConfig::from_uri("rest+https://cat.example/api?warehouse=lake").unwrap();
        assert_eq!(
            c.backend(),
            &CatalogBackend::Rest {
                uri: "https://cat.example/api".into()
            }
        );
        assert!(CatalogConfig::from_uri("memory:?warehouse=/w").is_ok());
        assert!(
            CatalogConfig::from_uri("sqlite:x.db").is_err(),
            "warehouse required"
        );
        assert!(CatalogConfig::from_uri("sqlite:x.db?warehouse=/w&bogus=1").is_err());
    }

    #[test]
    fn debug_redacts_every_secret() {
        let c = CatalogConfig::from_uri(
            "postgres://u:hunter2@h/db?warehouse=s3://b/w&s3.secret-access-key=SECRETKEY&s3.session-token=TOKEN&prop.token=BEARER",
        )
        .unwrap();
        let d = format!("{c:?}");
        for secret in ["hunter2", "SECRETKEY", "TOKEN", "BEARER"] {
            assert!(!d.contains(secret), "{secret} leaked in {d}");
        }
        assert!(d.contains("u:***@h"), "{d}");
        let cfg = IcebergSinkConfig::new(c);
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    /// The old local `redact_url` cut the URL at the first `/` to find the
    /// user info, so a password holding `/` was printed in full.
    #[test]
    fn debug_hides_a_password_with_a_slash() {
        for (url, secret) in [
            ("postgres://offload:pa/ss@db:5432/iceberg", "pa/ss"),
            ("postgres://offload:a/b?c#d@db/iceberg?sslmode=disable", "a/b"),
        ] {
            let c = CatalogConfig::postgres(url, "/w");
            let d = format!("{c:?}");
            assert!(!d.contains(secret), "{secret} leaked in {d}");
            assert!(!d.contains("ss@") && !d.contains("#d"), "{d}");
            assert!(d.contains("@db"), "the host is still shown: {d}");
            let rest = CatalogConfig::rest(url.replace("postgres", "http"), "lake");
            assert!(!format!("{rest:?}").contains(secret), "{rest:?}");
        }
        let s3 = CatalogConfig::sqlite("/c.db", "s3://user:se/cret@bucket/wh");
        assert!(!format!("{s3:?}").contains("se/cret"), "{s3:?}");
        // A local warehouse path is no secret and stays readable.
        assert!(format!("{:?}", CatalogConfig::sqlite("/c.db", "/var/wh")).contains("/var/wh"));
    }

    #[test]
    fn unqualified_names_default_to_the_offload_namespace() {
        let cfg = IcebergSinkConfig::new(CatalogConfig::memory("/w"));
        assert_eq!(cfg.default_namespace, DEFAULT_NAMESPACE);
        assert!(cfg.clone().default_namespace("a..b").validate().is_err());
        assert!(cfg.default_namespace("a.b").validate().is_ok());
    }
}
