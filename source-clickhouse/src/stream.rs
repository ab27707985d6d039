//! Decoding one window's ArrowStream response incrementally.
//!
//! The HTTP body arrives as chunks from the `clickhouse` crate's
//! [`BytesCursor`]; each chunk is pushed into an arrow-ipc [`StreamDecoder`]
//! as soon as it arrives, every decoded record batch is converted to the
//! target schema, and batches are re-cut to `batch_size` rows. At any time
//! this holds at most one chunk's worth of decoded batches plus fewer than
//! `batch_size` pending rows: memory does not depend on the window size.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_schema::{Field, Schema, SchemaRef};
use bytes::Bytes;
use clickhouse::query::BytesCursor;
use futures::stream::{self, BoxStream, StreamExt};

use crate::ClickHouseError;
use crate::convert::{check_wire_field, convert};
use crate::ident::quote_identifier;
use crate::types::{ChType, MappingOptions};

/// The Arrow IPC end-of-stream marker: continuation token and a zero length.
const ARROW_EOS: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// What a window's batches must look like.
#[derive(Debug)]
pub(crate) struct BatchShape {
    /// The target schema (what `SourceTable::schema` returns).
    pub schema: SchemaRef,
    /// The ClickHouse type of each column, in schema order.
    pub types: Vec<ChType>,
}

impl BatchShape {
    /// The shape for `columns` (name, parsed type, type text as the server
    /// printed it, and the SQL computing it when it is not a stored column,
    /// as a derived sequence is) under `mapping`, and the SELECT list that
    /// produces it: columns in order, cast on the server where their
    /// ArrowStream form is not the documented value.
    pub(crate) fn for_columns(
        columns: Vec<(String, ChType, String, Option<String>)>,
        mapping: MappingOptions,
    ) -> Result<(BatchShape, String), ClickHouseError> {
        let mut fields = Vec::with_capacity(columns.len());
        let mut types = Vec::with_capacity(columns.len());
        let mut select = Vec::with_capacity(columns.len());
        for (column, ch, type_name, expr) in columns {
            let arrow = ch
                .arrow_type(mapping)
                .map_err(|reason| ClickHouseError::UnsupportedType {
                    column: column.clone(),
                    type_name,
                    reason,
                })?;
            // Columns are matched by position, so casts need no alias (an alias
            // could shadow a column of the same name in the WHERE clause).
            let value = expr.unwrap_or_else(|| quote_identifier(&column));
            select.push(if ch.needs_server_cast() {
                format!("CAST({value} AS {})", ch.wire_type_sql())
            } else {
                value
            });
            fields.push(Field::new(column, arrow, ch.is_nullable()).with_metadata(ch.field_metadata()));
            types.push(ch);
        }
        let shape = BatchShape {
            schema: Arc::new(Schema::new(fields)),
            types,
        };
        Ok((shape, select.join(", ")))
    }

    /// Checks the response's schema once, before its first batch is converted.
    pub(crate) fn check(&self, wire: &arrow_schema::Schema) -> Result<(), ClickHouseError> {
        if wire.fields().len() != self.types.len() {
            return Err(ClickHouseError::Decode {
                reason: format!(
                    "expected {} columns, the server sent {}",
                    self.types.len(),
                    wire.fields().len()
                ),
            });
        }
        wire.fields()
            .iter()
            .zip(&self.types)
            .zip(self.schema.fields())
            .try_for_each(|((w, ch), target)| check_wire_field(w, ch, target.name()))
    }

    /// Converts one decoded batch to the target schema.
    pub(crate) fn convert(&self, batch: &RecordBatch) -> Result<RecordBatch, ClickHouseError> {
        if batch.num_columns() != self.types.len() {
            return Err(ClickHouseError::Decode {
                reason: format!(
                    "expected {} columns, the server sent {}",
                    self.types.len(),
                    batch.num_columns()
                ),
            });
        }
        let columns = batch
            .columns()
            .iter()
            .zip(&self.types)
            .zip(self.schema.fields())
            .map(|((array, ch), field)| convert(array, ch, field.data_type(), field.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options).map_err(|e| {
            ClickHouseError::Decode {
                reason: e.to_string(),
            }
        })
    }
}

/// The synchronous core of decoding one response: ArrowStream bytes in (in
/// chunks of any size), converted batches of exactly `batch_size` rows out
/// (the last one shorter). Shared by [`WindowReader`] and the public
/// [`ArrowStreamDecoder`](crate::decode::ArrowStreamDecoder).
pub(crate) struct Decoding {
    decoder: StreamDecoder,
    shape: Arc<BatchShape>,
    batch_size: usize,
    pending: VecDeque<RecordBatch>,
    pending_rows: usize,
    received: u64,
    /// Whether the response's schema passed [`BatchShape::check`].
    checked: bool,
    eof: bool,
}

impl Decoding {
    pub(crate) fn new(shape: Arc<BatchShape>, batch_size: usize) -> Self {
        Decoding {
            decoder: StreamDecoder::new(),
            shape,
            batch_size: batch_size.max(1),
            pending: VecDeque::new(),
            pending_rows: 0,
            received: 0,
            checked: false,
            eof: false,
        }
    }

    /// Whether [`finish`](Self::finish) was called.
    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    /// The next complete batch, or after [`finish`](Self::finish) the
    /// remaining rows; `None` when more input is needed (or nothing is left).
    pub(crate) fn next_ready(&mut self) -> Result<Option<RecordBatch>, ClickHouseError> {
        if self.pending_rows >= self.batch_size {
            return self.take(self.batch_size).map(Some);
        }
        if self.eof && self.pending_rows > 0 {
            return self.take(self.pending_rows).map(Some);
        }
        Ok(None)
    }

    /// Decodes one chunk of the body, converting every complete message.
    pub(crate) fn feed(&mut self, chunk: Bytes) -> Result<(), ClickHouseError> {
        self.received += chunk.len() as u64;
        let mut buffer = Buffer::from(chunk.clone());
        while !buffer.is_empty() {
            let decoded = self.decoder.decode(&mut buffer);
            if !self.checked
                && let Some(schema) = self.decoder.schema()
            {
                self.shape.check(&schema)?;
                self.checked = true;
            }
            match decoded {
                Ok(Some(batch)) => {
                    let batch = self.shape.convert(&batch)?;
                    if batch.num_rows() > 0 {
                        self.pending_rows += batch.num_rows();
                        self.pending.push_back(batch);
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(undecodable(e.to_string(), &chunk)),
            }
        }
        Ok(())
    }

    /// The body ended: it must have ended with the end-of-stream marker.
    pub(crate) fn finish(&mut self) -> Result<(), ClickHouseError> {
        self.eof = true;
        let truncated = ClickHouseError::Truncated { bytes: self.received };
        if self.decoder.finish().is_err() || self.decoder.schema().is_none() {
            return Err(truncated);
        }
        // `finish` also accepts a stream cut at a message boundary. To tell it
        // from a complete one, offer the decoder another end-of-stream marker:
        // after a real end of stream it refuses any further bytes.
        let mut probe = Buffer::from(ARROW_EOS.to_vec());
        match self.decoder.decode(&mut probe) {
            Err(_) => Ok(()),
            Ok(_) => Err(truncated),
        }
    }

    /// Removes exactly `n` pending rows (slicing or concatenating batches).
    fn take(&mut self, n: usize) -> Result<RecordBatch, ClickHouseError> {
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let batch = self.pending.pop_front().expect("pending_rows counts these rows");
            let rows = batch.num_rows();
            if rows <= need {
                need -= rows;
                parts.push(batch);
            } else {
                parts.push(batch.slice(0, need));
                self.pending.push_front(batch.slice(need, rows - need));
                need = 0;
            }
        }
        self.pending_rows -= n;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        arrow_select::concat::concat_batches(&self.shape.schema, &parts).map_err(|e| {
            ClickHouseError::Decode {
                reason: e.to_string(),
            }
        })
    }
}

/// Reads one response into batches of `batch_size` rows.
pub(crate) struct WindowReader {
    cursor: BytesCursor,
    /// A chunk read ahead (the first one, so errors before any data surface
    /// from `SourceTable::read` itself).
    first: Option<Bytes>,
    decoding: Decoding,
    idle_timeout: Duration,
    failed: bool,
}

impl WindowReader {
    /// Sends the query (by reading the first chunk) and returns the reader.
    pub(crate) async fn start(
        mut cursor: BytesCursor,
        shape: Arc<BatchShape>,
        batch_size: usize,
        idle_timeout: Duration,
    ) -> Result<WindowReader, ClickHouseError> {
        let first = next_chunk(&mut cursor, idle_timeout).await?;
        let eof = first.is_none();
        let mut reader = WindowReader {
            cursor,
            first,
            decoding: Decoding::new(shape, batch_size),
            idle_timeout,
            failed: false,
        };
        if eof {
            reader.decoding.finish()?;
        }
        Ok(reader)
    }

    /// The batches as a stream that ends after the first error.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<RecordBatch, ClickHouseError>> {
        stream::unfold(self, |mut reader| async move {
            if reader.failed {
                return None;
            }
            match reader.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), reader)),
                Ok(None) => None,
                Err(e) => {
                    reader.failed = true;
                    Some((Err(e), reader))
                }
            }
        })
        .boxed()
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClickHouseError> {
        loop {
            if let Some(batch) = self.decoding.next_ready()? {
                return Ok(Some(batch));
            }
            if self.decoding.is_eof() {
                return Ok(None);
            }
            let chunk = match self.first.take() {
                Some(chunk) => Some(chunk),
                None => next_chunk(&mut self.cursor, self.idle_timeout).await?,
            };
            match chunk {
                Some(chunk) => self.decoding.feed(chunk)?,
                None => self.decoding.finish()?,
            }
        }
    }
}

async fn next_chunk(cursor: &mut BytesCursor, idle: Duration) -> Result<Option<Bytes>, ClickHouseError> {
    match tokio::time::timeout(idle, cursor.next()).await {
        Err(_) => Err(ClickHouseError::Timeout {
            what: "window stream (waiting for data)",
            after: idle,
        }),
        Ok(result) => result.map_err(ClickHouseError::from_client),
    }
}

/// A decode failure; if the chunk carries a server exception that the
/// client did not recognise (older servers append it as plain text), report that.
fn undecodable(reason: String, chunk: &[u8]) -> ClickHouseError {
    let tail = &chunk[chunk.len().saturating_sub(4096)..];
    let text = String::from_utf8_lossy(tail);
    if let Some(at) = text.rfind("Code: ")
        && text[at..].contains("DB::")
    {
        return ClickHouseError::from_server_message(&text[at..]);
    }
    ClickHouseError::Decode { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `finish` relies on arrow-ipc refusing bytes after the end-of-stream
    /// marker and accepting them at a message boundary; pin that behaviour.
    #[test]
    fn eos_probe_tells_complete_from_cut() {
        use arrow_array::{ArrayRef, Int32Array};
        use arrow_ipc::writer::StreamWriter;
        use arrow_schema::{DataType, Field, Schema};

        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef],
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut w = StreamWriter::try_new(&mut bytes, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        assert!(bytes.ends_with(&ARROW_EOS));

        let complete = {
            let mut d = StreamDecoder::new();
            let mut b = Buffer::from(bytes.clone());
            while !b.is_empty() {
                d.decode(&mut b).unwrap();
            }
            d.finish().unwrap();
            d.decode(&mut Buffer::from(ARROW_EOS.to_vec())).is_err()
        };
        assert!(complete, "a complete stream must refuse the probe");

        let cut = {
            let mut d = StreamDecoder::new();
            let mut b = Buffer::from(bytes[..bytes.len() - ARROW_EOS.len()].to_vec());
            while !b.is_empty() {
                d.decode(&mut b).unwrap();
            }
            d.finish().unwrap(); // a cut at a message boundary looks fine to finish()
            d.decode(&mut Buffer::from(ARROW_EOS.to_vec())).is_ok()
        };
        assert!(cut, "a stream cut at a message boundary must accept the probe");
    }

    #[test]
    fn server_text_in_the_body_is_recognised() {
        let e = undecodable(
            "bad".into(),
            b"\x00\x01garbageCode: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)\n",
        );
        assert_eq!(e.code(), Some(241));
        let e = undecodable("bad".into(), b"\x00\x01garbage");
        assert!(matches!(e, ClickHouseError::Decode { .. }));
    }
}
