//! Catalog construction and the fencing wrapper.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use iceberg::io::StorageFactory;
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, ErrorKind, Namespace, NamespaceIdent, Result as IcebergResult, TableCommit,
    TableCreation, TableIdent,
};
use offload_core::{SinkVersion, Watermark};

use crate::config::{CatalogBackend, CatalogConfig, StorageConfig};
use crate::{IcebergSinkError, markers};

/// Connects to the configured catalog.
pub(crate) async fn connect(cfg: &CatalogConfig) -> Result<Arc<dyn Catalog>, IcebergSinkError> {
    #[allow(unused_mut)] // only the s3 feature adds to it
    let mut props: HashMap<String, String> = cfg.properties().clone().into_iter().collect();
    let factory: Arc<dyn StorageFactory> = match cfg.storage() {
        StorageConfig::LocalFs => Arc::new(iceberg::io::LocalFsStorageFactory),
        #[cfg(feature = "s3")]
        StorageConfig::S3(s3) => {
            props.extend(s3.to_props());
            Arc::new(iceberg_storage_opendal::OpenDalStorageFactory::S3 {
                customized_credential_load: None,
            })
        }
        #[cfg(not(feature = "s3"))]
        StorageConfig::S3(_) => {
            return Err(IcebergSinkError::Config {
                field: "storage",
                reason: "S3 storage needs offload-sink-iceberg built with the `s3` feature".into(),
            });
        }
    };
    let name = cfg.name().to_owned();
    let warehouse = cfg.warehouse().to_owned();
    let ctx = |what: &str| format!("connect to the {what} catalog {name:?}");
    match cfg.backend() {
        CatalogBackend::Sqlite { path } => {
            #[cfg(feature = "sqlite")]
            {
                let uri = prepare_sqlite(path).await?;
                let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
                    .uri(uri)
                    .warehouse_location(warehouse)
                    .sql_bind_style(iceberg_catalog_sql::SqlBindStyle::QMark)
                    .props(props)
                    .with_storage_factory(factory)
                    .load(name.clone(), HashMap::new())
                    .await
                    .map_err(|e| IcebergSinkError::iceberg(ctx("SQLite"), e))?;
                Ok(Arc::new(catalog))
            }
            #[cfg(not(feature = "sqlite"))]
            {
                let _ = (path, factory, props, warehouse, ctx);
                Err(IcebergSinkError::Config {
                    field: "catalog",
                    reason: "the SQLite catalog needs the `sqlite` feature".into(),
                })
            }
        }
        CatalogBackend::Postgres { url } => {
            #[cfg(feature = "postgres")]
            {
                pg_tls::check_available(url)?;
                let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
                    .uri(url.clone())
                    .warehouse_location(warehouse)
                    .sql_bind_style(iceberg_catalog_sql::SqlBindStyle::DollarNumeric)
                    .props(props)
                    .with_storage_factory(factory)
                    .load(name.clone(), HashMap::new())
                    .await
                    .map_err(|e| match pg_tls::failure(&e, url) {
                        Some(reason) => IcebergSinkError::Config {
                            field: "catalog",
                            reason,
                        },
                        None => IcebergSinkError::iceberg(ctx("PostgreSQL"), e),
                    })?;
                Ok(Arc::new(catalog))
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = (url, factory, props, warehouse, ctx);
                Err(IcebergSinkError::Config {
                    field: "catalog",
                    reason: "the PostgreSQL catalog needs the `postgres` feature".into(),
                })
            }
        }
        CatalogBackend::Rest { uri } => {
            #[cfg(feature = "rest")]
            {
                use iceberg_catalog_rest::{
                    REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder,
                };
                props.insert(REST_CATALOG_PROP_URI.into(), uri.clone());
                props.insert(REST_CATALOG_PROP_WAREHOUSE.into(), warehouse);
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(name.clone(), props)
                    .await
                    .map_err(|e| IcebergSinkError::iceberg(ctx("REST"), e))?;
                Ok(Arc::new(catalog))
            }
            #[cfg(not(feature = "rest"))]
            {
                let _ = (uri, factory, props, warehouse, ctx);
                Err(IcebergSinkError::Config {
                    field: "catalog",
                    reason: "the REST catalog needs the `rest` feature".into(),
                })
            }
        }
        CatalogBackend::Memory => {
            props.insert(iceberg::memory::MEMORY_CATALOG_WAREHOUSE.into(), warehouse);
            let catalog = iceberg::memory::MemoryCatalogBuilder::default()
                .with_storage_factory(factory)
                .load(name.clone(), props)
                .await
                .map_err(|e| IcebergSinkError::iceberg(ctx("in-memory"), e))?;
            Ok(Arc::new(catalog))
        }
    }
}

/// TLS to the PostgreSQL catalog, set by its URL as with libpq
/// (`?sslmode=verify-full&sslrootcert=/path/ca.pem`): iceberg-catalog-sql's
/// sqlx `any` driver parses the same parameters, and the `rustls` feature
/// gives that sqlx rustls with the ring provider (roots: the `sslrootcert`
/// file and webpki's).
#[cfg(feature = "postgres")]
mod pg_tls {
    use offload_core::redact::redact_url;
    use sqlx::postgres::{PgConnectOptions, PgSslMode};

    use crate::IcebergSinkError;

    /// Refuses a URL that requires TLS (`sslmode=require`, `verify-ca`,
    /// `verify-full`) in a build without it, instead of sqlx's generic
    /// complaint at the first connection; `prefer` and `allow` may fall back
    /// to plaintext by definition.
    pub(super) fn check_available(url: &str) -> Result<(), IcebergSinkError> {
        // A URL that does not parse is the catalog's to report.
        let Ok(options) = url.parse::<PgConnectOptions>() else {
            return Ok(());
        };
        let mode = match options.get_ssl_mode() {
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
            PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer => return Ok(()),
        };
        if cfg!(feature = "rustls") {
            return Ok(());
        }
        Err(IcebergSinkError::Config {
            field: "catalog",
            reason: format!(
                "the PostgreSQL catalog URL {} asks for TLS (sslmode={mode}), but offload-sink-iceberg \
                 was built without its `rustls` feature: rebuild with it (the `offload` program has it by default)",
                redact_url(url)
            ),
        })
    }

    /// The TLS failure behind a catalog connect error, told with what to
    /// change; `None` when it is something else.
    pub(super) fn failure(e: &iceberg::Error, url: &str) -> Option<String> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        let sql = loop {
            let c = cause?;
            if let Some(sql) = c.downcast_ref::<sqlx::Error>() {
                break sql;
            }
            cause = c.source();
        };
        let options = url.parse::<PgConnectOptions>().ok()?;
        let endpoint = format!("{}:{}", options.get_host(), options.get_port());
        let what = offload_core::sql::tls_failure(sql, &endpoint)?;
        Some(format!(
            "TLS to the PostgreSQL catalog at {} failed: {what}",
            redact_url(url)
        ))
    }
}

/// Creates the SQLite file if missing and switches it to WAL, so readers
/// (pyiceberg, other sinks) never block a commit's compare-and-swap. Returns
/// the sqlx URI for it.
#[cfg(feature = "sqlite")]
async fn prepare_sqlite(path: &std::path::Path) -> Result<String, IcebergSinkError> {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{ConnectOptions, Connection};

    let text = path.to_str().ok_or_else(|| IcebergSinkError::Config {
        field: "sqlite path",
        reason: format!("{} is not UTF-8", path.display()),
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| IcebergSinkError::io(format!("create {}", parent.display()), e))?;
    }
    // sqlx percent-decodes the file name: escape what would be read as syntax.
    let escaped = text.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
    let uri = format!("sqlite://{escaped}");
    let sql_err = |e| IcebergSinkError::Sql {
        context: format!("open SQLite catalog {}", path.display()),
        source: e,
    };
    let conn = SqliteConnectOptions::from_str(&uri)
        .map_err(sql_err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await
        .map_err(sql_err)?;
    conn.close().await.map_err(sql_err)?;
    Ok(uri)
}

/// The table state a fenced commit was built on, as the fence read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Its committed watermark (`None`: nothing committed).
    pub(crate) watermark: Option<Watermark>,
    /// Its version: main's snapshot id.
    pub(crate) version: SinkVersion,
}

/// What a commit requires of the state it is built on.
#[derive(Debug, Clone)]
pub(crate) enum Fence {
    /// A window commit: the committed watermark is the window's lower bound.
    Watermark(Watermark),
    /// A repair commit: main is still at this snapshot (the version the
    /// repair's diff was computed against).
    Version(SinkVersion),
}

impl Fence {
    /// Whether a commit built on `base` may go through.
    pub(crate) fn admits(&self, base: &Observed) -> bool {
        match self {
            Fence::Watermark(after) => base.watermark.unwrap_or(Watermark::MIN) == *after,
            Fence::Version(v) => base.version == *v,
        }
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Watermark(after) => write!(f, "committed watermark {after}"),
            Fence::Version(v) => write!(f, "main at snapshot {v}"),
        }
    }
}

/// What the fence observed during one commit.
#[derive(Debug, Default)]
pub(crate) struct FenceState {
    /// The state `load_table` last returned for the fenced table: the base
    /// the transaction builds its commit on.
    base: Option<Observed>,
    /// Set when the fence refused: the state it found.
    pub(crate) conflict: Option<Observed>,
    /// Where the last hand-over to the inner catalog stands.
    pub(crate) phase: Phase,
}

/// Progress of the commit hand-over to the inner catalog.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing sent, or the last attempt was refused by the catalog's
    /// requirement check / compare-and-swap (certainly not applied).
    #[default]
    Idle,
    /// `update_table` is running on the inner catalog.
    Sending,
    /// The inner `update_table` failed in a way that does not say whether
    /// the swap happened (connection loss, driver error).
    InDoubt(String),
    /// The inner catalog acknowledged the commit.
    Acknowledged,
}

/// A [`Catalog`] that lets a commit through only if the table state it was
/// built on passes its [`Fence`]: for a window commit, the committed watermark
/// equals the window's lower bound; for a repair commit, main's snapshot is
/// the repair's base version. One instance per commit attempt.
///
/// Why this closes the race (see the README for the long form):
/// 1. iceberg's `Transaction::commit` calls `load_table` on this catalog and
///    builds the commit on the table returned; the fast-append it carries
///    requires `main` to still point at that table's snapshot
///    (`TableRequirement::RefSnapshotIdMatch`, `assert-ref-snapshot-id`).
/// 2. `update_table` checks the fence against that same table state. The
///    watermark is a function of main's snapshot (the nearest offload
///    snapshot on its ancestry; snapshots are immutable), and the version
///    *is* main's snapshot id.
/// 3. The inner catalog re-checks the requirement against the current state
///    and swaps the metadata pointer only if that state is still current
///    (SQL: `UPDATE ... WHERE metadata_location = <checked>`; REST: the server
///    applies requirements atomically). So main cannot have moved between our
///    check and the swap, and neither can the watermark: a repair lands only
///    while main is at its base, a window only on its lower bound.
#[derive(Debug)]
pub(crate) struct FencedCatalog {
    inner: Arc<dyn Catalog>,
    ident: TableIdent,
    fence: Fence,
    state: Mutex<FenceState>,
}

impl FencedCatalog {
    pub(crate) fn new(inner: Arc<dyn Catalog>, ident: TableIdent, fence: Fence) -> Self {
        Self {
            inner,
            ident,
            fence,
            state: Mutex::new(FenceState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FenceState> {
        // The state is plain data updated in single assignments: a panic
        // elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last table state handed out, if any.
    pub(crate) fn base(&self) -> Option<Observed> {
        self.lock().base.clone()
    }

    /// Takes the observations (after the commit finished or was abandoned).
    pub(crate) fn take_state(&self) -> FenceState {
        std::mem::take(&mut *self.lock())
    }
}

fn fence_error(message: String) -> iceberg::Error {
    // Not retryable: iceberg's commit loop must stop, the window is stale.
    iceberg::Error::new(ErrorKind::CatalogCommitConflicts, message).with_retryable(false)
}

#[async_trait]
impl Catalog for FencedCatalog {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> IcebergResult<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IcebergResult<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> IcebergResult<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> IcebergResult<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IcebergResult<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> IcebergResult<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> IcebergResult<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> IcebergResult<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> IcebergResult<Table> {
        let loaded = self.inner.load_table(table).await?;
        if *table == self.ident {
            let meta = loaded.metadata();
            let watermark = markers::committed(meta)
                .map_err(|e| iceberg::Error::new(ErrorKind::DataInvalid, e.to_string()))?
                .map(|(w, _)| w.until);
            self.lock().base = Some(Observed {
                watermark,
                version: markers::version(meta),
            });
        }
        Ok(loaded)
    }

    async fn drop_table(&self, table: &TableIdent) -> IcebergResult<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> IcebergResult<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> IcebergResult<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> IcebergResult<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> IcebergResult<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> IcebergResult<Table> {
        if *commit.identifier() != self.ident {
            return Err(fence_error(format!(
                "offload fence for {} refuses a commit to {}",
                self.ident,
                commit.identifier()
            )));
        }
        {
            let mut st = self.lock();
            // The base is consumed: every update must follow its own load, so a
            // commit can never be checked against an older state than the one
            // it was built on.
            let Some(found) = st.base.take() else {
                return Err(fence_error(
                    "offload fence: update_table without a preceding load_table; iceberg's Transaction \
                     no longer reloads before committing, refusing to commit unfenced"
                        .into(),
                ));
            };
            if !self.fence.admits(&found) {
                let message = format!(
                    "offload fence: table {} has committed {:?} at snapshot {}, the commit requires {}",
                    self.ident, found.watermark, found.version, self.fence
                );
                st.conflict = Some(found);
                return Err(fence_error(message));
            }
            st.phase = Phase::Sending;
        }
        let result = self.inner.update_table(commit).await;
        self.lock().phase = match &result {
            Ok(_) => Phase::Acknowledged,
            // Requirement failures and the SQL catalog's lost compare-and-swap:
            // certainly not applied, and iceberg retries on a fresh load.
            Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts => Phase::Idle,
            Err(e) => Phase::InDoubt(e.to_string()),
        };
        result
    }
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::pg_tls::check_available;

    /// A URL that requires TLS is refused by a build without it (never a
    /// plaintext connection), with the feature to turn on; `prefer`, `allow`
    /// and `disable` never require it.
    #[test]
    fn a_url_requiring_tls_needs_the_rustls_feature() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u:hunter2@db:5432/ice?sslmode={mode}");
            let checked = check_available(&url);
            if cfg!(feature = "rustls") {
                assert!(checked.is_ok(), "{mode}: {checked:?}");
            } else {
                let err = checked.expect_err("no TLS in this build").to_string();
                assert!(err.contains("`rustls` feature") && err.contains(mode), "{err}");
                assert!(!err.contains("hunter2"), "{err}");
            }
        }
        for mode in ["prefer", "allow", "disable"] {
            assert!(check_available(&format!("postgres://db/ice?sslmode={mode}")).is_ok());
        }
    }
}
