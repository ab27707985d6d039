//! A 5,000,000-row window streams in bounded memory.
//!
//! This binary installs a counting global allocator and measures the peak of
//! bytes allocated by the whole process (decoder, HTTP client, batches — every
//! thread) while one window of 5M seed-like trades is read. Buffering the
//! window would need hundreds of MiB; the bound asserted is a small multiple
//! of one batch. The chdb front is a separate process and is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use futures::StreamExt;
use offload_core::{Source, TableConfig, Watermark, Window};
use offload_source_clickhouse::ClickHouseSource;
use offload_testkit::ClickHouseFront;

struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROWS: u64 = 5_000_000;
const BATCH: usize = 65_536;
/// Peak growth allowed while streaming. The window itself is ~1 GiB as Arrow;
/// a few batches of ~120 bytes/row (decoded, converted, re-cut) plus HTTP
/// buffers stay far below this.
const BOUND: isize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_million_row_window_streams_in_bounded_memory() {
    // A private front, dropped at the end so its data directory is removed.
    let front = ClickHouseFront::start();
    front.query("CREATE DATABASE big");
    front.query(
        "CREATE TABLE big.bronze_trades (
            exchange_timestamp DateTime64(3, 'UTC'),
            sequence_number UInt64,
            symbol LowCardinality(String),
            price Decimal(18, 8),
            quantity Decimal(18, 8),
            quote_volume Decimal(18, 8),
            side Enum8('buy' = 1, 'sell' = 2),
            trade_conditions Array(String),
            vendor_data Map(String, String),
            venue Nullable(String)
        ) ENGINE = MergeTree ORDER BY (exchange_timestamp, sequence_number)",
    );
    let setup = Instant::now();
    front.query(&format!(
        "INSERT INTO big.bronze_trades SELECT
            fromUnixTimestamp64Milli(toInt64(1767225600000 + intDiv(number, 25)), 'UTC'),
            number,
            ['BTC-USD', 'ETH-USD', 'SOL-USD'][number % 3 + 1],
            CAST(number % 100000 AS Decimal(18, 8)) / 100,
            CAST(number % 977 AS Decimal(18, 8)) / 1000,
            CAST(number % 5000 AS Decimal(18, 8)),
            if(number % 2 = 0, 'buy', 'sell'),
            arrayMap(x -> toString(x), range(number % 3)),
            map('venue', toString(number % 7)),
            if(number % 5 = 0, NULL, 'XNAS')
         FROM numbers({ROWS})"
    ));
    eprintln!("inserted {ROWS} rows in {:?}", setup.elapsed());

    let source = ClickHouseSource::builder(front.url())
        .database("big")
        .build()
        .unwrap();
    let table = TableConfig::builder("bronze_trades")
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .batch_size(BATCH)
        .lag(Duration::ZERO)
        .build()
        .unwrap();
    let table = source.open(&table).await.unwrap();
    let high = table.high_watermark().await.unwrap().expect("rows exist");
    assert_eq!(high.sequence(), ROWS - 1);
    let window = Window::new(Watermark::MIN, high).unwrap();

    // Allocated before the baseline: one bit per row to prove exactly-once.
    let mut seen = vec![0u64; (ROWS as usize).div_ceil(64)];
    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let started = Instant::now();

    let mut stream = table.read(window).await.unwrap();
    let (mut rows, mut batches, mut max_batch) = (0u64, 0u64, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        max_batch = max_batch.max(batch.num_rows());
        let seq = batch.column(1).as_primitive::<Decimal128Type>();
        for v in seq.values().iter() {
            let i = *v as usize;
            assert!(seen[i / 64] & (1 << (i % 64)) == 0, "row {i} read twice");
            seen[i / 64] |= 1 << (i % 64);
        }
        rows += batch.num_rows() as u64;
        batches += 1;
    }
    drop(stream);
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    eprintln!(
        "streamed {rows} rows in {batches} batches in {elapsed:?} ({:.0} rows/s); \
         peak growth {:.1} MiB (bound {} MiB)",
        rows as f64 / elapsed.as_secs_f64(),
        peak as f64 / (1 << 20) as f64,
        BOUND >> 20
    );

    assert_eq!(rows, ROWS);
    assert_eq!(max_batch, BATCH);
    assert!(
        peak < BOUND,
        "peak allocation grew by {peak} bytes while streaming"
    );
    front.query("DROP DATABASE big");
}
