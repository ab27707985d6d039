//! File-store behaviour beyond the shared contract: persistence, crash safety,
//! corruption detection, and leases across stores and processes.
#![cfg(feature = "file")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use common::store_error;
use offload_core::{Error, ManualClock, RunEvent, RunId, RunStatus, TableState, Watermark, WatermarkStore};
use offload_watermark_store::{FileStore, StoreError};

const LONG: Duration = Duration::from_secs(3600);

fn open(dir: &Path) -> FileStore {
    FileStore::open(dir).expect("open file store")
}

/// A table with a watermark, a finished run and a failure: every field set.
async fn populated(store: &FileStore, table: &str) -> TableState {
    let lease = store.acquire_lease(table, "a", LONG).await.unwrap();
    store
        .compare_and_set(&lease, None, Watermark::new(1_767_225_600_000_000, 3))
        .await
        .unwrap();
    let run_id = RunId::new();
    store
        .record_run(&lease, RunEvent::Started { run_id })
        .await
        .unwrap();
    store
        .record_run(
            &lease,
            RunEvent::Failed {
                run_id,
                error: "boom".into(),
                duration: Duration::from_millis(7),
            },
        )
        .await
        .unwrap();
    store.load(table).await.unwrap()
}

#[track_caller]
fn assert_corrupt(e: &Error, path: &Path) {
    let (err, retryable) = store_error(e);
    assert!(!retryable, "corruption is not retryable: {e}");
    match err {
        StoreError::Corrupt { path: p, .. } => assert_eq!(p, path),
        other => panic!("expected StoreError::Corrupt, got {other:?}"),
    }
    assert!(
        e.to_string().contains(&path.display().to_string()),
        "the message must name the file: {e}"
    );
}

#[tokio::test]
async fn state_survives_reopening_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let before = populated(&open(dir.path()), "t").await;
    let after = open(dir.path()).load("t").await.unwrap();
    assert_eq!(
        after, before,
        "a new store on the same directory must see the same state"
    );
    assert_eq!(after.status, RunStatus::Failed);
}

#[tokio::test]
async fn a_leftover_temp_file_is_ignored_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = populated(&store, "t").await;
    let state = store.state_path("t").unwrap();
    let temp = dir
        .path()
        .join(format!(".{}.tmp", state.file_name().unwrap().to_str().unwrap()));
    // What a crash between writing the temp file and renaming it leaves behind.
    std::fs::write(&temp, b"offload-watermark-store v1 crc32:00000000 len:5\n{\"ta").unwrap();

    let fresh = open(dir.path());
    assert_eq!(
        fresh.load("t").await.unwrap(),
        before,
        "the temp file must be ignored"
    );
    let lease = fresh.acquire_lease("t", "b", Duration::ZERO).await;
    assert!(matches!(lease, Err(Error::LeaseHeld { .. })), "{lease:?}");
    let lease = store.acquire_lease("t", "a", LONG).await.unwrap();
    store
        .compare_and_set(&lease, before.watermark, Watermark::new(9, 9))
        .await
        .expect("the next update must overwrite the stray temp file");
    assert!(!temp.exists(), "the temp file was renamed into place");
    assert_eq!(
        fresh.load("t").await.unwrap().watermark,
        Some(Watermark::new(9, 9))
    );
}

#[tokio::test]
async fn every_truncation_is_a_typed_error_never_an_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populated(&store, "t").await;
    let path = store.state_path("t").unwrap();
    let good = std::fs::read(&path).unwrap();
    for len in 0..good.len() {
        std::fs::write(&path, &good[..len]).unwrap();
        let e = store
            .load("t")
            .await
            .expect_err(&format!("a file cut to {len} bytes loaded"));
        assert_corrupt(&e, &path);
    }
    std::fs::write(&path, &good).unwrap();
    assert!(store.load("t").await.is_ok(), "the intact file loads again");
}

#[tokio::test]
async fn every_flipped_byte_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populated(&store, "t").await;
    let path = store.state_path("t").unwrap();
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        for mask in [0x01, 0x20, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= mask;
            std::fs::write(&path, &bad).unwrap();
            let e = store
                .load("t")
                .await
                .expect_err(&format!("byte {i} ^ {mask:#x} went unnoticed"));
            assert_corrupt(&e, &path);
        }
    }
}

#[tokio::test]
async fn writes_never_replace_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populated(&store, "t").await;
    let lease = store.acquire_lease("t", "a", LONG).await.unwrap();
    let path = store.state_path("t").unwrap();
    let mut bad = std::fs::read(&path).unwrap();
    let last = bad.len() - 2;
    bad[last] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();

    let attempts: Vec<Result<(), Error>> = vec![
        store.acquire_lease("t", "a", LONG).await.map(drop),
        store.renew_lease(&lease, LONG).await.map(drop),
        store.compare_and_set(&lease, None, Watermark::new(1, 1)).await,
        store
            .record_run(&lease, RunEvent::Started { run_id: RunId::new() })
            .await,
        store.release_lease(&lease).await,
        store.recover_stale_runs(Duration::ZERO).await.map(drop),
    ];
    for attempt in attempts {
        assert_corrupt(
            &attempt.expect_err("an operation on a corrupt file succeeded"),
            &path,
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bad,
        "the corrupt file must be left for a person"
    );
}

#[tokio::test]
async fn a_file_holding_another_table_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populated(&store, "t1").await;
    let t2 = store.state_path("t2").unwrap();
    std::fs::copy(store.state_path("t1").unwrap(), &t2).unwrap();
    assert_corrupt(&store.load("t2").await.unwrap_err(), &t2);
}

#[tokio::test]
async fn recovery_reports_a_corrupt_file_and_still_recovers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for table in ["a", "b"] {
        let lease = store.acquire_lease(table, "h", Duration::ZERO).await.unwrap();
        store
            .record_run(&lease, RunEvent::Started { run_id: RunId::new() })
            .await
            .unwrap();
    }
    populated(&store, "broken").await;
    let broken = store.state_path("broken").unwrap();
    std::fs::write(&broken, b"").unwrap();

    assert_corrupt(
        &store.recover_stale_runs(Duration::ZERO).await.unwrap_err(),
        &broken,
    );
    for table in ["a", "b"] {
        assert_eq!(
            store.load(table).await.unwrap().status,
            RunStatus::Failed,
            "{table}"
        );
    }
}

#[tokio::test]
async fn names_the_file_store_cannot_hold_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long = "é".repeat(50); // 100 bytes, 300 once escaped
    for table in ["", "a\0b", long.as_str()] {
        let e = store.acquire_lease(table, "h", LONG).await.unwrap_err();
        let (err, retryable) = store_error(&e);
        assert!(
            matches!(err, StoreError::InvalidTableName { .. }) && !retryable,
            "{table:?}: {e}"
        );
        assert!(store.load(table).await.is_err());
    }
    assert!(
        store.state_path(&"é".repeat(39)).is_ok(),
        "238 escaped bytes still fit"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the store's lock file"
    );
    let e = store.acquire_lease("t", "", LONG).await.unwrap_err();
    assert!(matches!(store_error(&e).0, StoreError::InvalidHolder { .. }));
    let e = store
        .acquire_lease("t", "h", offload_watermark_store::MAX_DURATION * 2)
        .await
        .unwrap_err();
    assert!(matches!(store_error(&e).0, StoreError::DurationOutOfRange { .. }));
}

#[tokio::test]
async fn a_path_that_is_not_a_directory_fails_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    match FileStore::open(&file) {
        Err(e @ StoreError::Io { .. }) => assert!(e.to_string().contains("plain-file"), "{e}"),
        other => panic!("expected StoreError::Io, got {other:?}"),
    }
}

#[tokio::test]
async fn two_stores_on_one_directory_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let second = open(dir.path());
    let lease = first.acquire_lease("t", "first", LONG).await.unwrap();
    match second.acquire_lease("t", "second", LONG).await {
        Err(Error::LeaseHeld {
            holder, expires_at, ..
        }) => {
            assert_eq!((holder.as_str(), expires_at), ("first", lease.expires_at));
        }
        other => panic!("the second store must be refused, got {other:?}"),
    }
    first
        .compare_and_set(&lease, None, Watermark::new(1, 0))
        .await
        .unwrap();
    assert_eq!(
        second.load("t").await.unwrap().watermark,
        Some(Watermark::new(1, 0))
    );

    // The first "process" goes away without releasing: the OS drops its lock,
    // and the table is free at once although the lease has an hour to run.
    drop(first);
    let taken = second.acquire_lease("t", "second", LONG).await.unwrap();
    assert!(taken.token > lease.token);
    let third = open(dir.path());
    let replay = third
        .compare_and_set(&lease, Some(Watermark::new(1, 0)), Watermark::new(2, 0))
        .await;
    assert!(matches!(replay, Err(Error::LeaseLost { .. })), "{replay:?}");
    assert_eq!(
        third.load("t").await.unwrap().watermark,
        Some(Watermark::new(1, 0))
    );
}

#[tokio::test]
async fn a_lease_taken_over_from_a_live_store_is_not_reclaimed_early() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2, s3) = (open(dir.path()), open(dir.path()), open(dir.path()));
    // s1 holds the OS lock but lets its lease expire; s2 takes over per the
    // contract without being able to lock.
    let a = s1.acquire_lease("t", "a", Duration::ZERO).await.unwrap();
    let b = s2.acquire_lease("t", "b", LONG).await.unwrap();
    assert!(matches!(
        s3.acquire_lease("t", "c", LONG).await,
        Err(Error::LeaseHeld { holder, .. }) if holder == "b"
    ));
    // s1 learns it was superseded and lets go of its lock...
    assert!(matches!(
        s1.compare_and_set(&a, None, Watermark::new(1, 0)).await,
        Err(Error::LeaseLost { .. })
    ));
    // ...which must not make b's live, unlocked lease look abandoned.
    assert!(
        matches!(s3.acquire_lease("t", "c", LONG).await, Err(Error::LeaseHeld { holder, .. }) if holder == "b"),
        "a free lock must not release a lease that was never lock-backed"
    );
    // Once b renews it holds the lock, so its store going away frees the table at once.
    s2.renew_lease(&b, LONG).await.unwrap();
    assert!(matches!(
        s3.acquire_lease("t", "c", LONG).await,
        Err(Error::LeaseHeld { .. })
    ));
    drop(s2);
    let c = s3.acquire_lease("t", "c", LONG).await.unwrap();
    assert!(c.token > b.token);
}

#[tokio::test]
async fn expiry_follows_the_store_clock_and_fencing_survives_skew() {
    let dir = tempfile::tempdir().unwrap();
    let start = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let clock = ManualClock::new(start);
    let store = FileStore::open_with_clock(dir.path(), clock.clone()).unwrap();
    let a = store
        .acquire_lease("t", "a", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(a.expires_at, start + Duration::from_secs(60));
    clock.advance(Duration::from_secs(59));
    assert!(matches!(
        store.acquire_lease("t", "b", LONG).await,
        Err(Error::LeaseHeld { .. })
    ));
    clock.advance(Duration::from_secs(1));
    let b = store
        .acquire_lease("t", "b", Duration::from_secs(300))
        .await
        .unwrap();

    // A second worker whose clock runs ten minutes fast thinks b's lease has
    // expired and takes it; b is then fenced, so the skew costs b its lease but
    // can never let both write.
    let fast = ManualClock::new(start + Duration::from_secs(60 + 600));
    let skewed = FileStore::open_with_clock(dir.path(), fast).unwrap();
    let c = skewed.acquire_lease("t", "c", LONG).await.unwrap();
    assert!(c.token > b.token);
    assert!(matches!(
        store.compare_and_set(&b, None, Watermark::new(1, 0)).await,
        Err(Error::LeaseLost { .. })
    ));
    skewed
        .compare_and_set(&c, None, Watermark::new(2, 0))
        .await
        .unwrap();
    assert_eq!(
        store.load("t").await.unwrap().watermark,
        Some(Watermark::new(2, 0))
    );
}

/// Set to a directory to make [`helper_child_holds_a_lease`] act as the child
/// process of [`a_second_process_is_refused_until_the_first_dies`].
const CHILD_DIR_ENV: &str = "OFFLOAD_FILE_STORE_TEST_CHILD_DIR";

/// Not a test by itself: without the variable it returns at once. With it, it
/// takes a lease, reports the token on stdout, and holds it until killed (or
/// until its stdin closes, so it never outlives the parent).
#[test]
fn helper_child_holds_a_lease() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = open(Path::new(&dir));
    let lease = runtime
        .block_on(store.acquire_lease("t", "child", LONG))
        .expect("child acquires");
    println!("ACQUIRED {}", lease.token);
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[tokio::test]
async fn a_second_process_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_child_holds_a_lease",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let child_token: u64 = stdout
        .lines()
        .map(|l| l.expect("child stdout"))
        // The harness may print "test <name> ... " on the same line first.
        .find_map(|l| l.split_once("ACQUIRED ").map(|(_, t)| t.trim().parse().unwrap()))
        .expect("the child reports its lease before exiting");

    let store = open(dir.path());
    match store.acquire_lease("t", "parent", LONG).await {
        Err(Error::LeaseHeld { holder, .. }) => assert_eq!(holder, "child"),
        other => panic!("a second process must be refused, got {other:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The lease had an hour left; the dead process's OS lock is what frees it.
    let lease = store.acquire_lease("t", "parent", LONG).await.unwrap();
    assert!(lease.token > child_token);
}
