//! `[store]`: where watermarks, leases and run status live.

use std::path::PathBuf;

use serde::Deserialize;

use super::value::EnvVar;

/// `[store]`: `kind = "file" | "postgres"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreSection {
    /// One directory of crash-safe files (one machine).
    File {
        /// The directory.
        path: PathBuf,
    },
    /// PostgreSQL, shared by many workers.
    Postgres {
        /// `postgres://user@host:port/db` (no password: `password_env`).
        url: Option<String>,
        /// Environment variable holding the whole URL instead.
        url_env: Option<EnvVar>,
        /// Environment variable holding the password.
        password_env: Option<EnvVar>,
        /// Schema the store creates its table in (default `offload`).
        schema: Option<String>,
        /// Pool size (default: the store's).
        max_connections: Option<u32>,
    },
}
