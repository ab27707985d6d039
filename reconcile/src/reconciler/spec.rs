//! What to compare: the tables ([`TableSpec`]), where each one's committed
//! watermark comes from ([`CommittedSource`]), which columns carry Kafka
//! coordinates ([`KafkaColumns`]), and how deep to look ([`Depth`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use offload_core::{Sink, SinkTable, TableConfig, Watermark};
use offload_sink_iceberg::IcebergTable;
use offload_source_clickhouse::ClickHouseTableOptions;
use serde::{Deserialize, Serialize};

use crate::Error;

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

impl Depth {
    /// The lower-case name: `full` or `counts`.
    pub fn as_str(self) -> &'static str {
        match self {
            Depth::Full => "full",
            Depth::Counts => "counts",
        }
    }
}

impl fmt::Display for Depth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ```
/// use offload_reconcile::Depth;
/// assert_eq!("counts".parse::<Depth>().unwrap(), Depth::Counts);
/// assert_eq!("full".parse::<Depth>().unwrap().to_string(), "full");
/// assert!("deep".parse::<Depth>().is_err());
/// ```
impl FromStr for Depth {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "full" => Ok(Depth::Full),
            "counts" => Ok(Depth::Counts),
            _ => Err(Error::InvalidConfig {
                field: "depth",
                reason: format!("{s:?} is not full or counts"),
            }),
        }
    }
}

/// Where the sink's committed watermark comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum CommittedSource {
    /// The Iceberg table's own metadata, as `offload-sink-iceberg` writes it
    /// (snapshot summary `offload.window.until`, else table property
    /// `offload.watermark`). The default.
    TableMetadata,
    /// An opened sink table's [`SinkTable::committed`] (any `offload-core`
    /// sink; see [`CommittedSource::open`]).
    Sink(Arc<dyn SinkTable>),
    /// A known value (`None`: nothing committed).
    Fixed(Option<Watermark>),
}

impl CommittedSource {
    /// Opens `table` in `sink` ([`Sink::open`]) and reads the watermark from the
    /// handle, exactly as the engine sees it.
    pub async fn open(sink: &dyn Sink, table: &TableConfig) -> Result<Self, Error> {
        let handle = sink.open(table).await.map_err(|e| Error::Sink(Box::new(e)))?;
        Ok(CommittedSource::Sink(handle))
    }
}

impl fmt::Debug for CommittedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommittedSource::TableMetadata => f.write_str("TableMetadata"),
            CommittedSource::Sink(t) => write!(f, "Sink({})", t.config().name()),
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
    pub(crate) name: String,
    pub(crate) clickhouse_table: String,
    pub(crate) iceberg_table: Option<String>,
    pub(crate) timestamp_column: String,
    pub(crate) sequence_column: String,
    pub(crate) content_columns: Option<Vec<String>>,
    pub(crate) sum_columns: Vec<String>,
    pub(crate) kafka_topic: Option<String>,
    pub(crate) kafka_columns: KafkaColumns,
    pub(crate) committed: CommittedSource,
    pub(crate) expired_before: Option<i64>,
    pub(crate) key_columns: Option<Vec<String>>,
    pub(crate) late_horizon: Option<Duration>,
    pub(crate) sweep_bucket: Duration,
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
            key_columns: None,
            late_horizon: None,
            sweep_bucket: offload_core::DEFAULT_SWEEP_BUCKET,
        }
    }

    /// The spec of an offloaded table, from the same [`TableConfig`] the
    /// engine offloads it with: name, source table, sink table, watermark
    /// columns. A sink table without a namespace is looked up where the sink
    /// puts it: in the [`IcebergLayer`](crate::IcebergLayer)'s default
    /// namespace ([`DEFAULT_NAMESPACE`](offload_sink_iceberg::DEFAULT_NAMESPACE),
    /// `offload`, unless set otherwise). The committed watermark is read from
    /// the table's metadata; use [`from_sink_table`](TableSpec::from_sink_table)
    /// to read it through the sink.
    ///
    /// ```
    /// use offload_core::TableConfig;
    /// let cfg = TableConfig::builder("trades").timestamp_column("ts").sequence_column("seq").build().unwrap();
    /// let spec = offload_reconcile::TableSpec::from_table_config(&cfg);
    /// assert_eq!((spec.name(), spec.clickhouse(), spec.iceberg()), ("trades", "trades", Some("trades")));
    /// ```
    pub fn from_table_config(cfg: &TableConfig) -> Self {
        Self::new(
            cfg.name(),
            cfg.source_table(),
            cfg.timestamp_column(),
            cfg.sequence_column(),
        )
        .key_columns_of(cfg)
        .iceberg_table(cfg.sink_table())
        .late_horizon(cfg.late_horizon())
        .sweep_bucket(cfg.sweep_bucket())
    }

    /// [`from_table_config`](TableSpec::from_table_config) of the handle's
    /// config, with the committed watermark read through the handle
    /// ([`CommittedSource::Sink`]).
    pub fn from_sink_table(table: Arc<dyn SinkTable>) -> Self {
        Self::from_table_config(table.config()).committed(CommittedSource::Sink(table))
    }

    /// The spec of a table opened in the Iceberg sink
    /// ([`IcebergSink::open_table`](offload_sink_iceberg::IcebergSink::open_table)):
    /// the Iceberg table is the identifier the sink resolved (its default
    /// namespace applied), the committed watermark is read through the handle.
    /// The surest way to compare exactly what `offload` writes.
    pub fn from_iceberg_table(table: IcebergTable) -> Self {
        let ident = table.ident().to_string();
        Self::from_sink_table(Arc::new(table)).iceberg_table(ident)
    }

    /// The report name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ClickHouse table (`table` or `db.table`).
    pub fn clickhouse(&self) -> &str {
        &self.clickhouse_table
    }

    /// The Kafka topic, when set.
    pub fn topic(&self) -> Option<&str> {
        self.kafka_topic.as_deref()
    }

    /// The Iceberg table, when set.
    pub fn iceberg(&self) -> Option<&str> {
        self.iceberg_table.as_deref()
    }

    /// Compares with this Iceberg table (`namespace.table`, or `table` in the
    /// [`IcebergLayer`](crate::IcebergLayer)'s default namespace).
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

    /// Compares with this Kafka topic (needs a `KafkaLayer`, feature `kafka`).
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

    /// The key columns of a derived sequence, when `cfg` carries the
    /// ClickHouse source's [`ClickHouseTableOptions::key_columns`].
    fn key_columns_of(self, cfg: &TableConfig) -> Self {
        match cfg
            .option::<ClickHouseTableOptions>()
            .and_then(ClickHouseTableOptions::key_columns_list)
        {
            Some(keys) => self.key_columns(keys.iter().cloned()),
            None => self,
        }
    }

    /// The table has no sequence column: its sequence is derived from these
    /// key columns exactly as the ClickHouse source derives it
    /// ([`ClickHouseTableOptions::key_columns`], set by
    /// [`from_table_config`](TableSpec::from_table_config) when the config
    /// carries it). On the ClickHouse side the sequence column is then the
    /// source's expression over the keys; on the Iceberg side it is the
    /// column the offload materialised under the sequence column's name.
    pub fn key_columns<I: IntoIterator<Item = S>, S: Into<String>>(mut self, cols: I) -> Self {
        self.key_columns = Some(cols.into_iter().map(Into::into).collect());
        self
    }

    /// The engine's [`TableConfig::late_horizon`] for this table (set by
    /// [`from_table_config`](TableSpec::from_table_config); zero: the sweep is
    /// off). With it, the report tells which `missing` buckets the next
    /// sweep repairs ([`TableReport::late_repairable_buckets`](crate::TableReport::late_repairable_buckets))
    /// and which it does not. Without it (the default of [`TableSpec::new`])
    /// the report says nothing about the sweep.
    pub fn late_horizon(mut self, horizon: Duration) -> Self {
        self.late_horizon = Some(horizon);
        self
    }

    /// The engine's [`TableConfig::sweep_bucket`] (default
    /// [`DEFAULT_SWEEP_BUCKET`](offload_core::DEFAULT_SWEEP_BUCKET)): the sweep
    /// repairs whole buckets of this width, so its edge is the start of the
    /// bucket holding `committed watermark - late_horizon`.
    pub fn sweep_bucket(mut self, width: Duration) -> Self {
        self.sweep_bucket = width;
        self
    }
}
