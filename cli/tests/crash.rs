//! The reliability suite: kill the REAL `offload` program at every step of a
//! run (deterministic fail points and random-time SIGKILLs), restart it while
//! rows keep arriving inside the lag, race several workers on one table, pause
//! one past its lease, and prove after each scenario that every ClickHouse row
//! is in Iceberg exactly once and the store equals the table's committed
//! watermark. Rows also arrive late throughout — seconds late, hours late,
//! and older than `late_horizon` — and the judge expects every row inside the
//! horizon exactly once and exactly the ones beyond it missing and reported.
//! `offload maintain` (compaction, expiry, deletion, orphan cleanup) is
//! killed at each of its steps and raced against runs, sweeps and itself.
//! See `reliability/README.md`.
//!
//! Soak: `OFFLOAD_SOAK_KILLS=200 cargo test -p offload-cli --test crash -- --nocapture soak`
//! (`OFFLOAD_SOAK_SEED` replays a given sequence of kills).

mod support;

use std::time::{Duration, Instant, SystemTime};

use offload_core::WatermarkStore;
use offload_reconcile::{KeyDiffKind, Verdict};
use support::{Catalog, HOURS_LATE_MS, Lake, Rng, SIGABRT, State, Store, kill_after};

/// Sequence numbers of late rows start here, apart from the on-time ones.
const LATE: u64 = 1_000_000_000;

/// Base window, a crash at `point`, rows arriving while the program is down,
/// restarts, then the judge.
async fn crash_scenario(name: &str, catalog: Catalog, store: Store, point: &str, pyiceberg: bool) -> Lake {
    let s = Lake::new(name, catalog, store);
    s.insert(0, 3_000, 5, 10_000); // history, older than the lag
    s.run_ok();
    let base = s.state().await;
    assert!(base.committed.is_some(), "[{name}] base window not committed");
    assert_eq!(base.store, base.committed, "[{name}] base");

    // Late rows for the crashed run's sweep: seconds late, hours late, and
    // older than the horizon (never offloaded; reported).
    s.insert_late(LATE, 300, 30_000);
    s.insert_late(LATE + 300, 200, HOURS_LATE_MS);
    s.insert_beyond(LATE + 500, 100);
    s.insert(3_000, 2_000, 5, 3_000); // the crashed run's window: 4 batches of 500
    s.insert(5_000, 500, 5, 300); // inside the lag
    s.crash_at(point);
    let crashed = s.state().await;
    match point.split('=').next().unwrap() {
        "sink.commit.after" => {
            assert!(
                crashed.committed > base.committed,
                "[{name}] commit not visible: {crashed:?}"
            );
            assert_eq!(
                crashed.store, base.store,
                "[{name}] store moved before its update"
            );
        }
        "store.compare_and_set.after" => {
            assert!(crashed.committed > base.committed, "[{name}] {crashed:?}");
            assert_eq!(crashed.store, crashed.committed, "[{name}]");
        }
        _ => assert_eq!(
            crashed, base,
            "[{name}] a crash before the commit changed the table or store"
        ),
    }

    // Rows that arrived while the program was down, inside the lag and late; restart.
    s.insert(5_500, 700, 7, 1_000);
    s.insert_late(LATE + 600, 150, 45_000);
    s.run_ok();
    let restarted = s.state().await;
    assert_eq!(restarted.store, restarted.committed, "[{name}] after restart");
    assert!(
        restarted.committed >= crashed.committed,
        "[{name}] watermark went back"
    );
    s.insert(6_200, 500, 5, 0);
    s.run_ok();

    let v = s.verify(pyiceberg).await;
    assert_eq!(v.rows, 6_700 + 750, "[{name}] rows in the source");
    eprintln!(
        "[{name}] OK: {} rows, {} windows, 0 lost, 0 duplicated",
        v.rows, v.windows
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_lease() {
    crash_scenario(
        "after_lease",
        Catalog::Sqlite,
        Store::File,
        "store.acquire_lease.after",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_read() {
    crash_scenario(
        "mid_read",
        Catalog::Sqlite,
        Store::File,
        "sink.write.after=2",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit() {
    crash_scenario(
        "after_commit",
        Catalog::Sqlite,
        Store::File,
        "sink.commit.after",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_store_update() {
    crash_scenario(
        "after_store_update",
        Catalog::Sqlite,
        Store::File,
        "store.compare_and_set.after",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_sweep_counts() {
    crash_scenario(
        "after_sweep_counts",
        Catalog::Sqlite,
        Store::File,
        "sink.bucket_counts.after",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_sweep_keys() {
    crash_scenario(
        "after_sweep_keys",
        Catalog::Sqlite,
        Store::File,
        "sink.positions.after",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_repair_commit() {
    crash_scenario(
        "before_repair",
        Catalog::Sqlite,
        Store::File,
        "sink.commit_repair.before",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_repair_commit() {
    crash_scenario(
        "after_repair",
        Catalog::Sqlite,
        Store::File,
        "sink.commit_repair.after",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_repair_commit_on_the_postgres_catalog() {
    crash_scenario(
        "after_repair_pg",
        Catalog::Postgres,
        Store::Postgres,
        "sink.commit_repair.after",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_with_the_postgres_store() {
    crash_scenario(
        "pg_store",
        Catalog::Sqlite,
        Store::Postgres,
        "sink.commit.after",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_on_the_postgres_catalog() {
    crash_scenario(
        "pg_catalog",
        Catalog::Postgres,
        Store::Postgres,
        "sink.commit.after",
        true,
    )
    .await;
}

/// A crash between staging and commit leaves orphaned data files: invisible
/// to readers, `offload cleanup` exits 0 without touching the table (it only
/// deletes orphans older than its 24 h grace), with `orphan_grace = "0s"` it
/// removes exactly the orphans, and later runs succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit_then_cleanup() {
    let s = Lake::new("before_commit", Catalog::Sqlite, Store::File);
    s.insert(0, 3_000, 5, 10_000);
    s.run_ok();
    let base = s.state().await;
    let files_base = s.data_files().await;
    assert!(files_base > 0);

    s.insert(3_000, 2_000, 5, 3_000);
    s.crash_at("sink.commit.before");
    assert_eq!(
        s.state().await,
        base,
        "a crash before the commit changed the table or store"
    );
    let files_crashed = s.data_files().await;
    assert!(
        files_crashed > files_base,
        "the crashed run staged no files ({files_crashed} vs {files_base}): the scenario tests nothing"
    );

    let cleanup = s.command(&s.config(), None, "cleanup", &[]).output().unwrap();
    assert!(
        cleanup.status.success(),
        "offload cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert_eq!(s.state().await, base, "cleanup changed the table or store");
    assert!(s.data_files().await >= files_base);

    // With no grace period configured, the program's own cleanup removes them.
    let text = std::fs::read_to_string(s.config()).unwrap() + "[iceberg.writer]\norphan_grace = \"0s\"\n";
    let no_grace = s.dir.join("no-grace.toml");
    std::fs::write(&no_grace, text).unwrap();
    let cleanup = s.command(&no_grace, None, "cleanup", &[]).output().unwrap();
    assert!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    let said = String::from_utf8_lossy(&cleanup.stdout).into_owned();
    let removed: usize = said
        .split_whitespace()
        .skip_while(|w| *w != "removed")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {said:?}"));
    assert_eq!(
        removed,
        files_crashed - files_base,
        "cleanup with no grace must remove exactly the crashed run's files"
    );
    assert_eq!(s.data_files().await, files_base);
    assert_eq!(s.state().await, base);

    s.insert(5_000, 700, 7, 1_000);
    s.run_ok();
    let v = s.verify(false).await;
    assert_eq!(v.rows, 5_700);
}

/// The judge can fail: a clean table passes, then five rows committed to
/// Iceberg a second time (through the sink's own staging/commit API) and five
/// rows that reach ClickHouse below the committed watermark after the offload
/// are each named by offload-reconcile in their own bucket, by key, and the
/// judge `verify` applies rejects the report, although the totals agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_names_a_planted_duplicate_and_a_missing_row() {
    const MINUTE: i64 = 60_000_000;
    let s = Lake::new("planted", Catalog::Sqlite, Store::File);
    s.insert(0, 2_000, 5, 10_000);
    s.run_ok();
    let clean = s.reconcile().await;
    s.assert_reconciled(&clean, 2_000, s.state().await.committed);

    // Fault 1: the oldest millisecond's rows committed twice.
    let twice = s.commit_again().await;
    assert_eq!(twice.len(), 5, "{twice:?}");
    // Fault 2: five late rows, five minutes before everything else, after the offload.
    support::front().query(&format!(
        "INSERT INTO {}.trades SELECT ts - toIntervalMinute(5), seq + 1000000, symbol, price, conditions, vendor, trade_id
            FROM {0}.trades ORDER BY ts, seq LIMIT 5",
        s.db
    ));
    let late_ts = twice[0].0 - 5 * MINUTE;
    let committed = s.state().await.committed;
    assert!(committed.is_some_and(|w| w.timestamp_micros() > late_ts));

    let report = s.reconcile().await;
    let text = report.render_table(false);
    println!("{text}");
    let t = &report.tables[0];
    assert_eq!(t.error, None, "{text}");
    assert_eq!(
        (t.totals.clickhouse, t.totals.iceberg),
        (Some(2_005), Some(2_005)),
        "{text}"
    );
    let floor = |ts: i64| ts.div_euclid(MINUTE) * MINUTE;
    let (dup_bucket, late_bucket) = (floor(twice[0].0), floor(late_ts));
    for b in &t.buckets {
        let wholly = offload_core::Watermark::new(b.end - 1, u64::MAX) <= committed.unwrap();
        let expected = match b.start {
            s if s == late_bucket => Verdict::Missing,
            s if s == dup_bucket => Verdict::Duplicated,
            _ if wholly => Verdict::Ok,
            _ => Verdict::NotYetOffloaded,
        };
        assert_eq!(b.verdict, expected, "bucket {}:\n{text}", b.start_utc);
    }
    assert_eq!(report.verdict, Verdict::Missing, "{text}");
    assert_eq!(report.exit_code(), 1);

    let late = t.bucket_at(late_bucket).unwrap();
    let keys: Vec<_> = late
        .findings
        .iter()
        .flat_map(|f| &f.keys)
        .map(|k| (k.ts, k.seq, k.kind))
        .collect();
    let expected: Vec<_> = twice
        .iter()
        .map(|&(ts, seq)| (ts - 5 * MINUTE, seq + 1_000_000, KeyDiffKind::Missing))
        .collect();
    assert_eq!(keys, expected, "{text}");
    let dup = t.bucket_at(dup_bucket).unwrap();
    let keys: Vec<_> = dup
        .findings
        .iter()
        .flat_map(|f| &f.keys)
        .map(|k| (k.ts, k.seq, k.kind, k.downstream_copies))
        .collect();
    let expected: Vec<_> = twice
        .iter()
        .map(|&(ts, seq)| (ts, seq, KeyDiffKind::Duplicated, 2))
        .collect();
    assert_eq!(keys, expected, "{text}");

    // The judge `verify` applies rejects it.
    // The totals agree (5 missing, 5 duplicated): the buckets must not.
    let judged = s.check_reconciled(&report, 2_005, committed);
    let err = judged.expect_err("the judge passed a table with planted faults");
    let first = err.lines().next().unwrap();
    assert!(
        first.contains(&format!("bucket {} is missing", late.start_utc)),
        "{err}"
    );
}

/// Random kills on one table while rows keep arriving: a seeded mix of fail
/// points and SIGKILLs at random times, of `offload run --once` and (three
/// attempts in ten) of `offload maintain`, then the judge. Default: 12 kills.
/// The table is partitioned by the hour, so the rows arriving hours late
/// are repaired into closed partitions, which maintenance compacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let target: u64 = std::env::var("OFFLOAD_SOAK_KILLS")
        .ok()
        .map(|v| v.parse().expect("OFFLOAD_SOAK_KILLS must be a whole number"))
        .unwrap_or(12);
    let seed: u64 = std::env::var("OFFLOAD_SOAK_SEED")
        .ok()
        .map(|v| v.parse().expect("OFFLOAD_SOAK_SEED must be a whole number"))
        .unwrap_or(0x5eed);
    let mut rng = Rng::new(seed);
    let mut s = Lake::new("soak", Catalog::Sqlite, Store::File);
    s.batch_size = 300;
    s.partition = Some("[{ transform = \"hour\" }]".into());
    // Orphan grace 0s: every attempt runs alone, nothing is in flight while
    // maintain cleans up (see `maintain_races` for why racing needs more).
    s.maintenance = format!("{MAINTAIN_AT_ONCE}orphan_grace = \"0s\"\n");
    let cfg = s.config();
    let started = Instant::now();

    s.insert(0, 3_000, 5, 10_000);
    let t = Instant::now();
    s.run_ok();
    // Random kill times span a clean run's duration (and a little beyond).
    let mut typical = t.elapsed();
    // What the maintains that finished did: (maintains, partitions compacted, snapshots expired).
    let mut maintained = (0u64, 0u64, 0u64);
    fn tally(t: &mut (u64, u64, u64), m: &support::Maintained) {
        t.0 += 1;
        t.1 += m.partitions_compacted;
        t.2 += m.snapshots_expired;
    }
    let t = Instant::now();
    let m = s.maintain_ok(&[]);
    let mut typical_maintain = t.elapsed();
    tally(&mut maintained, &m);
    let (mut m_fp_kills, mut m_sig_kills, mut m_kills_total) = (0u64, 0u64, 0u64);
    // Maintain fault points reached, by name.
    let mut m_points = std::collections::BTreeMap::<&str, u64>::new();
    let mut next_seq = 3_000u64;
    let mut late_seq = LATE;
    let mut late_kinds = [0u64; 3];
    let (mut kills, mut fp_kills, mut sig_kills, mut finished) = (0u64, 0u64, 0u64, 0u64);
    let mut last = s.state().await;
    let mut iteration = 0u64;
    while kills < target {
        iteration += 1;
        assert!(
            iteration <= target * 4 + 20,
            "soak: {kills} kills in {iteration} iterations"
        );
        // Rows keep arriving, inside the lag.
        // At most 200 ms of event time per burst, the oldest row at most 1.4 s
        // old when it lands (lag 2 s): rows never arrive later than the lag.
        let n = 100 + rng.below(600);
        s.insert(next_seq, n, 1 + n / 200, rng.below(1_200) as i64);
        next_seq += n;
        // And now and then rows that arrive late: seconds late, hours late,
        // or older than the horizon.
        if rng.below(10) < 4 {
            let m = 20 + rng.below(200);
            let kind = rng.below(3) as usize;
            match kind {
                0 => s.insert_late(late_seq, m, 5_000 + rng.below(55_000) as i64),
                1 => s.insert_late(late_seq, m, HOURS_LATE_MS - rng.below(3_600_000) as i64),
                _ => s.insert_beyond(late_seq, m),
            }
            late_kinds[kind] += m;
            late_seq += m;
        }

        let maintain = rng.below(10) < 3;
        if maintain && rng.below(2) == 0 {
            // Work for compaction: rows 90 min late, repaired by a clean run
            // into one closed hour partition (a new file there each time).
            let m = 20 + rng.below(100);
            s.insert_late(late_seq, m, 90 * 60_000);
            late_kinds[1] += m;
            late_seq += m;
            s.run_ok();
            last = s.state().await;
        }
        let killed = if maintain {
            let killed = if rng.below(10) < 6 {
                let fp = match rng.below(9) {
                    0 => "maintain.outputs",
                    1 => "maintain.manifests",
                    2 => "maintain.metadata",
                    3 => "maintain.commit",
                    4 => "maintain.commit=2",
                    5 => "maintain.expire",
                    6 => "maintain.delete",
                    7 => "sink.maintain.before",
                    _ => "sink.maintain.after",
                };
                let r = s.maintain(Some(fp), &[]);
                match r.signal() {
                    Some(SIGABRT) => {
                        m_fp_kills += 1;
                        *m_points.entry(fp).or_default() += 1;
                        true
                    }
                    // Not reached (nothing to compact, expire or delete).
                    None if r.status.success() => {
                        tally(&mut maintained, &support::Maintained::parse(&r));
                        false
                    }
                    _ => panic!("soak iteration {iteration} ({fp}): {}", r.describe()),
                }
            } else {
                let delay = Duration::from_micros(rng.below(typical_maintain.as_micros() as u64));
                let child = s.spawn_split(None, "maintain", &["--json"], "killed-maintain.log");
                let (killed, status) = kill_after(child, delay);
                assert!(
                    killed || status.success(),
                    "soak iteration {iteration}: maintain ended with {status:?} before its kill: {}",
                    std::fs::read_to_string(s.dir.join("killed-maintain.log.stderr")).unwrap_or_default()
                );
                if !killed {
                    maintained.0 += 1;
                }
                m_sig_kills += u64::from(killed);
                killed
            };
            // Maintenance never moves the committed window or the store,
            // and never removes a file a kept snapshot reads.
            assert_eq!(
                s.state().await,
                last,
                "soak {iteration}: offload maintain moved the committed window or the store"
            );
            let audit = s.file_audit().await;
            assert!(
                audit.missing.is_empty(),
                "soak {iteration}: files a kept snapshot reads are gone: {:?}",
                audit.missing
            );
            m_kills_total += u64::from(killed);
            // Every other maintain kill, a clean maintain must finish.
            if killed && m_kills_total % 2 == 0 {
                let t = Instant::now();
                let m = s.maintain_ok(&[]);
                typical_maintain = typical_maintain.min(t.elapsed());
                tally(&mut maintained, &m);
            }
            killed
        } else if rng.below(10) < 6 {
            let fp = match rng.below(9) {
                0 => "store.acquire_lease.after".to_owned(),
                1 => format!("sink.write.after={}", 1 + rng.below(3)),
                2 => "sink.commit.before".to_owned(),
                3 => "sink.commit.after".to_owned(),
                4 => "sink.bucket_counts.after".to_owned(),
                5 => "sink.positions.after".to_owned(),
                6 => "sink.commit_repair.before".to_owned(),
                7 => "sink.commit_repair.after".to_owned(),
                _ => "store.compare_and_set.after".to_owned(),
            };
            let r = s.run(Some(&fp));
            match r.signal() {
                Some(SIGABRT) => {
                    fp_kills += 1;
                    true
                }
                // Not reached (nothing new, or fewer batches): a normal run.
                None if r.status.success() => false,
                _ => panic!("soak iteration {iteration} ({fp}): {}", r.describe()),
            }
        } else {
            // Uniform over the shortest clean run seen: most kills land mid-run.
            let delay = Duration::from_micros(rng.below(typical.as_micros() as u64));
            let child = s.spawn(&cfg, None, "killed.log");
            let (killed, status) = kill_after(child, delay);
            assert!(
                killed || status.success(),
                "soak iteration {iteration}: run ended with {status:?} before its kill: {}",
                std::fs::read_to_string(s.dir.join("killed.log")).unwrap_or_default()
            );
            sig_kills += u64::from(killed);
            killed
        };
        kills += u64::from(killed);
        finished += u64::from(!killed);

        let now = s.state().await;
        assert!(
            now.store <= now.committed,
            "soak {iteration}: store ahead of the table: {now:?}"
        );
        assert!(
            now.committed >= last.committed,
            "soak {iteration}: committed went back: {last:?} -> {now:?}"
        );
        assert!(
            now.store >= last.store,
            "soak {iteration}: store went back: {last:?} -> {now:?}"
        );
        last = now;
        // Every other kill, a clean restart must make progress.
        if killed && kills % 2 == 0 && !maintain {
            let t = Instant::now();
            s.run_ok();
            typical = typical.min(t.elapsed());
            let now: State = s.state().await;
            assert_eq!(
                now.store, now.committed,
                "soak {iteration}: after a clean restart"
            );
            last = now;
        }
    }
    // Quiet: the kills' leftovers were orphans; a last maintain removes
    // them, and nothing the metadata references is missing.
    let m = s.maintain_ok(&[]);
    tally(&mut maintained, &m);
    let audit = s.file_audit().await;
    assert!(
        audit.unreferenced.is_empty() && audit.missing.is_empty(),
        "soak: after a quiet maintain: unreferenced {:?}, missing {:?} ({m:?})",
        audit.unreferenced,
        audit.missing
    );
    let v = s.verify(true).await;
    assert_eq!(v.rows, next_seq + (late_seq - LATE));
    println!(
        "soak seed={seed}: kills={kills} (offload run: failpoints={fp_kills}, sigkill={sig_kills}; offload maintain: \
         failpoints={m_fp_kills}, sigkill={m_sig_kills}), attempts finished={finished}, \
         maintains finished={} ({} partitions compacted, {} snapshots expired), \
         rows={}, late rows: {} seconds late + {} hours late offloaded, {} beyond the horizon \
         reported and not offloaded; duplicates={}, lost={}, {:.0}s; maintain fault points reached: {m_points:?}",
        maintained.0,
        maintained.1,
        maintained.2,
        v.rows,
        late_kinds[0],
        late_kinds[1],
        late_kinds[2],
        v.duplicates,
        v.lost,
        started.elapsed().as_secs_f64()
    );
}

/// `workers` `offload --once` processes (each its own engine id) on one table
/// with the PostgreSQL store, several rounds: every window is committed by
/// exactly one of them (committed windows reported == windows in the snapshot
/// log, which chains without gaps or repeats), and the figures are exact.
async fn racing(workers: usize) {
    let mut s = Lake::new(&format!("race{workers}"), Catalog::Sqlite, Store::Postgres);
    s.engine_id = None;
    let cfg = s.config();
    // History older than the lag, then each round rows inside the lag (never
    // older than the lag when they arrive: that is the contract).
    s.insert(0, 2_000, 5, 5_000);
    let mut next = 2_000;
    let mut reported = 0;
    let mut late = 0;
    for round in 0..3 {
        s.insert(next, 500, 1, 0);
        next += 500;
        if round > 0 {
            // Late rows the racing workers' sweeps compete to repair.
            s.insert_late(LATE + late, 100, 20_000);
            s.insert_late(LATE + late + 100, 50, HOURS_LATE_MS);
            late += 150;
        }
        let children: Vec<_> = (0..workers)
            .map(|w| s.spawn(&cfg, None, &format!("race-{round}-{w}.log")))
            .collect();
        for (w, mut c) in children.into_iter().enumerate() {
            let status = c.wait().unwrap();
            let log = std::fs::read_to_string(s.dir.join(format!("race-{round}-{w}.log"))).unwrap();
            assert!(status.success(), "round {round} worker {w}: {status:?}\n{log}");
            reported += log
                .lines()
                .filter(|l| l.starts_with("trades: ") && l.contains(" rows in "))
                .count();
        }
    }
    assert!(reported >= 1, "no round committed anything");
    eprintln!("[race{workers}] {reported} windows committed by {workers} racing workers over 3 rounds");
    assert_eq!(
        s.window_chain().await,
        reported,
        "windows in the table vs windows the workers reported"
    );
    let v = s.verify(false).await;
    assert_eq!(v.rows, next + late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_two_workers() {
    racing(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_four_workers() {
    racing(4).await;
}

/// A worker frozen (SIGSTOP at `sink.commit.before`) with its window staged,
/// past the lease's expiry; another worker takes the table over and commits;
/// the first one resumed (SIGCONT) must not commit its stale window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_cannot_commit_a_stale_window() {
    let mut s = Lake::new("paused", Catalog::Sqlite, Store::Postgres);
    s.lease_ttl = "2s".into();
    s.batch_size = 1_000;
    s.insert(0, 60_000, 5, 5_000);
    let cfg_a = s.write_config("a.toml", "2s", Some("worker-a"));
    let cfg_b = s.write_config("b.toml", "2s", Some("worker-b"));
    let store = offload_watermark_store::PostgresStore::connect(&support::pg_url(), &s.pg_schema)
        .await
        .unwrap();

    // Worker-a stages its whole window and freezes itself right before the
    // commit (SIGSTOP at the fault point): the most dangerous moment to lose a lease.
    let mut a = s.spawn(&cfg_a, Some("sink.commit.before:stop"), "a.log");
    // Wait for the condition "worker-a is stopped" (state T in /proc).
    loop {
        if let Some(status) = a.try_wait().unwrap() {
            panic!(
                "worker-a finished ({status:?}) before reaching its commit\n{}",
                std::fs::read_to_string(s.dir.join("a.log")).unwrap_or_default()
            );
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", a.id())).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.lease_holder(&store).await.as_deref(), Some("worker-a"));
    let before = s.state().await;

    // Wait for the condition "the lease has expired" (the store's clock is this machine's).
    loop {
        let lease = store.load("trades").await.unwrap().lease.expect("a lease");
        if lease.expires_at + Duration::from_millis(100) < SystemTime::now() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.insert(60_000, 500, 5, 300);
    let b = s.run_with_config(&cfg_b);
    assert!(b.status.success(), "worker-b: {}", b.describe());
    assert!(
        b.stdout.contains(" rows in "),
        "worker-b committed nothing: {}",
        b.describe()
    );
    let taken_over = s.state().await;
    assert!(taken_over.committed > before.committed);

    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(a.id() as i32, libc::SIGCONT) }, 0);
    let status = a.wait().unwrap();
    let log_a = std::fs::read_to_string(s.dir.join("a.log")).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "worker-a resumed after losing its lease must fail its run:\n{log_a}"
    );
    assert!(
        !log_a.contains(" rows in "),
        "worker-a reported a commit:\n{log_a}"
    );
    for line in log_a.lines().filter(|l| l.contains("FAILED")) {
        eprintln!("[paused] worker-a after SIGCONT: {line}");
    }
    let after = s.state().await;
    assert_eq!(
        after, taken_over,
        "worker-a changed the table or store after losing its lease"
    );
    store.close().await;

    let v = s.verify(false).await;
    assert_eq!(v.rows, 60_500);
}

/// SIGTERM (what systemd and Kubernetes send) while a window is being staged:
/// the program abandons the window before its commit, says so, and exits 0,
/// a graceful stop rather than a failure; nothing of the window landed, and
/// the next run takes it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_staging_abandons_the_window_and_exits_cleanly() {
    let mut s = Lake::new("sigterm_staging", Catalog::Sqlite, Store::Postgres);
    // Many small batches: staging goes on for a while after the first one, so
    // the shutdown (delivered the moment the process is continued) is seen
    // before the commit.
    s.batch_size = 500;
    s.insert(0, 100_000, 5, 5_000);
    let cfg = s.write_config("a.toml", "2s", None);
    let log = "sigterm.log";
    let mut child = s.spawn(&cfg, Some("sink.write.after:stop"), log);
    support::wait_stopped(&mut child, &s.dir.join(log));
    let before = s.state().await;
    // SAFETY: plain kill(2) on our own child's pid. Pending while it is stopped,
    // delivered when it continues.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    support::resume(&child);
    let r = s.collect(child, log);
    assert!(
        r.status.success(),
        "a shutdown is not a failure: {}",
        r.describe()
    );
    assert!(
        r.stdout.contains("stopped by shutdown before its commit") && !r.stdout.contains(" rows in "),
        "{}",
        r.describe()
    );
    assert_eq!(
        s.state().await,
        before,
        "the abandoned window changed the table or store"
    );
    let v = s.verify(false).await;
    assert_eq!(v.rows, 100_000);
}

// ---------------------------------------------------------------------------
// Maintenance (issue #13): `offload maintain` killed at each of its steps, and
// raced against offload runs, sweeps and another maintain.

/// `[maintenance]` keys that make everything happen in test time: a closed
/// partition is compacted from two files, every snapshot but the newest two
/// (and those the committed window and the data version need) is expired at
/// once, and the files only they read are deleted at once. `orphan_grace` is
/// set per scenario (see [`hourly_table`]).
const MAINTAIN_AT_ONCE: &str =
    "min_input_files = 2\nsnapshot_retention = \"0s\"\nkeep_snapshots = 2\ndelete_grace = \"0s\"\n";

/// How old the hours-late rows of the maintenance scenarios are: two
/// distinct closed hour partitions (60 min apart), both inside the horizon.
const LATE_A_MS: i64 = 70 * 60_000;
const LATE_B_MS: i64 = 130 * 60_000;

/// Rows arriving for the maintenance scenarios: the next on-time and late
/// sequence numbers.
struct Feed {
    next: u64,
    late: u64,
}

impl Feed {
    /// On-time rows (older than the lag: the next run offloads them), rows
    /// hours late into two closed hour partitions (the next run's sweep
    /// repairs them: a new small file in each, work for compaction), rows
    /// seconds late, and with `beyond` rows older than the horizon.
    fn arrive(&mut self, s: &Lake, beyond: bool) {
        s.insert(self.next, 300, 5, 3_000);
        self.next += 300;
        s.insert_late(self.late, 60, LATE_A_MS);
        s.insert_late(self.late + 60, 60, LATE_B_MS);
        s.insert_late(self.late + 120, 40, 20_000);
        self.late += 160;
        if beyond {
            s.insert_beyond(self.late, 20);
            self.late += 20;
        }
    }

    /// Rows inserted in all.
    fn total(&self) -> u64 {
        self.next + (self.late - LATE)
    }
}

/// A table partitioned by the hour (so rows hours late land in closed
/// partitions, which maintenance compacts, and the sweep repairs into them)
/// with `[maintenance]` = [`MAINTAIN_AT_ONCE`] + `orphan_grace`, and a
/// history of nine small windows 20 minutes apart, 200 to 40 minutes old:
/// several closed partitions of small files. Then one on-time window.
fn hourly_table(name: &str, catalog: Catalog, store: Store, orphan_grace: &str) -> (Lake, Feed) {
    let mut s = Lake::new(name, catalog, store);
    s.partition = Some("[{ transform = \"hour\" }]".into());
    s.maintenance = format!("{MAINTAIN_AT_ONCE}orphan_grace = \"{orphan_grace}\"\n");
    for k in 0..9u64 {
        s.insert(k * 200, 200, 5, (200 - 20 * k as i64) * 60_000);
        s.run_ok();
    }
    s.insert(1_800, 500, 5, 5_000);
    s.run_ok();
    (
        s,
        Feed {
            next: 2_300,
            late: LATE,
        },
    )
}

/// `offload maintain` killed at every step — compaction outputs written,
/// manifests written, metadata written (before the catalog swap), the swap
/// done (first and second partition), expiry committed, the first deletion
/// done — and by SIGKILL at random moments, on a table with closed
/// partitions of small files, rows arriving on time, seconds and hours late
/// and beyond the horizon, an offload run (window and sweep) before every
/// kill and after it. After each kill: nothing committed moved, every file a
/// kept snapshot reads is on disk, the next `offload run --once` and the
/// next `offload maintain` work. At the end only referenced files are left
/// (the crashes' leftovers, the never-committed metadata JSONs included,
/// were orphans: removed), and the judge passes (+pyiceberg).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_killed_at_every_step() {
    // Orphan grace 0s is safe here: nothing else is in flight while this
    // scenario's `offload maintain` runs (every process runs alone), so no
    // staged file waits for its commit. Contrast `maintain_races_...`.
    let (s, mut feed) = hourly_table("maintain_kills", Catalog::Sqlite, Store::File, "0s");
    let started = Instant::now();
    feed.arrive(&s, true);
    s.run_ok();
    let t = Instant::now();
    let m = s.maintain_ok(&[]);
    // SIGKILL delays span the shortest clean maintain seen.
    let mut typical = t.elapsed();
    eprintln!("[maintain_kills] first maintain ({typical:?}): {m:?}");
    assert!(
        m.partitions_compacted >= 2 && m.snapshots_expired > 0 && m.files_deleted > 0,
        "the history's closed partitions were not compacted and expired: {m:?}"
    );

    let points = [
        "maintain.outputs",
        "maintain.manifests",
        "maintain.metadata",
        "maintain.commit",
        "maintain.commit=2",
        "maintain.expire",
        "maintain.delete",
        "SIGKILL",
        "SIGKILL",
        "SIGKILL",
        "SIGKILL",
    ];
    let mut rng = Rng::new(0x6d61_696e);
    let (mut sig_kills, mut sig_finished) = (0, 0);
    for (i, point) in points.into_iter().enumerate() {
        // Rows keep arriving; the run's sweep repairs the late ones into
        // two closed partitions (each now: its compacted file + a repair).
        feed.arrive(&s, i % 3 == 0);
        s.run_ok();
        let before = s.state().await;
        assert_eq!(before.store, before.committed, "[{point}] before the kill");
        if point == "SIGKILL" {
            let delay = Duration::from_micros(rng.below(typical.as_micros() as u64));
            let child = s.spawn_split(None, "maintain", &["--json"], "killed.log");
            let (killed, status) = kill_after(child, delay);
            assert!(
                killed || status.success(),
                "[{point}] maintain ended with {status:?} before its kill"
            );
            sig_kills += u64::from(killed);
            sig_finished += u64::from(!killed);
        } else {
            s.maintain_crash_at(point);
        }
        assert_eq!(
            s.state().await,
            before,
            "[{point}] a maintain crash moved the committed window or the store"
        );
        let audit = s.file_audit().await;
        assert!(
            audit.missing.is_empty(),
            "[{point}] files a kept snapshot reads are gone: {:?}",
            audit.missing
        );
        // A crash between writing the new metadata file and the catalog
        // swap leaves that file behind, never committed (as a refused
        // commit does): the next maintain's orphan cleanup removes it.
        let json: Vec<_> = audit
            .unreferenced
            .iter()
            .filter(|p| p.ends_with(".metadata.json"))
            .cloned()
            .collect();
        if point == "maintain.metadata" {
            assert!(!json.is_empty(), "[{point}] no metadata file left: {audit:?}");
        }
        // The next run and the next maintenance work.
        feed.arrive(&s, false);
        s.run_ok();
        let t = Instant::now();
        let m = s.maintain_ok(&[]);
        typical = typical.min(t.elapsed());
        eprintln!("[maintain_kills] after {point}: {m:?}");
        let audit = s.file_audit().await;
        assert!(
            audit.missing.is_empty(),
            "[{point}] after the next maintain, files a kept snapshot reads are gone: {:?}",
            audit.missing
        );
        let kept: Vec<_> = json.iter().filter(|p| audit.on_disk.contains(*p)).collect();
        assert!(
            kept.is_empty(),
            "[{point}] never-committed metadata files survived orphan cleanup: {kept:?}"
        );
    }
    // The crashes' leftovers (compaction outputs, manifests, the metadata
    // JSON written before the swap that never happened) were orphans, older
    // than the grace (0s): the last maintain removed them all.
    let m = s.maintain_ok(&[]);
    let audit = s.file_audit().await;
    assert!(
        audit.unreferenced.is_empty() && audit.missing.is_empty(),
        "after a quiet maintain: unreferenced {:?}, missing {:?} ({m:?})",
        audit.unreferenced,
        audit.missing
    );
    let v = s.verify(true).await;
    assert_eq!(v.rows, feed.total());
    let fault_points = points.iter().filter(|p| **p != "SIGKILL").count();
    eprintln!(
        "[maintain_kills] OK: {} kills ({fault_points} fault points, {sig_kills} SIGKILLs; {sig_finished} maintains \
         finished before their SIGKILL), {} rows, 0 lost, 0 duplicated, {:.1}s",
        fault_points as u64 + sig_kills,
        v.rows,
        started.elapsed().as_secs_f64()
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Milliseconds before now of the absolute time `at_ms` (Unix ms).
fn ms_ago(at_ms: i64) -> i64 {
    now_ms() - at_ms
}

/// The middle of the hour two hours back (Unix ms): in a closed hour
/// partition inside the horizon, whatever the clock does during a round.
fn mid_hour_two_hours_ago() -> i64 {
    let t = now_ms() - 2 * 3_600_000;
    t.div_euclid(3_600_000) * 3_600_000 + 1_800_000
}

/// The judge between the interleavings of [`maintain_races`]: the drain,
/// every row once, the store with the table, reconcile; and every file a
/// kept snapshot reads on disk.
async fn judge(s: &Lake, feed: &Feed, step: &str) {
    let v = s.verify(false).await;
    assert_eq!(v.rows, feed.total(), "[{step}] rows in the source");
    let audit = s.file_audit().await;
    assert!(
        audit.missing.is_empty(),
        "[{step}] files a kept snapshot reads are gone: {:?}",
        audit.missing
    );
}

/// `offload maintain` raced (separate processes) against `offload run`
/// workers doing windows and late-row sweeps, and against another
/// `offload maintain`, `rounds` times; `:stop` fault points force each
/// interleaving that matters, and the judge runs after each:
///
/// (a) maintain frozen with its manifests written while a window commits,
///     then continued: its replace is rebuilt on the new state and lands;
/// (b) a run frozen before its window commit (files staged) while maintain
///     compacts, expires and deletes, then continued: its window lands
///     once, the grace kept its staged files;
/// (c) a sweep frozen before its repair commit while maintain compacts the
///     partition the repair goes to, then continued: the repair lands there
///     (the data version a repair is fenced on ignores replace snapshots);
/// (d) two maintains, one frozen after writing its metadata (before the
///     swap) while the other does everything, then continued: it loses the
///     swap, gives the partition up and finishes cleanly;
/// (e) no stop point: a maintain and two workers started together; all
///     exit 0.
async fn maintain_races(name: &str, catalog: Catalog, rounds: usize) {
    // The orphan grace must exceed the time from a staged file's write to
    // its commit: that is the documented contract (`orphan_grace`). With runs
    // in flight while maintain cleans up, a 0s grace would delete the files a
    // frozen or merely slow window has staged, and its commit would then name
    // files that are gone. 30s is far above any staging-to-commit time here
    // (a frozen process waits for one maintain, well under 5 s on this box).
    let (s, mut feed) = hourly_table(name, catalog, Store::Postgres, "30s");
    let started = Instant::now();
    feed.arrive(&s, true);
    s.run_ok();
    let m = s.maintain_ok(&[]);
    assert!(m.partitions_compacted >= 2, "history not compacted: {m:?}");
    let stderr = |log: &str| s.dir.join(format!("{log}.stderr"));

    for round in 0..rounds {
        // (a) maintain frozen after writing its first replace's manifests.
        feed.arrive(&s, round == 0);
        s.run_ok(); // repairs: a new file in two closed partitions
        s.insert(feed.next, 300, 5, 3_000);
        feed.next += 300;
        let log = format!("a-{round}.json");
        let mut m = s.spawn_split(Some("maintain.manifests:stop"), "maintain", &["--json"], &log);
        support::wait_stopped(&mut m, &stderr(&log));
        let before = s.state().await;
        let r = s.run_ok();
        assert!(r.stdout.contains(" rows in "), "(a) no window: {}", r.describe());
        assert!(s.state().await.committed > before.committed);
        support::resume(&m);
        let r = s.collect(m, &log);
        assert!(
            r.status.success(),
            "(a) maintain after the window: {}",
            r.describe()
        );
        let got = support::Maintained::parse(&r);
        eprintln!("[{name}] round {round} (a): {got:?}");
        assert!(
            got.conflicts_retried >= 1 && got.partitions_compacted >= 2,
            "(a) the replace that lost to the window must be rebuilt and land: {got:?}"
        );
        judge(&s, &feed, &format!("{name} round {round} (a)")).await;

        // (b) a run frozen with its window staged, before the commit.
        feed.arrive(&s, false);
        let unreferenced = |a: &support::FileAudit| -> std::collections::BTreeSet<String> {
            a.unreferenced
                .iter()
                .filter(|p| p.ends_with(".parquet"))
                .cloned()
                .collect()
        };
        let earlier = unreferenced(&s.file_audit().await);
        let log = format!("b-{round}.log");
        let mut w = s.spawn_split(Some("sink.commit.before:stop"), "run", &["--once"], &log);
        support::wait_stopped(&mut w, &stderr(&log));
        let staged: Vec<_> = unreferenced(&s.file_audit().await)
            .difference(&earlier)
            .cloned()
            .collect();
        assert!(!staged.is_empty(), "(b) the frozen run staged nothing");
        let before = s.state().await;
        let got = s.maintain_ok(&[]);
        eprintln!("[{name}] round {round} (b): {got:?}");
        assert!(
            got.partitions_compacted >= 2 && got.snapshots_expired >= 1 && got.files_deleted >= 1,
            "(b) maintain compacted, expired and deleted nothing: {got:?}"
        );
        assert_eq!(s.state().await, before, "(b) maintain moved the committed window");
        let audit = s.file_audit().await;
        let gone: Vec<_> = staged.iter().filter(|f| !audit.on_disk.contains(*f)).collect();
        assert!(gone.is_empty(), "(b) maintain deleted staged files: {gone:?}");
        support::resume(&w);
        let r = s.collect(w, &log);
        assert!(r.status.success(), "(b) the continued run: {}", r.describe());
        assert!(r.stdout.contains(" rows in "), "(b) no window: {}", r.describe());
        assert!(s.state().await.committed > before.committed);
        judge(&s, &feed, &format!("{name} round {round} (b)")).await;

        // (c) a repair frozen before its commit while its partition is compacted.
        let at = mid_hour_two_hours_ago();
        // The partition's directory: hours since the epoch, as the sink names it.
        let part = format!("ts_hour={}", at.div_euclid(3_600_000));
        s.insert_late(feed.late, 60, ms_ago(at));
        feed.late += 60;
        s.run_ok(); // repaired: the partition has its file(s) and this repair
        s.insert_late(feed.late, 60, ms_ago(at));
        feed.late += 60;
        let log = format!("c-{round}.log");
        let mut w = s.spawn_split(Some("sink.commit_repair.before:stop"), "run", &["--once"], &log);
        support::wait_stopped(&mut w, &stderr(&log));
        let files = s.live_files_in(&part).await;
        assert!(
            files >= 2,
            "(c) {part} has {files} live files: nothing to compact"
        );
        let got = s.maintain_ok(&[]);
        eprintln!("[{name}] round {round} (c): {got:?}");
        let compacted = s.live_paths_in(&part).await;
        assert_eq!(
            compacted.len(),
            1,
            "(c) maintain did not compact {part}, the frozen repair's partition: {got:?}"
        );
        support::resume(&w);
        let r = s.collect(w, &log);
        assert!(r.status.success(), "(c) the continued run: {}", r.describe());
        assert!(
            r.stdout.contains("60 repaired"),
            "(c) the repair did not land: {}",
            r.describe()
        );
        // The compacted file stays beside the repair's own (one per encoder
        // task its batches reached: the count depends on the machine's cores).
        let after = s.live_paths_in(&part).await;
        assert!(
            after.len() >= 2 && after.contains(&compacted[0]),
            "(c) {part} after the repair: {after:?}, compacted {compacted:?}"
        );
        judge(&s, &feed, &format!("{name} round {round} (c)")).await;

        // (d) two maintains: one frozen after writing its new metadata file
        // (before the catalog swap), the other does everything.
        feed.arrive(&s, false);
        s.run_ok();
        let log = format!("d-{round}.json");
        let mut first = s.spawn_split(Some("maintain.metadata:stop"), "maintain", &["--json"], &log);
        support::wait_stopped(&mut first, &stderr(&log));
        let other = s.maintain_ok(&[]);
        assert!(
            other.partitions_compacted >= 2,
            "(d) the second maintain compacted nothing: {other:?}"
        );
        support::resume(&first);
        let r = s.collect(first, &log);
        assert!(r.status.success(), "(d) the frozen maintain: {}", r.describe());
        let lost = support::Maintained::parse(&r);
        eprintln!("[{name}] round {round} (d): won {other:?}; lost {lost:?}");
        // The other planned (at least) every partition it had, on the same
        // state, and replaced them all first: nothing of the frozen one's lands.
        assert!(
            lost.conflicts_retried >= 1 && lost.partitions_compacted == 0,
            "(d) the frozen maintain's swap cannot have won: {lost:?}"
        );
        judge(&s, &feed, &format!("{name} round {round} (d)")).await;

        // (e) no stop point: one maintain and two workers (own engine ids)
        // started together, whatever interleaving the scheduler makes.
        feed.arrive(&s, false);
        s.run_ok(); // work for the maintain
        s.insert(feed.next, 300, 5, 3_000);
        feed.next += 300;
        s.insert_late(feed.late, 40, LATE_A_MS); // work for the workers' sweeps
        feed.late += 40;
        let log = format!("e-{round}.json");
        let m = s.spawn_split(None, "maintain", &["--json"], &log);
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let cfg = s.write_config(&format!("worker-{w}.toml"), &s.lag, Some(&format!("worker-{w}")));
                s.spawn(&cfg, None, &format!("e-{round}-{w}.log"))
            })
            .collect();
        for (w, mut c) in workers.into_iter().enumerate() {
            let status = c.wait().unwrap();
            let out = std::fs::read_to_string(s.dir.join(format!("e-{round}-{w}.log"))).unwrap();
            assert!(status.success(), "(e) worker {w}: {status:?}\n{out}");
        }
        let r = s.collect(m, &log);
        assert!(r.status.success(), "(e) maintain: {}", r.describe());
        eprintln!("[{name}] round {round} (e): {:?}", support::Maintained::parse(&r));
        judge(&s, &feed, &format!("{name} round {round} (e)")).await;
    }
    // Quiet now: with no grace, the races' leftovers go; only what the
    // metadata references stays, and all of it is there.
    let m = s.maintain_ok(&["--orphan-grace", "0s"]);
    let audit = s.file_audit().await;
    assert!(
        audit.unreferenced.is_empty() && audit.missing.is_empty(),
        "after a quiet maintain: unreferenced {:?}, missing {:?} ({m:?})",
        audit.unreferenced,
        audit.missing
    );
    let v = s.verify(true).await;
    assert_eq!(v.rows, feed.total());
    eprintln!(
        "[{name}] OK: {rounds} rounds of 5 races, {} rows, 0 lost, 0 duplicated, {:.1}s",
        v.rows,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_races_runs_sweeps_and_another_maintain() {
    maintain_races("maintain_races", Catalog::Sqlite, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_races_on_the_postgres_catalog() {
    maintain_races("maintain_races_pg", Catalog::Postgres, 1).await;
}
