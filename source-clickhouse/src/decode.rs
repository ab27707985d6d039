//! [`ArrowStreamDecoder`]: ClickHouse `ArrowStream` bytes to the source's
//! Arrow batches, as a stage of its own.
//!
//! [`ClickHouseTable::read`](offload_core::SourceTable::read) sends a query,
//! streams the response body and decodes it chunk by chunk. This module offers
//! the decoding half alone — the same schema checks, the same type
//! conversions, the same re-cutting into batches — for bytes obtained any other
//! way, and for measuring that stage by itself.

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;

use crate::ClickHouseError;
use crate::source::ARROW_SETTINGS;
use crate::stream::{BatchShape, Decoding};
use crate::types::{ChType, MappingOptions, SubMicrosecond, UInt64Mapping};

/// Rows per batch unless told otherwise: `TableConfig`'s default batch size.
const DEFAULT_BATCH_SIZE: usize = 65_536;

/// Decodes a ClickHouse `ArrowStream` response into batches of the source's
/// target schema (the type mapping in the crate README).
///
/// Get one for an opened table from [`ClickHouseTable::decoder`](crate::ClickHouseTable::decoder)
/// (the columns discovered when it was opened), or offline from column names and ClickHouse type names with
/// [`from_columns`](Self::from_columns). The bytes must come from a query
/// selecting [`select_list`](Self::select_list) with the
/// [`server_settings`](Self::server_settings).
///
/// ```
/// use arrow_schema::DataType;
/// use offload_source_clickhouse::{ArrowStreamDecoder, SubMicrosecond, UInt64Mapping};
///
/// let decoder = ArrowStreamDecoder::from_columns(
///     &[("ts", "DateTime64(3, 'UTC')"), ("seq", "UInt64"), ("symbol", "LowCardinality(String)")],
///     UInt64Mapping::Decimal,
///     SubMicrosecond::Truncate,
/// )
/// .unwrap();
/// assert_eq!(decoder.schema().field(1).data_type(), &DataType::Decimal128(20, 0));
/// assert_eq!(decoder.select_list(), "`ts`, `seq`, `symbol`");
/// // `SELECT <select_list> FROM t FORMAT ArrowStream` with `server_settings()`
/// // gives bytes for `decoder.decode(body)`.
/// assert!(ArrowStreamDecoder::server_settings().iter().any(|(k, _)| k.starts_with("output_format_arrow")));
/// ```
#[derive(Clone)]
pub struct ArrowStreamDecoder {
    shape: Arc<BatchShape>,
    select: String,
    batch_size: usize,
}

impl fmt::Debug for ArrowStreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrowStreamDecoder")
            .field("schema", &self.shape.schema)
            .field("select", &self.select)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl ArrowStreamDecoder {
    pub(crate) fn from_shape(shape: Arc<BatchShape>, select: String, batch_size: usize) -> Self {
        ArrowStreamDecoder {
            shape,
            select,
            batch_size: batch_size.max(1),
        }
    }

    /// A decoder for `columns` — `(name, ClickHouse type)` pairs in SELECT
    /// order, types as `system.columns` or `toTypeName` print them — with the
    /// given mapping options (see the builder methods of the same names on
    /// [`ClickHouseSourceBuilder`](crate::ClickHouseSourceBuilder)). Batches
    /// have 65,536 rows unless [`with_batch_size`](Self::with_batch_size) says
    /// otherwise.
    ///
    /// Fails with [`ClickHouseError::UnsupportedType`] for a type the source
    /// cannot map (or cannot parse), naming the column.
    pub fn from_columns<N: AsRef<str>, T: AsRef<str>>(
        columns: &[(N, T)],
        uint64_mapping: UInt64Mapping,
        sub_microsecond: SubMicrosecond,
    ) -> Result<Self, ClickHouseError> {
        let parsed = columns
            .iter()
            .map(|(name, type_name)| {
                let (name, type_name) = (name.as_ref(), type_name.as_ref());
                let ch = ChType::parse(type_name).map_err(|e| ClickHouseError::UnsupportedType {
                    column: name.to_owned(),
                    type_name: type_name.to_owned(),
                    reason: format!("cannot parse the type: {}", e.0),
                })?;
                Ok((name.to_owned(), ch, type_name.to_owned(), None))
            })
            .collect::<Result<Vec<_>, ClickHouseError>>()?;
        let mapping = MappingOptions {
            uint64: uint64_mapping,
            sub_micros: sub_microsecond,
        };
        let (shape, select) = BatchShape::for_columns(parsed, mapping)?;
        Ok(Self::from_shape(Arc::new(shape), select, DEFAULT_BATCH_SIZE))
    }

    /// Re-cuts decoded data into batches of `rows` rows (at least 1).
    #[must_use]
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// The schema of every batch this decoder returns.
    pub fn schema(&self) -> &SchemaRef {
        &self.shape.schema
    }

    /// Rows per returned batch (the last batch of a stream may be shorter).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The SELECT expressions whose `ArrowStream` output this decoder
    /// expects: every column in order, some cast on the server (Enum, IPv4,
    /// IPv6 and BFloat16 are sent as text or `Float32`).
    pub fn select_list(&self) -> &str {
        &self.select
    }

    /// The ClickHouse settings the query must run with, so the stream has the
    /// shape this decoder checks for (strings as binary, no dictionaries, no
    /// IPC buffer compression).
    pub fn server_settings() -> &'static [(&'static str, &'static str)] {
        ARROW_SETTINGS
    }

    /// Decodes one complete `ArrowStream` body into batches of
    /// [`batch_size`](Self::batch_size) rows. Zero-copy where the IPC
    /// buffers allow it (the batches may keep `body` alive).
    ///
    /// Errors: [`ClickHouseError::Decode`] for a stream of another shape,
    /// [`ClickHouseError::Truncated`] when it lacks its end-of-stream marker,
    /// and the conversion errors of [`SourceTable::read`](offload_core::SourceTable::read)
    /// (`ValueOutOfRange`, `InvalidUtf8`, ...), naming the column.
    pub fn decode(&self, body: Bytes) -> Result<Vec<RecordBatch>, ClickHouseError> {
        let mut decoding = Decoding::new(self.shape.clone(), self.batch_size);
        if !body.is_empty() {
            decoding.feed(body)?;
        }
        decoding.finish()?;
        let mut out = Vec::new();
        while let Some(batch) = decoding.next_ready()? {
            out.push(batch);
        }
        Ok(out)
    }

    /// Converts one batch as decoded from the wire (arrow-ipc's output) to
    /// the target schema: the type-mapping stage alone, without IPC decoding
    /// or re-cutting. Checks the batch's wire schema first.
    pub fn convert(&self, wire: &RecordBatch) -> Result<RecordBatch, ClickHouseError> {
        self.shape.check(&wire.schema())?;
        self.shape.convert(wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int32Type, TimestampMicrosecondType};
    use arrow_array::{
        ArrayRef, BinaryArray, Decimal128Array, TimestampMillisecondArray, UInt16Array, UInt32Array,
        UInt64Array,
    };
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    /// A `bronze_trades`-like batch as ClickHouse 26.9 sends it with
    /// [`ARROW_SETTINGS`] (see the README's wire table).
    fn wire_batch(first: u64, n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("seq", DataType::UInt64, false),
            Field::new("symbol", DataType::Binary, false),
            Field::new("price", DataType::Decimal128(18, 8), false),
            Field::new("partition", DataType::UInt16, false),
            Field::new("ingested", DataType::UInt32, false),
        ]));
        let seq: Vec<u64> = (first..first + n as u64).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMillisecondArray::from(
                    seq.iter()
                        .map(|s| 1_700_000_000_000 + *s as i64)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(UInt64Array::from(seq.clone())),
            Arc::new(BinaryArray::from_iter_values(
                seq.iter().map(|s| if s % 2 == 0 { "BTC" } else { "ETH" }),
            )),
            Arc::new(
                Decimal128Array::from(seq.iter().map(|s| *s as i128 * 100_000_000).collect::<Vec<_>>())
                    .with_precision_and_scale(18, 8)
                    .unwrap(),
            ),
            Arc::new(UInt16Array::from(
                seq.iter().map(|s| (*s % 12) as u16).collect::<Vec<_>>(),
            )),
            Arc::new(UInt32Array::from(vec![1_700_000_000u32; n])),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn stream_bytes(batches: &[RecordBatch]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut w = StreamWriter::try_new(&mut bytes, &batches[0].schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        bytes
    }

    fn decoder() -> ArrowStreamDecoder {
        ArrowStreamDecoder::from_columns(
            &[
                ("ts", "DateTime64(3, 'UTC')"),
                ("seq", "UInt64"),
                ("symbol", "LowCardinality(String)"),
                ("price", "Decimal(18, 8)"),
                ("partition", "UInt16"),
                ("ingested", "DateTime"),
            ],
            UInt64Mapping::Decimal,
            SubMicrosecond::Truncate,
        )
        .unwrap()
    }

    #[test]
    fn decodes_converts_and_recuts() {
        let d = decoder().with_batch_size(4);
        let body = stream_bytes(&[wire_batch(0, 3), wire_batch(3, 7)]);
        let batches = d.decode(Bytes::from(body)).unwrap();
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert!(batches.iter().all(|b| b.schema() == *d.schema()));
        let last = &batches[2];
        let ts = last.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(1), (1_700_000_000_000 + 9) * 1_000);
        assert_eq!(last.column(1).as_primitive::<Decimal128Type>().value(1), 9);
        assert_eq!(last.column(2).as_string::<i32>().value(1), "ETH");
        assert_eq!(last.column(4).as_primitive::<Int32Type>().value(1), 9);
        assert_eq!(
            last.column(5).as_primitive::<TimestampMicrosecondType>().value(0),
            1_700_000_000 * 1_000_000
        );
    }

    #[test]
    fn convert_is_the_mapping_alone() {
        let d = decoder();
        let out = d.convert(&wire_batch(5, 2)).unwrap();
        assert_eq!(out.schema(), *d.schema());
        assert_eq!(out.num_rows(), 2);
        // A batch of another shape is a typed error.
        let err = d
            .convert(&wire_batch(0, 1).project(&[0, 1]).unwrap())
            .unwrap_err();
        assert!(matches!(err, ClickHouseError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn truncated_and_foreign_streams_are_refused() {
        let d = decoder();
        let body = stream_bytes(&[wire_batch(0, 3)]);
        let cut = Bytes::copy_from_slice(&body[..body.len() - 8]);
        assert!(matches!(d.decode(cut), Err(ClickHouseError::Truncated { .. })));
        assert!(matches!(
            d.decode(Bytes::new()),
            Err(ClickHouseError::Truncated { .. })
        ));
        let other = stream_bytes(&[wire_batch(0, 3).project(&[1]).unwrap()]);
        assert!(matches!(
            d.decode(Bytes::from(other)),
            Err(ClickHouseError::Decode { .. })
        ));
    }

    #[test]
    fn select_list_carries_server_casts_and_unsupported_types_are_named() {
        let d = ArrowStreamDecoder::from_columns(
            &[("side", "Enum8('buy' = 1, 'sell' = 2)"), ("n", "UInt64")],
            UInt64Mapping::Int64,
            SubMicrosecond::Truncate,
        )
        .unwrap();
        assert_eq!(d.select_list(), "CAST(`side` AS String), `n`");
        assert_eq!(d.schema().field(1).data_type(), &DataType::Int64);
        let err = ArrowStreamDecoder::from_columns(
            &[("j", "JSON")],
            UInt64Mapping::Decimal,
            SubMicrosecond::Truncate,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ClickHouseError::UnsupportedType { column, .. } if column == "j"),
            "{err:?}"
        );
    }
}
