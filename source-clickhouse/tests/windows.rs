//! Windows partition rows exactly, the high watermark follows the server's
//! clock and the lag, and the primary key prunes the window query.

mod common;

use std::time::Duration;

use common::{Rng, TestDb, everything, open, parse_pairs, positions, read_all};
use offload_core::{Source, SourceTable, TableConfig, Watermark, Window};
#[cfg(feature = "lz4")]
use offload_source_clickhouse::Compression;
use offload_source_clickhouse::{ClickHouseTable, ClickHouseTableOptions, SubMicrosecond};

const BRONZE_TRADES: &str = "(
    exchange_timestamp DateTime64(3, 'UTC'),
    sequence_number UInt64,
    symbol LowCardinality(String),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    quote_volume Decimal(18, 8),
    side Enum8('buy' = 1, 'sell' = 2),
    trade_conditions Array(String),
    vendor_data Map(String, String),
    venue Nullable(String)
) ENGINE = MergeTree ORDER BY (exchange_timestamp, sequence_number)
SETTINGS index_granularity = 1024";

/// `n` seed-like trades: runs of 40 trades share each millisecond, sequence
/// numbers are scrambled within a run, and `dups` extra rows repeat existing
/// positions exactly.
fn seed_trades(db: &TestDb, n: u64, dups: u64) {
    db.query(&format!(
        "CREATE TABLE `{}`.bronze_trades {BRONZE_TRADES}",
        db.name
    ));
    let select = |src: &str| {
        format!(
            "SELECT
                fromUnixTimestamp64Milli(toInt64(1767225600000 + intDiv(number, 40)), 'UTC'),
                (number * 2654435761) % 1000003,
                ['BTC-USD', 'ETH-USD', 'SOL-USD'][number % 3 + 1],
                CAST(number % 100000 AS Decimal(18, 8)) / 100,
                CAST(number % 977 AS Decimal(18, 8)) / 1000,
                CAST(number % 5000 AS Decimal(18, 8)),
                if(number % 2 = 0, 'buy', 'sell'),
                arrayMap(x -> toString(x), range(number % 4)),
                map('venue', toString(number % 7), 'id', toString(number)),
                if(number % 5 = 0, NULL, 'XNAS')
             FROM {src}"
        )
    };
    db.query(&format!(
        "INSERT INTO `{}`.bronze_trades {}",
        db.name,
        select(&format!("numbers({n})"))
    ));
    if dups > 0 {
        // Same positions as rows 0, 97, 194, ...: never split by any window.
        db.query(&format!(
            "INSERT INTO `{}`.bronze_trades {}",
            db.name,
            select(&format!("(SELECT number * 97 AS number FROM numbers({dups}))"))
        ));
    }
}

fn trades_config(batch_size: usize) -> TableConfig {
    TableConfig::builder("bronze_trades")
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .batch_size(batch_size)
        .build()
        .unwrap()
}

/// Cut points around random rows: on a row, just before/after it in its
/// timestamp run, at the run's ends, and between timestamp ticks.
fn random_cuts(reference: &[(i64, u64)], rng: &mut Rng, count: usize) -> Vec<Watermark> {
    let mut cuts = Vec::new();
    for _ in 0..count {
        let (ts, seq) = reference[rng.below(reference.len() as u64) as usize];
        let cut = match rng.below(6) {
            0 => Watermark::new(ts, seq),
            1 => Watermark::new(ts, seq.saturating_sub(1)),
            2 => Watermark::new(ts, seq + 1),
            3 => Watermark::new(ts, 0),
            4 => Watermark::new(ts, u64::MAX),
            _ => Watermark::new(ts + 1 + rng.below(998) as i64, rng.next()),
        };
        cuts.push(cut);
    }
    cuts.sort();
    cuts.dedup();
    cuts
}

/// Reads consecutive windows ending at `cuts` (then to the end) and checks
/// that together they hold exactly `reference` (a multiset of positions), that
/// each row lies in its window, and that batches are `batch_size` rows.
async fn check_partition(source: &ClickHouseTable, cuts: &[Watermark], reference: &[(i64, u64)]) {
    let table = source.config();
    let mut seen = Vec::with_capacity(reference.len());
    let mut after = Watermark::MIN;
    let ends = cuts.iter().copied().chain([Watermark::new(i64::MAX, u64::MAX)]);
    for until in ends {
        if until <= after {
            continue;
        }
        let window = Window::new(after, until).unwrap();
        let batches = read_all(source, window).await;
        for (i, b) in batches.iter().enumerate() {
            assert!(b.num_rows() > 0, "empty batch in {window}");
            if i + 1 < batches.len() {
                assert_eq!(b.num_rows(), table.batch_size(), "batch {i} of {window}");
            } else {
                assert!(b.num_rows() <= table.batch_size());
            }
        }
        for (ts, seq) in positions(table, &batches) {
            assert!(
                window.contains(Watermark::new(ts, seq)),
                "row ({ts}, {seq}) read in window {window}"
            );
            seen.push((ts, seq));
        }
        after = until;
    }
    seen.sort_unstable();
    let mut want = reference.to_vec();
    want.sort_unstable();
    assert_eq!(seen.len(), want.len(), "row count over all windows");
    assert!(seen == want, "rows differ from a full ordered SELECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_partition_trades_exactly_including_equal_timestamp_runs() {
    let db = TestDb::new("partition");
    seed_trades(&db, 200_000, 300);
    let reference = parse_pairs(&db.query(&format!(
        "SELECT toUnixTimestamp64Micro(exchange_timestamp), sequence_number FROM `{}`.bronze_trades \
         ORDER BY 1, 2 FORMAT TSV",
        db.name
    )));
    assert_eq!(reference.len(), 200_300);
    let source = db.source().build().unwrap();
    let table = trades_config(997);
    let handle = open(&source, &table).await;

    let seed = std::env::var("OFFLOAD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    eprintln!("cut-point seed {seed:#x} (set OFFLOAD_TEST_SEED to replay)");
    let mut rng = Rng(seed);
    for round in 0..3 {
        let mut cuts = random_cuts(&reference, &mut rng, 12);
        // Always cut inside a run of duplicate positions, on the position itself.
        let (ts, seq) = reference[97 * (round + 1)];
        cuts.push(Watermark::new(ts, seq));
        cuts.sort();
        cuts.dedup();
        check_partition(&handle, &cuts, &reference).await;
    }

    // The whole table in one window equals the reference too.
    let all = positions(&table, &read_all(&handle, everything()).await);
    assert_eq!(all.len(), reference.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_timestamps_and_signed_sequences() {
    let db = TestDb::new("signed");
    db.query(&format!(
        "CREATE TABLE `{}`.events (ts DateTime('Asia/Tokyo'), seq Int32, v String) \
         ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name
    ));
    // Ten rows per second, sequences -5..4: the six with seq <= 0 share position (ts, 0).
    db.query(&format!(
        "INSERT INTO `{}`.events SELECT toDateTime(1700000000 + intDiv(number, 10), 'Asia/Tokyo'), \
         toInt32(number % 10) - 5, toString(number) FROM numbers(20000)",
        db.name
    ));
    let reference = parse_pairs(&db.query(&format!(
        "SELECT toInt64(toUnixTimestamp(ts)) * 1000000, greatest(seq, 0) FROM `{}`.events ORDER BY 1, 2 FORMAT TSV",
        db.name
    )));
    let source = db.source().build().unwrap();
    let table = TableConfig::builder("events")
        .timestamp_column("ts")
        .sequence_column("seq")
        .batch_size(500)
        .build()
        .unwrap();
    let mut rng = Rng(7);
    let mut cuts = random_cuts(&reference, &mut rng, 20);
    cuts.push(Watermark::new(reference[5000].0, 0));
    cuts.sort();
    cuts.dedup();
    check_partition(&open(&source, &table).await, &cuts, &reference).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nanosecond_timestamps_take_their_microsecond_position() {
    let db = TestDb::new("nanos");
    db.query(&format!(
        "CREATE TABLE `{}`.ticks (ts DateTime64(9, 'UTC'), seq UInt16) ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name
    ));
    // Four rows per microsecond, straddling the epoch (negative ticks round down).
    db.query(&format!(
        "INSERT INTO `{}`.ticks SELECT fromUnixTimestamp64Nano(toInt64(number) * 250 - 1000000, 'UTC'), \
         number % 3 FROM numbers(8000)",
        db.name
    ));
    let reference = parse_pairs(&db.query(&format!(
        "SELECT intDiv(t - positiveModulo(t, 1000), 1000), seq FROM \
         (SELECT reinterpretAsInt64(ts) AS t, seq FROM `{}`.ticks) ORDER BY 1, 2 FORMAT TSV",
        db.name
    )));
    assert!(reference.iter().any(|(ts, _)| *ts < 0));
    let table = TableConfig::builder("ticks")
        .timestamp_column("ts")
        .sequence_column("seq")
        .batch_size(333)
        .build()
        .unwrap();
    let source = db.source().build().unwrap();
    let mut rng = Rng(9);
    let cuts = random_cuts(&reference, &mut rng, 25);
    check_partition(&open(&source, &table).await, &cuts, &reference).await;

    // With SubMicrosecond::Nanoseconds the values are exact and the windows the same.
    let exact = db
        .source()
        .sub_microsecond(SubMicrosecond::Nanoseconds)
        .build()
        .unwrap();
    let cut = cuts[cuts.len() / 2];
    let exact = open(&exact, &table).await;
    let batches = read_all(&exact, Window::new(Watermark::MIN, cut).unwrap()).await;
    let mut got: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            use arrow_array::cast::AsArray;
            b.column(0)
                .as_primitive::<arrow_array::types::TimestampNanosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    got.sort_unstable();
    let mut want: Vec<i64> = parse_pairs(&db.query(&format!(
        "SELECT reinterpretAsInt64(ts), seq FROM `{}`.ticks FORMAT TSV",
        db.name
    )))
    .into_iter()
    .filter(|&(ns, seq)| Watermark::new(ns.div_euclid(1000), seq) <= cut)
    .map(|(ns, _)| ns)
    .collect();
    want.sort_unstable();
    assert_eq!(got.len(), want.len(), "rows up to {cut:?}");
    assert!(got == want, "nanosecond values differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_watermark_uses_the_server_clock_and_the_lag() {
    let db = TestDb::new("high");
    db.query(&format!(
        "CREATE TABLE `{}`.bronze_trades {BRONZE_TRADES}",
        db.name
    ));
    let source = db.source().build().unwrap();
    let config = |lag: Duration, filter: Option<&str>| {
        let mut b = TableConfig::builder("bronze_trades")
            .timestamp_column("exchange_timestamp")
            .sequence_column("sequence_number")
            .lag(lag);
        if let Some(filter) = filter {
            b = b.option(ClickHouseTableOptions::new().filter(filter));
        }
        b.build().unwrap()
    };
    // A handle opened on the empty table: its high watermark is read live.
    let early = source.open(&config(Duration::ZERO, None)).await.unwrap();
    assert_eq!(early.high_watermark().await.unwrap(), None, "empty table");

    // Rows 60, 10 (twice), 1 minute(s) old and one an hour in the future, on the server's clock.
    db.query(&format!(
        "INSERT INTO `{}`.bronze_trades (exchange_timestamp, sequence_number, side) \
         SELECT n - toIntervalSecond(s), q, 'buy' FROM (SELECT now64(3) AS n) \
         ARRAY JOIN [3600, 600, 600, 60, -3600] AS s, [1, 2, 3, 4, 5] AS q",
        db.name
    ));
    let ts_of = |seq: u64| -> i64 {
        db.query(&format!(
            "SELECT toUnixTimestamp64Micro(exchange_timestamp) FROM `{}`.bronze_trades WHERE sequence_number = {seq}",
            db.name
        ))
        .trim()
        .parse()
        .unwrap()
    };
    let hw = |lag, filter| {
        let table = config(lag, filter);
        let source = &source;
        async move { source.open(&table).await.unwrap().high_watermark().await.unwrap() }
    };
    assert_eq!(
        early.high_watermark().await.unwrap(),
        Some(Watermark::new(ts_of(4), 4)),
        "the handle opened before the insert sees the rows"
    );
    assert_eq!(
        hw(Duration::ZERO, None).await,
        Some(Watermark::new(ts_of(4), 4)),
        "future row excluded"
    );
    assert_eq!(
        hw(Duration::from_secs(300), None).await,
        Some(Watermark::new(ts_of(3), 3)),
        "max seq at the max timestamp"
    );
    assert_eq!(
        hw(Duration::from_secs(1800), None).await,
        Some(Watermark::new(ts_of(1), 1))
    );
    assert_eq!(hw(Duration::from_secs(7200), None).await, None);

    // The table's extra filter applies to the high watermark as well.
    let filter = Some("sequence_number != 3");
    assert_eq!(
        hw(Duration::from_secs(300), filter).await,
        Some(Watermark::new(ts_of(2), 2))
    );
    let filtered = source.open(&config(Duration::ZERO, filter)).await.unwrap();
    let rows = positions(filtered.config(), &read_all(&*filtered, everything()).await);
    assert_eq!(rows.len(), 4, "filtered read: {rows:?}");
    assert!(rows.iter().all(|&(_, seq)| seq != 3), "{rows:?}");
    // Options are per table: the same source reads another table unfiltered.
    let all = source.open(&config(Duration::ZERO, None)).await.unwrap();
    assert_eq!(
        positions(all.config(), &read_all(&*all, everything()).await).len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_key_prunes_window_queries() {
    let db = TestDb::new("prune");
    seed_trades(&db, 400_000, 0);
    let source = db.source().build().unwrap();
    let table = trades_config(65_536);
    let handle = open(&source, &table).await;
    // A window of ~1% of the rows, with pair bounds inside equal-timestamp runs.
    let base = 1_767_225_600_000_000i64;
    let window = Window::new(
        Watermark::new(base + 5_000_000, 500_000),
        Watermark::new(base + 5_100_000, 10),
    )
    .unwrap();
    let sql = handle.window_sql(window);
    let explain = db.query(&format!("EXPLAIN indexes = 1 {sql}"));
    let granules = explain
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Granules: "))
        .map(|g| {
            let (a, b) = g.split_once('/').expect("selected/total");
            (a.trim().parse::<u64>().unwrap(), b.trim().parse::<u64>().unwrap())
        })
        .next_back()
        .unwrap_or_else(|| panic!("no primary key analysis in:\n{explain}"));
    assert!(
        granules.0 * 20 < granules.1,
        "primary key did not prune: {granules:?} granules\n{sql}\n{explain}"
    );
    // And the pruned query returns exactly the window's rows.
    let got = positions(&table, &read_all(&handle, window).await);
    let want: Vec<(i64, u64)> = parse_pairs(&db.query(&format!(
        "SELECT toUnixTimestamp64Micro(exchange_timestamp), sequence_number FROM `{}`.bronze_trades FORMAT TSV",
        db.name
    )))
    .into_iter()
    .filter(|&(t, s)| window.contains(Watermark::new(t, s)))
    .collect();
    assert_eq!(got.len(), want.len());
    assert!(!want.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_columns_in_config_order() {
    let db = TestDb::new("columns");
    seed_trades(&db, 1000, 0);
    let source = db.source().build().unwrap();
    let table = TableConfig::builder("trades")
        .source_table(format!("{}.bronze_trades", db.name))
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .columns(["vendor_data", "price"])
        .build()
        .unwrap();
    let handle = open(&source, &table).await;
    let schema = handle.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["vendor_data", "price", "exchange_timestamp", "sequence_number"]
    );
    // The public decoder is the one the read uses.
    let decoder = handle.decoder();
    assert_eq!(decoder.schema(), &schema);
    assert_eq!(decoder.batch_size(), table.batch_size());
    assert!(
        handle
            .window_sql(everything())
            .starts_with(&format!("SELECT {} FROM", decoder.select_list()))
    );
    let batches = read_all(&handle, everything()).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
    assert!(batches.iter().all(|b| b.schema() == schema));

    // With LZ4 on the wire (the loopback front gets none by default), the same rows.
    #[cfg(feature = "lz4")]
    {
        let lz4 = db.source().compression(Compression::Lz4).build().unwrap();
        let again = read_all(&open(&lz4, &table).await, everything()).await;
        assert_eq!(positions(&table, &again).len(), 1000);
    }

    // A window with no rows: no batches, no error.
    let before = Window::new(Watermark::new(0, 0), Watermark::new(1_000_000, 5)).unwrap();
    assert!(read_all(&handle, before).await.is_empty());
}
