//! What a sink's table maintenance did: [`MaintenanceSummary`], returned by
//! [`SinkTable::maintain`](crate::SinkTable::maintain).

/// The figures of one [`SinkTable::maintain`](crate::SinkTable::maintain)
/// call. Every step that did nothing leaves its figures at zero; a sink with
/// no maintenance returns the default.
///
/// ```
/// let done = offload_core::MaintenanceSummary::default();
/// assert!(done.is_noop());
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceSummary {
    /// Partitions whose small files were rewritten.
    pub partitions_compacted: u64,
    /// Data files removed from the live table by compaction (their rows are in
    /// `files_written`).
    pub files_rewritten: u64,
    /// Data files compaction wrote.
    pub files_written: u64,
    /// Rows compaction rewrote (read and written: the same rows).
    pub rows_rewritten: u64,
    /// Bytes of the data files compaction read.
    pub bytes_read: u64,
    /// Bytes of the data files compaction wrote.
    pub bytes_written: u64,
    /// Manifests the live snapshot had before a manifest rewrite.
    pub manifests_before: u64,
    /// Manifests it has after (equal to `manifests_before` when none ran).
    pub manifests_after: u64,
    /// Snapshots expired from the table's metadata.
    pub snapshots_expired: u64,
    /// Files deleted because only expired snapshots referenced them (data
    /// files, manifests, manifest lists, metadata files).
    pub files_deleted: u64,
    /// Files deleted that no snapshot ever referenced (left by crashed or
    /// refused commits), older than the orphan grace period.
    pub orphans_deleted: u64,
    /// Commits maintenance made (replace snapshots, expiries).
    pub commits: u64,
    /// Commits that lost a race to another writer and were rebuilt on the
    /// new state.
    pub conflicts_retried: u64,
}

impl MaintenanceSummary {
    /// Whether nothing was changed.
    pub fn is_noop(&self) -> bool {
        self.commits == 0 && self.files_deleted == 0 && self.orphans_deleted == 0
    }
}
