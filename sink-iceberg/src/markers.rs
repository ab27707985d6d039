//! The offload markers in table metadata: snapshot summary keys written with
//! every commit, and table properties that survive snapshot expiry.

use std::collections::HashMap;

use iceberg::spec::{MAIN_BRANCH, Operation, SnapshotRef, TableMetadata};
use offload_core::{CommitMetadata, CommittedWindow, RepairMetadata, RunId, SinkVersion, Watermark};

use crate::IcebergSinkError;

/// Snapshot summary key: the window's exclusive lower bound (`"<micros>:<seq>"`).
pub const SUMMARY_WINDOW_AFTER: &str = "offload.window.after";
/// Snapshot summary key: the window's inclusive upper bound, i.e. the committed watermark.
pub const SUMMARY_WINDOW_UNTIL: &str = "offload.window.until";
/// Snapshot summary and table property key: the run that committed.
pub const KEY_RUN_ID: &str = "offload.run-id";
/// Snapshot summary and table property key: the engine that committed.
pub const KEY_ENGINE_ID: &str = "offload.engine-id";
/// Snapshot summary and table property key: the store lease's fencing token.
pub const KEY_FENCING_TOKEN: &str = "offload.fencing-token";
/// Table property key: the committed watermark (`"<micros>:<seq>"`), kept so it
/// survives expiry of our snapshots and rewrites by other engines.
pub const PROPERTY_WATERMARK: &str = "offload.watermark";

/// Snapshot summary key of a repair commit: main's snapshot id the repair was
/// fenced on (the version its diff was computed against).
pub const SUMMARY_REPAIR_BASE: &str = "offload.repair.base-snapshot";
/// Snapshot summary key of a repair commit: rows it added.
pub const SUMMARY_REPAIR_ROWS: &str = "offload.repair.rows";
/// Snapshot summary key of a repair commit: how many buckets it repaired.
pub const SUMMARY_REPAIR_BUCKETS: &str = "offload.repair.buckets";
/// Snapshot summary key of a repair commit: the first repaired bucket's
/// exclusive lower bound (`"<micros>:<seq>"`).
pub const SUMMARY_REPAIR_FIRST: &str = "offload.repair.first";
/// Snapshot summary key of a repair commit: the last repaired bucket's
/// inclusive upper bound (`"<micros>:<seq>"`).
pub const SUMMARY_REPAIR_LAST: &str = "offload.repair.last";

/// Snapshot summary key of a maintenance (`replace`) snapshot: the table's
/// version (the newest snapshot that changed the rows) it holds the rows of,
/// so the version reads the same once that snapshot is expired.
pub const SUMMARY_DATA_VERSION: &str = "offload.data-version";

/// The version text of a table with no snapshot on main.
const NO_SNAPSHOT: &str = "none";

/// Where a committed window was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The summary of this snapshot on main's ancestry.
    Snapshot(i64),
    /// The table properties (no snapshot of ours left on main's ancestry).
    Properties,
}

/// The snapshot summary entries of a commit.
pub(crate) fn summary(meta: &CommitMetadata) -> HashMap<String, String> {
    HashMap::from([
        (SUMMARY_WINDOW_AFTER.to_owned(), meta.window.after().to_string()),
        (SUMMARY_WINDOW_UNTIL.to_owned(), meta.window.until().to_string()),
        (KEY_RUN_ID.to_owned(), meta.run_id.to_string()),
        (KEY_ENGINE_ID.to_owned(), meta.engine_id.clone()),
        (KEY_FENCING_TOKEN.to_owned(), meta.fencing_token.to_string()),
    ])
}

/// The snapshot summary entries of a repair commit: the usual markers with
/// the watermark unchanged (so the commit fence and `committed()` read it like
/// any commit of ours), and what was repaired.
pub(crate) fn repair_summary(meta: &RepairMetadata) -> HashMap<String, String> {
    let mut map = HashMap::from([
        (SUMMARY_WINDOW_UNTIL.to_owned(), meta.watermark.to_string()),
        (KEY_RUN_ID.to_owned(), meta.run_id.to_string()),
        (KEY_ENGINE_ID.to_owned(), meta.engine_id.clone()),
        (KEY_FENCING_TOKEN.to_owned(), meta.fencing_token.to_string()),
        (SUMMARY_REPAIR_BASE.to_owned(), meta.base.to_string()),
        (SUMMARY_REPAIR_ROWS.to_owned(), meta.rows.to_string()),
        (SUMMARY_REPAIR_BUCKETS.to_owned(), meta.buckets.len().to_string()),
    ]);
    if let (Some(first), Some(last)) = (meta.buckets.first(), meta.buckets.last()) {
        map.insert(SUMMARY_REPAIR_FIRST.to_owned(), first.after().to_string());
        map.insert(SUMMARY_REPAIR_LAST.to_owned(), last.until().to_string());
    }
    map
}

/// The table properties of a repair commit: the watermark, unchanged. The
/// last window commit's identity stays where it is.
pub(crate) fn repair_properties(meta: &RepairMetadata) -> HashMap<String, String> {
    HashMap::from([(PROPERTY_WATERMARK.to_owned(), meta.watermark.to_string())])
}

/// The table's version: the id (as text, `"none"` without one) of the
/// newest snapshot on main's ancestry that changed the rows, i.e. main's
/// snapshot unless maintenance replaced files since. Every window and repair
/// commit adds a snapshot and moves main, so it changes with every commit
/// that changes the rows; a `replace` snapshot (compaction, manifest rewrite)
/// holds exactly its parent's rows, so a repair whose diff was computed
/// before a compaction still lands after it.
pub(crate) fn version(meta: &TableMetadata) -> SinkVersion {
    let mut newest = None;
    for s in main_ancestry(meta) {
        newest.get_or_insert(s.snapshot_id());
        if s.summary().operation != Operation::Replace {
            return SinkVersion::new(s.snapshot_id().to_string());
        }
        // Ours record it, so expiry may drop the snapshot it names.
        if let Some(v) = s.summary().additional_properties.get(SUMMARY_DATA_VERSION) {
            return SinkVersion::new(v.clone());
        }
    }
    // Only replace snapshots left (the rest expired): main's own id.
    SinkVersion::new(newest.map_or_else(|| NO_SNAPSHOT.to_owned(), |id| id.to_string()))
}

/// The offload markers a maintenance (`replace`) snapshot carries: the
/// committed window as main's state records it, copied, so reading the window
/// from the replace snapshot gives what the snapshots below it gave.
pub(crate) fn replace_summary(meta: &TableMetadata) -> Result<HashMap<String, String>, IcebergSinkError> {
    let Some((w, _)) = committed(meta)? else {
        return Ok(HashMap::new());
    };
    let mut map = HashMap::from([
        (SUMMARY_WINDOW_UNTIL.to_owned(), w.until.to_string()),
        (SUMMARY_DATA_VERSION.to_owned(), w.version.to_string()),
    ]);
    if let Some(run) = w.run_id {
        map.insert(KEY_RUN_ID.to_owned(), run.to_string());
    }
    if let Some(engine) = w.engine_id {
        map.insert(KEY_ENGINE_ID.to_owned(), engine);
    }
    if let Some(token) = w.fencing_token {
        map.insert(KEY_FENCING_TOKEN.to_owned(), token.to_string());
    }
    Ok(map)
}

/// The table properties of a commit.
pub(crate) fn properties(meta: &CommitMetadata) -> HashMap<String, String> {
    HashMap::from([
        (PROPERTY_WATERMARK.to_owned(), meta.window.until().to_string()),
        (KEY_RUN_ID.to_owned(), meta.run_id.to_string()),
        (KEY_ENGINE_ID.to_owned(), meta.engine_id.clone()),
        (KEY_FENCING_TOKEN.to_owned(), meta.fencing_token.to_string()),
    ])
}

fn invalid(key: &str, value: &str, reason: &str) -> IcebergSinkError {
    IcebergSinkError::InvalidMarker {
        key: key.to_owned(),
        value: value.chars().take(64).collect(),
        reason: reason.to_owned(),
    }
}

fn window_from(
    map: &HashMap<String, String>,
    watermark_key: &str,
    version: &SinkVersion,
) -> Result<Option<CommittedWindow>, IcebergSinkError> {
    let Some(w) = map.get(watermark_key) else {
        return Ok(None);
    };
    let until: Watermark = w
        .parse()
        .map_err(|_| invalid(watermark_key, w, "expected \"<micros>:<sequence>\""))?;
    let run_id = match map.get(KEY_RUN_ID) {
        Some(r) => Some(
            r.parse::<RunId>()
                .map_err(|_| invalid(KEY_RUN_ID, r, "expected a UUID"))?,
        ),
        None => None,
    };
    let fencing_token = match map.get(KEY_FENCING_TOKEN) {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| invalid(KEY_FENCING_TOKEN, t, "expected an integer"))?,
        ),
        None => None,
    };
    Ok(Some(CommittedWindow {
        until,
        version: version.clone(),
        run_id,
        engine_id: map.get(KEY_ENGINE_ID).cloned(),
        fencing_token,
    }))
}

/// main's ancestry, newest first. Stops at the first parent that is no longer
/// in the metadata (expired) and never loops on corrupt metadata.
pub(crate) fn main_ancestry(meta: &TableMetadata) -> impl Iterator<Item = &SnapshotRef> {
    let mut next = meta.snapshot_for_ref(MAIN_BRANCH);
    let mut budget = meta.snapshots().len();
    std::iter::from_fn(move || {
        let s = next.take()?;
        if budget == 0 {
            return None;
        }
        budget -= 1;
        next = s.parent_snapshot_id().and_then(|id| meta.snapshot_by_id(id));
        Some(s)
    })
}

/// The committed window of a table state.
///
/// The nearest snapshot of ours on main's ancestry wins: snapshots are
/// immutable, so the answer is a function of main's snapshot id alone, which
/// is exactly what the catalog's `assert-ref-snapshot-id` requirement pins at
/// commit time (the fencing argument in the README relies on this). Only when
/// no snapshot of ours is reachable any more (expired after other engines
/// rewrote the table) do the table properties answer.
pub(crate) fn committed(meta: &TableMetadata) -> Result<Option<(CommittedWindow, Origin)>, IcebergSinkError> {
    let version = version(meta);
    let mut nearest: Option<(CommittedWindow, Origin)> = None;
    for s in main_ancestry(meta) {
        let summary = &s.summary().additional_properties;
        let Some(w) = window_from(summary, SUMMARY_WINDOW_UNTIL, &version)? else {
            continue;
        };
        let repair = summary.contains_key(SUMMARY_REPAIR_BASE);
        match &mut nearest {
            None => nearest = Some((w, Origin::Snapshot(s.snapshot_id()))),
            // A repair leaves the watermark as it was: the window commit
            // below it names the run, engine and token that committed it.
            Some((first, _)) if !repair => {
                first.run_id = w.run_id;
                first.engine_id = w.engine_id;
                first.fencing_token = w.fencing_token;
            }
            Some(_) => continue,
        }
        if !repair {
            break;
        }
    }
    if nearest.is_some() {
        return Ok(nearest);
    }
    Ok(window_from(meta.properties(), PROPERTY_WATERMARK, &version)?.map(|w| (w, Origin::Properties)))
}

/// The committed window recorded in a table's metadata by this sink, read
/// exactly as the sink reads it before every commit: the nearest offload
/// snapshot on main's ancestry, else the table properties. For readers such as
/// reconciliation that must agree with the sink's fence to the letter.
///
/// ```no_run
/// # async fn demo(table: iceberg::table::Table) -> Result<(), offload_sink_iceberg::IcebergSinkError> {
/// if let Some(w) = offload_sink_iceberg::committed_window(table.metadata())? {
///     println!("committed up to {}", w.until);
/// }
/// # Ok(()) }
/// ```
pub fn committed_window(meta: &TableMetadata) -> Result<Option<CommittedWindow>, IcebergSinkError> {
    Ok(committed(meta)?.map(|(w, _)| w))
}

/// Whether `run_id` committed the table state: a snapshot on main's ancestry
/// carries it, or the table properties name it as the last committer.
pub(crate) fn contains_run(meta: &TableMetadata, run_id: RunId) -> bool {
    let id = run_id.to_string();
    main_ancestry(meta).any(|s| s.summary().additional_properties.get(KEY_RUN_ID) == Some(&id))
        || meta.properties().get(KEY_RUN_ID) == Some(&id)
}
