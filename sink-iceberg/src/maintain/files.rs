//! The files a table references, and removal of those it does not.
//!
//! Reachability follows Java Iceberg (`ReachableFileUtil`, `ManifestFiles.readPaths`):
//! the current metadata file and the metadata log, every snapshot's manifest
//! list, its manifests and their *live* entries (data and delete files;
//! an entry marked deleted records a removal, no snapshot reads that file
//! through it), and the statistics files. Locations are compared in one form
//! ([`file_key`]): local `file:` URLs and absolute paths as normalised paths,
//! anything else as written.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use offload_core::MaintenanceSummary;

use super::MaintenanceConfig;
use super::list::list_table;
use crate::writer::parse_file_name;
use crate::{IcebergSinkError, IcebergTable};

/// A file Hadoop-style catalogs keep next to the metadata; no metadata file
/// names it, so it is never an orphan.
const VERSION_HINT: &str = "version-hint.text";

/// The local path of `file:` URLs and absolute paths, with repeated
/// separators and `.` components removed; `None` for object storage.
pub(crate) fn local_path(location: &str) -> Option<PathBuf> {
    let raw = if let Some(rest) = location.strip_prefix("file://") {
        if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        }
    } else if let Some(rest) = location.strip_prefix("file:") {
        rest.to_owned()
    } else if location.starts_with('/') {
        location.to_owned()
    } else {
        return None;
    };
    Some(Path::new(&raw).components().collect())
}

/// The form locations are compared in: the normalised local path for local
/// locations, the location as written otherwise.
pub(crate) fn file_key(location: &str) -> String {
    match local_path(location) {
        Some(p) => p.to_string_lossy().into_owned(),
        None => location.to_owned(),
    }
}

/// Every file `table` references, as [`file_key`]s.
pub(crate) async fn reachable(table: &Table) -> Result<HashSet<String>, IcebergSinkError> {
    Reach::default().files(table).await
}

/// Reachability of one or more states of a table, reading each manifest once.
#[derive(Default)]
pub(crate) struct Reach {
    /// Live entries (file keys) of every manifest read so far, by manifest key.
    manifests: HashMap<String, Vec<String>>,
}

impl Reach {
    /// Every file `table` references, as [`file_key`]s.
    pub(crate) async fn files(&mut self, table: &Table) -> Result<HashSet<String>, IcebergSinkError> {
        let err =
            |what: &str, e| IcebergSinkError::iceberg(format!("read {what} of {}", table.identifier()), e);
        let meta = table.metadata();
        let mut out = metadata_files(table);
        for s in meta.statistics_iter() {
            out.insert(file_key(&s.statistics_path));
        }
        for s in meta.partition_statistics_iter() {
            out.insert(file_key(&s.statistics_path));
        }
        for snapshot in meta.snapshots() {
            out.insert(file_key(snapshot.manifest_list()));
            let list = table
                .manifest_list_reader(snapshot)
                .load()
                .await
                .map_err(|e| err("a manifest list", e))?;
            for manifest in list.entries() {
                let key = file_key(&manifest.manifest_path);
                if !self.manifests.contains_key(&key) {
                    let m = manifest
                        .load_manifest(table.file_io())
                        .await
                        .map_err(|e| err("a manifest", e))?;
                    let live = m
                        .entries()
                        .iter()
                        .filter(|e| e.is_alive())
                        .map(|e| file_key(e.file_path()))
                        .collect();
                    self.manifests.insert(key.clone(), live);
                }
                out.extend(self.manifests[&key].iter().cloned());
                out.insert(key);
            }
        }
        Ok(out)
    }
}

/// The metadata files `table` references: its current one and the metadata log.
pub(crate) fn metadata_files(table: &Table) -> HashSet<String> {
    let mut out = log_files(table.metadata());
    if let Some(current) = table.metadata_location() {
        out.insert(file_key(current));
    }
    out
}

fn log_files(meta: &TableMetadata) -> HashSet<String> {
    meta.metadata_log()
        .iter()
        .map(|l| file_key(&l.metadata_file))
        .collect()
}

/// Deletes the files named by `keys` (from [`file_key`]), local ones from the
/// file system, others through `io`. Best effort: a failure is logged and the
/// file left for orphan cleanup. `first` runs after the first deletion.
/// Returns how many were deleted.
pub(crate) async fn delete_all(io: &FileIO, keys: Vec<String>, first: impl Fn()) -> u64 {
    use futures::StreamExt;

    let mut deletions = futures::stream::iter(keys)
        .map(|key| async move {
            let outcome = if key.starts_with('/') {
                let path = key.clone();
                match tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                io.delete(&key).await.map(|()| true).map_err(|e| e.to_string())
            };
            (key, outcome)
        })
        .buffer_unordered(8);
    let mut deleted = 0;
    while let Some((key, outcome)) = deletions.next().await {
        match outcome {
            Ok(true) => {
                deleted += 1;
                if deleted == 1 {
                    first();
                }
                tracing::debug!(path = %key, "deleted unreferenced file");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(path = %key, error = %e, "could not delete an unreferenced file"),
        }
    }
    deleted
}

/// Whether the table allows deleting its files (`gc.enabled`, default true).
pub(crate) fn gc_enabled(meta: &TableMetadata) -> bool {
    meta.properties()
        .get("gc.enabled")
        .is_none_or(|v| !v.eq_ignore_ascii_case("false"))
}

/// Deletes files under the table's location that nothing references and that
/// are older than the orphan grace period. A location that cannot be listed
/// (object storage other than S3, or S3 without the `s3` feature) is skipped
/// with a warning.
pub(crate) async fn remove_orphans(
    table: &IcebergTable,
    cfg: &MaintenanceConfig,
    report: &mut MaintenanceSummary,
) -> Result<(), IcebergSinkError> {
    match table.delete_orphans(cfg.orphan_grace).await {
        Ok(n) => {
            report.orphans_deleted += n;
            Ok(())
        }
        Err(IcebergSinkError::CleanupUnsupported { location, reason }) => {
            tracing::warn!(table = %table.ident(), %location, %reason, "orphan file removal skipped");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl IcebergTable {
    /// [`IcebergTable::cleanup_orphans`]: deletes every file under the table
    /// location no metadata references, older than `grace`.
    pub(crate) async fn delete_orphans(&self, grace: Duration) -> Result<u64, IcebergSinkError> {
        let Some(current) = self.load_if_exists().await? else {
            return Ok(0);
        };
        let meta = current.metadata();
        if !gc_enabled(meta) {
            tracing::warn!(table = %self.ident(), "gc.enabled is false: no orphan files deleted");
            return Ok(0);
        }
        let location = meta.location().to_owned();
        let data_path = meta
            .properties()
            .get("write.data.path")
            .or_else(|| meta.properties().get("write.folder-storage.path"))
            .cloned();
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);

        // List first, read the references second: a commit landing in
        // between only adds references, so nothing it references is deleted.
        let storage = self.sink_config().catalog().storage();
        let listed = list_table(&location, data_path.as_deref(), storage).await?;
        // The listing must name files the way the metadata does, or every
        // referenced file would look unreferenced: the current metadata file
        // (written before the listing) proves it does, else nothing is deleted.
        if let Some(current_file) = current.metadata_location().map(file_key)
            && current_file.starts_with(&file_key(&location))
            && !listed.iter().any(|l| l.key == current_file)
        {
            return Err(IcebergSinkError::CleanupUnsupported {
                location,
                reason: format!(
                    "the listing does not show the current metadata file {current_file} under that name; \
                     nothing deleted"
                ),
            });
        }
        let candidates: Vec<String> = listed
            .into_iter()
            .filter(|l| old_enough(l.name(), l.modified, cutoff, l.own_only))
            .map(|l| l.key)
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let fresh = self.load().await?;
        if !gc_enabled(fresh.metadata()) {
            return Ok(0);
        }
        let referenced = reachable(&fresh).await?;
        let orphans: Vec<String> = candidates
            .into_iter()
            .filter(|k| !referenced.contains(k))
            .collect();
        let n = orphans.len();
        let deleted = delete_all(fresh.file_io(), orphans, || {}).await;
        if deleted > 0 || n > 0 {
            tracing::info!(table = %self.ident(), deleted, unreferenced = n, "deleted orphan files");
        }
        Ok(deleted)
    }
}

/// Whether a listed file may be deleted if unreferenced: last modified before
/// `cutoff`, and for files named like this sink's data files, their run
/// started before it too (a run still staging keeps its files). With
/// `own_only` only this sink's data files qualify.
fn old_enough(name: &str, modified: SystemTime, cutoff: SystemTime, own_only: bool) -> bool {
    if modified >= cutoff {
        return false;
    }
    if name == VERSION_HINT {
        return false;
    }
    match parse_file_name(name) {
        Some((run, ..)) => run
            .get_timestamp()
            .map(|t| {
                let (s, n) = t.to_unix();
                SystemTime::UNIX_EPOCH + Duration::new(s, n)
            })
            .is_some_and(|started| started < cutoff),
        None => !own_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths() {
        assert_eq!(local_path("file:///tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("file:/tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("/tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("file://tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("s3://b/x"), None);
        assert_eq!(local_path("memory:///x"), None);
    }

    #[test]
    fn keys_compare_path_forms_alike() {
        let plain = file_key("/wh/ns/t/data/a.parquet");
        for form in [
            "file:///wh/ns/t/data/a.parquet",
            "file:/wh/ns/t/data/a.parquet",
            "/wh/ns/t//data/a.parquet",
            "file:///wh/ns/t/./data/a.parquet",
        ] {
            assert_eq!(file_key(form), plain, "{form}");
        }
        assert_eq!(file_key("s3://b/ns/t/a.parquet"), "s3://b/ns/t/a.parquet");
        assert_ne!(file_key("/wh/ns/t/data/b.parquet"), plain);
    }

    #[test]
    fn only_old_files_of_finished_runs_qualify() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let cutoff = now - hour;
        let old = now - 2 * hour;
        assert!(old_enough("00001-abc.metadata.json", old, cutoff, false));
        assert!(!old_enough("00001-abc.metadata.json", now, cutoff, false));
        assert!(!old_enough("00001-abc.metadata.json", old, cutoff, true));
        assert!(!old_enough(VERSION_HINT, old, cutoff, false));
        // A sink file of a run that started within the grace is kept even if old by mtime.
        let young_run = uuid::Uuid::now_v7();
        let name = format!("{young_run}-1-0-0.parquet");
        assert!(!old_enough(&name, old, cutoff, false));
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now - 3 * hour)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            0,
        );
        let old_run = uuid::Uuid::new_v7(ts);
        let name = format!("{old_run}-1-0-0.parquet");
        assert!(old_enough(&name, old, cutoff, false));
        assert!(old_enough(&name, old, cutoff, true));
    }
}
