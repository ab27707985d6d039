//! The comparison: every bucket's figures judged into verdicts and findings,
//! and, where few rows differ, the differing keys and Kafka offsets listed.

use std::collections::BTreeMap;

use offload_core::{Watermark, rfc3339_micros};
use serde::{Deserialize, Serialize};

use super::plan::Gathered;
use super::{Depth, Reconciler, TableSpec};
use crate::ch::ChPlan;
#[cfg(feature = "kafka")]
use crate::kafka::KafkaSide;
use crate::lake::{self, IcePlan};
#[cfg(feature = "kafka")]
use crate::report::OffsetRange;
use crate::report::{
    BucketReport, ColumnInfo, Figures, Finding, KafkaFigures, KeyDiff, KeyDiffKind, Layer, TableReport,
    Totals,
};
use crate::verdict::{BucketInput, judge};
use crate::{Error, Verdict};

/// One row's key and row hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowHash {
    /// Event timestamp, µs.
    pub ts: i64,
    /// Sequence.
    pub seq: u64,
    /// [`row_hash`](crate::fingerprint::row_hash) of the row.
    pub hash: u64,
}

/// The row hashes of one bucket per layer ([`Reconciler::row_hashes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowHashes {
    /// ClickHouse's rows, sorted.
    pub clickhouse: Vec<RowHash>,
    /// Iceberg's rows, sorted, when the table has an Iceberg side.
    pub iceberg: Option<Vec<RowHash>>,
    /// The content columns hashed, in order.
    pub content_columns: Vec<ColumnInfo>,
}

impl Reconciler {
    /// Judges every bucket of the gathered figures into a table report.
    pub(super) fn assemble(
        &self,
        spec: &TableSpec,
        g: &Gathered,
        committed: Option<Option<Watermark>>,
        offsets: bool,
    ) -> Result<TableReport, Error> {
        let full = self.depth == Depth::Full;
        let empty = || {
            let mut f = if full {
                Figures::zero()
            } else {
                Figures::counted(0)
            };
            if offsets {
                f.distinct_offsets = Some(0);
            }
            f
        };
        let mut totals = Totals::default();
        let mut buckets = Vec::with_capacity(self.range.len());
        let mut verdicts: BTreeMap<Verdict, u64> = BTreeMap::new();
        for (i, b) in self.range.buckets().enumerate() {
            let part = |flag: bool| g.ch.get(&(b.start, flag)).cloned().unwrap_or_else(empty);
            let (c, p) = (part(true), part(false));
            let mut all = c.clone();
            all.merge(&p)?;
            let ch_committed = committed.map(|_| c);
            let ice = g.ice.as_ref().map(|m| {
                m.get(&b.start).cloned().unwrap_or_else(|| {
                    let mut f = empty();
                    f.distinct_offsets = None;
                    f
                })
            });
            #[cfg(feature = "kafka")]
            let kafka: Option<KafkaFigures> = g.kafka.as_ref().map(|k| k.buckets[i].clone());
            #[cfg(not(feature = "kafka"))]
            let kafka: Option<KafkaFigures> = {
                let _ = i;
                None
            };
            let input = BucketInput {
                bucket: b,
                kafka: kafka.as_ref(),
                clickhouse: Some(&all),
                clickhouse_committed: ch_committed.as_ref(),
                iceberg: ice.as_ref(),
                committed: committed.flatten(),
                expired_before: spec.expired_before,
            };
            let (verdict, findings) = judge(&input, &self.thresholds);
            *verdicts.entry(verdict).or_default() += 1;
            let add = |t: &mut Option<u64>, v: u64| *t = Some(t.unwrap_or(0) + v);
            add(&mut totals.clickhouse, all.rows);
            if let Some(c) = &ch_committed {
                add(&mut totals.clickhouse_committed, c.rows);
            }
            if let Some(f) = &ice {
                add(&mut totals.iceberg, f.rows);
            }
            if let Some(k) = &kafka {
                add(&mut totals.kafka, k.messages);
            }
            buckets.push(BucketReport {
                start: b.start,
                end: b.end,
                start_utc: rfc3339_micros(b.start),
                kafka,
                clickhouse: Some(all),
                clickhouse_committed: ch_committed,
                iceberg: ice,
                verdict,
                findings,
            });
        }
        Ok(TableReport {
            table: spec.name.clone(),
            clickhouse_table: spec.clickhouse_table.clone(),
            iceberg_table: None,
            kafka_topic: spec.kafka_topic.clone(),
            #[cfg(feature = "kafka")]
            kafka_method: g.kafka.as_ref().map(|k| k.method.to_string()),
            #[cfg(not(feature = "kafka"))]
            kafka_method: None,
            committed_watermark: None,
            expired_before: spec.expired_before,
            content_columns: Vec::new(),
            sum_columns: Vec::new(),
            skipped_columns: Vec::new(),
            iceberg_counts_from: None,
            totals,
            verdict: buckets.iter().map(|b| b.verdict).max().unwrap_or(Verdict::Ok),
            bucket_verdicts: verdicts,
            buckets,
            error: None,
            elapsed_ms: 0,
            late_horizon_micros: None,
            late_repairable_from: None,
            late_repairable_buckets: 0,
            late_repairable_rows: 0,
            late_unrepairable_buckets: 0,
            late_unrepairable_rows: 0,
        })
    }

    /// Lists the differing keys of buckets where few rows differ.
    pub(super) async fn list_keys(
        &self,
        report: &mut TableReport,
        ch_plan: &ChPlan,
        ice_plan: &IcePlan,
        table: Option<&iceberg::table::Table>,
    ) -> Result<(), Error> {
        let t = &self.thresholds;
        if t.list_keys == 0 || !ch_plan.full {
            return Ok(());
        }
        for b in &mut report.buckets {
            let bucket = crate::Bucket {
                start: b.start,
                end: b.end,
            };
            // ClickHouse's own duplicate keys.
            if let Some(f) = b.findings.iter_mut().find(|f| {
                f.layer == Layer::ClickHouse && f.upstream.is_none() && f.verdict == Verdict::Duplicated
            }) {
                let dups = self
                    .clickhouse
                    .duplicate_keys(ch_plan, bucket, t.list_keys)
                    .await?;
                let covered: u64 = dups.iter().map(|(_, _, copies)| copies - 1).sum();
                f.keys = dups
                    .into_iter()
                    .map(|(ts, seq, copies)| key_diff(ts, seq, 1, copies, KeyDiffKind::Duplicated))
                    .collect();
                // Extra rows the listed keys do not account for.
                f.unlisted = f.rows.saturating_sub(covered);
            }
            // ClickHouse (committed part) against Iceberg.
            let Some(table) = table else { continue };
            let wants = b.findings.iter().any(|f| {
                f.layer == Layer::Iceberg
                    && f.upstream == Some(Layer::ClickHouse)
                    && (f.verdict == Verdict::Diverged || f.rows as usize <= t.list_keys)
            });
            let size = b.clickhouse_committed.as_ref().map_or(0, |f| f.rows)
                + b.iceberg.as_ref().map_or(0, |f| f.rows);
            if !wants || size > t.key_scan_max_rows.saturating_mul(2) {
                continue;
            }
            let (up, down) = tokio::try_join!(
                async {
                    Ok::<_, Error>(
                        self.clickhouse
                            .keys(ch_plan, bucket, true)
                            .await?
                            .into_iter()
                            .map(|k| (k.ts, k.seq, k.hash))
                            .collect::<Vec<_>>(),
                    )
                },
                lake::keys(table, ice_plan, bucket)
            )?;
            let mut up = up;
            up.sort_unstable();
            let diffs = diff_keys(&up, &down);
            let pick = |kinds: &[KeyDiffKind]| -> Vec<KeyDiff> {
                diffs
                    .iter()
                    .filter(|d| kinds.contains(&d.kind))
                    .cloned()
                    .collect()
            };
            for f in b
                .findings
                .iter_mut()
                .filter(|f| f.layer == Layer::Iceberg && f.upstream == Some(Layer::ClickHouse))
            {
                let mine = match f.verdict {
                    Verdict::Missing => pick(&[KeyDiffKind::Missing]),
                    Verdict::Duplicated | Verdict::ExpiredUpstream => {
                        pick(&[KeyDiffKind::Duplicated, KeyDiffKind::Extra])
                    }
                    _ => {
                        let all = pick(&[KeyDiffKind::Changed, KeyDiffKind::Missing, KeyDiffKind::Extra]);
                        f.rows = all.len() as u64;
                        all
                    }
                };
                attach(f, mine, t.list_keys);
            }
        }
        Ok(())
    }

    /// Lists the Kafka offset ranges that never reached ClickHouse or arrived twice.
    #[cfg(feature = "kafka")]
    pub(super) async fn list_offsets(
        &self,
        report: &mut TableReport,
        ch_plan: &ChPlan,
        k: &KafkaSide,
    ) -> Result<(), Error> {
        let t = &self.thresholds;
        let needs = |v: Verdict| {
            report.buckets.iter().any(|b| {
                b.findings
                    .iter()
                    .any(|f| f.upstream == Some(Layer::Kafka) && f.verdict == v)
            })
        };
        let (want_gaps, want_dups) = (
            needs(Verdict::Missing) || needs(Verdict::ExpiredUpstream),
            needs(Verdict::Duplicated),
        );
        if t.list_keys == 0 || !(want_gaps || want_dups) {
            return Ok(());
        }
        let bounds = k.bounds();
        let cap = t.list_keys.saturating_mul(100).max(1_000);
        let mut per_bucket: BTreeMap<usize, (Vec<OffsetRange>, Vec<OffsetRange>)> = BTreeMap::new();
        if want_gaps {
            let gaps = self.clickhouse.offset_gaps(ch_plan, &bounds, cap).await?;
            for g in gaps {
                for (i, lo, hi) in k.split(g.partition, g.start, g.end) {
                    per_bucket.entry(i).or_default().0.push(OffsetRange {
                        start: lo,
                        end: hi,
                        ..g
                    });
                }
            }
        }
        if want_dups {
            for d in self.clickhouse.offset_duplicates(ch_plan, &bounds, cap).await? {
                if let Some(i) = self.range.index_of(d.ts) {
                    per_bucket.entry(i).or_default().1.push(d.range);
                }
            }
        }
        for (i, (gaps, dups)) in per_bucket {
            let Some(b) = report.buckets.get_mut(i) else {
                continue;
            };
            for f in b.findings.iter_mut().filter(|f| f.upstream == Some(Layer::Kafka)) {
                let list = match f.verdict {
                    Verdict::Missing | Verdict::ExpiredUpstream => &gaps,
                    Verdict::Duplicated => &dups,
                    _ => continue,
                };
                f.offsets = list.iter().take(t.list_keys).copied().collect();
                // Messages the listed ranges do not cover (the count is exact,
                // the lists are capped).
                let covered: u64 = f
                    .offsets
                    .iter()
                    .map(|o| {
                        if o.copies == 0 {
                            (o.end - o.start) as u64
                        } else {
                            o.copies - 1
                        }
                    })
                    .sum();
                f.unlisted = f.rows.saturating_sub(covered);
            }
        }
        Ok(())
    }
}

fn key_diff(ts: i64, seq: u64, up: u64, down: u64, kind: KeyDiffKind) -> KeyDiff {
    KeyDiff {
        ts,
        at: rfc3339_micros(ts),
        seq,
        upstream_copies: up,
        downstream_copies: down,
        kind,
    }
}

fn attach(f: &mut Finding, diffs: Vec<KeyDiff>, limit: usize) {
    f.unlisted = diffs.len().saturating_sub(limit) as u64;
    f.keys = diffs.into_iter().take(limit).collect();
}

/// Diffs two sorted lists of `(ts, seq, row_hash)` key by key.
pub(crate) fn diff_keys(up: &[(i64, u64, u64)], down: &[(i64, u64, u64)]) -> Vec<KeyDiff> {
    let group = |v: &[(i64, u64, u64)]| {
        let mut m: BTreeMap<(i64, u64), Vec<u64>> = BTreeMap::new();
        for (ts, seq, h) in v {
            m.entry((*ts, *seq)).or_default().push(*h);
        }
        m
    };
    let (u, d) = (group(up), group(down));
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&(i64, u64)> = u.keys().chain(d.keys()).collect();
    for k in keys {
        let empty = Vec::new();
        let (a, b) = (u.get(k).unwrap_or(&empty), d.get(k).unwrap_or(&empty));
        let (na, nb) = (a.len() as u64, b.len() as u64);
        let kind = if nb == 0 {
            KeyDiffKind::Missing
        } else if na == 0 {
            KeyDiffKind::Extra
        } else if nb > na {
            KeyDiffKind::Duplicated
        } else if nb < na {
            KeyDiffKind::Missing
        } else {
            let (mut a, mut b) = (a.clone(), b.clone());
            a.sort_unstable();
            b.sort_unstable();
            if a == b {
                continue;
            }
            KeyDiffKind::Changed
        };
        out.push(key_diff(k.0, k.1, na, nb, kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_diff_kinds() {
        let up = [(1, 1, 10), (2, 2, 20), (3, 3, 30), (4, 4, 40)];
        let down = [(1, 1, 10), (2, 2, 21), (3, 3, 30), (3, 3, 30), (5, 5, 50)];
        let d = diff_keys(&up, &down);
        let kinds: Vec<_> = d.iter().map(|d| (d.ts, d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (2, KeyDiffKind::Changed),
                (3, KeyDiffKind::Duplicated),
                (4, KeyDiffKind::Missing),
                (5, KeyDiffKind::Extra)
            ]
        );
        assert!(diff_keys(&up, &up).is_empty());
    }
}
