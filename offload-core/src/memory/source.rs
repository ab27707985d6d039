use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_schema::SchemaRef;
use async_trait::async_trait;

use super::{Row, schema, to_batch};
use crate::{
    BatchStream, Clock, Error, Source, SourceTable, TableConfig, Watermark, Window, system_time_to_micros,
};

/// An in-memory table store; see the [module docs](crate::memory).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use offload_core::{ManualClock, Source, SourceTable, TableConfig, Watermark};
/// use offload_core::memory::MemorySource;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(100));
/// let src = MemorySource::new(clock.clone());
/// src.insert("t", &[(10_000_000, 1, 0), (99_000_000, 1, 0)]);
/// let t = TableConfig::builder("t").timestamp_column("ts").sequence_column("seq")
///     .lag(Duration::from_secs(30)).build().unwrap();
/// // The row at 99 s is within the 30 s lag of "now" (100 s): not complete yet.
/// let handle = src.open(&t).await.unwrap();
/// assert_eq!(handle.high_watermark().await.unwrap(), Some(Watermark::new(10_000_000, 1)));
/// # });
/// ```
#[derive(Debug)]
pub struct MemorySource {
    clock: Arc<dyn Clock>,
    tables: Arc<Mutex<HashMap<String, Vec<Row>>>>,
}

impl MemorySource {
    /// An empty source whose "now" comes from `clock`.
    pub fn new(clock: impl Clock + 'static) -> Self {
        Self {
            clock: Arc::new(clock),
            tables: Arc::default(),
        }
    }

    /// Adds rows to `table` (its source table name).
    pub fn insert(&self, table: &str, rows: &[Row]) {
        self.tables
            .lock()
            .expect("source lock")
            .entry(table.to_owned())
            .or_default()
            .extend_from_slice(rows);
    }

    /// Keeps only the rows of `table` for which `keep` is true (rows expiring
    /// upstream, as a TTL deletes them).
    pub fn retain(&self, table: &str, keep: impl FnMut(&Row) -> bool) {
        if let Some(rows) = self.tables.lock().expect("source lock").get_mut(table) {
            rows.retain(keep);
        }
    }

    /// All rows of `table`, sorted by position.
    pub fn rows(&self, table: &str) -> Vec<Row> {
        let mut rows = self
            .tables
            .lock()
            .expect("source lock")
            .get(table)
            .cloned()
            .unwrap_or_default();
        rows.sort_unstable();
        rows
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        Ok(Arc::new(MemorySourceTable {
            config: table.clone(),
            schema: schema(table),
            clock: self.clock.clone(),
            tables: self.tables.clone(),
        }))
    }
}

/// One opened table of a [`MemorySource`].
#[derive(Debug)]
struct MemorySourceTable {
    config: TableConfig,
    schema: SchemaRef,
    clock: Arc<dyn Clock>,
    tables: Arc<Mutex<HashMap<String, Vec<Row>>>>,
}

#[async_trait]
impl SourceTable for MemorySourceTable {
    fn config(&self) -> &TableConfig {
        &self.config
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        let now = system_time_to_micros(self.clock.now());
        let lag = i64::try_from(self.config.lag().as_micros()).unwrap_or(i64::MAX);
        let horizon = now.saturating_sub(lag);
        let tables = self.tables.lock().expect("source lock");
        Ok(tables.get(self.config.source_table()).and_then(|rows| {
            rows.iter()
                .filter(|r| r.0 <= horizon)
                .map(|r| Watermark::new(r.0, r.1))
                .max()
        }))
    }

    async fn low_watermark(&self, after: Watermark) -> Result<Option<Watermark>, Error> {
        let tables = self.tables.lock().expect("source lock");
        Ok(tables.get(self.config.source_table()).and_then(|rows| {
            rows.iter()
                .map(|r| Watermark::new(r.0, r.1))
                .filter(|&p| p > after)
                .min()
        }))
    }

    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        let mut rows: Vec<Row> = self
            .tables
            .lock()
            .expect("source lock")
            .get(self.config.source_table())
            .map(|rows| {
                rows.iter()
                    .filter(|r| window.contains(Watermark::new(r.0, r.1)))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        rows.sort_unstable();
        let schema = self.schema.clone();
        let batches: Vec<_> = rows
            .chunks(self.config.batch_size())
            .map(|c| Ok(to_batch(schema.clone(), c)))
            .collect();
        Ok(Box::pin(futures::stream::iter(batches)))
    }
}
