//! The `reconcile` and `maintain` subcommands (and `run`'s scheduled
//! maintenance) against the REAL program and servers: what they print, and
//! the exit status cron jobs and alerts act on. `status` is in `status.rs`.

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

/// The figures of a `maintain` line, by their words.
fn figures(line: &str) -> std::collections::BTreeMap<String, f64> {
    // "compacted 1 partitions (6 files -> 1 files, 600 rows, 0.1 MiB -> 0.0 MiB),
    //  manifests 7 -> 2, expired 6 snapshots, deleted 12 files, 3 orphans"
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = std::collections::BTreeMap::new();
    let mut i = 0;
    let num = |w: &str| w.parse::<f64>().ok();
    while i < words.len() {
        match (words[i], words.get(i + 1).copied()) {
            ("compacted", Some(n)) => out.insert("partitions".into(), num(n).unwrap()),
            ("expired", Some(n)) => out.insert("expired".into(), num(n).unwrap()),
            ("deleted", Some(n)) => out.insert("deleted".into(), num(n).unwrap()),
            (n, Some("orphans")) => out.insert("orphans".into(), num(n).unwrap()),
            (n, Some("rows")) => out.insert("rows".into(), num(n).unwrap()),
            ("manifests", Some(a)) => {
                out.insert("manifests_before".into(), num(a).unwrap());
                out.insert("manifests_after".into(), num(words[i + 3]).unwrap())
            }
            (n, Some("files")) if words.get(i + 2) == Some(&"->") => {
                out.insert("files_rewritten".into(), num(n).unwrap());
                out.insert("files_written".into(), num(words[i + 3]).unwrap())
            }
            _ => None,
        };
        i += 1;
    }
    out
}

/// Six small windows in yesterday's (UTC) day partition, one run each, then
/// one of today's: yesterday is closed, with six files to compact.
fn closed_day_of_six_windows(name: &str) -> Lake {
    let s = Lake::new(name, Catalog::Sqlite, Store::File);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let since_midnight = now_ms % 86_400_000;
    assert!(since_midnight > 60_000, "too close to midnight UTC; rerun");
    for k in 0..6i64 {
        s.insert(
            k as u64 * 100,
            100,
            5,
            since_midnight + 6 * 3_600_000 - k * 600_000,
        );
        s.run_ok();
    }
    s.insert(600, 100, 5, 10_000);
    s.run_ok();
    assert_eq!(files(&s), (7, 7), "seven windows, one file and one snapshot each");
    s
}

/// Live data files and snapshots, as `offload status --json` reports them.
fn files(s: &Lake) -> (u64, u64) {
    let r = offload(s, "status", &["--json"]);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.describe()));
    (
        doc["tables"][0]["files"].as_u64().unwrap(),
        doc["tables"][0]["snapshots"].as_u64().unwrap(),
    )
}

/// Expire everything but two snapshots, delete at once, compact from two files.
const FLAGS: [&str; 10] = [
    "--snapshot-retention",
    "0s",
    "--keep-snapshots",
    "2",
    "--delete-grace",
    "0s",
    "--orphan-grace",
    "0s",
    "--min-input-files",
    "2",
];

/// `offload maintain FLAGS` with `point` armed; it must abort there.
fn maintain_crashing_at(s: &Lake, point: &str) {
    let cfg = s.config();
    let out = s.command(&cfg, Some(point), "maintain", &FLAGS).output().unwrap();
    let r = Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.signal(), Some(support::SIGABRT), "{point}: {}", r.describe());
    let name = point.split('=').next().unwrap();
    assert!(
        r.stderr.contains(&format!("fault point {name} reached")),
        "{}",
        r.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_compacts_a_closed_day_expires_snapshots_and_reconcile_stays_ok() {
    let s = closed_day_of_six_windows("maintain_cli");
    let flags = FLAGS;
    // A crash before maintenance starts, and one after the compaction's
    // metadata is written but before the catalog swaps to it: nothing changed.
    for point in ["sink.maintain.before", "maintain.metadata"] {
        maintain_crashing_at(&s, point);
        assert_eq!(files(&s), (7, 7), "{point}: nothing committed");
    }
    // The crashed compaction's output is on disk, referenced by nothing.
    assert_eq!(s.data_files().await, 8);

    let r = offload(&s, "maintain", &flags);
    assert!(r.status.success(), "{}", r.describe());
    let line = r.stdout.trim();
    assert!(line.starts_with("trades: compacted "), "{}", r.describe());
    let f = figures(line);
    eprintln!("maintain: {line}\n{f:?}");
    assert_eq!(f["partitions"], 1.0, "{line}");
    assert_eq!((f["files_rewritten"], f["files_written"]), (6.0, 1.0), "{line}");
    assert_eq!(f["rows"], 600.0, "{line}");
    assert_eq!(f["expired"], 6.0, "{line}");
    assert!(
        f["deleted"] >= 6.0,
        "at least the expired snapshots' manifest lists: {line}"
    );
    assert!(f["orphans"] >= 1.0, "the crashed compaction's output: {line}");
    let (live, snapshots) = files(&s);
    assert_eq!(
        (live, snapshots),
        (2, 2),
        "one file per day; the replace and the last window"
    );
    // The orphaned output is gone, the compacted file is there; yesterday's
    // six stay while the last window's snapshot (kept) reads them.
    assert_eq!(s.data_files().await, 8);

    // Again: nothing left to do, in text and in JSON.
    let r = offload(&s, "maintain", &flags);
    assert!(r.status.success(), "{}", r.describe());
    assert_eq!(r.stdout.trim(), "trades: nothing to do", "{}", r.describe());
    let mut json_flags = flags.to_vec();
    json_flags.push("--json");
    let r = offload(&s, "maintain", &json_flags);
    assert!(r.status.success(), "{}", r.describe());
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.describe()));
    let t = &doc["tables"][0];
    assert_eq!(
        (t["table"].as_str(), t["ok"].as_bool(), t["noop"].as_bool()),
        (Some("trades"), Some(true), Some(true)),
        "{doc}"
    );
    assert_eq!(t["files_rewritten"], 0);

    // The last window's snapshot stays while it holds the data version (a
    // late-row repair fences on it). After one more window, keeping one
    // snapshot expires it and the replace: yesterday's six small files,
    // read by nothing now, are deleted; nothing more is compacted.
    s.insert(700, 100, 5, 5_000);
    s.run_ok();
    let mut one = flags.to_vec();
    assert_eq!(one[2..4], ["--keep-snapshots", "2"]);
    one[3] = "1";
    let r = offload(&s, "maintain", &one);
    assert!(r.status.success(), "{}", r.describe());
    let f = figures(r.stdout.trim());
    eprintln!("maintain: {}", r.stdout.trim());
    assert_eq!(
        (f.get("partitions"), f.get("expired")),
        (Some(&0.0), Some(&2.0)),
        "{}",
        r.describe()
    );
    assert!(f["deleted"] >= 6.0, "{}", r.describe());
    assert_eq!(files(&s), (3, 1));
    assert_eq!(s.data_files().await, 3, "the live files only");

    // The rows are all there, once: reconcile (the program's) says ok, and so
    // does the judge (icebergLocal, pyiceberg, per key, the store).
    let (lo, hi, rows) = s.source_span();
    assert_eq!(rows, 800);
    let (from, to) = (lo.to_string(), (hi + 1).to_string());
    let r = offload(
        &s,
        "reconcile",
        &["--from", &from, "--to", &to, "--bucket", "hour"],
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    let v = s.verify(true).await;
    assert_eq!(v.rows, 800);

    // A table that cannot be maintained is a line on stderr and exit 1:
    // its metadata files are gone.
    std::fs::remove_dir_all(std::path::Path::new(&s.table_path().await).join("metadata")).unwrap();
    let r = offload(&s, "maintain", &flags);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(r.stderr.contains("trades: FAILED ("), "{}", r.describe());
    let r = offload(&s, "maintain", &json_flags);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.describe()));
    assert_eq!(doc["tables"][0]["ok"], false, "{doc}");
    assert!(
        doc["tables"][0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{doc}"
    );
}

/// `GET /metrics` from the program's Prometheus listener.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    body
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_maintains_each_table_on_its_schedule_and_says_so() {
    use std::io::BufRead;
    let s = Lake::new("maintain_run", Catalog::Sqlite, Store::File);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let since_midnight = now_ms % 86_400_000;
    assert!(since_midnight > 60_000, "too close to midnight UTC; rerun");
    for k in 0..4i64 {
        s.insert(k as u64 * 100, 100, 5, since_midnight + 3_600_000 - k * 600_000);
        s.run_ok();
    }
    s.insert(400, 100, 5, 10_000);
    s.run_ok();
    // `run --once` never maintains.
    assert!(!s.run_ok().stdout.contains("maintenance"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = s.dir.join("scheduled.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[metrics]\nlisten = \"{port}\"\n[maintenance]\ninterval = \"1h\"\nsnapshot_retention = \"0s\"\n\
             keep_snapshots = 2\ndelete_grace = \"0s\"\nmin_input_files = 2\n",
            s.config_text(&s.lag, s.engine_id.as_deref())
        ),
    )
    .unwrap();
    let mut child = s
        .command(&cfg, None, "run", &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let line = loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "run exited: {seen:?}");
        seen.push(l.clone());
        if l.contains("maintenance") {
            break l;
        }
    };
    assert!(
        line.starts_with("trades: maintenance: compacted 1 partitions (4 files -> 1 files, 400 rows"),
        "{line}"
    );
    assert!(line.contains("expired 4 snapshots"), "{line}");
    let m = scrape(port);
    let runs = sample(
        &m,
        "offload_maintenance_runs_total",
        &["table=\"trades\"", "outcome=\"changed\""],
    );
    assert_eq!(runs, Some(1.0), "{m}");
    let rewritten = sample(
        &m,
        "offload_maintenance_files_rewritten_total",
        &["table=\"trades\""],
    );
    assert_eq!(rewritten, Some(4.0), "{m}");
    let expired = sample(
        &m,
        "offload_maintenance_snapshots_expired_total",
        &["table=\"trades\""],
    );
    assert_eq!(expired, Some(4.0), "{m}");
    assert!(
        sample(
            &m,
            "offload_maintenance_files_deleted_total",
            &["table=\"trades\""]
        )
        .is_some_and(|n| n >= 4.0),
        "{m}"
    );
    let at = sample(
        &m,
        "offload_last_maintenance_timestamp_seconds",
        &["table=\"trades\""],
    )
    .unwrap();
    assert!((at - now_ms as f64 / 1e3).abs() < 600.0, "{at}");

    // SAFETY: plain kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let (live, _) = {
        let r = offload(&s, "status", &["--json"]);
        let doc: Value = serde_json::from_str(&r.stdout).unwrap();
        (doc["tables"][0]["files"].as_u64().unwrap(), ())
    };
    assert_eq!(live, 2, "one file per day");
    let v = s.verify(false).await;
    assert_eq!(v.rows, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_maintenance_step_leaves_the_table_whole_and_the_next_maintain_finishes() {
    // Every maintain.* step (offload_sink_iceberg::Step): compaction outputs
    // written, manifests written, metadata written, catalog swapped, expiry
    // committed, the first deletion done.
    let points = offload_sink_iceberg::Step::ALL.map(|s| s.name());
    for point in points {
        let s = closed_day_of_six_windows(&format!("maintain_crash_{}", point.replace('.', "_")));
        maintain_crashing_at(&s, point);
        let r = offload(&s, "maintain", &FLAGS);
        assert!(r.status.success(), "after {point}: {}", r.describe());
        assert!(
            r.stdout.starts_with("trades: ") && !r.stdout.contains("FAILED"),
            "{}",
            r.describe()
        );
        // Whatever the crash left, it is done now: one file per day, two
        // snapshots, and on disk only what they read (yesterday's six small
        // files, still read by the kept window snapshot, the compacted one,
        // today's): the crash's leftovers were orphans, deleted.
        assert_eq!(files(&s), (2, 2), "after {point}");
        assert_eq!(s.data_files().await, 8, "after {point}");
        let r = offload(&s, "maintain", &FLAGS);
        assert_eq!(
            r.stdout.trim(),
            "trades: nothing to do",
            "after {point}: {}",
            r.describe()
        );
        // Every row once, the store with the table, reconcile ok.
        let v = s.verify(false).await;
        assert_eq!((v.rows, v.lost, v.duplicates), (700, 0, 0), "after {point}");
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

/// A first run on hours of history: `run --once` takes one `max_window`
/// (the default, 1 h) from the oldest row and says how far behind the table
/// still is; the next run starts at the next row, across the gap, and the
/// last one has caught up. Every row lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_the_backlog_of_a_backfill_and_crosses_gaps_in_one_window() {
    let s = Lake::new("backfill_cli", Catalog::Sqlite, Store::File);
    s.insert(0, 500, 5, 3 * 3_600_000);
    s.insert(500, 500, 5, 90 * 60_000);
    s.insert(1_000, 500, 5, 10_000);
    let lines: Vec<String> = (0..3)
        .map(|_| {
            let r = s.run_ok();
            r.stdout
                .lines()
                .find(|l| l.starts_with("trades: ") && l.contains(" rows in "))
                .unwrap_or_else(|| panic!("no window line: {}", r.describe()))
                .to_owned()
        })
        .collect();
    // Behind the newest row (10 s old): 3 h - 1 h, then 1.5 h - 1 h, less 10 s.
    for (line, behind) in lines.iter().zip([", behind 1h 59m", ", behind 29m"]) {
        assert!(line.starts_with("trades: 500 rows in "), "{line}");
        assert!(line.contains(behind) && line.contains(", ETA "), "{line}");
    }
    assert!(lines[2].starts_with("trades: 500 rows in "), "{}", lines[2]);
    assert!(!lines[2].contains("behind"), "caught up: {}", lines[2]);
    assert!(s.run_ok().stdout.contains("trades: nothing new"));
    assert_eq!(s.verify(false).await.rows, 1_500);
}
