//! The [`Source`] trait: where rows come from, and [`SourceTable`], one opened table.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use futures::stream::BoxStream;

use futures::TryStreamExt;

use crate::{BucketGrid, Error, TableConfig, Watermark, Window, batch_positions};

/// A stream of Arrow record batches, ended early by the first error.
pub type BatchStream = BoxStream<'static, Result<RecordBatch, Error>>;

/// A table store that rows are read from. [`open`](Source::open) resolves one
/// table once (its schema, its layout, adapter options) and hands back a
/// [`SourceTable`] that reads it window by window; the source itself keeps no
/// per-table state.
///
/// # Contract
/// 1. `open` fails with a classified error, naming the column, when the table
///    cannot be read exactly (missing watermark columns, an unmappable type).
/// 2. Opening is cheap enough to do once per run: the engine opens a fresh
///    handle for every run, so a schema change upstream is seen by the next run.
///
/// The in-memory `memory::MemorySource` (feature
/// `testing`) is the reference implementation; `conformance::source`
/// (feature `conformance`) checks any implementation.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Resolves `table` and returns a handle to read it with.
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error>;
}

/// One table of a [`Source`], opened with [`Source::open`].
///
/// # Contract
/// Every implementation must keep these promises; the engine's exactly-once
/// argument rests on them.
/// 1. **Total order.** Each row has a position `(timestamp, sequence)` taken from
///    [`TableConfig::timestamp_column`] and [`TableConfig::sequence_column`];
///    positions are compared as pairs, never by timestamp alone.
/// 2. **Complete below the high watermark.** [`high_watermark`](SourceTable::high_watermark)
///    returns a position `h` such that every row that will ever exist at a
///    position `<= h` exists now. Implementations get this from a lag hold-back:
///    `h` is the largest existing position whose timestamp is at most
///    `now - lag` on the *source's* clock. `None` means no row is complete yet.
/// 3. **Exact windows.** [`read`](SourceTable::read) yields every row with
///    `window.after() < position <= window.until()` exactly once and no other
///    row, in batches of the schema returned by [`schema`](SourceTable::schema).
///    Order inside the window is not required.
/// 4. **Streaming.** `read` must not buffer the whole window: memory stays
///    bounded by a few batches whatever the window size.
/// 5. **Counts agree with reads.** [`bucket_counts`](SourceTable::bucket_counts)
///    counts exactly the rows [`read`](SourceTable::read) would yield for each bucket.
/// 6. **The low watermark is exact or absent.** [`low_watermark`](SourceTable::low_watermark)
///    returns the oldest position above its argument, or `None`. It only
///    sizes windows ([`TableConfig::max_window`]): the engine never skips a
///    row on its word, so a source that cannot answer cheaply keeps the
///    default `None`.
/// 7. **Errors are classified**: [`Error::Source`] with `retryable` set for
///    transient faults (connection reset, timeouts, overload).
#[async_trait]
pub trait SourceTable: Send + Sync + std::fmt::Debug {
    /// The configuration this handle was opened with.
    fn config(&self) -> &TableConfig;

    /// The Arrow schema of the rows [`read`](SourceTable::read) yields.
    fn schema(&self) -> SchemaRef;

    /// The highest position whose data is complete (see the contract), or
    /// `None` when no row is complete yet.
    async fn high_watermark(&self) -> Result<Option<Watermark>, Error>;

    /// The oldest position strictly above `after` (with
    /// [`Watermark::MIN`]: the table's oldest row), whatever its age: the lag
    /// does not apply. `None` when there is no such row, or when the source
    /// cannot tell (the default).
    ///
    /// The engine asks for it only when a window would be longer than
    /// [`TableConfig::max_window`], and measures the window from it: a table's
    /// first run on months of data then takes one `max_window` of event time,
    /// and a gap without rows (a weekend, an outage) is crossed in one
    /// window instead of one empty window per `max_window`. It never decides
    /// which rows a window holds, so it cannot cause loss or duplication.
    /// Adapters answer with one cheap query on the sorting key.
    async fn low_watermark(&self, after: Watermark) -> Result<Option<Watermark>, Error> {
        let _ = after;
        Ok(None)
    }

    /// Streams the rows in `window`.
    async fn read(&self, window: Window) -> Result<BatchStream, Error>;

    /// How many rows each bucket of `grid` holds (positions at or below
    /// `grid.until()`), one figure per bucket: the late-row sweep compares them
    /// with the sink's. The default reads [`grid.span()`](BucketGrid::span) and
    /// counts; adapters answer with one aggregate instead.
    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        let config = self.config();
        let (ts, seq) = (config.timestamp_column(), config.sequence_column());
        let mut counts = vec![0u64; grid.len()];
        let mut stream = self.read(grid.span()).await?;
        while let Some(batch) = stream.try_next().await? {
            for (c, n) in counts
                .iter_mut()
                .zip(grid.histogram(batch_positions(&batch, ts, seq)?))
            {
                *c += n;
            }
        }
        Ok(counts)
    }
}

#[async_trait]
impl<T: Source + ?Sized> Source for Arc<T> {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SourceTable>, Error> {
        (**self).open(table).await
    }
}

#[async_trait]
impl<T: SourceTable + ?Sized> SourceTable for Arc<T> {
    fn config(&self) -> &TableConfig {
        (**self).config()
    }
    fn schema(&self) -> SchemaRef {
        (**self).schema()
    }
    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        (**self).high_watermark().await
    }
    async fn low_watermark(&self, after: Watermark) -> Result<Option<Watermark>, Error> {
        (**self).low_watermark(after).await
    }
    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        (**self).read(window).await
    }
    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        (**self).bucket_counts(grid).await
    }
}
