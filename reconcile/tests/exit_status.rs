//! What the `offload reconcile` command prints and exits with, through the
//! library calls it makes: the report (table or JSON) and the exit status,
//! which is what cron jobs, alerts and CI act on.

mod common;

use common::*;
use offload_core::Sink;
use offload_reconcile::{
    BucketSize, Format, Reconciler, Report, TableSpec, Thresholds, TimeRange, Verdict, parse_time,
};
use offload_testkit::ClickHouseFront;

fn trades() -> Vec<Trade> {
    (0..120u64)
        .map(|seq| Trade {
            ts: minute(seq as i64 / 40) + (seq as i64 % 40) * SECOND,
            seq,
            price_ticks: 10_000 + seq as i64,
            partition: 0,
            offset: seq as i64,
        })
        .collect()
}

/// What the command does for `--table trades --bucket minute --sum-column price
/// --from 2024-05-01T00:00:00Z --to 2024-05-01T00:02:00Z`: the spec from the
/// table's config, the committed watermark read through the sink's handle.
async fn reconcile(
    ch: &ClickHouseFront,
    lake: &Lake,
    spec: impl Fn(TableSpec) -> TableSpec,
    t: Thresholds,
) -> Report {
    let now = 0;
    let range = TimeRange::new(
        parse_time("2024-05-01T00:00:00Z", now).unwrap(),
        parse_time("2024-05-01T00:02:00Z", now).unwrap(),
        BucketSize::Minute,
    )
    .unwrap();
    let handle = lake.sink.open(&table_config("trades")).await.unwrap();
    let spec = spec(TableSpec::from_sink_table(handle).sum_columns(["price"]));
    Reconciler::new(clickhouse(ch), range)
        .with_iceberg(lake.layer())
        .with_thresholds(t)
        .run(&[spec])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_follows_the_verdict() {
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    insert(&ch, "trades", &trades());
    let lake = Lake::new().await;
    offload(&ch, &lake, &table_config("trades")).await;

    let report = reconcile(&ch, &lake, |s| s, Thresholds::default()).await;
    let text = report.render(Format::Table { all_buckets: true });
    println!("{text}");
    assert_eq!(report.exit_code(), 0, "{text}");
    assert!(text.contains("table trades: OK"), "{text}");
    assert!(
        text.contains("committed watermark 1714521759000000:119"),
        "read from the sink: {text}"
    );
    assert!(text.contains("iceberg lake.trades"), "the resolved name: {text}");
    // Only the buckets that are not ok, unless asked.
    let short = report.render(Format::Table { all_buckets: false });
    assert!(short.contains("every bucket ok"), "{short}");

    // One late row below the watermark: missing, exit 1, named in JSON.
    insert(
        &ch,
        "trades",
        &[Trade {
            ts: minute(1) + 50 * SECOND,
            seq: 1_000,
            price_ticks: 1,
            partition: 0,
            offset: 1_000,
        }],
    );
    let report = reconcile(&ch, &lake, |s| s, Thresholds::default()).await;
    assert_eq!(report.exit_code(), 1);
    let json = report.render(Format::Json);
    let back: Report = serde_json::from_str(&json).expect("Format::Json prints a Report");
    assert_eq!(back, report);
    assert_eq!(back.verdict, Verdict::Missing);
    let b = back.tables[0].bucket_at(minute(1)).unwrap();
    assert_eq!((b.verdict, b.findings[0].keys[0].seq), (Verdict::Missing, 1_000));
    // ... unless tolerated.
    let report = reconcile(&ch, &lake, |s| s, Thresholds::default().missing_rows(1)).await;
    assert_eq!(report.exit_code(), 0);

    // Errors are 2, never a pass.
    let report = reconcile(
        &ch,
        &lake,
        |_| TableSpec::new("trades", "trades", "ts", "nope").iceberg_table("lake.trades"),
        Thresholds::default(),
    )
    .await;
    assert_eq!(
        report.exit_code(),
        2,
        "{}",
        report.render(Format::Table { all_buckets: true })
    );
    let e = parse_time("yesterday", 0).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}
