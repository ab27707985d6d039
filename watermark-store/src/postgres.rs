//! [`PostgresStore`]: the production store (feature `postgres`).
//!
//! Many engine processes on many machines share one PostgreSQL database; each
//! table is claimed by one of them at a time through a row-level lease with a
//! fencing token. Every time that matters (lease expiry, `updated_at`, the
//! stale-run age) comes from the **database's** clock (`now()`), never a
//! worker's, so clock skew between workers cannot hand one table to two of
//! them.
//!
//! The store creates and migrates its own tables, inside a schema the user
//! names, on [`connect`](PostgresStoreBuilder::connect); see
//! [`schema_ddl`] for the exact DDL. Table names are always bound as
//! parameters and the schema name is quoted as an identifier, so hostile names
//! are just data.
//!
//! Each operation is one statement, except `record_run` and
//! `recover_stale_runs`, which read the row `FOR UPDATE` and apply
//! [`TableState::apply`] in Rust so that every store shares one definition of
//! what a run event does.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use offload_core::redact::redact_url;
use offload_core::{
    Error, Lease, RunEvent, RunId, RunStatus, TableState, Watermark, WatermarkStore, micros_to_system_time,
    system_time_to_micros,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use crate::{DEFAULT_STALE_RUN_TIMEOUT, StoreError, tls, validate};

/// Version of the schema this build creates and expects.
pub const SCHEMA_VERSION: i32 = 1;

/// Schema used when the builder is not given one.
pub const DEFAULT_SCHEMA: &str = "offload";

/// PostgreSQL truncates longer identifiers; refusing them keeps two long
/// schema names from silently becoming one.
const MAX_IDENTIFIER_LEN: usize = 63;

/// First key of the advisory lock that serialises migrations of one schema
/// (the second is the schema name's hash). Arbitrary; "offl" in ASCII.
const MIGRATION_LOCK_CLASS: i32 = 0x6f66_666c;

/// A watermark store in PostgreSQL.
///
/// Cheap to clone (clones share the connection pool). Safe for any number of
/// processes and machines on one schema.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use offload_core::{Watermark, WatermarkStore};
/// use offload_watermark_store::PostgresStore;
///
/// let store = PostgresStore::builder("postgres://offload:secret@db.internal:5432/ops")
///     .schema("offload")
///     .max_connections(4)
///     .connect_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// let lease = store.acquire_lease("trades", "engine-1", Duration::from_secs(300)).await?;
/// store.compare_and_set(&lease, None, Watermark::new(1_000, 7)).await?;
/// println!("{store:?}"); // the password is printed as ***
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    url: String,
    max_connections: u32,
    stale_run_timeout: Duration,
    sql: Arc<Sql>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the pool or its connect options: sqlx's derive prints the password.
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("stale_run_timeout", &self.stale_run_timeout)
            .finish()
    }
}

/// Configures and opens a [`PostgresStore`].
///
/// ```
/// use std::time::Duration;
/// let b = offload_watermark_store::PostgresStore::builder("postgres://u:hunter2@localhost/db")
///     .schema("etl")
///     .stale_run_timeout(Duration::from_secs(600));
/// let shown = format!("{b:?}");
/// assert!(shown.contains("u:***@localhost") && !shown.contains("hunter2"));
/// ```
#[must_use = "a builder does nothing until `connect` is called"]
pub struct PostgresStoreBuilder {
    url: String,
    schema: String,
    max_connections: u32,
    connect_timeout: Duration,
    stale_run_timeout: Duration,
    application_name: String,
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("stale_run_timeout", &self.stale_run_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl PostgresStore {
    /// A builder for a store at `url` (`postgres://user:password@host:port/database?sslmode=...`).
    ///
    /// Defaults: schema [`DEFAULT_SCHEMA`], 5 connections, 10 s connect
    /// timeout, [`DEFAULT_STALE_RUN_TIMEOUT`], application name
    /// `offload-watermark-store`.
    ///
    /// ```
    /// let b = offload_watermark_store::PostgresStore::builder("postgres://localhost/db");
    /// assert!(format!("{b:?}").contains("\"offload\""));
    /// ```
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 5,
            connect_timeout: Duration::from_secs(10),
            stale_run_timeout: DEFAULT_STALE_RUN_TIMEOUT,
            application_name: "offload-watermark-store".to_owned(),
        }
    }

    /// Connects to `url` with default settings, creating or migrating `schema`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), offload_watermark_store::StoreError> {
    /// let store = offload_watermark_store::PostgresStore::connect("postgres://localhost/ops", "offload").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        Self::builder(url).schema(schema).connect().await
    }

    /// The schema holding the store's tables.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), offload_watermark_store::StoreError> {
    /// let store = offload_watermark_store::PostgresStore::connect("postgres://localhost/ops", "etl").await?;
    /// assert_eq!(store.schema(), "etl");
    /// # Ok(()) }
    /// ```
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The configured stale-run timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), offload_watermark_store::StoreError> {
    /// let store = offload_watermark_store::PostgresStore::connect("postgres://localhost/ops", "etl").await?;
    /// assert_eq!(store.stale_run_timeout(), offload_watermark_store::DEFAULT_STALE_RUN_TIMEOUT);
    /// # Ok(()) }
    /// ```
    pub fn stale_run_timeout(&self) -> Duration {
        self.stale_run_timeout
    }

    /// [`recover_stale_runs`](WatermarkStore::recover_stale_runs) with the
    /// configured [`stale_run_timeout`](PostgresStoreBuilder::stale_run_timeout).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = offload_watermark_store::PostgresStore::connect("postgres://localhost/ops", "etl").await?;
    /// for table in store.recover_stale().await? {
    ///     eprintln!("{table}: abandoned run counted as failed");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recover_stale(&self) -> Result<Vec<String>, Error> {
        self.recover_stale_runs(self.stale_run_timeout).await
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), offload_watermark_store::StoreError> {
    /// let store = offload_watermark_store::PostgresStore::connect("postgres://localhost/ops", "etl").await?;
    /// store.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl PostgresStoreBuilder {
    /// Schema for the store's tables (created if missing). Any name PostgreSQL
    /// accepts as a quoted identifier: 1 to 63 bytes, no NUL.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most connections the pool opens (at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to wait for a connection: the first one in `connect`, and any
    /// one from the pool afterwards (a timeout is a retryable error).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Age after which [`PostgresStore::recover_stale`] counts a `running`
    /// row with an expired lease as failed.
    pub fn stale_run_timeout(mut self, timeout: Duration) -> Self {
        self.stale_run_timeout = timeout;
        self
    }

    /// `application_name` of the store's sessions, as `pg_stat_activity` shows it.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Connects, creates or migrates the schema, and returns the store.
    ///
    /// The first connection is made directly (not through the pool) so that an
    /// unreachable server, a missing database or refused credentials come back
    /// as they are, as [`StoreError::Connect`] or
    /// [`StoreError::ConnectTimeout`], instead of a generic pool timeout.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        let url = redact_url(&self.url);
        validate_schema(&self.schema)?;
        validate::duration("stale run timeout", self.stale_run_timeout)?;
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(|source| StoreError::InvalidUrl {
                url: url.clone(),
                source,
            })?
            .application_name(&self.application_name);
        if tls::required(&options) && !cfg!(feature = "rustls") {
            return Err(StoreError::TlsUnavailable {
                url,
                sslmode: tls::sslmode_name(options.get_ssl_mode()),
            });
        }

        let mut conn =
            match tokio::time::timeout(self.connect_timeout, PgConnection::connect_with(&options)).await {
                Err(_) => {
                    return Err(StoreError::ConnectTimeout {
                        url,
                        timeout: self.connect_timeout,
                    });
                }
                Ok(Err(source)) => {
                    return Err(match tls::failure(&source, &options) {
                        Some(reason) => StoreError::Tls { url, reason },
                        None => StoreError::Connect { url, source },
                    });
                }
                Ok(Ok(conn)) => conn,
            };
        let migrated = migrate(&mut conn, &self.schema).await;
        // Best effort: the connection is dropped either way.
        let _ = conn.close().await;
        migrated?;

        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(options);
        tracing::debug!(url = %url, schema = %self.schema, "watermark store connected");
        Ok(PostgresStore {
            pool,
            sql: Arc::new(Sql::new(&quote_ident(&self.schema))),
            schema: self.schema,
            url,
            max_connections: self.max_connections,
            stale_run_timeout: self.stale_run_timeout,
        })
    }
}

#[async_trait]
impl WatermarkStore for PostgresStore {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        validate::table_name(table)?;
        let row = sqlx::query(&self.sql.load)
            .bind(table)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("load"))?;
        match row {
            Some(row) => Ok(state_from_row(&row)?),
            None => Ok(TableState::new(table)),
        }
    }

    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        validate::table_name(table)?;
        validate::holder(holder)?;
        validate::duration("lease ttl", ttl)?;
        let claimed = sqlx::query(&self.sql.acquire)
            .bind(table)
            .bind(holder)
            .bind(validate::micros(ttl))
            .fetch_optional(&self.pool)
            .await
            .map_err(db("acquire_lease"))?;
        if let Some(row) = claimed {
            return Ok(Lease {
                table: table.to_owned(),
                holder: holder.to_owned(),
                token: token_from(table, row.try_get(0).map_err(db("acquire_lease"))?)?,
                expires_at: micros_to_system_time(row.try_get(1).map_err(db("acquire_lease"))?),
            });
        }
        // Refused: say by whom.
        let current = sqlx::query(&self.sql.lease_probe)
            .bind(table)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("acquire_lease"))?;
        if let Some(row) = current {
            let holder_now: Option<String> = row.try_get(0).map_err(db("acquire_lease"))?;
            let expires_at: Option<i64> = row.try_get(1).map_err(db("acquire_lease"))?;
            let live: Option<bool> = row.try_get(2).map_err(db("acquire_lease"))?;
            if let (Some(h), Some(e), Some(true)) = (holder_now, expires_at, live)
                && h != holder
            {
                return Err(Error::LeaseHeld {
                    table: table.to_owned(),
                    holder: h,
                    expires_at: micros_to_system_time(e),
                });
            }
        }
        // The holder let go (or its lease expired) between the claim and the
        // probe: the refusal is already out of date and nothing changed. A
        // retryable error; the retry layer claims again.
        Err(contention("acquire_lease", table))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        validate::table_name(&lease.table)?;
        validate::duration("lease ttl", ttl)?;
        let row = sqlx::query(&self.sql.renew)
            .bind(&lease.table)
            .bind(token_to(lease)?)
            .bind(validate::micros(ttl))
            .fetch_optional(&self.pool)
            .await
            .map_err(db("renew_lease"))?;
        match row {
            Some(row) => Ok(Lease {
                expires_at: micros_to_system_time(row.try_get(0).map_err(db("renew_lease"))?),
                ..lease.clone()
            }),
            None => Err(lost(lease)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        validate::table_name(&lease.table)?;
        // Zero rows means the token is stale: releasing someone else's lease
        // is a no-op by contract.
        sqlx::query(&self.sql.release)
            .bind(&lease.table)
            .bind(token_to(lease)?)
            .execute(&self.pool)
            .await
            .map_err(db("release_lease"))?;
        Ok(())
    }

    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        validate::table_name(&lease.table)?;
        let token = token_to(lease)?;
        // The whole compare-and-set is this one conditional UPDATE: of two
        // racing callers the row lock lets exactly one match.
        let updated = sqlx::query(&self.sql.cas)
            .bind(&lease.table)
            .bind(token)
            .bind(new.timestamp_micros())
            .bind(new.sequence().to_string())
            .bind(expected.map(|w| w.timestamp_micros()))
            .bind(expected.map(|w| w.sequence().to_string()))
            .execute(&self.pool)
            .await
            .map_err(db("compare_and_set"))?
            .rows_affected();
        if updated == 1 {
            return Ok(());
        }
        // Nothing matched: find out which condition failed.
        let Some(row) = sqlx::query(&self.sql.cas_probe)
            .bind(&lease.table)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("compare_and_set"))?
        else {
            return Err(lost(lease));
        };
        let current: i64 = row.try_get(0).map_err(db("compare_and_set"))?;
        if current != token {
            return Err(lost(lease));
        }
        let found = watermark_from(
            &lease.table,
            row.try_get(1).map_err(db("compare_and_set"))?,
            row.try_get(2).map_err(db("compare_and_set"))?,
        )?;
        if found != expected {
            return Err(Error::WatermarkMismatch {
                table: lease.table.clone(),
                expected,
                found,
            });
        }
        // The watermark changed and changed back between the UPDATE and the
        // probe (same lease, concurrent callers): this call changed nothing.
        // A retryable error; the retry layer compares again.
        Err(contention("compare_and_set", &lease.table))
    }

    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        validate::table_name(&lease.table)?;
        let token = token_to(lease)?;
        let mut tx = self.pool.begin().await.map_err(db("record_run"))?;
        let row = sqlx::query(&self.sql.lock_row)
            .bind(&lease.table)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("record_run"))?
            .ok_or_else(|| lost(lease))?;
        // Dropping `tx` on the error paths rolls it back.
        if row.try_get::<i64, _>(COL_TOKEN).map_err(db("record_run"))? != token {
            return Err(lost(lease));
        }
        let now: i64 = row.try_get(COL_NOW).map_err(db("record_run"))?;
        let mut state = state_from_row(&row)?;
        state.apply(&event, micros_to_system_time(now));
        write_run_fields(&self.sql, &mut tx, &state).await?;
        tx.commit().await.map_err(db("record_run"))?;
        Ok(())
    }

    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        validate::duration("stale run age", older_than)?;
        let mut tx = self.pool.begin().await.map_err(db("recover_stale_runs"))?;
        // SKIP LOCKED: a row locked right now is being written by its holder,
        // so it is not abandoned; and two workers recovering at once never
        // count one failure twice.
        let rows = sqlx::query(&self.sql.stale_rows)
            .bind(validate::micros(older_than))
            .fetch_all(&mut *tx)
            .await
            .map_err(db("recover_stale_runs"))?;
        let mut recovered = Vec::with_capacity(rows.len());
        for row in rows {
            let now = micros_to_system_time(row.try_get(COL_NOW).map_err(db("recover_stale_runs"))?);
            let mut state = state_from_row(&row)?;
            let duration = state
                .updated_at
                .and_then(|u| now.duration_since(u).ok())
                .unwrap_or_default();
            state.apply(
                &RunEvent::Failed {
                    run_id: state.last_run_id.unwrap_or_else(RunId::new),
                    error: format!(
                        "run abandoned: still 'running' after {older_than:?} with an expired lease"
                    ),
                    duration,
                },
                now,
            );
            write_run_fields(&self.sql, &mut tx, &state).await?;
            recovered.push(state.table);
        }
        tx.commit().await.map_err(db("recover_stale_runs"))?;
        for table in &recovered {
            tracing::warn!(table = %table, schema = %self.schema, "recovered stale run as failed");
        }
        // Rust's order, not the database collation's.
        recovered.sort();
        Ok(recovered)
    }
}

/// Writes the columns [`TableState::apply`] changes.
async fn write_run_fields(
    sql: &Sql,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    state: &TableState,
) -> Result<(), StoreError> {
    let micros = |t: Option<std::time::SystemTime>| t.map(system_time_to_micros);
    sqlx::query(&sql.write_run)
        .bind(&state.table)
        .bind(state.status.as_str())
        .bind(state.last_run_id.map(|r| r.to_string()))
        .bind(state.last_row_count.to_string())
        .bind(micros(state.last_success_at))
        .bind(state.last_run_duration.map(validate::micros))
        .bind(i64::from(state.consecutive_failures))
        .bind(state.last_error.as_deref())
        .bind(micros(state.created_at))
        .bind(micros(state.updated_at))
        .execute(&mut **tx)
        .await
        .map_err(db("write run status"))?;
    Ok(())
}

fn db(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

fn lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        table: lease.table.clone(),
        token: lease.token,
    }
}

fn contention(operation: &'static str, table: &str) -> Error {
    StoreError::Contention {
        operation,
        table: table.to_owned(),
    }
    .into()
}

/// Tokens are `bigint`; one beyond its range was never issued, so it is lost.
fn token_to(lease: &Lease) -> Result<i64, Error> {
    i64::try_from(lease.token).map_err(|_| lost(lease))
}

fn token_from(table: &str, token: i64) -> Result<u64, StoreError> {
    u64::try_from(token).map_err(|_| invalid(table, format!("negative fencing token {token}")))
}

fn invalid(table: &str, reason: String) -> StoreError {
    StoreError::InvalidStoredState {
        table: validate::preview(table),
        reason,
    }
}

fn watermark_from(
    table: &str,
    ts: Option<i64>,
    seq: Option<String>,
) -> Result<Option<Watermark>, StoreError> {
    match (ts, seq) {
        (None, None) => Ok(None),
        (Some(ts), Some(seq)) => {
            let seq = seq
                .parse::<u64>()
                .map_err(|_| invalid(table, format!("watermark sequence {seq:?} is not a u64")))?;
            Ok(Some(Watermark::new(ts, seq)))
        }
        _ => Err(invalid(table, "half a watermark".into())),
    }
}

// Column positions of `Sql::columns`, plus `now()` where a statement appends it.
const COL_TOKEN: usize = 11;
const COL_NOW: usize = 15;

fn state_from_row(row: &PgRow) -> Result<TableState, StoreError> {
    let get = db("decode row");
    let table: String = row.try_get(0).map_err(&get)?;
    let bad = |reason: String| invalid(&table, reason);
    let mut s = TableState::new(table.clone());
    s.watermark = watermark_from(
        &table,
        row.try_get(1).map_err(&get)?,
        row.try_get(2).map_err(&get)?,
    )?;
    let status: String = row.try_get(3).map_err(&get)?;
    s.status = RunStatus::parse(&status).ok_or_else(|| bad(format!("unknown status {status:?}")))?;
    let run_id: Option<String> = row.try_get(4).map_err(&get)?;
    s.last_run_id = run_id
        .map(|r| r.parse::<RunId>().map_err(|e| bad(e.to_string())))
        .transpose()?;
    let rows: String = row.try_get(5).map_err(&get)?;
    s.last_row_count = rows
        .parse()
        .map_err(|_| bad(format!("row count {rows:?} is not a u64")))?;
    let time = |i: usize| -> Result<Option<std::time::SystemTime>, StoreError> {
        Ok(row
            .try_get::<Option<i64>, _>(i)
            .map_err(&get)?
            .map(micros_to_system_time))
    };
    s.last_success_at = time(6)?;
    let duration: Option<i64> = row.try_get(7).map_err(&get)?;
    s.last_run_duration = duration
        .map(|d| {
            u64::try_from(d)
                .map(Duration::from_micros)
                .map_err(|_| bad(format!("negative run duration {d} µs")))
        })
        .transpose()?;
    let failures: i64 = row.try_get(8).map_err(&get)?;
    s.consecutive_failures =
        u32::try_from(failures).map_err(|_| bad(format!("consecutive failures {failures} out of range")))?;
    s.last_error = row.try_get(9).map_err(&get)?;
    let holder: Option<String> = row.try_get(10).map_err(&get)?;
    let token: i64 = row.try_get(COL_TOKEN).map_err(&get)?;
    if let (Some(holder), Some(expires_at)) = (holder, time(12)?) {
        s.lease = Some(Lease {
            table: table.clone(),
            holder,
            token: token_from(&table, token)?,
            expires_at,
        });
    }
    s.created_at = time(13)?;
    s.updated_at = time(14)?;
    Ok(s)
}

/// Every statement, with the schema quoted in once at connect time.
struct Sql {
    load: String,
    acquire: String,
    lease_probe: String,
    renew: String,
    release: String,
    cas: String,
    cas_probe: String,
    lock_row: String,
    write_run: String,
    stale_rows: String,
}

/// `timestamptz` (or `interval`) as whole microseconds, exactly: `extract`
/// returns `numeric` since PostgreSQL 14.
fn us(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000000)::int8")
}

/// A parameter of whole microseconds since the epoch as `timestamptz`.
fn ts(param: &str) -> String {
    format!("(timestamptz 'epoch' + {param}::int8 * interval '1 microsecond')")
}

impl Sql {
    fn new(s: &str) -> Self {
        let columns = format!(
            "table_name, watermark_ts_micros, watermark_seq::text, status, last_run_id::text, \
             last_row_count::text, {}, {}, consecutive_failures, last_error, lease_holder, \
             fencing_token, {}, {}, {}",
            us("last_success_at"),
            us("last_run_duration"),
            us("lease_expires_at"),
            us("created_at"),
            us("updated_at"),
        );
        let now = us("now()");
        Sql {
            load: format!("SELECT {columns} FROM {s}.watermarks WHERE table_name = $1"),
            // One statement claims the row: it is created on first use, and an
            // existing row is only taken over if its lease expired by the
            // database's clock, or is the caller's own. Concurrent claims
            // serialise on the row lock and re-check the condition, so exactly
            // one wins.
            acquire: format!(
                "INSERT INTO {s}.watermarks AS w (table_name, lease_holder, fencing_token, lease_expires_at) \
                 VALUES ($1, $2, 1, now() + $3::int8 * interval '1 microsecond') \
                 ON CONFLICT (table_name) DO UPDATE SET \
                     lease_holder = EXCLUDED.lease_holder, \
                     fencing_token = w.fencing_token + 1, \
                     lease_expires_at = EXCLUDED.lease_expires_at, \
                     updated_at = now() \
                 WHERE w.lease_expires_at IS NULL \
                    OR w.lease_expires_at <= now() \
                    OR w.lease_holder = EXCLUDED.lease_holder \
                 RETURNING fencing_token, {}",
                us("lease_expires_at")
            ),
            lease_probe: format!(
                "SELECT lease_holder, {}, lease_expires_at > now() FROM {s}.watermarks WHERE table_name = $1",
                us("lease_expires_at")
            ),
            renew: format!(
                "UPDATE {s}.watermarks SET lease_expires_at = now() + $3::int8 * interval '1 microsecond' \
                 WHERE table_name = $1 AND fencing_token = $2 RETURNING {}",
                us("lease_expires_at")
            ),
            release: format!(
                "UPDATE {s}.watermarks SET lease_expires_at = now() \
                 WHERE table_name = $1 AND fencing_token = $2"
            ),
            cas: format!(
                "UPDATE {s}.watermarks SET watermark_ts_micros = $3, watermark_seq = $4::numeric, updated_at = now() \
                 WHERE table_name = $1 AND fencing_token = $2 \
                   AND (watermark_ts_micros, watermark_seq) IS NOT DISTINCT FROM ($5::int8, $6::numeric)"
            ),
            cas_probe: format!(
                "SELECT fencing_token, watermark_ts_micros, watermark_seq::text \
                 FROM {s}.watermarks WHERE table_name = $1"
            ),
            lock_row: format!("SELECT {columns}, {now} FROM {s}.watermarks WHERE table_name = $1 FOR UPDATE"),
            write_run: format!(
                "UPDATE {s}.watermarks SET status = $2, last_run_id = $3::uuid, last_row_count = $4::numeric, \
                 last_success_at = {}, last_run_duration = $6::int8 * interval '1 microsecond', \
                 consecutive_failures = $7, last_error = $8, created_at = {}, updated_at = {} \
                 WHERE table_name = $1",
                ts("$5"),
                ts("$9"),
                ts("$10"),
            ),
            stale_rows: format!(
                "SELECT {columns}, {now} FROM {s}.watermarks \
                 WHERE status = 'running' \
                   AND (lease_expires_at IS NULL OR lease_expires_at <= now()) \
                   AND updated_at <= now() - $1::int8 * interval '1 microsecond' \
                 FOR UPDATE SKIP LOCKED"
            ),
        }
    }
}

/// The schema's migrations, oldest first: version `i + 1` is `MIGRATIONS[i]`.
/// Append only; never edit a released one.
fn migrations(s: &str) -> Vec<(&'static str, Vec<String>)> {
    vec![(
        "watermarks table",
        vec![
            format!(
                "CREATE TABLE {s}.watermarks (
    table_name           text           PRIMARY KEY,
    -- last watermark: (event timestamp in µs since the epoch, sequence)
    watermark_ts_micros  bigint,
    watermark_seq        numeric(20, 0),
    status               text           NOT NULL DEFAULT 'initialized',
    last_run_id          uuid,
    last_row_count       numeric(20, 0) NOT NULL DEFAULT 0,
    last_success_at      timestamptz,
    last_run_duration    interval,
    consecutive_failures bigint         NOT NULL DEFAULT 0,
    last_error           text,
    lease_holder         text,
    fencing_token        bigint         NOT NULL DEFAULT 0,
    lease_expires_at     timestamptz,
    created_at           timestamptz    NOT NULL DEFAULT now(),
    updated_at           timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT watermark_whole CHECK ((watermark_ts_micros IS NULL) = (watermark_seq IS NULL)),
    CONSTRAINT watermark_seq_u64 CHECK (watermark_seq BETWEEN 0 AND 18446744073709551615),
    CONSTRAINT last_row_count_u64 CHECK (last_row_count BETWEEN 0 AND 18446744073709551615),
    CONSTRAINT status_known CHECK (status IN ('initialized', 'running', 'success', 'failed')),
    CONSTRAINT consecutive_failures_u32 CHECK (consecutive_failures BETWEEN 0 AND 4294967295),
    CONSTRAINT last_error_truncated CHECK (octet_length(last_error) <= 1000),
    CONSTRAINT fencing_token_nonnegative CHECK (fencing_token >= 0),
    CONSTRAINT lease_whole CHECK ((lease_holder IS NULL) = (lease_expires_at IS NULL))
)"
            ),
            format!(
                "CREATE INDEX watermarks_running ON {s}.watermarks (updated_at) WHERE status = 'running'"
            ),
        ],
    )]
}

fn migrations_table(s: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"
    )
}

/// The DDL [`PostgresStoreBuilder::connect`] runs on an empty database for
/// `schema` (it also records each migration in `schema_migrations`).
///
/// ```
/// let ddl = offload_watermark_store::postgres::schema_ddl("we\"ird").unwrap();
/// assert!(ddl.contains("CREATE TABLE \"we\"\"ird\".watermarks"));
/// assert!(offload_watermark_store::postgres::schema_ddl("").is_err());
/// ```
pub fn schema_ddl(schema: &str) -> Result<String, StoreError> {
    validate_schema(schema)?;
    let s = quote_ident(schema);
    let mut out = format!("CREATE SCHEMA IF NOT EXISTS {s};\n\n{};\n", migrations_table(&s));
    for (_, statements) in migrations(&s) {
        for statement in statements {
            out.push('\n');
            out.push_str(&statement);
            out.push_str(";\n");
        }
    }
    Ok(out)
}

/// Creates the schema if needed and applies pending migrations, in one
/// transaction under an advisory lock so that workers starting together do not
/// race on `CREATE`.
async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<(), StoreError> {
    let db = db("migrate schema");
    let s = quote_ident(schema);
    let mut tx = conn.begin().await.map_err(&db)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(MIGRATION_LOCK_CLASS)
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    // Checked first so that a schema created by a DBA works for a role without
    // CREATE on the database (CREATE SCHEMA IF NOT EXISTS checks that privilege).
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *tx)
        .await
        .map_err(&db)?;
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA {s}"))
            .execute(&mut *tx)
            .await
            .map_err(&db)?;
    }
    sqlx::query(&migrations_table(&s))
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    let found: i32 = sqlx::query_scalar(&format!(
        "SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"
    ))
    .fetch_one(&mut *tx)
    .await
    .map_err(&db)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            schema: schema.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, (description, statements)) in (1..).zip(migrations(&s)) {
        if version <= found {
            continue;
        }
        for statement in statements {
            sqlx::query(&statement).execute(&mut *tx).await.map_err(&db)?;
        }
        sqlx::query(&format!(
            "INSERT INTO {s}.schema_migrations (version, description) VALUES ($1, $2)"
        ))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
        tracing::info!(schema, version, description, "migrated watermark store schema");
    }
    tx.commit().await.map_err(&db)
}

fn validate_schema(name: &str) -> Result<(), StoreError> {
    let bad = |reason| StoreError::InvalidSchemaName {
        name: validate::preview(name),
        reason,
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name.contains('\0') {
        return Err(bad("must not contain NUL"));
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(bad("longer than PostgreSQL's 63-byte identifier limit"));
    }
    Ok(())
}

/// `name` as a quoted identifier: any characters, embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_checked() {
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
        assert!(validate_schema(&"x".repeat(63)).is_ok());
        for bad in [String::new(), "x".repeat(64), "a\0b".into()] {
            assert!(matches!(
                validate_schema(&bad),
                Err(StoreError::InvalidSchemaName { .. })
            ));
        }
    }
}
