//! Compaction end to end through `IcebergTable::maintain_with` on a real
//! SQLite catalog and a local warehouse: a table of many small windows is
//! compacted partition by partition into sorted files near the target; every
//! row (all columns) reads back identical, the committed window is untouched
//! and the partition holding the watermark is left alone.
#![cfg(feature = "sqlite")]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow_array::{RecordBatch, UInt32Array};
use common::*;
use futures::TryStreamExt;
use iceberg::spec::Operation;
use offload_core::{SinkTable, sequences_u64, timestamps_micros};
use offload_sink_iceberg::{IcebergTable, MaintenanceConfig, Step};

const MS: i64 = 1_000;
const HOUR: i64 = 3_600_000 * MS;
const TARGET: u64 = 64 * 1024;

/// `(partition directory, files, bytes)` of main's live data files.
async fn live_files(table: &IcebergTable) -> BTreeMap<String, (usize, u64)> {
    let t = table.load().await.unwrap();
    let tasks: Vec<_> = t
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for task in tasks {
        let dir = task.data_file_path.rsplit('/').nth(1).unwrap().to_owned();
        let e = out.entry(dir).or_insert((0, 0));
        e.0 += 1;
        e.1 += task.file_size_in_bytes;
    }
    out
}

fn keys(batches: &[RecordBatch]) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    for b in batches {
        let ts = timestamps_micros(b.column_by_name("ts").unwrap().as_ref()).unwrap();
        let seq = sequences_u64(b.column_by_name("seq").unwrap().as_ref()).unwrap();
        out.extend(ts.into_iter().zip(seq));
    }
    out
}

/// All rows as one batch sorted by `(ts, seq)` (unique here).
fn sorted(batches: &[RecordBatch]) -> RecordBatch {
    let whole = arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap();
    let k = keys(std::slice::from_ref(&whole));
    let mut order: Vec<u32> = (0..k.len() as u32).collect();
    order.sort_by_key(|i| k[*i as usize]);
    arrow_select::take::take_record_batch(&whole, &UInt32Array::from(order)).unwrap()
}

fn assert_same_rows(a: &RecordBatch, b: &RecordBatch) {
    assert_eq!(a.num_rows(), b.num_rows());
    assert_eq!(a.num_columns(), b.num_columns());
    for i in 0..a.num_columns() {
        assert_eq!(
            a.column(i).to_data(),
            b.column(i).to_data(),
            "column {}",
            a.schema().field(i).name()
        );
    }
}

/// Day 0 and day 1: 12 hourly windows of 300 rows each, plus (day 0) a
/// late repair-like window overlapping the others; day 2: 4 windows, the
/// watermark's day.
async fn many_small_windows(table: &IcebergTable) {
    table.prepare(trades_schema()).await.unwrap();
    let mut after = offload_core::Watermark::MIN;
    let mut seq = 1;
    for (day, windows) in [(0, 12), (1, 12), (2, 4)] {
        for w in 0..windows {
            let batch = trades(T0 + day * DAY_MICROS + w * HOUR, seq, 300, 7 * MS);
            seq += 300;
            after = commit_window(table, after, std::slice::from_ref(&batch)).await.0;
            if day == 0 && w == 6 {
                // Odd microseconds inside windows 0..5: overlapping inputs.
                let late = trades(T0 + 1, seq, 300, HOUR / 50 + 1);
                seq += 300;
                let run = offload_core::RunId::new();
                let until = offload_core::Watermark::new(after.timestamp_micros(), after.sequence() + 1);
                stage(table, run, std::slice::from_ref(&late))
                    .await
                    .commit(&meta(after, until, run, "test"))
                    .await
                    .unwrap();
                after = until;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_compacts_closed_partitions_into_sorted_files_with_the_same_rows() {
    compacts_closed_partitions(Backend::sqlite()).await;
}

/// The same on PostgreSQL (fails when the server is unreachable).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_compacts_closed_partitions_on_postgres() {
    compacts_closed_partitions(Backend::postgres().await).await;
}

async fn compacts_closed_partitions(b: Backend) {
    let table = b.table("lake.compact").await;
    many_small_windows(&table).await;
    let before_files = live_files(&table).await;
    assert_eq!(
        before_files.values().map(|v| v.0).collect::<Vec<_>>(),
        vec![13, 12, 4],
        "{before_files:?}"
    );
    let before_rows = read_back(&table).await;
    let committed = table.committed().await.unwrap().unwrap();

    let steps = Arc::new(Mutex::new(Vec::new()));
    let seen = steps.clone();
    let cfg = MaintenanceConfig::default()
        .target_file_size(TARGET)
        .min_input_files(5)
        .on_step(Arc::new(move |s| seen.lock().unwrap().push(s)));
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.partitions_compacted, 2, "{report:?}");
    assert_eq!(report.files_rewritten, 25);
    assert_eq!(report.rows_rewritten, 25 * 300);
    let closed_bytes: u64 = before_files.values().take(2).map(|v| v.1).sum();
    assert_eq!(report.bytes_read, closed_bytes);
    assert!(
        report.files_written >= 2 && report.files_written < 25,
        "{report:?}"
    );
    assert!(report.commits >= 2, "{report:?}");
    assert_eq!(
        steps
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == Step::OutputsWritten)
            .count(),
        2
    );

    let after_files = live_files(&table).await;
    let dirs: Vec<_> = after_files.keys().cloned().collect();
    assert_eq!(dirs, before_files.keys().cloned().collect::<Vec<_>>());
    for (dir, (files, bytes)) in after_files.iter().take(2) {
        let limit = bytes.div_ceil(TARGET) as usize + 1;
        assert!(*files <= limit, "{dir}: {files} files for {bytes} bytes");
    }
    assert_eq!(
        after_files.values().nth(2),
        before_files.values().nth(2),
        "the watermark's day is untouched"
    );
    let t = table.load().await.unwrap();
    assert_eq!(
        t.metadata().current_snapshot().unwrap().summary().operation,
        Operation::Replace
    );

    // Same rows, every column; each file sorted by (ts, seq).
    let after_rows = read_back(&table).await;
    assert_same_rows(&sorted(&before_rows), &sorted(&after_rows));
    for task in t
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
    {
        let stream = t
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter([Ok(task)])))
            .unwrap()
            .stream();
        let batches: Vec<_> = stream.try_collect().await.unwrap();
        let k = keys(&batches);
        assert!(k.windows(2).all(|w| w[0] < w[1]), "a file is not sorted");
    }
    // The committed window reads the same.
    assert_eq!(table.committed().await.unwrap().unwrap(), committed);

    // An independent reader (on the SQLite catalog file) agrees: every key,
    // and the compacted file count.
    if b.name == "sqlite" {
        let (py_keys, py_files) = pyiceberg_keys_and_files(&b, "lake.compact");
        let mut want = keys(&before_rows);
        want.sort_unstable();
        assert_eq!(py_keys, want, "pyiceberg reads the same rows");
        assert_eq!(py_files, after_files.values().map(|v| v.0).sum::<usize>());
    }

    // Nothing left to compact: a second run rewrites nothing.
    let again = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(again.partitions_compacted, 0, "{again:?}");
    assert_eq!(live_files(&table).await, after_files);
}

/// pyiceberg's sorted `(ts, seq)` of every row and its number of live data files.
fn pyiceberg_keys_and_files(b: &Backend, table: &str) -> (Vec<(i64, u64)>, usize) {
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
cfg = json.loads(sys.argv[1])
cat = SqlCatalog(cfg["catalog"], uri=f"sqlite:///{cfg['db']}", warehouse=f"file://{cfg['warehouse']}")
t = cat.load_table(cfg["table"])
data = t.scan(selected_fields=("ts", "seq")).to_arrow()
rows = sorted(zip(pc.cast(data["ts"], pa.int64()).to_pylist(), data["seq"].to_pylist()))
files = len(list(t.scan().plan_files()))
print(json.dumps({"rows": rows, "files": files}))
"#;
    let cfg = serde_json::json!({
        "db": b.dir.path().join("catalog.db"),
        "warehouse": b.warehouse(),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "table": table,
    });
    let out = std::process::Command::new("timeout")
        .arg("300")
        .arg(offload_testkit::venv_python())
        .arg("-c")
        .arg(script)
        .arg(cfg.to_string())
        .output()
        .expect("run pyiceberg");
    assert!(
        out.status.success(),
        "pyiceberg failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        serde_json::from_value(report["rows"].clone()).unwrap(),
        report["files"].as_u64().unwrap() as usize,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_does_not_compact_without_enough_files_or_before_a_commit() {
    let b = Backend::sqlite();
    let table = b.table("lake.few").await;
    table.prepare(trades_schema()).await.unwrap();
    let cfg = MaintenanceConfig::default()
        .min_input_files(5)
        .target_file_size(TARGET);
    assert_eq!(table.maintain_with(&cfg).await.unwrap().partitions_compacted, 0);
    let mut after = offload_core::Watermark::MIN;
    for (day, w) in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)] {
        let batch = trades(
            T0 + day * DAY_MICROS + w * HOUR,
            1 + (day * 10 + w) * 100,
            100,
            MS,
        );
        after = commit_window(&table, after, std::slice::from_ref(&batch)).await.0;
    }
    let before = live_files(&table).await;
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(
        report.partitions_compacted, 0,
        "4 files < min_input_files: {report:?}"
    );
    assert_eq!(live_files(&table).await, before);
    let report = table
        .maintain_with(&cfg.clone().min_input_files(4))
        .await
        .unwrap();
    assert_eq!(report.partitions_compacted, 1, "{report:?}");
    assert_eq!(
        live_files(&table).await.values().map(|v| v.0).collect::<Vec<_>>(),
        vec![1, 1]
    );
}

/// A late-row repair lands in a partition while it is being compacted (after
/// the outputs are written, before the replace commit): the replace lands
/// on the new state (its removed files are all still live) and keeps the
/// repair's file, so no row is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_landing_during_compaction_is_kept() {
    use std::sync::mpsc;
    use std::time::Duration;

    use offload_core::{BucketGrid, RepairMetadata, RunId};

    let b = Backend::sqlite();
    let table = b.table("lake.race").await;
    many_small_windows(&table).await;
    let before_rows = read_back(&table).await;
    let committed = table.committed().await.unwrap().unwrap();

    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((reached_tx, go_rx))));
    let cfg = MaintenanceConfig::default()
        .target_file_size(TARGET)
        .min_input_files(5)
        .on_step(Arc::new(move |step| {
            if step == Step::OutputsWritten
                && let Some((reached, go)) = gate.lock().unwrap().take()
            {
                reached.send(()).unwrap();
                // Hand this worker's queue to another thread while it waits.
                tokio::task::block_in_place(|| go.recv().unwrap());
            }
        }));
    let maintained = {
        let table = table.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move { table.maintain_with(&cfg).await })
    };
    tokio::task::spawn_blocking(move || reached_rx.recv().unwrap())
        .await
        .unwrap();
    // Day 0 is being compacted: a late row for it is repaired meanwhile.
    let late = trades(T0 + 5 * MS, 1_000_000, 1, MS);
    let run = RunId::new();
    let grid = BucketGrid::covering(T0, committed.until, Duration::from_secs(3600)).unwrap();
    stage(&table, run, std::slice::from_ref(&late))
        .await
        .commit_repair(&RepairMetadata::new(
            committed.version.clone(),
            committed.until,
            run,
            "sweeper",
            7,
            vec![grid.bucket(0)],
            1,
        ))
        .await
        .unwrap();
    // Main now holds the windows and the repair; the compaction is paused.
    let want = read_back(&table).await;
    assert_eq!(figures(&want).count, figures(&before_rows).count + 1);
    go_tx.send(()).unwrap();
    let report = maintained.await.unwrap().unwrap();
    assert_eq!(report.partitions_compacted, 2, "{report:?}");

    assert_same_rows(&sorted(&want), &sorted(&read_back(&table).await));
    assert!(table.was_committed(run).await.unwrap());
    assert_eq!(table.committed().await.unwrap().unwrap().until, committed.until);
    // The repair's file is live next to day 0's compacted files.
    let day0 = live_files(&table).await.into_iter().next().unwrap();
    assert!(day0.1.0 >= 2, "{day0:?}");
}

/// The sweep's counts over compacted files (each spans a whole day, so every
/// one straddles bucket edges) come from their page index and still equal a
/// count of the positions a key scan reads, for grids whose edges fall inside
/// pages, on page edges and outside the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_counts_over_compacted_files_equal_the_positions() {
    let b = Backend::sqlite();
    let table = b.table("lake.counts").await;
    many_small_windows(&table).await;
    let cfg = MaintenanceConfig::default()
        .target_file_size(TARGET)
        .min_input_files(2);
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.partitions_compacted, 2, "{report:?}");
    let until = table.committed().await.unwrap().unwrap().until;
    for (start, width) in [
        (T0, HOUR),
        (T0, 7 * MS),
        (T0 + 3, 1_001 * MS),
        (T0 - DAY_MICROS, DAY_MICROS / 3),
        (T0 + HOUR / 2, 10 * 60_000 * MS),
    ] {
        let grid =
            offload_core::BucketGrid::covering(start, until, std::time::Duration::from_micros(width as u64))
                .unwrap();
        let counts = table.bucket_counts(&grid).await.unwrap();
        let expected = grid.histogram(table.positions(grid.span()).await.unwrap());
        assert_eq!(counts, expected, "grid from {start} by {width} µs");
        assert_eq!(counts.iter().sum::<u64>(), expected.iter().sum::<u64>());
    }
}

/// On a table that receives nothing more, one maintain compacts and then
/// expires everything below its replace snapshots: the replace records the
/// data version, so the append below it is not needed to read the committed
/// window, and the compacted inputs leave the disk at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_table_sheds_its_compacted_inputs_in_one_maintain() {
    let b = Backend::sqlite();
    let table = b.table("lake.idle").await;
    many_small_windows(&table).await;
    let before = table.committed().await.unwrap().unwrap();
    let cfg = MaintenanceConfig::default()
        .target_file_size(TARGET)
        .min_input_files(2)
        .snapshot_retention(std::time::Duration::ZERO)
        .keep_snapshots(1)
        .delete_grace(std::time::Duration::ZERO);
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.partitions_compacted, 2, "{report:?}");
    assert!(report.files_deleted >= report.files_rewritten, "{report:?}");
    assert_eq!(
        table.committed().await.unwrap().unwrap(),
        before,
        "window and data version read the same"
    );
    let t = table.load().await.unwrap();
    assert_eq!(
        t.metadata().snapshots().count(),
        1,
        "only main's replace snapshot is left"
    );
    let on_disk = parquet_files(&b.warehouse()).len();
    let live: usize = live_files(&table).await.values().map(|v| v.0).sum();
    assert_eq!(on_disk, live, "no compacted input left on disk");
}
