//! The late-row sweep's sink side against real SQL catalogs (SQLite and
//! PostgreSQL; the PostgreSQL variants fail when the server is unreachable):
//! positions read back exactly, bucket counts from manifests equal to the
//! counts of a full key scan, and repair commits fenced on main's snapshot.
#![cfg(all(feature = "sqlite", feature = "postgres"))] // every test runs on both SQL catalogs

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{RecordBatch, TimestampMicrosecondArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use common::faulty::{Fault, FaultyCatalog};
use common::*;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use offload_core::{
    BucketGrid, Error, RepairMetadata, RunId, SinkTable, SinkVersion, Staged, Watermark, Window,
};
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
    bucket_counts_from_manifests_equal_the_scan,
    positions_are_exact_for_u64_sequences_at_window_edges,
    repair_commit_is_fenced_on_main_and_keeps_the_watermark,
    repair_outcome_unknown_is_resolved_by_run_id,
    version_without_a_snapshot_is_none,
);

fn sink_error(e: &Error) -> &IcebergSinkError {
    match e {
        Error::Sink { source, .. } => source
            .downcast_ref::<IcebergSinkError>()
            .unwrap_or_else(|| panic!("not an IcebergSinkError: {e}")),
        other => panic!("expected a sink error, got {other:?}"),
    }
}

/// The positions of trades batches (ts µs, seq Int64).
fn positions_of(batches: &[RecordBatch]) -> Vec<Watermark> {
    let mut out = Vec::new();
    for b in batches {
        let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let seq = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push(Watermark::new(ts.value(i), seq.value(i) as u64));
        }
    }
    out.sort_unstable();
    out
}

async fn sorted_positions(table: &IcebergTable, window: Window) -> Vec<Watermark> {
    let mut p = table.positions(window).await.unwrap();
    p.sort_unstable();
    p
}

async fn version(table: &IcebergTable) -> SinkVersion {
    table.committed().await.unwrap().unwrap().version
}

/// Live data files of main's snapshot with their `ts` bounds (µs).
async fn data_files(table: &IcebergTable) -> Vec<(String, i64, i64)> {
    let t = table.load().await.unwrap();
    let ts_id = t.metadata().current_schema().field_by_name("ts").unwrap().id;
    let snapshot = t.metadata().current_snapshot().unwrap().clone();
    let list = t.manifest_list_reader(&snapshot).load().await.unwrap();
    let micros = |d: Option<&iceberg::spec::Datum>| match d.map(|d| d.literal()) {
        Some(iceberg::spec::PrimitiveLiteral::Long(v)) => *v,
        other => panic!("ts bound {other:?}"),
    };
    let mut out = Vec::new();
    for m in list.entries() {
        for e in m.load_manifest(t.file_io()).await.unwrap().entries() {
            if e.is_alive() {
                let f = e.data_file();
                out.push((
                    f.file_path().to_owned(),
                    micros(f.lower_bounds().get(&ts_id)),
                    micros(f.upper_bounds().get(&ts_id)),
                ));
            }
        }
    }
    out
}

const MS: i64 = 1000;

async fn bucket_counts_from_manifests_equal_the_scan(b: Backend) {
    let table = b.table("lake.buckets").await;
    table.prepare(trades_schema()).await.unwrap();
    // One file per window (a few rows, one day). Buckets of 10 ms from T0.
    let windows = [
        trades(T0, 1, 5, MS),                // 0..4 ms: inside bucket 0
        trades(T0 + 8 * MS, 6, 5, MS),       // 8..12 ms: straddles 0 | 1
        trades(T0 + 21 * MS, 11, 3, 3 * MS), // 21..27 ms: inside bucket 2
        trades(T0 + 30 * MS, 14, 4, 0),      // four rows at 30 ms: bucket 3
        trades(T0 + 35 * MS, 18, 3, MS),     // 35..37 ms: bucket 3
        trades(T0 + 39 * MS, 21, 3, MS),     // 39..41 ms: straddles 3 | 4
    ];
    let mut after = Watermark::MIN;
    for w in &windows {
        after = commit_window(&table, after, std::slice::from_ref(w)).await.0;
    }
    let watermark = after;
    let truth = positions_of(&windows);
    assert_eq!(data_files(&table).await.len(), windows.len(), "one file a window");

    let width = Duration::from_millis(10);
    let grids = [
        // The whole table.
        BucketGrid::covering(T0, watermark, width).unwrap(),
        // Starting in the middle (files below it are skipped).
        BucketGrid::covering(T0 + 20 * MS, watermark, width).unwrap(),
        // until below the committed watermark, inside the four equal timestamps.
        BucketGrid::covering(T0, Watermark::new(T0 + 30 * MS, 15), width).unwrap(),
        // until inside the straddling file 8..12 ms.
        BucketGrid::covering(T0, Watermark::new(T0 + 10 * MS, 7), width).unwrap(),
        // until just below a contained file's first row.
        BucketGrid::covering(T0, Watermark::new(T0 + 34 * MS, 0), width).unwrap(),
        // Wide buckets (every file inside one) and 1 µs buckets.
        BucketGrid::covering(T0 - DAY_MICROS, watermark, Duration::from_secs(3600)).unwrap(),
        BucketGrid::new(T0 + 29 * MS, 1, 1_001, Watermark::new(T0 + 30 * MS, 16)).unwrap(),
        // Entirely above the data.
        BucketGrid::covering(T0 + 50 * MS, Watermark::new(T0 + 70 * MS, 0), width).unwrap(),
    ];
    for grid in &grids {
        let expected = grid.histogram(truth.iter().copied());
        let counted = table.bucket_counts(grid).await.unwrap();
        assert_eq!(
            counted, expected,
            "bucket counts equal the written rows' histogram: {grid:?}"
        );
        let scanned = grid.histogram(table.positions(grid.span()).await.unwrap());
        assert_eq!(counted, scanned, "bucket counts equal the default: {grid:?}");
        for i in 0..grid.len().min(8) {
            let w = grid.bucket(i);
            let want: Vec<_> = truth.iter().copied().filter(|p| w.contains(*p)).collect();
            assert_eq!(
                sorted_positions(&table, w).await,
                want,
                "positions of bucket {i} of {grid:?}"
            );
        }
    }
    assert_eq!(
        table.bucket_counts(&grids[2]).await.unwrap(),
        vec![5 + 2, 3, 3, 2],
        "sub-grid clipped at (30 ms, 15)"
    );

    // The manifests really answer: with the files that lie inside one bucket
    // gone from disk, counts still come out (only straddling files are read),
    // while a scan of the span fails.
    let grid = grids[0];
    let expected = table.bucket_counts(&grid).await.unwrap();
    let bucket = |t: i64| (t - grid.start_micros()) / grid.width_micros();
    let mut removed = 0;
    for (path, lo, hi) in data_files(&table).await {
        if bucket(lo) == bucket(hi) && hi < watermark.timestamp_micros() {
            std::fs::remove_file(path.strip_prefix("file://").unwrap_or(&path)).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 4, "four files lie inside one bucket");
    assert_eq!(table.bucket_counts(&grid).await.unwrap(), expected);
    assert!(
        table.positions(grid.span()).await.is_err(),
        "a scan needs the removed files"
    );
}

fn u64_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seq", DataType::UInt64, false),
    ]))
}

fn u64_rows(rows: &[(i64, u64)]) -> RecordBatch {
    RecordBatch::try_new(
        u64_schema(),
        vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC"),
            ),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

async fn positions_are_exact_for_u64_sequences_at_window_edges(b: Backend) {
    let table = b.table("lake.u64").await;
    table.prepare(u64_schema()).await.unwrap();
    let max = u64::MAX;
    let rows = [
        (T0 - 1, 5),
        (T0, max - 2),
        (T0, max - 1),
        (T0, max),
        (T0 + 1, 0),
        (T0 + 1, 1 << 63),
    ];
    let until = Watermark::new(T0 + 1, 1 << 63);
    let run = RunId::new();
    let staged = stage(&table, run, &[u64_rows(&rows)]).await;
    staged
        .commit(&meta(Watermark::MIN, until, run, "t"))
        .await
        .unwrap();
    let all: Vec<Watermark> = rows.iter().map(|(t, s)| Watermark::new(*t, *s)).collect();
    let cases = [
        (Watermark::MIN, until),
        (Watermark::new(T0, max - 2), Watermark::new(T0 + 1, 0)),
        (Watermark::new(T0 - 1, max), Watermark::new(T0, max - 1)),
        (Watermark::MIN, Watermark::new(T0 - 1, 5)),
        (Watermark::new(T0, max), until),
        (Watermark::new(T0 - 1, 5), Watermark::new(T0, max - 2)),
    ];
    for (after, until) in cases {
        let w = Window::new(after, until).unwrap();
        let want: Vec<_> = all.iter().copied().filter(|p| w.contains(*p)).collect();
        assert_eq!(sorted_positions(&table, w).await, want, "window {w:?}");
    }
    assert_eq!(
        sorted_positions(&table, Window::new(Watermark::MIN, until).unwrap()).await,
        all,
        "u64 sequences up to 2^64-1 come back exactly from decimal(20,0)"
    );

    // A row held twice (here: repaired although present) is listed twice.
    let base = version(&table).await;
    let dup = RunId::new();
    let staged = stage(&table, dup, &[u64_rows(&[(T0, max)])]).await;
    let grid = BucketGrid::covering(T0 - 10, until, Duration::from_micros(1)).unwrap();
    staged
        .commit_repair(&RepairMetadata::new(
            base,
            until,
            dup,
            "t",
            1,
            vec![grid.bucket(10)],
            1,
        ))
        .await
        .unwrap();
    let mut want = all.clone();
    want.push(Watermark::new(T0, max));
    want.sort_unstable();
    let span = Window::new(Watermark::MIN, until).unwrap();
    assert_eq!(sorted_positions(&table, span).await, want);
    let counts = table.bucket_counts(&grid).await.unwrap();
    assert_eq!(counts, grid.histogram(want.iter().copied()));
    assert_eq!(counts[10], 4, "three rows at T0 and the duplicate");
}

fn repair_meta(
    base: &SinkVersion,
    watermark: Watermark,
    run: RunId,
    buckets: &[Window],
    rows: u64,
) -> RepairMetadata {
    RepairMetadata::new(base.clone(), watermark, run, "sweeper", 9, buckets.to_vec(), rows)
}

async fn repair_commit_is_fenced_on_main_and_keeps_the_watermark(b: Backend) {
    use offload_sink_iceberg::*;

    let table = b.table("lake.repair").await;
    table.prepare(trades_schema()).await.unwrap();
    let w1 = trades(T0, 1, 10, 10 * MS); // 0..90 ms
    let (u1, r1) = commit_window(&table, Watermark::MIN, std::slice::from_ref(&w1)).await;
    let v1 = version(&table).await;
    let t = table.load().await.unwrap();
    assert_eq!(
        v1.as_str(),
        t.metadata().current_snapshot().unwrap().snapshot_id().to_string(),
        "the version is main's snapshot id"
    );
    // Late rows at 5, 15, 25 ms: buckets 0, 1, 2 of 10 ms.
    let late = trades(T0 + 5 * MS, 100, 3, 10 * MS);
    let grid = BucketGrid::covering(T0, u1, Duration::from_millis(10)).unwrap();
    let buckets = [grid.bucket(0), grid.bucket(1), grid.bucket(2)];
    let before = figures(&read_back(&table).await);

    // A stale base is refused and changes nothing.
    let rs = RunId::new();
    let stale = stage(&table, rs, std::slice::from_ref(&late)).await;
    let bad = repair_meta(&SinkVersion::new("1234"), u1, rs, &buckets, 3);
    let err = stale.commit_repair(&bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::RepairConflict { base, found: Some(f), .. } if *base == bad.base && *f == v1),
        "{err:?}"
    );
    assert_eq!(err.kind(), "repair_conflict");
    assert!(!err.is_retryable());
    assert_eq!(version(&table).await, v1, "nothing committed");
    assert!(!table.was_committed(rs).await.unwrap());
    assert_eq!(figures(&read_back(&table).await), before);
    stale.discard().await.unwrap();

    // The right base with another watermark than it records: typed refusal.
    let rw = RunId::new();
    let wrong = stage(&table, rw, std::slice::from_ref(&late)).await;
    let claim = Watermark::new(u1.timestamp_micros(), u1.sequence() + 1);
    let err = wrong
        .commit_repair(&repair_meta(&v1, claim, rw, &buckets, 3))
        .await
        .unwrap_err();
    assert!(
        matches!(sink_error(&err), IcebergSinkError::RepairWatermarkMismatch { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(version(&table).await, v1);
    wrong.discard().await.unwrap();

    // The repair lands: rows added, watermark unchanged, version moved.
    let run = RunId::new();
    let staged = stage(&table, run, std::slice::from_ref(&late)).await;
    let m = repair_meta(&v1, u1, run, &buckets, 3);
    staged.commit_repair(&m).await.unwrap();
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!(c.until, u1, "the watermark is unchanged");
    assert_ne!(c.version, v1, "the version changes with a repair");
    assert_eq!(c.run_id, Some(r1), "the window's run still names the watermark");
    assert!(table.was_committed(run).await.unwrap());
    let t = table.load().await.unwrap();
    let snap = t.metadata().current_snapshot().unwrap();
    assert_eq!(c.version.as_str(), snap.snapshot_id().to_string());
    let summary = &snap.summary().additional_properties;
    let get = |k: &str| summary.get(k).map(String::as_str);
    assert_eq!(get(SUMMARY_WINDOW_UNTIL), Some(u1.to_string().as_str()));
    assert_eq!(get(KEY_RUN_ID), Some(run.to_string().as_str()));
    assert_eq!(get(KEY_ENGINE_ID), Some("sweeper"));
    assert_eq!(get(KEY_FENCING_TOKEN), Some("9"));
    assert_eq!(get(SUMMARY_REPAIR_BASE), Some(v1.as_str()));
    assert_eq!(get(SUMMARY_REPAIR_ROWS), Some("3"));
    assert_eq!(get(SUMMARY_REPAIR_BUCKETS), Some("3"));
    assert_eq!(
        get(SUMMARY_REPAIR_FIRST),
        Some(buckets[0].after().to_string().as_str())
    );
    assert_eq!(
        get(SUMMARY_REPAIR_LAST),
        Some(buckets[2].until().to_string().as_str())
    );
    assert_eq!(get(SUMMARY_WINDOW_AFTER), None, "a repair adds no window");
    assert_eq!(
        t.metadata().properties().get(PROPERTY_WATERMARK),
        Some(&u1.to_string())
    );
    assert_eq!(
        t.metadata().properties().get(KEY_RUN_ID),
        Some(&r1.to_string()),
        "the properties keep the window's identity"
    );
    let both = [w1.clone(), late.clone()];
    assert_eq!(figures(&read_back(&table).await), figures(&both));
    let span = Window::new(Watermark::MIN, u1).unwrap();
    assert_eq!(sorted_positions(&table, span).await, positions_of(&both));
    assert_eq!(
        table.bucket_counts(&grid).await.unwrap(),
        grid.histogram(positions_of(&both))
    );

    // Replaying the repair on its (now old) base is refused: nothing twice.
    let again = staged.commit_repair(&m).await.unwrap_err();
    assert!(
        matches!(&again, Error::RepairConflict { found: Some(f), .. } if *f == c.version),
        "{again:?}"
    );
    assert_eq!(figures(&read_back(&table).await), figures(&both));
    let refused = staged.discard().await.unwrap_err();
    assert!(
        matches!(
            sink_error(&refused),
            IcebergSinkError::DiscardOfCommittedRun { .. }
        ),
        "{refused}"
    );

    // Windows go on from the unchanged watermark; a stale one is fenced off.
    let w2 = trades(T0 + 100 * MS, 11, 5, MS);
    let r = RunId::new();
    let s = stage(&table, r, std::slice::from_ref(&w2)).await;
    let err = s
        .commit(&meta(Watermark::MIN, last_position(&w2), r, "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CommitConflict { found: Some(f), .. } if f == u1),
        "{err:?}"
    );
    s.commit(&meta(u1, last_position(&w2), r, "t")).await.unwrap();
    let c2 = table.committed().await.unwrap().unwrap();
    assert_eq!((c2.until, c2.run_id), (last_position(&w2), Some(r)));
    assert_ne!(c2.version, c.version);

    // A repair computed before that window is refused now.
    let late2 = trades(T0 + 45 * MS, 200, 1, 1);
    let r3 = RunId::new();
    let s3 = stage(&table, r3, std::slice::from_ref(&late2)).await;
    let err = s3
        .commit_repair(&repair_meta(&c.version, u1, r3, &[grid.bucket(4)], 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RepairConflict { found: Some(f), .. } if *f == c2.version),
        "{err:?}"
    );
    assert_eq!(figures(&read_back(&table).await), figures(&[w1, late, w2]));
}

async fn repair_outcome_unknown_is_resolved_by_run_id(b: Backend) {
    let raw = b.sink().await.catalog().clone();
    let faulty = Arc::new(FaultyCatalog::new(raw));
    let sink = IcebergSink::with_catalog(faulty.clone(), b.config().commit_timeout(Duration::from_secs(5)));
    let table = open(&sink, "lake.repair_doubt");
    table.prepare(trades_schema()).await.unwrap();
    let w1 = trades(T0, 1, 10, 10 * MS);
    let (u1, _) = commit_window(&table, Watermark::MIN, std::slice::from_ref(&w1)).await;
    let v1 = version(&table).await;
    let grid = BucketGrid::covering(T0, u1, Duration::from_millis(10)).unwrap();

    // The repair lands but the reply is lost.
    let late = trades(T0 + 5 * MS, 100, 2, 10 * MS);
    let run = RunId::new();
    let staged = stage(&table, run, std::slice::from_ref(&late)).await;
    let m = repair_meta(&v1, u1, run, &[grid.bucket(0), grid.bucket(1)], 2);
    faulty.arm(Fault::LoseReply);
    let err = staged.commit_repair(&m).await.unwrap_err();
    assert!(
        matches!(err, Error::CommitOutcomeUnknown { run_id, .. } if run_id == run),
        "{err:?}"
    );
    assert!(table.was_committed(run).await.unwrap());
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!(c.until, u1);
    assert_ne!(c.version, v1);
    let again = staged.commit_repair(&m).await.unwrap_err();
    assert!(matches!(again, Error::RepairConflict { .. }), "{again:?}");

    // The connection fails before anything is applied: in doubt, resolved as
    // not committed, and the same repair then lands.
    let late2 = trades(T0 + 35 * MS, 300, 1, 1);
    let run2 = RunId::new();
    let s2 = stage(&table, run2, std::slice::from_ref(&late2)).await;
    let m2 = repair_meta(&c.version, u1, run2, &[grid.bucket(3)], 1);
    faulty.arm(Fault::FailBeforeSend);
    let err = s2.commit_repair(&m2).await.unwrap_err();
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(!table.was_committed(run2).await.unwrap());
    assert_eq!(version(&table).await, c.version);
    s2.commit_repair(&m2).await.unwrap();
    assert!(table.was_committed(run2).await.unwrap());
    assert_eq!(figures(&read_back(&table).await), figures(&[w1, late, late2]));
}

async fn version_without_a_snapshot_is_none(b: Backend) {
    let table = b.table("lake.bare").await;
    table.prepare(trades_schema()).await.unwrap();
    // A watermark in the properties and no snapshot at all (written by a tool).
    let wm = Watermark::new(T0 + 100 * MS, 50);
    let t = table.load().await.unwrap();
    let tx = Transaction::new(&t);
    let tx = tx
        .update_table_properties()
        .set(offload_sink_iceberg::PROPERTY_WATERMARK.into(), wm.to_string())
        .apply(tx)
        .unwrap();
    tx.commit(&**table.catalog()).await.unwrap();
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!((c.until, c.version.as_str()), (wm, "none"));
    assert_eq!(
        table
            .bucket_counts(&BucketGrid::covering(T0, wm, Duration::from_millis(10)).unwrap())
            .await
            .unwrap(),
        vec![0; 11]
    );

    // A repair fenced on "none" lands while main has no snapshot.
    let late = trades(T0 + 5 * MS, 1, 3, MS);
    let run = RunId::new();
    let staged = stage(&table, run, std::slice::from_ref(&late)).await;
    let grid = BucketGrid::covering(T0, wm, Duration::from_millis(10)).unwrap();
    staged
        .commit_repair(&repair_meta(&c.version, wm, run, &[grid.bucket(0)], 3))
        .await
        .unwrap();
    let c2 = table.committed().await.unwrap().unwrap();
    assert_eq!(c2.until, wm);
    assert_ne!(c2.version.as_str(), "none");
    let counts = table.bucket_counts(&grid).await.unwrap();
    assert_eq!(counts[0], 3);
    assert_eq!(counts.iter().sum::<u64>(), 3);
}
