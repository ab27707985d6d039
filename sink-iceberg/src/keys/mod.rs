//! Committed rows by position, for the late-row sweep: the positions of a
//! window (a pruned scan of the two key columns) and per-bucket row counts
//! (from the manifests where a file's timestamp bounds put all its rows in
//! one bucket, a scan of the key columns of the other files only).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::{Predicate, Reference};
use iceberg::scan::ArrowRecordBatchStream;
use iceberg::spec::{Datum, MAIN_BRANCH, PrimitiveLiteral, PrimitiveType, SnapshotRef, Type};
use iceberg::table::Table;
use offload_core::{BucketGrid, Watermark, Window, sequences_u64, timestamps_micros};

use crate::IcebergSinkError;

mod pages;

/// Rows per batch of a key scan (two narrow columns).
const BATCH_ROWS: usize = 64 * 1024;

/// How the timestamp column is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsUnit {
    /// `timestamp`, `timestamptz` (µs), or `long` µs.
    Micros,
    /// `timestamp_ns`, `timestamptz_ns`.
    Nanos,
}

/// The key columns of one loaded table state.
pub(crate) struct Keys<'a> {
    table: &'a Table,
    ts: &'a str,
    seq: &'a str,
    ts_id: i32,
    ts_type: PrimitiveType,
    unit: TsUnit,
}

impl<'a> Keys<'a> {
    /// The key columns `ts` and `seq` of `table`'s current schema.
    pub(crate) fn new(table: &'a Table, ts: &'a str, seq: &'a str) -> Result<Self, IcebergSinkError> {
        let schema = table.metadata().current_schema();
        let field = |name: &str, purpose: &'static str| {
            schema
                .field_by_name(name)
                .cloned()
                .ok_or_else(|| IcebergSinkError::MissingColumn {
                    column: name.to_owned(),
                    purpose,
                })
        };
        let tsf = field(ts, "timestamp_column")?;
        field(seq, "sequence_column")?;
        let Type::Primitive(ts_type) = tsf.field_type.as_ref().clone() else {
            return Err(key_error(table, ts, format!("Iceberg type {}", tsf.field_type)));
        };
        let unit = match ts_type {
            PrimitiveType::Timestamp | PrimitiveType::Timestamptz | PrimitiveType::Long => TsUnit::Micros,
            PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs => TsUnit::Nanos,
            ref other => {
                return Err(key_error(
                    table,
                    ts,
                    format!("Iceberg type {other}, expected a timestamp or long microseconds"),
                ));
            }
        };
        Ok(Self {
            table,
            ts,
            seq,
            ts_id: tsf.id,
            ts_type,
            unit,
        })
    }

    fn datum(&self, v: i64) -> Datum {
        match self.ts_type {
            PrimitiveType::Timestamp => Datum::timestamp_micros(v),
            PrimitiveType::Timestamptz => Datum::timestamptz_micros(v),
            PrimitiveType::TimestampNs => Datum::timestamp_nanos(v),
            PrimitiveType::TimestamptzNs => Datum::timestamptz_nanos(v),
            _ => Datum::long(v),
        }
    }

    /// `lo <= ts <= hi` (microseconds, inclusive) in the column's own type,
    /// so the scan prunes partitions, files and row groups by their bounds.
    fn predicate(&self, lo: i64, hi: i64) -> Predicate {
        let (lo, hi) = match self.unit {
            TsUnit::Micros => (lo, hi),
            TsUnit::Nanos => (
                lo.saturating_mul(1000),
                hi.saturating_mul(1000).saturating_add(999),
            ),
        };
        Reference::new(self.ts)
            .greater_than_or_equal_to(self.datum(lo))
            .and(Reference::new(self.ts).less_than_or_equal_to(self.datum(hi)))
    }

    /// A file bound of the timestamp column, in microseconds.
    fn bound_micros(&self, d: &Datum) -> Option<i64> {
        if *d.data_type() != self.ts_type {
            return None;
        }
        match (d.literal(), self.unit) {
            (PrimitiveLiteral::Long(v), TsUnit::Micros) => Some(*v),
            (PrimitiveLiteral::Long(v), TsUnit::Nanos) => Some(v.div_euclid(1000)),
            _ => None,
        }
    }

    /// A scan of the key columns of main's `snapshot` over `lo <= ts <= hi`.
    fn scan(
        &self,
        snapshot: &SnapshotRef,
        lo: i64,
        hi: i64,
    ) -> Result<iceberg::scan::TableScan, IcebergSinkError> {
        self.table
            .scan()
            .snapshot_id(snapshot.snapshot_id())
            .select([self.ts, self.seq])
            .with_filter(self.predicate(lo, hi))
            .with_batch_size(Some(BATCH_ROWS))
            .build()
            .map_err(|e| {
                IcebergSinkError::iceberg(format!("plan a key scan of {}", self.table.identifier()), e)
            })
    }

    /// The positions of a batch of the key scan.
    fn positions(&self, batch: &RecordBatch) -> Result<Vec<Watermark>, IcebergSinkError> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| key_error(self.table, name, "missing from the scan result".into()))
        };
        // The sink stores UInt8/16 as `int`, UInt32 as `long` and UInt64 as
        // `decimal(20,0)`; core reads every one of them back exactly.
        let ts = timestamps_micros(col(self.ts)?.as_ref()).map_err(|r| key_error(self.table, self.ts, r))?;
        let seq = sequences_u64(col(self.seq)?.as_ref()).map_err(|r| key_error(self.table, self.seq, r))?;
        Ok(ts
            .into_iter()
            .zip(seq)
            .map(|(t, s)| Watermark::new(t, s))
            .collect())
    }

    /// Feeds every position `stream` yields to `each`.
    async fn drain(
        &self,
        stream: ArrowRecordBatchStream,
        mut each: impl FnMut(Watermark),
    ) -> Result<(), IcebergSinkError> {
        let ident = self.table.identifier();
        futures::pin_mut!(stream);
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| IcebergSinkError::iceberg(format!("read the key columns of {ident}"), e))?
        {
            self.positions(&batch)?.into_iter().for_each(&mut each);
        }
        Ok(())
    }

    /// Every committed position in `window`, duplicates included.
    pub(crate) async fn positions_in(&self, window: Window) -> Result<Vec<Watermark>, IcebergSinkError> {
        let Some(snapshot) = self.table.metadata().snapshot_for_ref(MAIN_BRANCH) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = ts_range(window);
        if lo > hi {
            return Ok(Vec::new());
        }
        let stream = self
            .scan(snapshot, lo, hi)?
            .to_arrow()
            .await
            .map_err(|e| IcebergSinkError::iceberg(format!("scan {}", self.table.identifier()), e))?;
        let mut out = Vec::new();
        self.drain(stream, |p| {
            if window.contains(p) {
                out.push(p);
            }
        })
        .await?;
        Ok(out)
    }

    /// Committed rows per bucket of `grid` (see the module docs). Equal to
    /// `grid.histogram(positions_in(grid.span()))` by construction: a file is
    /// either counted from its manifest entry (every row provably in one
    /// bucket), skipped (no row in the span), or read like `positions_in`
    /// reads it, never two of these.
    pub(crate) async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, IcebergSinkError> {
        let mut counts = vec![0u64; grid.len()];
        let Some(snapshot) = self.table.metadata().snapshot_for_ref(MAIN_BRANCH) else {
            return Ok(counts);
        };
        let Some(plan) = self.plan_counts(snapshot, grid).await? else {
            // Delete files: only a scan applies them.
            return Ok(grid.histogram(self.positions_in(grid.span()).await?));
        };
        for (i, n) in plan.counted {
            counts[i] += n;
        }
        // Straddling files: from their page index where they have one.
        let mut unindexed = HashSet::new();
        for (path, f) in &plan.scan {
            match self.count_pages(path, f.size, grid).await? {
                Some(pages) => {
                    for (i, n) in pages.counted {
                        counts[i] += n * f.times;
                    }
                    tracing::debug!(path = %path, decoded = pages.decoded, "bucket counts from the page index");
                }
                None => {
                    unindexed.insert(path.clone());
                }
            }
        }
        if unindexed.is_empty() {
            return Ok(counts);
        }
        let (lo, hi) = ts_range(grid.span());
        let ident = self.table.identifier();
        let wanted = Arc::new(unindexed);
        let tasks = self
            .scan(snapshot, lo, hi)?
            .plan_files()
            .await
            .map_err(|e| IcebergSinkError::iceberg(format!("plan files of {ident}"), e))?
            .try_filter(move |t| futures::future::ready(wanted.contains(t.data_file_path())))
            .boxed();
        let stream = self
            .table
            .reader_builder()
            .with_batch_size(BATCH_ROWS)
            .build()
            .read(tasks)
            .map_err(|e| IcebergSinkError::iceberg(format!("read files of {ident}"), e))?
            .stream();
        self.drain(stream, |p| {
            if let Some(i) = grid.index_of(p) {
                counts[i] += 1;
            }
        })
        .await?;
        Ok(counts)
    }

    /// Sorts main's live data files into counted, skipped and to be scanned;
    /// `None` when the snapshot has delete files.
    async fn plan_counts(
        &self,
        snapshot: &SnapshotRef,
        grid: &BucketGrid,
    ) -> Result<Option<CountPlan>, IcebergSinkError> {
        let Some(live) = crate::manifests::live_files(self.table, snapshot).await? else {
            return Ok(None);
        };
        let mut files = Vec::new();
        for live in &live.entries {
            {
                let f = live.entry.data_file();
                let bounds = f
                    .lower_bounds()
                    .get(&self.ts_id)
                    .and_then(|d| self.bound_micros(d))
                    .zip(
                        f.upper_bounds()
                            .get(&self.ts_id)
                            .and_then(|d| self.bound_micros(d)),
                    );
                files.push((
                    f.file_path(),
                    classify(grid, bounds),
                    f.record_count(),
                    f.file_size_in_bytes(),
                ));
            }
        }
        // A file listed twice (appended twice) is read as often as it is
        // listed; if any of its entries must be read, all of them are.
        let read: HashSet<&str> = files
            .iter()
            .filter(|(_, c, ..)| *c == Class::Scan)
            .map(|(p, ..)| *p)
            .collect();
        let mut scan: HashMap<String, ToRead> = HashMap::new();
        for (p, _, _, size) in files.iter().filter(|(p, ..)| read.contains(*p)) {
            scan.entry((*p).to_owned())
                .or_insert(ToRead {
                    size: *size,
                    times: 0,
                })
                .times += 1;
        }
        let counted = files
            .iter()
            .filter_map(|(p, c, n, _)| match c {
                Class::Bucket(i) if !read.contains(*p) => Some((*i, *n)),
                _ => None,
            })
            .collect();
        Ok(Some(CountPlan { counted, scan }))
    }
}

/// A data file whose rows must be read to be counted.
struct ToRead {
    /// Its size, for reading its footer.
    size: u64,
    /// How often main lists it (a file appended twice counts twice).
    times: u64,
}

/// What the manifests settle and what must be read.
struct CountPlan {
    /// `(bucket, record_count)` of the files entirely inside one bucket.
    counted: Vec<(usize, u64)>,
    /// The files to read, by path.
    scan: HashMap<String, ToRead>,
}

/// Where a data file's rows fall in a grid, from its timestamp bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// No row is in the grid's span.
    Outside,
    /// Every row is in this bucket.
    Bucket(usize),
    /// Rows may be in several buckets or above the grid's `until`, or the
    /// bounds are unknown: read it.
    Scan,
}

/// Classifies a file with timestamp bounds `[lo, hi]` (µs, inclusive).
///
/// A row at `until`'s timestamp may or may not be at or below `until` (that
/// depends on its sequence), so only files whose upper bound is strictly
/// below `until`'s timestamp are counted.
fn classify(grid: &BucketGrid, bounds: Option<(i64, i64)>) -> Class {
    let Some((lo, hi)) = bounds else {
        return Class::Scan;
    };
    let until = grid.until().timestamp_micros();
    if hi < grid.start_micros() || lo > until {
        return Class::Outside;
    }
    if lo < grid.start_micros() || hi >= until {
        return Class::Scan;
    }
    let bucket = |t: i64| (t - grid.start_micros()) / grid.width_micros();
    if bucket(lo) == bucket(hi) {
        usize::try_from(bucket(lo))
            .ok()
            .filter(|i| *i < grid.len())
            .map_or(Class::Scan, Class::Bucket)
    } else {
        Class::Scan
    }
}

/// The timestamps `[lo, hi]` (µs, inclusive) of a window's positions: `after`
/// with the largest sequence excludes its own microsecond.
fn ts_range(window: Window) -> (i64, i64) {
    let after = window.after();
    let lo = if after.sequence() == u64::MAX {
        after.timestamp_micros().saturating_add(1)
    } else {
        after.timestamp_micros()
    };
    (lo, window.until().timestamp_micros())
}

fn key_error(table: &Table, column: &str, reason: String) -> IcebergSinkError {
    IcebergSinkError::KeyColumn {
        table: table.identifier().to_string(),
        column: column.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, Decimal128Array, Int32Array, TimestampNanosecondArray};

    use super::*;

    #[test]
    fn classify_counts_only_files_inside_one_bucket_below_until() {
        // Buckets of 10 µs from 100; until (135, 4): buckets 100, 110, 120, 130.
        let grid = BucketGrid::new(100, 10, 4, Watermark::new(135, 4)).unwrap();
        assert_eq!(classify(&grid, Some((100, 109))), Class::Bucket(0));
        assert_eq!(classify(&grid, Some((121, 121))), Class::Bucket(2));
        assert_eq!(
            classify(&grid, Some((105, 110))),
            Class::Scan,
            "straddles an edge"
        );
        assert_eq!(
            classify(&grid, Some((99, 105))),
            Class::Scan,
            "starts before the grid"
        );
        assert_eq!(
            classify(&grid, Some((130, 135))),
            Class::Scan,
            "reaches until's microsecond"
        );
        assert_eq!(classify(&grid, Some((130, 134))), Class::Bucket(3));
        assert_eq!(classify(&grid, Some((136, 200))), Class::Outside);
        assert_eq!(classify(&grid, Some((0, 99))), Class::Outside);
        assert_eq!(classify(&grid, Some((135, 135))), Class::Scan);
        assert_eq!(classify(&grid, None), Class::Scan);
    }

    #[test]
    fn window_timestamps_exclude_after_only_at_the_largest_sequence() {
        let w = Window::new(Watermark::new(9, u64::MAX), Watermark::new(19, 3)).unwrap();
        assert_eq!(ts_range(w), (10, 19));
        let w = Window::new(Watermark::new(9, 5), Watermark::new(19, 3)).unwrap();
        assert_eq!(ts_range(w), (9, 19));
    }

    #[test]
    fn sequences_convert_exactly_and_refuse_negatives() {
        let big = Decimal128Array::from(vec![0, i128::from(u64::MAX)])
            .with_precision_and_scale(20, 0)
            .unwrap();
        assert_eq!(sequences_u64(&big).unwrap(), vec![0, u64::MAX]);
        assert!(sequences_u64(&Int32Array::from(vec![1, -1])).is_err());
        let over = Decimal128Array::from(vec![i128::from(u64::MAX) + 1])
            .with_precision_and_scale(38, 0)
            .unwrap();
        assert!(sequences_u64(&over).is_err());
        let ns: Arc<dyn Array> = Arc::new(TimestampNanosecondArray::from(vec![-1, 1_999]));
        assert_eq!(timestamps_micros(ns.as_ref()).unwrap(), vec![-1, 1]);
    }
}
