//! Embedding the engine in a tokio service: offload on a schedule next to the
//! service's own work, and stop cleanly on Ctrl-C (a run that has not started
//! committing is abandoned with nothing written; one that has is finished).
//!
//! The parts here are the in-memory ones so the example runs anywhere; swap in
//! `ClickHouseSource`, `IcebergSink` and `PostgresStore` for production.
//!
//! Run: `cargo run -p offload-examples --example embed_service` (Ctrl-C to stop,
//! or pass a number of cycles: `-- 3`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use offload_core::memory::{MemorySink, MemorySource, MemoryStore};
use offload_core::{CancellationToken, Offloader, SystemClock, TableConfig, system_time_to_micros};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let max_cycles: Option<u64> = std::env::args().nth(1).map(|a| a.parse()).transpose()?;
    let source = Arc::new(MemorySource::new(SystemClock));
    let sink = Arc::new(MemorySink::new());
    let engine = Arc::new(
        Offloader::builder(
            source.clone(),
            sink.clone(),
            Arc::new(MemoryStore::new(SystemClock)),
        )
        .engine_id("embedded-service")
        .build()?,
    );
    let table = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::from_millis(200))
        .build()?;

    let shutdown = CancellationToken::new();
    // The service's own work: here, trades arriving every 10 ms.
    let producer = tokio::spawn({
        let (source, shutdown) = (source.clone(), shutdown.clone());
        async move {
            let mut seq = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !shutdown.is_cancelled() {
                tick.tick().await;
                seq += 1;
                source.insert(
                    "trades",
                    &[(system_time_to_micros(SystemTime::now()), seq, seq as i64)],
                );
            }
        }
    });
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });

    let stop = shutdown.clone();
    let cycles = engine
        .run_every(
            std::slice::from_ref(&table),
            Duration::from_millis(250),
            &shutdown,
            |results| {
                for (name, r) in results {
                    match r {
                        Ok(s) => println!("{name}: {} rows, watermark {:?}", s.rows, s.watermark),
                        Err(e) => eprintln!("{name}: {e}"),
                    }
                }
                if max_cycles.is_some_and(|n| sink.commits("trades").len() as u64 >= n) {
                    stop.cancel();
                }
            },
        )
        .await;
    producer.await?;
    println!(
        "stopped after {cycles} cycles; {} rows offloaded",
        sink.rows("trades").len()
    );
    Ok(())
}
