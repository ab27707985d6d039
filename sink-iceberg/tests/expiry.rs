//! Snapshot expiry and orphan removal (`maintain_with`, `cleanup_orphans`)
//! against real SQL catalogs (SQLite and PostgreSQL; the PostgreSQL variants
//! fail when the server is unreachable) on a local warehouse: expiry keeps
//! exactly what the rules say, every remaining snapshot stays readable, the
//! files only expired snapshots referenced are deleted and nothing else, the
//! metadata log stays bounded, orphans go only once older than the grace, a
//! crash between the expiry commit and the deletion leaves orphans that
//! cleanup removes, the committed window reads the same, and pyiceberg reads
//! the table afterwards.
#![cfg(all(feature = "sqlite", feature = "postgres"))] // every test runs on both SQL catalogs

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::faulty::{Fault, FaultyCatalog};
use common::*;
use futures::TryStreamExt;
use iceberg::table::Table;
use offload_core::{BucketGrid, CommittedWindow, RepairMetadata, RunId, SinkTable, Watermark};
use offload_sink_iceberg::{IcebergSink, IcebergTable, MaintenanceConfig, Step, committed_window};

macro_rules! on_both_catalogs {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::Backend::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::Backend::postgres().await).await
                }
            )*
        }
    };
}

on_both_catalogs!(
    expiry_keeps_the_newest_and_deletes_only_what_expired_snapshots_referenced,
    retention_and_delete_grace_protect_recent_snapshots,
    expiry_keeps_the_window_commit_a_repair_points_at,
    orphans_go_once_older_than_the_grace_and_referenced_files_never,
    a_crash_between_expiry_and_deletion_leaves_orphans_cleanup_removes,
    the_metadata_log_stays_bounded_and_old_metadata_files_go,
    a_window_committed_during_the_expiry_commit_is_kept,
    expiry_after_a_manifest_rewrite_deletes_the_replaced_manifests,
);

const MINUTE: i64 = 60_000_000;
const ROWS: u64 = 50;

/// Maintenance doing expiry only: no compaction, no manifest rewrite;
/// retention and grace zero (each test sets what it checks).
fn expiry() -> MaintenanceConfig {
    MaintenanceConfig::default()
        .min_input_files(usize::MAX)
        .max_manifests(usize::MAX)
        .snapshot_retention(Duration::ZERO)
        .delete_grace(Duration::ZERO)
        .keep_metadata_files(100)
}

/// The local path of a location written as a path or a `file:` URL.
fn local(location: &str) -> PathBuf {
    let p = location
        .strip_prefix("file://")
        .or_else(|| location.strip_prefix("file:"))
        .unwrap_or(location);
    Path::new(p).components().collect()
}

/// One committed window of the test: its snapshot and the rows main holds after it.
#[derive(Debug, Clone)]
struct Commit {
    snapshot: i64,
    rows: u64,
    run: RunId,
}

/// Commits `n` windows of [`ROWS`] rows, a minute apart, numbered from `first`.
async fn commit_windows(table: &IcebergTable, first: i64, n: i64) -> Vec<Commit> {
    let mut out = Vec::new();
    for k in first..first + n {
        let after = match table.committed().await.unwrap() {
            Some(c) => c.until,
            None => Watermark::MIN,
        };
        let batch = trades(T0 + k * MINUTE, 1 + k * 100, ROWS as usize, 1_000);
        let (_, run) = commit_window(table, after, &[batch]).await;
        let t = table.load().await.unwrap();
        out.push(Commit {
            snapshot: t.metadata().current_snapshot_id().unwrap(),
            rows: rows_at(&t, t.metadata().current_snapshot_id().unwrap()).await,
            run,
        });
    }
    out
}

/// main's ancestry, newest first.
fn main_chain(t: &Table) -> Vec<i64> {
    let meta = t.metadata();
    let mut out = Vec::new();
    let mut next = meta.current_snapshot_id();
    while let Some(id) = next {
        let Some(s) = meta.snapshot_by_id(id) else { break };
        out.push(id);
        next = s.parent_snapshot_id();
    }
    out
}

/// What snapshot `id` references: its manifest list, manifests and live files.
async fn snapshot_files(t: &Table, id: i64) -> BTreeSet<PathBuf> {
    let s = t.metadata().snapshot_by_id(id).unwrap();
    let mut out = BTreeSet::from([local(s.manifest_list())]);
    let list = t.manifest_list_reader(s).load().await.unwrap();
    for m in list.entries() {
        out.insert(local(&m.manifest_path));
        for e in m.load_manifest(t.file_io()).await.unwrap().entries() {
            if e.is_alive() {
                out.insert(local(e.file_path()));
            }
        }
    }
    out
}

async fn files_of(t: &Table, ids: &[i64]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for id in ids {
        out.extend(snapshot_files(t, *id).await);
    }
    out
}

/// The metadata files the table names: the current one and the log.
fn metadata_named(t: &Table) -> BTreeSet<PathBuf> {
    let mut out: BTreeSet<PathBuf> = t
        .metadata()
        .metadata_log()
        .iter()
        .map(|l| local(&l.metadata_file))
        .collect();
    out.insert(local(t.metadata_location().unwrap()));
    out
}

/// `*.metadata.json` files on disk.
fn metadata_on_disk(t: &Table) -> BTreeSet<PathBuf> {
    let dir = local(t.metadata().location()).join("metadata");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .collect()
}

/// Rows a scan of snapshot `id` returns (reads every file it references).
async fn rows_at(t: &Table, id: i64) -> u64 {
    let batches: Vec<_> = t
        .scan()
        .snapshot_id(id)
        .select_all()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

/// Every remaining snapshot reads the rows it held when committed, and every
/// file any snapshot references exists.
async fn assert_all_readable(t: &Table, commits: &[Commit]) {
    for s in t.metadata().snapshots() {
        let id = s.snapshot_id();
        if let Some(c) = commits.iter().find(|c| c.snapshot == id) {
            assert_eq!(rows_at(t, id).await, c.rows, "snapshot {id} reads its rows");
        }
        for f in snapshot_files(t, id).await {
            assert!(
                f.exists(),
                "{} (referenced by snapshot {id}) was deleted",
                f.display()
            );
        }
    }
}

fn missing(files: &BTreeSet<PathBuf>) -> bool {
    files.iter().all(|f| !f.exists())
}

async fn window(table: &IcebergTable) -> (Option<CommittedWindow>, Option<CommittedWindow>) {
    let t = table.load().await.unwrap();
    (
        table.committed().await.unwrap(),
        committed_window(t.metadata()).unwrap(),
    )
}

async fn expiry_keeps_the_newest_and_deletes_only_what_expired_snapshots_referenced(b: Backend) {
    let table = b.table("lake.expire_keep").await;
    table.prepare(trades_schema()).await.unwrap();
    let commits = commit_windows(&table, 0, 12).await;
    let before = table.load().await.unwrap();
    let ids: Vec<i64> = commits.iter().rev().map(|c| c.snapshot).collect();
    assert_eq!(main_chain(&before), ids);
    let (kept, expired) = ids.split_at(4);
    let kept_files = files_of(&before, kept).await;
    let only_expired: BTreeSet<PathBuf> = files_of(&before, expired)
        .await
        .difference(&kept_files)
        .cloned()
        .collect();
    // Fast appends carry every manifest forward: the expired snapshots' own
    // files are their manifest lists.
    assert_eq!(only_expired.len(), expired.len(), "{only_expired:?}");
    assert!(!missing(&only_expired));
    let window_before = window(&table).await;
    let last_run = commits.last().unwrap().run;

    let report = table.maintain_with(&expiry().keep_snapshots(4)).await.unwrap();
    let after = table.load().await.unwrap();
    assert_eq!(main_chain(&after), kept, "the newest four stay");
    assert_eq!(after.metadata().snapshots().len(), 4);
    assert_eq!(report.snapshots_expired, 8);
    assert_eq!(
        report.commits, 1,
        "one expiry commit (with the metadata-log bound)"
    );
    assert_eq!(report.files_deleted, only_expired.len() as u64, "{report:?}");
    assert_eq!(
        report.orphans_deleted, 0,
        "the default orphan grace keeps young files"
    );
    assert!(
        missing(&only_expired),
        "files only expired snapshots referenced are gone"
    );
    assert_all_readable(&after, &commits).await;
    assert_eq!(
        after
            .metadata()
            .properties()
            .get("write.metadata.previous-versions-max"),
        Some(&"100".to_owned())
    );

    assert_eq!(
        window(&table).await,
        window_before,
        "the committed window reads the same"
    );
    assert!(table.was_committed(last_run).await.unwrap());
    assert_eq!(figures(&read_back(&table).await).count, 12 * ROWS);

    // Nothing more to do: no commit, nothing deleted.
    let again = table.maintain_with(&expiry().keep_snapshots(4)).await.unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(main_chain(&table.load().await.unwrap()), kept);
}

async fn retention_and_delete_grace_protect_recent_snapshots(b: Backend) {
    let table = b.table("lake.expire_rules").await;
    table.prepare(trades_schema()).await.unwrap();
    let mut commits = commit_windows(&table, 0, 4).await;
    // A gap in the commit timestamps to aim the cut-offs into (not
    // synchronisation: the assertions hold for any gap above the few
    // milliseconds between computing a cut-off and maintain reading the clock).
    tokio::time::sleep(Duration::from_secs(2)).await;
    commits.extend(commit_windows(&table, 4, 4).await);
    let t = table.load().await.unwrap();
    let ts = |i: usize| {
        t.metadata()
            .snapshot_by_id(commits[i].snapshot)
            .unwrap()
            .timestamp_ms()
    };
    assert!(ts(4) - ts(3) >= 2_000);
    let mid = SystemTime::UNIX_EPOCH + Duration::from_millis(((ts(3) + ts(4)) / 2) as u64);
    let since_mid = || SystemTime::now().duration_since(mid).unwrap();
    let ids = |range: std::ops::Range<usize>| -> Vec<i64> {
        commits[range].iter().rev().map(|c| c.snapshot).collect()
    };
    let window_before = window(&table).await;

    // delete_grace reaching into the gap: s4..s7 replaced their parents
    // within it, so s3 (older than the gap, replaced by s4) stays too.
    let report = table
        .maintain_with(&expiry().keep_snapshots(1).delete_grace(since_mid()))
        .await
        .unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), ids(3..8));
    assert_eq!(report.snapshots_expired, 3);
    assert_all_readable(&t, &commits).await;

    // Retention reaching into the gap: s4..s7 are younger; s3 goes.
    let report = table
        .maintain_with(&expiry().keep_snapshots(1).snapshot_retention(since_mid()))
        .await
        .unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), ids(4..8));
    assert_eq!(report.snapshots_expired, 1);
    assert_all_readable(&t, &commits).await;

    // A longer grace keeps everything; then only the count is left.
    let report = table
        .maintain_with(&expiry().keep_snapshots(1).delete_grace(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(report.snapshots_expired, 0);
    let report = table.maintain_with(&expiry().keep_snapshots(2)).await.unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), ids(6..8));
    assert_eq!(report.snapshots_expired, 2);
    assert_all_readable(&t, &commits).await;
    assert_eq!(window(&table).await, window_before);
    assert!(table.was_committed(commits[7].run).await.unwrap());
}

async fn expiry_keeps_the_window_commit_a_repair_points_at(b: Backend) {
    let table = b.table("lake.expire_repair").await;
    table.prepare(trades_schema()).await.unwrap();
    let commits = commit_windows(&table, 0, 3).await;
    let until = table.committed().await.unwrap().unwrap().until;
    let base = table.committed().await.unwrap().unwrap().version;
    // Late rows repaired below the watermark: the repair snapshot keeps the
    // watermark; the run, engine and token come from the window commit below.
    let late = trades(T0 + 5_000, 10_000, 3, 10_000);
    let run = RunId::new();
    let staged = stage(&table, run, std::slice::from_ref(&late)).await;
    let grid = BucketGrid::covering(T0, until, Duration::from_millis(10)).unwrap();
    let buckets = (0..3).map(|i| grid.bucket(i)).collect();
    staged
        .commit_repair(&RepairMetadata::new(base, until, run, "sweeper", 1, buckets, 3))
        .await
        .unwrap();
    let before = table.load().await.unwrap();
    let repair = before.metadata().current_snapshot_id().unwrap();
    let window_before = window(&table).await;
    assert_eq!(window_before.0.as_ref().unwrap().run_id, Some(commits[2].run));

    // keep_snapshots 1 would leave only the repair, whose own run id would
    // then name the window: the window commit below it stays.
    let report = table.maintain_with(&expiry().keep_snapshots(1)).await.unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), vec![repair, commits[2].snapshot]);
    assert_eq!(report.snapshots_expired, 2);
    assert_eq!(window(&table).await, window_before);
    assert!(table.was_committed(commits[2].run).await.unwrap());
    assert!(table.was_committed(run).await.unwrap());
    assert_eq!(rows_at(&t, repair).await, 3 * ROWS + 3);
    assert_all_readable(&t, &commits).await;
}

/// Sets a file's modification time `age` into the past.
fn age(path: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

async fn orphans_go_once_older_than_the_grace_and_referenced_files_never(b: Backend) {
    let table = b.table("lake.orphans").await;
    table.prepare(trades_schema()).await.unwrap();
    let commits = commit_windows(&table, 0, 3).await;
    let t = table.load().await.unwrap();
    let root = local(t.metadata().location());
    let window_before = window(&table).await;
    let referenced = files_of(&t, &main_chain(&t)).await;
    let named = metadata_named(&t);

    // Strays: a parquet file of another writer, a metadata file as a refused
    // commit leaves it (a copy of the current one under the next number), a
    // manifest of a crashed commit, and a file of this sink's writer naming.
    let data_dir = root.join("data");
    let meta_dir = root.join("metadata");
    let stray_parquet = data_dir.join(format!("{}.parquet", uuid::Uuid::new_v4()));
    std::fs::write(&stray_parquet, b"PAR1 not really").unwrap();
    let stray_json = meta_dir.join(format!("00099-{}.metadata.json", uuid::Uuid::new_v4()));
    std::fs::copy(local(t.metadata_location().unwrap()), &stray_json).unwrap();
    let a_manifest = referenced
        .iter()
        .find(|p| p.to_string_lossy().ends_with("-m0.avro"))
        .unwrap();
    let stray_manifest = meta_dir.join(format!("{}-m0.avro", uuid::Uuid::new_v4()));
    std::fs::copy(a_manifest, &stray_manifest).unwrap();
    let old_stray = data_dir.join("old-stray.parquet");
    std::fs::write(&old_stray, b"old").unwrap();
    age(&old_stray, Duration::from_secs(7200));
    // Named like a data file of a run that started just now: kept while the
    // run is within the grace, however old the file looks.
    let young_run = data_dir.join(format!("{}-7-0-0.parquet", RunId::new()));
    std::fs::write(&young_run, b"young run").unwrap();
    age(&young_run, Duration::from_secs(7200));

    // The default grace (24 h) keeps them all.
    assert_eq!(table.cleanup().await.unwrap(), 0);
    // One hour: only the old stray goes.
    assert_eq!(table.cleanup_orphans(Duration::from_secs(3600)).await.unwrap(), 1);
    assert!(!old_stray.exists());
    for p in [&stray_parquet, &stray_json, &stray_manifest, &young_run] {
        assert!(p.exists(), "{} deleted inside the grace", p.display());
    }
    // No grace: every unreferenced file goes, nothing referenced does.
    assert_eq!(table.cleanup_orphans(Duration::ZERO).await.unwrap(), 4);
    for p in [&stray_parquet, &stray_json, &stray_manifest, &young_run] {
        assert!(!p.exists(), "{} kept", p.display());
    }
    let t = table.load().await.unwrap();
    assert!(referenced.iter().all(|p| p.exists()));
    assert!(named.iter().all(|p| p.exists()), "metadata-log files stay");
    assert_all_readable(&t, &commits).await;
    assert_eq!(window(&table).await, window_before);
    assert_eq!(table.cleanup_orphans(Duration::ZERO).await.unwrap(), 0);

    // maintain's own orphan step uses its grace and reports the count.
    std::fs::write(data_dir.join("late-stray.parquet"), b"x").unwrap();
    let report = table
        .maintain_with(&expiry().keep_snapshots(10).orphan_grace(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(report.orphans_deleted, 1);
    assert_eq!(report.snapshots_expired, 0);
    assert!(!data_dir.join("late-stray.parquet").exists());
    assert_eq!(figures(&read_back(&table).await).count, 3 * ROWS);
}

async fn a_crash_between_expiry_and_deletion_leaves_orphans_cleanup_removes(b: Backend) {
    let table = b.table("lake.expire_crash").await;
    table.prepare(trades_schema()).await.unwrap();
    let commits = commit_windows(&table, 0, 6).await;
    let before = table.load().await.unwrap();
    let ids = main_chain(&before);
    let kept_files = files_of(&before, &ids[..2]).await;
    let only_expired: BTreeSet<PathBuf> = files_of(&before, &ids[2..])
        .await
        .difference(&kept_files)
        .cloned()
        .collect();
    assert_eq!(only_expired.len(), 4);

    // The program dies right after the expiry commit (the hook panics).
    let crash = expiry()
        .keep_snapshots(2)
        .on_step(Arc::new(|step| assert_ne!(step, Step::Expired, "crash")));
    let t2 = table.clone();
    let died = tokio::spawn(async move { t2.maintain_with(&crash).await }).await;
    assert!(died.unwrap_err().is_panic());
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), ids[..2], "the expiry was committed");
    assert!(
        only_expired.iter().all(|p| p.exists()),
        "nothing deleted before the crash"
    );
    assert_all_readable(&t, &commits).await;

    // A later maintain has nothing to expire; orphan removal (no grace)
    // deletes exactly what the crash left.
    let report = table.maintain_with(&expiry().keep_snapshots(2)).await.unwrap();
    assert_eq!(report.snapshots_expired, 0);
    assert_eq!(report.files_deleted, 0);
    assert!(only_expired.iter().all(|p| p.exists()));
    assert_eq!(
        table.cleanup_orphans(Duration::ZERO).await.unwrap(),
        only_expired.len() as u64
    );
    assert!(missing(&only_expired));
    assert_all_readable(&table.load().await.unwrap(), &commits).await;

    // Without a crash the steps come in order: the expiry is committed before
    // anything is deleted, and Deleting follows a deletion.
    let more = commit_windows(&table, 6, 2).await;
    let t = table.load().await.unwrap();
    let lists: Vec<PathBuf> = main_chain(&t)[2..]
        .iter()
        .map(|id| local(t.metadata().snapshot_by_id(*id).unwrap().manifest_list()))
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let watched = lists.clone();
    let cfg = expiry().keep_snapshots(2).on_step(Arc::new(move |step| {
        let present = watched.iter().filter(|p| p.exists()).count();
        log.lock().unwrap().push((step, present));
    }));
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.snapshots_expired, 2);
    assert_eq!(report.files_deleted, 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0],
        (Step::Expired, 2),
        "nothing deleted when the expiry is committed"
    );
    assert_eq!(seen[1].0, Step::Deleting);
    assert!(seen[1].1 < 2, "a file is deleted before Deleting is reported");
    assert!(lists.iter().all(|p| !p.exists()));
    let all: Vec<Commit> = commits.into_iter().chain(more).collect();
    assert_all_readable(&table.load().await.unwrap(), &all).await;
}

async fn the_metadata_log_stays_bounded_and_old_metadata_files_go(b: Backend) {
    let table = b.table("lake.metadata_log").await;
    table.prepare(trades_schema()).await.unwrap();
    let commits = commit_windows(&table, 0, 8).await;
    let before = table.load().await.unwrap();
    assert!(before.metadata().metadata_log().len() >= 8);
    assert_eq!(metadata_on_disk(&before), metadata_named(&before));

    let report = table
        .maintain_with(&expiry().keep_snapshots(100).keep_metadata_files(3))
        .await
        .unwrap();
    let after = table.load().await.unwrap();
    assert_eq!(report.snapshots_expired, 0);
    assert_eq!(report.commits, 1, "the property commit");
    assert_eq!(after.metadata().metadata_log().len(), 3);
    let dropped: BTreeSet<PathBuf> = metadata_named(&before)
        .difference(&metadata_named(&after))
        .cloned()
        .collect();
    assert_eq!(report.files_deleted, dropped.len() as u64);
    assert!(dropped.len() >= 6, "{dropped:?}");
    assert!(missing(&dropped));
    assert_eq!(
        metadata_on_disk(&after),
        metadata_named(&after),
        "only named metadata files on disk"
    );

    // Later commits keep the log at 3; the files leaving it are orphans.
    let more = commit_windows(&table, 8, 2).await;
    let t = table.load().await.unwrap();
    assert_eq!(t.metadata().metadata_log().len(), 3);
    assert_eq!(metadata_on_disk(&t).len(), metadata_named(&t).len() + 2);
    let report = table
        .maintain_with(
            &expiry()
                .keep_snapshots(100)
                .keep_metadata_files(3)
                .orphan_grace(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(report.commits, 0);
    assert_eq!(report.orphans_deleted, 2);
    let t = table.load().await.unwrap();
    assert_eq!(metadata_on_disk(&t), metadata_named(&t));
    let all: Vec<Commit> = commits.into_iter().chain(more).collect();
    assert_all_readable(&t, &all).await;
    assert_eq!(figures(&read_back(&table).await).count, 10 * ROWS);
}

async fn a_window_committed_during_the_expiry_commit_is_kept(b: Backend) {
    let faulty = Arc::new(FaultyCatalog::new(b.sink().await.catalog().clone()));
    let maintainer = open(
        &IcebergSink::with_catalog(faulty.clone(), b.config()),
        "lake.expire_race",
    );
    // The offload writes through its own connection.
    let offload = b.table("lake.expire_race").await;
    offload.prepare(trades_schema()).await.unwrap();
    let mut commits = commit_windows(&offload, 0, 6).await;
    let ids = main_chain(&offload.load().await.unwrap());

    // The expiry's catalog commit waits at the gate while a window lands.
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    faulty.arm(Fault::Gate {
        reached: reached_tx,
        release: release_rx,
    });
    let m = maintainer.clone();
    let expiry = tokio::spawn(async move { m.maintain_with(&expiry().keep_snapshots(2)).await });
    reached.await.unwrap();
    let late = commit_windows(&offload, 6, 1).await;
    let late_files = snapshot_files(&offload.load().await.unwrap(), late[0].snapshot).await;
    commits.extend(late.clone());
    release.send(()).unwrap();

    // iceberg re-applies the expiry on the new state: both land.
    let report = expiry.await.unwrap().unwrap();
    assert_eq!(report.snapshots_expired, 4);
    let t = offload.load().await.unwrap();
    let mut want = vec![late[0].snapshot];
    want.extend(&ids[..2]);
    assert_eq!(main_chain(&t), want);
    assert!(
        late_files.iter().all(|p| p.exists()),
        "the new snapshot's files stay"
    );
    assert_all_readable(&t, &commits).await;
    assert_eq!(
        offload.committed().await.unwrap().unwrap().run_id,
        Some(late[0].run)
    );
    assert_eq!(figures(&read_back(&offload).await).count, 7 * ROWS);
}

/// Manifest paths of snapshot `id`.
async fn manifests_of(t: &Table, id: i64) -> BTreeSet<PathBuf> {
    let s = t.metadata().snapshot_by_id(id).unwrap();
    let list = t.manifest_list_reader(s).load().await.unwrap();
    list.entries().iter().map(|m| local(&m.manifest_path)).collect()
}

async fn expiry_after_a_manifest_rewrite_deletes_the_replaced_manifests(b: Backend) {
    let table = b.table("lake.expire_rewrite").await;
    table.prepare(trades_schema()).await.unwrap();
    let mut commits = commit_windows(&table, 0, 6).await;
    let t = table.load().await.unwrap();
    let appended = manifests_of(&t, commits[5].snapshot).await;
    assert_eq!(appended.len(), 6, "one manifest per fast append");

    // The manifest rewrite adds a replace snapshot that records the data
    // version and the window's markers: the window commit below it is not
    // needed to read the committed window, so it expires in the same run and
    // the appended manifests go with it.
    let window = table.committed().await.unwrap().unwrap();
    let report = table
        .maintain_with(&expiry().max_manifests(3).keep_snapshots(1))
        .await
        .unwrap();
    assert_eq!(report.commits, 2, "{report:?}");
    assert_eq!(report.snapshots_expired, 6, "{report:?}");
    let t = table.load().await.unwrap();
    let chain = main_chain(&t);
    assert_eq!(chain.len(), 1);
    assert_eq!(
        table.committed().await.unwrap().unwrap(),
        window,
        "the window reads the same"
    );
    let rewritten = manifests_of(&t, chain[0]).await;
    assert!(rewritten.is_disjoint(&appended));
    assert!(missing(&appended), "the replaced manifests are deleted");
    commits = vec![Commit {
        snapshot: chain[0],
        rows: 6 * ROWS,
        run: commits[5].run,
    }];
    assert_all_readable(&t, &commits).await;

    // Later windows append to the rewritten manifests; expiry then keeps
    // what they read.
    commits.extend(commit_windows(&table, 6, 2).await);
    let report = table.maintain_with(&expiry().keep_snapshots(1)).await.unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), vec![commits.last().unwrap().snapshot]);
    assert_eq!(report.snapshots_expired, 2);
    assert!(
        rewritten.iter().all(|p| p.exists()),
        "the rewrite's manifests are still read"
    );
    let commits = vec![commits.last().unwrap().clone()];
    assert_all_readable(&t, &commits).await;
    assert_eq!(figures(&read_back(&table).await).count, 8 * ROWS);
}

/// pyiceberg (an independent reader and writer on the same SQLite catalog)
/// deletes whole files; expiry then deletes those data files, and pyiceberg
/// reads the expired table with the right rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_reads_the_table_after_expiry_deleted_data_files() {
    let python = offload_testkit::venv_python();
    let b = Backend::sqlite();
    let table = b.table("lake.expire_py").await;
    table.prepare(trades_schema()).await.unwrap();
    let mut commits = commit_windows(&table, 0, 6).await;
    let first_files: BTreeSet<PathBuf> = {
        let t = table.load().await.unwrap();
        let mut out = BTreeSet::new();
        for id in &main_chain(&t)[4..] {
            out.extend(
                snapshot_files(&t, *id)
                    .await
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|x| x == "parquet")),
            );
        }
        out
    };
    assert_eq!(first_files.len(), 2, "windows 0 and 1 wrote one file each");

    let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
cfg = json.loads(sys.argv[1])
cat = SqlCatalog(cfg["catalog"], uri=f"sqlite:///{cfg['db']}", warehouse=f"file://{cfg['warehouse']}")
t = cat.load_table(cfg["table"])
if cfg["delete"]:
    t.delete(delete_filter=cfg["delete"])
    t = cat.load_table(cfg["table"])
data = t.scan(selected_fields=("seq",)).to_arrow()
print(json.dumps({"rows": data.num_rows, "min_seq": min(data["seq"].to_pylist())}))
"#;
    let run = |delete: Option<&str>| {
        let cfg = serde_json::json!({
            "db": b.dir.path().join("catalog.db"),
            "warehouse": b.warehouse(),
            "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
            "table": "lake.expire_py",
            "delete": delete,
        });
        let out = Command::new("timeout")
            .arg("300")
            .arg(&python)
            .arg("-c")
            .arg(script)
            .arg(cfg.to_string())
            .output()
            .expect("run pyiceberg");
        assert!(
            out.status.success(),
            "pyiceberg failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Windows 0 and 1 (seq 1..=50, 101..=150) go as whole files.
    let deleted = run(Some("seq < 200"));
    assert_eq!(deleted["rows"], 4 * ROWS);
    // Our windows go on on top of pyiceberg's snapshot (their snapshots read
    // the rows as they were committed, without the deleted windows).
    commits.extend(commit_windows(&table, 6, 2).await);
    assert_eq!(commits.last().unwrap().rows, 6 * ROWS);
    assert!(
        first_files.iter().all(|p| p.exists()),
        "the delete only dropped them from the table"
    );
    let window_before = window(&table).await;

    let report = table.maintain_with(&expiry().keep_snapshots(2)).await.unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(t.metadata().snapshots().len(), 2);
    assert_eq!(report.snapshots_expired, 7, "six windows and pyiceberg's delete");
    assert!(
        missing(&first_files),
        "data files only expired snapshots read are deleted"
    );
    assert_all_readable(&t, &commits).await;
    assert_eq!(window(&table).await, window_before);
    assert!(table.was_committed(commits.last().unwrap().run).await.unwrap());
    let read = run(None);
    assert_eq!(read["rows"], 6 * ROWS);
    assert_eq!(read["min_seq"], 201);
}

/// Refs other than main (made with pyiceberg; iceberg-rust 0.10.1 cannot):
/// a tag's snapshot and a branch's history are never expired, and expiry
/// does not cut main's ancestry below them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_other_refs_reach_are_kept() {
    let python = offload_testkit::venv_python();
    let b = Backend::sqlite();
    let table = b.table("lake.expire_refs").await;
    table.prepare(trades_schema()).await.unwrap();
    let mut commits = commit_windows(&table, 0, 6).await;
    let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
cfg = json.loads(sys.argv[1])
cat = SqlCatalog(cfg["catalog"], uri=f"sqlite:///{cfg['db']}", warehouse=f"file://{cfg['warehouse']}")
t = cat.load_table(cfg["table"])
with t.manage_snapshots() as ms:
    if cfg["kind"] == "tag":
        ms.create_tag(snapshot_id=cfg["snapshot"], tag_name=cfg["name"])
    else:
        ms.create_branch(snapshot_id=cfg["snapshot"], branch_name=cfg["name"])
print(json.dumps(sorted(cat.load_table(cfg["table"]).metadata.refs.keys())))
"#;
    let make_ref = |kind: &str, name: &str, snapshot: i64| {
        let cfg = serde_json::json!({
            "db": b.dir.path().join("catalog.db"),
            "warehouse": b.warehouse(),
            "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
            "table": "lake.expire_refs",
            "kind": kind,
            "name": name,
            "snapshot": snapshot,
        });
        let out = Command::new("timeout")
            .arg("300")
            .arg(&python)
            .arg("-c")
            .arg(script)
            .arg(cfg.to_string())
            .output()
            .expect("run pyiceberg");
        assert!(
            out.status.success(),
            "pyiceberg failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ids = |c: &[Commit]| -> Vec<i64> { c.iter().rev().map(|c| c.snapshot).collect() };

    // A tag on window 3: windows 3..5 stay, 0..2 expire.
    make_ref("tag", "audit", commits[3].snapshot);
    let report = table.maintain_with(&expiry().keep_snapshots(1)).await.unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(main_chain(&t), ids(&commits[3..]));
    assert_eq!(report.snapshots_expired, 3);
    assert_eq!(rows_at(&t, commits[3].snapshot).await, 4 * ROWS, "the tag reads");
    assert_all_readable(&t, &commits).await;

    // A branch at window 4 (its history is windows 4 and 3): nothing of it
    // expires, nor anything above it on main.
    commits.extend(commit_windows(&table, 6, 2).await);
    make_ref("branch", "dev", commits[4].snapshot);
    let report = table.maintain_with(&expiry().keep_snapshots(1)).await.unwrap();
    let t = table.load().await.unwrap();
    assert_eq!(report.snapshots_expired, 0);
    assert_eq!(main_chain(&t), ids(&commits[3..]));
    assert_all_readable(&t, &commits).await;
    assert_eq!(figures(&read_back(&table).await).count, 8 * ROWS);
}
