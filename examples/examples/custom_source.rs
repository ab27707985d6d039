//! A custom `Source` ([`offload_examples::trade_buffer`], ~100 lines): trades
//! held by your own service, offloaded by the engine like any table.
//!
//! Run: `cargo run -p offload-examples --example custom_source`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use offload_core::memory::{MemorySink, MemoryStore};
use offload_core::{Error, Offloader, SystemClock, TableConfig, system_time_to_micros};
use offload_examples::trade_buffer::TradeBuffer;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let buffer = TradeBuffer::default();
    let old = system_time_to_micros(SystemTime::now() - Duration::from_secs(600));
    // Three trades share one microsecond: the sequence orders them.
    buffer.extend([
        (old, 1, 10_150_000_000),
        (old, 2, 10_160_000_000),
        (old, 3, 10_140_000_000),
        (old + 9, 1, 10_170_000_000),
    ]);

    let sink = Arc::new(MemorySink::new());
    let engine = Offloader::builder(
        Arc::new(buffer),
        sink.clone(),
        Arc::new(MemoryStore::new(SystemClock)),
    )
    .build()?;
    let table = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()?;
    let run = engine.run_once(&table).await?;
    println!("offloaded {} rows in window {:?}", run.rows, run.window);
    assert_eq!(run.rows, 4);
    Ok(())
}
