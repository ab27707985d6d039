//! `[maintenance]`: what `offload maintain` (and `offload run`, every
//! `interval`) does to each Iceberg table: compaction of closed partitions,
//! manifest rewrite, snapshot expiry and deletion of unreferenced files.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::value::{ByteSize, Dur};

/// `[maintenance]`. Every key is optional; absent keys keep the sink's
/// defaults ([`offload_sink_iceberg::MaintenanceConfig::default`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    /// How often `offload run` maintains each table, after its run (default
    /// 1h; `"0s"`: never inside `run`, leaving it to `offload maintain`).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// The size compaction aims its files at (default 256MiB).
    pub target_file_size: Option<ByteSize>,
    /// Live files a closed partition needs before it is compacted (default 5, at least 2).
    pub min_input_files: Option<usize>,
    /// Compact an unpartitioned table's one partition too (default false).
    pub compact_open: Option<bool>,
    /// Most entries per manifest a rewrite writes (default 10000).
    pub manifest_entries: Option<usize>,
    /// Manifests main's snapshot may have before they are rewritten (default 32).
    pub max_manifests: Option<usize>,
    /// Snapshots younger than this are never expired (default 1d).
    pub snapshot_retention: Option<Dur>,
    /// Newest snapshots always kept (default 10, at least 1).
    pub keep_snapshots: Option<usize>,
    /// A snapshot is expired, and its files deleted, only once it stopped
    /// being current this long ago (default 1h).
    pub delete_grace: Option<Dur>,
    /// Files no snapshot references are deleted once older than this (default
    /// 24h). Also accepted as `[iceberg.writer] orphan_grace`; this one wins.
    pub orphan_grace: Option<Dur>,
    /// Previous metadata files kept in the table's metadata log (default 10, at least 1).
    pub keep_metadata_files: Option<usize>,
    /// Attempts of a maintenance commit that lost a race (default 5, at least 1).
    pub max_commit_attempts: Option<u32>,
}

impl Default for MaintenanceSection {
    fn default() -> Self {
        MaintenanceSection {
            interval: default_interval(),
            target_file_size: None,
            min_input_files: None,
            compact_open: None,
            manifest_entries: None,
            max_manifests: None,
            snapshot_retention: None,
            keep_snapshots: None,
            delete_grace: None,
            orphan_grace: None,
            keep_metadata_files: None,
            max_commit_attempts: None,
        }
    }
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(3600))
}

impl MaintenanceSection {
    /// How often `offload run` maintains each table; `None` for `"0s"` (never).
    pub fn run_interval(&self) -> Option<Duration> {
        (!self.interval.0.is_zero()).then_some(self.interval.0)
    }

    /// Refuses values the sink would otherwise silently raise to its minimum.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |key: &str, v: Option<u64>, min: u64| match v {
            Some(v) if v < min => Err(ConfigError::invalid(
                &format!("maintenance.{key}"),
                format!("must be at least {min}"),
            )),
            _ => Ok(()),
        };
        let n = |v: Option<usize>| v.map(|v| v as u64);
        at_least("target_file_size", self.target_file_size.map(|b| b.0), 1)?;
        at_least("min_input_files", n(self.min_input_files), 2)?;
        at_least("manifest_entries", n(self.manifest_entries), 1)?;
        at_least("max_manifests", n(self.max_manifests), 1)?;
        at_least("keep_snapshots", n(self.keep_snapshots), 1)?;
        at_least("keep_metadata_files", n(self.keep_metadata_files), 1)?;
        at_least("max_commit_attempts", self.max_commit_attempts.map(u64::from), 1)?;
        Ok(())
    }
}
