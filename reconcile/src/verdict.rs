//! Verdicts and the pure rules that produce them from per-layer figures.
//!
//! Nothing here does I/O: [`judge`] maps one bucket's figures to a verdict
//! and findings, so every rule is unit-tested directly.

use std::fmt;
use std::str::FromStr;

use offload_core::Watermark;
use serde::{Deserialize, Serialize};

use crate::report::{Figures, Finding, KafkaFigures, Layer};
use crate::{Bucket, Error};

/// The outcome for a bucket, a table or a whole report.
///
/// Variants are declared from least to most severe and `Ord` follows that
/// order, so the verdict of a table is the maximum over its buckets and the
/// verdict of a report the maximum over its tables.
///
/// ```
/// use offload_reconcile::Verdict;
/// assert!(Verdict::Missing > Verdict::NotYetOffloaded);
/// assert_eq!(Verdict::NotYetOffloaded.exit_code(), 0);
/// assert_eq!(Verdict::Duplicated.exit_code(), 1);
/// assert_eq!(Verdict::Error.exit_code(), 2);
/// assert_eq!("not_yet_offloaded".parse::<Verdict>().unwrap(), Verdict::NotYetOffloaded);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every compared figure matches.
    Ok,
    /// The bucket lies before a retention horizon (ClickHouse's TTL, or rows
    /// Kafka no longer holds): the layer below holds more rows by design.
    ExpiredUpstream,
    /// The bucket is (partly) beyond the sink's committed watermark: Iceberg
    /// is not expected to hold those rows yet. What is committed matches.
    NotYetOffloaded,
    /// Same number of rows, different keys or content (fingerprint or sum).
    Diverged,
    /// More rows than distinct keys (or offsets), or more rows than upstream.
    Duplicated,
    /// Rows upstream that are not downstream.
    Missing,
    /// The table could not be reconciled (a query or read failed).
    Error,
}

impl Verdict {
    /// Every verdict, least severe first.
    pub const ALL: [Verdict; 7] = [
        Verdict::Ok,
        Verdict::ExpiredUpstream,
        Verdict::NotYetOffloaded,
        Verdict::Diverged,
        Verdict::Duplicated,
        Verdict::Missing,
        Verdict::Error,
    ];

    /// Process exit status for alerts and CI: 0 for `ok`, `not_yet_offloaded`
    /// and `expired_upstream`; 1 for `missing`, `duplicated`, `diverged`; 2 for `error`.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Ok | Verdict::ExpiredUpstream | Verdict::NotYetOffloaded => 0,
            Verdict::Diverged | Verdict::Duplicated | Verdict::Missing => 1,
            Verdict::Error => 2,
        }
    }

    /// Whether the verdict is a data problem (`missing`, `duplicated`, `diverged`).
    ///
    /// ```
    /// assert!(offload_reconcile::Verdict::Diverged.is_problem());
    /// assert!(!offload_reconcile::Verdict::Error.is_problem());
    /// ```
    pub fn is_problem(self) -> bool {
        self.exit_code() == 1
    }

    /// The snake_case name used in JSON, metrics labels and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::ExpiredUpstream => "expired_upstream",
            Verdict::NotYetOffloaded => "not_yet_offloaded",
            Verdict::Diverged => "diverged",
            Verdict::Duplicated => "duplicated",
            Verdict::Missing => "missing",
            Verdict::Error => "error",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| Error::InvalidConfig {
                field: "verdict",
                reason: format!("{s:?} is not a verdict"),
            })
    }
}

/// How strict the judge is. The defaults are exact: one missing or one
/// duplicated row makes the bucket a problem.
///
/// ```
/// let t = offload_reconcile::Thresholds::default();
/// assert_eq!((t.missing_rows, t.duplicated_rows, t.list_keys), (0, 0, 20));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Thresholds {
    /// Missing rows per bucket and layer pair that are reported but tolerated (verdict stays ok).
    pub missing_rows: u64,
    /// Duplicated rows per bucket and layer pair that are reported but tolerated.
    pub duplicated_rows: u64,
    /// When at most this many rows differ in a bucket, the differing keys
    /// (and Kafka offset ranges) are fetched and listed.
    pub list_keys: usize,
    /// Key listing reads every key of the bucket on both sides; skip it for
    /// buckets holding more rows than this.
    pub key_scan_max_rows: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            missing_rows: 0,
            duplicated_rows: 0,
            list_keys: 20,
            key_scan_max_rows: 5_000_000,
        }
    }
}

impl Thresholds {
    /// Sets [`Thresholds::missing_rows`].
    pub fn missing_rows(mut self, n: u64) -> Self {
        self.missing_rows = n;
        self
    }
    /// Sets [`Thresholds::duplicated_rows`].
    pub fn duplicated_rows(mut self, n: u64) -> Self {
        self.duplicated_rows = n;
        self
    }
    /// Sets [`Thresholds::list_keys`].
    pub fn list_keys(mut self, n: usize) -> Self {
        self.list_keys = n;
        self
    }
    /// Sets [`Thresholds::key_scan_max_rows`].
    pub fn key_scan_max_rows(mut self, n: u64) -> Self {
        self.key_scan_max_rows = n;
        self
    }

    fn tolerates(&self, verdict: Verdict, rows: u64) -> bool {
        match verdict {
            Verdict::Missing => rows <= self.missing_rows,
            Verdict::Duplicated => rows <= self.duplicated_rows,
            _ => false,
        }
    }
}

/// Everything [`judge`] looks at for one bucket.
///
/// `clickhouse_committed` is the part of ClickHouse at or below the sink's
/// committed watermark: what Iceberg must hold. `None` for a layer means the
/// layer is not part of this reconciliation.
#[derive(Clone, Copy, Debug)]
pub struct BucketInput<'a> {
    /// The bucket.
    pub bucket: Bucket,
    /// Kafka's message counts, when a topic is reconciled.
    pub kafka: Option<&'a KafkaFigures>,
    /// Every ClickHouse row of the bucket.
    pub clickhouse: Option<&'a Figures>,
    /// The ClickHouse rows at or below `committed`.
    pub clickhouse_committed: Option<&'a Figures>,
    /// Every Iceberg row of the bucket.
    pub iceberg: Option<&'a Figures>,
    /// The sink's committed watermark (`None`: nothing committed yet).
    pub committed: Option<Watermark>,
    /// ClickHouse's TTL horizon: buckets starting before it may have lost rows there.
    pub expired_before: Option<i64>,
}

/// Whether every position of `bucket` is at or below `committed`.
///
/// ```
/// use offload_core::Watermark;
/// use offload_reconcile::{verdict::fully_committed, Bucket};
/// let b = Bucket { start: 0, end: 10 };
/// assert!(fully_committed(b, Some(Watermark::new(9, u64::MAX))));
/// assert!(!fully_committed(b, Some(Watermark::new(9, 5))));
/// assert!(!fully_committed(b, None));
/// ```
pub fn fully_committed(bucket: Bucket, committed: Option<Watermark>) -> bool {
    committed.is_some_and(|w| Watermark::new(bucket.end - 1, u64::MAX) <= w)
}

fn finding(
    t: &Thresholds,
    verdict: Verdict,
    layer: Layer,
    upstream: Option<Layer>,
    rows: u64,
    message: String,
) -> Finding {
    Finding {
        verdict,
        layer,
        upstream,
        rows,
        tolerated: t.tolerates(verdict, rows),
        message,
        keys: Vec::new(),
        offsets: Vec::new(),
        unlisted: 0,
    }
}

fn distinct(f: &Figures) -> u64 {
    f.distinct_keys.unwrap_or(f.rows)
}

/// Judges one bucket: the verdict and the findings behind it.
///
/// Rules, per layer pair (upstream → downstream):
///
/// * **Kafka → ClickHouse.** With `kafka_partition`/`kafka_offset` columns
///   ClickHouse's distinct offsets are compared with Kafka's messages, and rows
///   beyond distinct offsets are `duplicated` (redelivery). Without them, rows
///   are compared with messages. Fewer → `missing` (or `expired_upstream` before
///   the TTL horizon); more → `duplicated` (or `expired_upstream` when Kafka's
///   retention has removed part of the bucket).
/// * **ClickHouse itself.** Rows beyond distinct `(ts, seq)` keys that Kafka
///   redelivery does not explain → `duplicated`.
/// * **ClickHouse (at or below the watermark) → Iceberg.** Iceberg copies
///   beyond ClickHouse's own duplicates → `duplicated`; fewer distinct keys →
///   `missing`; more → `duplicated` (or `expired_upstream` before the TTL
///   horizon); same rows and keys but a different key fingerprint, content
///   fingerprint or exact sum → `diverged`.
///
/// A finding within [`Thresholds`] is kept but tolerated. The bucket's verdict
/// is the most severe untolerated problem; else `expired_upstream` when a
/// horizon excused a difference; else `not_yet_offloaded` when Iceberg is
/// compared, the bucket is not wholly at or below the watermark and ClickHouse
/// holds rows in it above the watermark; else `ok`.
///
/// ```
/// use offload_core::Watermark;
/// use offload_reconcile::{judge, Bucket, BucketInput, Figures, Thresholds, Verdict};
/// let ch = Figures::counted(10);
/// let ice = Figures::counted(9);
/// let input = BucketInput {
///     bucket: Bucket { start: 0, end: 60_000_000 },
///     kafka: None,
///     clickhouse: Some(&ch),
///     clickhouse_committed: Some(&ch),
///     iceberg: Some(&ice),
///     committed: Some(Watermark::new(i64::MAX, 0)),
///     expired_before: None,
/// };
/// let (verdict, findings) = judge(&input, &Thresholds::default());
/// assert_eq!(verdict, Verdict::Missing);
/// assert_eq!(findings[0].rows, 1);
/// ```
pub fn judge(input: &BucketInput<'_>, t: &Thresholds) -> (Verdict, Vec<Finding>) {
    let mut out = Vec::new();
    let expired = input.expired_before.is_some_and(|e| input.bucket.start < e);
    let mut redelivered = 0;

    if let (Some(k), Some(ch)) = (input.kafka, input.clickhouse) {
        let (seen, extra_rows) = match ch.distinct_offsets {
            Some(d) => (d, ch.rows.saturating_sub(d)),
            None => (ch.rows, 0),
        };
        redelivered = extra_rows;
        if extra_rows > 0 {
            out.push(finding(
                t,
                Verdict::Duplicated,
                Layer::ClickHouse,
                Some(Layer::Kafka),
                extra_rows,
                format!("{extra_rows} Kafka message(s) stored more than once in ClickHouse (same partition and offset)"),
            ));
        }
        if seen < k.messages {
            let n = k.messages - seen;
            out.push(if expired {
                finding(
                    t,
                    Verdict::ExpiredUpstream,
                    Layer::ClickHouse,
                    Some(Layer::Kafka),
                    n,
                    format!(
                        "{n} Kafka message(s) not in ClickHouse, which is expected before its TTL horizon"
                    ),
                )
            } else {
                finding(
                    t,
                    Verdict::Missing,
                    Layer::ClickHouse,
                    Some(Layer::Kafka),
                    n,
                    format!("{n} Kafka message(s) never reached ClickHouse"),
                )
            });
        } else if seen > k.messages {
            let n = seen - k.messages;
            out.push(if !k.complete {
                finding(
                    t,
                    Verdict::ExpiredUpstream,
                    Layer::ClickHouse,
                    Some(Layer::Kafka),
                    n,
                    format!("ClickHouse holds {n} more row(s) than Kafka, whose retention has removed part of this bucket"),
                )
            } else {
                finding(
                    t,
                    Verdict::Duplicated,
                    Layer::ClickHouse,
                    Some(Layer::Kafka),
                    n,
                    format!("ClickHouse holds {n} more row(s) than Kafka has messages"),
                )
            });
        }
    }

    if let Some(ch) = input.clickhouse
        && let Some(d) = ch.distinct_keys
    {
        let unexplained = ch.rows.saturating_sub(d).saturating_sub(redelivered);
        if unexplained > 0 {
            out.push(finding(
                t,
                Verdict::Duplicated,
                Layer::ClickHouse,
                None,
                unexplained,
                format!(
                    "ClickHouse holds {unexplained} row(s) more than distinct (timestamp, sequence) keys"
                ),
            ));
        }
    }

    let mut pending = false;
    if let (Some(up), Some(down)) = (input.clickhouse_committed, input.iceberg) {
        // Straddling the watermark is pending only while ClickHouse holds rows
        // in the bucket above it; with none, the bucket is judged in full (so a
        // table offloaded to its last row can be `ok`, not forever pending).
        pending = !fully_committed(input.bucket, input.committed)
            && input.clickhouse.is_none_or(|all| all.rows > up.rows);
        let up_dups = up.distinct_keys.map_or(0, |d| up.rows.saturating_sub(d));
        let down_dups = down.distinct_keys.map_or(0, |d| down.rows.saturating_sub(d));
        let before = out.len();
        if down_dups > up_dups {
            let n = down_dups - up_dups;
            out.push(finding(
                t,
                Verdict::Duplicated,
                Layer::Iceberg,
                Some(Layer::ClickHouse),
                n,
                format!("Iceberg holds {n} row(s) more than distinct (timestamp, sequence) keys"),
            ));
        }
        let (u, d) = (distinct(up), distinct(down));
        if d < u {
            let n = u - d;
            out.push(finding(
                t,
                Verdict::Missing,
                Layer::Iceberg,
                Some(Layer::ClickHouse),
                n,
                format!("{n} ClickHouse row(s) at or below the committed watermark are not in Iceberg"),
            ));
        } else if d > u {
            let n = d - u;
            out.push(if expired {
                finding(
                    t,
                    Verdict::ExpiredUpstream,
                    Layer::Iceberg,
                    Some(Layer::ClickHouse),
                    n,
                    format!("Iceberg holds {n} key(s) ClickHouse no longer has, which is expected before its TTL horizon"),
                )
            } else {
                finding(
                    t,
                    Verdict::Duplicated,
                    Layer::Iceberg,
                    Some(Layer::ClickHouse),
                    n,
                    format!(
                        "Iceberg holds {n} key(s) more than ClickHouse has at or below the committed watermark"
                    ),
                )
            });
        }
        // Fingerprints only mean something when the row sets have the same size.
        if out.len() == before
            && up.rows == down.rows
            && let Some(what) = divergence(up, down)
        {
            out.push(finding(
                t,
                Verdict::Diverged,
                Layer::Iceberg,
                Some(Layer::ClickHouse),
                0,
                what,
            ));
        }
    }

    let worst_problem = out
        .iter()
        .filter(|f| f.verdict.is_problem() && !f.tolerated)
        .map(|f| f.verdict)
        .max();
    let verdict = if let Some(v) = worst_problem {
        v
    } else if pending {
        Verdict::NotYetOffloaded
    } else if out.iter().any(|f| f.verdict == Verdict::ExpiredUpstream) {
        Verdict::ExpiredUpstream
    } else {
        Verdict::Ok
    };
    (verdict, out)
}

/// Why two figures with equal row counts differ, if they do.
fn divergence(up: &Figures, down: &Figures) -> Option<String> {
    if let (Some(a), Some(b)) = (up.key_fingerprint, down.key_fingerprint)
        && a != b
    {
        return Some(format!(
            "same number of rows, different keys (key fingerprint {a:016x} in ClickHouse, {b:016x} in Iceberg)"
        ));
    }
    if let (Some(a), Some(b)) = (up.content_fingerprint, down.content_fingerprint)
        && a != b
    {
        return Some(format!(
            "same keys, different content (content fingerprint {a:016x} in ClickHouse, {b:016x} in Iceberg)"
        ));
    }
    for (col, a) in &up.sums {
        if let Some(b) = down.sums.get(col)
            && a != b
        {
            return Some(format!("sum({col}) is {a} in ClickHouse, {b} in Iceberg"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::report::{ExactSum, PartitionSpan};

    const B: Bucket = Bucket {
        start: 60_000_000,
        end: 120_000_000,
    };
    const ALL_COMMITTED: Option<Watermark> = Some(Watermark::new(i64::MAX, u64::MAX));

    fn full(rows: u64, distinct: u64, key: u64, content: u64) -> Figures {
        Figures {
            rows,
            distinct_keys: Some(distinct),
            distinct_offsets: None,
            key_fingerprint: Some(key),
            content_fingerprint: Some(content),
            sums: BTreeMap::new(),
        }
    }

    fn kafka(messages: u64, complete: bool) -> KafkaFigures {
        KafkaFigures {
            messages,
            complete,
            partitions: BTreeMap::from([(
                0,
                PartitionSpan {
                    first_offset: 0,
                    end_offset: messages as i64,
                    messages,
                },
            )]),
        }
    }

    fn input<'a>(ch: &'a Figures, ice: &'a Figures) -> BucketInput<'a> {
        BucketInput {
            bucket: B,
            kafka: None,
            clickhouse: Some(ch),
            clickhouse_committed: Some(ch),
            iceberg: Some(ice),
            committed: ALL_COMMITTED,
            expired_before: None,
        }
    }

    fn run(i: &BucketInput<'_>) -> (Verdict, Vec<Finding>) {
        judge(i, &Thresholds::default())
    }

    #[test]
    fn identical_is_ok() {
        let f = full(10, 10, 1, 2);
        let (v, fs) = run(&input(&f, &f));
        assert_eq!(v, Verdict::Ok);
        assert!(fs.is_empty());
    }

    #[test]
    fn one_missing_row_is_missing() {
        let (ch, ice) = (full(10, 10, 1, 2), full(9, 9, 3, 4));
        let (v, fs) = run(&input(&ch, &ice));
        assert_eq!(v, Verdict::Missing);
        assert_eq!((fs.len(), fs[0].rows, fs[0].layer), (1, 1, Layer::Iceberg));
    }

    #[test]
    fn one_duplicate_is_duplicated_even_with_an_equal_distinct_count() {
        let (ch, ice) = (full(10, 10, 1, 2), full(11, 10, 3, 4));
        let (v, fs) = run(&input(&ch, &ice));
        assert_eq!(v, Verdict::Duplicated);
        assert_eq!(fs[0].rows, 1);
    }

    #[test]
    fn a_duplicate_hiding_a_missing_row_shows_both() {
        // same row count, but one key twice and another key absent
        let (ch, ice) = (full(10, 10, 1, 2), full(10, 9, 3, 4));
        let (v, fs) = run(&input(&ch, &ice));
        assert_eq!(v, Verdict::Missing); // the more severe of the two
        let kinds: Vec<_> = fs.iter().map(|f| f.verdict).collect();
        assert_eq!(kinds, vec![Verdict::Duplicated, Verdict::Missing]);
    }

    #[test]
    fn same_count_other_content_is_diverged() {
        let (ch, ice) = (full(10, 10, 1, 2), full(10, 10, 1, 5));
        assert_eq!(run(&input(&ch, &ice)).0, Verdict::Diverged);
        let (ch, ice) = (full(10, 10, 1, 2), full(10, 10, 7, 2));
        let (v, fs) = run(&input(&ch, &ice));
        assert_eq!(v, Verdict::Diverged);
        assert!(fs[0].message.contains("different keys"), "{}", fs[0].message);
    }

    #[test]
    fn a_different_sum_is_diverged() {
        let mut ch = full(3, 3, 1, 2);
        ch.sums.insert("price".into(), ExactSum::new(150, 2));
        let mut ice = ch.clone();
        ice.sums.insert("price".into(), ExactSum::new(151, 2));
        let (v, fs) = run(&input(&ch, &ice));
        assert_eq!(v, Verdict::Diverged);
        assert!(
            fs[0].message.contains("sum(price) is 1.50 in ClickHouse, 1.51"),
            "{}",
            fs[0].message
        );
    }

    #[test]
    fn clickhouse_duplicates_copied_faithfully_are_reported_once() {
        let f = full(11, 10, 1, 2);
        let (v, fs) = run(&input(&f, &f));
        assert_eq!(v, Verdict::Duplicated);
        assert_eq!(fs.len(), 1);
        assert_eq!((fs[0].layer, fs[0].upstream), (Layer::ClickHouse, None));
    }

    #[test]
    fn beyond_the_watermark_is_not_yet_offloaded() {
        let ch = full(10, 10, 1, 2);
        let committed = Figures::zero();
        let ice = Figures::zero();
        let i = BucketInput {
            clickhouse_committed: Some(&committed),
            committed: Some(Watermark::new(B.start - 1, 0)),
            ..input(&ch, &ice)
        };
        assert_eq!(run(&i).0, Verdict::NotYetOffloaded);
        let never = BucketInput { committed: None, ..i };
        assert_eq!(run(&never).0, Verdict::NotYetOffloaded);
    }

    #[test]
    fn straddling_the_watermark_compares_the_committed_part() {
        let ch = full(10, 10, 1, 2);
        let part = full(4, 4, 5, 6);
        let i = BucketInput {
            clickhouse_committed: Some(&part),
            committed: Some(Watermark::new(B.start + 5, 3)),
            ..input(&ch, &part)
        };
        assert_eq!(run(&i).0, Verdict::NotYetOffloaded);
        let short = full(3, 3, 5, 6);
        let i = BucketInput {
            iceberg: Some(&short),
            ..i
        };
        assert_eq!(
            run(&i).0,
            Verdict::Missing,
            "a missing committed row is still an error"
        );
        // The watermark inside the bucket but nothing above it: judged in full.
        let all_in = BucketInput {
            clickhouse: Some(&part),
            iceberg: Some(&part),
            ..i
        };
        assert_eq!(run(&all_in).0, Verdict::Ok);
    }

    #[test]
    fn iceberg_rows_past_the_watermark_are_a_problem() {
        let ch = full(10, 10, 1, 2);
        let zero = Figures::zero();
        let i = BucketInput {
            clickhouse_committed: Some(&zero),
            committed: None,
            ..input(&ch, &ch)
        };
        assert_eq!(run(&i).0, Verdict::Duplicated);
    }

    #[test]
    fn ttl_horizon_excuses_iceberg_holding_more() {
        let (ch, ice) = (full(4, 4, 1, 2), full(10, 10, 3, 4));
        let i = BucketInput {
            expired_before: Some(B.end),
            ..input(&ch, &ice)
        };
        assert_eq!(run(&i).0, Verdict::ExpiredUpstream);
        // ... but not Iceberg holding fewer
        let i = BucketInput {
            expired_before: Some(B.end),
            ..input(&ice, &ch)
        };
        assert_eq!(run(&i).0, Verdict::Missing);
        // ... and a horizon after the bucket start only
        let i = BucketInput {
            expired_before: Some(B.start),
            ..input(&ch, &ice)
        };
        assert_eq!(run(&i).0, Verdict::Duplicated);
    }

    #[test]
    fn kafka_gap_and_redelivery() {
        let k = kafka(10, true);
        let mut ch = full(9, 9, 1, 2);
        ch.distinct_offsets = Some(9);
        let i = BucketInput {
            kafka: Some(&k),
            iceberg: None,
            clickhouse_committed: None,
            ..input(&ch, &ch)
        };
        let (v, fs) = run(&i);
        assert_eq!(v, Verdict::Missing);
        assert_eq!(
            (fs[0].layer, fs[0].upstream, fs[0].rows),
            (Layer::ClickHouse, Some(Layer::Kafka), 1)
        );

        let mut ch = full(11, 10, 1, 2);
        ch.distinct_offsets = Some(10);
        let i = BucketInput {
            clickhouse: Some(&ch),
            ..i
        };
        let (v, fs) = run(&i);
        assert_eq!(v, Verdict::Duplicated);
        assert_eq!(fs.len(), 1, "the redelivery explains the duplicate key: {fs:?}");
    }

    #[test]
    fn kafka_without_offset_columns_compares_rows() {
        let k = kafka(10, true);
        let ch = full(12, 12, 1, 2);
        let i = BucketInput {
            kafka: Some(&k),
            iceberg: None,
            clickhouse_committed: None,
            ..input(&ch, &ch)
        };
        let (v, fs) = run(&i);
        assert_eq!((v, fs[0].rows), (Verdict::Duplicated, 2));
        let k = kafka(10, false);
        let i = BucketInput { kafka: Some(&k), ..i };
        assert_eq!(run(&i).0, Verdict::ExpiredUpstream, "Kafka retention explains it");
    }

    #[test]
    fn thresholds_tolerate_but_keep_the_finding() {
        let (ch, ice) = (full(10, 10, 1, 2), full(8, 8, 3, 4));
        let t = Thresholds::default().missing_rows(2);
        let (v, fs) = judge(&input(&ch, &ice), &t);
        assert_eq!(v, Verdict::Ok);
        assert!(fs[0].tolerated);
        let t = Thresholds::default().missing_rows(1);
        assert_eq!(judge(&input(&ch, &ice), &t).0, Verdict::Missing);
    }

    #[test]
    fn counts_only_figures_still_judge_counts() {
        let (ch, ice) = (Figures::counted(10), Figures::counted(11));
        assert_eq!(run(&input(&ch, &ice)).0, Verdict::Duplicated);
        let ice = Figures::counted(10);
        assert_eq!(run(&input(&ch, &ice)).0, Verdict::Ok);
    }

    fn arb_figures() -> impl Strategy<Value = Figures> {
        (0u64..50, 0u64..50, 0u64..4, 0u64..4).prop_map(|(rows, dup, k, c)| {
            let distinct = rows.saturating_sub(dup.min(rows));
            full(rows, distinct, k, c)
        })
    }

    proptest! {
        /// The verdict is always the maximum problem, and `ok` only when the
        /// compared figures are identical.
        #[test]
        fn verdict_is_consistent(ch in arb_figures(), ice in arb_figures(), msgs in 0u64..60, with_kafka: bool) {
            let k = kafka(msgs, true);
            let i = BucketInput { kafka: with_kafka.then_some(&k), ..input(&ch, &ice) };
            let (v, fs) = run(&i);
            let worst = fs.iter().map(|f| f.verdict).filter(|v| v.is_problem()).max();
            prop_assert_eq!(v, worst.unwrap_or(Verdict::Ok));
            let ch_clean = ch.distinct_keys == Some(ch.rows) && (!with_kafka || ch.rows == msgs);
            if v == Verdict::Ok {
                prop_assert!(ch_clean);
                prop_assert_eq!(&ch, &ice);
            }
            if ch_clean && ch == ice {
                prop_assert_eq!(v, Verdict::Ok);
            }
            for f in &fs {
                prop_assert!(f.verdict == Verdict::Diverged || f.rows > 0, "{:?}", f);
            }
        }

        /// A single extra or missing row is never tolerated by default.
        #[test]
        fn defaults_are_exact(n in 1u64..1000, extra: bool) {
            let ch = full(n, n, 1, 1);
            let ice = if extra { full(n + 1, n + 1, 2, 2) } else { full(n - 1, n - 1, 2, 2) };
            let (v, _) = run(&input(&ch, &ice));
            prop_assert_eq!(v, if extra { Verdict::Duplicated } else { Verdict::Missing });
        }
    }
}
