//! The reconciler: gathers every layer's figures for each table, judges every
//! bucket, and fetches the differing keys and offsets when they are few.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use offload_core::{Sink, TableConfig, Watermark, rfc3339_micros, system_time_to_micros};
use serde::{Deserialize, Serialize};

#[cfg(feature = "kafka")]
use crate::KafkaLayer;
use crate::ch::{ChPlan, ChType, quote_table};
use crate::fingerprint::ContentKind;
#[cfg(feature = "kafka")]
use crate::kafka::KafkaSide;
use crate::lake::{self, IcePlan};
use crate::report::{
    BucketReport, ColumnInfo, Figures, Finding, KafkaFigures, KeyDiff, KeyDiffKind, Layer, OffsetRange,
    Report, TableReport, Totals,
};
use crate::verdict::{BucketInput, judge};
use crate::{ClickHouseLayer, Error, IcebergLayer, Thresholds, TimeRange, Verdict};

/// How deep to look.
///
/// ```
/// assert_eq!(offload_reconcile::Depth::default(), offload_reconcile::Depth::Full);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// Counts, distinct keys, key and content fingerprints, exact sums.
    #[default]
    Full,
    /// Row counts only (and distinct Kafka offsets): Iceberg counts come from
    /// the manifests when the partitioning allows, else from a scan of the
    /// timestamp column alone. Cheap enough for a frequent alert; blind to
    /// duplicates that replace missing rows and to changed values.
    Counts,
}

/// Where the sink's committed watermark comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum CommittedSource {
    /// The Iceberg table's own metadata, as `offload-sink-iceberg` writes it
    /// (snapshot summary `offload.window.until`, else table property
    /// `offload.watermark`). The default.
    TableMetadata,
    /// A sink's [`Sink::committed`] (any `offload-core` sink).
    Sink {
        /// The sink.
        sink: Arc<dyn Sink>,
        /// The table as the sink knows it.
        table: TableConfig,
    },
    /// A known value (`None`: nothing committed).
    Fixed(Option<Watermark>),
}

impl std::fmt::Debug for CommittedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommittedSource::TableMetadata => f.write_str("TableMetadata"),
            CommittedSource::Sink { table, .. } => write!(f, "Sink({})", table.name()),
            CommittedSource::Fixed(w) => write!(f, "Fixed({w:?})"),
        }
    }
}

/// Which ClickHouse columns carry each row's Kafka partition and offset.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KafkaColumns {
    /// `kafka_partition` and `kafka_offset` when both exist (the default).
    #[default]
    Auto,
    /// These two columns.
    Named {
        /// Partition column.
        partition: String,
        /// Offset column.
        offset: String,
    },
    /// Do not use offset columns.
    Off,
}

/// One table to reconcile.
///
/// ```
/// use offload_reconcile::TableSpec;
/// let t = TableSpec::new("trades", "default.trades", "ts", "seq")
///     .iceberg_table("lake.trades")
///     .sum_columns(["price"])
///     .kafka_topic("trades");
/// assert_eq!(t.name(), "trades");
/// ```
#[derive(Clone, Debug)]
pub struct TableSpec {
    name: String,
    clickhouse_table: String,
    iceberg_table: Option<String>,
    timestamp_column: String,
    sequence_column: String,
    content_columns: Option<Vec<String>>,
    sum_columns: Vec<String>,
    kafka_topic: Option<String>,
    kafka_columns: KafkaColumns,
    committed: CommittedSource,
    expired_before: Option<i64>,
}

impl TableSpec {
    /// A table named `name` (its key in reports and metrics), read from the
    /// ClickHouse table `clickhouse_table` (`table` or `db.table`), keyed by
    /// the event-time and sequence columns.
    pub fn new(
        name: impl Into<String>,
        clickhouse_table: impl Into<String>,
        timestamp_column: impl Into<String>,
        sequence_column: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            clickhouse_table: clickhouse_table.into(),
            iceberg_table: None,
            timestamp_column: timestamp_column.into(),
            sequence_column: sequence_column.into(),
            content_columns: None,
            sum_columns: Vec::new(),
            kafka_topic: None,
            kafka_columns: KafkaColumns::Auto,
            committed: CommittedSource::TableMetadata,
            expired_before: None,
        }
    }

    /// The spec of an offloaded table: name, source table, sink table (with
    /// `default_namespace` prefixed when it has none), watermark columns, and
    /// the committed watermark read from the sink's own metadata.
    ///
    /// ```
    /// use offload_core::TableConfig;
    /// let cfg = TableConfig::builder("trades").timestamp_column("ts").sequence_column("seq").build().unwrap();
    /// let spec = offload_reconcile::TableSpec::from_table_config(&cfg, "lake");
    /// assert_eq!(spec.iceberg(), Some("lake.trades"));
    /// ```
    pub fn from_table_config(cfg: &TableConfig, default_namespace: &str) -> Self {
        let sink = cfg.sink_table();
        let sink = if sink.contains('.') {
            sink.to_owned()
        } else {
            format!("{default_namespace}.{sink}")
        };
        Self::new(
            cfg.name(),
            cfg.source_table(),
            cfg.timestamp_column(),
            cfg.sequence_column(),
        )
        .iceberg_table(sink)
    }

    /// The report name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Iceberg table, when set.
    pub fn iceberg(&self) -> Option<&str> {
        self.iceberg_table.as_deref()
    }

    /// Compares with this Iceberg table (`namespace.table`).
    pub fn iceberg_table(mut self, name: impl Into<String>) -> Self {
        self.iceberg_table = Some(name.into());
        self
    }

    /// Fingerprints exactly these columns, in this order (default: every
    /// column present in ClickHouse and Iceberg with a fingerprint encoding,
    /// in ClickHouse order, except the key columns).
    pub fn content_columns<I: IntoIterator<Item = S>, S: Into<String>>(mut self, cols: I) -> Self {
        self.content_columns = Some(cols.into_iter().map(Into::into).collect());
        self
    }

    /// Sums these integer or decimal columns exactly (default: none).
    pub fn sum_columns<I: IntoIterator<Item = S>, S: Into<String>>(mut self, cols: I) -> Self {
        self.sum_columns = cols.into_iter().map(Into::into).collect();
        self
    }

    /// Compares with this Kafka topic (needs a [`KafkaLayer`](crate::KafkaLayer)).
    pub fn kafka_topic(mut self, topic: impl Into<String>) -> Self {
        self.kafka_topic = Some(topic.into());
        self
    }

    /// Which columns hold the Kafka partition and offset.
    pub fn kafka_columns(mut self, cols: KafkaColumns) -> Self {
        self.kafka_columns = cols;
        self
    }

    /// Where the committed watermark comes from (default: the Iceberg table metadata).
    pub fn committed(mut self, source: CommittedSource) -> Self {
        self.committed = source;
        self
    }

    /// ClickHouse's TTL horizon (µs): buckets starting before it may have lost rows there.
    pub fn expired_before(mut self, micros: i64) -> Self {
        self.expired_before = Some(micros);
        self
    }
}

/// Reconciles tables over one time range.
///
/// ```no_run
/// # async fn f() {
/// use offload_reconcile::*;
/// let range = TimeRange::new(parse_instant("2024-05-01").unwrap(), parse_instant("2024-05-02").unwrap(), BucketSize::Hour).unwrap();
/// let report = Reconciler::new(ClickHouseLayer::from_url("http://localhost:8123"), range)
///     .run(&[TableSpec::new("trades", "trades", "ts", "seq")])
///     .await;
/// println!("{}", report.render_table(false));
/// std::process::exit(report.exit_code());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Reconciler {
    clickhouse: ClickHouseLayer,
    iceberg: Option<IcebergLayer>,
    #[cfg(feature = "kafka")]
    kafka: Option<KafkaLayer>,
    range: TimeRange,
    thresholds: Thresholds,
    depth: Depth,
}

/// A table's columns and plans, resolved against both layers.
struct Resolved {
    ch_plan: ChPlan,
    ice_plan: IcePlan,
    iceberg: Option<(String, iceberg::table::Table, Option<Watermark>)>,
    content: Vec<(String, ChType, ContentKind)>,
    sums: Vec<(String, ChType, ContentKind)>,
    skipped: Vec<String>,
    kafka_columns: Option<(String, String)>,
}

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

/// What one table's gathering produced, before judging.
struct Gathered {
    ch: crate::ch::ChFigures,
    ice: Option<BTreeMap<i64, Figures>>,
    ice_from: Option<&'static str>,
    #[cfg(feature = "kafka")]
    kafka: Option<KafkaSide>,
}

impl Reconciler {
    /// A reconciler over `range` reading ClickHouse through `clickhouse`.
    pub fn new(clickhouse: ClickHouseLayer, range: TimeRange) -> Self {
        Self {
            clickhouse,
            iceberg: None,
            #[cfg(feature = "kafka")]
            kafka: None,
            range,
            thresholds: Thresholds::default(),
            depth: Depth::Full,
        }
    }

    /// Compares ClickHouse with Iceberg tables from this catalog.
    pub fn with_iceberg(mut self, iceberg: IcebergLayer) -> Self {
        self.iceberg = Some(iceberg);
        self
    }

    /// Compares ClickHouse with Kafka topics of this cluster.
    #[cfg(feature = "kafka")]
    pub fn with_kafka(mut self, kafka: KafkaLayer) -> Self {
        self.kafka = Some(kafka);
        self
    }

    /// Sets the thresholds (default exact).
    pub fn with_thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Sets the depth (default [`Depth::Full`]).
    pub fn with_depth(mut self, depth: Depth) -> Self {
        self.depth = depth;
        self
    }

    /// The range.
    pub fn range(&self) -> TimeRange {
        self.range
    }

    /// Reconciles every table (one after the other, each with its layers
    /// queried concurrently), records the metrics gauges and returns the report.
    /// A table that fails gets the `error` verdict; the others still run.
    pub async fn run(&self, tables: &[TableSpec]) -> Report {
        let mut out = Vec::with_capacity(tables.len());
        for t in tables {
            let started = Instant::now();
            let r = match self.table(t).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(table = t.name, error = %e, "reconciliation failed");
                    TableReport::failed(
                        &t.name,
                        &t.clickhouse_table,
                        &e,
                        started.elapsed().as_millis() as u64,
                    )
                }
            };
            out.push(r);
        }
        let now = system_time_to_micros(SystemTime::now());
        let report = Report {
            generated_at: now,
            generated_at_utc: rfc3339_micros(now),
            range_start: self.range.start(),
            range_end: self.range.end(),
            bucket: self.range.size(),
            thresholds: self.thresholds.clone(),
            verdict: out.iter().map(|t| t.verdict).max().unwrap_or(Verdict::Ok),
            tables: out,
        };
        report.record_metrics();
        report
    }

    /// Resolves a table's columns, plans and committed watermark.
    async fn resolve(&self, spec: &TableSpec) -> Result<Resolved, Error> {
        let full = self.depth == Depth::Full;
        let table_sql = quote_table(&spec.clickhouse_table)?;
        let ch_cols = self.clickhouse.describe(&spec.clickhouse_table).await?;
        let ch_col = |name: &str| -> Result<ChType, Error> {
            ch_cols
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| Error::MissingColumn {
                    layer: "ClickHouse",
                    table: spec.clickhouse_table.clone(),
                    column: name.to_owned(),
                })
        };
        let ts_type = ch_col(&spec.timestamp_column)?;
        let seq_type = ch_col(&spec.sequence_column)?;
        let kafka_columns = match &spec.kafka_columns {
            KafkaColumns::Off => None,
            KafkaColumns::Named { partition, offset } => {
                ch_col(partition)?;
                ch_col(offset)?;
                Some((partition.clone(), offset.clone()))
            }
            KafkaColumns::Auto => {
                let has = |n: &str| ch_cols.iter().any(|(c, _)| c == n);
                (has("kafka_partition") && has("kafka_offset"))
                    .then(|| ("kafka_partition".to_owned(), "kafka_offset".to_owned()))
            }
        };

        // Iceberg: the table, its columns and the committed watermark.
        let iceberg = match (&self.iceberg, &spec.iceberg_table) {
            (Some(layer), Some(name)) => {
                let (table, committed) = match &spec.committed {
                    // One metadata file answers both: the snapshot scanned and
                    // the watermark it carries cannot disagree.
                    CommittedSource::TableMetadata => {
                        let table = layer.load(name).await?;
                        let w = lake::committed_from_metadata(&table)?;
                        (table, w)
                    }
                    CommittedSource::Fixed(w) => (layer.load(name).await?, *w),
                    CommittedSource::Sink { sink, table: cfg } => {
                        load_between_equal_watermarks(layer, name, sink.as_ref(), cfg).await?
                    }
                };
                Some((name.clone(), table, committed))
            }
            (None, Some(name)) => {
                return Err(Error::InvalidConfig {
                    field: "iceberg",
                    reason: format!(
                        "table {} names Iceberg table {name} but no catalog was given",
                        spec.name
                    ),
                });
            }
            _ => None,
        };
        let ice_cols = iceberg.as_ref().map(|(_, t, _)| lake::column_names(t));
        for key in [&spec.timestamp_column, &spec.sequence_column] {
            if let (Some(cols), Some((name, _, _))) = (&ice_cols, &iceberg)
                && !cols.contains(key)
            {
                return Err(Error::MissingColumn {
                    layer: "Iceberg",
                    table: name.clone(),
                    column: key.clone(),
                });
            }
        }

        // Content and sum columns.
        let keys = [spec.timestamp_column.as_str(), spec.sequence_column.as_str()];
        let in_iceberg = |c: &str| ice_cols.as_ref().is_none_or(|cols| cols.iter().any(|x| x == c));
        let mut content = Vec::new();
        let mut skipped = Vec::new();
        match &spec.content_columns {
            Some(list) => {
                for c in list {
                    let ty = ch_col(c)?;
                    if !in_iceberg(c) {
                        return Err(Error::MissingColumn {
                            layer: "Iceberg",
                            table: spec.iceberg_table.clone().unwrap_or_default(),
                            column: c.clone(),
                        });
                    }
                    let kind = ty.content_kind().map_err(|reason| Error::UnsupportedColumn {
                        column: c.clone(),
                        type_name: ty.text.clone(),
                        role: "content",
                        reason,
                    })?;
                    content.push((c.clone(), ty, kind));
                }
            }
            None => {
                for (c, ty) in &ch_cols {
                    if keys.contains(&c.as_str()) {
                        continue;
                    }
                    if !in_iceberg(c) {
                        skipped.push(format!("{c} ({}): not in the Iceberg table", ty.text));
                        continue;
                    }
                    match ty.content_kind() {
                        Ok(kind) => content.push((c.clone(), ty.clone(), kind)),
                        Err(reason) => skipped.push(format!("{c} ({}): {reason}", ty.text)),
                    }
                }
            }
        }
        let mut sums = Vec::new();
        for c in &spec.sum_columns {
            let ty = ch_col(c)?;
            let kind =
                ty.content_kind()
                    .ok()
                    .filter(|k| k.summable())
                    .ok_or_else(|| Error::UnsupportedColumn {
                        column: c.clone(),
                        type_name: ty.text.clone(),
                        role: "sum",
                        reason: "only integers and decimals are summed exactly".into(),
                    })?;
            if !in_iceberg(c) {
                return Err(Error::MissingColumn {
                    layer: "Iceberg",
                    table: spec.iceberg_table.clone().unwrap_or_default(),
                    column: c.clone(),
                });
            }
            sums.push((c.clone(), ty, kind));
        }

        let committed = iceberg.as_ref().map(|(_, _, w)| *w);
        let ch_plan = ChPlan {
            table_sql,
            ts: (spec.timestamp_column.clone(), ts_type),
            seq: (spec.sequence_column.clone(), seq_type),
            content: content.clone(),
            sums: sums.clone(),
            kafka_columns: kafka_columns.clone(),
            range: self.range,
            split: committed,
            full,
        };
        let ice_plan = IcePlan {
            ts: spec.timestamp_column.clone(),
            seq: spec.sequence_column.clone(),
            content: content.iter().map(|(n, _, k)| (n.clone(), *k)).collect(),
            sums: sums.iter().map(|(n, _, k)| (n.clone(), *k)).collect(),
            range: self.range,
            full,
        };

        Ok(Resolved {
            ch_plan,
            ice_plan,
            iceberg,
            content,
            sums,
            skipped,
            kafka_columns,
        })
    }

    /// The `(ts, seq, row_hash)` of every row of one bucket in ClickHouse and
    /// (when the table has one) Iceberg, sorted, computed exactly as the
    /// reconciliation computes them: for finding which rows differ by hand,
    /// and for checking the hash definition.
    pub async fn row_hashes(&self, spec: &TableSpec, bucket: crate::Bucket) -> Result<RowHashes, Error> {
        let r = self.resolve(spec).await?;
        let clickhouse = self
            .clickhouse
            .keys(&r.ch_plan, bucket, false)
            .await?
            .into_iter()
            .map(|k| RowHash {
                ts: k.ts,
                seq: k.seq,
                hash: k.hash,
            })
            .collect();
        let iceberg = match &r.iceberg {
            Some((_, table, _)) => Some(
                lake::keys(table, &r.ice_plan, bucket)
                    .await?
                    .into_iter()
                    .map(|(ts, seq, hash)| RowHash { ts, seq, hash })
                    .collect(),
            ),
            None => None,
        };
        Ok(RowHashes {
            clickhouse,
            iceberg,
            content_columns: info(&r.content),
        })
    }

    /// Reconciles one table.
    pub async fn table(&self, spec: &TableSpec) -> Result<TableReport, Error> {
        let started = Instant::now();
        let Resolved {
            ch_plan,
            ice_plan,
            iceberg,
            content,
            sums,
            skipped,
            kafka_columns,
        } = self.resolve(spec).await?;
        let committed = iceberg.as_ref().map(|(_, _, w)| *w);
        let gathered = self
            .gather(spec, &ch_plan, &ice_plan, iceberg.as_ref().map(|(_, t, _)| t))
            .await?;
        let mut report = self.assemble(spec, &gathered, committed, kafka_columns.is_some())?;
        report.iceberg_table = iceberg.as_ref().map(|(n, _, _)| n.clone());
        report.committed_watermark = committed.flatten().map(|w| w.to_string());
        report.iceberg_counts_from = gathered.ice_from.map(str::to_owned);
        report.content_columns = info(&content);
        report.sum_columns = info(&sums);
        report.skipped_columns = skipped;

        // Details for the buckets that need them.
        self.list_keys(
            &mut report,
            &ch_plan,
            &ice_plan,
            iceberg.as_ref().map(|(_, t, _)| t),
        )
        .await?;
        #[cfg(feature = "kafka")]
        if let (Some(k), Some(_)) = (&gathered.kafka, &kafka_columns) {
            self.list_offsets(&mut report, &ch_plan, k).await?;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    async fn gather(
        &self,
        spec: &TableSpec,
        ch_plan: &ChPlan,
        ice_plan: &IcePlan,
        table: Option<&iceberg::table::Table>,
    ) -> Result<Gathered, Error> {
        let ch = self.clickhouse.figures(ch_plan);
        let ice = async {
            let Some(table) = table else {
                return Ok::<_, Error>((None, None));
            };
            if !ice_plan.full
                && let Some(counts) = lake::manifest_counts(table, &ice_plan.ts, self.range).await?
            {
                return Ok((Some(counts), Some("manifests")));
            }
            Ok((Some(lake::figures(table, ice_plan).await?), Some("scan")))
        };
        #[cfg(feature = "kafka")]
        let kafka = async {
            match (&self.kafka, &spec.kafka_topic) {
                (Some(k), Some(topic)) => k.figures(topic, self.range).await.map(Some),
                (None, Some(topic)) => Err(Error::InvalidConfig {
                    field: "kafka",
                    reason: format!(
                        "table {} names topic {topic} but no Kafka cluster was given",
                        spec.name
                    ),
                }),
                _ => Ok(None),
            }
        };
        #[cfg(not(feature = "kafka"))]
        if let Some(topic) = &spec.kafka_topic {
            return Err(Error::InvalidConfig {
                field: "kafka",
                reason: format!("topic {topic}: built without the `kafka` feature"),
            });
        }
        #[cfg(feature = "kafka")]
        let (ch, (ice, ice_from), kafka) = tokio::try_join!(ch, ice, kafka)?;
        #[cfg(not(feature = "kafka"))]
        let (ch, (ice, ice_from)) = tokio::try_join!(ch, ice)?;
        Ok(Gathered {
            ch,
            ice,
            ice_from,
            #[cfg(feature = "kafka")]
            kafka,
        })
    }

    fn assemble(
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
        })
    }

    /// Lists the differing keys of buckets where few rows differ.
    async fn list_keys(
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
    async fn list_offsets(
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

/// Loads the table between two reads of the sink's watermark that agree, so
/// no commit landed in between: the snapshot scanned holds exactly the rows
/// at or below that watermark. (Watermarks only grow, so equal reads mean no
/// commit.) Retries a few times while an offload is committing.
async fn load_between_equal_watermarks(
    layer: &IcebergLayer,
    name: &str,
    sink: &dyn Sink,
    cfg: &TableConfig,
) -> Result<(iceberg::table::Table, Option<Watermark>), Error> {
    let read = async || -> Result<Option<Watermark>, Error> {
        Ok(sink
            .committed(cfg)
            .await
            .map_err(|e| Error::Sink(Box::new(e)))?
            .map(|c| c.until))
    };
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let before = read().await?;
        let table = layer.load(name).await?;
        if read().await? == before {
            return Ok((table, before));
        }
    }
    Err(Error::Unstable {
        what: format!("the committed watermark of {name} ({ATTEMPTS} reads)"),
    })
}

fn info(cols: &[(String, ChType, ContentKind)]) -> Vec<ColumnInfo> {
    cols.iter()
        .map(|(n, t, k)| ColumnInfo {
            name: n.clone(),
            clickhouse_type: t.text.clone(),
            kind: *k,
        })
        .collect()
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
