//! [`BatchSource`]: record batches already in memory, as an
//! `offload_core::Source`, so the engine and a sink can be measured without
//! any reading or decoding.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use futures::StreamExt;
use offload_core::{BatchStream, Error, Source, SourceTable, TableConfig, Watermark, Window};

/// Serves one fixed set of batches as a table whose newest position is
/// `high`. Every window that contains all of them (from [`Watermark::MIN`]
/// to at least `high`) reads all of them; any other window is refused, so a
/// benchmark cannot silently measure the wrong thing.
#[derive(Debug, Clone)]
pub struct BatchSource {
    schema: SchemaRef,
    batches: Arc<Vec<RecordBatch>>,
    high: Watermark,
}

impl BatchSource {
    /// Batches of `schema` whose largest `(timestamp, sequence)` position is `high`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>, high: Watermark) -> Self {
        BatchSource {
            schema,
            batches: Arc::new(batches),
            high,
        }
    }

    /// Rows in all batches.
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// In-memory size of all batches (Arrow buffers), in bytes.
    pub fn bytes(&self) -> u64 {
        self.batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum()
    }

    /// The batches.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }
}

#[async_trait]
impl Source for BatchSource {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        Ok(Arc::new(BatchTable {
            config: table.clone(),
            source: self.clone(),
        }))
    }
}

/// A [`BatchSource`] opened for one table: every table reads the same batches.
#[derive(Debug)]
struct BatchTable {
    config: TableConfig,
    source: BatchSource,
}

#[async_trait]
impl SourceTable for BatchTable {
    fn config(&self) -> &TableConfig {
        &self.config
    }

    fn schema(&self) -> SchemaRef {
        self.source.schema.clone()
    }

    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        Ok(Some(self.source.high))
    }

    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        if window.after() != Watermark::MIN || window.until() < self.source.high {
            return Err(Error::source(
                std::io::Error::other(format!(
                    "BatchSource serves only windows covering all its rows, not {window}"
                )),
                false,
            ));
        }
        let batches = self.source.batches.clone();
        Ok(futures::stream::iter((0..batches.len()).map(move |i| Ok(batches[i].clone()))).boxed())
    }
}
