//! The one TOML schema of the `offload` program, shared by every subcommand.
//!
//! Parsed strictly: unknown keys are errors (a typo never silently falls back
//! to a default), every error names its key path (`tables[2].lag`), values
//! are validated before anything connects, and secrets are never in the file:
//! it names the environment variables that hold them (`password_env`,
//! `url_env`, `*_env`), and `Debug` never prints them. The fully commented
//! reference is `offload.example.toml` at the crate root.

mod engine;
mod maintenance;
mod reconcile;
mod sink;
mod source;
mod store;
mod table;
mod value;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use offload_core::TableConfig;
use serde::Deserialize;

pub use engine::{EngineSection, MetricsSection, RetrySection, TimeoutsSection};
pub use maintenance::MaintenanceSection;
pub use reconcile::{BucketName, DepthName, KafkaMethodName, KafkaSection, ReconcileSection};
pub use sink::{CatalogSection, IcebergSection, S3Section, WriterSection};
pub use source::{ClickHouseSection, CompressionName, SubMicrosecondName, UInt64Name};
pub use store::StoreSection;
pub use table::{PartitionSection, TableReconcileSection, TableSection, TransformName};
pub(crate) use value::with_password;
pub use value::{ByteSize, Dur, EnvVar, Secret, SettingValue};

/// Everything that can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key or value that does not fit the schema.
    #[error("invalid configuration: {}{message}", key_prefix(key))]
    Parse {
        /// Key path (`tables[0].lag`); empty when the text is not TOML at all.
        key: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// Key path, e.g. `tables[2].lag`.
        key: String,
        /// Why.
        reason: String,
    },
    /// A table's settings were refused by offload-core.
    #[error("invalid configuration: {key} (table {table:?}): {source}")]
    Table {
        /// Key path, `tables[i]`.
        key: String,
        /// The table's name.
        table: String,
        /// offload-core's reason.
        source: offload_core::Error,
    },
    /// An environment variable named in the file is not set.
    #[error("environment variable {var} (named by {key} in the configuration) is not set")]
    MissingEnv {
        /// The variable.
        var: String,
        /// The key that names it.
        key: String,
    },
}

/// The parser's message with its line and column, without the quoted source
/// line toml would print: that line may hold a secret someone put inline.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message.to_owned(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How the engine runs.
    #[serde(default)]
    pub engine: EngineSection,
    /// Retries around the source, the sink and the store.
    #[serde(default)]
    pub retry: RetrySection,
    /// Per-call upper bounds.
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// Prometheus metrics.
    pub metrics: Option<MetricsSection>,
    /// Where rows come from.
    pub clickhouse: ClickHouseSection,
    /// Where rows go.
    pub iceberg: IcebergSection,
    /// Where watermarks and leases live.
    pub store: StoreSection,
    /// `offload maintain`, and maintenance inside `offload run`.
    #[serde(default)]
    pub maintenance: MaintenanceSection,
    /// `offload reconcile`.
    #[serde(default)]
    pub reconcile: ReconcileSection,
    /// What to offload.
    #[serde(default)]
    pub tables: Vec<TableSection>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text. Reads no environment variable and
    /// connects to nothing.
    ///
    /// ```
    /// use offload_cli::config::Config;
    /// let err = Config::parse("[engine]\ninterval = 5").unwrap_err();
    /// assert!(err.to_string().contains("engine.interval"), "{err}");
    /// ```
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            key: String::new(),
            message: parse_message(text, &e),
        })?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            key: e.path().to_string(),
            message: parse_message(text, e.inner()),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The namespace bare sink table names resolve in (`iceberg.namespace`,
    /// default [`offload_sink_iceberg::DEFAULT_NAMESPACE`]).
    pub fn namespace(&self) -> &str {
        self.iceberg
            .namespace
            .as_deref()
            .unwrap_or(offload_sink_iceberg::DEFAULT_NAMESPACE)
    }

    /// The catalog name (default [`offload_sink_iceberg::DEFAULT_CATALOG_NAME`]).
    pub fn catalog_name(&self) -> &str {
        self.iceberg
            .catalog
            .name()
            .unwrap_or(offload_sink_iceberg::DEFAULT_CATALOG_NAME)
    }

    /// The orphan grace period: `[maintenance] orphan_grace`, else its alias
    /// `[iceberg.writer] orphan_grace`, else `None` (the sink's default).
    pub fn orphan_grace(&self) -> Option<Dur> {
        self.maintenance.orphan_grace.or(self.iceberg.writer.orphan_grace)
    }

    /// The tables as offload-core configurations, with their adapter options
    /// (Iceberg partitioning, ClickHouse filter) attached.
    pub fn table_configs(&self) -> Result<Vec<TableConfig>, ConfigError> {
        self.tables
            .iter()
            .enumerate()
            .map(|(i, t)| t.to_config(&format!("tables[{i}]")))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = ConfigError::invalid;
        if self.tables.is_empty() {
            return Err(bad("tables", "at least one [[tables]] entry is required"));
        }
        let e = &self.engine;
        if e.concurrency == 0 {
            return Err(bad("engine.concurrency", "must be at least 1"));
        }
        if e.interval.0.is_zero() {
            return Err(bad("engine.interval", "must be positive"));
        }
        if e.lease_ttl.0.is_zero() {
            return Err(bad("engine.lease_ttl", "must be positive"));
        }
        if e.pipeline_depth == Some(0) {
            return Err(bad("engine.pipeline_depth", "must be at least 1"));
        }
        if e.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return Err(bad("engine.id", "must not be empty"));
        }
        let r = &self.retry;
        if r.attempts == 0 {
            return Err(bad("retry.attempts", "must be at least 1 (1 = no retries)"));
        }
        if r.initial_backoff > r.max_backoff {
            return Err(bad("retry.initial_backoff", "must not exceed retry.max_backoff"));
        }
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            return Err(bad("retry.multiplier", "must be a number >= 1"));
        }
        let t = &self.timeouts;
        for (key, d) in [
            ("source", t.source),
            ("sink", t.sink),
            ("staging", t.staging),
            ("commit", t.commit),
            ("connect", t.connect),
            ("cleanup", t.cleanup),
            ("store", t.store),
        ] {
            if d.0.is_zero() {
                return Err(bad(&format!("timeouts.{key}"), "must be positive"));
            }
        }
        self.maintenance.validate()?;
        value::refuse_inline_password("clickhouse.url", &self.clickhouse.url)?;
        self.validate_iceberg()?;
        if let StoreSection::Postgres { url, url_env, .. } = &self.store {
            one_url("store", url, url_env)?;
        }
        if let Some(k) = &self.reconcile.kafka {
            refuse_secret_keys(
                "reconcile.kafka.properties",
                k.properties.keys(),
                "properties_env",
            )?;
        }
        let mut names = HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            if !names.insert(&t.name) {
                return Err(bad(
                    &format!("tables[{i}].name"),
                    &format!("duplicate table name {:?}", t.name),
                ));
            }
        }
        self.table_configs()?;
        Ok(())
    }

    fn validate_iceberg(&self) -> Result<(), ConfigError> {
        let bad = ConfigError::invalid;
        let ice = &self.iceberg;
        if ice.warehouse.trim().is_empty() {
            return Err(bad("iceberg.warehouse", "must not be empty"));
        }
        if ice.namespace.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(bad("iceberg.namespace", "must not be empty"));
        }
        match &ice.catalog {
            CatalogSection::Postgres {
                url,
                url_env,
                properties,
                ..
            } => {
                one_url("iceberg.catalog", url, url_env)?;
                refuse_secret_keys("iceberg.catalog.properties", properties.keys(), "password_env")?;
            }
            CatalogSection::Rest { uri, properties, .. } => {
                value::refuse_inline_password("iceberg.catalog.uri", uri)?;
                refuse_secret_keys(
                    "iceberg.catalog.properties",
                    properties.keys(),
                    "credential_env or token_env",
                )?;
            }
            CatalogSection::Sqlite { .. } => {}
        }
        let s3_warehouse = ice.warehouse.starts_with("s3://") || ice.warehouse.starts_with("s3a://");
        let rest = matches!(ice.catalog, CatalogSection::Rest { .. });
        if ice.s3.is_some() && !s3_warehouse && !rest {
            return Err(bad(
                "iceberg.s3",
                "S3 settings need an s3:// warehouse (iceberg.warehouse)",
            ));
        }
        let w = &ice.writer;
        if w.zstd_level.is_some_and(|l| !(1..=22).contains(&l)) {
            return Err(bad("iceberg.writer.zstd_level", "must be within 1..=22"));
        }
        if w.target_file_size_mib == Some(0) {
            return Err(bad("iceberg.writer.target_file_size_mib", "must be at least 1"));
        }
        if w.row_group_rows == Some(0) {
            return Err(bad("iceberg.writer.row_group_rows", "must be positive"));
        }
        if w.writer_tasks.is_some_and(|n| !(1..=64).contains(&n)) {
            return Err(bad("iceberg.writer.writer_tasks", "must be within 1..=64"));
        }
        if w.queue_depth == Some(0) {
            return Err(bad("iceberg.writer.queue_depth", "must be positive"));
        }
        if w.partition_idle_batches == Some(0) {
            return Err(bad("iceberg.writer.partition_idle_batches", "must be positive"));
        }
        if w.max_open_partitions == Some(0) {
            return Err(bad("iceberg.writer.max_open_partitions", "must be positive"));
        }
        Ok(())
    }
}

/// Refuses property keys that name a secret: those values come from the environment.
fn refuse_secret_keys<'a>(
    key: &str,
    keys: impl IntoIterator<Item = &'a String>,
    instead: &str,
) -> Result<(), ConfigError> {
    for k in keys {
        let lower = k.to_ascii_lowercase();
        if ["password", "secret", "token", "credential"]
            .iter()
            .any(|s| lower.contains(s))
        {
            return Err(ConfigError::invalid(
                &format!("{key}.{k}"),
                format!("holds a secret: secrets come from the environment only (use {instead})"),
            ));
        }
    }
    Ok(())
}

/// Exactly one of `url` / `url_env`, and no password inline.
fn one_url(section: &str, url: &Option<String>, url_env: &Option<EnvVar>) -> Result<(), ConfigError> {
    match (url, url_env) {
        (Some(u), None) => value::refuse_inline_password(&format!("{section}.url"), u),
        (None, Some(_)) => Ok(()),
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            &format!("{section}.url"),
            "give url or url_env, not both",
        )),
        (None, None) => Err(ConfigError::invalid(
            &format!("{section}.url"),
            "missing: give url (with password_env) or url_env",
        )),
    }
}
