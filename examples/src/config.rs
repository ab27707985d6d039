//! The `offload` program's TOML configuration: parsed strictly (unknown keys are
//! errors, so a typo never silently falls back to a default), validated into
//! offload-core's [`TableConfig`]s, and never echoing secrets.
//!
//! ```toml
//! engine_id = "worker-1"
//! interval = "30s"
//! concurrency = 4
//! metrics_addr = "127.0.0.1:9898"
//!
//! [clickhouse]
//! url = "http://127.0.0.1:8123"
//! database = "market"
//! user = "default"
//! password_env = "CLICKHOUSE_PASSWORD"   # the password itself never sits in the file
//!
//! [catalog]
//! uri = "sqlite:///var/lib/offload/catalog.db"   # or postgres://...
//! warehouse = "/var/lib/offload/warehouse"
//! orphan_grace = "24h"        # cleanup leaves younger staged files alone
//!
//! [store]
//! kind = "file"                 # or "postgres"
//! path = "/var/lib/offload/watermarks"
//!
//! [[tables]]
//! name = "bronze_trades"
//! sink_table = "market.bronze_trades"
//! timestamp_column = "exchange_timestamp"
//! sequence_column = "sequence_number"
//! lag = "5m"
//! partition = "day"
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use offload_core::{PartitionField, TableConfig, Transform};
use serde::Deserialize;

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
    /// Not valid TOML, or keys/types do not match the schema (message has line and column).
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid {
        /// Where (e.g. `tables[2].lag`).
        field: String,
        /// Why.
        reason: String,
    },
    /// A table's settings were refused by offload-core.
    #[error("invalid table {table:?}: {source}")]
    Table {
        /// The table's name.
        table: String,
        /// offload-core's reason.
        source: offload_core::Error,
    },
    /// An environment variable named in the file is not set.
    #[error("environment variable {0} (named in the configuration) is not set")]
    MissingEnv(String),
}

/// A duration written as `<number><unit>`: `250ms`, `30s`, `5m`, `2h`, `1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    /// ```
    /// use offload_examples::config::HumanDuration;
    /// assert_eq!("5m".parse::<HumanDuration>().unwrap().0.as_secs(), 300);
    /// assert!("5 parsecs".parse::<HumanDuration>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 250ms, 30s, 5m, 2h or 1d"))?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
        };
        n.checked_mul(millis_per)
            .map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A password given inline or, better, by the name of an environment variable.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, to hand to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Id recorded with leases and commits (default: generated).
    pub engine_id: Option<String>,
    /// Pause between scheduled cycles (default 1m).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Tables offloaded at once (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Lease length (default 5m).
    #[serde(default = "default_lease")]
    pub lease_ttl: HumanDuration,
    /// Serve Prometheus metrics at `http://<addr>/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where rows come from.
    pub clickhouse: ClickHouseSection,
    /// Where rows go.
    pub catalog: CatalogSection,
    /// Where watermarks and leases live.
    pub store: StoreSection,
    /// What to offload.
    pub tables: Vec<TableSection>,
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_concurrency() -> usize {
    4
}
fn default_lease() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// `[clickhouse]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSection {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database (default `default`).
    pub database: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Inline password (prefer `password_env`).
    pub password: Option<Secret>,
    /// Name of the environment variable holding the password.
    pub password_env: Option<String>,
}

impl ClickHouseSection {
    /// The password, from the environment if so configured.
    pub fn password(&self) -> Result<Option<Secret>, ConfigError> {
        match (&self.password, &self.password_env) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                field: "clickhouse.password".into(),
                reason: "give password or password_env, not both".into(),
            }),
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(var)) => std::env::var(var)
                .map(|v| Some(Secret(v)))
                .map_err(|_| ConfigError::MissingEnv(var.clone())),
            (None, None) => Ok(None),
        }
    }
}

/// `[catalog]`: an Iceberg SQL catalog and its warehouse.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// `sqlite:///path/catalog.db` or `postgres://user@host/db` (password via `password_env`).
    pub uri: String,
    /// Warehouse root (a local directory).
    pub warehouse: PathBuf,
    /// Catalog name (default `offload`).
    pub name: Option<String>,
    /// Environment variable with the catalog database's password.
    pub password_env: Option<String>,
    /// Staged files younger than this are never deleted by cleanup, so a run
    /// still writing is safe (default 24h). Must exceed your longest run.
    pub orphan_grace: Option<HumanDuration>,
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreSection {
    /// One directory of crash-safe files (single machine).
    File {
        /// The directory.
        path: PathBuf,
    },
    /// PostgreSQL, shared by many workers.
    Postgres {
        /// `postgres://user@host:port/db`.
        url: String,
        /// Schema the store creates its table in (default `offload`).
        schema: Option<String>,
        /// Environment variable with the password.
        password_env: Option<String>,
    },
}

/// One `[[tables]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    /// Key in the store, logs and metrics.
    pub name: String,
    /// ClickHouse table (default: `name`).
    pub source_table: Option<String>,
    /// Iceberg table as `namespace.table` (default: `offload.<name>`).
    pub sink_table: Option<String>,
    /// Event-time column.
    pub timestamp_column: String,
    /// Sequence column.
    pub sequence_column: String,
    /// Columns to copy (default all).
    pub columns: Option<Vec<String>>,
    /// Hold-back for late rows (default 5m).
    pub lag: Option<HumanDuration>,
    /// Rows per batch.
    pub batch_size: Option<usize>,
    /// Largest event-time span per run.
    pub max_window: Option<HumanDuration>,
    /// `none`, `year`, `month`, `day` (default), `hour` (all on the timestamp column),
    /// `identity:<col>`, `bucket:<col>:<n>`, `truncate:<col>:<width>`.
    pub partition: Option<String>,
    /// Extra ClickHouse filter, e.g. `symbol != 'TEST'`.
    pub filter: Option<String>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    ///
    /// ```
    /// use offload_examples::config::Config;
    /// let err = Config::parse("interval = 5").unwrap_err();
    /// assert!(err.to_string().contains("interval"));
    /// ```
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if cfg.tables.is_empty() {
            return Err(invalid("tables", "at least one [[tables]] entry is required"));
        }
        if cfg.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        if cfg.interval.0.is_zero() {
            return Err(invalid("interval", "must be positive"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in cfg.tables.iter().enumerate() {
            if !names.insert(&t.name) {
                return Err(invalid(&format!("tables[{i}].name"), "duplicate table name"));
            }
        }
        cfg.table_configs()?;
        Ok(cfg)
    }

    /// The tables as validated offload-core configurations.
    pub fn table_configs(&self) -> Result<Vec<TableConfig>, ConfigError> {
        self.tables
            .iter()
            .enumerate()
            .map(|(i, t)| t.to_config(i))
            .collect()
    }
}

impl TableSection {
    fn to_config(&self, i: usize) -> Result<TableConfig, ConfigError> {
        let mut b = TableConfig::builder(&self.name)
            .source_table(self.source_table.clone().unwrap_or_else(|| self.name.clone()))
            .sink_table(
                self.sink_table
                    .clone()
                    .unwrap_or_else(|| format!("offload.{}", self.name)),
            )
            .timestamp_column(&self.timestamp_column)
            .sequence_column(&self.sequence_column);
        if let Some(cols) = &self.columns {
            b = b.columns(cols.clone());
        }
        if let Some(l) = self.lag {
            b = b.lag(l.0);
        }
        if let Some(n) = self.batch_size {
            b = b.batch_size(n);
        }
        if let Some(w) = self.max_window {
            b = b.max_window(w.0);
        }
        if let Some(p) = &self.partition {
            b = match parse_partition(p, &self.timestamp_column)
                .map_err(|r| invalid(&format!("tables[{i}].partition"), &r))?
            {
                None => b.unpartitioned(),
                Some(f) => b.partition_by(f),
            };
        }
        b.build().map_err(|source| ConfigError::Table {
            table: self.name.clone(),
            source,
        })
    }
}

fn invalid(field: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses a partition spec (see [`TableSection::partition`]). `Ok(None)` = unpartitioned.
///
/// ```
/// use offload_core::Transform;
/// use offload_examples::config::parse_partition;
/// let f = parse_partition("bucket:symbol:16", "ts").unwrap().unwrap();
/// assert_eq!((f.column(), f.transform()), ("symbol", &Transform::Bucket(16)));
/// assert_eq!(parse_partition("day", "ts").unwrap().unwrap().column(), "ts");
/// assert!(parse_partition("bucket:symbol", "ts").is_err());
/// ```
pub fn parse_partition(spec: &str, timestamp_column: &str) -> Result<Option<PartitionField>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let time = |t| Ok(Some(PartitionField::new(timestamp_column, t)));
    let param = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{v:?} is not a positive whole number"))
    };
    match parts.as_slice() {
        ["none"] => Ok(None),
        ["year"] => time(Transform::Year),
        ["month"] => time(Transform::Month),
        ["day"] => time(Transform::Day),
        ["hour"] => time(Transform::Hour),
        ["identity", col] => Ok(Some(PartitionField::new(*col, Transform::Identity))),
        ["bucket", col, n] => Ok(Some(PartitionField::new(*col, Transform::Bucket(param(n)?)))),
        ["truncate", col, w] => Ok(Some(PartitionField::new(*col, Transform::Truncate(param(w)?)))),
        _ => Err(format!(
            "{spec:?}: expected none, year, month, day, hour, identity:<col>, bucket:<col>:<n> or truncate:<col>:<width>"
        )),
    }
}
