//! The late-row sweep: finds the rows the source holds at or below the
//! committed watermark that the sink does not, and commits exactly those.
//!
//! # Why it is exactly once
//! - The diff is computed against one sink version (read with the committed
//!   watermark), and the repair commit is fenced on that version: if anything
//!   committed in between (another worker whose lease lapsed, a retry of our
//!   own commit whose reply was lost), the repair is refused and the next
//!   sweep diffs again. So a row is never added twice.
//! - A commit whose outcome is unknown is resolved by the repair's own run id
//!   ([`SinkTable::was_committed`]), as for windows.
//! - A crash anywhere before the commit leaves nothing visible; the next
//!   sweep finds the same rows missing and repairs them then.
//! - The sink never loses rows to make figures match: rows it holds that the
//!   source does not (expired upstream) are reported as excess, never deleted.
//!
//! # Why the steady state is cheap
//! Source and sink first count rows per time bucket (one aggregate on the
//! source, file metadata on the sink); only buckets whose counts disagree are
//! diffed by key, and a bucket too large to diff in memory is split until its
//! parts are small enough.

use std::time::Instant;

use arrow_array::{BooleanArray, RecordBatch};
use tokio_util::sync::CancellationToken;

use super::{Heartbeat, Offloader, abort, discard, settle};
use crate::{
    BucketGrid, CommittedWindow, Error, RepairMetadata, RunId, SinkTable, SourceTable, StagingWriter,
    SweepSummary, TableConfig, Watermark, Window, batch_positions, repair_edge,
};

/// Parts a bucket is split into.
const SPLIT: usize = 16;

/// One bucket to diff: bucket `index` of `grid`, with both sides' counts.
struct Pending {
    grid: BucketGrid,
    index: usize,
    source: u64,
    sink: u64,
}

impl Offloader {
    /// Sweeps `table` below `last.until` (see the module docs).
    pub(super) async fn sweep(
        &self,
        source: &dyn SourceTable,
        sink: &dyn SinkTable,
        table: &TableConfig,
        last: &CommittedWindow,
        heartbeat: &Heartbeat,
        cancel: &CancellationToken,
    ) -> Result<SweepSummary, Error> {
        let started = Instant::now();
        let watermark = last.until;
        let horizon = i64::try_from(table.late_horizon().as_micros()).unwrap_or(i64::MAX);
        // The caller sweeps only with a horizon, so there is an edge.
        let repair_from =
            repair_edge(watermark, table.late_horizon(), table.sweep_bucket()).unwrap_or(i64::MIN);
        // One more horizon below, compared but never repaired: rows that
        // arrived too late are reported, so an operator hears of them.
        let report_from = watermark
            .timestamp_micros()
            .saturating_sub(horizon)
            .saturating_sub(horizon);
        let grid = BucketGrid::covering(report_from, watermark, table.sweep_bucket())?;
        let (src, dst) = counts(source, sink, &grid).await?;

        let mut summary = SweepSummary::default();
        let mut queue = Vec::new();
        for i in 0..grid.len() {
            let in_horizon = grid.lo_micros(i) >= repair_from;
            if !in_horizon {
                summary.beyond_horizon_rows += src[i].saturating_sub(dst[i]);
            } else {
                summary.buckets += 1;
                if src[i] != dst[i] {
                    summary.buckets_differing += 1;
                    queue.push(Pending {
                        grid,
                        index: i,
                        source: src[i],
                        sink: dst[i],
                    });
                }
            }
        }
        if summary.beyond_horizon_rows > 0 {
            tracing::warn!(
                rows = summary.beyond_horizon_rows,
                horizon = ?table.late_horizon(),
                "rows arrived older than the late horizon: they are not repaired"
            );
        }
        if queue.is_empty() {
            summary.duration = started.elapsed();
            return Ok(summary);
        }

        let run_id = RunId::new();
        let mut writer = sink.begin(run_id, source.schema()).await?;
        let mut repaired = Vec::new();
        let diffed = self
            .diff(
                source,
                sink,
                table,
                queue,
                writer.as_mut(),
                heartbeat,
                cancel,
                &mut summary,
                &mut repaired,
            )
            .await;
        if let Err(e) = diffed {
            abort(writer).await;
            return Err(e);
        }
        if summary.late_rows == 0 {
            // Only excess rows: nothing to add.
            abort(writer).await;
            summary.duration = started.elapsed();
            return Ok(summary);
        }
        let staged = writer.finish().await?;
        if let Err(e) = self.pre_commit(heartbeat, cancel).await {
            discard(staged).await;
            return Err(e);
        }
        let meta = RepairMetadata::new(
            last.version.clone(),
            watermark,
            run_id,
            self.engine_id.clone(),
            heartbeat.lease().token,
            repaired,
            staged.stats().rows,
        );
        tracing::info!(rows = meta.rows, buckets = meta.buckets.len(), base = %meta.base, "committing late rows");
        let outcome = self
            .commit_with(sink, run_id, || staged.commit_repair(&meta))
            .await;
        settle(staged, outcome).await?;
        summary.repaired_rows = meta.rows;
        summary.repair_run = Some(run_id);
        summary.duration = started.elapsed();
        tracing::info!(rows = meta.rows, oldest = ?summary.oldest_late, "late rows repaired");
        Ok(summary)
    }

    /// Diffs every pending bucket by key, writing the source rows the sink
    /// lacks into `writer`; buckets too large to hold are split first.
    #[allow(clippy::too_many_arguments)]
    async fn diff(
        &self,
        source: &dyn SourceTable,
        sink: &dyn SinkTable,
        table: &TableConfig,
        mut queue: Vec<Pending>,
        writer: &mut dyn StagingWriter,
        heartbeat: &Heartbeat,
        cancel: &CancellationToken,
        summary: &mut SweepSummary,
        repaired: &mut Vec<Window>,
    ) -> Result<(), Error> {
        let (ts, seq) = (table.timestamp_column(), table.sequence_column());
        while let Some(p) = queue.pop() {
            if p.sink.max(p.source) > self.sweep_diff_rows
                && let Some(sub) = p.grid.split(p.index, SPLIT)
            {
                let (src, dst) = counts(source, sink, &sub).await?;
                for i in 0..sub.len() {
                    if src[i] != dst[i] {
                        queue.push(Pending {
                            grid: sub,
                            index: i,
                            source: src[i],
                            sink: dst[i],
                        });
                    }
                }
                continue;
            }
            let window = p.grid.bucket(p.index);
            let mut have = sink.positions(window).await?;
            have.sort_unstable();
            let mut matched = vec![false; have.len()];
            let mut missing = 0u64;
            let mut oldest: Option<Watermark> = None;
            let stream = source.read(window).await?;
            self.pump(stream, writer, heartbeat, cancel, &mut |batch: RecordBatch| {
                let positions = batch_positions(&batch, ts, seq)?;
                let keep: BooleanArray = positions
                    .iter()
                    .map(|p| match have.binary_search(p) {
                        Ok(j) => {
                            matched[j] = true;
                            Some(false)
                        }
                        Err(_) => {
                            oldest = Some(oldest.map_or(*p, |o| o.min(*p)));
                            Some(true)
                        }
                    })
                    .collect();
                let n = keep.true_count();
                missing += n as u64;
                if n == 0 {
                    return Ok(None);
                }
                arrow_select::filter::filter_record_batch(&batch, &keep)
                    .map(Some)
                    .map_err(|e| Error::source(e, false))
            })
            .await?;
            summary.excess_rows += matched.iter().filter(|m| !**m).count() as u64;
            if missing > 0 {
                summary.late_rows += missing;
                summary.oldest_late = match (summary.oldest_late, oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                repaired.push(window);
            }
        }
        Ok(())
    }
}

/// Both sides' counts over `grid`, checked against the grid's length.
async fn counts(
    source: &dyn SourceTable,
    sink: &dyn SinkTable,
    grid: &BucketGrid,
) -> Result<(Vec<u64>, Vec<u64>), Error> {
    let src = source.bucket_counts(grid).await?;
    if src.len() != grid.len() {
        return Err(Error::source(
            std::io::Error::other(format!(
                "bucket_counts returned {} figures for {} buckets",
                src.len(),
                grid.len()
            )),
            false,
        ));
    }
    let dst = sink.bucket_counts(grid).await?;
    if dst.len() != grid.len() {
        return Err(Error::sink(
            std::io::Error::other(format!(
                "bucket_counts returned {} figures for {} buckets",
                dst.len(),
                grid.len()
            )),
            false,
        ));
    }
    Ok((src, dst))
}
