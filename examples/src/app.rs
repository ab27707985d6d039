//! Turning a [`Config`] into running parts: the ClickHouse source, the Iceberg
//! sink, the watermark store and the engine, plus logging and metrics.

use std::sync::Arc;

use offload_core::{Offloader, TableConfig, WatermarkStore};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::ClickHouseSource;
use offload_watermark_store::{FileStore, PostgresStore};

use crate::config::{CatalogSection, Config, ConfigError, StoreSection};

/// Why the program could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ClickHouse source could not be set up.
    #[error("clickhouse: {0}")]
    Source(#[from] offload_source_clickhouse::ClickHouseError),
    /// The Iceberg catalog could not be reached or configured.
    #[error("iceberg: {0}")]
    Sink(#[from] offload_sink_iceberg::IcebergSinkError),
    /// The watermark store could not be opened.
    #[error("watermark store: {0}")]
    Store(#[from] offload_watermark_store::StoreError),
    /// The engine refused its settings or a run failed.
    #[error(transparent)]
    Engine(#[from] offload_core::Error),
    /// Metrics or logging could not be installed.
    #[error("{0}")]
    Setup(String),
}

/// The assembled program: an engine and the tables it offloads.
#[derive(Debug)]
pub struct App {
    /// The engine.
    pub engine: Arc<Offloader>,
    /// The tables, validated.
    pub tables: Vec<TableConfig>,
    /// The Iceberg sink, for cleanup and inspection.
    pub sink: Arc<IcebergSink>,
}

impl App {
    /// Connects everything a configuration names.
    pub async fn build(cfg: &Config) -> Result<Self, AppError> {
        let tables = cfg.table_configs()?;
        let ch = &cfg.clickhouse;
        let mut source = ClickHouseSource::builder(&ch.url);
        if let Some(db) = &ch.database {
            source = source.database(db);
        }
        if let Some(user) = &ch.user {
            source = source.user(user);
        }
        if let Some(pw) = ch.password()? {
            source = source.password(pw.expose());
        }
        for (t, cfg_t) in cfg.tables.iter().zip(&tables) {
            if let Some(f) = &t.filter {
                source = source.filter(cfg_t.name(), f);
            }
        }
        let source = Arc::new(source.build()?);
        let mut sink_cfg = IcebergSinkConfig::new(catalog_config(&cfg.catalog)?);
        if let Some(grace) = cfg.catalog.orphan_grace {
            sink_cfg = sink_cfg.orphan_grace(grace.0);
        }
        let sink = Arc::new(IcebergSink::connect(sink_cfg).await?);
        let store: Arc<dyn WatermarkStore> = match &cfg.store {
            StoreSection::File { path } => Arc::new(FileStore::open(path)?),
            StoreSection::Postgres {
                url,
                schema,
                password_env,
            } => Arc::new(
                PostgresStore::builder(with_password(url, password_env.as_deref())?)
                    .schema(schema.as_deref().unwrap_or("offload"))
                    .connect()
                    .await?,
            ),
        };
        let mut engine = Offloader::builder(source, sink.clone(), store)
            .concurrency(cfg.concurrency)
            .lease_ttl(cfg.lease_ttl.0);
        if let Some(id) = &cfg.engine_id {
            engine = engine.engine_id(id);
        }
        Ok(App {
            engine: Arc::new(engine.build()?),
            tables,
            sink,
        })
    }
}

/// The catalog section as the sink's typed configuration.
pub fn catalog_config(c: &CatalogSection) -> Result<CatalogConfig, AppError> {
    let mut uri = with_password(&c.uri, c.password_env.as_deref())?;
    if !uri.contains("warehouse=") {
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str("warehouse=");
        uri.push_str(&c.warehouse.display().to_string());
    }
    let mut cfg = CatalogConfig::from_uri(&uri)?;
    if let Some(name) = &c.name {
        cfg = cfg.with_name(name);
    }
    Ok(cfg)
}

/// Puts the password from `env` into a `scheme://user@host` URL's user info, so
/// configuration files never hold it.
fn with_password(url: &str, env: Option<&str>) -> Result<String, AppError> {
    let Some(var) = env else { return Ok(url.to_owned()) };
    let pw = std::env::var(var).map_err(|_| ConfigError::MissingEnv(var.to_owned()))?;
    let (scheme, rest) = url.split_once("://").ok_or_else(|| ConfigError::Invalid {
        field: "url".into(),
        reason: "expected scheme://user@host/...".into(),
    })?;
    let (user, host) = rest.split_once('@').ok_or_else(|| ConfigError::Invalid {
        field: "url".into(),
        reason: "password_env needs a user in the URL (scheme://user@host/...)".into(),
    })?;
    let user = user.split(':').next().unwrap_or(user);
    let encoded: String = pw
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("{scheme}://{user}:{encoded}@{host}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level`, e.g. `info`).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Serves Prometheus metrics at `http://<addr>/metrics`.
pub fn init_metrics(addr: std::net::SocketAddr) -> Result<(), AppError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| AppError::Setup(format!("metrics listener on {addr}: {e}")))
}
