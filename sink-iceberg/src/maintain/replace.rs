//! The replace snapshot: one commit that removes live data files and adds
//! files holding the same rows (compaction), or only rewrites the manifests.
//!
//! iceberg-rust 0.10.1 has no rewrite action and lets no code outside the
//! crate build a commit of its own updates, so this module builds the
//! snapshot from iceberg's public manifest and snapshot types and hands the
//! updates to [`swap`](super::swap), which commits them through the catalog's
//! own compare-and-swap. It can go once iceberg-rust ships a rewrite action.
//!
//! Semantics follow Java's `BaseRewriteFiles`: the removed files must all be
//! live in the snapshot the commit is built on (else another writer replaced
//! them first and this commit is abandoned); files kept are carried as
//! `EXISTING` entries with their original snapshot id and sequence numbers,
//! the removed ones as `DELETED`, the new ones as `ADDED`. Every replace writes
//! fresh manifests for all live entries, grouped by partition spec and cut at
//! `manifest_entries`, so it also consolidates the manifests fast appends
//! accumulate (one per commit).

use std::collections::{HashMap, HashSet};

use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestFile, ManifestListWriter, ManifestWriter,
    ManifestWriterBuilder, Operation, Snapshot, SnapshotReference, SnapshotRetention, Summary, TableMetadata,
};
use iceberg::table::Table;
use iceberg::{TableRequirement, TableUpdate};
use uuid::Uuid;

use super::compact::Rewrite;
use super::swap::{self, Swapped};
use super::{MaintenanceConfig, Step, expire, files};
use crate::{IcebergSinkError, IcebergTable, manifests, markers};

/// Why a replace commit is made (recorded as `offload.maintenance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplaceKind {
    /// Compaction: files removed and added.
    Compaction,
    /// Only the manifests are rewritten.
    Manifests,
}

impl ReplaceKind {
    fn name(self) -> &'static str {
        match self {
            ReplaceKind::Compaction => "compaction",
            ReplaceKind::Manifests => "manifests",
        }
    }
}

/// What a replace commit changes.
#[derive(Debug, Clone)]
pub(crate) struct ReplacePlan {
    pub(crate) removed: Vec<DataFile>,
    pub(crate) added: Vec<DataFile>,
    pub(crate) kind: ReplaceKind,
}

impl ReplacePlan {
    pub(crate) fn compaction(rewrite: &Rewrite) -> Self {
        Self {
            removed: rewrite.removed.clone(),
            added: rewrite.added.clone(),
            kind: ReplaceKind::Compaction,
        }
    }

    fn manifests() -> Self {
        Self {
            removed: Vec::new(),
            added: Vec::new(),
            kind: ReplaceKind::Manifests,
        }
    }
}

/// How a replace commit went.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplaceOutcome {
    /// The snapshot it added.
    pub(crate) snapshot_id: i64,
    /// Attempts rebuilt after losing a race.
    pub(crate) retries: u32,
    /// Manifests of main before the commit (of the base it landed on).
    pub(crate) manifests_before: u64,
    /// Manifests of the new snapshot.
    pub(crate) manifests_after: u64,
}

/// Snapshot summary key naming the maintenance operation (`compact`,
/// `rewrite-manifests`) of a replace snapshot: how readers tell a
/// maintenance commit from an offload.
pub const SUMMARY_MAINTENANCE: &str = "offload.maintenance";

/// Commits `plan` as a replace snapshot on main, rebuilding it on the new
/// state (up to `max_commit_attempts`) when another commit lands first and
/// every removed file is still live.
pub(crate) async fn commit(
    table: &IcebergTable,
    plan: ReplacePlan,
    cfg: &MaintenanceConfig,
) -> Result<ReplaceOutcome, IcebergSinkError> {
    let mut retries = 0;
    loop {
        let base = table.load().await?;
        let built = build(table, &base, &plan, cfg).await?;
        cfg.step(Step::ManifestsWritten);
        match swap::swap(table, &base, built.updates, built.requirements, cfg).await {
            Swapped::Done => {
                cfg.step(Step::Committed);
                return Ok(ReplaceOutcome {
                    snapshot_id: built.snapshot_id,
                    retries,
                    manifests_before: built.manifests_before,
                    manifests_after: built.manifests_after,
                });
            }
            Swapped::Conflict(reason) => {
                files::delete_all(
                    base.file_io(),
                    built.written.iter().map(|p| files::file_key(p)).collect(),
                    || (),
                )
                .await;
                retries += 1;
                if retries >= cfg.max_commit_attempts {
                    return Err(IcebergSinkError::ReplaceConflict {
                        table: table.ident().to_string(),
                        reason: format!("lost {retries} races in a row, last: {reason}"),
                    });
                }
                tracing::info!(table = %table.ident(), %reason, "replace commit lost a race; rebuilding");
            }
            Swapped::Failed(e) => {
                files::delete_all(
                    base.file_io(),
                    built.written.iter().map(|p| files::file_key(p)).collect(),
                    || (),
                )
                .await;
                return Err(e);
            }
            Swapped::Unknown(reason) => {
                // The swap may have happened: our snapshot id on main's
                // ancestry settles it. Not found means not applied for the
                // SQL catalog (one autocommit statement) and for a REST
                // server that answers consistently; the files are kept anyway
                // and left to orphan cleanup, in case it lands late.
                let now = table.load().await?;
                if on_main(now.metadata(), built.snapshot_id) {
                    cfg.step(Step::Committed);
                    return Ok(ReplaceOutcome {
                        snapshot_id: built.snapshot_id,
                        retries,
                        manifests_before: built.manifests_before,
                        manifests_after: built.manifests_after,
                    });
                }
                return Err(IcebergSinkError::ReplaceOutcomeUnknown {
                    table: table.ident().to_string(),
                    snapshot_id: built.snapshot_id,
                    reason,
                });
            }
        }
    }
}

/// Rewrites main's manifests when it has more than `max_manifests` (each
/// fast append adds one; planning reads them all).
pub(crate) async fn rewrite_manifests_if_needed(
    table: &IcebergTable,
    cfg: &MaintenanceConfig,
) -> Result<Option<ReplaceOutcome>, IcebergSinkError> {
    let Some(current) = table.load_if_exists().await? else {
        return Ok(None);
    };
    let Some(snapshot) = current.metadata().current_snapshot() else {
        return Ok(None);
    };
    let list =
        current.manifest_list_reader(snapshot).load().await.map_err(|e| {
            IcebergSinkError::iceberg(format!("read the manifest list of {}", table.ident()), e)
        })?;
    if list.entries().len() <= cfg.max_manifests {
        return Ok(None);
    }
    commit(table, ReplacePlan::manifests(), cfg).await.map(Some)
}

/// Whether `snapshot_id` is on main's ancestry.
pub(crate) fn on_main(meta: &TableMetadata, snapshot_id: i64) -> bool {
    markers::main_ancestry(meta).any(|s| s.snapshot_id() == snapshot_id)
}

/// A replace commit, written (manifests and list) but not yet swapped in.
struct Built {
    snapshot_id: i64,
    updates: Vec<TableUpdate>,
    requirements: Vec<TableRequirement>,
    /// Files written for it, deleted if it certainly does not land.
    written: Vec<String>,
    manifests_before: u64,
    manifests_after: u64,
}

/// A live entry of main's snapshot, as the manifests hold it.
struct Live {
    file: DataFile,
    spec_id: i32,
    snapshot_id: i64,
    sequence_number: i64,
    file_sequence_number: Option<i64>,
}

async fn build(
    table: &IcebergTable,
    base: &Table,
    plan: &ReplacePlan,
    cfg: &MaintenanceConfig,
) -> Result<Built, IcebergSinkError> {
    let ident = table.ident().to_string();
    let meta = base.metadata();
    let unsupported = |reason: String| IcebergSinkError::MaintenanceUnsupported {
        table: ident.clone(),
        reason,
    };
    if meta.format_version() != FormatVersion::V2 {
        return Err(unsupported(format!(
            "format version {:?}: replace commits are written for v2 tables",
            meta.format_version()
        )));
    }
    let Some(parent) = meta.current_snapshot() else {
        return Err(IcebergSinkError::ReplaceConflict {
            table: ident,
            reason: "main has no snapshot".into(),
        });
    };
    let ice = |what: &str, e| IcebergSinkError::iceberg(format!("{what} of {ident}"), e);
    let Some(files) = manifests::live_files(base, parent).await? else {
        return Err(unsupported("the table has delete files".into()));
    };
    let manifests_before = files.manifests as u64;
    // Every live entry of main, in manifest order (commit order: for a
    // time-partitioned table that is close to partition order, which keeps
    // the new manifests' partition summaries tight).
    let mut live = Vec::with_capacity(files.entries.len());
    for l in files.entries {
        let entry = &l.entry;
        let (Some(snapshot_id), Some(sequence_number)) = (entry.snapshot_id(), entry.sequence_number())
        else {
            return Err(unsupported(format!(
                "manifest entry {} has no snapshot id or sequence number",
                entry.file_path()
            )));
        };
        live.push(Live {
            file: entry.data_file().clone(),
            spec_id: l.spec_id,
            snapshot_id,
            sequence_number,
            file_sequence_number: entry.file_sequence_number,
        });
    }

    let removed: HashSet<&str> = plan.removed.iter().map(DataFile::file_path).collect();
    let found = live
        .iter()
        .filter(|l| removed.contains(l.file.file_path()))
        .count();
    if found != removed.len() {
        return Err(IcebergSinkError::ReplaceConflict {
            table: ident,
            reason: format!(
                "{} of the {} files to replace are no longer live at snapshot {}",
                removed.len() - found,
                removed.len(),
                parent.snapshot_id()
            ),
        });
    }
    if plan.kind == ReplaceKind::Compaction {
        let out: u64 = plan.added.iter().map(DataFile::record_count).sum();
        let gone: u64 = plan.removed.iter().map(DataFile::record_count).sum();
        if out != gone {
            return Err(IcebergSinkError::ReplaceConflict {
                table: ident,
                reason: format!("the new files hold {out} rows, the replaced ones {gone}"),
            });
        }
    }

    let snapshot_id = unique_snapshot_id(meta);
    let sequence_number = meta.next_sequence_number();
    let commit_uuid = Uuid::now_v7();
    let mut files = ManifestFiles {
        base,
        meta,
        snapshot_id,
        commit_uuid,
        counter: 0,
        written: Vec::new(),
    };
    let mut manifests = Vec::new();

    // Kept and removed entries, by partition spec.
    let mut by_spec: Vec<(i32, Vec<&Live>)> = Vec::new();
    let mut spec_slot: HashMap<i32, usize> = HashMap::new();
    for l in &live {
        let slot = *spec_slot.entry(l.spec_id).or_insert_with(|| {
            by_spec.push((l.spec_id, Vec::new()));
            by_spec.len() - 1
        });
        by_spec[slot].1.push(l);
    }
    let per_manifest = cfg.manifest_entries.max(1);
    for (spec_id, entries) in &by_spec {
        let (gone, kept): (Vec<&&Live>, Vec<&&Live>) =
            entries.iter().partition(|l| removed.contains(l.file.file_path()));
        for chunk in kept.chunks(per_manifest) {
            let mut w = files.writer(*spec_id)?;
            for l in chunk {
                w.add_existing_file(
                    l.file.clone(),
                    l.snapshot_id,
                    l.sequence_number,
                    l.file_sequence_number,
                )
                .map_err(|e| ice("write a manifest entry", e))?;
            }
            manifests.push(
                w.write_manifest_file()
                    .await
                    .map_err(|e| ice("write a manifest", e))?,
            );
        }
        for chunk in gone.chunks(per_manifest) {
            let mut w = files.writer(*spec_id)?;
            for l in chunk {
                w.add_delete_file(l.file.clone(), l.sequence_number, l.file_sequence_number)
                    .map_err(|e| ice("write a manifest entry", e))?;
            }
            manifests.push(
                w.write_manifest_file()
                    .await
                    .map_err(|e| ice("write a manifest", e))?,
            );
        }
    }
    let default_spec = meta.default_partition_spec_id();
    for chunk in plan.added.chunks(per_manifest) {
        let mut w = files.writer(default_spec)?;
        for f in chunk {
            w.add_file(f.clone(), sequence_number)
                .map_err(|e| ice("write a manifest entry", e))?;
        }
        manifests.push(
            w.write_manifest_file()
                .await
                .map_err(|e| ice("write a manifest", e))?,
        );
    }
    let manifests_after = manifests.iter().filter(|m| live_count(m) > 0).count() as u64;

    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-0-{commit_uuid}.avro",
        meta.location()
    );
    files.written.push(list_path.clone());
    let out = base
        .file_io()
        .new_output(&list_path)
        .map_err(|e| ice("create the manifest list", e))?;
    let mut list_writer = ManifestListWriter::v2(
        out.writer()
            .await
            .map_err(|e| ice("create the manifest list", e))?,
        snapshot_id,
        Some(parent.snapshot_id()),
        sequence_number,
    );
    list_writer
        .add_manifests(manifests.into_iter())
        .map_err(|e| ice("write the manifest list", e))?;
    list_writer
        .close()
        .await
        .map_err(|e| ice("write the manifest list", e))?;

    let summary = Summary {
        operation: Operation::Replace,
        additional_properties: summary(meta, parent.summary(), plan)?,
    };
    // Never earlier than the parent: readers order snapshots by time.
    let timestamp_ms = expire::now_ms().max(parent.timestamp_ms() + 1);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(parent.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(timestamp_ms)
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(meta.current_schema_id())
        .build();
    let updates = vec![
        TableUpdate::AddSnapshot { snapshot },
        TableUpdate::SetSnapshotRef {
            ref_name: MAIN_BRANCH.to_owned(),
            reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        },
    ];
    let requirements = vec![
        TableRequirement::UuidMatch { uuid: meta.uuid() },
        TableRequirement::RefSnapshotIdMatch {
            r#ref: MAIN_BRANCH.to_owned(),
            snapshot_id: Some(parent.snapshot_id()),
        },
    ];
    Ok(Built {
        snapshot_id,
        updates,
        requirements,
        written: files.written,
        manifests_before,
        manifests_after,
    })
}

fn live_count(m: &ManifestFile) -> u64 {
    u64::from(m.added_files_count.unwrap_or(0)) + u64::from(m.existing_files_count.unwrap_or(0))
}

/// Names and opens the manifests of one replace commit.
struct ManifestFiles<'a> {
    base: &'a Table,
    meta: &'a TableMetadata,
    snapshot_id: i64,
    commit_uuid: Uuid,
    counter: u32,
    written: Vec<String>,
}

impl ManifestFiles<'_> {
    fn writer(&mut self, spec_id: i32) -> Result<ManifestWriter, IcebergSinkError> {
        let spec = self.meta.partition_spec_by_id(spec_id).ok_or_else(|| {
            IcebergSinkError::MaintenanceUnsupported {
                table: self.meta.location().to_owned(),
                reason: format!("a manifest names partition spec {spec_id}, which the metadata lacks"),
            }
        })?;
        let path = format!(
            "{}/metadata/{}-m{}.avro",
            self.meta.location(),
            self.commit_uuid,
            self.counter
        );
        self.counter += 1;
        self.written.push(path.clone());
        let out = self
            .base
            .file_io()
            .new_output(&path)
            .map_err(|e| IcebergSinkError::iceberg("create a manifest", e))?;
        Ok(ManifestWriterBuilder::new(
            out,
            Some(self.snapshot_id),
            self.meta.current_schema().clone(),
            spec.as_ref().clone(),
        )
        .build_v2_data())
    }
}

/// The replace snapshot's summary: Iceberg's figures (computed from the
/// parent's totals and the files moved), and the offload markers of the
/// committed window copied, so the window reads the same from this snapshot
/// (the fence, `committed()` and `was_committed` walk main's ancestry).
fn summary(
    meta: &TableMetadata,
    parent: &Summary,
    plan: &ReplacePlan,
) -> Result<HashMap<String, String>, IcebergSinkError> {
    let total = |key: &str| -> u64 {
        parent
            .additional_properties
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rows = |files: &[DataFile]| files.iter().map(DataFile::record_count).sum::<u64>();
    let bytes = |files: &[DataFile]| files.iter().map(DataFile::file_size_in_bytes).sum::<u64>();
    let (added, removed) = (&plan.added, &plan.removed);
    let mut map = HashMap::new();
    let mut put = |k: &str, v: u64| {
        map.insert(k.to_owned(), v.to_string());
    };
    if plan.kind == ReplaceKind::Compaction {
        put("added-data-files", added.len() as u64);
        put("deleted-data-files", removed.len() as u64);
        put("added-records", rows(added));
        put("deleted-records", rows(removed));
        put("added-files-size", bytes(added));
        put("removed-files-size", bytes(removed));
        let partitions: HashSet<String> = added
            .iter()
            .chain(removed.iter())
            .map(|f| format!("{:?}", f.partition()))
            .collect();
        put("changed-partition-count", partitions.len() as u64);
    }
    put(
        "total-records",
        (total("total-records") + rows(added)).saturating_sub(rows(removed)),
    );
    put(
        "total-data-files",
        (total("total-data-files") + added.len() as u64).saturating_sub(removed.len() as u64),
    );
    put(
        "total-files-size",
        (total("total-files-size") + bytes(added)).saturating_sub(bytes(removed)),
    );
    for key in [
        "total-delete-files",
        "total-position-deletes",
        "total-equality-deletes",
    ] {
        put(key, total(key));
    }
    map.extend(markers::replace_summary(meta)?);
    map.insert(SUMMARY_MAINTENANCE.to_owned(), plan.kind.name().to_owned());
    Ok(map)
}

/// A positive snapshot id no snapshot of the table has (iceberg's own rule).
fn unique_snapshot_id(meta: &TableMetadata) -> i64 {
    loop {
        let (a, b) = Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) >> 1) as i64;
        if id != 0 && meta.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
