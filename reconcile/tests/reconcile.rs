//! ClickHouse against Iceberg, end to end: real ClickHouse (chdb), a real
//! Iceberg table written by the real engine, faults planted on purpose.

mod common;

use std::collections::BTreeMap;

use common::*;
use offload_reconcile::{
    BucketSize, Depth, KeyDiffKind, Layer, Reconciler, Report, TableSpec, Thresholds, TimeRange, Verdict,
};
use offload_testkit::ClickHouseFront;

/// 50 trades a minute in minutes 0..=6 and 10 in minute 7 (so the engine's
/// watermark lands inside bucket 7), one Kafka partition, offsets = seq.
fn trades() -> Vec<Trade> {
    let mut rows = Vec::new();
    let mut seq = 0;
    for m in 0..8 {
        for i in 0..if m == 7 { 10 } else { 50 } {
            rows.push(Trade {
                ts: minute(m) + i * SECOND,
                seq,
                price_ticks: 1_000_000 + seq as i64 * 37,
                partition: 0,
                offset: seq as i64,
            });
            seq += 1;
        }
    }
    rows
}

fn spec() -> TableSpec {
    TableSpec::new("trades", "trades", "ts", "seq")
        .iceberg_table("lake.trades")
        .sum_columns(["price", "qty"])
}

async fn reconcile(ch: &ClickHouseFront, lake: &Lake, from: i64, to: i64, spec: TableSpec) -> Report {
    let range = TimeRange::new(from, to, BucketSize::Minute).unwrap();
    Reconciler::new(clickhouse(ch), range)
        .with_iceberg(lake.layer())
        .run(&[spec])
        .await
}

fn verdicts(report: &Report) -> BTreeMap<i64, Verdict> {
    let t = &report.tables[0];
    assert_eq!(t.error, None, "{}", report.render_table(true));
    t.buckets
        .iter()
        .map(|b| ((b.start - BASE) / MINUTE, b.verdict))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_offload_is_ok_and_every_planted_fault_is_named() {
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    insert(&ch, "trades", &trades());
    let lake = Lake::new().await;
    let table = table_config("trades");
    let w = offload(&ch, &lake, &table).await;
    assert_eq!(w, offload_core::Watermark::new(minute(7) + 9 * SECOND, 359));

    // Clean: every fully committed bucket is ok, figure for figure.
    let report = reconcile(&ch, &lake, minute(0), minute(7), spec()).await;
    println!("{}", report.render_table(true));
    assert_eq!(report.verdict, Verdict::Ok);
    assert_eq!(report.exit_code(), 0);
    let t = &report.tables[0];
    assert_eq!((t.totals.clickhouse, t.totals.iceberg), (Some(350), Some(350)));
    assert!(
        t.buckets
            .iter()
            .all(|b| b.verdict == Verdict::Ok && b.findings.is_empty())
    );
    let b0 = &t.buckets[0];
    let mut ch0 = b0.clickhouse_committed.clone().unwrap();
    assert_eq!(
        ch0.distinct_offsets,
        Some(50),
        "ClickHouse counts distinct Kafka offsets"
    );
    ch0.distinct_offsets = None;
    assert_eq!(Some(ch0), b0.iceberg, "every other figure equal");
    assert!(b0.iceberg.as_ref().unwrap().content_fingerprint.unwrap() != 0);
    let names: Vec<&str> = t.content_columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["sym", "price", "qty", "note", "kafka_partition", "kafka_offset"]
    );
    // The bucket holding the watermark, with nothing above it, is judged in full.
    let report = reconcile(&ch, &lake, minute(0), minute(8), spec()).await;
    assert_eq!(verdicts(&report)[&7], Verdict::Ok);
    assert_eq!(report.exit_code(), 0);

    // Plant one fault per bucket.
    // bucket 1: a row that reached ClickHouse after the offload, below the watermark
    insert(
        &ch,
        "trades",
        &[Trade {
            ts: minute(1) + 59 * SECOND + 500_000,
            seq: 10_000,
            price_ticks: 5,
            partition: 0,
            offset: 10_000,
        }],
    );
    // bucket 2: three rows committed to Iceberg a second time
    assert_eq!(commit_again(&ch, &lake, &table, bucket(2), 3).await, 3);
    // bucket 3: a value changed in place (same keys, same count)
    ch.query("ALTER TABLE trades UPDATE price = price + 1 WHERE seq = 160 SETTINGS mutations_sync = 2");
    // bucket 0: expired by ClickHouse's TTL (simulated), Iceberg keeps it
    ch.query(&format!(
        "ALTER TABLE trades DELETE WHERE ts < fromUnixTimestamp64Micro(toInt64({}), 'UTC') AND seq % 2 = 0 SETTINGS mutations_sync = 2",
        minute(1)
    ));
    // bucket 8: a late row beyond the committed watermark; bucket 7: one in the
    // same bucket as the watermark but above it (the bucket is then pending)
    insert(
        &ch,
        "trades",
        &[
            Trade {
                ts: minute(8) + 5 * SECOND,
                seq: 10_001,
                price_ticks: 7,
                partition: 0,
                offset: 10_001,
            },
            Trade {
                ts: minute(7) + 30 * SECOND,
                seq: 10_002,
                price_ticks: 7,
                partition: 0,
                offset: 10_002,
            },
        ],
    );

    let report = reconcile(&ch, &lake, minute(0), minute(9), spec().expired_before(minute(1))).await;
    println!("{}", report.render_table(false));
    let v = verdicts(&report);
    let expect: BTreeMap<i64, Verdict> = [
        (0, Verdict::ExpiredUpstream),
        (1, Verdict::Missing),
        (2, Verdict::Duplicated),
        (3, Verdict::Diverged),
        (4, Verdict::Ok),
        (5, Verdict::Ok),
        (6, Verdict::Ok),
        (7, Verdict::NotYetOffloaded),
        (8, Verdict::NotYetOffloaded),
    ]
    .into();
    assert_eq!(v, expect);
    assert_eq!(report.verdict, Verdict::Missing);
    assert_eq!(report.exit_code(), 1);
    let t = &report.tables[0];

    // The missing row, by key.
    let f = &t.buckets[1].findings;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].verdict, f[0].layer, f[0].rows),
        (Verdict::Missing, Layer::Iceberg, 1)
    );
    assert_eq!(f[0].keys.len(), 1);
    assert_eq!(
        (f[0].keys[0].ts, f[0].keys[0].seq, f[0].keys[0].kind),
        (minute(1) + 59_500_000, 10_000, KeyDiffKind::Missing)
    );

    // The duplicates, by key: seq 100, 101, 102 (the first three of minute 2).
    let f = &t.buckets[2].findings;
    assert_eq!((f[0].verdict, f[0].rows), (Verdict::Duplicated, 3), "{f:?}");
    let dup: Vec<(u64, KeyDiffKind, u64)> = f[0]
        .keys
        .iter()
        .map(|k| (k.seq, k.kind, k.downstream_copies))
        .collect();
    assert_eq!(
        dup,
        [
            (100, KeyDiffKind::Duplicated, 2),
            (101, KeyDiffKind::Duplicated, 2),
            (102, KeyDiffKind::Duplicated, 2)
        ]
    );
    let b2 = &t.buckets[2];
    assert_eq!(
        (
            b2.clickhouse_committed.as_ref().unwrap().rows,
            b2.iceberg.as_ref().unwrap().rows
        ),
        (50, 53)
    );

    // The changed row, by key, and the sum that moved.
    let b3 = &t.buckets[3];
    assert_eq!(
        b3.clickhouse.as_ref().unwrap().rows,
        b3.iceberg.as_ref().unwrap().rows
    );
    let f = &b3.findings;
    assert_eq!((f[0].verdict, f[0].rows), (Verdict::Diverged, 1), "{f:?}");
    assert_eq!((f[0].keys[0].seq, f[0].keys[0].kind), (160, KeyDiffKind::Changed));
    let (ch_sum, ice_sum) = (
        b3.clickhouse.as_ref().unwrap().sums["price"],
        b3.iceberg.as_ref().unwrap().sums["price"],
    );
    assert_eq!(ch_sum.unscaled - ice_sum.unscaled, 10_000, "price + 1 at scale 4");

    // Expired upstream: ClickHouse lost 25 rows to "TTL", Iceberg still has them.
    let b0 = &t.buckets[0];
    assert_eq!(
        (
            b0.clickhouse.as_ref().unwrap().rows,
            b0.iceberg.as_ref().unwrap().rows
        ),
        (25, 50)
    );

    // Beyond the watermark: in ClickHouse, not committed, not in Iceberg.
    let b8 = &t.buckets[8];
    assert_eq!(
        (
            b8.clickhouse.as_ref().unwrap().rows,
            b8.clickhouse_committed.as_ref().unwrap().rows,
            b8.iceberg.as_ref().unwrap().rows
        ),
        (1, 0, 0)
    );

    // The report survives JSON, and the human table names each problem bucket.
    let json = report.to_json();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    let text = report.render_table(false);
    for needle in [
        "2024-05-01T00:01:00.000000Z",
        "missing",
        "duplicated",
        "diverged",
        "seq",
        "#10000 missing",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }

    // Tolerances: one missing row tolerated leaves duplicated as the worst.
    let range = TimeRange::new(minute(1), minute(3), BucketSize::Minute).unwrap();
    let report = Reconciler::new(clickhouse(&ch), range)
        .with_iceberg(lake.layer())
        .with_thresholds(Thresholds::default().missing_rows(1))
        .run(&[spec()])
        .await;
    assert_eq!(
        verdicts(&report),
        [(1, Verdict::Ok), (2, Verdict::Duplicated)].into()
    );
    assert!(report.tables[0].buckets[0].findings[0].tolerated);

    // Counts only: duplicates and missing rows still show, changed values cannot.
    for (size, from) in [(BucketSize::Minute, "scan"), (BucketSize::Day, "manifests")] {
        let range = TimeRange::new(minute(0), minute(9), size).unwrap();
        let report = Reconciler::new(clickhouse(&ch), range)
            .with_iceberg(lake.layer())
            .with_depth(Depth::Counts)
            .run(&[spec()])
            .await;
        println!("{}", report.render_table(true));
        let t = &report.tables[0];
        assert_eq!(t.iceberg_counts_from.as_deref(), Some(from));
        assert_eq!(t.totals.iceberg, Some(363), "350 + 3 duplicates + 10 of minute 7");
        if size == BucketSize::Minute {
            let v = verdicts(&report);
            assert_eq!(
                (v[&1], v[&2], v[&3]),
                (Verdict::Missing, Verdict::Duplicated, Verdict::Ok)
            );
        } else {
            // One day holds every fault; by count alone Iceberg has 27 rows more
            // (25 expired in ClickHouse + 3 committed twice - 1 missing).
            assert_eq!(report.verdict, Verdict::Duplicated);
            assert_eq!(t.buckets[0].findings[0].rows, 27);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_is_an_error_verdict_not_a_pass() {
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    let lake = Lake::new().await;
    let range = TimeRange::new(minute(0), minute(1), BucketSize::Minute).unwrap();
    let r = Reconciler::new(clickhouse(&ch), range)
        .with_iceberg(lake.layer())
        .run(&[
            TableSpec::new("nope", "no_such_table", "ts", "seq"),
            TableSpec::new("badcol", "trades", "ts", "no_such_column"),
            TableSpec::new("noice", "trades", "ts", "seq").iceberg_table("lake.missing"),
            TableSpec::new("float_sum", "trades", "ts", "seq").sum_columns(["sym"]),
        ])
        .await;
    println!("{}", r.render_table(true));
    assert_eq!(r.verdict, Verdict::Error);
    assert_eq!(r.exit_code(), 2);
    for t in &r.tables {
        assert_eq!(t.verdict, Verdict::Error, "{}", t.table);
        assert!(t.error.is_some());
    }
    assert!(r.tables[1].error.as_ref().unwrap().contains("no_such_column"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_reconcile_quickly() {
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    // 1,000,000 trades over 100 minutes.
    ch.query(&format!(
        "INSERT INTO trades SELECT fromUnixTimestamp64Micro(toInt64({BASE} + number * 6000), 'UTC'), number, \
         concat('S', toString(number % 7)), toDecimal64(number, 4) / 3, toInt32(number % 1000), \
         if(number % 3 = 0, NULL, toString(number)), toInt32(number % 4), toInt64(intDiv(number, 4)) \
         FROM numbers(1000000)"
    ));
    let lake = Lake::new().await;
    let table = table_config("trades");
    let started = std::time::Instant::now();
    offload(&ch, &lake, &table).await;
    println!("offload of 1M rows: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let report = reconcile(&ch, &lake, minute(0), minute(99), spec()).await;
    println!(
        "reconcile of 1M rows: {:?}\n{}",
        started.elapsed(),
        report.render_table(false)
    );
    assert_eq!(report.verdict, Verdict::Ok);
    assert_eq!(report.tables[0].totals.iceberg, Some(990_000));
}

/// `offload` puts a table named without a namespace in
/// `offload_sink_iceberg::DEFAULT_NAMESPACE` (`offload`); reconciling with the
/// defaults must look there. (The reconcile CLI looked in `default.<name>`, so
/// by default it did not find what `offload` wrote.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_what_offload_wrote_with_the_defaults() {
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    insert(&ch, "trades", &trades());
    let lake = Lake::with_defaults().await;
    let table = table_config("trades");
    offload(&ch, &lake, &table).await;
    let written = iceberg::TableIdent::from_strs(["offload", "trades"]).unwrap();
    assert!(
        lake.sink.catalog().table_exists(&written).await.unwrap(),
        "the sink writes bare names into `offload`"
    );

    let range = TimeRange::new(minute(0), minute(7), BucketSize::Minute).unwrap();
    let report = Reconciler::new(clickhouse(&ch), range)
        .with_iceberg(offload_reconcile::IcebergLayer::new(lake.sink.catalog().clone()))
        .run(&[TableSpec::from_table_config(&table).sum_columns(["price"])])
        .await;
    println!("{}", report.render_table(true));
    let t = &report.tables[0];
    assert_eq!(t.error, None);
    assert_eq!(t.iceberg_table.as_deref(), Some("offload.trades"));
    assert_eq!((t.totals.clickhouse, t.totals.iceberg), (Some(350), Some(350)));
    assert_eq!(report.verdict, Verdict::Ok);
}

/// Late rows: the report says which `missing` buckets the engine's late-row
/// sweep repairs (inside `late_horizon` below the committed watermark) and
/// which it does not (older, or the sweep off), without changing a verdict;
/// the next engine run then repairs exactly the first kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_buckets_name_what_the_sweep_repairs() {
    use std::sync::Arc;
    use std::time::Duration;

    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    insert(&ch, "trades", &trades());
    let lake = Lake::new().await;
    // Watermark 7m09s, horizon 150 s, 30 s sweep buckets: the sweep starts at
    // the 30 s bucket holding 4m39s, i.e. 4m30s (inside reconcile's minute 4).
    let config = |horizon: Duration| {
        offload_core::TableConfig::builder("trades")
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(Duration::ZERO)
            .late_horizon(horizon)
            .sweep_bucket(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let table = config(Duration::from_secs(150));
    let w = offload(&ch, &lake, &table).await;
    assert_eq!(w, offload_core::Watermark::new(minute(7) + 9 * SECOND, 359));
    let edge = minute(4) + 30 * SECOND;

    // Four rows arrive late, below the watermark: two older than the horizon
    // (minutes 1 and 4), two inside it (minutes 4 and 5).
    let late = |ts: i64, seq: u64| Trade {
        ts,
        seq,
        price_ticks: 9,
        partition: 0,
        offset: seq as i64,
    };
    insert(
        &ch,
        "trades",
        &[
            late(minute(1) + 10_500_000, 20_001),
            late(minute(4) + 10_500_000, 20_002),
            late(minute(4) + 50_500_000, 20_003),
            late(minute(5) + 30_500_000, 20_004),
        ],
    );
    let run = |spec: TableSpec| {
        let (ch, lake) = (&ch, &lake);
        async move { reconcile(ch, lake, minute(0), minute(7), spec).await }
    };
    let expect_missing = |report: &Report, buckets: &[i64]| {
        let v = verdicts(report);
        for (m, verdict) in &v {
            let want = if buckets.contains(m) {
                Verdict::Missing
            } else {
                Verdict::Ok
            };
            assert_eq!(*verdict, want, "minute {m}\n{}", report.render_table(true));
        }
        // The verdict and exit code are the reconciliation's, hints or not.
        assert_eq!(report.verdict, Verdict::Missing);
        assert_eq!(report.exit_code(), 1);
    };

    // From the engine's config: both hints, split at the sweep's edge.
    let report = run(TableSpec::from_table_config(&table)).await;
    let text = report.render_table(false);
    println!("{text}");
    expect_missing(&report, &[1, 4, 5]);
    let t = &report.tables[0];
    assert_eq!(t.late_horizon_micros, Some(150 * SECOND));
    assert_eq!(t.late_repairable_from, Some(edge));
    assert_eq!(
        (t.late_repairable_buckets, t.late_repairable_rows),
        (2, 2),
        "minutes 4 (its key after the edge) and 5"
    );
    assert_eq!(
        (t.late_unrepairable_buckets, t.late_unrepairable_rows),
        (2, 2),
        "minutes 1 and 4 (its key before the edge)"
    );
    for needle in [
        "2 missing buckets are within late_horizon (2m 30s) of the committed watermark (2 row(s) from 2024-05-01T00:04:30",
        "the next `offload run` sweep repairs them (rows that arrived late)",
        "2 missing buckets are older than late_horizon (2m 30s; 2 row(s) before 2024-05-01T00:04:30",
        "not repaired by the sweep; raise late_horizon and run again, or backfill",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let json = report.to_json();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tj = &value["tables"][0];
    assert_eq!(
        (
            &tj["late_repairable_buckets"],
            &tj["late_repairable_rows"],
            &tj["late_unrepairable_buckets"],
            &tj["late_unrepairable_rows"],
            &tj["late_horizon_micros"],
            &tj["late_repairable_from"],
        ),
        (
            &2.into(),
            &2.into(),
            &2.into(),
            &2.into(),
            &(150 * SECOND).into(),
            &edge.into()
        ),
        "{json}"
    );

    // The sweep off (late_horizon 0): nothing repairable, and it says why.
    let report = run(TableSpec::from_table_config(&config(Duration::ZERO))).await;
    let text = report.render_table(false);
    expect_missing(&report, &[1, 4, 5]);
    let t = &report.tables[0];
    assert_eq!((t.late_horizon_micros, t.late_repairable_from), (Some(0), None));
    assert_eq!((t.late_repairable_buckets, t.late_repairable_rows), (0, 0));
    assert_eq!((t.late_unrepairable_buckets, t.late_unrepairable_rows), (3, 4));
    assert!(!text.contains("sweep repairs them"), "{text}");
    assert!(
        text.contains(
            "3 missing buckets are not repaired by the sweep (4 row(s); late_horizon is 0s, the sweep is off)"
        ),
        "{text}"
    );

    // A spec that does not know the engine's horizon claims nothing.
    let report = run(spec()).await;
    expect_missing(&report, &[1, 4, 5]);
    let t = &report.tables[0];
    assert_eq!(t.late_horizon_micros, None);
    assert_eq!((t.late_repairable_buckets, t.late_unrepairable_buckets), (0, 0));
    assert!(!report.render_table(false).contains("late_horizon"));

    // The hint is true: the next engine run repairs the two rows inside the
    // horizon and only those.
    let store = Arc::new(offload_core::memory::MemoryStore::new(offload_core::SystemClock));
    let engine = offload_core::Offloader::builder(source(&ch), lake.sink.clone(), store)
        .engine_id("reconcile-tests")
        .build()
        .unwrap();
    let summary = engine.run_once(&table).await.unwrap();
    let sweep = summary.sweep.expect("the run swept");
    assert_eq!((summary.rows, sweep.repaired_rows), (0, 2), "{sweep:?}");
    let report = run(TableSpec::from_table_config(&table)).await;
    println!("{}", report.render_table(false));
    expect_missing(&report, &[1, 4]);
    let t = &report.tables[0];
    assert_eq!((t.late_repairable_buckets, t.late_repairable_rows), (0, 0));
    assert_eq!((t.late_unrepairable_buckets, t.late_unrepairable_rows), (2, 2));
}
