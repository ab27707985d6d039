//! Tables without a sequence column: the sequence is derived from key columns
//! (`ClickHouseTableOptions::key_columns`), against real ClickHouse (chdb).
//!
//! The core Source conformance suite is not run on such a table: it inserts
//! rows at positions `(ts, seq)` it chooses and checks that windows return
//! exactly those positions, and a derived sequence is a hash of the key, so
//! no fixture can place a row at a chosen sequence (that would need
//! preimages of SipHash). What the suite checks on positions is checked here
//! instead, on positions the server computes: windows cut at arbitrary
//! positions (inside runs of rows sharing one timestamp) partition the rows,
//! the high watermark is the newest row, bucket counts agree with the rows.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_schema::DataType;
use common::{Rng, TestDb, open, positions, read_all};
use offload_core::{BucketGrid, SourceTable, TableConfig, Watermark, Window};
use offload_source_clickhouse::derived::{DEFAULT_SEQUENCE_COLUMN, sequence_sql};
use offload_source_clickhouse::{ClickHouseError, ClickHouseTableOptions};

const MS: i64 = 1_000;
/// 2024-05-01T00:00:00Z in µs.
const BASE: i64 = 1_714_521_600_000_000;

fn ddl(db: &TestDb, key_type: &str) {
    db.query(&format!(
        "CREATE TABLE `{}`.trades (ts DateTime64(3, 'UTC'), symbol LowCardinality(String), \
         trade_id {key_type}, price Decimal(18, 8)) ENGINE = MergeTree ORDER BY (ts, symbol, trade_id) \
         SETTINGS index_granularity = 64",
        db.name
    ));
}

/// `(ts µs, symbol, trade_id)` rows: 600 trades in one millisecond (three
/// symbols, ids 0..200 each), then 400 a millisecond apart.
fn rows() -> Vec<(i64, &'static str, u64)> {
    let mut out = Vec::new();
    for id in 0..200u64 {
        for s in ["AAPL", "MSFT", "BTC-USD"] {
            out.push((BASE + 5 * MS, s, id));
        }
    }
    for k in 0..400i64 {
        out.push((
            BASE + (10 + k) * MS,
            ["AAPL", "MSFT"][(k % 2) as usize],
            1_000 + k as u64,
        ));
    }
    out
}

fn insert(db: &TestDb, rows: &[(i64, &str, u64)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(ts, s, id)| format!("(fromUnixTimestamp64Micro(toInt64({ts}), 'UTC'), '{s}', {id}, {id}.5)"))
        .collect();
    db.query(&format!(
        "INSERT INTO `{}`.trades VALUES {}",
        db.name,
        values.join(", ")
    ));
}

fn config(keys: &[&str], sequence: &str) -> TableConfig {
    TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column(sequence)
        .lag(Duration::ZERO)
        .batch_size(97)
        .option(ClickHouseTableOptions::new().key_columns(keys.iter().copied()))
        .build()
        .unwrap()
}

/// `(ts µs, symbol, trade_id, derived sequence)` of every row in `batches`.
fn keyed(table: &TableConfig, batches: &[arrow_array::RecordBatch]) -> Vec<(i64, String, u64, u64)> {
    let pos = positions(table, batches);
    let mut out = Vec::new();
    let mut i = 0;
    for b in batches {
        let sym = b.column_by_name("symbol").unwrap();
        let sym = sym.as_string::<i32>();
        let id = b.column_by_name("trade_id").unwrap();
        for r in 0..b.num_rows() {
            let id = match id.data_type() {
                DataType::Decimal128(..) => {
                    u64::try_from(id.as_primitive::<arrow_array::types::Decimal128Type>().value(r)).unwrap()
                }
                DataType::UInt32 => u64::from(id.as_primitive::<arrow_array::types::UInt32Type>().value(r)),
                DataType::UInt64 => id.as_primitive::<UInt64Type>().value(r),
                other => panic!("trade_id as {other}"),
            };
            out.push((pos[i].0, sym.value(r).to_owned(), id, pos[i].1));
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_sequence_windows_partition_the_rows() {
    let db = TestDb::new("derived_windows");
    ddl(&db, "UInt64");
    let all = rows();
    insert(&db, &all);
    let source = db.source().build().unwrap();
    let cfg = config(&["symbol", "trade_id"], DEFAULT_SEQUENCE_COLUMN);
    let table = open(&source, &cfg).await;
    assert!(table.is_sequence_derived());
    assert_eq!(table.sequence_sql(), sequence_sql(&["symbol", "trade_id"]));

    // The derived column is materialised as a non-negative Int64, after the
    // table's own columns.
    let schema = table.schema();
    let last = schema.fields().last().unwrap();
    assert_eq!(
        (last.name().as_str(), last.data_type(), last.is_nullable()),
        (DEFAULT_SEQUENCE_COLUMN, &DataType::Int64, false)
    );
    assert_eq!(schema.fields().len(), 5);

    // Its values are the server's own hash, computed here independently of
    // the crate's SQL: SipHash-2-4 of (symbol, trade_id), top bit dropped.
    let expected: BTreeMap<(String, u64), u64> = db
        .query(&format!(
            "SELECT symbol, trade_id, intDiv(sipHash64(symbol, trade_id), 2) FROM `{}`.trades FORMAT TSV",
            db.name
        ))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            ((f[0].to_owned(), f[1].parse().unwrap()), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(expected.len(), all.len(), "keys are unique");

    // The high watermark is the newest row: the last millisecond's only trade.
    let high = table.high_watermark().await.unwrap().unwrap();
    let newest = expected[&("MSFT".to_owned(), 1_399)];
    assert_eq!(high, Watermark::new(BASE + 409 * MS, newest));

    // One window holding everything returns each row once, with its hash.
    let everything = read_all(&table, Window::new(Watermark::MIN, high).unwrap()).await;
    let got = keyed(&cfg, &everything);
    assert_eq!(got.len(), all.len());
    for (ts, sym, id, seq) in &got {
        assert_eq!(expected[&(sym.clone(), *id)], *seq, "{sym} {id}");
        assert!(*ts == BASE + 5 * MS || *ts >= BASE + 10 * MS);
    }
    let mut sorted: Vec<(i64, u64)> = got.iter().map(|r| (r.0, r.3)).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "positions are unique");

    // Windows cut at random positions — most of them inside the 600 trades
    // sharing one millisecond, some between rows, some on rows — partition the
    // rows: each exactly once, in order of windows.
    for seed in 1..=3u64 {
        let mut rng = Rng(seed);
        let mut cuts: Vec<Watermark> = (0..12)
            .map(|_| {
                let p = sorted[rng.below(sorted.len() as u64) as usize];
                // On a row's position, or just before/after it.
                let seq = match rng.below(3) {
                    0 => p.1,
                    1 => p.1.saturating_sub(1),
                    _ => p.1.saturating_add(1),
                };
                Watermark::new(p.0, seq)
            })
            .collect();
        cuts.push(Watermark::new(BASE + 5 * MS, u64::MAX / 4));
        cuts.sort_unstable();
        cuts.dedup();
        let mut seen = Vec::new();
        let mut after = Watermark::MIN;
        for until in cuts.into_iter().chain([high]) {
            if until <= after {
                continue;
            }
            let window = Window::new(after, until).unwrap();
            let batch = read_all(&table, window).await;
            for p in positions(&cfg, &batch) {
                let w = Watermark::new(p.0, p.1);
                assert!(after < w && w <= until, "seed {seed}: {w} outside {window}");
                seen.push(p);
            }
            after = until;
        }
        seen.sort_unstable();
        assert_eq!(seen, sorted, "seed {seed}: every row exactly once");
    }

    // Bucket counts (one aggregate over the derived expression) equal the
    // rows' histogram, on a grid whose top is inside the shared millisecond.
    let top = sorted[300];
    let grid =
        BucketGrid::covering(BASE, Watermark::new(top.0, top.1), Duration::from_micros(2_000)).unwrap();
    let counts = table.bucket_counts(&grid).await.unwrap();
    let below: Vec<Watermark> = sorted
        .iter()
        .map(|p| Watermark::new(p.0, p.1))
        .filter(|w| *w <= grid.until())
        .collect();
    assert_eq!(counts, grid.histogram(below.iter().copied()));
    assert_eq!(counts.iter().sum::<u64>(), 301);

    // Late rows at the watermark's own timestamp: the next window (high, new]
    // takes those whose hash is above the watermark's, and only those.
    let late: Vec<(i64, &str, u64)> = (0..50).map(|k| (BASE + 409 * MS, "LATE", k)).collect();
    insert(&db, &late);
    let next = table.high_watermark().await.unwrap().unwrap();
    let batch = read_all(&table, Window::new(high, next).unwrap()).await;
    let taken = keyed(&cfg, &batch);
    let late_hashes: BTreeMap<(String, u64), u64> = db
        .query(&format!(
            "SELECT symbol, trade_id, intDiv(sipHash64(symbol, trade_id), 2) FROM `{}`.trades \
             WHERE symbol = 'LATE' FORMAT TSV",
            db.name
        ))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            ((f[0].to_owned(), f[1].parse().unwrap()), f[2].parse().unwrap())
        })
        .collect();
    let above = late_hashes.values().filter(|h| **h > high.sequence()).count();
    assert!(
        above > 0 && above < 50,
        "both sides of the watermark's sequence: {above}"
    );
    assert_eq!(taken.len(), above);
    assert!(taken.iter().all(|r| r.1 == "LATE" && r.3 > high.sequence()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_sequence_with_a_column_list_and_other_types() {
    // UInt32 ids (the hash covers each key column's binary value) and a
    // configured column list that does not name the derived column.
    let db = TestDb::new("derived_columns");
    ddl(&db, "UInt32");
    insert(&db, &rows()[..50]);
    let source = db.source().build().unwrap();
    let cfg = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("key")
        .columns(["ts", "price"])
        .lag(Duration::ZERO)
        .option(ClickHouseTableOptions::new().key_columns(["trade_id", "symbol"]))
        .build()
        .unwrap();
    let table = open(&source, &cfg).await;
    let schema = table.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["ts", "price", "key"]);
    let batches = read_all(
        &table,
        Window::new(Watermark::MIN, Watermark::new(i64::MAX, u64::MAX)).unwrap(),
    )
    .await;
    let mut got: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    got.sort_unstable();
    let mut want: Vec<i64> = db
        .query(&format!(
            "SELECT toInt64(intDiv(sipHash64(trade_id, symbol), 2)) FROM `{}`.trades ORDER BY 1 FORMAT TSV",
            db.name
        ))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    want.sort_unstable();
    assert_eq!(got, want);
    assert!(got.iter().all(|v| *v >= 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_sequence_misconfiguration_is_a_typed_error() {
    let db = TestDb::new("derived_errors");
    ddl(&db, "UInt64");
    db.query(&format!(
        "CREATE TABLE `{}`.nullable (ts DateTime64(3, 'UTC'), id Nullable(UInt64)) ENGINE = MergeTree ORDER BY ts",
        db.name
    ));
    let source = db.source().build().unwrap();
    let err = |cfg: TableConfig| {
        let source = &source;
        async move { source.open_table(&cfg).await.unwrap_err() }
    };

    match err(config(&["symbol", "nope"], "_offload_key")).await {
        ClickHouseError::ColumnNotFound { column, .. } => assert_eq!(column, "nope"),
        other => panic!("{other:?}"),
    }
    match err(config(&["symbol", "trade_id"], "price")).await {
        ClickHouseError::DerivedSequenceClash { column, .. } => assert_eq!(column, "price"),
        other => panic!("{other:?}"),
    }
    match err(config(&[], "_offload_key")).await {
        ClickHouseError::InvalidConfig { field, .. } => assert_eq!(field, "key_columns"),
        other => panic!("{other:?}"),
    }
    match err(config(&["symbol", "symbol"], "_offload_key")).await {
        ClickHouseError::InvalidConfig { field, .. } => assert_eq!(field, "key_columns"),
        other => panic!("{other:?}"),
    }
    match err(config(&["sym\nbol"], "_offload_key")).await {
        ClickHouseError::InvalidIdentifier { what, .. } => assert_eq!(what, "key column"),
        other => panic!("{other:?}"),
    }
    let nullable = TableConfig::builder("nullable")
        .timestamp_column("ts")
        .sequence_column("_offload_key")
        .option(ClickHouseTableOptions::new().key_columns(["id"]))
        .build()
        .unwrap();
    match err(nullable).await {
        ClickHouseError::InvalidWatermarkColumn { column, role, .. } => {
            assert_eq!((column.as_str(), role), ("id", "key"));
        }
        other => panic!("{other:?}"),
    }
    // Without key columns the configured sequence column must exist, as before.
    let plain = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("_offload_key")
        .build()
        .unwrap();
    assert!(matches!(err(plain).await, ClickHouseError::ColumnNotFound { .. }));
}
