//! `[iceberg]`: where rows go — the catalog, the warehouse's storage, and how
//! data files are written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::value::{Dur, EnvVar};

/// `[iceberg]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSection {
    /// Warehouse root: a local directory or `s3://bucket/prefix` (for a REST
    /// catalog: the catalog's warehouse identifier).
    pub warehouse: String,
    /// Namespace for sink tables named without one (default `offload`,
    /// [`offload_sink_iceberg::DEFAULT_NAMESPACE`]). `reconcile` and `status`
    /// resolve names with the same default.
    pub namespace: Option<String>,
    /// The catalog.
    pub catalog: CatalogSection,
    /// S3 (or S3-compatible) storage for an `s3://` warehouse.
    pub s3: Option<S3Section>,
    /// How data files are written and committed.
    #[serde(default)]
    pub writer: WriterSection,
}

/// `[iceberg.catalog]`: `kind = "sqlite" | "postgres" | "rest"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CatalogSection {
    /// The SQL catalog in a SQLite file (created if missing).
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Catalog name (default `offload`); readers must use the same.
        name: Option<String>,
    },
    /// The SQL catalog in PostgreSQL.
    Postgres {
        /// `postgres://user@host:port/db` (no password: `password_env`).
        url: Option<String>,
        /// Environment variable holding the whole URL instead.
        url_env: Option<EnvVar>,
        /// Environment variable holding the password.
        password_env: Option<EnvVar>,
        /// Catalog name (default `offload`).
        name: Option<String>,
        /// Extra catalog properties, e.g. `"pool.max-connections" = "4"`.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    /// An Iceberg REST catalog (Polaris, Lakekeeper, Nessie, Gravitino, ...).
    Rest {
        /// Base URI, e.g. `https://catalog.example/api/catalog`.
        uri: String,
        /// Environment variable holding an OAuth2 `client_id:client_secret` credential.
        credential_env: Option<EnvVar>,
        /// Environment variable holding a bearer token.
        token_env: Option<EnvVar>,
        /// Catalog name (default `offload`).
        name: Option<String>,
        /// Extra catalog properties, e.g. `scope`, `oauth2-server-uri`.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

impl CatalogSection {
    /// The configured catalog name, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            CatalogSection::Sqlite { name, .. }
            | CatalogSection::Postgres { name, .. }
            | CatalogSection::Rest { name, .. } => name.as_deref(),
        }
    }
}

/// `[iceberg.s3]`. Unset credentials fall back to the usual AWS environment.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// Endpoint for non-AWS stores, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket/key` (MinIO and most non-AWS stores).
    #[serde(default)]
    pub path_style: bool,
    /// Unsigned requests (public buckets, test servers).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Environment variable holding the access key id.
    pub access_key_id_env: Option<EnvVar>,
    /// Environment variable holding the secret access key.
    pub secret_access_key_env: Option<EnvVar>,
    /// Environment variable holding a session token.
    pub session_token_env: Option<EnvVar>,
}

/// `[iceberg.writer]`. Every key is optional; absent keys keep the sink's defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSection {
    /// zstd level of Parquet pages, 1..=22 (default 3).
    pub zstd_level: Option<i32>,
    /// Size at which a data file is closed, in MiB (default 128).
    pub target_file_size_mib: Option<u64>,
    /// Rows per Parquet row group (default 262144,
    /// [`offload_sink_iceberg::DEFAULT_ROW_GROUP_ROWS`]).
    pub row_group_rows: Option<usize>,
    /// Encoder tasks per run, 1..=64 (default: one per core, at most 4,
    /// [`offload_sink_iceberg::default_writer_tasks`]).
    pub writer_tasks: Option<usize>,
    /// Batches queued per encoder task before a write waits (default 4).
    pub queue_depth: Option<usize>,
    /// Close a partition's data file after this many input batches of an
    /// encoder task without rows for it (default 4,
    /// [`offload_sink_iceberg::DEFAULT_PARTITION_IDLE_BATCHES`]).
    pub partition_idle_batches: Option<u64>,
    /// Partition files open at once per encoder task; one more closes the
    /// least recently written (default 8,
    /// [`offload_sink_iceberg::DEFAULT_MAX_OPEN_PARTITIONS`]).
    pub max_open_partitions: Option<usize>,
    /// Staged files younger than this are never deleted by cleanup (default 24h).
    /// Must exceed your longest run. An alias of `[maintenance] orphan_grace`,
    /// which wins when both are set ([`Config::orphan_grace`](super::Config::orphan_grace)).
    pub orphan_grace: Option<Dur>,
    /// Re-read the manifests on each commit to refuse files already in the table (default false).
    pub check_duplicate_files: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_keys_parse_and_unset_keys_stay_unset() {
        let w: WriterSection = toml::from_str(
            "writer_tasks = 3\nqueue_depth = 2\npartition_idle_batches = 6\nmax_open_partitions = 16\nrow_group_rows = 262144",
        )
        .unwrap();
        assert_eq!(w.writer_tasks, Some(3));
        assert_eq!(w.queue_depth, Some(2));
        assert_eq!(w.partition_idle_batches, Some(6));
        assert_eq!(w.max_open_partitions, Some(16));
        assert_eq!(w.row_group_rows, Some(262_144));
        let empty: WriterSection = toml::from_str("").unwrap();
        assert_eq!(empty.partition_idle_batches, None);
        assert_eq!(empty.max_open_partitions, None);
        assert_eq!(empty.writer_tasks, None, "the sink picks from the machine");
        assert!(
            toml::from_str::<WriterSection>("max_open = 3").is_err(),
            "unknown keys are refused"
        );
    }
}
