//! The `offload-reconcile` binary: its report and its exit status, which is
//! what cron jobs, alerts and CI act on.

mod common;

use std::process::Command;

use common::*;
use offload_reconcile::{Report, Verdict};
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

fn cli(ch: &ClickHouseFront, lake: &Lake, extra: &[&str]) -> (i32, String) {
    let catalog = format!(
        "sqlite://{}?warehouse={}",
        lake.dir.path().join("catalog.db").display(),
        lake.dir.path().join("warehouse").display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_offload-reconcile"))
        .args([
            "--clickhouse-url",
            ch.url(),
            "--catalog",
            &catalog,
            "--namespace",
            "lake",
        ])
        .args(["--table", "trades", "--bucket", "minute", "--sum-column", "price"])
        .args(["--from", "2024-05-01T00:00:00Z", "--to", "2024-05-01T00:02:00Z"])
        .args(extra)
        .env_remove("KAFKA_BOOTSTRAP")
        .output()
        .expect("run offload-reconcile");
    let stdout = String::from_utf8(out.stdout).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().expect("exit code"), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_follows_the_verdict() {
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    insert(&ch, "trades", &trades());
    let lake = Lake::new().await;
    offload(&ch, &lake, &table_config("trades")).await;

    let (code, text) = cli(&ch, &lake, &["--all-buckets"]);
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("table trades: OK"), "{text}");
    assert!(
        text.contains("committed watermark 1714521759000000:119"),
        "read from the sink: {text}"
    );

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
    let (code, json) = cli(&ch, &lake, &["--json"]);
    assert_eq!(code, 1, "{json}");
    let report: Report = serde_json::from_str(&json).expect("--json prints a Report");
    assert_eq!(report.verdict, Verdict::Missing);
    let b = report.tables[0].bucket_at(minute(1)).unwrap();
    assert_eq!((b.verdict, b.findings[0].keys[0].seq), (Verdict::Missing, 1_000));
    // ... unless tolerated.
    let (code, _) = cli(&ch, &lake, &["--missing-tolerance", "1"]);
    assert_eq!(code, 0);

    // Errors are 2, never a pass.
    let (code, text) = cli(&ch, &lake, &["--sequence-column", "nope"]);
    assert_eq!(code, 2, "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_offload-reconcile"))
        .args(["--table", "t", "--from", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
