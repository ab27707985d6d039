//! A table without a sequence column, end to end: the real engine offloads
//! it with a sequence derived from key columns (the ClickHouse source's
//! `key_columns` option) into a real Iceberg table, late rows arrive (at the
//! committed watermark's own timestamp on both sides of its sequence, and in
//! an earlier bucket), the sweep repairs them, and reconciliation — which
//! must derive the same sequence on the ClickHouse side — says `ok`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use offload_core::memory::MemoryStore;
use offload_core::{Offloader, SystemClock, TableConfig, Watermark};
use offload_reconcile::{BucketSize, Reconciler, Report, TableSpec, TimeRange, Verdict};
use offload_source_clickhouse::ClickHouseTableOptions;
use offload_source_clickhouse::derived::DEFAULT_SEQUENCE_COLUMN;
use offload_testkit::ClickHouseFront;

const MS: i64 = 1_000;

fn insert(ch: &ClickHouseFront, rows: &[(i64, &str, u64)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(ts, s, id)| format!("(fromUnixTimestamp64Micro(toInt64({ts}), 'UTC'), '{s}', {id}, {id}.25)"))
        .collect();
    ch.query(&format!("INSERT INTO nokey VALUES {}", values.join(", ")));
}

fn config() -> TableConfig {
    TableConfig::builder("nokey")
        .timestamp_column("ts")
        .sequence_column(DEFAULT_SEQUENCE_COLUMN)
        .lag(Duration::ZERO)
        .late_horizon(Duration::from_secs(3600))
        .sweep_bucket(Duration::from_secs(30))
        .option(ClickHouseTableOptions::new().key_columns(["symbol", "trade_id"]))
        .build()
        .unwrap()
}

async fn reconcile(ch: &ClickHouseFront, lake: &Lake, spec: TableSpec) -> Report {
    let range = TimeRange::new(minute(0), minute(6), BucketSize::Minute).unwrap();
    Reconciler::new(clickhouse(ch), range)
        .with_iceberg(lake.layer())
        .run(&[spec])
        .await
}

fn count(ch: &ClickHouseFront, filter: &str) -> u64 {
    ch.query(&format!("SELECT count() FROM nokey WHERE {filter} FORMAT TSV"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_key_table_is_offloaded_repaired_and_reconciled_exactly_once() {
    let ch = ClickHouseFront::start();
    ch.query(
        "CREATE TABLE nokey (ts DateTime64(3, 'UTC'), symbol LowCardinality(String), trade_id UInt64, \
         price Decimal(18, 8)) ENGINE = MergeTree ORDER BY (ts, symbol, trade_id) SETTINGS index_granularity = 64",
    );
    // 300 trades in one millisecond of minute 1, then one a second up to
    // 5m00s; the newest millisecond holds three trades.
    let mut rows = Vec::new();
    for id in 0..100u64 {
        for s in ["AAPL", "MSFT", "BTC-USD"] {
            rows.push((minute(1) + 7 * MS, s, id));
        }
    }
    for k in 0..240i64 {
        rows.push((minute(1) + 10 * SECOND + k * SECOND, "AAPL", 1_000 + k as u64));
    }
    let newest = minute(5) + 10 * SECOND;
    for s in ["AAPL", "MSFT", "ETH-USD"] {
        rows.push((newest, s, 9_999));
    }
    insert(&ch, &rows);
    let total = rows.len() as u64;

    let lake = Lake::new().await;
    let table = config();
    let store = Arc::new(MemoryStore::new(SystemClock));
    let engine = Offloader::builder(source(&ch), lake.sink.clone(), store)
        .engine_id("derived-tests")
        .build()
        .unwrap();
    let first = engine.run_once(&table).await.unwrap();
    assert_eq!(first.rows, total);
    let w = committed(&lake, &table).await.unwrap();
    assert_eq!(w.timestamp_micros(), newest);
    // The watermark's sequence is ClickHouse's hash of the newest row's key.
    let max_hash: u64 = ch
        .query(&format!(
            "SELECT max(intDiv(sipHash64(symbol, trade_id), 2)) FROM nokey \
             WHERE ts = fromUnixTimestamp64Micro(toInt64({newest}), 'UTC') FORMAT TSV"
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(w, Watermark::new(newest, max_hash));
    let report = reconcile(&ch, &lake, TableSpec::from_table_config(&table)).await;
    assert_eq!(report.verdict, Verdict::Ok, "{}", report.render_table(true));

    // Late rows: 60 at the watermark's own timestamp (hashes on both sides of
    // its sequence), 20 more in the shared millisecond of minute 1.
    let mut late = Vec::new();
    for id in 0..60u64 {
        late.push((newest, "LATE", id));
    }
    for id in 0..20u64 {
        late.push((minute(1) + 7 * MS, "LATE", id));
    }
    insert(&ch, &late);
    let hash_above = format!(
        "symbol = 'LATE' AND ts = fromUnixTimestamp64Micro(toInt64({newest}), 'UTC') \
         AND intDiv(sipHash64(symbol, trade_id), 2) > {}",
        w.sequence()
    );
    let above = count(&ch, &hash_above);
    assert!(
        0 < above && above < 60,
        "late rows on both sides of the watermark: {above}"
    );

    // Reconciliation sees the late rows as missing — on the ClickHouse side
    // it derives the same sequence, so only the late rows differ.
    let report = reconcile(&ch, &lake, TableSpec::from_table_config(&table)).await;
    assert_eq!(report.verdict, Verdict::Missing, "{}", report.render_table(true));
    let t = &report.tables[0];
    assert_eq!(t.error, None);
    let missing: Vec<i64> = t
        .buckets
        .iter()
        .filter(|b| b.verdict == Verdict::Missing)
        .map(|b| (b.start - BASE) / MINUTE)
        .collect();
    assert_eq!(missing, [1, 5], "{}", report.render_table(true));

    // The next run: the sweep repairs the late rows at or below the
    // watermark, the window takes the ones above it, nothing twice.
    let second = engine.run_once(&table).await.unwrap();
    let sweep = second.sweep.expect("the run swept");
    assert_eq!(
        (sweep.late_rows, sweep.repaired_rows, sweep.excess_rows),
        (80 - above, 80 - above, 0),
        "{sweep:?}"
    );
    assert_eq!(second.rows, above);
    let report = reconcile(&ch, &lake, TableSpec::from_table_config(&table)).await;
    println!("{}", report.render_table(false));
    assert_eq!(report.verdict, Verdict::Ok, "{}", report.render_table(true));
    let t = &report.tables[0];
    let rows: u64 = t
        .buckets
        .iter()
        .map(|b| b.iceberg.as_ref().map_or(0, |f| f.rows))
        .sum();
    assert_eq!(rows, total + 80, "every row in Iceberg exactly once");

    // A third run finds nothing to do.
    let third = engine.run_once(&table).await.unwrap();
    assert_eq!(third.rows, 0);
    assert_eq!(third.sweep.map(|s| s.late_rows), Some(0));

    // A spec that ignores the key columns reads a `_offload_key` column
    // ClickHouse does not have: an error, not a pass.
    let report = reconcile(
        &ch,
        &lake,
        TableSpec::new("nokey", "nokey", "ts", DEFAULT_SEQUENCE_COLUMN).iceberg_table("nokey"),
    )
    .await;
    assert_eq!(report.verdict, Verdict::Error);
}
