//! The vocabulary of the late-row sweep: [`BucketGrid`] (the time buckets source
//! and sink are compared in), [`SinkVersion`] (the table state a repair is
//! fenced on), [`RepairMetadata`] (what a repair commit records) and
//! [`SweepSummary`] (what a sweep found and did).
//!
//! # Why a sweep is needed
//! A window `(after, until]` is complete when it is read only if nothing ever
//! reaches the source at a position at or below `until` later. In production
//! rows do arrive late (a Kafka consumer catching up after a restart, a
//! replayed partition, a backfill), and without a sweep they would never be
//! offloaded. The sweep finds, within [`TableConfig::late_horizon`](crate::TableConfig::late_horizon)
//! below the committed watermark, the rows the source holds that the sink does
//! not, and commits exactly those, fenced on the table version its diff was
//! computed against.

use std::time::Duration;

use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use crate::{Error, RunId, Watermark, Window};

/// Consecutive time buckets: bucket `i` holds the positions whose timestamp is
/// in `[start + i·width, start + (i+1)·width)` and that are at or below
/// [`until`](BucketGrid::until). Buckets are half-open on timestamps so that
/// every row of one microsecond, whatever its sequence, is in one bucket.
///
/// ```
/// use std::time::Duration;
/// use offload_core::{BucketGrid, Watermark};
/// // Buckets of 10 µs from 100 µs, clipped at the watermark (125, 7).
/// let grid = BucketGrid::covering(100, Watermark::new(125, 7), Duration::from_micros(10)).unwrap();
/// assert_eq!(grid.len(), 3);
/// assert_eq!(grid.index_of(Watermark::new(109, u64::MAX)), Some(0));
/// assert_eq!(grid.index_of(Watermark::new(110, 0)), Some(1));
/// assert_eq!(grid.index_of(Watermark::new(125, 8)), None); // above the watermark
/// assert_eq!(grid.bucket(2).until(), Watermark::new(125, 7));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketGrid {
    start: i64,
    width: i64,
    len: usize,
    until: Watermark,
}

impl BucketGrid {
    /// `len` buckets of `width_micros` from `start_micros`, clipped at `until`.
    /// Fails unless every bucket holds at least one position at or below `until`.
    pub fn new(start_micros: i64, width_micros: i64, len: usize, until: Watermark) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "bucket_grid",
            reason,
        };
        if width_micros < 1 || len == 0 {
            return Err(bad(format!("{len} buckets of {width_micros} µs")));
        }
        if start_micros == i64::MIN {
            return Err(bad("starts at the first representable microsecond".into()));
        }
        let last_lo = i64::try_from(len - 1)
            .ok()
            .and_then(|n| n.checked_mul(width_micros))
            .and_then(|o| start_micros.checked_add(o))
            .ok_or_else(|| bad("overflows the timestamp range".into()))?;
        if last_lo > until.timestamp_micros() || last_lo.checked_add(width_micros).is_none() {
            return Err(bad(format!(
                "its last bucket starts at {last_lo} µs, above the watermark {until}"
            )));
        }
        Ok(Self {
            start: start_micros,
            width: width_micros,
            len,
            until,
        })
    }

    /// The buckets of `width` aligned to multiples of it (from the epoch) that
    /// cover every timestamp from `from_micros` up to `until`.
    pub fn covering(from_micros: i64, until: Watermark, width: Duration) -> Result<Self, Error> {
        let width = i64::try_from(width.as_micros())
            .ok()
            .filter(|w| *w > 0)
            .ok_or(Error::InvalidConfig {
                field: "sweep_bucket",
                reason: "must be between 1 µs and i64::MAX µs".into(),
            })?;
        let from = from_micros.clamp(i64::MIN + width, until.timestamp_micros());
        let start = from.div_euclid(width) * width;
        let len = (until.timestamp_micros() - start) / width + 1;
        Self::new(start, width, usize::try_from(len).unwrap_or(usize::MAX), until)
    }

    /// Number of buckets.
    #[allow(clippy::len_without_is_empty)] // never empty
    pub fn len(&self) -> usize {
        self.len
    }
    /// First timestamp of bucket 0 (µs since the epoch).
    pub fn start_micros(&self) -> i64 {
        self.start
    }
    /// Width of every bucket (µs).
    pub fn width_micros(&self) -> i64 {
        self.width
    }
    /// The highest position any bucket holds.
    pub fn until(&self) -> Watermark {
        self.until
    }

    /// First timestamp of bucket `i`.
    pub fn lo_micros(&self, i: usize) -> i64 {
        self.start + i as i64 * self.width
    }

    /// Bucket `i` as the window of positions it holds.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn bucket(&self, i: usize) -> Window {
        assert!(i < self.len, "bucket {i} of {}", self.len);
        let lo = self.lo_micros(i);
        let top = Watermark::new(lo + self.width - 1, u64::MAX).min(self.until);
        Window::new(Watermark::new(lo - 1, u64::MAX), top).expect("a grid's buckets are never empty")
    }

    /// Every position of every bucket, as one window.
    pub fn span(&self) -> Window {
        Window::new(self.bucket(0).after(), self.until).expect("a grid is never empty")
    }

    /// The bucket holding `position`, if any.
    pub fn index_of(&self, position: Watermark) -> Option<usize> {
        if position > self.until {
            return None;
        }
        let ts = position.timestamp_micros();
        if ts < self.start {
            return None;
        }
        let i = usize::try_from((ts - self.start) / self.width).ok()?;
        (i < self.len).then_some(i)
    }

    /// Bucket `i` cut into up to `parts` equal buckets (fewer where the
    /// watermark clips it), or `None` when it is one microsecond wide.
    pub fn split(&self, i: usize, parts: usize) -> Option<BucketGrid> {
        let width = (self.width / parts.max(1) as i64).max(1);
        if self.width == 1 {
            return None;
        }
        let lo = self.lo_micros(i);
        let top = self.bucket(i).until();
        let len = ((top.timestamp_micros() - lo) / width + 1).min((self.width + width - 1) / width);
        BucketGrid::new(lo, width, len as usize, top).ok()
    }

    /// Counts `positions` per bucket; positions outside the grid are ignored.
    /// What the traits' default `bucket_counts` use.
    ///
    /// ```
    /// use std::time::Duration;
    /// use offload_core::{BucketGrid, Watermark};
    /// let grid = BucketGrid::covering(0, Watermark::new(19, 0), Duration::from_micros(10)).unwrap();
    /// let counts = grid.histogram([Watermark::new(1, 0), Watermark::new(15, 3), Watermark::new(19, 1)]);
    /// assert_eq!(counts, vec![1, 1]);
    /// ```
    pub fn histogram(&self, positions: impl IntoIterator<Item = Watermark>) -> Vec<u64> {
        let mut counts = vec![0; self.len];
        for p in positions {
            if let Some(i) = self.index_of(p) {
                counts[i] += 1;
            }
        }
        counts
    }
}

/// The first timestamp the late-row sweep repairs below `committed`:
/// `late_horizon` below it, aligned down to a `sweep_bucket` edge (the sweep
/// compares whole buckets, aligned to multiples of their width from the
/// epoch). `None` when the horizon is zero: the sweep is off.
///
/// ```
/// use std::time::Duration;
/// use offload_core::{Watermark, repair_edge};
/// let w = Watermark::new(10_500, 3);
/// assert_eq!(repair_edge(w, Duration::from_micros(1_000), Duration::from_micros(400)), Some(9_200));
/// assert_eq!(repair_edge(w, Duration::ZERO, Duration::from_micros(400)), None);
/// ```
pub fn repair_edge(committed: Watermark, late_horizon: Duration, sweep_bucket: Duration) -> Option<i64> {
    if late_horizon.is_zero() {
        return None;
    }
    let horizon = i64::try_from(late_horizon.as_micros()).unwrap_or(i64::MAX);
    let width = i64::try_from(sweep_bucket.as_micros()).unwrap_or(i64::MAX).max(1);
    Some(
        committed
            .timestamp_micros()
            .saturating_sub(horizon)
            .div_euclid(width)
            .saturating_mul(width),
    )
}

/// An opaque version of a sink table's state (an Iceberg snapshot id, a commit
/// counter): a repair commit succeeds only while the table is still at the
/// version its diff was computed against.
///
/// ```
/// let v = offload_core::SinkVersion::new("8231");
/// assert_eq!(v.as_str(), "8231");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkVersion(std::sync::Arc<str>);

impl SinkVersion {
    /// Wraps the sink's own version text.
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into().into())
    }
    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SinkVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a repair commit records beside its rows, atomically with them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairMetadata {
    /// The table version the diff was computed against; the commit is refused
    /// ([`Error::RepairConflict`]) if the table is no longer at it.
    pub base: SinkVersion,
    /// The committed watermark, which the repair leaves unchanged.
    pub watermark: Watermark,
    /// The sweep's own run id, so an unknown outcome can be resolved with
    /// [`SinkTable::was_committed`](crate::SinkTable::was_committed).
    pub run_id: RunId,
    /// The engine that ran it.
    pub engine_id: String,
    /// The store lease's fencing token.
    pub fencing_token: u64,
    /// The buckets whose missing rows the commit adds.
    pub buckets: Vec<Window>,
    /// Rows the commit adds.
    pub rows: u64,
}

impl RepairMetadata {
    /// Bundles the figures.
    pub fn new(
        base: SinkVersion,
        watermark: Watermark,
        run_id: RunId,
        engine_id: impl Into<String>,
        fencing_token: u64,
        buckets: Vec<Window>,
        rows: u64,
    ) -> Self {
        Self {
            base,
            watermark,
            run_id,
            engine_id: engine_id.into(),
            fencing_token,
            buckets,
            rows,
        }
    }
}

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepSummary {
    /// Buckets compared (inside the horizon).
    pub buckets: usize,
    /// Buckets whose counts disagreed and whose keys were diffed.
    pub buckets_differing: usize,
    /// Source rows inside the horizon the sink did not hold.
    pub late_rows: u64,
    /// Of those, rows the sweep committed (all of them, unless the repair failed).
    pub repaired_rows: u64,
    /// The oldest late row's position.
    pub oldest_late: Option<Watermark>,
    /// Sink rows inside the horizon the source does not hold (expired upstream,
    /// or a duplicate): reported, never deleted.
    pub excess_rows: u64,
    /// Rows the source holds in the horizon before the late horizon beyond what
    /// the sink holds there: rows that arrived too late to be repaired.
    pub beyond_horizon_rows: u64,
    /// The repair commit's run id, when one was made.
    pub repair_run: Option<RunId>,
    /// Wall time of the sweep.
    pub duration: Duration,
}

/// The positions of a batch's rows, read from its timestamp and sequence
/// columns: what the engine diffs source rows with.
///
/// Timestamps may be Arrow timestamps of any unit (floored to µs) or Int64
/// microseconds; sequences any non-negative integer type, or a decimal of
/// scale 0 within `0..=u64::MAX` (how `UInt64` is held exactly).
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{RecordBatch, TimestampMillisecondArray, UInt32Array};
/// use offload_core::{Watermark, batch_positions};
/// let batch = RecordBatch::try_from_iter([
///     ("ts", Arc::new(TimestampMillisecondArray::from(vec![1, 2])) as _),
///     ("seq", Arc::new(UInt32Array::from(vec![7, 8])) as _),
/// ]).unwrap();
/// assert_eq!(batch_positions(&batch, "ts", "seq").unwrap(),
///     vec![Watermark::new(1_000, 7), Watermark::new(2_000, 8)]);
/// ```
pub fn batch_positions(
    batch: &RecordBatch,
    timestamp: &str,
    sequence: &str,
) -> Result<Vec<Watermark>, Error> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            Error::source(
                std::io::Error::other(format!("batch has no column {name:?}")),
                false,
            )
        })
    };
    let unsupported = |name: &str, a: &dyn Array, why: String| {
        Error::source(
            std::io::Error::other(format!("column {name:?} of type {}: {why}", a.data_type())),
            false,
        )
    };
    let (ts_col, seq_col) = (column(timestamp)?, column(sequence)?);
    let ts =
        timestamps_micros(ts_col.as_ref()).map_err(|why| unsupported(timestamp, ts_col.as_ref(), why))?;
    let seq = sequences_u64(seq_col.as_ref()).map_err(|why| unsupported(sequence, seq_col.as_ref(), why))?;
    Ok(ts
        .into_iter()
        .zip(seq)
        .map(|(t, s)| Watermark::new(t, s))
        .collect())
}

/// The values of a timestamp column as µs since the epoch, floored: Arrow
/// timestamps of any unit, or Int64 microseconds. `Err` says why not (NULLs,
/// another type), for the caller to put in its own error.
///
/// ```
/// use arrow_array::TimestampNanosecondArray;
/// let ns = TimestampNanosecondArray::from(vec![-1, 1_999]);
/// assert_eq!(offload_core::timestamps_micros(&ns).unwrap(), vec![-1, 1]);
/// ```
pub fn timestamps_micros(a: &dyn Array) -> Result<Vec<i64>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    if a.null_count() > 0 {
        return Err("holds NULLs".into());
    }
    let v: Vec<i64> = match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => a
            .as_primitive::<TimestampSecondType>()
            .values()
            .iter()
            .map(|s| s.saturating_mul(1_000_000))
            .collect(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => a
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .iter()
            .map(|s| s.saturating_mul(1_000))
            .collect(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            a.as_primitive::<TimestampMicrosecondType>().values().to_vec()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => a
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .iter()
            .map(|n| n.div_euclid(1_000))
            .collect(),
        DataType::Int64 => a.as_primitive::<Int64Type>().values().to_vec(),
        _ => return Err("expected a timestamp".into()),
    };
    Ok(v)
}

/// The values of a sequence column as `u64`, exactly: any integer type, or a
/// decimal of scale 0 (how `UInt64` is held in Iceberg, and by the ClickHouse
/// source by default). Negative or too large values, NULLs and other types
/// are refused; `Err` says why.
///
/// ```
/// use arrow_array::{Decimal128Array, Int32Array};
/// let big = Decimal128Array::from(vec![0, i128::from(u64::MAX)]).with_precision_and_scale(20, 0).unwrap();
/// assert_eq!(offload_core::sequences_u64(&big).unwrap(), vec![0, u64::MAX]);
/// assert!(offload_core::sequences_u64(&Int32Array::from(vec![1, -1])).is_err());
/// ```
pub fn sequences_u64(a: &dyn Array) -> Result<Vec<u64>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if a.null_count() > 0 {
        return Err("holds NULLs".into());
    }
    fn exact<T: ArrowPrimitiveType>(a: &dyn Array) -> Result<Vec<u64>, String>
    where
        T::Native: TryInto<u64> + std::fmt::Display,
    {
        a.as_primitive::<T>()
            .values()
            .iter()
            .map(|v| {
                (*v).try_into()
                    .map_err(|_| format!("holds {v}, outside 0..=u64::MAX"))
            })
            .collect()
    }
    match a.data_type() {
        DataType::UInt8 => exact::<UInt8Type>(a),
        DataType::UInt16 => exact::<UInt16Type>(a),
        DataType::UInt32 => exact::<UInt32Type>(a),
        DataType::UInt64 => Ok(a.as_primitive::<UInt64Type>().values().to_vec()),
        DataType::Int8 => exact::<Int8Type>(a),
        DataType::Int16 => exact::<Int16Type>(a),
        DataType::Int32 => exact::<Int32Type>(a),
        DataType::Int64 => exact::<Int64Type>(a),
        DataType::Decimal128(_, 0) => exact::<Decimal128Type>(a),
        _ => Err("expected an integer or a decimal of scale 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Buckets tile the grid's span: every position in the span is in
        /// exactly the bucket `index_of` names, and in no other.
        #[test]
        fn buckets_tile_the_span(
            from in -1_000i64..1_000, top in 0i64..3_000, seq in any::<u64>(),
            width in 1u64..400, ts in -1_500i64..3_500, pseq in any::<u64>(),
        ) {
            let until = Watermark::new(top, seq);
            prop_assume!(from <= top);
            let grid = BucketGrid::covering(from, until, Duration::from_micros(width)).unwrap();
            let p = Watermark::new(ts, pseq);
            let holders: Vec<usize> = (0..grid.len()).filter(|&i| grid.bucket(i).contains(p)).collect();
            match grid.index_of(p) {
                Some(i) => prop_assert_eq!(holders, vec![i]),
                None => prop_assert!(holders.is_empty() && !grid.span().contains(p)),
            }
            prop_assert!(grid.lo_micros(0) <= from.max(i64::MIN + 1));
        }

        /// A split bucket's sub-buckets tile exactly the bucket.
        #[test]
        fn splits_tile_their_bucket(top in 0i64..3_000, width in 2u64..400, parts in 2usize..20, ts in -500i64..3_500) {
            let grid = BucketGrid::covering(0, Watermark::new(top, 5), Duration::from_micros(width)).unwrap();
            let i = grid.len() - 1;
            let sub = grid.split(i, parts).unwrap();
            let p = Watermark::new(ts, 3);
            prop_assert_eq!(grid.bucket(i).contains(p), sub.index_of(p).is_some());
            prop_assert_eq!(sub.span(), grid.bucket(i));
        }
    }

    #[test]
    fn decimal_sequences_are_read_exactly() {
        use std::sync::Arc;
        let seq = arrow_array::Decimal128Array::from(vec![0i128, u64::MAX as i128])
            .with_precision_and_scale(20, 0)
            .unwrap();
        let ts = arrow_array::TimestampMicrosecondArray::from(vec![1, 2]);
        let batch =
            RecordBatch::try_from_iter([("ts", Arc::new(ts) as _), ("seq", Arc::new(seq) as _)]).unwrap();
        assert_eq!(
            batch_positions(&batch, "ts", "seq").unwrap(),
            vec![Watermark::new(1, 0), Watermark::new(2, u64::MAX)]
        );
        let neg = arrow_array::Decimal128Array::from(vec![-1i128])
            .with_precision_and_scale(20, 0)
            .unwrap();
        let ts = arrow_array::TimestampMicrosecondArray::from(vec![1]);
        let batch =
            RecordBatch::try_from_iter([("ts", Arc::new(ts) as _), ("seq", Arc::new(neg) as _)]).unwrap();
        assert!(batch_positions(&batch, "ts", "seq").is_err());
    }

    #[test]
    fn negative_timestamps_align_down() {
        let grid = BucketGrid::covering(-15, Watermark::new(5, 0), Duration::from_micros(10)).unwrap();
        assert_eq!((grid.start_micros(), grid.len()), (-20, 3));
    }

    #[test]
    fn a_grid_above_its_watermark_is_refused() {
        assert!(BucketGrid::new(100, 10, 2, Watermark::new(105, 0)).is_err());
        assert!(BucketGrid::new(100, 0, 2, Watermark::new(105, 0)).is_err());
    }
}
