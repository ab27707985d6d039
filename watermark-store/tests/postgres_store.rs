//! PostgreSQL-store behaviour beyond the shared contract: schema management,
//! faults, many workers, the database clock. Needs PostgreSQL at
//! `OFFLOAD_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and fails, never skips, without it.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::pg::{self, TestSchema, quote};
use common::store_error;
use offload_core::{Error, RunEvent, RunId, RunStatus, Watermark, WatermarkStore};
use offload_watermark_store::postgres::{SCHEMA_VERSION, schema_ddl};
use offload_watermark_store::{PostgresStore, StoreError};
use sqlx::{Connection, Row};
use tokio::sync::Barrier;

const LONG: Duration = Duration::from_secs(3600);

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_readme_shows_the_ddl_the_store_runs() {
    let ddl = schema_ddl("offload").unwrap();
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(ddl.trim()),
        "README.md must contain schema_ddl(\"offload\") verbatim:\n{ddl}"
    );
}

#[tokio::test]
async fn the_schema_is_created_once_by_concurrent_workers_and_matches_the_ddl() {
    let schema = TestSchema::new();
    let name = schema.name.clone();
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let name = name.clone();
            tokio::spawn(async move { pg::store_on(&name).await })
        })
        .collect();
    for w in workers {
        w.await.expect("worker task");
    }
    let mut conn = pg::connect().await;
    let versions: Vec<(i32, String)> = sqlx::query_as(&format!(
        "SELECT version, description FROM {}.schema_migrations ORDER BY version",
        quote(&name)
    ))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(versions, vec![(SCHEMA_VERSION, "watermarks table".to_owned())]);

    // The table the store made is the one schema_ddl (and so the README) shows.
    let other = TestSchema::new();
    sqlx::raw_sql(&schema_ddl(&other.name).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let describe = |s: String| {
        format!(
            "SELECT column_name::text, data_type::text, is_nullable::text, coalesce(column_default, '') \
             FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'watermarks' \
             ORDER BY ordinal_position",
            s.replace('\'', "''")
        )
    };
    let made: Vec<(String, String, String, String)> = sqlx::query_as(&describe(name.clone()))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let shown: Vec<(String, String, String, String)> = sqlx::query_as(&describe(other.name.clone()))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(made.len(), 15);
    assert_eq!(made, shown);
}

#[tokio::test]
async fn state_survives_reconnecting() {
    let schema = TestSchema::new();
    let store = pg::store_on(&schema.name).await;
    let lease = store.acquire_lease("t", "a", LONG).await.unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(7, 7))
        .await
        .unwrap();
    let run_id = RunId::new();
    store
        .record_run(&lease, RunEvent::Started { run_id })
        .await
        .unwrap();
    let before = store.load("t").await.unwrap();
    store.close().await;

    let again = pg::store_on(&schema.name).await;
    assert_eq!(again.load("t").await.unwrap(), before);
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    let schema = TestSchema::new();
    pg::store_on(&schema.name).await.close().await;
    let mut conn = pg::connect().await;
    sqlx::query(&format!(
        "INSERT INTO {}.schema_migrations (version, description) VALUES (99, 'from the future')",
        quote(&schema.name)
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    match PostgresStore::connect(&pg::url(), &schema.name).await {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => assert!(!e.is_retryable()),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hostile_schema_name_is_just_a_name() {
    let schema = TestSchema::named("o\"; DROP SCHEMA public; --");
    assert!(schema.name.len() <= 63);
    let store = pg::store_on(&schema.name).await;
    let lease = store.acquire_lease("t", "a", LONG).await.unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(1, 2))
        .await
        .unwrap();
    assert_eq!(
        store.load("t").await.unwrap().watermark,
        Some(Watermark::new(1, 2))
    );
    let mut conn = pg::connect().await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname IN ($1, 'public') ORDER BY nspname = 'public'",
    )
    .bind(&schema.name)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(names, vec![schema.name.clone(), "public".to_owned()]);
}

#[tokio::test]
async fn bad_schema_names_are_refused_before_connecting() {
    let unreachable = format!("postgres://u@127.0.0.1:{}/db", closed_port());
    for bad in [String::new(), "x".repeat(64), "a\0b".to_owned()] {
        match PostgresStore::connect(&unreachable, &bad).await {
            Err(e @ StoreError::InvalidSchemaName { .. }) => assert!(!e.is_retryable()),
            other => panic!("{bad:?}: expected InvalidSchemaName, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_quick_retryable_error() {
    let port = closed_port();
    let url = format!("postgres://offload:s3cr3t-pw@127.0.0.1:{port}/postgres");
    let result = PostgresStore::builder(&url)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let e = match result {
        Err(e @ StoreError::Connect { .. }) => e,
        other => panic!("expected StoreError::Connect, got {other:?}"),
    };
    assert!(e.is_retryable(), "a refused connection may succeed later: {e}");
    let (shown, debug) = (e.to_string(), format!("{e:?}"));
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(
        !shown.contains("s3cr3t") && !debug.contains("s3cr3t"),
        "{shown} / {debug}"
    );
    let core: Error = e.into();
    assert!(core.is_retryable());
    assert!(!core.to_string().contains("s3cr3t") && !format!("{core:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_connect_timeout() {
    // Accepts TCP (the kernel does, from the backlog) but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let timeout = Duration::from_millis(300);
    let result = PostgresStore::builder(format!("postgres://u:s3cr3t@127.0.0.1:{port}/db"))
        .connect_timeout(timeout)
        .connect()
        .await;
    match result {
        Err(e @ StoreError::ConnectTimeout { .. }) => {
            assert!(e.is_retryable());
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
    drop(silent);
}

#[tokio::test]
async fn a_missing_database_or_role_is_a_permanent_error() {
    let base = pg::url();
    let (prefix, _) = base.rsplit_once('/').expect("OFFLOAD_PG_URL has a database path");
    let missing_db = format!("{prefix}/no_such_database_ows");
    match PostgresStore::connect(&missing_db, "offload").await {
        Err(e @ StoreError::Connect { .. }) => {
            assert!(!e.is_retryable(), "retrying cannot create the database: {e}");
            assert!(e.to_string().contains("no_such_database_ows"), "{e}");
        }
        other => panic!("expected StoreError::Connect, got {other:?}"),
    }
    let missing_role = format!(
        "postgres://no_such_role_ows:pw@{}",
        base.split_once('@')
            .map_or("127.0.0.1:5432/postgres", |(_, rest)| rest)
    );
    match PostgresStore::connect(&missing_role, "offload").await {
        Err(e @ StoreError::Connect { .. }) => {
            assert!(!e.is_retryable(), "wrong credentials do not fix themselves: {e}");
            assert!(e.to_string().contains("no_such_role_ows"), "{e}");
        }
        other => panic!("expected StoreError::Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn an_invalid_url_is_a_typed_error_without_the_password() {
    for url in ["postgres://u:s3cr3t@[::1/db", "not a url s3cr3t"] {
        match PostgresStore::connect(url, "offload").await {
            Err(e @ StoreError::InvalidUrl { .. }) => {
                assert!(!e.is_retryable());
                assert!(
                    !e.to_string().contains("s3cr3t") && !format!("{e:?}").contains("s3cr3t"),
                    "{e:?}"
                );
            }
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn names_postgres_cannot_hold_are_typed_errors() {
    let store = pg::fresh_store().await;
    for table in ["", "nul\0byte"] {
        let e = store.acquire_lease(table, "a", LONG).await.unwrap_err();
        let (err, retryable) = store_error(&e);
        assert!(
            matches!(err, StoreError::InvalidTableName { .. }) && !retryable,
            "{e}"
        );
        assert!(store.load(table).await.is_err());
    }
    let e = store.acquire_lease("t", "nul\0holder", LONG).await.unwrap_err();
    assert!(matches!(store_error(&e).0, StoreError::InvalidHolder { .. }));
    assert_eq!(store.load("t").await.unwrap().lease, None, "nothing was stored");
}

#[tokio::test]
async fn a_worker_that_loses_its_lease_mid_run_is_fenced() {
    let schema = TestSchema::new();
    let (w1, w2) = (pg::store_on(&schema.name).await, pg::store_on(&schema.name).await);
    let l1 = w1.acquire_lease("t", "w1", Duration::ZERO).await.unwrap();
    let run_id = RunId::new();
    w1.record_run(&l1, RunEvent::Started { run_id }).await.unwrap();
    w1.compare_and_set(&l1, None, Watermark::new(1, 0)).await.unwrap();

    // w1 stalls past its lease; w2 takes the table over.
    let l2 = w2.acquire_lease("t", "w2", LONG).await.unwrap();
    assert!(l2.token > l1.token);
    let lost = |r: Result<(), Error>| matches!(r, Err(Error::LeaseLost { token, .. }) if token == l1.token);
    assert!(lost(
        w1.compare_and_set(&l1, Some(Watermark::new(1, 0)), Watermark::new(2, 0))
            .await
    ));
    assert!(lost(
        w1.record_run(
            &l1,
            RunEvent::Succeeded {
                run_id,
                rows: 5,
                duration: Duration::ZERO
            }
        )
        .await
    ));
    assert!(lost(w1.renew_lease(&l1, LONG).await.map(drop)));
    w1.release_lease(&l1).await.unwrap();

    let s = w2.load("t").await.unwrap();
    assert_eq!(s.watermark, Some(Watermark::new(1, 0)));
    assert_eq!((s.status, s.last_row_count), (RunStatus::Running, 0));
    assert_eq!(s.lease, Some(l2.clone()));
    w2.compare_and_set(&l2, Some(Watermark::new(1, 0)), Watermark::new(2, 0))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_workers_one_winner_per_table() {
    let schema = TestSchema::new();
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(Arc::new(pg::store_on(&schema.name).await));
    }
    let tables: Vec<String> = (0..10).map(|i| format!("table-{i}")).collect();
    let barrier = Arc::new(Barrier::new(workers.len()));
    let tasks: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let (store, tables, barrier) = (Arc::clone(store), tables.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut won = Vec::new();
                for t in &tables {
                    match store.acquire_lease(t, &format!("worker-{w}"), LONG).await {
                        Ok(_) => won.push(t.clone()),
                        Err(Error::LeaseHeld { .. }) => {}
                        Err(e) => panic!("worker {w}: {e}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut won: Vec<String> = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    won.sort();
    let mut want = tables.clone();
    want.sort();
    assert_eq!(won, want, "every table claimed by exactly one worker");
}

#[tokio::test]
async fn expiry_is_computed_by_the_database() {
    let store = pg::fresh_store().await;
    let schema = &store.store.schema().to_owned();
    let lease = store.acquire_lease("t", "a", LONG).await.unwrap();
    let mut conn = pg::connect().await;
    let row = sqlx::query(&format!(
        "SELECT lease_expires_at - updated_at = interval '1 hour', \
                (extract(epoch FROM lease_expires_at) * 1000000)::int8 \
         FROM {}.watermarks WHERE table_name = 't'",
        quote(schema)
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        row.get::<bool, _>(0),
        "expiry must be the database's now() plus the TTL, in the same statement"
    );
    assert_eq!(
        offload_core::micros_to_system_time(row.get::<i64, _>(1)),
        lease.expires_at,
        "the lease reports the stored expiry"
    );

    // The caller's copy of the expiry means nothing: the row, judged by the
    // database's clock, decides.
    sqlx::query(&format!(
        "UPDATE {}.watermarks SET lease_expires_at = now() - interval '1 second'",
        quote(schema)
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(
        lease.expires_at > SystemTime::now(),
        "the caller still thinks it is valid"
    );
    let taken = store.acquire_lease("t", "b", LONG).await.unwrap();
    assert!(taken.token > lease.token);
}

#[tokio::test]
async fn workers_clocks_do_not_matter_only_the_databases() {
    // A session whose now() runs ten years ahead stands in for "the database
    // clock differs from the worker's": the store must follow the session's
    // now(), not this process's clock. (PostgreSQL resolves unqualified now()
    // through search_path when pg_catalog is listed explicitly after it.)
    let data = TestSchema::new();
    let clock = TestSchema::named("ows_clock_");
    let mut conn = pg::connect().await;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {c}; CREATE FUNCTION {c}.now() RETURNS timestamptz LANGUAGE sql STABLE \
         AS $$ SELECT pg_catalog.now() + interval '10 years' $$",
        c = quote(&clock.name)
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let normal = pg::store_on(&data.name).await;
    let ahead = PostgresStore::builder(pg::url_with_param(&format!(
        "options=-c%20search_path%3D{}%2Cpg_catalog",
        clock.name
    )))
    .schema(&data.name)
    .connect()
    .await
    .unwrap();

    let far = ahead
        .acquire_lease("t1", "ahead", Duration::from_secs(60))
        .await
        .unwrap();
    let nine_years = Duration::from_secs(9 * 365 * 24 * 3600);
    assert!(
        far.expires_at > SystemTime::now() + nine_years,
        "a one-minute lease must expire a minute after the database's now(), not this process's"
    );
    assert!(matches!(
        normal.acquire_lease("t1", "normal", LONG).await,
        Err(Error::LeaseHeld { holder, .. }) if holder == "ahead"
    ));

    // By the fast clock an hour-long lease is long gone; the takeover fences
    // the original holder, so disagreeing clocks cost a lease, never two writers.
    let mine = normal.acquire_lease("t2", "normal", LONG).await.unwrap();
    let stolen = ahead.acquire_lease("t2", "ahead", LONG).await.unwrap();
    assert!(stolen.token > mine.token);
    assert!(matches!(
        normal.compare_and_set(&mine, None, Watermark::new(1, 0)).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(normal.load("t2").await.unwrap().watermark, None);
}

/// Polls `pg_stat_activity` until a session named `app` waits on a lock.
async fn wait_until_blocked(conn: &mut sqlx::PgConnection, app: &str) -> i32 {
    for _ in 0..6000 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(app)
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the store's statement never blocked on the row lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_statement_leaves_state_intact() {
    let schema = TestSchema::new();
    let app = format!("ows-kill-{}", RunId::new());
    let store = Arc::new(
        PostgresStore::builder(pg::url())
            .schema(&schema.name)
            .application_name(&app)
            .connect()
            .await
            .unwrap(),
    );
    let lease = store.acquire_lease("t", "a", LONG).await.unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(1, 0))
        .await
        .unwrap();
    let before = store.load("t").await.unwrap();

    for op in ["compare_and_set", "record_run"] {
        // Hold the row so the store's statement blocks inside the server,
        // then kill its backend while it waits.
        let mut blocker = pg::connect().await;
        let mut observer = pg::connect().await;
        sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
        sqlx::query(&format!(
            "SELECT 1 FROM {}.watermarks WHERE table_name = 't' FOR UPDATE",
            quote(&schema.name)
        ))
        .execute(&mut blocker)
        .await
        .unwrap();
        let task = {
            let (store, lease) = (Arc::clone(&store), lease.clone());
            tokio::spawn(async move {
                match op {
                    "compare_and_set" => {
                        store
                            .compare_and_set(&lease, Some(Watermark::new(1, 0)), Watermark::new(2, 0))
                            .await
                    }
                    _ => {
                        store
                            .record_run(&lease, RunEvent::Started { run_id: RunId::new() })
                            .await
                    }
                }
            })
        };
        let pid = wait_until_blocked(&mut observer, &app).await;
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut observer)
            .await
            .unwrap();
        assert!(killed);
        let e = task
            .await
            .unwrap()
            .expect_err("the statement's connection was killed");
        let (err, retryable) = store_error(&e);
        assert!(retryable, "{op}: a dropped connection is retryable: {err}");
        assert!(matches!(err, StoreError::Database { .. }), "{op}: {err:?}");
        sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
        blocker.close().await.unwrap();
        assert_eq!(
            store.load("t").await.unwrap(),
            before,
            "{op}: the killed statement changed state"
        );
    }

    // The pool replaces the dead connection; retrying succeeds, exactly once.
    store
        .compare_and_set(&lease, Some(Watermark::new(1, 0)), Watermark::new(2, 0))
        .await
        .unwrap();
    assert_eq!(
        store.load("t").await.unwrap().watermark,
        Some(Watermark::new(2, 0))
    );
}

#[tokio::test]
async fn recover_stale_uses_the_configured_timeout() {
    let schema = TestSchema::new();
    let patient = PostgresStore::builder(pg::url())
        .schema(&schema.name)
        .stale_run_timeout(LONG)
        .connect()
        .await
        .unwrap();
    assert_eq!(patient.stale_run_timeout(), LONG);
    let lease = patient.acquire_lease("t", "a", Duration::ZERO).await.unwrap();
    patient
        .record_run(&lease, RunEvent::Started { run_id: RunId::new() })
        .await
        .unwrap();
    assert_eq!(patient.recover_stale().await.unwrap(), Vec::<String>::new());

    let eager = PostgresStore::builder(pg::url())
        .schema(&schema.name)
        .stale_run_timeout(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    assert_eq!(eager.recover_stale().await.unwrap(), vec!["t".to_owned()]);
    let s = patient.load("t").await.unwrap();
    assert_eq!((s.status, s.consecutive_failures), (RunStatus::Failed, 1));
}
