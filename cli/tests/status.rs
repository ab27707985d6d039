//! `offload status` against the REAL program and servers (ClickHouse behind
//! the chdb front, Iceberg on a local warehouse, the file store): the verdict
//! line, the exit status scripts act on, and every figure of `--json`, after
//! real runs, failures, late rows and snapshots maintenance should have expired.

mod support;

use serde_json::Value;
use support::{Catalog, Lake, Run, Store, front};

fn status(lake: &Lake, args: &[&str]) -> Run {
    let out = lake
        .command(&lake.config(), None, "status", args)
        .output()
        .unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `status --json <args>`: the run, the whole document and its one table.
fn status_json(lake: &Lake, args: &[&str]) -> (Run, Value, Value) {
    let r = status(lake, &[&["--json"], args].concat());
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.describe()));
    let table = doc["tables"][0].clone();
    (r, doc, table)
}

/// The verdict is the same in text and JSON, and the exit status follows it.
fn assert_verdict(lake: &Lake, args: &[&str], attention: bool, summary_has: &str) -> Value {
    let (r, doc, t) = status_json(lake, args);
    assert_eq!(r.status.code(), Some(i32::from(attention)), "{}", r.describe());
    assert_eq!(
        doc["verdict"],
        if attention { "ATTENTION" } else { "OK" },
        "{doc}"
    );
    let summary = doc["summary"].as_str().unwrap();
    assert!(summary.contains(summary_has), "{summary}");
    assert_eq!(t["ok"], !attention, "{t}");
    let text = status(lake, args);
    assert_eq!(text.status.code(), r.status.code(), "{}", text.describe());
    assert_eq!(text.stdout.lines().next(), Some(summary), "{}", text.describe());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_after_runs_and_failures_says_whether_anything_needs_you() {
    let s = Lake::new("status", Catalog::Sqlite, Store::File);
    // Before any run: no table, no runs, nothing to sweep, nothing needs you.
    let t = assert_verdict(&s, &[], false, "OK  1 table, nothing needs you");
    assert!(
        t["committed"].is_null() && t["files"].is_null() && t["rows"].is_null(),
        "{t}"
    );
    assert_eq!(t["consecutive_failures"], 0);
    assert_eq!(t["late_rows"]["checked"], "nothing_committed");

    s.insert(0, 2_000, 5, 10_000);
    s.run_ok();
    let t = assert_verdict(&s, &[], false, "OK  1 table, nothing needs you");
    let committed = s.state().await.committed.unwrap();
    assert_eq!(t["committed"]["timestamp_micros"], committed.timestamp_micros());
    assert_eq!(t["committed"]["sequence"], committed.sequence());
    assert_eq!(t["store_watermark"], t["committed"]);
    let lag = t["lag_seconds"].as_f64().unwrap();
    assert!((10.0..600.0).contains(&lag), "{t}");
    assert_eq!(t["last_run"]["status"], "success");
    assert_eq!(t["last_run"]["rows"], 2_000);
    assert!(t["last_run"]["duration_seconds"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["last_run"]["started_at"].as_str().unwrap() <= t["last_run"]["at"].as_str().unwrap());
    assert_eq!(t["rows"], 2_000, "total-records of the current snapshot");
    assert_eq!(t["files"], s.data_files().await as u64);
    assert_eq!(t["snapshots"], s.window_chain().await as u64);
    assert_eq!(t["late_rows"]["checked"], "counted");
    assert_eq!(t["late_rows"]["pending"], 0);
    assert_eq!(t["late_rows"]["beyond_horizon"], 0);
    assert_eq!(t["maintenance"]["overdue"], false);
    assert_eq!(t["problems"], serde_json::json!([]));

    // One failure is the retry's business: shown, not a reason to call anyone.
    // (--no-source: with its source table gone, status could not count late
    // rows either, and would say so; checked last.)
    front().query(&format!("RENAME TABLE {0}.trades TO {0}.trades_away", s.db));
    assert_eq!(s.run(None).status.code(), Some(1));
    let t = assert_verdict(&s, &["--no-source"], false, "nothing needs you");
    assert_eq!(t["last_run"]["status"], "failed");
    assert_eq!(t["consecutive_failures"], 1);
    assert_eq!(t["late_rows"]["checked"], "skipped");
    assert!(
        t["last_run"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{t}"
    );
    let text = status(&s, &["--no-source"]);
    assert!(
        text.stdout.contains("failed")
            && text.stdout.contains("last error")
            && text.stdout.contains("1 in a row"),
        "{}",
        text.describe()
    );
    // Three in a row: the alert's threshold, and the verdict's.
    for _ in 0..2 {
        assert_eq!(s.run(None).status.code(), Some(1));
    }
    let t = assert_verdict(
        &s,
        &["--no-source"],
        true,
        "ATTENTION  trades: 3 consecutive failures",
    );
    assert_eq!(t["consecutive_failures"], 3);
    assert_eq!(
        t["committed"]["timestamp_micros"],
        committed.timestamp_micros(),
        "unchanged"
    );
    // Reading ClickHouse, status cannot count late rows of a missing table: it says so.
    let t = assert_verdict(&s, &[], true, "cannot read late rows");
    assert_eq!(t["late_rows"]["checked"], "skipped");

    front().query(&format!("RENAME TABLE {0}.trades_away TO {0}.trades", s.db));
    s.run_ok();
    let t = assert_verdict(&s, &[], false, "nothing needs you");
    assert_eq!(t["consecutive_failures"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_late_rows_the_next_sweep_repairs_and_those_beyond_the_horizon() {
    let s = Lake::new("status_late", Catalog::Sqlite, Store::File);
    s.insert(0, 2_000, 5, 10_000);
    s.run_ok();
    // Rows arriving two hours late: below the watermark, inside the 3 h horizon.
    s.insert_late(10_000, 300, support::HOURS_LATE_MS);
    let t = assert_verdict(&s, &[], false, "nothing needs you");
    assert_eq!(t["late_rows"]["pending"], 300, "{t}");
    assert_eq!(t["late_rows"]["beyond_horizon"], 0, "{t}");
    assert!(t["late_rows"]["buckets_differing"].as_u64().unwrap() >= 1, "{t}");
    let text = status(&s, &[]);
    assert!(text.stdout.contains("300 pending"), "{}", text.describe());
    // Without ClickHouse, nothing is counted.
    let (_, _, t) = status_json(&s, &["--no-source"]);
    assert_eq!(t["late_rows"]["checked"], "skipped");

    // Rows four hours late: beyond the horizon, never offloaded: a person must act.
    s.insert_beyond(20_000, 50);
    let t = assert_verdict(
        &s,
        &[],
        true,
        "ATTENTION  trades: 50 rows arrived older than late_horizon and are not offloaded",
    );
    assert_eq!(t["late_rows"]["pending"], 300, "{t}");
    assert_eq!(t["late_rows"]["beyond_horizon"], 50, "{t}");

    // The next run's sweep repairs the late rows; the ones beyond stay reported.
    let r = s.run_ok();
    assert!(r.stdout.contains("300 repaired"), "{}", r.describe());
    let (_, _, t) = status_json(&s, &[]);
    assert_eq!(t["late_rows"]["pending"], 0, "{t}");
    assert_eq!(t["late_rows"]["beyond_horizon"], 50, "{t}");
    assert_eq!(t["rows"], 2_300, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_lag_and_maintenance_overdue_until_maintain_runs() {
    let mut s = Lake::new("status_maint", Catalog::Sqlite, Store::File);
    // Expiry would keep two snapshots and nothing older than 0 s, and
    // maintenance is due every millisecond: every older snapshot is overdue.
    s.maintenance =
        "interval = \"1ms\"\nsnapshot_retention = \"0s\"\nkeep_snapshots = 2\ndelete_grace = \"0s\"".into();
    // Rows about two hours old: the committed watermark lags by 1h 57m and some seconds.
    for k in 0..4u64 {
        s.insert(k * 100, 100, 5, support::HOURS_LATE_MS - 60_000 * k as i64);
        s.run_ok();
    }
    let t = assert_verdict(
        &s,
        &[],
        true,
        "ATTENTION  trades: lag 1h 57m > 30m, maintenance overdue (2 snapshots past retention)",
    );
    assert_eq!(t["snapshots"], 4, "{t}");
    assert_eq!(t["maintenance"]["overdue"], true, "{t}");
    assert_eq!(t["maintenance"]["overdue_snapshots"], 2, "{t}");

    let m = s.maintain_ok(&[]);
    assert_eq!(m.snapshots_expired, 2, "{m:?}");
    let t = assert_verdict(&s, &[], true, "ATTENTION  trades: lag 1h 57m > 30m");
    assert_eq!(t["maintenance"]["overdue_snapshots"], 0, "{t}");
    let problems: Vec<&str> = t["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems, ["lag 1h 57m > 30m"], "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_the_table_needs_a_person() {
    let s = Lake::new("status_ahead", Catalog::Sqlite, Store::File);
    s.insert(0, 1_000, 5, 10_000);
    s.run_ok();
    assert_verdict(&s, &[], false, "nothing needs you");
    // The catalog lost (restored from an old backup, recreated): the store
    // still claims the window, the table holds nothing. Runs are refused.
    std::fs::remove_file(s.dir.join("catalog.db")).unwrap();
    let r = s.run(None);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    let t = assert_verdict(&s, &[], true, "ATTENTION  trades: store ahead of Iceberg (");
    assert!(t["committed"].is_null(), "{t}");
    assert!(!t["store_watermark"].is_null(), "{t}");
}
