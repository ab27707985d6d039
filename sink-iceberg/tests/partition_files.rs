//! The staging writer's partition files: a partition's file is closed once
//! the input has left it (ordered input crossing midnight: one file per
//! day), the open files per task stay within the cap for interleaved input
//! (a partition that comes back gets another file), and independent readers
//! (pyiceberg, ClickHouse's `icebergLocal`) read exactly the rows written.
//! Needs the test venv (`bash testing/setup-venv.sh`); without it the
//! reader test fails, it does not skip.
#![cfg(feature = "sqlite")] // the readers open the SQLite catalog

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use common::*;
use offload_core::{RunId, SinkTable, Watermark};
use offload_sink_iceberg::{IcebergSink, IcebergTable};
use serde_json::Value;

/// Data files per partition directory (`ts_day=...`) under the table.
fn files_per_day(warehouse: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in parquet_files(warehouse) {
        let day = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        *out.entry(day).or_insert(0) += 1;
    }
    out
}

/// The largest `(ts, seq)` of the batches, whatever their order.
fn max_position(batches: &[RecordBatch]) -> Watermark {
    batches
        .iter()
        .flat_map(|b| {
            let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
            let seq = b.column(1).as_primitive::<Int64Type>();
            (0..b.num_rows()).map(move |i| Watermark::new(ts.value(i), seq.value(i) as u64))
        })
        .max()
        .unwrap()
}

async fn stage_and_commit(table: &IcebergTable, batches: &[RecordBatch]) {
    let run_id = RunId::new();
    let staged = stage(table, run_id, batches).await;
    let until = max_position(batches);
    staged
        .commit(&meta(Watermark::MIN, until, run_id, "test"))
        .await
        .unwrap();
}

/// `n` trades of day `d` (from 2024-03-01), `k`-th block of that day.
fn day_block(d: i64, k: i64, n: usize) -> RecordBatch {
    trades(
        T0 + d * DAY_MICROS + k * 1_000_000_000,
        d * 1_000_000 + k * 10_000,
        n,
        1_000,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_input_gets_one_file_per_day() {
    let b = Backend::sqlite();
    // One encoder task, default limits: the files say what the writer did.
    let sink = IcebergSink::connect(b.config().writer_tasks(1)).await.unwrap();
    let table = open(&sink, "lake.ordered");
    table.prepare(trades_schema()).await.unwrap();
    // Three days in order, the batch crossing each midnight holding both days.
    let crossing = |d: i64| {
        trades(
            T0 + (d + 1) * DAY_MICROS - 300_000,
            d * 1_000_000 + 900_000,
            600,
            1_000,
        )
    };
    let batches = vec![
        day_block(0, 0, 500),
        day_block(0, 1, 500),
        crossing(0),
        day_block(1, 1, 500),
        day_block(1, 2, 500),
        crossing(1),
        day_block(2, 1, 500),
    ];
    stage_and_commit(&table, &batches).await;
    let days: Vec<usize> = files_per_day(&b.warehouse()).into_values().collect();
    assert_eq!(days, [1, 1, 1], "one file per day");
    assert_eq!(figures(&read_back(&table).await), figures(&batches));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_input_is_read_back_exactly_by_pyiceberg_and_clickhouse() {
    let b = Backend::sqlite();
    let cfg = b
        .config()
        .writer_tasks(1)
        .partition_idle_batches(2)
        .max_open_partitions(2);
    let sink = IcebergSink::connect(cfg).await.unwrap();
    let table = open(&sink, "lake.interleaved");
    table.prepare(trades_schema()).await.unwrap();
    // Days 0 and 1 alternate (both stay open: each returns within two
    // batches), then days 2 and 3 push them out (the cap is two open
    // files), then day 0 comes back: a second file for it.
    let batches = vec![
        day_block(0, 0, 400),
        day_block(1, 0, 400),
        day_block(0, 1, 400),
        day_block(1, 1, 400),
        day_block(2, 0, 400),
        day_block(3, 0, 400),
        day_block(2, 1, 400),
        day_block(3, 1, 400),
        day_block(0, 2, 400),
    ];
    stage_and_commit(&table, &batches).await;
    assert_eq!(
        files_per_day(&b.warehouse()),
        BTreeMap::from(
            [
                ("ts_day=2024-03-01", 2),
                ("ts_day=2024-03-02", 1),
                ("ts_day=2024-03-03", 1),
                ("ts_day=2024-03-04", 1)
            ]
            .map(|(d, n)| (d.to_owned(), n))
        )
    );
    let expected = figures(&batches);
    assert_eq!(figures(&read_back(&table).await), expected);

    let keys = b.dir.path().join("keys.txt");
    let mut lines = Vec::new();
    for batch in &batches {
        let ts = batch.column(0).as_primitive::<TimestampMicrosecondType>();
        let seq = batch.column(1).as_primitive::<Int64Type>();
        let sym = batch.column(2).as_string::<i32>();
        for i in 0..batch.num_rows() {
            lines.push(format!("{}:{}:{}", seq.value(i), ts.value(i), sym.value(i)));
        }
    }
    std::fs::write(&keys, lines.join("\n")).unwrap();
    let t = table.load().await.unwrap();
    let cfg = serde_json::json!({
        "db": b.dir.path().join("catalog.db"),
        "warehouse": b.warehouse(),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "table": "lake.interleaved",
        "location": t.metadata().location(),
        "expected_keys": keys,
    });
    let report: Value = run_readers(b.dir.path(), &cfg, 600, "");
    let want_days = serde_json::json!([
        ["2024-03-01", 1200],
        ["2024-03-02", 800],
        ["2024-03-03", 800],
        ["2024-03-04", 800]
    ]);
    for reader in ["pyiceberg", "chdb"] {
        let r = &report[reader];
        assert!(r.get("error").is_none(), "{reader} failed: {}", r["error"]);
        assert_eq!(r["count"].as_u64(), Some(expected.count), "{reader} count");
        assert_eq!(r["sum_seq"], expected.sum_seq.to_string(), "{reader} sum(seq)");
        assert_eq!(r["digest"], report["expected_digest"], "{reader} row keys");
        assert_eq!(r["partitions"], want_days, "{reader} rows per day");
    }
    assert_eq!(report["pyiceberg"]["files"], 5, "pyiceberg lists the five files");
}
