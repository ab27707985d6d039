//! A custom [`Source`] in a few dozen lines: trades held by your own service
//! (here a shared in-process buffer), offloaded by the engine like any table.
//! Used by `examples/custom_source.rs`, checked by offload-core's source
//! conformance suite (`tests/conformance.rs`).
//!
//! [`Source::open`] resolves a table once and returns a handle
//! ([`SourceTable`]) that holds what the table needs (here the buffer and the
//! schema); the engine calls the handle for the rest of the run.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arrow_array::{Int64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use offload_core::{
    BatchStream, Error, Source, SourceTable, TableConfig, Watermark, Window, system_time_to_micros,
};

/// Trades as `(timestamp µs, sequence, price in 1e-8 units)`: fixed point, as
/// money should be. Clones share the rows.
#[derive(Clone, Debug, Default)]
pub struct TradeBuffer(Arc<Mutex<Vec<(i64, u64, i64)>>>);

impl TradeBuffer {
    /// Appends trades (in any order: the source sorts what it reads).
    pub fn extend(&self, trades: impl IntoIterator<Item = (i64, u64, i64)>) {
        self.0.lock().expect("buffer lock").extend(trades);
    }
}

/// The columns every table of this source has: `ts`, `seq`, `price_e8`.
pub fn schema() -> SchemaRef {
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
    // Resolve once: check the table's watermark columns against the schema.
    async fn open(&self, t: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        if (t.timestamp_column(), t.sequence_column()) != ("ts", "seq") {
            return Err(Error::source(
                format!(
                    "table {}: this source's watermark columns are ts and seq",
                    t.name()
                ),
                false,
            ));
        }
        Ok(Arc::new(TradeTable {
            rows: self.clone(),
            config: t.clone(),
        }))
    }
}

/// One opened table of a [`TradeBuffer`].
#[derive(Debug)]
struct TradeTable {
    rows: TradeBuffer,
    config: TableConfig,
}

#[async_trait]
impl SourceTable for TradeTable {
    fn config(&self) -> &TableConfig {
        &self.config
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    // Complete data = rows at least `lag` old; the newest such position bounds the window.
    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        let horizon = system_time_to_micros(SystemTime::now() - self.config.lag());
        let rows = self.rows.0.lock().expect("buffer lock");
        Ok(rows
            .iter()
            .filter(|r| r.0 <= horizon)
            .map(|r| Watermark::new(r.0, r.1))
            .max())
    }

    // Exactly the rows in (after, until], compared as (timestamp, sequence) pairs, in that order.
    async fn read(&self, w: Window) -> Result<BatchStream, Error> {
        let mut rows: Vec<_> = self
            .rows
            .0
            .lock()
            .expect("buffer lock")
            .iter()
            .copied()
            .filter(|r| w.contains(Watermark::new(r.0, r.1)))
            .collect();
        rows.sort_by_key(|r| (r.0, r.1));
        let batches: Vec<_> = rows
            .chunks(self.config.batch_size())
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
