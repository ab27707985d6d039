//! The report's data: per-layer figures, findings, bucket, table and overall
//! verdicts, as plain serde types.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use offload_core::Watermark;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fingerprint::ContentKind;
use crate::{BucketSize, Error, Thresholds, TimeRange, Verdict};

/// A layer of the pipeline.
///
/// ```
/// assert_eq!(offload_reconcile::Layer::ClickHouse.as_str(), "clickhouse");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The Kafka topic ClickHouse ingests.
    Kafka,
    /// The ClickHouse table.
    ClickHouse,
    /// The Iceberg table.
    Iceberg,
}

impl Layer {
    /// The lower-case name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Kafka => "kafka",
            Layer::ClickHouse => "clickhouse",
            Layer::Iceberg => "iceberg",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Kafka => "Kafka",
            Layer::ClickHouse => "ClickHouse",
            Layer::Iceberg => "Iceberg",
        })
    }
}

/// An exact sum of a decimal or integer column: an unscaled `i128` and its
/// scale. Serialised as its decimal text (`"-12.50"`), never as a float.
///
/// ```
/// use offload_reconcile::ExactSum;
/// let s = ExactSum::new(-1250, 2);
/// assert_eq!(s.to_string(), "-12.50");
/// assert_eq!("-12.50".parse::<ExactSum>().unwrap(), s);
/// assert_eq!(ExactSum::new(5, 0).to_string(), "5");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExactSum {
    /// The value times 10^scale.
    pub unscaled: i128,
    /// Digits after the point.
    pub scale: u8,
}

impl ExactSum {
    /// A sum of `unscaled / 10^scale`.
    pub const fn new(unscaled: i128, scale: u8) -> Self {
        Self { unscaled, scale }
    }

    /// Adds `other` (same scale), failing on `i128` overflow.
    pub fn checked_add(self, other: ExactSum) -> Option<ExactSum> {
        if self.scale != other.scale {
            return None;
        }
        Some(ExactSum::new(
            self.unscaled.checked_add(other.unscaled)?,
            self.scale,
        ))
    }

    /// Parses the decimal text ClickHouse prints (`-1.5`, `12`, `\N` as 0) into
    /// a sum at `scale`, exactly (more fractional digits than `scale` fail).
    ///
    /// ```
    /// use offload_reconcile::ExactSum;
    /// assert_eq!(ExactSum::parse_scaled("-1.5", 3).unwrap(), ExactSum::new(-1500, 3));
    /// assert!(ExactSum::parse_scaled("1.2345", 2).is_err());
    /// ```
    pub fn parse_scaled(text: &str, scale: u8) -> Result<ExactSum, Error> {
        let t = text.trim();
        if t == "\\N" || t.eq_ignore_ascii_case("null") {
            return Ok(ExactSum::new(0, scale));
        }
        let bad = |why: &str| Error::Parse {
            what: "exact sum",
            text: t.chars().take(80).collect(),
            reason: why.to_owned(),
        };
        let (neg, digits) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty()
            || !int.bytes().all(|c| c.is_ascii_digit())
            || !frac.bytes().all(|c| c.is_ascii_digit())
        {
            return Err(bad("not a decimal number"));
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > usize::from(scale) {
            return Err(bad("more fractional digits than the scale"));
        }
        let mut v: i128 = 0;
        let pad = usize::from(scale) - frac.len();
        for c in int
            .bytes()
            .chain(frac.bytes())
            .chain(std::iter::repeat_n(b'0', pad))
        {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(c - b'0')))
                .ok_or_else(|| bad("does not fit in i128"))?;
        }
        Ok(ExactSum::new(if neg { -v } else { v }, scale))
    }
}

impl fmt::Display for ExactSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.unscaled);
        }
        let digits = self.unscaled.unsigned_abs().to_string();
        let s = usize::from(self.scale);
        let padded = format!("{digits:0>width$}", width = s + 1);
        let (int, frac) = padded.split_at(padded.len() - s);
        write!(f, "{}{int}.{frac}", if self.unscaled < 0 { "-" } else { "" })
    }
}

impl FromStr for ExactSum {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scale = s.trim().split_once('.').map_or(0, |(_, f)| f.len());
        let scale = u8::try_from(scale).map_err(|_| Error::Parse {
            what: "exact sum",
            text: s.chars().take(80).collect(),
            reason: "scale above 255".into(),
        })?;
        ExactSum::parse_scaled(s, scale)
    }
}

impl Serialize for ExactSum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExactSum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Fingerprints as 16 hex digits in JSON: a u64 above 2^53 does not survive
/// JavaScript's numbers.
mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&format!("{v:016x}")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One layer's figures for one bucket (ClickHouse or Iceberg).
///
/// `None` means "not computed" (counts-only depth, or no Kafka columns).
///
/// ```
/// use offload_reconcile::Figures;
/// let mut a = Figures::counted(2);
/// a.merge(&Figures::counted(3)).unwrap();
/// assert_eq!(a.rows, 5);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Figures {
    /// `count()`.
    pub rows: u64,
    /// Distinct `(timestamp, sequence)` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_keys: Option<u64>,
    /// Distinct `(kafka_partition, kafka_offset)` pairs (ClickHouse with Kafka columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_offsets: Option<u64>,
    /// Σ key_hash mod 2^64 (see [`fingerprint`](crate::fingerprint)).
    #[serde(default, with = "hex_opt", skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<u64>,
    /// Σ row_hash mod 2^64.
    #[serde(default, with = "hex_opt", skip_serializing_if = "Option::is_none")]
    pub content_fingerprint: Option<u64>,
    /// Exact sums of the chosen columns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, ExactSum>,
}

impl Figures {
    /// Figures of an empty bucket with every fingerprint computed (all zero).
    pub fn zero() -> Self {
        Self {
            rows: 0,
            distinct_keys: Some(0),
            distinct_offsets: None,
            key_fingerprint: Some(0),
            content_fingerprint: Some(0),
            sums: BTreeMap::new(),
        }
    }

    /// Figures holding only a row count.
    pub fn counted(rows: u64) -> Self {
        Self {
            rows,
            ..Self::default()
        }
    }

    /// Adds the figures of a disjoint set of keys (distinct counts add up only
    /// because the key sets are disjoint; the callers split by key).
    pub fn merge(&mut self, o: &Figures) -> Result<(), Error> {
        fn add(a: Option<u64>, b: Option<u64>, f: fn(u64, u64) -> u64) -> Option<u64> {
            Some(f(a?, b?))
        }
        self.rows += o.rows;
        self.distinct_keys = add(self.distinct_keys, o.distinct_keys, |a, b| a + b);
        self.distinct_offsets = add(self.distinct_offsets, o.distinct_offsets, |a, b| a + b);
        self.key_fingerprint = add(self.key_fingerprint, o.key_fingerprint, u64::wrapping_add);
        self.content_fingerprint = add(self.content_fingerprint, o.content_fingerprint, u64::wrapping_add);
        for (k, v) in &o.sums {
            let cur = self.sums.entry(k.clone()).or_insert(ExactSum::new(0, v.scale));
            *cur = cur
                .checked_add(*v)
                .ok_or_else(|| Error::SumOverflow { column: k.clone() })?;
        }
        Ok(())
    }
}

/// One Kafka partition's share of a bucket: offsets `[first_offset, end_offset)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpan {
    /// First offset whose timestamp is at or after the bucket start.
    pub first_offset: i64,
    /// First offset whose timestamp is at or after the bucket end.
    pub end_offset: i64,
    /// Messages in the bucket (equal to the span unless counted by scanning).
    pub messages: u64,
}

/// Kafka's figures for one bucket.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KafkaFigures {
    /// Messages whose timestamp falls in the bucket, over all partitions.
    pub messages: u64,
    /// False when retention may have removed messages of this bucket (the
    /// partition's log starts at or after the bucket start and not at offset 0).
    pub complete: bool,
    /// Per partition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<i32, PartitionSpan>,
}

/// A row key `(timestamp µs, sequence)` that differs between layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDiff {
    /// Event timestamp, µs since the epoch.
    pub ts: i64,
    /// The same timestamp, RFC 3339.
    pub at: String,
    /// Sequence.
    pub seq: u64,
    /// Copies upstream.
    pub upstream_copies: u64,
    /// Copies downstream.
    pub downstream_copies: u64,
    /// What differs.
    pub kind: KeyDiffKind,
}

/// How one key differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDiffKind {
    /// Upstream only.
    Missing,
    /// Downstream only.
    Extra,
    /// More copies downstream than upstream (or more than one in a layer).
    Duplicated,
    /// Present on both sides with a different row hash.
    Changed,
}

impl KeyDiffKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyDiffKind::Missing => "missing",
            KeyDiffKind::Extra => "extra",
            KeyDiffKind::Duplicated => "duplicated",
            KeyDiffKind::Changed => "changed",
        }
    }
}

/// A range of Kafka offsets `[start, end)` in one partition that never reached
/// ClickHouse (`copies == 0`) or arrived `copies > 1` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// Partition.
    pub partition: i32,
    /// First offset.
    pub start: i64,
    /// One past the last offset.
    pub end: i64,
    /// Copies in ClickHouse of each offset in the range.
    pub copies: u64,
}

impl fmt::Display for OffsetRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end == self.start + 1 {
            write!(f, "p{}@{}", self.partition, self.start)?;
        } else {
            write!(f, "p{}@[{}, {})", self.partition, self.start, self.end)?;
        }
        if self.copies != 0 {
            write!(f, "×{}", self.copies)?;
        }
        Ok(())
    }
}

/// One problem (or excused difference) found in a bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind of difference.
    pub verdict: Verdict,
    /// The layer where it shows.
    pub layer: Layer,
    /// The layer compared against (`None`: a check within `layer`).
    pub upstream: Option<Layer>,
    /// Rows (or messages) concerned; 0 for `diverged`, where only listing counts them.
    pub rows: u64,
    /// Within [`Thresholds`]: reported, not counted in the verdict.
    pub tolerated: bool,
    /// For humans.
    pub message: String,
    /// The differing keys, when few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyDiff>,
    /// The Kafka offsets concerned, when known and few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<OffsetRange>,
    /// How many of the finding's keys (for offsets: rows) the lists above do
    /// not show, because of the listing limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlisted: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One bucket of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketReport {
    /// Inclusive start, µs since the epoch.
    pub start: i64,
    /// Exclusive end, µs since the epoch.
    pub end: i64,
    /// `start` as RFC 3339.
    pub start_utc: String,
    /// Kafka, when a topic is reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaFigures>,
    /// Every ClickHouse row of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<Figures>,
    /// The ClickHouse rows at or below the committed watermark (what Iceberg must hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse_committed: Option<Figures>,
    /// Every Iceberg row of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg: Option<Figures>,
    /// The bucket's verdict.
    pub verdict: Verdict,
    /// What was found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// A column that takes part in the fingerprint or the sums.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// ClickHouse type.
    pub clickhouse_type: String,
    /// How it is encoded.
    #[serde(flatten)]
    pub kind: ContentKind,
}

/// Rows per layer over the whole range.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Kafka messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<u64>,
    /// ClickHouse rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<u64>,
    /// ClickHouse rows at or below the committed watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse_committed: Option<u64>,
    /// Iceberg rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg: Option<u64>,
}

/// One table's reconciliation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    /// The table's name (its key in reports and metrics).
    pub table: String,
    /// The ClickHouse table.
    pub clickhouse_table: String,
    /// The Iceberg table, when compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg_table: Option<String>,
    /// The Kafka topic, when compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_topic: Option<String>,
    /// How Kafka was counted: `offsets_for_times` or `scan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_method: Option<String>,
    /// The sink's committed watermark (`"<µs>:<seq>"`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_watermark: Option<String>,
    /// ClickHouse's TTL horizon used (µs), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_before: Option<i64>,
    /// Columns in the content fingerprint, in hash order.
    #[serde(default)]
    pub content_columns: Vec<ColumnInfo>,
    /// Columns summed exactly.
    #[serde(default)]
    pub sum_columns: Vec<ColumnInfo>,
    /// Columns left out of the fingerprint, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_columns: Vec<String>,
    /// Where Iceberg's counts came from: `scan` or `manifests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg_counts_from: Option<String>,
    /// Rows per layer over the range.
    pub totals: Totals,
    /// Buckets per verdict.
    pub bucket_verdicts: BTreeMap<Verdict, u64>,
    /// Every bucket, oldest first.
    pub buckets: Vec<BucketReport>,
    /// The table's verdict: the most severe bucket verdict, or `error`.
    pub verdict: Verdict,
    /// Why the table could not be reconciled (verdict `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time spent on the table.
    pub elapsed_ms: u64,
    /// The engine's late horizon for the table, µs (`None`: not known; see
    /// [`TableSpec::late_horizon`](crate::TableSpec::late_horizon); 0: the
    /// late-row sweep is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_horizon_micros: Option<i64>,
    /// Where the next sweep starts (µs): it repairs ClickHouse rows from here
    /// up to the committed watermark that Iceberg lacks. The start of the sweep
    /// bucket holding `committed watermark - late horizon`; `None` when nothing
    /// is committed, the horizon is not known or it is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_repairable_from: Option<i64>,
    /// Buckets with ClickHouse rows at or below the committed watermark
    /// missing from Iceberg (a `missing` finding that counts) inside the late
    /// horizon: rows that arrived late, which the next `offload run` sweep
    /// commits. A bucket straddling [`late_repairable_from`](Self::late_repairable_from)
    /// counts here and in [`late_unrepairable_buckets`](Self::late_unrepairable_buckets)
    /// when its listed keys fall on both sides (unlisted: here).
    #[serde(default)]
    pub late_repairable_buckets: u64,
    /// The missing rows of those buckets the sweep repairs.
    #[serde(default)]
    pub late_repairable_rows: u64,
    /// Buckets with missing rows older than the late horizon (or any, when
    /// the sweep is off): the sweep does not repair them.
    #[serde(default)]
    pub late_unrepairable_buckets: u64,
    /// The missing rows of those buckets the sweep does not repair.
    #[serde(default)]
    pub late_unrepairable_rows: u64,
}

impl TableReport {
    /// A report for a table that could not be reconciled.
    pub fn failed(table: &str, clickhouse_table: &str, error: &Error, elapsed_ms: u64) -> Self {
        Self {
            table: table.to_owned(),
            clickhouse_table: clickhouse_table.to_owned(),
            iceberg_table: None,
            kafka_topic: None,
            kafka_method: None,
            committed_watermark: None,
            expired_before: None,
            content_columns: Vec::new(),
            sum_columns: Vec::new(),
            skipped_columns: Vec::new(),
            iceberg_counts_from: None,
            totals: Totals::default(),
            bucket_verdicts: BTreeMap::new(),
            buckets: Vec::new(),
            verdict: Verdict::Error,
            error: Some(error.to_string()),
            elapsed_ms,
            late_horizon_micros: None,
            late_repairable_from: None,
            late_repairable_buckets: 0,
            late_repairable_rows: 0,
            late_unrepairable_buckets: 0,
            late_unrepairable_rows: 0,
        }
    }

    /// Splits the `missing` Iceberg rows into those the engine's late-row
    /// sweep repairs (inside `late_horizon` below the committed watermark,
    /// aligned down to a sweep bucket, as the engine's grid is) and those it
    /// does not. Verdicts are unchanged. Nothing is set without a horizon.
    pub(crate) fn classify_late_rows(
        &mut self,
        committed: Option<Watermark>,
        late_horizon: Option<Duration>,
        sweep_bucket: Duration,
    ) {
        let Some(late_horizon) = late_horizon else {
            return;
        };
        self.late_horizon_micros = Some(i64::try_from(late_horizon.as_micros()).unwrap_or(i64::MAX));
        let Some(committed) = committed else {
            return;
        };
        // `None`: the sweep is off, nothing is repairable.
        let edge = offload_core::repair_edge(committed, late_horizon, sweep_bucket);
        self.late_repairable_from = edge;
        let (mut rb, mut rr, mut ub, mut ur) = (0, 0, 0, 0);
        for b in &self.buckets {
            let (mut repairable, mut older) = (0u64, 0u64);
            for f in b
                .findings
                .iter()
                .filter(|f| f.verdict == Verdict::Missing && f.layer == Layer::Iceberg && !f.tolerated)
            {
                match edge {
                    None => older += f.rows,
                    Some(e) if b.start >= e => repairable += f.rows,
                    Some(e) if b.end <= e => older += f.rows,
                    Some(e) => {
                        // Straddles the edge: by key when every key is listed.
                        let missing = f.keys.iter().filter(|k| k.kind == KeyDiffKind::Missing);
                        let inside = missing.clone().filter(|k| k.ts >= e).count() as u64;
                        let outside = missing.count() as u64 - inside;
                        if f.unlisted == 0 && inside + outside == f.rows {
                            repairable += inside;
                            older += outside;
                        } else {
                            repairable += f.rows;
                        }
                    }
                }
            }
            if repairable > 0 {
                rb += 1;
                rr += repairable;
            }
            if older > 0 {
                ub += 1;
                ur += older;
            }
        }
        self.late_repairable_buckets = rb;
        self.late_repairable_rows = rr;
        self.late_unrepairable_buckets = ub;
        self.late_unrepairable_rows = ur;
    }

    /// The buckets with this verdict.
    pub fn buckets_with(&self, verdict: Verdict) -> impl Iterator<Item = &BucketReport> {
        self.buckets.iter().filter(move |b| b.verdict == verdict)
    }

    /// The bucket starting at `start` (µs).
    pub fn bucket_at(&self, start: i64) -> Option<&BucketReport> {
        self.buckets.iter().find(|b| b.start == start)
    }
}

/// The whole reconciliation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// When it was made, µs since the epoch.
    pub generated_at: i64,
    /// `generated_at` as RFC 3339.
    pub generated_at_utc: String,
    /// Range start (µs, inclusive).
    pub range_start: i64,
    /// Range end (µs, exclusive).
    pub range_end: i64,
    /// Bucket width.
    pub bucket: BucketSize,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// Per table.
    pub tables: Vec<TableReport>,
    /// The most severe table verdict.
    pub verdict: Verdict,
}

impl Report {
    /// The table report named `table`.
    pub fn table(&self, table: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// The process exit status for the overall verdict ([`Verdict::exit_code`]):
    /// 0 for `ok`, `not_yet_offloaded` and `expired_upstream`; 1 for `missing`,
    /// `duplicated` and `diverged`; 2 for `error`.
    ///
    /// ```
    /// # use offload_reconcile::*;
    /// let mut r = Report::empty(TimeRange::new(0, 60_000_000, BucketSize::Minute).unwrap(), Thresholds::default());
    /// assert_eq!(r.exit_code(), 0);
    /// r.verdict = Verdict::Diverged;
    /// assert_eq!(r.exit_code(), 1);
    /// ```
    pub fn exit_code(&self) -> i32 {
        self.verdict.exit_code()
    }

    /// [`exit_code`](Report::exit_code) as a [`std::process::ExitCode`], for `main`
    /// to return.
    pub fn exit_status(&self) -> std::process::ExitCode {
        // exit codes are 0, 1 or 2
        std::process::ExitCode::from(self.exit_code() as u8)
    }

    /// A report over `range` with no tables yet (verdict `ok`), generated now.
    pub fn empty(range: TimeRange, thresholds: Thresholds) -> Self {
        let now = offload_core::system_time_to_micros(std::time::SystemTime::now());
        Self {
            generated_at: now,
            generated_at_utc: offload_core::rfc3339_micros(now),
            range_start: range.start(),
            range_end: range.end(),
            bucket: range.size(),
            thresholds,
            tables: Vec::new(),
            verdict: Verdict::Ok,
        }
    }

    /// Adds a table's report; the overall verdict becomes the most severe.
    pub fn push(&mut self, table: TableReport) {
        self.verdict = self.verdict.max(table.verdict);
        self.tables.push(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn exact_sum_text_round_trips(v in any::<i128>(), scale in 0u8..=38) {
            let s = ExactSum::new(v, scale);
            prop_assert_eq!(ExactSum::parse_scaled(&s.to_string(), scale).unwrap(), s);
        }
    }

    #[test]
    fn exact_sum_parsing_edges() {
        assert_eq!(ExactSum::parse_scaled("\\N", 2).unwrap(), ExactSum::new(0, 2));
        assert_eq!(ExactSum::parse_scaled("0.10", 1).unwrap(), ExactSum::new(1, 1));
        assert_eq!(ExactSum::new(-5, 3).to_string(), "-0.005");
        assert_eq!(ExactSum::new(i128::MIN, 0).to_string(), i128::MIN.to_string());
        for bad in [
            "",
            "-",
            "1e5",
            "1.2.3",
            ".5",
            "170141183460469231731687303715884105728",
        ] {
            assert!(ExactSum::parse_scaled(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn figures_json_round_trips_with_hex_fingerprints() {
        let mut f = Figures::zero();
        f.key_fingerprint = Some(u64::MAX);
        f.sums.insert("p".into(), ExactSum::new(-12345, 2));
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"ffffffffffffffff\""), "{json}");
        assert!(json.contains("\"-123.45\""), "{json}");
        assert_eq!(serde_json::from_str::<Figures>(&json).unwrap(), f);
    }

    #[test]
    fn merge_refuses_overflowing_sums() {
        let mut a = Figures::zero();
        a.sums.insert("x".into(), ExactSum::new(i128::MAX, 0));
        let b = a.clone();
        assert!(matches!(a.merge(&b), Err(Error::SumOverflow { .. })));
    }
}
