//! Engine behaviour outside the exactly-once state machine.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use offload_core::memory::{MemorySink, MemorySource, MemoryStore, schema};
use offload_core::{CancellationToken, ManualClock, Offloader, RunId, Sink, TableConfig};

fn table() -> TableConfig {
    TableConfig::builder("t")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap()
}

#[tokio::test]
async fn run_every_cleans_orphans_left_by_crashes() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10_000));
    let sink = Arc::new(MemorySink::new());
    // A crashed run's staged, never-committed output.
    let handle = sink.open(&table()).await.unwrap();
    let writer = handle.begin(RunId::new(), schema(&table())).await.unwrap();
    let _orphan = writer.finish().await.unwrap();
    assert_eq!(sink.orphans(), 1);

    let engine = Offloader::builder(
        Arc::new(MemorySource::new(clock.clone())),
        sink.clone(),
        Arc::new(MemoryStore::new(clock)),
    )
    .build()
    .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let cycles = engine
        .run_every(&[table()], Duration::from_millis(1), &shutdown, |_| stop.cancel())
        .await;
    assert_eq!(cycles, 1);
    assert_eq!(sink.orphans(), 0, "the first cycle removes orphans");
}

#[tokio::test]
async fn one_failing_table_does_not_stop_the_others() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10_000));
    let source = Arc::new(MemorySource::new(clock.clone()));
    source.insert("good", &[(1, 1, 1), (2, 1, 2)]);
    source.insert("bad", &[(1, 1, 1)]);
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let engine = Offloader::builder(source, Arc::new(MemorySink::new()), store.clone())
        .build()
        .unwrap();
    let good = TableConfig::builder("good")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap();
    let bad = TableConfig::builder("bad")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap();
    // Someone else holds "bad".
    let _held =
        offload_core::WatermarkStore::acquire_lease(store.as_ref(), "bad", "other", Duration::from_secs(60))
            .await
            .unwrap();
    let results = engine.run_all(&[bad, good], &CancellationToken::new()).await;
    let by_name = |n: &str| results.iter().find(|r| r.0 == n).unwrap().1.as_ref();
    assert!(matches!(
        by_name("bad"),
        Err(offload_core::Error::LeaseHeld { .. })
    ));
    assert_eq!(by_name("good").unwrap().rows, 2);
}
