//! `[[tables]]`: what to offload, and how each table is laid out in Iceberg.

use serde::Deserialize;

use super::value::Dur;

/// One `[[tables]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    /// Key in the store, logs and metrics.
    pub name: String,
    /// ClickHouse table, `table` or `database.table` (default: `name`).
    pub source_table: Option<String>,
    /// Iceberg table, `table` or `namespace.table` (default: `name`, in
    /// `iceberg.namespace`).
    pub sink_table: Option<String>,
    /// Event-time column (`DateTime` / `DateTime64`).
    pub timestamp_column: String,
    /// Sequence column (integer): orders rows sharing a timestamp. Optional
    /// when `key_columns` is given: it then names the derived sequence
    /// column (default `_offload_key`), which must not be a column of the table.
    pub sequence_column: Option<String>,
    /// For a table without a sequence column: columns that together are
    /// unique per row; the sequence is derived from them in ClickHouse
    /// (`sipHash64` of the key, see the README).
    pub key_columns: Option<Vec<String>>,
    /// Columns to copy (default: all).
    pub columns: Option<Vec<String>>,
    /// Hold-back for late rows (default: the engine's, 5m).
    pub lag: Option<Dur>,
    /// Rows per batch (default: the engine's).
    pub batch_size: Option<usize>,
    /// Largest event-time span per run, measured from the oldest row not yet
    /// offloaded, so a first run on months of data (a backfill) proceeds in
    /// steps (default: the engine's, 1h; `"0s"`: unbounded, every run takes
    /// everything up to the high watermark).
    pub max_window: Option<Dur>,
    /// How far below the committed watermark each run sweeps for rows that
    /// arrived after their window was committed (default 7d; `"0s"` turns the
    /// sweep off). Rows older than this are reported, never repaired.
    pub late_horizon: Option<Dur>,
    /// Width of the time buckets the sweep compares (default 1h).
    pub sweep_bucket: Option<Dur>,
    /// Extra ClickHouse `WHERE` condition, e.g. `symbol != 'TEST'` (row-only, no `now()`).
    pub filter: Option<String>,
    /// Iceberg partition fields, in order (default: `day` of the timestamp
    /// column; `[]` = unpartitioned).
    pub partition: Option<Vec<PartitionSection>>,
    /// What `offload reconcile` compares for this table.
    #[serde(default)]
    pub reconcile: TableReconcileSection,
}

/// One partition field: `{ column = "symbol", transform = "bucket[16]" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSection {
    /// Source column (default: the table's timestamp column).
    pub column: Option<String>,
    /// `identity`, `year`, `month`, `day`, `hour`, `bucket[N]` or `truncate[W]`.
    pub transform: TransformName,
}

/// A partition transform in Iceberg's spelling, parsed by the sink's own
/// [`Transform`](offload_sink_iceberg::Transform) grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformName(pub offload_sink_iceberg::Transform);

impl<'de> Deserialize<'de> for TransformName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map(TransformName)
            .map_err(serde::de::Error::custom)
    }
}

/// `[tables.reconcile]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableReconcileSection {
    /// Kafka topic the table is ingested from (compared when `[reconcile.kafka]` is set).
    pub kafka_topic: Option<String>,
    /// Fingerprint exactly these columns (default: every column both sides share).
    pub content_columns: Option<Vec<String>>,
    /// Integer / decimal columns summed exactly per bucket.
    #[serde(default)]
    pub sum_columns: Vec<String>,
}

impl TableSection {
    /// The table as an offload-core configuration, adapter options attached;
    /// `key` is its key path (`tables[i]`) for errors.
    pub(crate) fn to_config(&self, key: &str) -> Result<offload_core::TableConfig, super::ConfigError> {
        use offload_sink_iceberg::{IcebergTableOptions, PartitionField};
        use offload_source_clickhouse::ClickHouseTableOptions;

        let sequence_column = match (&self.sequence_column, &self.key_columns) {
            (Some(seq), _) => seq.clone(),
            (None, Some(_)) => offload_source_clickhouse::derived::DEFAULT_SEQUENCE_COLUMN.to_owned(),
            (None, None) => {
                return Err(super::ConfigError::invalid(
                    &format!("{key}.sequence_column"),
                    "missing: give sequence_column, or key_columns for a table without one",
                ));
            }
        };
        let mut b = offload_core::TableConfig::builder(&self.name)
            .source_table(self.source_table.clone().unwrap_or_else(|| self.name.clone()))
            .sink_table(self.sink_table.clone().unwrap_or_else(|| self.name.clone()))
            .timestamp_column(&self.timestamp_column)
            .sequence_column(sequence_column);
        if let Some(cols) = &self.columns {
            b = b.columns(cols.clone());
        }
        if let Some(l) = self.lag {
            b = b.lag(l.0);
        }
        if let Some(n) = self.batch_size {
            b = b.batch_size(n);
        }
        match self.max_window {
            Some(w) if w.0.is_zero() => b = b.unbounded_window(),
            Some(w) => b = b.max_window(w.0),
            None => {}
        }
        if let Some(h) = self.late_horizon {
            b = b.late_horizon(h.0);
        }
        if let Some(w) = self.sweep_bucket {
            b = b.sweep_bucket(w.0);
        }
        if let Some(fields) = &self.partition {
            let mut opts = IcebergTableOptions::default();
            if fields.is_empty() {
                opts = opts.unpartitioned();
            }
            for (j, f) in fields.iter().enumerate() {
                let column = f.column.clone().unwrap_or_else(|| self.timestamp_column.clone());
                if column.trim().is_empty() {
                    return Err(super::ConfigError::invalid(
                        &format!("{key}.partition[{j}].column"),
                        "must not be empty",
                    ));
                }
                let transform = f.transform.0.clone();
                opts = opts.partition_by(PartitionField::new(column, transform));
            }
            b = b.option(opts);
        }
        if self.filter.is_some() || self.key_columns.is_some() {
            let mut opts = ClickHouseTableOptions::default();
            if let Some(sql) = &self.filter {
                opts = opts.filter(sql);
            }
            if let Some(keys) = &self.key_columns {
                opts = opts.key_columns(keys.clone());
                opts.validate()
                    .map_err(|e| super::ConfigError::invalid(&format!("{key}.key_columns"), e.to_string()))?;
            }
            b = b.option(opts);
        }
        b.build().map_err(|source| super::ConfigError::Table {
            key: key.to_owned(),
            table: self.name.clone(),
            source,
        })
    }
}
