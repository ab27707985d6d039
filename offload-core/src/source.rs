//! The [`Source`] trait: where rows come from.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{Error, TableConfig, Watermark, Window};

/// A stream of Arrow record batches, ended early by the first error.
pub type BatchStream = BoxStream<'static, Result<RecordBatch, Error>>;

/// A table store that rows are read from, window by window.
///
/// # Contract
/// Every implementation must keep these promises; the engine's exactly-once
/// argument rests on them.
/// 1. **Total order.** Each row has a position `(timestamp, sequence)` taken from
///    [`TableConfig::timestamp_column`] and [`TableConfig::sequence_column`];
///    positions are compared as pairs, never by timestamp alone.
/// 2. **Complete below the high watermark.** [`high_watermark`](Source::high_watermark)
///    returns a position `h` such that every row that will ever exist at a
///    position `<= h` exists now. Implementations get this from a lag hold-back:
///    `h` is the largest existing position whose timestamp is at most
///    `now - lag` on the *source's* clock. `None` means no row is complete yet.
/// 3. **Exact windows.** [`read`](Source::read) yields every row with
///    `window.after() < position <= window.until()` exactly once and no other
///    row, in batches of the schema returned by [`schema`](Source::schema).
///    Order inside the window is not required.
/// 4. **Streaming.** `read` must not buffer the whole window: memory stays
///    bounded by a few batches whatever the window size.
/// 5. **Errors are classified**: [`Error::Source`] with `retryable` set for
///    transient faults (connection reset, timeouts, overload).
///
/// The in-memory [`MemorySource`](crate::memory::MemorySource) (feature
/// `testing`) is the reference implementation.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The Arrow schema of the rows `read` yields for `table`.
    async fn schema(&self, table: &TableConfig) -> Result<SchemaRef, Error>;

    /// The highest position whose data is complete (see the contract), or
    /// `None` when no row is complete yet.
    async fn high_watermark(&self, table: &TableConfig) -> Result<Option<Watermark>, Error>;

    /// Streams the rows in `window`.
    async fn read(&self, table: &TableConfig, window: Window) -> Result<BatchStream, Error>;
}
