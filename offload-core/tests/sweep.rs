//! The late-row sweep: what it repairs, reports and leaves alone.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use offload_core::memory::{MemorySink, MemorySource, MemoryStore, Row};
use offload_core::{CancellationToken, ManualClock, Offloader, OffloaderBuilder, TableConfig, Watermark};

const SEC: i64 = 1_000_000;
/// "Now" in the tests: 1,000,000 s after the epoch.
const NOW: i64 = 1_000_000 * SEC;

struct World {
    source: Arc<MemorySource>,
    sink: Arc<MemorySink>,
    store: Arc<MemoryStore>,
}

impl World {
    fn new() -> Self {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_micros(NOW as u64));
        Self {
            source: Arc::new(MemorySource::new(clock.clone())),
            sink: Arc::new(MemorySink::new()),
            store: Arc::new(MemoryStore::new(clock)),
        }
    }

    fn engine(&self) -> OffloaderBuilder {
        Offloader::builder(self.source.clone(), self.sink.clone(), self.store.clone())
    }
}

/// Lag 10 s, horizon 1 h, buckets of 10 min.
fn table() -> TableConfig {
    TableConfig::builder("t")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::from_secs(10))
        .late_horizon(Duration::from_secs(3600))
        .sweep_bucket(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// `n` rows a second apart ending `ago` seconds before now.
fn rows(ago: i64, n: i64, seq: u64) -> Vec<Row> {
    (0..n).map(|k| (NOW - (ago + k) * SEC, seq, k)).collect()
}

#[tokio::test]
async fn late_rows_are_repaired_once_and_reported() {
    let w = World::new();
    w.source.insert("t", &rows(20, 100, 1));
    let engine = w.engine().build().unwrap();
    let first = engine.run_once(&table()).await.unwrap();
    assert_eq!(first.rows, 100);
    let watermark = first.watermark.unwrap();
    assert_eq!(w.sink.commits("t").len(), 1);

    // Late: 60 s below the watermark, at its timestamp with a smaller
    // sequence, and 30 min back (an earlier bucket).
    let late = vec![
        (watermark.timestamp_micros() - 60 * SEC, 7, -1),
        (watermark.timestamp_micros(), watermark.sequence() - 1, -2),
        (watermark.timestamp_micros() - 1800 * SEC, 3, -3),
    ];
    w.source.insert("t", &late);
    let run = engine.run_once(&table()).await.unwrap();
    let sweep = run.sweep.expect("a swept run");
    assert_eq!((sweep.late_rows, sweep.repaired_rows), (3, 3));
    assert_eq!(sweep.buckets_differing, 2, "two buckets held late rows");
    assert_eq!(
        sweep.oldest_late,
        Some(Watermark::new(watermark.timestamp_micros() - 1800 * SEC, 3))
    );
    assert_eq!((sweep.excess_rows, sweep.beyond_horizon_rows), (0, 0));
    assert_eq!(w.sink.rows("t"), w.source.rows("t"), "every row once");

    let repairs = w.sink.repairs("t");
    assert_eq!(repairs.len(), 1);
    assert_eq!(repairs[0].watermark, watermark, "a repair keeps the watermark");
    assert_eq!(repairs[0].rows, 3);
    assert_eq!(Some(repairs[0].run_id), sweep.repair_run);
    assert_eq!(
        repairs[0].base.as_str(),
        "1",
        "fenced on the version after the first window"
    );

    // Clean now: nothing differs, nothing is committed.
    let again = engine.run_once(&table()).await.unwrap().sweep.unwrap();
    assert_eq!((again.buckets_differing, again.late_rows), (0, 0));
    assert_eq!(again.repair_run, None);
    assert_eq!(w.sink.repairs("t").len(), 1);
    assert_eq!(
        again.buckets, 7,
        "one hour of 10-minute buckets, plus the partial one"
    );
}

#[tokio::test]
async fn rows_older_than_the_horizon_are_reported_not_repaired() {
    let w = World::new();
    w.source.insert("t", &rows(20, 10, 1));
    let engine = w.engine().build().unwrap();
    engine.run_once(&table()).await.unwrap();
    let before = w.sink.rows("t");
    // 90 minutes old: beyond the 1 h horizon, inside the reported hour below it.
    w.source
        .insert("t", &[(NOW - 90 * 60 * SEC, 1, -1), (NOW - 95 * 60 * SEC, 1, -2)]);
    let sweep = engine.run_once(&table()).await.unwrap().sweep.unwrap();
    assert_eq!(sweep.beyond_horizon_rows, 2);
    assert_eq!((sweep.late_rows, sweep.repaired_rows), (0, 0));
    assert_eq!(w.sink.rows("t"), before, "never repaired");
}

#[tokio::test]
async fn rows_gone_from_the_source_are_reported_never_deleted() {
    let w = World::new();
    w.source.insert("t", &rows(20, 50, 1));
    let engine = w.engine().build().unwrap();
    engine.run_once(&table()).await.unwrap();
    let held = w.sink.rows("t");
    // Upstream expiry drops six rows (40..=45 s ago); one late row lands in
    // the same bucket.
    let cut = NOW - 40 * SEC;
    w.source.retain("t", |r| r.0 > cut || r.0 < cut - 5 * SEC);
    let late = (NOW - 41 * SEC, 9, -1);
    w.source.insert("t", &[late]);
    let sweep = engine.run_once(&table()).await.unwrap().sweep.unwrap();
    assert_eq!(sweep.excess_rows, 6, "the expired rows are reported");
    assert_eq!(sweep.repaired_rows, 1, "the late row is repaired all the same");
    let mut want = held;
    want.push(late);
    want.sort_unstable();
    assert_eq!(w.sink.rows("t"), want, "nothing deleted, the late row added once");
}

#[tokio::test]
async fn a_large_bucket_is_split_until_its_keys_fit() {
    let w = World::new();
    // 3,000 rows in one 10-minute bucket: above a diff limit of 100 keys.
    let base = NOW - 300 * SEC;
    let mut all: Vec<Row> = (0..3_000).map(|k| (base + k * 50_000, 1, k)).collect();
    w.source.insert("t", &all);
    let engine = w.engine().sweep_diff_rows(100).build().unwrap();
    engine.run_once(&table()).await.unwrap();
    let late: Vec<Row> = [7, 1_234, 2_998]
        .iter()
        .map(|&k| (base + k * 50_000, 2, -k))
        .collect();
    w.source.insert("t", &late);
    let sweep = engine.run_once(&table()).await.unwrap().sweep.unwrap();
    assert_eq!(sweep.repaired_rows, 3);
    assert!(
        w.sink.repairs("t")[0]
            .buckets
            .iter()
            .all(|b| { b.until().timestamp_micros() - b.after().timestamp_micros() < 600 * SEC / 16 }),
        "the repaired buckets are parts of the 10-minute bucket: {:?}",
        w.sink.repairs("t")[0].buckets
    );
    all.extend(late);
    all.sort_unstable();
    assert_eq!(w.sink.rows("t"), all);
}

#[tokio::test]
async fn a_zero_horizon_turns_the_sweep_off() {
    let w = World::new();
    w.source.insert("t", &rows(20, 5, 1));
    let engine = w.engine().build().unwrap();
    let off = TableConfig::builder("t")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::from_secs(10))
        .late_horizon(Duration::ZERO)
        .build()
        .unwrap();
    let first = engine.run_once(&off).await.unwrap();
    w.source
        .insert("t", &[(first.watermark.unwrap().timestamp_micros() - SEC, 5, -1)]);
    let run = engine.run_once(&off).await.unwrap();
    assert_eq!(run.sweep, None);
    assert_eq!(w.sink.rows("t").len(), 5, "the late row stays out");
}

#[tokio::test(start_paused = true)]
async fn run_every_sweeps_at_its_own_cadence() {
    let w = World::new();
    w.source.insert("t", &rows(20, 5, 1));
    let engine = w
        .engine()
        .sweep_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut swept = Vec::new();
    engine
        .run_every(&[table()], Duration::from_secs(1), &shutdown, |results| {
            swept.push(results[0].1.as_ref().unwrap().sweep.is_some());
            if swept.len() == 4 {
                stop.cancel();
            }
        })
        .await;
    // The first cycle has nothing committed to sweep below; the second sweeps;
    // the next ones wait for the interval.
    assert_eq!(swept, vec![false, true, false, false]);
}
