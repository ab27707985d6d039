//! A custom `Sink` ([`offload_examples::ipc_sink`], ~500 lines): Arrow IPC
//! files in a directory per table, each commit one atomic, exclusive rename.
//! Crash anywhere: a window is either fully in `data/` (committed, with its
//! watermark) or not at all.
//!
//! Run: `cargo run -p offload-examples --example custom_sink`

use std::sync::Arc;

use offload_core::memory::{MemorySource, MemoryStore};
use offload_core::{Error, Offloader, RunId, SystemClock, TableConfig};
use offload_examples::ipc_sink::IpcDirSink;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("offload-ipc-{}", RunId::new()));
    let source = Arc::new(MemorySource::new(SystemClock));
    source.insert("trades", &[(1_000, 1, 10), (1_000, 2, 11), (2_000, 1, 12)]);
    let sink = IpcDirSink::new(&dir);
    let engine = Offloader::builder(
        source,
        Arc::new(sink.clone()),
        Arc::new(MemoryStore::new(SystemClock)),
    )
    .build()?;
    let table = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()?;
    let run = engine.run_once(&table).await?;
    println!(
        "committed {} rows to {}",
        run.rows,
        dir.join("trades/data").display()
    );
    assert_eq!(run.rows, 3);
    assert_eq!(engine.run_once(&table).await?.rows, 0, "nothing twice");
    assert_eq!(sink.commits(&table)?.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
