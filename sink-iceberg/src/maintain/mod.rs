//! Table maintenance: compaction of closed partitions, manifest rewrite,
//! snapshot expiry and deletion of unreferenced files, none of which changes
//! the committed rows or the committed window.
//!
//! iceberg-rust 0.10.1 has no rewrite action, so the replace snapshot is
//! built and committed here ([`replace`], [`swap`]); that part can go once
//! iceberg-rust ships one.

mod compact;
mod config;
mod expire;
mod files;
mod list;
mod replace;
mod swap;

pub use config::{MaintenanceConfig, Step, StepHook};
pub use expire::expirable_snapshots;
use offload_core::MaintenanceSummary;
pub use replace::SUMMARY_MAINTENANCE;

use crate::{IcebergSinkError, IcebergTable};

impl IcebergTable {
    /// Runs maintenance on this table as `cfg` says, in order: compacts the
    /// closed partitions that have many small files (one replace commit per
    /// partition, which also rewrites the manifests), expires snapshots out of
    /// retention and deletes the files only they referenced, then deletes
    /// files no commit references that are older than the orphan grace.
    ///
    /// Safe to run while offload runs, sweeps or another `maintain` commit:
    /// a replace commit that loses a race is rebuilt on the new state if the
    /// files it replaces are still live, and abandoned otherwise.
    pub async fn maintain_with(
        &self,
        cfg: &MaintenanceConfig,
    ) -> Result<MaintenanceSummary, IcebergSinkError> {
        let mut report = MaintenanceSummary::default();
        let Some(mut current) = self.load_if_exists().await? else {
            return Ok(report);
        };
        let plans = compact::plan(self, &current, cfg).await?;
        for (i, plan) in plans.into_iter().enumerate() {
            if i > 0 {
                // Main has moved since the plan (our previous replace, or a
                // concurrent maintain's, whose expiry may already have deleted
                // the manifests of the snapshot we planned on): read the inputs
                // from main as it is now, and only if they are all still live there.
                let Some(now) = self.load_if_exists().await? else {
                    break;
                };
                current = now;
                if !compact::still_live(&current, &plan).await? {
                    tracing::info!(table = %self.ident(), "compaction of a partition abandoned: another maintain replaced its files");
                    report.conflicts_retried += 1;
                    continue;
                }
            }
            let rewrite = compact::rewrite(self, &current, &plan, cfg).await?;
            cfg.step(Step::OutputsWritten);
            let outcome = replace::commit(self, replace::ReplacePlan::compaction(&rewrite), cfg).await;
            match outcome {
                Ok(done) => {
                    tracing::info!(
                        table = %self.ident(),
                        snapshot = done.snapshot_id,
                        files = rewrite.removed.len(),
                        into = rewrite.added.len(),
                        rows = rewrite.rows,
                        "compacted a partition"
                    );
                    report.partitions_compacted += 1;
                    report.files_rewritten += rewrite.removed.len() as u64;
                    report.files_written += rewrite.added.len() as u64;
                    report.rows_rewritten += rewrite.rows;
                    report.bytes_read += rewrite.bytes_read;
                    report.bytes_written += rewrite.bytes_written;
                    report.commits += 1;
                    report.conflicts_retried += u64::from(done.retries);
                    report.manifests_before = report.manifests_before.max(done.manifests_before);
                    report.manifests_after = done.manifests_after;
                }
                // The commit may still land: keep its files (orphan cleanup
                // removes them after the grace if it did not).
                Err(e @ IcebergSinkError::ReplaceOutcomeUnknown { .. }) => return Err(e),
                // Another maintain replaced these files first: nothing of
                // ours landed; the other partitions still get their turn.
                Err(IcebergSinkError::ReplaceConflict { reason, .. }) => {
                    compact::delete_outputs(&current, &rewrite).await;
                    tracing::info!(table = %self.ident(), %reason, "compaction of a partition abandoned");
                    report.conflicts_retried += 1;
                }
                Err(e) => {
                    compact::delete_outputs(&current, &rewrite).await;
                    return Err(e);
                }
            }
        }
        if let Some(done) = replace::rewrite_manifests_if_needed(self, cfg).await? {
            report.commits += 1;
            report.conflicts_retried += u64::from(done.retries);
            report.manifests_before = report.manifests_before.max(done.manifests_before);
            report.manifests_after = done.manifests_after;
        }
        expire::expire(self, cfg, &mut report).await?;
        files::remove_orphans(self, cfg, &mut report).await?;
        Ok(report)
    }
}
