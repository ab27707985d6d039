//! Maintenance's own commit path (a `replace` snapshot swapped in through the
//! catalog's compare-and-swap) against real SQL catalogs (SQLite and
//! PostgreSQL; the PostgreSQL variants fail when the server is unreachable):
//! a manifest rewrite keeps the rows, the committed window and the data
//! version; offload commits and repairs built before it land after it; a
//! replace that loses a race is rebuilt on the new state.
#![cfg(all(feature = "sqlite", feature = "postgres"))]

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use iceberg::spec::{ManifestContentType, Operation};
use offload_core::{BucketGrid, RepairMetadata, RunId, SinkTable, Watermark};
use offload_sink_iceberg::{IcebergTable, MaintenanceConfig, Step};

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
    manifest_rewrite_keeps_rows_window_and_version,
    window_and_repair_built_before_a_replace_land_after_it,
    replace_that_loses_a_race_is_rebuilt_on_the_new_state,
);

const MS: i64 = 1_000;

/// Maintenance that only rewrites manifests: no partition qualifies for
/// compaction and no snapshot is old enough to expire.
fn manifests_only() -> MaintenanceConfig {
    MaintenanceConfig::default()
        .min_input_files(1_000_000)
        .max_manifests(1)
        .snapshot_retention(Duration::from_secs(365 * 86_400))
        .keep_snapshots(1_000_000)
}

/// `n` windows of 10 rows each, 1 s apart; returns the last (until, run).
async fn windows(table: &IcebergTable, n: usize) -> (Watermark, RunId) {
    let mut after = Watermark::MIN;
    let mut last = None;
    for i in 0..n {
        let batch = trades(T0 + i as i64 * 1_000 * MS, (i * 10) as i64 + 1, 10, 10 * MS);
        let (until, run) = commit_window(table, after, std::slice::from_ref(&batch)).await;
        after = until;
        last = Some((until, run));
    }
    last.unwrap()
}

/// Data manifests of main's snapshot holding live entries.
async fn live_manifests(table: &IcebergTable) -> usize {
    let t = table.load().await.unwrap();
    let snap = t.metadata().current_snapshot().unwrap();
    let list = t.manifest_list_reader(snap).load().await.unwrap();
    list.entries()
        .iter()
        .filter(|m| m.content == ManifestContentType::Data)
        .filter(|m| m.added_files_count.unwrap_or(0) + m.existing_files_count.unwrap_or(0) > 0)
        .count()
}

async fn main_operation(table: &IcebergTable) -> Operation {
    let t = table.load().await.unwrap();
    t.metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .operation
        .clone()
}

async fn manifest_rewrite_keeps_rows_window_and_version(b: Backend) {
    let table = b.table("lake.manifests").await;
    table.prepare(trades_schema()).await.unwrap();
    let (until, run) = windows(&table, 6).await;
    assert_eq!(live_manifests(&table).await, 6, "one manifest per fast append");
    let before = table.committed().await.unwrap().unwrap();
    let rows = figures(&read_back(&table).await);

    let report = table.maintain_with(&manifests_only()).await.unwrap();
    assert_eq!(
        (report.manifests_before, report.manifests_after),
        (6, 1),
        "{report:?}"
    );
    assert_eq!(report.files_rewritten, 0);
    assert_eq!(main_operation(&table).await, Operation::Replace);
    assert_eq!(live_manifests(&table).await, 1);

    let after = table.committed().await.unwrap().unwrap();
    assert_eq!(
        after, before,
        "window, run, engine, token and data version read the same"
    );
    assert_eq!(after.until, until);
    assert!(table.was_committed(run).await.unwrap());
    assert_eq!(figures(&read_back(&table).await), rows, "same rows");

    // Nothing left to do: a second run commits nothing.
    let again = table.maintain_with(&manifests_only()).await.unwrap();
    assert_eq!(again.commits, 0, "{again:?}");
}

async fn window_and_repair_built_before_a_replace_land_after_it(b: Backend) {
    let table = b.table("lake.race").await;
    table.prepare(trades_schema()).await.unwrap();
    let (until, _) = windows(&table, 3).await;
    let version = table.committed().await.unwrap().unwrap().version;

    // Staged before the replace: a late row (repair) and the next window.
    let late = trades(T0 + 5 * MS, 10_000, 1, MS);
    let repair_run = RunId::new();
    let repair = stage(&table, repair_run, std::slice::from_ref(&late)).await;
    let next = trades(T0 + 10_000 * MS, 20_000, 10, MS);
    let next_until = last_position(&next);
    let window_run = RunId::new();
    let window = stage(&table, window_run, std::slice::from_ref(&next)).await;

    let report = table.maintain_with(&manifests_only()).await.unwrap();
    assert_eq!(report.manifests_after, 1, "{report:?}");
    assert_eq!(
        table.committed().await.unwrap().unwrap().version,
        version,
        "a replace keeps the data version"
    );

    // The repair was fenced on the version before the replace: it lands.
    let grid = BucketGrid::covering(T0, until, Duration::from_secs(1)).unwrap();
    let m = RepairMetadata::new(
        version.clone(),
        until,
        repair_run,
        "sweeper",
        7,
        vec![grid.bucket(0)],
        1,
    );
    repair.commit_repair(&m).await.unwrap();
    // The window's fast append was built before too: it lands on the new main.
    window
        .commit(&meta(until, next_until, window_run, "test"))
        .await
        .unwrap();
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!(c.until, next_until);
    assert_eq!(c.run_id, Some(window_run));
    assert!(table.was_committed(repair_run).await.unwrap());
    assert_eq!(figures(&read_back(&table).await).count, 30 + 1 + 10);
}

async fn replace_that_loses_a_race_is_rebuilt_on_the_new_state(b: Backend) {
    let table = b.table("lake.rebuild").await;
    table.prepare(trades_schema()).await.unwrap();
    let (until, _) = windows(&table, 4).await;

    // Hold the replace after its manifests are written (before the swap),
    // commit a window meanwhile, then let the replace go on.
    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((reached_tx, go_rx))));
    let hook_gate = gate.clone();
    let cfg = manifests_only().on_step(Arc::new(move |step| {
        if step == Step::ManifestsWritten
            && let Some((reached, go)) = hook_gate.lock().unwrap().take()
        {
            reached.send(()).unwrap();
            // Hand this worker's queue to another thread while it waits
            // (a task parked in its LIFO slot would wait with it).
            tokio::task::block_in_place(|| go.recv().unwrap());
        }
    }));
    let maintained = {
        let table = table.clone();
        tokio::spawn(async move { table.maintain_with(&cfg).await })
    };
    tokio::task::spawn_blocking(move || reached_rx.recv().unwrap())
        .await
        .unwrap();
    let next = trades(T0 + 10_000 * MS, 20_000, 10, MS);
    let next_until = last_position(&next);
    let run = RunId::new();
    stage(&table, run, std::slice::from_ref(&next))
        .await
        .commit(&meta(until, next_until, run, "test"))
        .await
        .unwrap();
    go_tx.send(()).unwrap();
    let report = maintained.await.unwrap().unwrap();

    assert_eq!(report.conflicts_retried, 1, "{report:?}");
    assert_eq!(main_operation(&table).await, Operation::Replace);
    assert_eq!(
        live_manifests(&table).await,
        1,
        "the rebuilt replace covers the new window too"
    );
    let c = table.committed().await.unwrap().unwrap();
    assert_eq!(
        c.until, next_until,
        "the window that won the race is the committed one"
    );
    assert_eq!(c.run_id, Some(run));
    assert_eq!(figures(&read_back(&table).await).count, 50);
}
