//! `ClickHouseTable::bucket_counts` (one `GROUP BY` aggregate) counts exactly
//! what `read` yields per bucket: it is checked against offload-core's default
//! implementation (read the grid's span, histogram the rows' positions) and
//! against positions computed here from the inserted tick counts, for
//! `DateTime64(3/6/9)` and `DateTime` columns, negative timestamps, rows on
//! bucket edges and on the grid's watermark, and with a table filter.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use common::{Rng, TestDb, open};
use offload_core::{BatchStream, BucketGrid, Error, SourceTable, TableConfig, Watermark, Window};
use offload_source_clickhouse::{ClickHouseTable, ClickHouseTableOptions, UInt64Mapping};

/// A table that answers `bucket_counts` with offload-core's default (read the
/// span, count positions): the reference the override must agree with.
#[derive(Debug)]
struct DefaultCounts(Arc<ClickHouseTable>);

#[async_trait]
impl SourceTable for DefaultCounts {
    fn config(&self) -> &TableConfig {
        self.0.config()
    }
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }
    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        self.0.high_watermark().await
    }
    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        self.0.read(window).await
    }
}

/// The timestamp column's type, and how its tick counts become positions.
#[derive(Clone, Copy, Debug)]
enum Ts {
    /// `DateTime`: seconds.
    DateTime,
    /// `DateTime64(p)` for p in 3, 6, 9.
    D64(u8),
}

impl Ts {
    fn ch_type(self) -> String {
        match self {
            Ts::DateTime => "DateTime('UTC')".into(),
            Ts::D64(p) => format!("DateTime64({p}, 'UTC')"),
        }
    }

    /// SQL turning the `Int64` tick count `expr` into a column value.
    fn value_of_ticks(self, expr: &str) -> String {
        match self {
            Ts::DateTime => format!("toDateTime({expr}, 'UTC')"),
            Ts::D64(3) => format!("fromUnixTimestamp64Milli({expr}, 'UTC')"),
            Ts::D64(6) => format!("fromUnixTimestamp64Micro({expr}, 'UTC')"),
            Ts::D64(9) => format!("fromUnixTimestamp64Nano({expr}, 'UTC')"),
            Ts::D64(p) => panic!("no test conversion for DateTime64({p})"),
        }
    }

    /// A row's position timestamp: whole microseconds, rounded down.
    fn micros(self, ticks: i64) -> i64 {
        match self {
            Ts::DateTime => ticks * 1_000_000,
            Ts::D64(3) => ticks * 1_000,
            Ts::D64(6) => ticks,
            Ts::D64(9) => ticks.div_euclid(1_000),
            Ts::D64(p) => panic!("no test conversion for DateTime64({p})"),
        }
    }
}

/// One inserted row: tick count, sequence, tag.
type Row = (i64, u64, &'static str);

/// Creates `db`.`name` (ts, seq UInt64, tag String) and inserts `rows`.
fn create(db: &TestDb, name: &str, ts: Ts, rows: &[Row]) {
    db.query(&format!(
        "CREATE TABLE `{}`.`{name}` (ts {}, seq UInt64, tag String) \
         ENGINE = MergeTree ORDER BY (ts, seq) SETTINGS index_granularity = 64",
        db.name,
        ts.ch_type()
    ));
    for chunk in rows.chunks(2_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(t, s, tag)| format!("({t}, {s}, '{tag}')"))
            .collect();
        db.query(&format!(
            "INSERT INTO `{}`.`{name}` SELECT {}, s, tag FROM values('t Int64, s UInt64, tag String', {})",
            db.name,
            ts.value_of_ticks("t"),
            values.join(", ")
        ));
    }
}

fn config(name: &str, filter: Option<&str>) -> TableConfig {
    let mut b = TableConfig::builder(name)
        .timestamp_column("ts")
        .sequence_column("seq")
        .batch_size(100);
    if let Some(filter) = filter {
        b = b.option(ClickHouseTableOptions::new().filter(filter));
    }
    b.build().unwrap()
}

fn positions(ts: Ts, rows: &[Row]) -> Vec<Watermark> {
    rows.iter()
        .map(|&(t, s, _)| Watermark::new(ts.micros(t), s))
        .collect()
}

/// Asserts that the override, core's default and the histogram of `reference`
/// agree on `grid`.
async fn check(table: &Arc<ClickHouseTable>, grid: &BucketGrid, reference: &[Watermark]) {
    let want = grid.histogram(reference.iter().copied());
    let default = DefaultCounts(table.clone())
        .bucket_counts(grid)
        .await
        .unwrap_or_else(|e| panic!("default bucket_counts over {grid:?}: {e}"));
    assert_eq!(default, want, "core's default (read + histogram) over {grid:?}");
    let got = table
        .bucket_counts(grid)
        .await
        .unwrap_or_else(|e| panic!("bucket_counts over {grid:?}: {e}"));
    assert_eq!(
        got,
        want,
        "bucket_counts over {grid:?}; sql: {}",
        table.bucket_counts_sql(grid)
    );
}

/// Rows with ticks in `[base, base + range)`, several per tick, sequences
/// drawn from a small set (so positions repeat exactly), and grids of each
/// width ending at cut points around random rows (on a row, its sequence ± 1,
/// the run's ends, between ticks), from aligned, unaligned and split grids.
async fn counts_agree(ts: Ts, base: i64, range: u64, widths: &[i64], seed: u64) {
    let db = TestDb::new("buckets");
    let mut rng = Rng(seed);
    let rows: Vec<Row> = (0..1_500)
        .map(|_| (base + rng.below(range) as i64, rng.below(6), "x"))
        .collect();
    create(&db, "t", ts, &rows);
    // UInt64 as Int64, so core's default can read sequences (batch_positions).
    let source = db.source().uint64_mapping(UInt64Mapping::Int64).build().unwrap();
    let table = Arc::new(open(&source, &config("t", None)).await);
    let reference = positions(ts, &rows);
    let mut grids = 0;
    for &width in widths {
        for _ in 0..6 {
            let row = reference[rng.below(reference.len() as u64) as usize];
            let (t, s) = (row.timestamp_micros(), row.sequence());
            let until = match rng.below(6) {
                0 => row,
                1 => Watermark::new(t, s.saturating_sub(1)),
                2 => Watermark::new(t, s + 1),
                3 => Watermark::new(t, 0),
                4 => Watermark::new(t, u64::MAX),
                _ => Watermark::new(t + 1 + rng.below(999) as i64, rng.below(6)),
            };
            let back = rng.below(30) as i64 * width + rng.below(width as u64) as i64;
            let from = until.timestamp_micros() - back;
            let aligned = BucketGrid::covering(from, until, Duration::from_micros(width as u64)).unwrap();
            check(&table, &aligned, &reference).await;
            let len = (until.timestamp_micros() - from) / width + 1;
            let unaligned = BucketGrid::new(from, width, len as usize, until).unwrap();
            check(&table, &unaligned, &reference).await;
            let last = aligned.len() - 1;
            if let Some(sub) = aligned.split(last, 3) {
                check(&table, &sub, &reference).await;
            }
            grids += 1;
        }
    }
    assert!(grids > 0);
    // The whole table in one grid: every row counted once.
    let top = *reference.iter().max().unwrap();
    let bottom = reference.iter().min().unwrap().timestamp_micros();
    let all = BucketGrid::covering(bottom, top, Duration::from_micros(widths[0] as u64)).unwrap();
    check(&table, &all, &reference).await;
    let total: u64 = table.bucket_counts(&all).await.unwrap().iter().sum();
    assert_eq!(total, rows.len() as u64, "every row in exactly one bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datetime64_3_counts_match_reads() {
    // -150 ms .. +150 ms around the epoch: negative timestamps included.
    counts_agree(Ts::D64(3), -150, 300, &[1_000, 7_000, 500, 40_000, 1], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datetime64_6_counts_match_reads() {
    counts_agree(Ts::D64(6), -150, 300, &[1, 7, 25, 100, 1_000_000], 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datetime64_9_counts_match_reads() {
    // Nanosecond ticks round down to microseconds, below zero too.
    counts_agree(Ts::D64(9), -150_000, 300_000, &[1, 7, 25, 100], 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datetime_counts_match_reads() {
    // 2026-01-01 and the five minutes after it, in seconds.
    counts_agree(
        Ts::DateTime,
        1_767_225_600,
        300,
        &[1_000_000, 7_000_000, 500_000, 60_000_000, 3_600_000_000],
        10,
    )
    .await;
}

/// Hand-computed counts, so an off-by-one at a bucket edge, a truncating
/// (instead of flooring) conversion, or a watermark compared on the
/// timestamp alone fails here whatever the other implementations do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_and_the_watermark_are_counted_exactly() {
    let db = TestDb::new("edges");
    // The default UInt64 mapping (Decimal(20, 0)): the override needs no
    // Arrow sequence column.
    let source = db.source().build().unwrap();

    // DateTime64(6): buckets [1000, 2000) and [2000, 3000) µs, watermark (2000, 5).
    let rows: &[Row] = &[
        (999, 9, "x"),   // just below the first bucket
        (1_000, 0, "x"), // first µs of bucket 0
        (1_001, 1, "x"),
        (1_999, 7, "x"), // last µs of bucket 0
        (2_000, 4, "x"), // the watermark's timestamp, smaller sequence
        (2_000, 5, "x"), // the watermark itself
        (2_000, 5, "x"), // ... twice
        (2_000, 6, "x"), // the watermark's timestamp, larger sequence: above it
        (2_001, 0, "x"), // above the watermark
    ];
    create(&db, "us", Ts::D64(6), rows);
    let us = open(&source, &config("us", None)).await;
    let grid = BucketGrid::new(1_000, 1_000, 2, Watermark::new(2_000, 5)).unwrap();
    assert_eq!(us.bucket_counts(&grid).await.unwrap(), vec![3, 3]);
    let grid = BucketGrid::new(999, 1_001, 2, Watermark::new(2_000, 6)).unwrap();
    assert_eq!(us.bucket_counts(&grid).await.unwrap(), vec![4, 4]);
    let grid = BucketGrid::new(1_001, 999, 1, Watermark::new(1_999, u64::MAX)).unwrap();
    assert_eq!(us.bucket_counts(&grid).await.unwrap(), vec![2]);

    // DateTime64(9) below the epoch: -1001 ns is -2 µs, -1000 and -1 ns are
    // -1 µs (rounded down, as the decoder does), 0 ns is 0 µs.
    let rows: &[Row] = &[(-1_001, 1, "x"), (-1_000, 1, "x"), (-1, 2, "x"), (0, 0, "x")];
    create(&db, "ns", Ts::D64(9), rows);
    let ns = open(&source, &config("ns", None)).await;
    let grid = BucketGrid::new(-2, 1, 2, Watermark::new(-1, u64::MAX)).unwrap();
    assert_eq!(ns.bucket_counts(&grid).await.unwrap(), vec![1, 2]);
    let grid = BucketGrid::new(-2, 1, 3, Watermark::new(0, 0)).unwrap();
    assert_eq!(ns.bucket_counts(&grid).await.unwrap(), vec![1, 2, 1]);
    let grid = BucketGrid::new(-1, 1, 1, Watermark::new(-1, 1)).unwrap();
    assert_eq!(
        ns.bucket_counts(&grid).await.unwrap(),
        vec![1],
        "(-1 µs, seq 2) is above the watermark"
    );

    // DateTime64(3) below the epoch: -1 ms is -1000 µs, in bucket [-1000, 0).
    let rows: &[Row] = &[(-2, 0, "x"), (-1, 0, "x"), (-1, 3, "x"), (0, 0, "x")];
    create(&db, "ms", Ts::D64(3), rows);
    let ms = open(&source, &config("ms", None)).await;
    let grid = BucketGrid::new(-2_000, 1_000, 3, Watermark::new(0, 0)).unwrap();
    assert_eq!(ms.bucket_counts(&grid).await.unwrap(), vec![1, 2, 1]);
    let grid = BucketGrid::new(-1_500, 1_000, 2, Watermark::new(0, 0)).unwrap();
    assert_eq!(
        ms.bucket_counts(&grid).await.unwrap(),
        vec![2, 1],
        "[-1500, -500) and [-500, 500)"
    );
    let grid = BucketGrid::new(-1_500, 1_000, 2, Watermark::new(-1, 0)).unwrap();
    assert_eq!(
        ms.bucket_counts(&grid).await.unwrap(),
        vec![2, 0],
        "(0, 0) is above the watermark"
    );

    // DateTime (seconds): second 10 is 10_000_000 µs.
    let rows: &[Row] = &[(9, 0, "x"), (10, 0, "x"), (10, 1, "x"), (11, 0, "x")];
    create(&db, "s", Ts::DateTime, rows);
    let s = open(&source, &config("s", None)).await;
    let grid = BucketGrid::new(9_500_000, 500_000, 2, Watermark::new(10_000_000, 0)).unwrap();
    assert_eq!(s.bucket_counts(&grid).await.unwrap(), vec![0, 1]);
    let grid = BucketGrid::new(9_000_000, 1_000_000, 3, Watermark::new(11_000_000, 0)).unwrap();
    assert_eq!(s.bucket_counts(&grid).await.unwrap(), vec![1, 2, 1]);
}

/// The table's `ClickHouseTableOptions` filter applies to the counts as it
/// does to reads, and a filter naming a column does not collide with the
/// aggregate's own expressions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_apply_the_table_filter() {
    let db = TestDb::new("filter");
    let mut rng = Rng(42);
    let rows: Vec<Row> = (0..800)
        .map(|i| {
            let tag = if i % 3 == 0 { "drop" } else { "keep" };
            (1_000 + rng.below(200) as i64, rng.below(4), tag)
        })
        .collect();
    create(&db, "t", Ts::D64(3), &rows);
    let source = db.source().uint64_mapping(UInt64Mapping::Int64).build().unwrap();
    let filtered = Arc::new(open(&source, &config("t", Some("tag = 'keep'"))).await);
    let unfiltered = Arc::new(open(&source, &config("t", None)).await);
    let kept: Vec<Row> = rows.iter().copied().filter(|r| r.2 == "keep").collect();
    let (all_pos, kept_pos) = (positions(Ts::D64(3), &rows), positions(Ts::D64(3), &kept));
    let until = Watermark::new(1_150_000, 2);
    for width in [1_000, 10_000, 33_000] {
        let grid = BucketGrid::covering(1_000_000, until, Duration::from_micros(width)).unwrap();
        check(&filtered, &grid, &kept_pos).await;
        check(&unfiltered, &grid, &all_pos).await;
        assert_ne!(
            filtered.bucket_counts(&grid).await.unwrap(),
            unfiltered.bucket_counts(&grid).await.unwrap(),
            "the filter must make a difference here"
        );
    }
}
