//! The `status` and `reconcile` subcommands against the REAL program and
//! servers: what they print, and the exit status cron jobs and alerts act on.

mod support;

use offload_reconcile::{Report, Verdict};
use serde_json::Value;
use support::{Catalog, Lake, Run, Store, front};

fn offload(lake: &Lake, subcommand: &str, args: &[&str]) -> Run {
    let out = lake
        .command(&lake.config(), None, subcommand, args)
        .output()
        .unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn status_json(lake: &Lake) -> (Run, Value) {
    let r = offload(lake, "status", &["--json"]);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.describe()));
    let table = doc["tables"][0].clone();
    (r, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_committed_watermark_the_last_run_and_failures() {
    let s = Lake::new("status", Catalog::Sqlite, Store::File);
    // Before any run: no table, no runs, exit 0.
    let (r, t) = status_json(&s);
    assert!(r.status.success(), "{}", r.describe());
    assert_eq!(t["table"], "trades");
    assert!(t["committed"].is_null() && t["files"].is_null(), "{t}");
    assert_eq!(t["consecutive_failures"], 0);

    s.insert(0, 2_000, 5, 10_000);
    s.run_ok();
    let (r, t) = status_json(&s);
    assert!(r.status.success(), "{}", r.describe());
    let committed = s.state().await.committed.unwrap();
    assert_eq!(t["committed"]["timestamp_micros"], committed.timestamp_micros());
    assert_eq!(t["committed"]["sequence"], committed.sequence());
    assert_eq!(t["store_watermark"], t["committed"]);
    assert!(t["lag_seconds"].as_f64().unwrap() >= 2.0, "{t}");
    assert_eq!(t["last_run"]["status"], "success");
    assert_eq!(t["last_run"]["rows"], 2_000);
    assert_eq!(t["files"], s.data_files().await as u64);
    assert_eq!(t["snapshots"], s.window_chain().await as u64);
    assert_eq!(t["ok"], true);

    // A failing run: status says so, and exits 1.
    front().query(&format!("RENAME TABLE {0}.trades TO {0}.trades_away", s.db));
    assert_eq!(s.run(None).status.code(), Some(1));
    let (r, t) = status_json(&s);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert_eq!(t["last_run"]["status"], "failed");
    assert_eq!(t["consecutive_failures"], 1);
    assert!(
        t["last_run"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{t}"
    );
    assert_eq!(
        t["committed"]["timestamp_micros"],
        committed.timestamp_micros(),
        "unchanged"
    );
    let text = offload(&s, "status", &[]);
    assert_eq!(text.status.code(), Some(1));
    assert!(
        text.stdout.contains("trades")
            && text.stdout.contains("failed")
            && text.stdout.contains("last error"),
        "{}",
        text.describe()
    );
    front().query(&format!("RENAME TABLE {0}.trades_away TO {0}.trades", s.db));
    s.run_ok();
    assert_eq!(status_json(&s).1["consecutive_failures"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_exit_status_follows_the_verdict() {
    let s = Lake::new("reconcile_cli", Catalog::Sqlite, Store::File);
    s.insert(0, 2_000, 5, 10 * 60_000);
    s.drain();
    let (lo, hi, _) = s.source_span();
    let (from, to) = (lo.to_string(), (hi + 1).to_string());
    let range = ["--from", from.as_str(), "--to", to.as_str(), "--bucket", "minute"];

    let r = offload(&s, "reconcile", &[&range[..], &["--all-buckets"]].concat());
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    assert!(r.stdout.contains("trades"), "{}", r.describe());

    // One late row below the watermark: missing, exit 1, named in the JSON report.
    front().query(&format!(
        "INSERT INTO {}.trades SELECT ts, 1000000, symbol, price, conditions, vendor, trade_id
            FROM {0}.trades ORDER BY ts, seq LIMIT 1",
        s.db
    ));
    let r = offload(&s, "reconcile", &[&range[..], &["--json"]].concat());
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    let report: Report = serde_json::from_str(&r.stdout).expect("--json prints a Report");
    assert_eq!(report.verdict, Verdict::Missing);
    let keys: Vec<u64> = report.tables[0]
        .buckets
        .iter()
        .flat_map(|b| &b.findings)
        .flat_map(|f| &f.keys)
        .map(|k| k.seq)
        .collect();
    assert_eq!(keys, [1_000_000]);
    // ... unless tolerated.
    let r = offload(
        &s,
        "reconcile",
        &[&range[..], &["--missing-tolerance", "1"]].concat(),
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());

    // Errors are 2, never a pass: an unknown column, a time that is not one.
    let bad = s.dir.join("bad-column.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(s.config())
            .unwrap()
            .replace("sequence_column = \"seq\"", "sequence_column = \"nope\""),
    )
    .unwrap();
    let out = s.command(&bad, None, "reconcile", &range).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = offload(&s, "reconcile", &["--from", "yesterday"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
}
