//! Snapshot expiry, and deletion of the files only expired snapshots referenced.
//!
//! Which snapshots expire ([`select`]): along main's ancestry, newest first,
//! a snapshot is kept when it is among the first `keep_snapshots`, or younger
//! than `snapshot_retention`, or stopped being main less than `delete_grace`
//! ago (its child on main committed within it: a reader that loaded the table
//! since may still read it), or another branch or tag reaches it. Everything
//! older than the oldest kept snapshot expires, so main's ancestry stays
//! unbroken. Snapshots off main's ancestry are left alone. The selection then
//! shrinks until the committed window reads exactly as before
//! ([`keep_markers`]): same watermark, version, run, engine and token. A
//! table whose branches set their own `max-snapshot-age-ms` is not expired
//! (iceberg's action would apply that age beyond these rules; warned).
//!
//! The expiry commits through iceberg's `ExpireSnapshotsAction` (explicit ids
//! only) together with `write.metadata.previous-versions-max`, then deletes
//! what the table referenced before and no longer does (Java's
//! `ExpireSnapshots` with its reachable-file cleanup): manifest lists,
//! manifests, data and delete files, statistics files, and metadata files
//! that left the metadata log. A crash in between leaves only unreferenced
//! files, which orphan removal deletes later.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention, TableMetadata, TableMetadataBuilder};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use offload_core::MaintenanceSummary;

use super::files::{self, Reach};
use super::{MaintenanceConfig, Step};
use crate::{IcebergSinkError, IcebergTable, markers};

/// The table property bounding the metadata log.
pub(crate) const PROPERTY_PREVIOUS_VERSIONS_MAX: &str = "write.metadata.previous-versions-max";

/// The expiry rules at one instant, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    keep: usize,
    /// Snapshots at or after this are kept.
    retained_from: i64,
    /// Snapshots whose child on main is at or after this are kept.
    replaced_from: i64,
}

impl Rules {
    pub(crate) fn new(cfg: &MaintenanceConfig, now_ms: i64) -> Self {
        Self {
            keep: cfg.keep_snapshots.max(1),
            retained_from: now_ms.saturating_sub(millis(cfg.snapshot_retention)),
            replaced_from: now_ms.saturating_sub(millis(cfg.delete_grace)),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    millis(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// How many of `chain` (main's ancestry newest first, `(snapshot id,
/// timestamp ms)`) are kept under `rules`; the rest expire. `protected`
/// snapshots (reached by other refs) are kept.
pub(crate) fn kept(chain: &[(i64, i64)], protected: &HashSet<i64>, rules: &Rules) -> usize {
    let mut kept = 0;
    for (i, &(id, ts)) in chain.iter().enumerate() {
        let child = i.checked_sub(1).map(|c| chain[c].1);
        let keep = i < rules.keep
            || ts >= rules.retained_from
            || child.is_none_or(|c| c >= rules.replaced_from)
            || protected.contains(&id);
        if keep {
            kept = i + 1;
        }
    }
    kept
}

/// The snapshots of main's ancestry to expire, newest first.
pub(crate) fn select(meta: &TableMetadata, rules: &Rules) -> Vec<i64> {
    let chain: Vec<(i64, i64)> = markers::main_ancestry(meta)
        .map(|s| (s.snapshot_id(), s.timestamp_ms()))
        .collect();
    let n = kept(&chain, &Refs::of(meta).protected, rules);
    chain[n..].iter().map(|(id, _)| *id).collect()
}

/// How many of main's snapshots a maintenance with `cfg` would expire if it
/// ran at `at`: the same selection `maintain` makes (keep count, retention,
/// delete grace, other refs, the committed window's markers), read from
/// `meta` alone. 0 where `maintain` expires nothing (`gc.enabled` false, a
/// branch with its own `max-snapshot-age-ms`). Asked with `at` an allowed
/// interval ago, above 0 means maintenance is overdue (`offload status`).
///
/// ```
/// use std::time::SystemTime;
/// use offload_sink_iceberg::{MaintenanceConfig, expirable_snapshots};
/// # fn check(meta: &iceberg::spec::TableMetadata) {
/// let due = expirable_snapshots(meta, &MaintenanceConfig::default(), SystemTime::now());
/// # let _ = due;
/// # }
/// ```
pub fn expirable_snapshots(meta: &TableMetadata, cfg: &MaintenanceConfig, at: SystemTime) -> usize {
    if !files::gc_enabled(meta) || !Refs::of(meta).own_age.is_empty() {
        return 0;
    }
    let at_ms = millis(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    keep_markers(meta, select(meta, &Rules::new(cfg, at_ms))).len()
}

/// What the table's refs other than main ask of expiry.
#[derive(Debug, Default)]
pub(crate) struct Refs {
    /// Snapshots other refs reach: tag heads, and branch heads with their
    /// ancestry (expiring one would cut that branch's history).
    pub(crate) protected: HashSet<i64>,
    /// Branches (main included) with their own `max-snapshot-age-ms`:
    /// iceberg's expiry action would expire their old snapshots beyond the
    /// ids it is given.
    pub(crate) own_age: Vec<String>,
}

impl Refs {
    pub(crate) fn of(meta: &TableMetadata) -> Self {
        // iceberg 0.10.1 does not expose the refs map; its JSON form does.
        let all: HashMap<String, SnapshotReference> = serde_json::to_value(meta)
            .ok()
            .and_then(|v| v.get("refs").cloned())
            .and_then(|r| serde_json::from_value(r).ok())
            .unwrap_or_default();
        let mut out = Refs::default();
        for (name, r) in all {
            if let SnapshotRetention::Branch {
                max_snapshot_age_ms: Some(_),
                ..
            } = r.retention
            {
                out.own_age.push(name.clone());
            }
            if name == MAIN_BRANCH {
                continue;
            }
            out.protected.insert(r.snapshot_id);
            if !r.is_branch() {
                continue;
            }
            let mut next = meta
                .snapshot_by_id(r.snapshot_id)
                .and_then(|s| s.parent_snapshot_id());
            let mut budget = meta.snapshots().len();
            while let Some(id) = next {
                if budget == 0 || !out.protected.insert(id) {
                    break;
                }
                budget -= 1;
                next = meta.snapshot_by_id(id).and_then(|s| s.parent_snapshot_id());
            }
        }
        out.own_age.sort();
        out
    }
}

/// `ids` (newest first) shortened from the newest end until removing them
/// leaves the committed window exactly as it reads now (the watermark, the
/// data version, and the run, engine and token the markers name) and the
/// committing run still found by `was_committed`.
pub(crate) fn keep_markers(meta: &TableMetadata, ids: Vec<i64>) -> Vec<i64> {
    let window = |m: &TableMetadata| markers::committed(m).ok().flatten().map(|(w, _)| w);
    let want = window(meta);
    let unchanged = |expire: &[i64]| {
        if expire.is_empty() {
            return true;
        }
        let Ok(after) = TableMetadataBuilder::new_from_metadata(meta.clone(), None)
            .remove_snapshots(expire)
            .build()
        else {
            return false;
        };
        let run = want
            .as_ref()
            .and_then(|w| w.run_id)
            .is_none_or(|r| markers::contains_run(&after.metadata, r));
        run && window(&after.metadata) == want
    };
    // Expiring a shorter suffix of main's ancestry keeps more of what the
    // markers are read from: the smallest cut that changes nothing, by
    // bisection (ids[n..] is empty, so unchanged).
    let (mut lo, mut hi) = (0, ids.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if unchanged(&ids[mid..]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    ids[lo..].to_vec()
}

/// Expires main's snapshots out of retention and deletes what only they referenced.
pub(crate) async fn expire(
    table: &IcebergTable,
    cfg: &MaintenanceConfig,
    report: &mut MaintenanceSummary,
) -> Result<(), IcebergSinkError> {
    let Some(before) = table.load_if_exists().await? else {
        return Ok(());
    };
    let meta = before.metadata();
    if !files::gc_enabled(meta) {
        tracing::warn!(table = %table.ident(), "gc.enabled is false: no snapshot expired");
        return Ok(());
    }
    let own_age = Refs::of(meta).own_age;
    if !own_age.is_empty() {
        tracing::warn!(
            table = %table.ident(),
            branches = ?own_age,
            "branches set their own max-snapshot-age-ms, which iceberg's expiry would apply beyond \
             maintain's rules: no snapshot expired"
        );
        return Ok(());
    }
    let ids = keep_markers(meta, select(meta, &Rules::new(cfg, now_ms())));
    let logs = cfg.keep_metadata_files.max(1).to_string();
    let set_logs = meta.properties().get(PROPERTY_PREVIOUS_VERSIONS_MAX) != Some(&logs);
    if ids.is_empty() && !set_logs {
        return Ok(());
    }
    let ident = table.ident();
    let ice = |what: &str, e| IcebergSinkError::iceberg(format!("{what} of {ident}"), e);

    let mut reach = Reach::default();
    let mut referenced_before = if ids.is_empty() {
        HashSet::new()
    } else {
        reach.files(&before).await?
    };
    referenced_before.extend(files::metadata_files(&before));

    let mut tx = Transaction::new(&before);
    if !ids.is_empty() {
        tx = tx
            .expire_snapshots()
            .expire_snapshot_ids(ids.iter().copied())
            // Age-based expiry off: only the ids selected above.
            .expire_older_than_ms(i64::MIN)
            .apply(tx)
            .map_err(|e| ice("expire snapshots", e))?;
    }
    if set_logs {
        tx = tx
            .update_table_properties()
            .set(PROPERTY_PREVIOUS_VERSIONS_MAX.to_owned(), logs)
            .apply(tx)
            .map_err(|e| ice("bound the metadata log", e))?;
    }
    let after = tx
        .commit(&**table.catalog())
        .await
        .map_err(|e| ice("commit the snapshot expiry", e))?;
    let expired = meta
        .snapshots()
        .filter(|s| after.metadata().snapshot_by_id(s.snapshot_id()).is_none())
        .count() as u64;
    report.commits += 1;
    report.snapshots_expired += expired;
    cfg.step(Step::Expired);

    // What the committed state still references, read from the state the
    // commit produced: later commits only add references (or expire more).
    let mut referenced_after = if ids.is_empty() {
        HashSet::new()
    } else {
        reach.files(&after).await?
    };
    referenced_after.extend(files::metadata_files(&after));
    let unreferenced: Vec<String> = referenced_before.difference(&referenced_after).cloned().collect();
    let candidates = unreferenced.len();
    let deleted = files::delete_all(after.file_io(), unreferenced, || cfg.step(Step::Deleting)).await;
    report.files_deleted += deleted;
    tracing::info!(
        table = %ident,
        expired,
        deleted,
        unreferenced = candidates,
        "expired snapshots and deleted the files only they referenced"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v2 metadata with main's ancestry 4 <- 3 <- 2 <- 1 (ids = hours old
    /// from 1000 h) and a side branch 5 off 2, plus `refs`.
    fn metadata(refs: &str) -> TableMetadata {
        let now = 1_000 * H;
        let snap = |id: i64, parent: Option<i64>, age: i64| {
            format!(
                r#"{{"snapshot-id": {id}, {} "sequence-number": {id}, "timestamp-ms": {},
                "manifest-list": "/t/metadata/snap-{id}.avro", "summary": {{"operation": "append"}},
                "schema-id": 0}}"#,
                parent.map_or(String::new(), |p| format!(r#""parent-snapshot-id": {p},"#)),
                now - age * H
            )
        };
        let snapshots = [
            snap(1, None, 4),
            snap(2, Some(1), 3),
            snap(3, Some(2), 2),
            snap(4, Some(3), 1),
            snap(5, Some(2), 1),
        ]
        .join(",");
        // main's history, oldest first (a builder refuses metadata whose log
        // does not end at the current snapshot).
        let log = [(1, 4), (2, 3), (3, 2), (4, 1)]
            .map(|(id, age)| format!(r#"{{"snapshot-id": {id}, "timestamp-ms": {}}}"#, now - age * H))
            .join(",");
        let json = format!(
            r#"{{"format-version": 2, "table-uuid": "9c12d441-03fe-4693-9a96-a0705ddf69c1",
            "location": "/t", "last-sequence-number": 5, "last-updated-ms": {now},
            "last-column-id": 1, "current-schema-id": 0,
            "schemas": [{{"type": "struct", "schema-id": 0, "fields": [
                {{"id": 1, "name": "x", "required": true, "type": "long"}}]}}],
            "default-spec-id": 0, "partition-specs": [{{"spec-id": 0, "fields": []}}],
            "last-partition-id": 999, "default-sort-order-id": 0,
            "sort-orders": [{{"order-id": 0, "fields": []}}], "properties": {{}},
            "current-snapshot-id": 4, "snapshots": [{snapshots}],
            "snapshot-log": [{log}], "metadata-log": [], "refs": {{{refs}}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    const MAIN: &str = r#""main": {"snapshot-id": 4, "type": "branch"}"#;

    #[test]
    fn refs_protect_what_they_reach() {
        let all = rules(1, 0, 0, 1_000 * H);
        let m = metadata(MAIN);
        assert!(Refs::of(&m).protected.is_empty());
        assert!(Refs::of(&m).own_age.is_empty());
        assert_eq!(select(&m, &all), vec![3, 2, 1]);

        let m = metadata(&format!(
            r#"{MAIN}, "audit": {{"snapshot-id": 2, "type": "tag"}}"#
        ));
        assert_eq!(Refs::of(&m).protected, HashSet::from([2]));
        assert_eq!(select(&m, &all), vec![1], "main above the tag stays unbroken");

        let m = metadata(&format!(
            r#"{MAIN}, "dev": {{"snapshot-id": 5, "type": "branch"}}"#
        ));
        assert_eq!(Refs::of(&m).protected, HashSet::from([5, 2, 1]));
        assert!(select(&m, &all).is_empty(), "the branch's history is main's tail");

        let m = metadata(
            r#""main": {"snapshot-id": 4, "type": "branch", "max-snapshot-age-ms": 1},
            "dev": {"snapshot-id": 5, "type": "branch", "min-snapshots-to-keep": 2},
            "old": {"snapshot-id": 3, "type": "branch", "max-snapshot-age-ms": 5}"#,
        );
        assert_eq!(Refs::of(&m).own_age, vec!["main".to_owned(), "old".to_owned()]);
    }

    #[test]
    fn expirable_snapshots_is_maintains_selection_at_a_given_time() {
        let cfg = MaintenanceConfig::default()
            .keep_snapshots(1)
            .snapshot_retention(Duration::ZERO)
            .delete_grace(Duration::ZERO);
        let at = |hours_ago: f64| {
            SystemTime::UNIX_EPOCH + Duration::from_millis((1_000 * H) as u64)
                - Duration::from_secs_f64(hours_ago * 3600.0)
        };
        let m = metadata(MAIN);
        assert_eq!(expirable_snapshots(&m, &cfg, at(0.0)), 3, "all but main's head");
        // 2.5 h ago only 1 was older and replaced (2's child 3 is younger).
        assert_eq!(expirable_snapshots(&m, &cfg, at(2.5)), 1);
        assert_eq!(expirable_snapshots(&m, &cfg, at(10.0)), 0, "nothing existed yet");
        let own_age = metadata(r#""main": {"snapshot-id": 4, "type": "branch", "max-snapshot-age-ms": 1}"#);
        assert_eq!(
            expirable_snapshots(&own_age, &cfg, at(0.0)),
            0,
            "maintain expires none"
        );
    }

    const H: i64 = 3_600_000;

    fn rules(keep: usize, retention: i64, grace: i64, now: i64) -> Rules {
        Rules {
            keep,
            retained_from: now - retention,
            replaced_from: now - grace,
        }
    }

    /// A chain of snapshots one hour apart, the newest at `now`: (id = age in hours, ts).
    fn hourly(n: i64, now: i64) -> Vec<(i64, i64)> {
        (0..n).map(|age| (age, now - age * H)).collect()
    }

    #[test]
    fn keep_count_wins_when_nothing_is_recent() {
        let now = 1_000 * H;
        let chain = hourly(10, now);
        // retention and grace 0: only the newest `keep` stay (plus the head's
        // child rule: snapshot 1's child is the head, committed "now").
        assert_eq!(kept(&chain, &HashSet::new(), &rules(3, 0, 0, now)), 3);
        assert_eq!(kept(&chain, &HashSet::new(), &rules(1, 0, 0, now)), 2);
        assert_eq!(kept(&chain, &HashSet::new(), &rules(20, 0, 0, now)), 10);
    }

    #[test]
    fn retention_keeps_young_snapshots() {
        let now = 1_000 * H;
        let chain = hourly(10, now);
        // younger than 5 h: ages 0..=5 (ts >= now - 5h)
        assert_eq!(kept(&chain, &HashSet::new(), &rules(1, 5 * H, 0, now)), 6);
    }

    #[test]
    fn delete_grace_keeps_recently_replaced_snapshots() {
        let now = 1_000 * H;
        let chain = hourly(10, now);
        // children committed within 3 h: the children of ages 1..=4 are ages 0..=3.
        assert_eq!(kept(&chain, &HashSet::new(), &rules(1, 0, 3 * H, now)), 5);
    }

    #[test]
    fn only_a_suffix_expires() {
        let now = 1_000 * H;
        let mut chain = hourly(10, now);
        // A clock jump: an old snapshot carries a young timestamp; everything
        // above it stays too, so main's ancestry is never cut in the middle.
        chain[7].1 = now;
        assert_eq!(kept(&chain, &HashSet::new(), &rules(1, H, 0, now)), 9);
        let chain = hourly(10, now);
        let protected = HashSet::from([6]);
        assert_eq!(kept(&chain, &protected, &rules(1, 0, 0, now)), 7);
    }
}
