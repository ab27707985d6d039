//! Bucket counts of one Parquet data file from its page index.
//!
//! A file whose timestamp bounds straddle bucket edges (a compacted file
//! spans a whole partition) would otherwise be read whole for every sweep.
//! Its footer's column index gives each page's timestamp bounds and its
//! offset index each page's rows: a page inside one bucket adds its row count,
//! a page outside the grid is skipped, and only the pages that straddle an
//! edge (at most one per edge and column chunk in a sorted file) are decoded,
//! with a row selection, for the two key columns. Files without a page index
//! or without field ids answer `None` and are scanned as before.

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use iceberg::arrow::ArrowFileReader;
use iceberg::io::FileMetadata;
use offload_core::{BucketGrid, Watermark, sequences_u64, timestamps_micros};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;

use super::{BATCH_ROWS, Class, Keys, TsUnit, classify};
use crate::IcebergSinkError;

/// What the page index settled for one file.
pub(super) struct PageCounts {
    /// `(bucket, rows)` of pages inside one bucket, and of decoded rows.
    pub(super) counted: Vec<(usize, u64)>,
    /// Rows that had to be decoded.
    pub(super) decoded: u64,
}

impl Keys<'_> {
    /// Counts `path`'s rows per bucket of `grid` from its page index,
    /// decoding only the pages that straddle a bucket edge; `None` when the
    /// file has no usable page index (the caller scans it).
    pub(super) async fn count_pages(
        &self,
        path: &str,
        size: u64,
        grid: &BucketGrid,
    ) -> Result<Option<PageCounts>, IcebergSinkError> {
        let err = |what: &str, e: &dyn std::fmt::Display| IcebergSinkError::KeyColumn {
            table: self.table.identifier().to_string(),
            column: self.ts.to_owned(),
            reason: format!("{what} {path}: {e}"),
        };
        let input = self
            .table
            .file_io()
            .new_input(path)
            .map_err(|e| IcebergSinkError::iceberg(format!("open {path}"), e))?;
        let read = input
            .reader()
            .await
            .map_err(|e| IcebergSinkError::iceberg(format!("open {path}"), e))?;
        let reader = ArrowFileReader::new(FileMetadata { size }, read);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| err("read the footer of", &e))?;
        let meta = builder.metadata().clone();
        let Some(seq_id) = self
            .table
            .metadata()
            .current_schema()
            .field_by_name(self.seq)
            .map(|f| f.id)
        else {
            return Ok(None);
        };
        let (Some(ts_leaf), Some(seq_leaf)) = (leaf(&meta, self.ts_id), leaf(&meta, seq_id)) else {
            return Ok(None);
        };
        let Some(plan) = self.plan_pages(&meta, ts_leaf, grid) else {
            return Ok(None);
        };
        let mut counted = plan.counted;
        if plan.decode == 0 {
            return Ok(Some(PageCounts { counted, decoded: 0 }));
        }
        let schema = meta.file_metadata().schema_descr();
        let stream = builder
            .with_projection(ProjectionMask::leaves(schema, [ts_leaf, seq_leaf]))
            .with_row_selection(RowSelection::from(plan.selectors))
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| err("read the key pages of", &e))?;
        // The projection keeps file order: the timestamp first iff its leaf comes first.
        let (ts_col, seq_col) = if ts_leaf < seq_leaf { (0, 1) } else { (1, 0) };
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| err("decode", &e))?;
        let mut decoded = 0;
        for b in &batches {
            let ts = timestamps_micros(b.column(ts_col).as_ref()).map_err(|e| err("timestamps of", &e))?;
            let seq = sequences_u64(b.column(seq_col).as_ref()).map_err(|e| err("sequences of", &e))?;
            for (t, s) in ts.into_iter().zip(seq) {
                if let Some(i) = grid.index_of(Watermark::new(t, s)) {
                    counted.push((i, 1));
                }
            }
            decoded += b.num_rows() as u64;
        }
        Ok(Some(PageCounts { counted, decoded }))
    }

    /// Sorts the timestamp column's pages into counted, skipped and to be
    /// decoded; `None` without a column and offset index for every row group.
    fn plan_pages(&self, meta: &ParquetMetaData, ts_leaf: usize, grid: &BucketGrid) -> Option<PagePlan> {
        let (columns, offsets) = (meta.column_index()?, meta.offset_index()?);
        let mut plan = PagePlan::default();
        for (rg, group) in meta.row_groups().iter().enumerate() {
            let ColumnIndexMetaData::INT64(index) = columns.get(rg)?.get(ts_leaf)? else {
                return None;
            };
            let pages = offsets.get(rg)?.get(ts_leaf)?.page_locations();
            let rows = u64::try_from(group.num_rows()).ok()?;
            for (p, loc) in pages.iter().enumerate() {
                let first = u64::try_from(loc.first_row_index).ok()?;
                let end = match pages.get(p + 1) {
                    Some(next) => u64::try_from(next.first_row_index).ok()?,
                    None => rows,
                };
                let n = end.checked_sub(first)?;
                let bounds = match (index.min_value(p), index.max_value(p), index.null_count(p)) {
                    (Some(lo), Some(hi), Some(0)) => Some(match self.unit {
                        TsUnit::Micros => (*lo, *hi),
                        TsUnit::Nanos => (lo.div_euclid(1000), hi.div_euclid(1000)),
                    }),
                    // Nulls, or no bounds: decode it (a NULL key fails there).
                    _ => None,
                };
                match classify(grid, bounds) {
                    Class::Outside => plan.select(false, n),
                    Class::Bucket(i) => {
                        plan.counted.push((i, n));
                        plan.select(false, n);
                    }
                    Class::Scan => {
                        plan.decode += n;
                        plan.select(true, n);
                    }
                }
            }
        }
        Some(plan)
    }
}

/// Per-page decisions of one file.
#[derive(Default)]
struct PagePlan {
    counted: Vec<(usize, u64)>,
    /// Rows selected for decoding.
    decode: u64,
    selectors: Vec<RowSelector>,
}

impl PagePlan {
    fn select(&mut self, decode: bool, rows: u64) {
        let rows = rows as usize;
        match self.selectors.last_mut() {
            Some(last) if last.skip != decode => last.row_count += rows,
            _ => self.selectors.push(if decode {
                RowSelector::select(rows)
            } else {
                RowSelector::skip(rows)
            }),
        }
    }
}

/// The leaf column of the Parquet schema carrying Iceberg field `id`.
fn leaf(meta: &ParquetMetaData, id: i32) -> Option<usize> {
    meta.file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| {
            let info = c.self_type().get_basic_info();
            info.has_id() && info.id() == id && c.path().parts().len() == 1
        })
}
