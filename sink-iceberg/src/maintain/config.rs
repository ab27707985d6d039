//! [`MaintenanceConfig`]: what `maintain` does and when it may delete.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A point inside [`IcebergTable::maintain_with`](crate::IcebergTable::maintain_with),
/// reported to the [`on_step`](MaintenanceConfig::on_step) hook as it is
/// reached (the reliability suite crashes the program there).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// A compaction's output files are written; no manifest yet.
    OutputsWritten,
    /// A replace commit's manifests and manifest list are written.
    ManifestsWritten,
    /// The new metadata file is written; the catalog has not swapped yet.
    MetadataWritten,
    /// The catalog acknowledged a replace commit.
    Committed,
    /// The snapshot expiry is committed; nothing deleted yet.
    Expired,
    /// The first unreferenced file was deleted; more may follow.
    Deleting,
}

impl Step {
    /// Every step, in the order a maintenance run reaches them.
    pub const ALL: [Step; 6] = [
        Step::OutputsWritten,
        Step::ManifestsWritten,
        Step::MetadataWritten,
        Step::Committed,
        Step::Expired,
        Step::Deleting,
    ];

    /// The step's stable name (`"maintain.commit"`), used for fault points.
    ///
    /// ```
    /// use offload_sink_iceberg::Step;
    /// assert_eq!(Step::Committed.name(), "maintain.commit");
    /// assert_eq!(Step::parse("maintain.delete"), Some(Step::Deleting));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Step::OutputsWritten => "maintain.outputs",
            Step::ManifestsWritten => "maintain.manifests",
            Step::MetadataWritten => "maintain.metadata",
            Step::Committed => "maintain.commit",
            Step::Expired => "maintain.expire",
            Step::Deleting => "maintain.delete",
        }
    }

    /// The step named `name` ([`Step::name`]'s output).
    pub fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A callback run at each [`Step`].
pub type StepHook = Arc<dyn Fn(Step) + Send + Sync>;

/// What [`IcebergTable::maintain_with`](crate::IcebergTable::maintain_with)
/// does: compaction of closed partitions into files near a target size,
/// expiry of old snapshots, deletion of what only expired snapshots
/// referenced, and removal of files no commit ever referenced. The defaults
/// suit a table offloaded every few minutes.
///
/// ```
/// use std::time::Duration;
/// use offload_sink_iceberg::MaintenanceConfig;
///
/// let cfg = MaintenanceConfig::default()
///     .target_file_size(128 << 20)
///     .snapshot_retention(Duration::from_secs(6 * 3600))
///     .keep_snapshots(20);
/// # let _ = cfg;
/// ```
#[derive(Clone)]
pub struct MaintenanceConfig {
    pub(crate) target_file_size: u64,
    pub(crate) min_input_files: usize,
    pub(crate) compact_open: bool,
    pub(crate) manifest_entries: usize,
    pub(crate) max_manifests: usize,
    pub(crate) snapshot_retention: Duration,
    pub(crate) keep_snapshots: usize,
    pub(crate) delete_grace: Duration,
    pub(crate) orphan_grace: Duration,
    pub(crate) keep_metadata_files: usize,
    pub(crate) max_commit_attempts: u32,
    pub(crate) on_step: Option<StepHook>,
}

impl fmt::Debug for MaintenanceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintenanceConfig")
            .field("target_file_size", &self.target_file_size)
            .field("min_input_files", &self.min_input_files)
            .field("compact_open", &self.compact_open)
            .field("manifest_entries", &self.manifest_entries)
            .field("max_manifests", &self.max_manifests)
            .field("snapshot_retention", &self.snapshot_retention)
            .field("keep_snapshots", &self.keep_snapshots)
            .field("delete_grace", &self.delete_grace)
            .field("orphan_grace", &self.orphan_grace)
            .field("keep_metadata_files", &self.keep_metadata_files)
            .field("max_commit_attempts", &self.max_commit_attempts)
            .field("on_step", &self.on_step.is_some())
            .finish()
    }
}

impl Default for MaintenanceConfig {
    /// Target 256 MiB files, compaction from 5 files, manifests of up to
    /// 10,000 entries (rewritten once main has more than 32), snapshots kept 1 day and at least 10, deletion grace
    /// 1 h, orphan grace 24 h, 10 old metadata files, 5 commit attempts.
    fn default() -> Self {
        Self {
            target_file_size: 256 << 20,
            min_input_files: 5,
            compact_open: false,
            manifest_entries: 10_000,
            max_manifests: 32,
            snapshot_retention: Duration::from_secs(24 * 3600),
            keep_snapshots: 10,
            delete_grace: Duration::from_secs(3600),
            orphan_grace: Duration::from_secs(24 * 3600),
            keep_metadata_files: 10,
            max_commit_attempts: 5,
            on_step: None,
        }
    }
}

impl MaintenanceConfig {
    /// The size compaction aims its files at (bytes on storage).
    pub fn target_file_size(mut self, bytes: u64) -> Self {
        self.target_file_size = bytes.max(1);
        self
    }
    /// How many live files a closed partition needs before it is compacted.
    pub fn min_input_files(mut self, n: usize) -> Self {
        self.min_input_files = n.max(2);
        self
    }
    /// Whether an unpartitioned table (whose one partition the offload never
    /// moves past) is compacted too.
    pub fn compact_open(mut self, yes: bool) -> Self {
        self.compact_open = yes;
        self
    }
    /// The most entries one manifest written by a replace commit holds.
    pub fn manifest_entries(mut self, n: usize) -> Self {
        self.manifest_entries = n.max(1);
        self
    }
    /// How many manifests main's snapshot may have before maintenance
    /// rewrites them (every fast append adds one).
    pub fn max_manifests(mut self, n: usize) -> Self {
        self.max_manifests = n.max(1);
        self
    }
    /// Snapshots younger than this are never expired.
    pub fn snapshot_retention(mut self, d: Duration) -> Self {
        self.snapshot_retention = d;
        self
    }
    /// How many of main's newest snapshots are always kept (at least 1).
    pub fn keep_snapshots(mut self, n: usize) -> Self {
        self.keep_snapshots = n.max(1);
        self
    }
    /// A snapshot is expired, and its files deleted, only once it has stopped
    /// being main's current snapshot for this long: a reader that loaded the
    /// table within it keeps every file it may read.
    pub fn delete_grace(mut self, d: Duration) -> Self {
        self.delete_grace = d;
        self
    }
    /// Files no snapshot references are deleted only once they are this old:
    /// longer than any commit takes from writing a file to the catalog swap.
    pub fn orphan_grace(mut self, d: Duration) -> Self {
        self.orphan_grace = d;
        self
    }
    /// How many previous metadata files the table keeps in its metadata log.
    pub fn keep_metadata_files(mut self, n: usize) -> Self {
        self.keep_metadata_files = n.max(1);
        self
    }
    /// How often a replace commit that lost a race is rebuilt and retried.
    pub fn max_commit_attempts(mut self, n: u32) -> Self {
        self.max_commit_attempts = n.max(1);
        self
    }
    /// A callback at each [`Step`] (fault injection, progress).
    pub fn on_step(mut self, hook: StepHook) -> Self {
        self.on_step = Some(hook);
        self
    }

    /// Reports `step` to the hook, if any.
    pub(crate) fn step(&self, step: Step) {
        if let Some(hook) = &self.on_step {
            hook(step);
        }
    }
}
