//! The catalog compare-and-swap of a replace commit built by this crate
//! ([`replace`](super::replace)): the same semantics the catalog gives its own
//! commits, for each backend.
//!
//! - SQL catalog (SQLite, PostgreSQL): the new metadata file is written next
//!   to the current one, then the `iceberg_tables` row is swapped with
//!   `UPDATE ... WHERE metadata_location = <the base's>`, exactly as
//!   iceberg-catalog-sql does for its own commits (one autocommit statement:
//!   its row count is the outcome).
//! - REST catalog: the spec's `POST .../namespaces/{ns}/tables/{table}` with
//!   the requirements and updates; the server checks the requirements and
//!   swaps atomically. 409 is a lost race, 5xx and a broken connection leave
//!   the outcome unknown (the spec's `CommitStateUnknownException`).

use iceberg::table::Table;
use iceberg::{TableRequirement, TableUpdate};

use super::MaintenanceConfig;
use crate::config::CatalogBackend;
use crate::{IcebergSinkError, IcebergTable};

/// How a swap ended.
#[derive(Debug)]
pub(crate) enum Swapped {
    /// The catalog now points at the new metadata.
    Done,
    /// Certainly not applied: the table moved on (requirement failed, or the
    /// compare-and-swap found another metadata location).
    Conflict(String),
    /// Certainly not applied, for another reason.
    Failed(IcebergSinkError),
    /// May or may not have been applied.
    Unknown(String),
}

/// Commits `updates` on `base` if `requirements` still hold for the
/// catalog's current state.
pub(crate) async fn swap(
    table: &IcebergTable,
    base: &Table,
    updates: Vec<TableUpdate>,
    requirements: Vec<TableRequirement>,
    cfg: &MaintenanceConfig,
) -> Swapped {
    let timeout = table.sink_config().commit_timeout;
    let backend = table.sink_config().catalog().backend().clone();
    let run = async {
        match backend {
            CatalogBackend::Sqlite { .. } | CatalogBackend::Postgres { .. } => {
                sql::swap(table, base, updates, requirements, cfg).await
            }
            CatalogBackend::Rest { uri } => rest_swap(table, &uri, updates, requirements, cfg).await,
            CatalogBackend::Memory => Swapped::Failed(IcebergSinkError::MaintenanceUnsupported {
                table: table.ident().to_string(),
                reason: "the in-memory catalog offers no compare-and-swap to commit a replace snapshot"
                    .into(),
            }),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(s) => s,
        Err(_) => Swapped::Unknown(format!("the catalog swap did not finish within {timeout:?}")),
    }
}

#[cfg(feature = "rest")]
async fn rest_swap(
    table: &IcebergTable,
    uri: &str,
    updates: Vec<TableUpdate>,
    requirements: Vec<TableRequirement>,
    cfg: &MaintenanceConfig,
) -> Swapped {
    rest::swap(table, uri, updates, requirements, cfg).await
}

#[cfg(not(feature = "rest"))]
async fn rest_swap(
    table: &IcebergTable,
    _uri: &str,
    _updates: Vec<TableUpdate>,
    _requirements: Vec<TableRequirement>,
    _cfg: &MaintenanceConfig,
) -> Swapped {
    Swapped::Failed(IcebergSinkError::MaintenanceUnsupported {
        table: table.ident().to_string(),
        reason: "the REST catalog needs the `rest` feature".into(),
    })
}

mod sql {
    // Without a SQL driver feature the statement is never sent.
    #![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

    use std::str::FromStr;

    use iceberg::MetadataLocation;
    use iceberg::table::Table;
    use iceberg::{TableRequirement, TableUpdate};

    use super::Swapped;
    use crate::config::CatalogBackend;
    use crate::maintain::{MaintenanceConfig, Step};
    use crate::{IcebergSinkError, IcebergTable};

    /// The SQL catalog's table (the Java JdbcCatalog schema).
    const UPDATE: &str = "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
         WHERE catalog_name = {} AND table_namespace = {} AND table_name = {} \
         AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}";

    fn statement(dollar: bool) -> String {
        let mut n = 0;
        let mut out = String::new();
        let mut parts = UPDATE.split("{}").peekable();
        while let Some(p) = parts.next() {
            out.push_str(p);
            if parts.peek().is_some() {
                n += 1;
                if dollar {
                    out.push_str(&format!("${n}"));
                } else {
                    out.push('?');
                }
            }
        }
        out
    }

    pub(super) async fn swap(
        table: &IcebergTable,
        base: &Table,
        updates: Vec<TableUpdate>,
        requirements: Vec<TableRequirement>,
        cfg: &MaintenanceConfig,
    ) -> Swapped {
        let ident = table.ident();
        let Some(current_location) = base.metadata_location() else {
            return Swapped::Failed(IcebergSinkError::MaintenanceUnsupported {
                table: ident.to_string(),
                reason: "the loaded table has no metadata location".into(),
            });
        };
        // The same steps as `TableCommit::apply` in iceberg: check, apply,
        // name the next metadata file.
        for r in &requirements {
            if let Err(e) = r.check(Some(base.metadata())) {
                return Swapped::Conflict(e.to_string());
            }
        }
        let mut builder = base
            .metadata()
            .clone()
            .into_builder(Some(current_location.to_owned()));
        for u in updates {
            builder = match u.apply(builder) {
                Ok(b) => b,
                Err(e) => return Swapped::Failed(IcebergSinkError::iceberg("apply a replace commit", e)),
            };
        }
        let new_meta = match builder.build() {
            Ok(b) => b.metadata,
            Err(e) => return Swapped::Failed(IcebergSinkError::iceberg("build the replace metadata", e)),
        };
        let location = match MetadataLocation::from_str(current_location) {
            Ok(l) => l.with_next_version().with_new_metadata(&new_meta),
            Err(e) => return Swapped::Failed(IcebergSinkError::iceberg("name the next metadata file", e)),
        };
        if let Err(e) = new_meta.write_to(base.file_io(), &location).await {
            return Swapped::Failed(IcebergSinkError::iceberg("write the replace metadata", e));
        }
        cfg.step(Step::MetadataWritten);
        let new_location = location.to_string();
        let catalog = table.sink_config().catalog();
        let namespace = ident.namespace().join(".");
        let args = [
            new_location.as_str(),
            current_location,
            catalog.name(),
            namespace.as_str(),
            ident.name(),
            current_location,
        ];
        let outcome = match catalog.backend() {
            CatalogBackend::Sqlite { path } => sqlite(path, &args).await,
            CatalogBackend::Postgres { url } => postgres(url, &args).await,
            _ => unreachable!("sql::swap is only called for SQL backends"),
        };
        let swapped = match outcome {
            Ok(1) => Swapped::Done,
            Ok(0) => Swapped::Conflict(format!(
                "{ident} is no longer at {current_location} (another commit landed first)"
            )),
            Ok(n) => Swapped::Unknown(format!("the swap updated {n} catalog rows, expected one")),
            Err(Attempt::NotSent(e)) => Swapped::Failed(e),
            Err(Attempt::Refused(reason)) => {
                Swapped::Conflict(format!("the catalog database refused the swap: {reason}"))
            }
            Err(Attempt::Interrupted(reason)) => Swapped::Unknown(reason),
        };
        if matches!(swapped, Swapped::Conflict(_) | Swapped::Failed(_)) {
            // Certainly not applied: nobody will ever point at the file, so
            // remove it now rather than leave it to orphan cleanup.
            let _ = base.file_io().delete(&new_location).await;
        }
        swapped
    }

    enum Attempt {
        /// Never reached the database (could not connect).
        NotSent(IcebergSinkError),
        /// The database refused the statement: not applied.
        Refused(String),
        /// Sent, then the connection or statement failed.
        Interrupted(String),
    }

    #[cfg(feature = "sqlite")]
    async fn sqlite(path: &std::path::Path, args: &[&str; 6]) -> Result<u64, Attempt> {
        use sqlx::sqlite::SqliteConnectOptions;
        use sqlx::{ConnectOptions, Connection};

        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| {
                Attempt::NotSent(IcebergSinkError::Sql {
                    context: format!("open SQLite catalog {}", path.display()),
                    source: e,
                })
            })?;
        let sql = statement(false);
        let mut q = sqlx::query(&sql);
        for a in args {
            q = q.bind(*a);
        }
        let result = q.execute(&mut conn).await.map(|r| r.rows_affected());
        let _ = conn.close().await;
        classify(result)
    }

    #[cfg(not(feature = "sqlite"))]
    async fn sqlite(_path: &std::path::Path, _args: &[&str; 6]) -> Result<u64, Attempt> {
        Err(Attempt::NotSent(IcebergSinkError::Config {
            field: "catalog",
            reason: "the SQLite catalog needs the `sqlite` feature".into(),
        }))
    }

    /// The outcome of the swap statement (one autocommit statement). A
    /// database error (busy, serialization failure, constraint) means it was
    /// not applied; a broken connection leaves it unknown.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn classify(result: Result<u64, sqlx::Error>) -> Result<u64, Attempt> {
        match result {
            Ok(n) => Ok(n),
            Err(sqlx::Error::Database(d)) => Err(Attempt::Refused(d.message().to_owned())),
            Err(e) => Err(Attempt::Interrupted(e.to_string())),
        }
    }

    #[cfg(feature = "postgres")]
    async fn postgres(url: &str, args: &[&str; 6]) -> Result<u64, Attempt> {
        use sqlx::Connection;
        use sqlx::postgres::PgConnection;

        let mut conn = PgConnection::connect(url).await.map_err(|e| {
            Attempt::NotSent(IcebergSinkError::Sql {
                context: "connect to the PostgreSQL catalog".into(),
                source: e,
            })
        })?;
        let sql = statement(true);
        let mut q = sqlx::query(&sql);
        for a in args {
            q = q.bind(*a);
        }
        let result = q.execute(&mut conn).await.map(|r| r.rows_affected());
        let _ = conn.close().await;
        classify(result)
    }

    #[cfg(not(feature = "postgres"))]
    async fn postgres(_url: &str, _args: &[&str; 6]) -> Result<u64, Attempt> {
        Err(Attempt::NotSent(IcebergSinkError::Config {
            field: "catalog",
            reason: "the PostgreSQL catalog needs the `postgres` feature".into(),
        }))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn placeholders_follow_the_bind_style() {
            let q = super::statement(false);
            assert_eq!(q.matches('?').count(), 6);
            let d = super::statement(true);
            assert!(d.contains("metadata_location = $1") && d.ends_with("metadata_location = $6"));
        }
    }
}

#[cfg(feature = "rest")]
mod rest {
    use iceberg::{TableRequirement, TableUpdate};
    use iceberg_catalog_rest::CommitTableRequest;

    use std::time::Duration;

    use super::Swapped;
    use crate::maintain::{MaintenanceConfig, Step};
    use crate::{IcebergSinkError, IcebergTable};

    /// The bound on one HTTP exchange with a REST catalog when no commit
    /// timeout is shorter.
    const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

    /// Table-path segment of a namespace: levels joined by the unit
    /// separator, percent-encoded (the REST spec).
    fn encode(segment: &str) -> String {
        let mut out = String::new();
        for b in segment.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    pub(super) async fn swap(
        table: &IcebergTable,
        uri: &str,
        updates: Vec<TableUpdate>,
        requirements: Vec<TableRequirement>,
        cfg: &MaintenanceConfig,
    ) -> Swapped {
        let ident = table.ident();
        let props = table.sink_config().catalog().properties();
        let client = match reqwest::Client::builder().timeout(HTTP_TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                return Swapped::Failed(IcebergSinkError::Config {
                    field: "catalog",
                    reason: format!("build an HTTP client: {e}"),
                });
            }
        };
        let base = uri.trim_end_matches('/');
        let auth = |r: reqwest::RequestBuilder| match props.get("token") {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        // The prefix the server wants (GET /v1/config, `overrides.prefix`).
        let warehouse = table.sink_config().catalog().warehouse();
        let config_url = format!("{base}/v1/config?warehouse={}", encode(warehouse));
        let prefix = match auth(client.get(&config_url)).send().await {
            Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                Ok(v) => v
                    .pointer("/overrides/prefix")
                    .or_else(|| v.pointer("/defaults/prefix"))
                    .and_then(|p| p.as_str())
                    .map(str::to_owned),
                Err(e) => return Swapped::Failed(http_error("read the catalog config", e)),
            },
            Ok(r) => {
                return Swapped::Failed(IcebergSinkError::Config {
                    field: "catalog",
                    reason: format!("GET /v1/config answered {}", r.status()),
                });
            }
            Err(e) => return Swapped::Failed(http_error("read the catalog config", e)),
        };
        let namespace = encode(&ident.namespace().join("\u{1f}"));
        let url = match prefix {
            Some(p) => format!(
                "{base}/v1/{p}/namespaces/{namespace}/tables/{}",
                encode(ident.name())
            ),
            None => format!("{base}/v1/namespaces/{namespace}/tables/{}", encode(ident.name())),
        };
        let body = CommitTableRequest {
            identifier: Some(ident.clone()),
            requirements,
            updates,
        };
        cfg.step(Step::MetadataWritten);
        match auth(client.post(&url)).json(&body).send().await {
            Ok(r) if r.status().is_success() => Swapped::Done,
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                Swapped::Conflict(format!("the REST catalog answered 409: {}", text(r).await))
            }
            Ok(r) if r.status().is_server_error() => Swapped::Unknown(format!(
                "the REST catalog answered {}: {}",
                r.status(),
                text(r).await
            )),
            Ok(r) => Swapped::Failed(IcebergSinkError::Config {
                field: "catalog",
                reason: format!(
                    "the REST catalog refused the commit ({}): {}",
                    r.status(),
                    text(r).await
                ),
            }),
            // Never connected: nothing was sent.
            Err(e) if e.is_connect() => Swapped::Failed(http_error("send the commit", e)),
            Err(e) => Swapped::Unknown(e.to_string()),
        }
    }

    async fn text(r: reqwest::Response) -> String {
        r.text().await.unwrap_or_default().chars().take(512).collect()
    }

    fn http_error(what: &str, e: reqwest::Error) -> IcebergSinkError {
        IcebergSinkError::io(what, std::io::Error::other(e.to_string()))
    }
}
