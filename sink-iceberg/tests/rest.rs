//! The Iceberg sink over a REST catalog (feature `rest`): iceberg-catalog-rest
//! talking to `testing/rest-catalog/server.py`, a REST catalog server over
//! pyiceberg's SqlCatalog in a SQLite file, one private server process per
//! test (`common/rest.rs`).
//!
//! * offload-core's sink conformance suite on the REST catalog;
//! * the commit protocol under injected faults: a 409 is retried by iceberg
//!   and lands once; a 5xx or a dropped connection is an unknown outcome
//!   (`Error::CommitOutcomeUnknown`) that `was_committed` resolves, whether
//!   the server applied the commit (fault after) or not (fault before);
//! * pyiceberg reads what the server holds, both straight from its SQLite
//!   catalog and through pyiceberg's own REST client;
//! * the server's self-test with pyiceberg's REST client.
//!
//! Needs the test venv (`bash testing/setup-venv.sh`); without it the tests
//! fail, they do not skip.
#![cfg(feature = "rest")]

mod common;
#[path = "common/rest.rs"]
mod rest_server;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use async_trait::async_trait;
use common::*;
use futures::TryStreamExt;
use iceberg::ErrorKind;
use offload_core::conformance::sink::SinkFixture;
use offload_core::{Error, RunId, Sink, SinkTable, TableConfig, Watermark};
use offload_sink_iceberg::{IcebergSink, IcebergSinkConfig, IcebergTable, KEY_RUN_ID, TableName};
use rest_server::{Fault, RestOptions, RestServer};
use serde_json::Value;

async fn connect(server: &RestServer) -> IcebergSink {
    IcebergSink::connect(IcebergSinkConfig::new(server.catalog_config()).orphan_grace(Duration::ZERO))
        .await
        .unwrap()
}

// --- (a) the sink conformance suite -------------------------------------------

struct RestFixture {
    /// Owns the server (and its catalog file and warehouse) until the check ends.
    _server: RestServer,
    sinks: [IcebergSink; 2],
    next: AtomicUsize,
    /// A third connection, for reading rows independently of the sinks.
    reader: IcebergSink,
}

fn sink_err(e: impl Into<offload_sink_iceberg::IcebergSinkError>) -> Error {
    e.into().into()
}

#[async_trait]
impl SinkFixture for RestFixture {
    fn sink(&self) -> Arc<dyn Sink> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sinks.len();
        Arc::new(self.sinks[i].clone())
    }

    async fn create_table(&self, name: &str) -> Result<TableConfig, Error> {
        TableConfig::builder(name)
            .sink_table(format!("conformance.{name}"))
            .timestamp_column("ts")
            .sequence_column("seq")
            .build()
    }

    async fn committed_rows(&self, table: &TableConfig) -> Result<Vec<(i64, u64)>, Error> {
        let ident = TableName::parse(table.sink_table(), offload_sink_iceberg::DEFAULT_NAMESPACE)
            .map_err(sink_err)?;
        let loaded = match self.reader.catalog().load_table(&ident).await {
            Ok(t) => t,
            Err(e) if matches!(e.kind(), ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Error::sink(e, false)),
        };
        let batches: Vec<RecordBatch> = loaded
            .scan()
            .select(["ts", "seq"])
            .build()
            .map_err(|e| Error::sink(e, false))?
            .to_arrow()
            .await
            .map_err(|e| Error::sink(e, false))?
            .try_collect()
            .await
            .map_err(|e| Error::sink(e, false))?;
        let mut rows = Vec::new();
        for b in &batches {
            let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
            // UInt64 sequences are stored as decimal(20,0).
            let seq = b.column(1).as_primitive::<Decimal128Type>();
            for i in 0..b.num_rows() {
                rows.push((ts.value(i), u64::try_from(seq.value(i)).expect("a u64 sequence")));
            }
        }
        Ok(rows)
    }
}

mod conformance {
    use super::*;

    async fn fixture() -> RestFixture {
        let server = rest_server::start();
        let sinks = [connect(&server).await, connect(&server).await];
        let reader = connect(&server).await;
        RestFixture {
            _server: server,
            sinks,
            next: AtomicUsize::new(0),
            reader,
        }
    }

    offload_core::sink_conformance_tests!(fixture);
}

// --- (b)-(d) commits under injected faults ------------------------------------

/// A fresh prepared table `lake.<name>` on `server`.
async fn table(server: &RestServer, name: &str) -> IcebergTable {
    let t = open(&connect(server).await, &format!("lake.{name}"));
    t.prepare(trades_schema()).await.unwrap();
    t
}

/// Snapshots on the table whose summary names `run`.
async fn snapshots_of(t: &IcebergTable, run: RunId) -> usize {
    let loaded = t.load().await.unwrap();
    let run = run.to_string();
    loaded
        .metadata()
        .snapshots()
        .filter(|s| s.summary().additional_properties.get(KEY_RUN_ID) == Some(&run))
        .count()
}

fn rows(t: &[RecordBatch]) -> u64 {
    t.iter().map(|b| b.num_rows() as u64).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_on_the_first_attempt_is_retried_and_lands_once() {
    let server = rest_server::start();
    let t = table(&server, "retry409").await;
    let batch = trades(T0, 1, 500, 1_000_000);
    let until = last_position(&batch);
    let run = RunId::new();
    let staged = stage(&t, run, std::slice::from_ref(&batch)).await;
    server.reset_stats();
    server.faults(&[Fault::conflict().on_table("lake.retry409")]);

    staged
        .commit(&meta(Watermark::MIN, until, run, "test"))
        .await
        .expect("iceberg retries the 409 and the retry lands");

    let stats = server.stats();
    assert_eq!(stats.commits.received, 2, "{:#?}", stats.commit_log);
    assert_eq!(stats.commits.faults_before, 1);
    assert_eq!(stats.commits.applied, 1);
    assert_eq!(stats.commits.conflicts, 0);
    let statuses: Vec<_> = stats.commit_log.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [Some(409), Some(200)]);
    // What iceberg-rust sent: the fast append's requirements and updates.
    let first = &stats.commit_log[0];
    for r in ["assert-table-uuid", "assert-ref-snapshot-id"] {
        assert!(first.requirements.iter().any(|x| x == r), "{first:?}");
    }
    for u in ["add-snapshot", "set-snapshot-ref", "set-properties"] {
        assert!(first.updates.iter().any(|x| x == u), "{first:?}");
    }
    assert!(server.pending_faults().is_empty());

    assert_eq!(snapshots_of(&t, run).await, 1, "exactly one snapshot for the run");
    assert!(t.was_committed(run).await.unwrap());
    assert_eq!(committed_until(&t).await, until);
    assert_eq!(figures(&read_back(&t).await), figures(&[batch]));
}

/// The server's compare-and-swap loses to a writer outside it (between
/// validating the requirements and the swap): a genuine 409, retried by
/// iceberg on the new state (the fence still admits it: the other writer only
/// changed a property), landing once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_swap_is_a_conflict_and_the_retry_lands_once() {
    let server = rest_server::start();
    let t = table(&server, "lostswap").await;
    let batch = trades(T0, 1, 100, 1_000_000);
    let run = RunId::new();
    let staged = stage(&t, run, std::slice::from_ref(&batch)).await;
    server.reset_stats();
    server.faults(&[Fault::lose_swap()]);
    staged
        .commit(&meta(Watermark::MIN, last_position(&batch), run, "test"))
        .await
        .unwrap();
    let stats = server.stats();
    assert_eq!(
        (
            stats.commits.received,
            stats.commits.conflicts,
            stats.commits.applied
        ),
        (2, 1, 1),
        "{:#?}",
        stats.commit_log
    );
    let lost = &stats.commit_log[0];
    assert_eq!(lost.status, Some(409));
    assert!(
        lost.error
            .as_deref()
            .unwrap_or_default()
            .contains("another process"),
        "{lost:?}"
    );
    let loaded = t.load().await.unwrap();
    assert_eq!(
        loaded
            .metadata()
            .properties()
            .get("offload-test.interleaved")
            .map(String::as_str),
        Some("1"),
        "the other writer's commit is kept"
    );
    assert_eq!(snapshots_of(&t, run).await, 1);
    assert_eq!(rows(&read_back(&t).await), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicts_beyond_iceberg_retries_fail_without_landing() {
    let server = rest_server::start();
    let t = table(&server, "retry_exhausted").await;
    let batch = trades(T0, 1, 50, 1_000_000);
    let run = RunId::new();
    let staged = stage(&t, run, std::slice::from_ref(&batch)).await;
    server.reset_stats();
    // iceberg's default is 4 retries: 5 attempts, all refused.
    server.faults(&[Fault::conflict().times(5)]);
    let m = meta(Watermark::MIN, last_position(&batch), run, "test");
    let err = staged.commit(&m).await.expect_err("every attempt was refused");
    assert!(
        !matches!(err, Error::CommitOutcomeUnknown { .. }),
        "a 409 is certainly not applied: {err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
    let stats = server.stats();
    assert_eq!((stats.commits.received, stats.commits.applied), (5, 0));
    assert!(!t.was_committed(run).await.unwrap());
    assert!(t.committed().await.unwrap().is_none());
    // The engine's retry of the same staged files lands once.
    staged.commit(&m).await.unwrap();
    assert_eq!(snapshots_of(&t, run).await, 1);
    assert_eq!(rows(&read_back(&t).await), 50);
}

/// Commits one window with `fault` on its (first) commit request and checks
/// the outcome is unknown to the sink, `was_committed` tells whether it landed
/// (`applied`), and a retry of the same staged files ends with the rows there
/// exactly once.
async fn in_doubt(server: &RestServer, name: &str, fault: Fault, applied: bool) {
    let t = table(server, name).await;
    let first = trades(T0, 1, 300, 1_000_000);
    let (after, _) = commit_window(&t, Watermark::MIN, std::slice::from_ref(&first)).await;
    let batch = trades(T0 + 300_000_000, 301, 200, 1_000_000);
    let until = last_position(&batch);
    let run = RunId::new();
    let staged = stage(&t, run, std::slice::from_ref(&batch)).await;
    let before = server.stats().commits;
    server.faults(&[fault.clone().on_table(format!("lake.{name}"))]);
    let m = meta(after, until, run, "test");

    let err = staged.commit(&m).await.expect_err("the fault reaches the sink");
    match &err {
        Error::CommitOutcomeUnknown { run_id, .. } => assert_eq!(*run_id, run),
        other => panic!("{fault:?}: expected CommitOutcomeUnknown, got {other:?}"),
    }
    let stats = server.stats();
    assert_eq!(
        stats.commits.received - before.received,
        1,
        "{fault:?}: no hidden retry"
    );
    assert_eq!(
        stats.commits.applied - before.applied,
        u64::from(applied),
        "{fault:?}"
    );
    let hit = (stats.commits.faults_before - before.faults_before)
        + (stats.commits.faults_after - before.faults_after);
    assert_eq!(hit, 1, "{fault:?}: the fault was hit");

    // How the engine resolves the doubt.
    assert_eq!(t.was_committed(run).await.unwrap(), applied, "{fault:?}");
    let expected_until = if applied { until } else { after };
    assert_eq!(committed_until(&t).await, expected_until, "{fault:?}");
    let expected_rows = if applied { 500 } else { 300 };
    assert_eq!(rows(&read_back(&t).await), expected_rows, "{fault:?}");

    // The same commit again: refused by the fence when it had landed (the
    // window is behind the watermark now), landing once when it had not.
    match staged.commit(&m).await {
        Err(Error::CommitConflict { found, .. }) if applied => assert_eq!(found, Some(until)),
        Ok(()) if !applied => {}
        other => panic!("{fault:?}: retry after an in-doubt commit (applied: {applied}): {other:?}"),
    }
    assert_eq!(
        snapshots_of(&t, run).await,
        1,
        "{fault:?}: one snapshot for the run"
    );
    assert_eq!(committed_until(&t).await, until);
    let back = read_back(&t).await;
    assert_eq!(
        figures(&back),
        figures(&[first, batch]),
        "{fault:?}: no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_error_after_apply_is_unknown_and_was_committed() {
    let server = rest_server::start();
    in_doubt(&server, "after500", Fault::status(500).after(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_error_before_apply_is_unknown_and_not_committed() {
    let server = rest_server::start();
    in_doubt(&server, "before500", Fault::status(500), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unavailable_gateway_and_dropped_connections_are_unknown() {
    let server = rest_server::start();
    let cases = [
        ("before503", Fault::status(503), false),
        ("after503", Fault::status(503).after(), true),
        ("after502", Fault::status(502).after(), true),
        ("before504", Fault::status(504), false),
        ("beforedrop", Fault::drop_connection(), false),
        ("afterdrop", Fault::drop_connection().after(), true),
    ];
    for (name, fault, applied) in cases {
        in_doubt(&server, name, fault, applied).await;
    }
}

/// The engine drives the commits through the server's faults and resolves
/// each unknown outcome with `was_committed`: every row lands exactly once,
/// one snapshot per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_end_to_end_exactly_once_through_faults() {
    use std::time::UNIX_EPOCH;

    use offload_core::memory::{MemorySource, MemoryStore};
    use offload_core::{ManualClock, Offloader};

    let server = rest_server::start();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let source = Arc::new(MemorySource::new(clock.clone()));
    let sink = Arc::new(connect(&server).await);
    // Each round is one window of 11 h across day partitions: unbounded.
    let table = TableConfig::builder("engine_trades")
        .sink_table("lake.engine_trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::from_secs(60))
        .unbounded_window()
        .build()
        .unwrap();
    let engine = Offloader::builder(
        source.clone(),
        sink.clone(),
        Arc::new(MemoryStore::new(clock.clone())),
    )
    .clock(Arc::new(clock.clone()))
    .build()
    .unwrap();
    let base = 1_700_000_000_000_000i64;
    let faults = [
        Fault::conflict(),
        Fault::status(500).after(),
        Fault::status(500),
        Fault::drop_connection().after(),
        Fault::drop_connection(),
        Fault::status(503),
    ];
    let mut expected = Vec::new();
    for (round, fault) in faults.iter().enumerate() {
        let round = round as i64;
        let rows: Vec<(i64, u64, i64)> = (0..500)
            .map(|i| {
                (
                    base + round * DAY_MICROS / 2 + i * 40_000_000,
                    (round * 500 + i) as u64,
                    i,
                )
            })
            .collect();
        source.insert("engine_trades", &rows);
        expected.extend(rows);
        let before = server.stats().commits;
        server.faults(&[fault.clone().on_table("lake.engine_trades")]);
        let run = engine
            .run_once(&table)
            .await
            .unwrap_or_else(|e| panic!("round {round} ({fault:?}): {e}"));
        assert_eq!(run.rows, 500, "round {round} ({fault:?})");
        let after = server.stats().commits;
        assert_eq!(
            (after.faults_before + after.faults_after) - (before.faults_before + before.faults_after),
            1,
            "round {round}: the fault was hit"
        );
        assert_eq!(
            after.applied - before.applied,
            1,
            "round {round} ({fault:?}): one commit landed"
        );
    }
    let t = sink.open_table(&table).unwrap();
    let loaded = t.load().await.unwrap();
    assert_eq!(
        loaded.metadata().snapshots().count(),
        faults.len(),
        "one snapshot per run"
    );
    let mut got: Vec<(i64, u64, i64)> = Vec::new();
    for batch in read_back(&t).await {
        let col = |n: &str| batch.column(batch.schema().index_of(n).unwrap()).clone();
        let (ts, seq, value) = (col("ts"), col("seq"), col("value"));
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let seq = seq.as_primitive::<Decimal128Type>();
        let value = value.as_primitive::<arrow_array::types::Int64Type>();
        for i in 0..batch.num_rows() {
            got.push((ts.value(i), seq.value(i) as u64, value.value(i)));
        }
    }
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "every row exactly once");
}

/// A new nullable source column evolves the table through the server
/// (add-schema / set-current-schema); field ids stay, old rows read null.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_evolution_commits_through_the_server() {
    use arrow_schema::{DataType, Field, Schema};

    let server = rest_server::start();
    let t = table(&server, "evolve").await;
    let w1 = trades(T0, 1, 400, 1_000_000);
    let (u1, _) = commit_window(&t, Watermark::MIN, std::slice::from_ref(&w1)).await;
    let ids = |t: &iceberg::table::Table| -> Vec<(String, i32)> {
        let s = t.metadata().current_schema();
        s.as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.id))
            .collect()
    };
    let before = ids(&t.load().await.unwrap());

    let base = trades_schema();
    let mut fields: Vec<Field> = base.fields().iter().map(|f| (**f).clone()).collect();
    fields.push(Field::new("venue", DataType::Utf8, true));
    let evolved = Arc::new(Schema::new(fields));
    server.reset_stats();
    t.prepare(evolved.clone()).await.unwrap();
    t.prepare(evolved.clone()).await.unwrap(); // idempotent
    let stats = server.stats();
    assert_eq!(stats.commits.applied, 1, "{:#?}", stats.commit_log);
    let evolution = &stats.commit_log[0];
    assert!(
        evolution.updates.iter().any(|u| u == "add-schema"),
        "{evolution:?}"
    );
    assert!(
        evolution
            .requirements
            .iter()
            .any(|r| r == "assert-current-schema-id"),
        "{evolution:?}"
    );

    let loaded = t.load().await.unwrap();
    let after = ids(&loaded);
    assert_eq!(&after[..before.len()], &before[..], "existing field ids kept");
    assert_eq!(after.last().unwrap().0, "venue");

    let w2 = trades(T0 + 1000 * 1_000_000, 401, 300, 1_000_000);
    let venues = arrow_array::StringArray::from_iter_values((0..300).map(|i| format!("XNAS{}", i % 3)));
    let mut cols = w2.columns().to_vec();
    cols.push(Arc::new(venues));
    let w2 = RecordBatch::try_new(evolved, cols).unwrap();
    commit_window(&t, u1, std::slice::from_ref(&w2)).await;
    let back = read_back(&t).await;
    let (mut nulls, mut set) = (0, 0);
    for b in &back {
        let v = b.column(b.schema().index_of("venue").unwrap());
        nulls += v.null_count();
        set += v.len() - v.null_count();
    }
    assert_eq!((nulls, set), (400, 300), "old rows read the new column as null");
}

/// iceberg's snapshot expiry (remove-snapshots, with a metadata-log bound in
/// the same commit) through the server: the window markers survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_expiry_commits_through_the_server() {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};

    let server = rest_server::start();
    let t = table(&server, "expire").await;
    let mut after = Watermark::MIN;
    let mut all = Vec::new();
    for i in 0..3 {
        let b = trades(T0 + i * 1_000_000_000, 1 + i * 100, 100, 1_000_000);
        after = commit_window(&t, after, std::slice::from_ref(&b)).await.0;
        all.push(b);
    }
    let before = t.load().await.unwrap();
    let mut ids: Vec<(i64, i64)> = before
        .metadata()
        .snapshots()
        .map(|s| (s.timestamp_ms(), s.snapshot_id()))
        .collect();
    ids.sort_unstable();
    let oldest = ids[0].1;
    let tx = Transaction::new(&before);
    let tx = tx
        .expire_snapshots()
        .expire_snapshot_ids([oldest])
        .expire_older_than_ms(i64::MIN)
        .apply(tx)
        .unwrap();
    let tx = tx
        .update_table_properties()
        .set("write.metadata.previous-versions-max".into(), "2".into())
        .apply(tx)
        .unwrap();
    let expired = tx.commit(&**t.catalog()).await.unwrap();
    assert!(expired.metadata().snapshot_by_id(oldest).is_none());
    assert_eq!(expired.metadata().snapshots().count(), 2);
    let last = server.stats().commit_log.pop().unwrap();
    assert!(last.updates.iter().any(|u| u == "remove-snapshots"), "{last:?}");
    let reloaded = t.load().await.unwrap();
    assert!(reloaded.metadata().snapshot_by_id(oldest).is_none());
    assert_eq!(committed_until(&t).await, after);
    assert_eq!(figures(&read_back(&t).await), figures(&all));
    // The next commit keeps the metadata log within the bound.
    let b = trades(T0 + 5_000_000_000, 1000, 10, 1_000);
    commit_window(&t, after, std::slice::from_ref(&b)).await;
    assert!(t.load().await.unwrap().metadata().metadata_log().len() <= 2);
}

// --- (e) independent readers --------------------------------------------------

/// pyiceberg, from the server's SQLite catalog directly and through its own
/// REST client, reads the rows this sink committed through the server.
const PY_READ: &str = r#"
import json, sys
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
import pyarrow.compute as pc
cfg = json.loads(sys.argv[1])
out = {}
for name, cat in (("sql", SqlCatalog(cfg["catalog"], uri="sqlite:///" + cfg["db"], warehouse=cfg["warehouse"])),
                  ("rest", RestCatalog("rest", uri=cfg["uri"]))):
    t = cat.load_table(cfg["table"])
    a = t.scan().to_arrow()
    out[name] = {
        "count": a.num_rows,
        "sum_seq": int(pc.sum(a["seq"]).as_py()),
        "min_ts": a["ts"].cast("int64").to_pylist() and min(a["ts"].cast("int64").to_pylist()),
        "max_ts": a["ts"].cast("int64").to_pylist() and max(a["ts"].cast("int64").to_pylist()),
        "snapshots": len(t.metadata.snapshots),
        "metadata_location": t.metadata_location,
        "spec": [f.name for f in t.spec().fields],
    }
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_reads_what_the_server_holds() {
    let server = rest_server::start();
    let t = table(&server, "readers").await;
    let windows = [
        vec![trades(T0 - 3_600_000_000, 1, 1500, 60_000_000)],
        vec![
            trades(T0 + DAY_MICROS + 7, 1501, 1000, 45_000_000),
            trades(T0 + DAY_MICROS + 45_000_000_000, 2501, 1000, 45_000_000),
        ],
        vec![trades(
            T0 + 2 * DAY_MICROS + 40_000_000_000,
            3501,
            2500,
            20_000_000,
        )],
    ];
    let mut after = Watermark::MIN;
    // One of them through a 409 and one through an in-doubt 500 resolved by
    // was_committed, as the engine would.
    server.faults(&[Fault::conflict()]);
    after = commit_window(&t, after, &windows[0]).await.0;
    server.faults(&[Fault::status(500).after()]);
    let run = RunId::new();
    let until = last_position(windows[1].last().unwrap());
    let staged = stage(&t, run, &windows[1]).await;
    let err = staged.commit(&meta(after, until, run, "test")).await.unwrap_err();
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(t.was_committed(run).await.unwrap());
    after = until;
    commit_window(&t, after, &windows[2]).await;

    let written: Vec<RecordBatch> = windows.concat();
    let expected = figures(&written);
    assert_eq!(
        figures(&read_back(&t).await),
        expected,
        "iceberg-rust reads it back"
    );
    let loaded = t.load().await.unwrap();

    let cfg = serde_json::json!({
        "db": server.catalog_db(),
        "warehouse": server.warehouse(),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "uri": server.uri(),
        "table": "lake.readers",
    });
    let python = offload_testkit::venv_python();
    let out = Command::new(&python)
        .args(["-c", PY_READ, &cfg.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "pyiceberg failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    for reader in ["sql", "rest"] {
        let r = &got[reader];
        assert_eq!(r["count"], expected.count, "{reader}: {r}");
        assert_eq!(
            r["sum_seq"].as_i64().map(i128::from),
            Some(expected.sum_seq),
            "{reader}: {r}"
        );
        assert_eq!(r["min_ts"], expected.min_ts, "{reader}: {r}");
        assert_eq!(r["max_ts"], expected.max_ts, "{reader}: {r}");
        assert_eq!(r["snapshots"], 3, "{reader}: one snapshot per window: {r}");
        assert_eq!(
            r["metadata_location"],
            loaded.metadata_location().unwrap(),
            "{reader}: {r}"
        );
        assert_eq!(r["spec"], serde_json::json!(["ts_day"]), "{reader}: {r}");
    }
}

// --- the server itself --------------------------------------------------------

/// `testing/rest-catalog/test_server.py`: the server against pyiceberg's REST
/// client (namespaces, paging, appends, stale and concurrent commits, every
/// fault kind, staged creates, rename/register/drop/purge, a path prefix).
#[test]
fn server_self_test_with_pyiceberg_rest_client() {
    let python = offload_testkit::venv_python();
    let script = offload_testkit::repo_root().join("testing/rest-catalog/test_server.py");
    let out = Command::new(&python)
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {} {}: {e}", python.display(), script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{}\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_prefix_comes_from_the_config_endpoint() {
    let server = RestServer::start_with(&RestOptions {
        prefix: Some("wh1".into()),
        ..RestOptions::default()
    });
    let (status, cfg) = server.request("GET", "/v1/config", None);
    assert_eq!(status, 200);
    assert_eq!(cfg.unwrap()["overrides"]["prefix"], "wh1");
    let t = table(&server, "prefixed").await;
    let batch = trades(T0, 1, 10, 1_000);
    commit_window(&t, Watermark::MIN, std::slice::from_ref(&batch)).await;
    assert_eq!(rows(&read_back(&t).await), 10);
    let (status, _) = server.request("GET", "/v1/namespaces/lake/tables/prefixed", None);
    assert_eq!(status, 404, "only under the prefix");
    let (status, body) = server.request("GET", "/v1/wh1/namespaces/lake/tables/prefixed", None);
    assert_eq!(status, 200);
    assert!(body.unwrap()["metadata"]["snapshots"].as_array().unwrap().len() == 1);
    assert_eq!(server.stats().commits.applied, 1);
}

// --- maintenance's own replace commit over REST --------------------------------

/// Maintenance that only rewrites manifests (nothing to compact or expire).
fn manifests_only() -> offload_sink_iceberg::MaintenanceConfig {
    offload_sink_iceberg::MaintenanceConfig::default()
        .min_input_files(1_000_000)
        .max_manifests(1)
        .snapshot_retention(Duration::from_secs(365 * 86_400))
        .keep_snapshots(1_000_000)
}

/// A table with `n` one-second windows of 10 rows; returns the committed window.
async fn windows_over_rest(
    server: &RestServer,
    name: &str,
    n: usize,
) -> (IcebergTable, offload_core::CommittedWindow) {
    let t = table(server, name).await;
    let mut after = Watermark::MIN;
    for i in 0..n {
        let batch = trades(T0 + i as i64 * 1_000_000, (i * 10) as i64 + 1, 10, 1_000);
        after = commit_window(&t, after, std::slice::from_ref(&batch)).await.0;
    }
    let c = t.committed().await.unwrap().unwrap();
    (t, c)
}

fn main_operation(t: &iceberg::table::Table) -> iceberg::spec::Operation {
    t.metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .operation
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_commit_goes_through_the_rest_spec_commit() {
    let server = rest_server::start();
    let (t, before) = windows_over_rest(&server, "replace", 4).await;
    server.reset_stats();
    let report = t.maintain_with(&manifests_only()).await.unwrap();
    assert_eq!(
        (report.manifests_before, report.manifests_after),
        (4, 1),
        "{report:?}"
    );
    let stats = server.stats();
    let replace = stats
        .commit_log
        .iter()
        .find(|e| e.updates.iter().any(|u| u == "add-snapshot"))
        .unwrap_or_else(|| panic!("no add-snapshot commit: {:#?}", stats.commit_log));
    assert_eq!(replace.status, Some(200));
    for r in ["assert-table-uuid", "assert-ref-snapshot-id"] {
        assert!(replace.requirements.iter().any(|x| x == r), "{replace:?}");
    }
    assert!(
        replace.updates.iter().any(|u| u == "set-snapshot-ref"),
        "{replace:?}"
    );
    let loaded = t.load().await.unwrap();
    assert_eq!(main_operation(&loaded), iceberg::spec::Operation::Replace);
    assert_eq!(
        t.committed().await.unwrap().unwrap(),
        before,
        "window and data version unchanged"
    );
    assert_eq!(rows(&read_back(&t).await), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_conflict_is_rebuilt_and_unknown_outcomes_are_resolved() {
    let server = rest_server::start();
    let (t, before) = windows_over_rest(&server, "replace_faults", 3).await;

    // 409 on the first replace: rebuilt on a fresh load and sent again.
    server.faults(&[Fault::conflict().on_table("lake.replace_faults")]);
    let report = t.maintain_with(&manifests_only()).await.unwrap();
    assert_eq!(report.conflicts_retried, 1, "{report:?}");
    assert_eq!(report.manifests_after, 1);
    assert!(server.pending_faults().is_empty(), "the fault was hit");

    // Applied, then a 500: the reply is lost, the snapshot is on main.
    let next = trades(T0 + 100_000_000, 1_000, 10, 1_000);
    let until = last_position(&next);
    let run = RunId::new();
    stage(&t, run, std::slice::from_ref(&next))
        .await
        .commit(&meta(before.until, until, run, "test"))
        .await
        .unwrap();
    let mut cfg = manifests_only().max_manifests(1);
    server.faults(&[Fault::status(500).after().on_table("lake.replace_faults")]);
    let report = t.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.manifests_after, 1, "resolved as landed: {report:?}");
    assert_eq!(
        main_operation(&t.load().await.unwrap()),
        iceberg::spec::Operation::Replace
    );

    // Not applied, then a 503: unknown, and reading back shows it did not land.
    let more = trades(T0 + 200_000_000, 2_000, 10, 1_000);
    let until2 = last_position(&more);
    let run2 = RunId::new();
    stage(&t, run2, std::slice::from_ref(&more))
        .await
        .commit(&meta(until, until2, run2, "test"))
        .await
        .unwrap();
    let snapshots = t.load().await.unwrap().metadata().snapshots().count();
    server.faults(&[Fault::status(503).before().on_table("lake.replace_faults")]);
    let err = t.maintain_with(&cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            offload_sink_iceberg::IcebergSinkError::ReplaceOutcomeUnknown { .. }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        t.load().await.unwrap().metadata().snapshots().count(),
        snapshots,
        "nothing landed"
    );
    // The next maintain finishes the job.
    cfg = cfg.max_commit_attempts(2);
    let report = t.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.manifests_after, 1, "{report:?}");
    let c = t.committed().await.unwrap().unwrap();
    assert_eq!((c.until, c.run_id), (until2, Some(run2)));
    assert_eq!(rows(&read_back(&t).await), 50, "no row lost or doubled");
}
