//! main's live data files as its manifests list them: the one reading the
//! sweep's bucket counts, compaction's plan and the replace commit share.

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{DataContentType, ManifestContentType, ManifestEntryRef, SnapshotRef};
use iceberg::table::Table;

use crate::IcebergSinkError;

/// Manifests read at once.
const MANIFEST_CONCURRENCY: usize = 8;

/// One live entry, with the partition spec of the manifest that lists it.
pub(crate) struct LiveEntry {
    pub(crate) spec_id: i32,
    pub(crate) entry: ManifestEntryRef,
}

/// A snapshot's live data files.
pub(crate) struct LiveFiles {
    /// Manifests in the snapshot's manifest list.
    pub(crate) manifests: usize,
    /// Live entries in manifest-list order (commit order for fast appends).
    /// A file appended twice is listed twice.
    pub(crate) entries: Vec<LiveEntry>,
}

/// The live entries of `snapshot`; `None` when it has delete files (which
/// only a scan applies: callers fall back or refuse).
pub(crate) async fn live_files(
    table: &Table,
    snapshot: &SnapshotRef,
) -> Result<Option<LiveFiles>, IcebergSinkError> {
    let ident = table.identifier();
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(|e| IcebergSinkError::iceberg(format!("read the manifest list of {ident}"), e))?;
    if list
        .entries()
        .iter()
        .any(|m| m.content != ManifestContentType::Data)
    {
        return Ok(None);
    }
    let loads = list.entries().iter().cloned().map(|m| {
        let (file_io, ident) = (table.file_io().clone(), ident.clone());
        async move {
            let spec_id = m.partition_spec_id;
            m.load_manifest(&file_io)
                .await
                .map(|manifest| (spec_id, manifest))
                .map_err(|e| IcebergSinkError::iceberg(format!("read a manifest of {ident}"), e))
        }
    });
    let manifests: Vec<_> = futures::stream::iter(loads)
        .buffered(MANIFEST_CONCURRENCY)
        .try_collect()
        .await?;
    let mut entries = Vec::new();
    for (spec_id, m) in &manifests {
        for entry in m.entries().iter().filter(|e| e.is_alive()) {
            if entry.data_file().content_type() != DataContentType::Data {
                return Ok(None);
            }
            entries.push(LiveEntry {
                spec_id: *spec_id,
                entry: entry.clone(),
            });
        }
    }
    Ok(Some(LiveFiles {
        manifests: manifests.len(),
        entries,
    }))
}
