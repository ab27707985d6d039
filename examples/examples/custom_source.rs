//! A custom `Source` in a few dozen lines: trades held by your own service (here
//! a shared in-process buffer), offloaded by the engine like any table.
//!
//! Run: `cargo run -p offload-examples --example custom_source`

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arrow_array::{Int64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use offload_core::memory::{MemorySink, MemoryStore};
use offload_core::{
    BatchStream, Error, Offloader, Source, SystemClock, TableConfig, Watermark, Window, system_time_to_micros,
};

/// Trades as `(timestamp µs, sequence, price in 1e-8 units)`: fixed point, as money should be.
#[derive(Debug, Default)]
struct TradeBuffer(Mutex<Vec<(i64, u64, i64)>>);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seq", DataType::UInt64, false),
        Field::new("price_e8", DataType::Int64, false),
    ]))
}

#[async_trait]
impl Source for TradeBuffer {
    async fn schema(&self, _: &TableConfig) -> Result<SchemaRef, Error> {
        Ok(schema())
    }

    // Complete data = rows at least `lag` old; the newest such position bounds the window.
    async fn high_watermark(&self, t: &TableConfig) -> Result<Option<Watermark>, Error> {
        let horizon = system_time_to_micros(SystemTime::now() - t.lag());
        let rows = self.0.lock().unwrap();
        Ok(rows
            .iter()
            .filter(|r| r.0 <= horizon)
            .map(|r| Watermark::new(r.0, r.1))
            .max())
    }

    // Exactly the rows in (after, until], compared as (timestamp, sequence) pairs.
    async fn read(&self, t: &TableConfig, w: Window) -> Result<BatchStream, Error> {
        let mut rows: Vec<_> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|r| w.contains(Watermark::new(r.0, r.1)))
            .collect();
        rows.sort_by_key(|r| (r.0, r.1));
        let batches: Vec<_> = rows
            .chunks(t.batch_size())
            .map(|c| {
                let ts =
                    TimestampMicrosecondArray::from_iter_values(c.iter().map(|r| r.0)).with_timezone("UTC");
                let seq = UInt64Array::from_iter_values(c.iter().map(|r| r.1));
                let px = Int64Array::from_iter_values(c.iter().map(|r| r.2));
                RecordBatch::try_new(schema(), vec![Arc::new(ts), Arc::new(seq), Arc::new(px)])
                    .map_err(|e| Error::source(e, false))
            })
            .collect();
        Ok(Box::pin(futures::stream::iter(batches)))
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let buffer = Arc::new(TradeBuffer::default());
    let old = system_time_to_micros(SystemTime::now() - Duration::from_secs(600));
    // Three trades share one microsecond: the sequence orders them.
    buffer.0.lock().unwrap().extend([
        (old, 1, 10_150_000_000),
        (old, 2, 10_160_000_000),
        (old, 3, 10_140_000_000),
        (old + 9, 1, 10_170_000_000),
    ]);

    let sink = Arc::new(MemorySink::new());
    let engine = Offloader::builder(buffer, sink.clone(), Arc::new(MemoryStore::new(SystemClock))).build()?;
    let table = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()?;
    let run = engine.run_once(&table).await?;
    println!("offloaded {} rows in window {:?}", run.rows, run.window);
    assert_eq!(run.rows, 4);
    Ok(())
}
