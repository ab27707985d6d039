//! Turning a [`Config`] into connected parts: the ClickHouse source, the
//! Iceberg sink, the watermark store (each wrapped in the program's layers,
//! see [`crate::stack`]) and the engine.

use std::sync::Arc;

use offload_core::{Offloader, RetryPolicy, Sink, Source, TableConfig, WatermarkStore};
use offload_sink_iceberg::{
    CatalogConfig, IcebergSink, IcebergSinkConfig, MaintenanceConfig, S3Config, StorageConfig,
};
use offload_source_clickhouse::{ClickHouseSource, Compression, SubMicrosecond, UInt64Mapping};
use offload_watermark_store::{FileStore, PostgresStore};

use crate::config::{
    CatalogSection, ClickHouseSection, CompressionName, Config, ConfigError, EnvVar, StoreSection,
    SubMicrosecondName, UInt64Name,
};
use crate::stack::Stack;

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
    /// The engine refused its settings, or an operation failed.
    #[error(transparent)]
    Engine(#[from] offload_core::Error),
    /// The reconcile library refused its settings.
    #[error("reconcile: {0}")]
    Reconcile(#[from] offload_reconcile::Error),
    /// Metrics, logging or fault injection could not be installed.
    #[error("{0}")]
    Setup(String),
}

/// The assembled program: the engine, its tables, and the parts it runs on.
#[derive(Debug)]
pub struct App {
    /// The engine (built without default layers: the parts below carry the program's).
    pub engine: Arc<Offloader>,
    /// The tables, validated, adapter options attached.
    pub tables: Vec<TableConfig>,
    /// The Iceberg sink itself, for inspection (`status`, `reconcile`, tests).
    pub iceberg: Arc<IcebergSink>,
    /// The sink with the program's layers, as the engine uses it.
    pub sink: Arc<dyn Sink>,
    /// The store with the program's layers, as the engine uses it.
    pub store: Arc<dyn WatermarkStore>,
}

impl App {
    /// Connects everything a configuration names and builds the engine.
    pub async fn build(cfg: &Config) -> Result<Self, AppError> {
        let stack = Stack::from_config(cfg)?;
        let tables = cfg.table_configs()?;
        let source = stack.source(clickhouse_source(&cfg.clickhouse)?);
        let iceberg = connect_sink(cfg).await?;
        let sink = stack.sink(iceberg.clone());
        let store = stack.store(connect_store(cfg).await?);
        let e = &cfg.engine;
        let mut engine = Offloader::builder(source, sink.clone(), store.clone())
            .without_default_layers()
            .retry(retry_policy(cfg))
            .concurrency(e.concurrency)
            .lease_ttl(e.lease_ttl.0);
        // Unset: the engine's default (at start-up, then hourly); "0s" turns it off.
        if let Some(d) = e.cleanup_interval {
            engine = engine.cleanup_interval((!d.0.is_zero()).then_some(d.0));
        }
        if let Some(n) = e.pipeline_depth {
            engine = engine.pipeline_depth(n);
        }
        if let Some(d) = e.sweep_interval {
            engine = engine.sweep_interval(d.0);
        }
        engine = engine.maintenance_interval(cfg.maintenance.run_interval());
        if let Some(d) = e.stale_run_timeout {
            engine = engine.stale_run_timeout(d.0);
        }
        if let Some(id) = &e.id {
            engine = engine.engine_id(id);
        }
        Ok(App {
            engine: Arc::new(engine.build()?),
            tables,
            iceberg,
            sink,
            store,
        })
    }
}

/// The `[retry]` section as offload-core's policy.
pub fn retry_policy(cfg: &Config) -> RetryPolicy {
    let r = &cfg.retry;
    RetryPolicy::default()
        .max_attempts(r.attempts)
        .initial_backoff(r.initial_backoff.0)
        .max_backoff(r.max_backoff.0)
        .multiplier(r.multiplier)
}

/// The ClickHouse source (nothing is sent to the server until the first call).
pub fn clickhouse_source(ch: &ClickHouseSection) -> Result<Arc<dyn Source>, AppError> {
    let mut b = ClickHouseSource::builder(&ch.url);
    if let Some(db) = &ch.database {
        b = b.database(db);
    }
    if let Some(user) = &ch.user {
        b = b.user(user);
    }
    if let Some(pw) = EnvVar::secret_opt(&ch.password_env, "clickhouse.password_env")? {
        b = b.password(pw.expose());
    }
    if let Some(ca) = &ch.tls_ca_file {
        b = b.tls_ca_file(ca);
    }
    b = b.compression(match ch.compression {
        CompressionName::Auto => Compression::Auto,
        CompressionName::None => Compression::None,
        CompressionName::Lz4 => Compression::Lz4,
    });
    if let Some(d) = ch.stream_idle_timeout {
        b = b.stream_idle_timeout(d.0);
    }
    b = b.uint64_mapping(match ch.uint64 {
        UInt64Name::Decimal => UInt64Mapping::Decimal,
        UInt64Name::Int64 => UInt64Mapping::Int64,
    });
    b = b.sub_microsecond(match ch.sub_microsecond {
        SubMicrosecondName::Truncate => SubMicrosecond::Truncate,
        SubMicrosecondName::Nanoseconds => SubMicrosecond::Nanoseconds,
        SubMicrosecondName::Refuse => SubMicrosecond::Refuse,
    });
    for (k, v) in &ch.settings {
        b = b.setting(k, &v.0);
    }
    Ok(Arc::new(b.build()?))
}

/// `url` or the value of `url_env`, with the password of `password_env` put in.
fn resolve_url(
    section: &str,
    url: &Option<String>,
    url_env: &Option<EnvVar>,
    password_env: &Option<EnvVar>,
) -> Result<String, ConfigError> {
    let url = match (url, url_env) {
        (Some(u), _) => u.clone(),
        (None, Some(env)) => env.secret(&format!("{section}.url_env"))?.expose().to_owned(),
        (None, None) => return Err(ConfigError::invalid(&format!("{section}.url"), "missing")),
    };
    match EnvVar::secret_opt(password_env, &format!("{section}.password_env"))? {
        Some(pw) => crate::config::with_password(&format!("{section}.url"), &url, &pw),
        None => Ok(url),
    }
}

/// The `[iceberg]` section as the sink's typed catalog configuration.
pub fn catalog_config(cfg: &Config) -> Result<CatalogConfig, AppError> {
    let ice = &cfg.iceberg;
    let wh = ice.warehouse.clone();
    let mut c = match &ice.catalog {
        CatalogSection::Sqlite { path, .. } => CatalogConfig::sqlite(path, wh),
        CatalogSection::Postgres {
            url,
            url_env,
            password_env,
            properties,
            ..
        } => {
            let url = resolve_url("iceberg.catalog", url, url_env, password_env)?;
            let mut c = CatalogConfig::postgres(url, wh);
            for (k, v) in properties {
                c = c.with_property(k, v);
            }
            c
        }
        CatalogSection::Rest {
            uri,
            credential_env,
            token_env,
            properties,
            ..
        } => {
            if !cfg!(feature = "rest") {
                return Err(ConfigError::invalid(
                    "iceberg.catalog.kind",
                    "the REST catalog needs offload-cli built with its `rest` feature \
                     (cargo install offload-cli --features rest)",
                )
                .into());
            }
            let mut c = CatalogConfig::rest(uri, wh);
            for (k, v) in properties {
                c = c.with_property(k, v);
            }
            if let Some(s) = EnvVar::secret_opt(credential_env, "iceberg.catalog.credential_env")? {
                c = c.with_property("credential", s.expose());
            }
            if let Some(s) = EnvVar::secret_opt(token_env, "iceberg.catalog.token_env")? {
                c = c.with_property("token", s.expose());
            }
            c
        }
    };
    c = c.with_name(cfg.catalog_name());
    let s3_warehouse = ice.warehouse.starts_with("s3://") || ice.warehouse.starts_with("s3a://");
    if (ice.s3.is_some() || s3_warehouse) && !cfg!(feature = "s3") {
        return Err(ConfigError::invalid(
            "iceberg.warehouse",
            "an S3 warehouse needs offload-cli built with its `s3` feature \
             (cargo install offload-cli --features s3)",
        )
        .into());
    }
    if let Some(s3) = &ice.s3 {
        let secret = |v: &Option<EnvVar>, key: &str| -> Result<Option<String>, ConfigError> {
            Ok(EnvVar::secret_opt(v, &format!("iceberg.s3.{key}"))?.map(|s| s.expose().to_owned()))
        };
        c = c.with_storage(StorageConfig::S3(S3Config {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key_id: secret(&s3.access_key_id_env, "access_key_id_env")?,
            secret_access_key: secret(&s3.secret_access_key_env, "secret_access_key_env")?,
            session_token: secret(&s3.session_token_env, "session_token_env")?,
            path_style_access: s3.path_style,
            allow_anonymous: s3.allow_anonymous,
        }));
    }
    Ok(c)
}

/// The sink's whole configuration: catalog, namespace and writer tuning.
pub fn sink_config(cfg: &Config) -> Result<IcebergSinkConfig, AppError> {
    let w = &cfg.iceberg.writer;
    let mut s = IcebergSinkConfig::new(catalog_config(cfg)?).default_namespace(cfg.namespace());
    if let Some(v) = w.zstd_level {
        s = s.zstd_level(v);
    }
    if let Some(v) = w.target_file_size_mib {
        s = s.target_file_size(v << 20);
    }
    if let Some(v) = w.row_group_rows {
        s = s.row_group_rows(v);
    }
    if let Some(v) = w.writer_tasks {
        s = s.writer_tasks(v);
    }
    if let Some(v) = w.queue_depth {
        s = s.queue_depth(v);
    }
    if let Some(v) = w.partition_idle_batches {
        s = s.partition_idle_batches(v);
    }
    if let Some(v) = w.max_open_partitions {
        s = s.max_open_partitions(v);
    }
    // The sink bounds its commits itself: only it knows whether a commit that
    // ran out of time had reached the catalog (unknown outcome) or not.
    s = s
        .commit_timeout(cfg.timeouts.commit.0)
        .connect_timeout(cfg.timeouts.connect.0);
    // One orphan grace, for cleanup and maintenance alike.
    s = s.maintenance(maintenance_config(cfg)?);
    if let Some(v) = w.check_duplicate_files {
        s = s.check_duplicate_files(v);
    }
    Ok(s)
}

/// The `[maintenance]` section (and the `[iceberg.writer] orphan_grace`
/// alias) as the sink's maintenance configuration; in builds with the
/// `failpoints` feature, with the `maintain.*` fault points of
/// `OFFLOAD_FAILPOINTS` as its step hook.
pub fn maintenance_config(cfg: &Config) -> Result<MaintenanceConfig, AppError> {
    let m = &cfg.maintenance;
    let mut c = MaintenanceConfig::default();
    if let Some(v) = m.target_file_size {
        c = c.target_file_size(v.0);
    }
    if let Some(v) = m.min_input_files {
        c = c.min_input_files(v);
    }
    if let Some(v) = m.compact_open {
        c = c.compact_open(v);
    }
    if let Some(v) = m.manifest_entries {
        c = c.manifest_entries(v);
    }
    if let Some(v) = m.max_manifests {
        c = c.max_manifests(v);
    }
    if let Some(v) = m.snapshot_retention {
        c = c.snapshot_retention(v.0);
    }
    if let Some(v) = m.keep_snapshots {
        c = c.keep_snapshots(v);
    }
    if let Some(v) = m.delete_grace {
        c = c.delete_grace(v.0);
    }
    if let Some(v) = cfg.orphan_grace() {
        c = c.orphan_grace(v.0);
    }
    if let Some(v) = m.keep_metadata_files {
        c = c.keep_metadata_files(v);
    }
    if let Some(v) = m.max_commit_attempts {
        c = c.max_commit_attempts(v);
    }
    #[cfg(feature = "failpoints")]
    if let Some(hook) = crate::faults::step_hook()? {
        c = c.on_step(hook);
    }
    Ok(c)
}

/// Connects the Iceberg sink (opens, or for SQLite creates, the catalog).
pub async fn connect_sink(cfg: &Config) -> Result<Arc<IcebergSink>, AppError> {
    Ok(Arc::new(IcebergSink::connect(sink_config(cfg)?).await?))
}

/// Opens the watermark store.
pub async fn connect_store(cfg: &Config) -> Result<Arc<dyn WatermarkStore>, AppError> {
    let connect_timeout = cfg.timeouts.connect.0;
    Ok(match &cfg.store {
        StoreSection::File { path } => Arc::new(FileStore::open(path)?),
        StoreSection::Postgres {
            url,
            url_env,
            password_env,
            schema,
            max_connections,
        } => {
            let url = resolve_url("store", url, url_env, password_env)?;
            let mut b = PostgresStore::builder(url).schema(schema.as_deref().unwrap_or("offload"));
            if let Some(n) = max_connections {
                b = b.max_connections(*n);
            }
            b = b.connect_timeout(connect_timeout);
            Arc::new(b.connect().await?)
        }
    })
}

/// Crates whose debug logs print credentials: reqsign (S3 request signing)
/// logs its static credential provider's `Debug`, secret key included.
/// Capped at `info` whatever `RUST_LOG` says (cli/tests/s3.rs checks it).
const SECRET_LOGGERS: [&str; 4] = [
    "reqsign_core",
    "reqsign_aws_v4",
    "reqsign_aws_core",
    "reqsign_file_read_tokio",
];

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level`, e.g. `info`),
/// never below `info` for the crates whose debug lines print credentials (reqsign).
pub fn init_logging(default_level: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    for target in SECRET_LOGGERS {
        filter = filter.add_directive(format!("{target}=info").parse().expect("a valid directive"));
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the Prometheus recorder and serves `http://<addr>/metrics`,
/// `/healthz` and `/readyz` ([`crate::http`]). Must be called inside a tokio
/// runtime. Returns the bound address.
pub fn init_metrics(addr: std::net::SocketAddr) -> Result<std::net::SocketAddr, AppError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| AppError::Setup(format!("metrics recorder: {e}")))?;
    crate::http::serve(addr, handle, crate::http::health())
        .map_err(|e| AppError::Setup(format!("metrics listener on {addr}: {e}")))
}
