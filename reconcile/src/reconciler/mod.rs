//! The reconciler: gathers every layer's figures for each table, judges every
//! bucket, and fetches the differing keys and offsets when they are few.
//!
//! [`spec`] says what to compare, [`plan`] resolves the columns and runs the
//! queries and scans, [`diff`] compares the figures and lists the differences.

use std::time::Instant;

#[cfg(feature = "kafka")]
use crate::KafkaLayer;
use crate::lake;
use crate::report::{Report, TableReport};
use crate::{ClickHouseLayer, Error, IcebergLayer, Thresholds, TimeRange};
use plan::info;

mod diff;
mod plan;
mod spec;

pub use diff::{RowHash, RowHashes};
pub use spec::{CommittedSource, Depth, KafkaColumns, TableSpec};

/// Reconciles tables over one time range.
///
/// ```no_run
/// # async fn f() {
/// use offload_reconcile::*;
/// let range = TimeRange::new(parse_instant("2024-05-01").unwrap(), parse_instant("2024-05-02").unwrap(), BucketSize::Hour).unwrap();
/// let report = Reconciler::new(ClickHouseLayer::from_url("http://localhost:8123"), range)
///     .run(&[TableSpec::new("trades", "trades", "ts", "seq")])
///     .await;
/// print!("{}", report.render(Format::Table { all_buckets: false })); // or Format::Json
/// std::process::exit(report.exit_code()); // 0 ok, 1 data problem, 2 error
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
        let mut report = Report::empty(self.range, self.thresholds.clone());
        for t in out {
            report.push(t);
        }
        report.record_metrics();
        report
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
        let r = self.resolve(spec).await?;
        let table = r.iceberg.as_ref().map(|(_, t, _)| t);
        let committed = r.iceberg.as_ref().map(|(_, _, w)| *w);
        let gathered = self.gather(spec, &r.ch_plan, &r.ice_plan, table).await?;
        let mut report = self.assemble(spec, &gathered, committed, r.kafka_columns.is_some())?;
        report.iceberg_table = r.iceberg.as_ref().map(|(n, _, _)| n.clone());
        report.committed_watermark = committed.flatten().map(|w| w.to_string());
        report.iceberg_counts_from = gathered.ice_from.map(str::to_owned);
        report.content_columns = info(&r.content);
        report.sum_columns = info(&r.sums);
        report.skipped_columns = r.skipped;

        // Details for the buckets that need them.
        self.list_keys(&mut report, &r.ch_plan, &r.ice_plan, table)
            .await?;
        #[cfg(feature = "kafka")]
        if let (Some(k), Some(_)) = (&gathered.kafka, &r.kafka_columns) {
            self.list_offsets(&mut report, &r.ch_plan, k).await?;
        }
        // After the keys are listed: a bucket straddling the sweep's edge is split by key.
        report.classify_late_rows(committed.flatten(), spec.late_horizon, spec.sweep_bucket);
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}
