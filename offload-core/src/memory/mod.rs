//! In-memory [`Source`](crate::Source), [`Sink`](crate::Sink) and
//! [`WatermarkStore`](crate::WatermarkStore) (feature `testing`).
//!
//! They are the reference implementations of the three contracts: small enough
//! to read in one sitting, and what the engine's own property tests run against.
//! Rows are `(timestamp_micros, sequence, value)` triples with the Arrow schema
//! `<timestamp_column>: Timestamp(µs, UTC), <sequence_column>: UInt64, value: Int64`.

mod sink;
mod source;
mod store;

pub use sink::MemorySink;
pub use source::MemorySource;
pub use store::MemoryStore;

use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::{Error, TableConfig};

/// One in-memory row: `(timestamp_micros, sequence, value)`.
pub type Row = (i64, u64, i64);

/// The Arrow schema of in-memory rows for `table`.
///
/// ```
/// use offload_core::{TableConfig, memory::schema};
/// let t = TableConfig::builder("t").timestamp_column("ts").sequence_column("seq").build().unwrap();
/// assert_eq!(schema(&t).fields().len(), 3);
/// ```
pub fn schema(table: &TableConfig) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            table.timestamp_column(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(table.sequence_column(), DataType::UInt64, false),
        Field::new("value", DataType::Int64, false),
    ]))
}

pub(crate) fn to_batch(schema: SchemaRef, rows: &[Row]) -> RecordBatch {
    let ts = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC");
    let seq = UInt64Array::from_iter_values(rows.iter().map(|r| r.1));
    let val = Int64Array::from_iter_values(rows.iter().map(|r| r.2));
    RecordBatch::try_new(schema, vec![Arc::new(ts), Arc::new(seq), Arc::new(val)])
        .expect("in-memory rows match their schema")
}

pub(crate) fn from_batch(batch: &RecordBatch) -> Result<Vec<Row>, Error> {
    let bad = |what: &str| Error::sink(std::io::Error::other(format!("memory sink: {what}")), false);
    if batch.num_columns() != 3 {
        return Err(bad("expected 3 columns"));
    }
    let ts = batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>();
    let seq = batch.column(1).as_any().downcast_ref::<UInt64Array>();
    let val = batch.column(2).as_any().downcast_ref::<Int64Array>();
    let (Some(ts), Some(seq), Some(val)) = (ts, seq, val) else {
        return Err(bad("unexpected column types"));
    };
    if ts.null_count() + seq.null_count() + val.null_count() > 0 {
        return Err(bad("nulls are not supported"));
    }
    Ok((0..batch.num_rows())
        .map(|i| (ts.value(i), seq.value(i), val.value(i)))
        .collect())
}
