//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use offload_core::{Error, Lease, RunEvent, TableState, Watermark, WatermarkStore};

/// A store plus whatever must outlive it (a temp dir, a schema to drop).
/// Fields drop in order: the store first, then its guard.
#[derive(Debug)]
pub struct Guarded<S> {
    pub store: S,
    guard: Box<dyn Any + Send + Sync>,
}

impl<S> Guarded<S> {
    pub fn new(store: S, guard: impl Any + Send + Sync) -> Self {
        Self {
            store,
            guard: Box::new(guard),
        }
    }
}

#[async_trait]
impl<S: WatermarkStore> WatermarkStore for Guarded<S> {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        self.store.load(table).await
    }
    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        self.store.acquire_lease(table, holder, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        self.store.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        self.store.release_lease(lease).await
    }
    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        self.store.compare_and_set(lease, expected, new).await
    }
    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        self.store.record_run(lease, event).await
    }
    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        self.store.recover_stale_runs(older_than).await
    }
}

/// The crate's error inside a core `Error::Store`, with its retryability.
pub fn store_error(e: &Error) -> (&offload_watermark_store::StoreError, bool) {
    match e {
        Error::Store { retryable, source } => (
            source
                .downcast_ref::<offload_watermark_store::StoreError>()
                .unwrap_or_else(|| panic!("Error::Store should wrap a StoreError: {e:?}")),
            *retryable,
        ),
        other => panic!("expected Error::Store, got {other:?}"),
    }
}

#[cfg(feature = "postgres")]
pub mod pg {
    use super::Guarded;
    use offload_core::RunId;
    use offload_watermark_store::PostgresStore;
    use sqlx::{Connection, PgConnection};

    /// The PostgreSQL the tests run against; they fail (never skip) without it.
    pub fn url() -> String {
        std::env::var("OFFLOAD_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// `url()` with `key=value` appended to its query string.
    pub fn url_with_param(param: &str) -> String {
        let base = url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{param}")
    }

    pub fn quote(ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }

    /// A schema name no other test uses, dropped (with everything in it) on drop.
    #[derive(Debug)]
    pub struct TestSchema {
        pub name: String,
    }

    impl TestSchema {
        pub fn new() -> Self {
            Self::named("ows_test_")
        }

        /// `prefix` plus a unique suffix (keep the prefix under 31 bytes).
        pub fn named(prefix: &str) -> Self {
            let suffix = RunId::new().to_string().replace('-', "");
            Self {
                name: format!("{prefix}{suffix}"),
            }
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            // Drop cannot await, and may run inside a runtime: clean up from a
            // thread with its own.
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&self.name));
            let result = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async move {
                        let mut conn = PgConnection::connect(&url()).await?;
                        sqlx::query(&sql).execute(&mut conn).await?;
                        conn.close().await
                    })
            })
            .join();
            if !matches!(result, Ok(Ok(()))) {
                eprintln!("could not drop test schema {:?}: {result:?}", self.name);
            }
        }
    }

    /// A direct connection for the tests' own SQL.
    pub async fn connect() -> PgConnection {
        PgConnection::connect(&url()).await.unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at OFFLOAD_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres): {e}"
            )
        })
    }

    /// A store on its own fresh schema, dropped with the store.
    pub async fn fresh_store() -> Guarded<PostgresStore> {
        let schema = TestSchema::new();
        let store = store_on(&schema.name).await;
        Guarded::new(store, schema)
    }

    /// Another worker on an existing schema.
    pub async fn store_on(schema: &str) -> PostgresStore {
        PostgresStore::builder(url())
            .schema(schema)
            .max_connections(8)
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!("these tests need PostgreSQL at OFFLOAD_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres): {e}")
            })
    }
}
