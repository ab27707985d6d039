//! Counting the rows of an Arrow IPC stream without decoding it.

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts the rows of an Arrow IPC stream from its message headers alone,
/// skipping the bodies: the ceiling reads the bytes but decodes nothing.
#[derive(Default)]
pub struct IpcRowCounter {
    header: Vec<u8>,
    skip: u64,
    rows: u64,
    done: bool,
}

impl IpcRowCounter {
    /// Rows in the record batches seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the end-of-stream marker was seen.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Consumes the next piece of the stream.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), BoxError> {
        while !data.is_empty() {
            if self.done {
                return Err("bytes after the end-of-stream marker".into());
            }
            if self.skip > 0 {
                let n = data.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                data = &data[n..];
                self.skip -= n as u64;
                continue;
            }
            // Continuation marker and metadata length, then the metadata.
            let want = if self.header.len() < 8 {
                8
            } else {
                8 + i32::from_le_bytes(self.header[4..8].try_into()?) as usize
            };
            let n = (want - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < want {
                continue;
            }
            if want == 8 {
                if self.header[..4] != [0xFF; 4] {
                    return Err("not an Arrow IPC stream".into());
                }
                if self.header[4..8] == [0; 4] {
                    self.done = true;
                }
                continue;
            }
            let message = arrow_ipc::root_as_message(&self.header[8..]).map_err(|e| e.to_string())?;
            if let Some(batch) = message.header_as_record_batch() {
                self.rows += u64::try_from(batch.length())?;
            }
            self.skip = u64::try_from(message.bodyLength())?;
            self.header.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn counts_rows_across_chunk_boundaries() {
        use arrow_array::{ArrayRef, Int32Array, RecordBatch};
        let batch =
            RecordBatch::try_from_iter([("a", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef)])
                .unwrap();
        let mut bytes = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        for step in [1, 7, 64, bytes.len()] {
            let mut c = IpcRowCounter::default();
            for chunk in bytes.chunks(step) {
                c.push(chunk).unwrap();
            }
            assert_eq!((c.rows(), c.finished()), (6, true), "step {step}");
        }
        let mut c = IpcRowCounter::default();
        assert!(c.push(b"garbage!").is_err());
    }
}
