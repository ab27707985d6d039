//! The Sink contract against real SQL catalogs: every test runs on SQLite and
//! on PostgreSQL (the PostgreSQL variants fail when the server is unreachable).
#![cfg(all(feature = "sqlite", feature = "postgres"))] // every test runs on both SQL catalogs

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::faulty::{Fault, FaultyCatalog};
use common::*;
use iceberg::spec::{PrimitiveType, Transform, Type};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use offload_core::{Error, RunId, Sink, SinkTable, Staged, Watermark};
use offload_sink_iceberg::{IcebergSink, IcebergSinkError, IcebergTable};

macro_rules! on_both_catalogs {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::Backend::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::Backend::postgres().await).await
                }
            )*
        }
    };
}

on_both_catalogs!(
    creates_partitioned_sorted_table_and_reads_back_what_was_written,
    failure_before_commit_leaves_table_unchanged_and_orphans_cleanable,
    watermark_survives_snapshot_expiry_and_foreign_snapshots,
    racing_writers_exactly_one_commits_every_round,
    fence_holds_when_a_commit_lands_between_check_and_swap,
    schema_evolution_adds_nullable_columns_and_refuses_incompatible_ones,
    unknown_outcomes_are_resolved_from_table_metadata,
    engine_end_to_end_exactly_once,
    partition_options_shape_new_tables,
    stagings_of_one_run_never_share_a_file_name,
    a_concurrent_schema_change_is_a_retryable_refusal,
);

fn sink_error(e: &Error) -> &IcebergSinkError {
    match e {
        Error::Sink { source, .. } => source
            .downcast_ref::<IcebergSinkError>()
            .unwrap_or_else(|| panic!("not an IcebergSinkError: {e}")),
        other => panic!("expected a sink error, got {other:?}"),
    }
}

async fn creates_partitioned_sorted_table_and_reads_back_what_was_written(b: Backend) {
    let table = b.table("lake.trades").await;
    assert_eq!(table.committed().await.unwrap(), None, "open creates nothing");
    table.prepare(trades_schema()).await.unwrap();
    assert_eq!(
        table.committed().await.unwrap(),
        None,
        "a new table has nothing committed"
    );

    // 3 days in two windows, several batches each.
    let w1 = [
        trades(T0, 1, 1000, 60_000_000),
        trades(T0 + 1000 * 60_000_000, 1001, 1000, 60_000_000),
    ];
    let (u1, r1) = commit_window(&table, Watermark::MIN, &w1).await;
    let w2 = [trades(T0 + 2 * DAY_MICROS, 2001, 1500, 30_000_000)];
    let (u2, r2) = commit_window(&table, u1, &w2).await;

    let written: Vec<RecordBatch> = w1.iter().chain(&w2).cloned().collect();
    assert_eq!(figures(&read_back(&table).await), figures(&written));

    // A window without rows still commits (a snapshot with no files), so the
    // watermark moves on.
    let empty_run = RunId::new();
    let empty = stage(&table, empty_run, &[]).await;
    assert_eq!((empty.stats().rows, empty.stats().files.len()), (0, 0));
    let u_empty = Watermark::new(u2.timestamp_micros() + 1, 0);
    empty.commit(&meta(u2, u_empty, empty_run, "test")).await.unwrap();
    assert_eq!(committed_until(&table).await, u_empty);
    assert_eq!(figures(&read_back(&table).await), figures(&written));

    // A fresh handle (think: the next run) reads the same from the table.
    let reopened = b.table("lake.trades").await;
    let committed = reopened.committed().await.unwrap().unwrap();
    assert_eq!(committed.until, u_empty);
    assert_eq!(committed.run_id, Some(empty_run));
    assert_eq!(committed.engine_id.as_deref(), Some("test"));
    assert_eq!(committed.fencing_token, Some(7));
    assert!(reopened.was_committed(r1).await.unwrap());
    assert!(table.was_committed(r2).await.unwrap());
    assert!(!table.was_committed(RunId::new()).await.unwrap());

    let t = table.load().await.unwrap();
    let m = t.metadata();
    // Partitioned by day(ts), sorted by (ts, seq), nullability kept.
    let spec = m.default_partition_spec();
    assert_eq!(spec.fields().len(), 1);
    assert_eq!(spec.fields()[0].name, "ts_day");
    assert_eq!(spec.fields()[0].transform, Transform::Day);
    let schema = m.current_schema();
    let ts = schema.field_by_name("ts").unwrap();
    assert!(ts.required);
    assert_eq!(*ts.field_type, Type::Primitive(PrimitiveType::Timestamptz));
    assert!(!schema.field_by_name("qty").unwrap().required);
    let order: Vec<i32> = m
        .default_sort_order()
        .fields
        .iter()
        .map(|f| f.source_id)
        .collect();
    assert_eq!(order, vec![ts.id, schema.field_by_name("seq").unwrap().id]);
    // Summary and properties carry the window.
    let snap = m.current_snapshot().unwrap();
    let summary = &snap.summary().additional_properties;
    assert_eq!(summary["offload.window.after"], u2.to_string());
    assert_eq!(summary["offload.window.until"], u_empty.to_string());
    assert_eq!(summary["offload.run-id"], empty_run.to_string());
    assert_eq!(summary["offload.engine-id"], "test");
    assert_eq!(summary["offload.fencing-token"], "7");
    assert_eq!(m.properties()["offload.watermark"], u_empty.to_string());
    let previous = m.snapshot_by_id(snap.parent_snapshot_id().unwrap()).unwrap();
    assert_eq!(
        previous.summary().additional_properties["offload.window.after"],
        u1.to_string()
    );
    assert_eq!(m.properties()["write.parquet.compression-codec"], "zstd");
    // Files: one directory per day, named <run>-<attempt>-<task>-<n>.parquet.
    let files = parquet_files(&b.warehouse());
    let days: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        days.into_iter().collect::<Vec<_>>(),
        ["ts_day=2024-03-01", "ts_day=2024-03-02", "ts_day=2024-03-03"]
    );
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&r1.to_string()) || name.starts_with(&r2.to_string()),
            "{name}"
        );
    }
}

async fn failure_before_commit_leaves_table_unchanged_and_orphans_cleanable(b: Backend) {
    let table = b.table("lake.atomic").await;
    table.prepare(trades_schema()).await.unwrap();
    let w1 = [trades(T0, 1, 2000, 50_000_000)];
    let (u1, _) = commit_window(&table, Watermark::MIN, &w1).await;
    let committed_files = parquet_files(&b.warehouse());
    let before = table.load().await.unwrap();

    // A run stages, then the process "crashes" before committing.
    let crashed = RunId::new();
    let w2 = [trades(T0 + 2000 * 50_000_000, 2001, 3000, 50_000_000)];
    let staged = stage(&table, crashed, &w2).await;
    let orphans = staged.stats().files.len();
    assert!(orphans >= 2, "window 2 spans several days");
    drop(staged);

    // Nothing of it is visible.
    let after = table.load().await.unwrap();
    assert_eq!(after.metadata_location(), before.metadata_location());
    assert_eq!(committed_until(&table).await, u1);
    assert!(!table.was_committed(crashed).await.unwrap());
    assert_eq!(figures(&read_back(&table).await), figures(&w1));
    assert_eq!(
        parquet_files(&b.warehouse()).len(),
        committed_files.len() + orphans
    );

    // A failed commit (stale window) changes nothing either, and discard removes its files.
    let stale_run = RunId::new();
    let stale = stage(&table, stale_run, &w2).await;
    let err = stale
        .commit(&meta(Watermark::MIN, last_position(&w2[0]), stale_run, "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CommitConflict { found: Some(f), .. } if f == u1),
        "{err:?}"
    );
    // Committing a staging under another run's metadata is refused outright.
    let err = stale
        .commit(&meta(u1, last_position(&w2[0]), RunId::new(), "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(sink_error(&err), IcebergSinkError::RunMismatch { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        table.load().await.unwrap().metadata_location(),
        before.metadata_location()
    );
    stale.discard().await.unwrap();
    assert_eq!(
        parquet_files(&b.warehouse()).len(),
        committed_files.len() + orphans
    );

    // A writer aborted mid-way deletes what it wrote.
    let mut w = table.begin(RunId::new(), trades_schema()).await.unwrap();
    w.write(trades(T0, 9_000_000, 500, 1)).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(
        parquet_files(&b.warehouse()).len(),
        committed_files.len() + orphans
    );

    // The crash's orphans are young: the default grace period keeps them...
    assert_eq!(table.cleanup().await.unwrap(), 0);
    // ...and without a grace period they go, and only they.
    let removed = table.cleanup_orphans(Duration::ZERO).await.unwrap();
    assert_eq!(removed as usize, orphans);
    assert_eq!(parquet_files(&b.warehouse()), committed_files);
    assert_eq!(figures(&read_back(&table).await), figures(&w1));
    assert_eq!(table.cleanup_orphans(Duration::ZERO).await.unwrap(), 0);

    // Retrying the crashed window commits normally afterwards.
    let (u2, _) = commit_window(&table, u1, &w2).await;
    assert_eq!(committed_until(&table).await, u2);
    let all: Vec<RecordBatch> = w1.iter().chain(&w2).cloned().collect();
    assert_eq!(figures(&read_back(&table).await), figures(&all));
}

async fn expire_all_but_current(table: &IcebergTable) -> usize {
    let t = table.load().await.unwrap();
    let future = i64::MAX / 2;
    let tx = Transaction::new(&t);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(future)
        .retain_last(1)
        .apply(tx)
        .unwrap();
    let t = tx.commit(&**table.catalog()).await.unwrap();
    t.metadata().snapshots().len()
}

async fn watermark_survives_snapshot_expiry_and_foreign_snapshots(b: Backend) {
    let table = b.table("lake.expiry").await;
    table.prepare(trades_schema()).await.unwrap();
    let mut after = Watermark::MIN;
    let mut runs = Vec::new();
    let mut written = Vec::new();
    for i in 0..3 {
        let w = [trades(T0 + i * DAY_MICROS, 1 + i * 100, 100, 1_000_000)];
        let (u, r) = commit_window(&table, after, &w).await;
        after = u;
        runs.push(r);
        written.extend(w);
    }
    let w3 = after;

    // Expire everything but the current (ours): read from its summary.
    assert_eq!(expire_all_but_current(&table).await, 1);
    assert_eq!(committed_until(&table).await, w3);
    assert!(table.was_committed(runs[2]).await.unwrap());

    // Another engine commits on top (think compaction): not ours, walk to the parent.
    let t = table.load().await.unwrap();
    let tx = Transaction::new(&t);
    let tx = tx
        .fast_append()
        .set_snapshot_properties(HashMap::from([("engine".into(), "someone-else".into())]))
        .apply(tx)
        .unwrap();
    tx.commit(&**table.catalog()).await.unwrap();
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!(c.until, w3);
    assert_eq!(c.run_id, Some(runs[2]));

    // Expire again: only the foreign snapshot is left; the table property answers.
    assert_eq!(expire_all_but_current(&table).await, 1);
    let t = table.load().await.unwrap();
    assert!(
        !t.metadata()
            .current_snapshot()
            .unwrap()
            .summary()
            .additional_properties
            .contains_key("offload.window.until")
    );
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!(c.until, w3);
    assert_eq!(c.run_id, Some(runs[2]));
    assert!(table.was_committed(runs[2]).await.unwrap());
    // Read from the properties, the version is still main's snapshot id.
    assert_eq!(
        c.version.as_str(),
        t.metadata().current_snapshot().unwrap().snapshot_id().to_string(),
        "the version is main's snapshot id when the properties answer"
    );

    // The fence works from the property too.
    let next = [trades(T0 + 5 * DAY_MICROS, 1000, 50, 1)];
    let run = RunId::new();
    let staged = stage(&table, run, &next).await;
    let stale = staged
        .commit(&meta(runs_after(&written, 1), last_position(&next[0]), run, "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::CommitConflict { found: Some(f), .. } if f == w3),
        "{stale:?}"
    );
    staged
        .commit(&meta(w3, last_position(&next[0]), run, "t"))
        .await
        .unwrap();
    written.extend(next);
    assert_eq!(figures(&read_back(&table).await), figures(&written));
}

/// The `until` of window `i` (0-based) when each batch was its own window.
fn runs_after(batches: &[RecordBatch], i: usize) -> Watermark {
    last_position(&batches[i])
}

async fn racing_writers_exactly_one_commits_every_round(b: Backend) {
    // Independent sinks (own connection pools) on the same catalog.
    let a = b.table("lake.race").await;
    let c = b.table("lake.race").await;
    let (ra, rc) = tokio::join!(a.prepare(trades_schema()), c.prepare(trades_schema()));
    ra.unwrap();
    rc.unwrap();

    const ROUNDS: usize = 20;
    let mut after = Watermark::MIN;
    let mut written = Vec::new();
    let mut wins = [0usize; 2];
    for round in 0..ROUNDS {
        let batch = trades(
            T0 + round as i64 * 3_600_000_000,
            1 + round as i64 * 500,
            500,
            1_000_000,
        );
        let until = last_position(&batch);
        let (run_a, run_c) = (RunId::new(), RunId::new());
        let (sa, sc) = tokio::join!(
            stage(&a, run_a, std::slice::from_ref(&batch)),
            stage(&c, run_c, std::slice::from_ref(&batch))
        );
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let spawn_commit = |staged: Box<dyn Staged>, run: RunId| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let r = staged.commit(&meta(after, until, run, "racer")).await;
                (r, staged)
            })
        };
        let ja = spawn_commit(sa, run_a);
        let jc = spawn_commit(sc, run_c);
        let ((res_a, sa), (res_c, sc)) = (ja.await.unwrap(), jc.await.unwrap());
        let (winner, loser_sink, loser_staged, loser_err) = match (res_a, res_c) {
            (Ok(()), Err(e)) => (0, &c, sc, e),
            (Err(e), Ok(())) => (1, &a, sa, e),
            other => panic!("round {round}: expected exactly one commit, got {other:?}"),
        };
        wins[winner] += 1;
        assert!(
            matches!(&loser_err, Error::CommitConflict { expected, found: Some(f), .. } if *expected == after && *f == until),
            "round {round}: {loser_err:?}"
        );
        // The engine's next step for a conflict: the loser did not commit, its files go.
        let loser_run = loser_staged.stats().run_id;
        assert!(!loser_sink.was_committed(loser_run).await.unwrap());
        loser_staged.discard().await.unwrap();
        written.push(batch);
        after = until;
        assert_eq!(committed_until(&a).await, until);
    }
    eprintln!("{}: wins per sink {wins:?}", b.name);
    assert_eq!(figures(&read_back(&a).await), figures(&written));
    let t = a.load().await.unwrap();
    assert_eq!(t.metadata().snapshots().len(), ROUNDS);
}

async fn fence_holds_when_a_commit_lands_between_check_and_swap(b: Backend) {
    // Sink `slow` passes the fence, then stalls before the catalog's swap while
    // sink `fast` commits the same window. The swap must then fail and the
    // retry must hit the fence: exactly one commit.
    let fast = b.table("lake.toctou").await;
    let raw = b.sink().await.catalog().clone();
    let faulty = Arc::new(FaultyCatalog::new(raw));
    let slow = open(
        &IcebergSink::with_catalog(faulty.clone(), b.config()),
        "lake.toctou",
    );
    fast.prepare(trades_schema()).await.unwrap();
    let batch = trades(T0, 1, 300, 1000);
    let until = last_position(&batch);

    let run_slow = RunId::new();
    let staged_slow = stage(&slow, run_slow, std::slice::from_ref(&batch)).await;
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    faulty.arm(Fault::Gate {
        reached: reached_tx,
        release: release_rx,
    });
    let slow_commit = tokio::spawn(async move {
        let r = staged_slow
            .commit(&meta(Watermark::MIN, until, run_slow, "slow"))
            .await;
        (r, staged_slow)
    });
    reached_rx.await.expect("slow commit reached the catalog swap");

    let run_fast = RunId::new();
    let staged_fast = stage(&fast, run_fast, std::slice::from_ref(&batch)).await;
    staged_fast
        .commit(&meta(Watermark::MIN, until, run_fast, "fast"))
        .await
        .unwrap();
    release_tx.send(()).unwrap();

    let (slow_result, staged_slow) = slow_commit.await.unwrap();
    assert!(
        matches!(&slow_result, Err(Error::CommitConflict { found: Some(f), .. }) if *f == until),
        "{slow_result:?}"
    );
    assert!(!slow.was_committed(run_slow).await.unwrap());
    staged_slow.discard().await.unwrap();
    assert_eq!(figures(&read_back(&fast).await), figures(&[batch]));
    assert_eq!(fast.load().await.unwrap().metadata().snapshots().len(), 1);
}

fn with_column(schema: &Schema, field: Field) -> Arc<Schema> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| (**f).clone()).collect();
    fields.push(field);
    Arc::new(Schema::new(fields))
}

async fn schema_evolution_adds_nullable_columns_and_refuses_incompatible_ones(b: Backend) {
    let table = b.table("lake.evolve").await;
    let base = trades_schema();
    table.prepare(base.clone()).await.unwrap();
    let w1 = trades(T0, 1, 400, 1_000_000);
    let (u1, _) = commit_window(&table, Watermark::MIN, std::slice::from_ref(&w1)).await;
    let ids_before: Vec<(String, i32)> = {
        let t = table.load().await.unwrap();
        t.metadata()
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.id))
            .collect()
    };

    // A new nullable column is added; existing field ids stay.
    let evolved = with_column(&base, Field::new("venue", DataType::Utf8, true));
    table.prepare(evolved.clone()).await.unwrap();
    table.prepare(evolved.clone()).await.unwrap(); // idempotent
    let t = table.load().await.unwrap();
    let schema = t.metadata().current_schema();
    for (name, id) in &ids_before {
        assert_eq!(schema.field_by_name(name).unwrap().id, *id, "{name} kept its id");
    }
    let venue = schema.field_by_name("venue").unwrap();
    assert!(!venue.required);
    assert_eq!(*venue.field_type, Type::Primitive(PrimitiveType::String));

    let base2 = trades(T0 + 1000 * 1_000_000, 401, 300, 1_000_000);
    let venues = StringArray::from_iter_values((0..300).map(|i| format!("XNAS{}", i % 3)));
    let mut cols = base2.columns().to_vec();
    cols.push(Arc::new(venues));
    let w2 = RecordBatch::try_new(evolved.clone(), cols).unwrap();
    commit_window(&table, u1, std::slice::from_ref(&w2)).await;

    let back = read_back(&table).await;
    let (mut nulls, mut set) = (0, 0);
    for batch in &back {
        let v = batch.column(batch.schema().index_of("venue").unwrap());
        nulls += v.null_count();
        set += v.len() - v.null_count();
        if v.len() > v.null_count() {
            assert!(
                v.as_string::<i32>()
                    .iter()
                    .flatten()
                    .all(|s| s.starts_with("XNAS"))
            );
        }
    }
    assert_eq!((nulls, set), (400, 300), "old rows read the new column as null");

    // A new NOT NULL source column is added as optional (Iceberg cannot add
    // required columns without a default); writing it works.
    let with_fee = with_column(&evolved, Field::new("fee", DataType::Int64, false));
    table.prepare(with_fee).await.unwrap();
    let fee = table.load().await.unwrap();
    assert!(
        !fee.metadata()
            .current_schema()
            .field_by_name("fee")
            .unwrap()
            .required
    );

    // Incompatible changes: typed errors naming the column, table untouched.
    let location = table.load().await.unwrap().metadata_location().map(str::to_owned);
    let mut fields: Vec<Field> = evolved.fields().iter().map(|f| (**f).clone()).collect();
    fields[3] = Field::new("price", DataType::Utf8, false);
    let err = table
        .prepare(Arc::new(Schema::new(fields.clone())))
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        matches!(sink_error(&err), IcebergSinkError::IncompatibleSchema { column, .. } if column == "price"),
        "{err}"
    );
    fields[3] = Field::new("price", DataType::Decimal128(18, 8), true);
    let err = table
        .prepare(Arc::new(Schema::new(fields.clone())))
        .await
        .unwrap_err();
    assert!(
        matches!(sink_error(&err), IcebergSinkError::IncompatibleSchema { column, .. } if column == "price"),
        "nullable into required: {err}"
    );
    fields.remove(2); // drop the required `symbol`
    fields[2] = Field::new("price", DataType::Decimal128(18, 8), false);
    let err = table.prepare(Arc::new(Schema::new(fields))).await.unwrap_err();
    assert!(
        matches!(sink_error(&err), IcebergSinkError::IncompatibleSchema { column, .. } if column == "symbol"),
        "{err}"
    );
    let bad_type = with_column(
        &evolved,
        Field::new("dur", DataType::Duration(arrow_schema::TimeUnit::Second), true),
    );
    let err = table.prepare(bad_type).await.unwrap_err();
    assert!(
        matches!(sink_error(&err), IcebergSinkError::UnsupportedType { column, .. } if column == "dur"),
        "{err}"
    );
    assert_eq!(
        table.load().await.unwrap().metadata_location().map(str::to_owned),
        location
    );
}

async fn unknown_outcomes_are_resolved_from_table_metadata(b: Backend) {
    let raw = b.sink().await.catalog().clone();
    let faulty = Arc::new(FaultyCatalog::new(raw));
    let sink = IcebergSink::with_catalog(faulty.clone(), b.config().commit_timeout(Duration::from_secs(2)));
    let table = open(&sink, "lake.doubt");
    table.prepare(trades_schema()).await.unwrap();

    // 1. The commit lands but the reply is lost.
    let w1 = trades(T0, 1, 200, 1000);
    let u1 = last_position(&w1);
    let r1 = RunId::new();
    let s1 = stage(&table, r1, std::slice::from_ref(&w1)).await;
    faulty.arm(Fault::LoseReply);
    let err = s1.commit(&meta(Watermark::MIN, u1, r1, "t")).await.unwrap_err();
    assert!(
        matches!(err, Error::CommitOutcomeUnknown { run_id, .. } if run_id == r1),
        "{err:?}"
    );
    assert!(table.was_committed(r1).await.unwrap());
    // A blind retry of the same staging is fenced off.
    let again = s1.commit(&meta(Watermark::MIN, u1, r1, "t")).await.unwrap_err();
    assert!(
        matches!(again, Error::CommitConflict { found: Some(f), .. } if f == u1),
        "{again:?}"
    );
    // And abort refuses to delete files of a committed run.
    let refused = s1.discard().await.unwrap_err();
    assert!(
        matches!(
            sink_error(&refused),
            IcebergSinkError::DiscardOfCommittedRun { .. }
        ),
        "{refused}"
    );
    assert_eq!(
        figures(&read_back(&table).await),
        figures(std::slice::from_ref(&w1))
    );

    // 2. The connection fails before anything is applied: also in doubt from
    //    where the sink stands, resolved as "not committed", then retried.
    let w2 = trades(T0 + 200 * 1000, 201, 200, 1000);
    let u2 = last_position(&w2);
    let r2 = RunId::new();
    let s2 = stage(&table, r2, std::slice::from_ref(&w2)).await;
    faulty.arm(Fault::FailBeforeSend);
    let err = s2.commit(&meta(u1, u2, r2, "t")).await.unwrap_err();
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(!table.was_committed(r2).await.unwrap());
    s2.commit(&meta(u1, u2, r2, "t")).await.unwrap();

    // 3. The catalog applies the commit and then never answers: timeout, in doubt.
    let w3 = trades(T0 + 400 * 1000, 401, 200, 1000);
    let u3 = last_position(&w3);
    let r3 = RunId::new();
    let s3 = stage(&table, r3, std::slice::from_ref(&w3)).await;
    faulty.arm(Fault::HangAfterApply);
    let err = s3.commit(&meta(u2, u3, r3, "t")).await.unwrap_err();
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(table.was_committed(r3).await.unwrap());
    assert_eq!(committed_until(&table).await, u3);

    assert_eq!(figures(&read_back(&table).await), figures(&[w1, w2, w3]));
}

async fn engine_end_to_end_exactly_once(b: Backend) {
    use std::time::UNIX_EPOCH;

    use offload_core::memory::{MemorySource, MemoryStore};
    use offload_core::{ManualClock, Offloader, TableConfig};

    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let source = Arc::new(MemorySource::new(clock.clone()));
    let sink = Arc::new(b.sink().await);
    // Each round is one window of 11 h across day partitions: unbounded.
    let table = TableConfig::builder("engine_trades")
        .sink_table("lake.engine_trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::from_secs(60))
        .unbounded_window()
        .build()
        .unwrap();
    let base = 1_700_000_000_000_000i64;
    let mut expected = Vec::new();
    let engine = Offloader::builder(
        source.clone(),
        sink.clone(),
        Arc::new(MemoryStore::new(clock.clone())),
    )
    .clock(Arc::new(clock.clone()))
    .build()
    .unwrap();
    for round in 0..3i64 {
        let rows: Vec<(i64, u64, i64)> = (0..1000)
            .map(|i| {
                (
                    base + round * DAY_MICROS / 2 + i * 40_000_000,
                    (round * 1000 + i) as u64,
                    i,
                )
            })
            .collect();
        source.insert("engine_trades", &rows);
        expected.extend(rows);
        let run = engine.run_once(&table).await.unwrap();
        assert_eq!(run.rows, 1000, "round {round}");
    }
    // The store is lost (think: restored from an old backup). A new engine
    // rolls it forward from the sink instead of writing anything twice.
    let engine2 = Offloader::builder(
        source.clone(),
        sink.clone(),
        Arc::new(MemoryStore::new(clock.clone())),
    )
    .clock(Arc::new(clock.clone()))
    .build()
    .unwrap();
    let run = engine2.run_once(&table).await.unwrap();
    assert!(run.rolled_forward);
    assert_eq!(run.rows, 0);

    let mut got: Vec<(i64, u64, i64)> = Vec::new();
    for batch in read_back(&sink.open_table(&table).unwrap()).await {
        let col = |n: &str| batch.column(batch.schema().index_of(n).unwrap()).clone();
        let ts = col("ts");
        let seq = col("seq");
        let value = col("value");
        let ts = ts.as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        // UInt64 sequences are stored as decimal(20,0).
        let seq = seq.as_primitive::<arrow_array::types::Decimal128Type>();
        let value = value.as_primitive::<arrow_array::types::Int64Type>();
        for i in 0..batch.num_rows() {
            got.push((ts.value(i), seq.value(i) as u64, value.value(i)));
        }
    }
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected);
}

async fn partition_options_shape_new_tables(b: Backend) {
    use offload_sink_iceberg::{IcebergTableOptions, PartitionField, Transform as T};

    let sink = b.sink().await;
    let config = |name: &str, opts: IcebergTableOptions| {
        offload_core::TableConfig::builder(name.replace('.', "_"))
            .sink_table(name)
            .timestamp_column("ts")
            .sequence_column("seq")
            .option(opts)
            .build()
            .unwrap()
    };
    let two = sink
        .open_table(&config(
            "lake.by_hour_and_symbol",
            IcebergTableOptions::new()
                .partition_by(PartitionField::new("ts", T::Hour))
                .partition_by(PartitionField::new("symbol", T::Bucket(4))),
        ))
        .unwrap();
    two.prepare(trades_schema()).await.unwrap();
    let w = [trades(T0, 1, 600, 30_000_000)];
    commit_window(&two, Watermark::MIN, &w).await;
    let t = two.load().await.unwrap();
    let fields: Vec<(String, Transform)> = t
        .metadata()
        .default_partition_spec()
        .fields()
        .iter()
        .map(|f| (f.name.clone(), f.transform))
        .collect();
    assert_eq!(
        fields,
        [
            ("ts_hour".to_owned(), Transform::Hour),
            ("symbol_bucket".to_owned(), Transform::Bucket(4))
        ]
    );
    assert_eq!(figures(&read_back(&two).await), figures(&w));

    let flat = sink
        .open_table(&config("lake.flat", IcebergTableOptions::new().unpartitioned()))
        .unwrap();
    flat.prepare(trades_schema()).await.unwrap();
    let t = flat.load().await.unwrap();
    assert!(t.metadata().default_partition_spec().is_unpartitioned());

    // Checked at open: nothing is created for a bad option.
    let bad = config(
        "lake.bad",
        IcebergTableOptions::new().partition_by(PartitionField::new("seq", T::Truncate(0))),
    );
    assert!(matches!(
        sink.open_table(&bad),
        Err(IcebergSinkError::Config {
            field: "partitioning",
            ..
        })
    ));
    // A column the schema lacks is refused by prepare, naming it.
    let missing = sink
        .open_table(&config(
            "lake.missing",
            IcebergTableOptions::new().partition_by(PartitionField::new("nope", T::Identity)),
        ))
        .unwrap();
    let err = missing.prepare(trades_schema()).await.unwrap_err();
    assert!(
        matches!(sink_error(&err), IcebergSinkError::MissingColumn { column, .. } if column == "nope"),
        "{err}"
    );
}

/// File names must be unique per staging attempt without any per-run state:
/// two stagings of the same run, on one handle or on two, never collide.
async fn stagings_of_one_run_never_share_a_file_name(b: Backend) {
    let sink = b.sink().await;
    let table = open(&sink, "lake.attempts");
    table.prepare(trades_schema()).await.unwrap();
    let run = RunId::new();
    let w = [trades(T0, 1, 900, 300_000_000)]; // spans several days: several files
    let first = stage(&table, run, &w).await;
    let second = stage(&table, run, &w).await;
    let other_handle = stage(&open(&sink, "lake.attempts"), run, &w).await;
    let names =
        |s: &dyn Staged| -> std::collections::BTreeSet<String> { s.stats().files.iter().cloned().collect() };
    let (a, c, d) = (names(&*first), names(&*second), names(&*other_handle));
    assert!(a.len() >= 2, "{a:?}");
    assert!(
        a.is_disjoint(&c) && a.is_disjoint(&d) && c.is_disjoint(&d),
        "{a:?} {c:?} {d:?}"
    );
    for f in a.iter().chain(&c).chain(&d) {
        let name = f.rsplit('/').next().unwrap();
        assert!(name.starts_with(&run.to_string()), "{name}");
    }
    // Discarding two attempts leaves the third intact and committable.
    first.discard().await.unwrap();
    other_handle.discard().await.unwrap();
    assert_eq!(parquet_files(&b.warehouse()).len(), c.len());
    second
        .commit(&meta(Watermark::MIN, last_position(&w[0]), run, "t"))
        .await
        .unwrap();
    assert_eq!(figures(&read_back(&table).await), figures(&w));
}

/// Two writers evolve the same table at once: the one that loses is refused
/// with a retryable error (the Retry layer around `prepare` retries it), and
/// its next attempt plans against the new schema.
async fn a_concurrent_schema_change_is_a_retryable_refusal(b: Backend) {
    let fast = b.table("lake.evolve_race").await;
    let raw = b.sink().await.catalog().clone();
    let faulty = Arc::new(FaultyCatalog::new(raw));
    let slow = open(
        &IcebergSink::with_catalog(faulty.clone(), b.config()),
        "lake.evolve_race",
    );
    fast.prepare(trades_schema()).await.unwrap();
    let evolved = with_column(&trades_schema(), Field::new("venue", DataType::Utf8, true));
    let both = with_column(&evolved, Field::new("fee", DataType::Int64, true));

    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    faulty.arm(Fault::Gate {
        reached: reached_tx,
        release: release_rx,
    });
    let slow_prepare = {
        let (slow, both) = (slow.clone(), both.clone());
        tokio::spawn(async move { slow.prepare(both).await })
    };
    reached_rx.await.expect("slow schema change reached the catalog");
    fast.prepare(evolved.clone()).await.unwrap();
    release_tx.send(()).unwrap();

    let err = slow_prepare.await.unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(sink_error(&err), IcebergSinkError::ConcurrentSchemaChange { .. }),
        "{err}"
    );
    // What the Retry layer does: the same call again.
    slow.prepare(both.clone()).await.unwrap();
    let names = |t: iceberg::table::Table| -> Vec<String> {
        let schema = t.metadata().current_schema();
        schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect()
    };
    let got = names(fast.load().await.unwrap());
    assert_eq!(got.iter().filter(|n| *n == "venue").count(), 1, "{got:?}");
    assert!(got.iter().any(|n| n == "fee"), "{got:?}");

    // The same race behind core's Retry layer: `prepare` just succeeds.
    use offload_core::layer::{self, Retry};
    let retried = layer::stack(IcebergSink::with_catalog(faulty.clone(), b.config()))
        .with(Retry::new(
            offload_core::RetryPolicy::default().initial_backoff(Duration::from_millis(10)),
        ))
        .into_sink()
        .open(&table_config("lake.evolve_race"))
        .await
        .unwrap();
    let with_side = with_column(&both, Field::new("side", DataType::Utf8, true));
    let with_side_and_id = with_column(&with_side, Field::new("trade_id", DataType::Int64, true));
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    faulty.arm(Fault::Gate {
        reached: reached_tx,
        release: release_rx,
    });
    let layered_prepare = tokio::spawn(async move { retried.prepare(with_side_and_id).await });
    reached_rx
        .await
        .expect("layered schema change reached the catalog");
    fast.prepare(with_side).await.unwrap();
    release_tx.send(()).unwrap();
    layered_prepare.await.unwrap().unwrap();
    let got = names(fast.load().await.unwrap());
    assert_eq!(got.iter().filter(|n| *n == "side").count(), 1, "{got:?}");
    assert!(got.iter().any(|n| n == "trade_id"), "{got:?}");
}

/// The encoder tasks block on the caller's runtime handle; that must also work
/// on a current-thread runtime (the caller's `block_on` drives it meanwhile).
#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    let b = Backend::sqlite();
    let sink = IcebergSink::connect(b.config().writer_tasks(2)).await.unwrap();
    let table = open(&sink, "lake.single_thread");
    table.prepare(trades_schema()).await.unwrap();
    let w = [
        trades(T0, 1, 3000, 100_000_000),
        trades(T0 + 3000 * 100_000_000, 3001, 500, 1),
    ];
    let (u, _) = commit_window(&table, Watermark::MIN, &w).await;
    assert_eq!(committed_until(&table).await, u);
    assert_eq!(figures(&read_back(&table).await), figures(&w));
}
