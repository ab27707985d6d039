//! [`IcebergSink`]: offload-core's `Sink` on an Iceberg catalog.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use offload_core::{Error, Sink, SinkTable, TableConfig};

use crate::catalog::connect;
use crate::config::IcebergSinkConfig;
use crate::table::IcebergTable;
use crate::{IcebergSinkError, IcebergTableOptions, TableName};

/// Apache Iceberg implementation of offload-core's [`Sink`].
///
/// [`open`](Sink::open) (typed: [`open_table`](Self::open_table)) resolves a
/// table's configuration once into an [`IcebergTable`]: its Iceberg
/// identifier (parsed with [`TableName::parse`]) and its
/// [`IcebergTableOptions`]. The handle does the work:
///
/// * [`prepare`](SinkTable::prepare) creates the table from the source's Arrow
///   schema (partitioned per the [`IcebergTableOptions`], sorted by timestamp
///   and sequence) or evolves it (new columns are added as optional;
///   incompatible changes are a typed error naming the column).
/// * [`begin`](SinkTable::begin) returns a writer that encodes zstd Parquet on
///   background tasks, fanning out across partitions and rolling files at the
///   target size. Its `finish` returns an [`IcebergStaged`](crate::IcebergStaged);
///   nothing is visible until that is committed.
/// * [`IcebergStaged::commit`](crate::IcebergStaged) appends the files in one
///   `fast_append` transaction that also records the window in the snapshot
///   summary and the watermark in the table properties, fenced so it only
///   lands if the table's committed watermark is still the window's lower bound.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use arrow_array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
/// use arrow_schema::{DataType, Field, Schema, TimeUnit};
/// use offload_core::{CommitMetadata, RunId, Sink, TableConfig, Watermark, Window};
/// use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
///
/// let dir = tempfile::tempdir()?;
/// let catalog = CatalogConfig::sqlite(dir.path().join("catalog.db"), dir.path().join("wh").to_str().unwrap());
/// let sink = IcebergSink::connect(IcebergSinkConfig::new(catalog)).await?;
///
/// let config = TableConfig::builder("trades")
///     .sink_table("lake.trades")
///     .timestamp_column("ts")
///     .sequence_column("seq")
///     .build()?;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
///     Field::new("seq", DataType::Int64, false),
/// ]));
/// let table = sink.open(&config).await?;
/// table.prepare(schema.clone()).await?;
///
/// let run_id = RunId::new();
/// let mut writer = table.begin(run_id, schema.clone()).await?;
/// writer.write(RecordBatch::try_new(schema, vec![
///     Arc::new(TimestampMicrosecondArray::from(vec![1_000, 2_000]).with_timezone("UTC")),
///     Arc::new(Int64Array::from(vec![1, 2])),
/// ])?).await?;
/// let staged = writer.finish().await?;
///
/// let window = Window::new(Watermark::MIN, Watermark::new(2_000, 2))?;
/// let meta = CommitMetadata { window, run_id, engine_id: "doc".into(), fencing_token: 1 };
/// staged.commit(&meta).await?;
/// assert_eq!(table.committed().await?.unwrap().until, Watermark::new(2_000, 2));
/// assert!(table.was_committed(run_id).await?);
///
/// // A second commit of the same window is fenced off.
/// let again = staged.commit(&meta).await.unwrap_err();
/// assert!(matches!(again, offload_core::Error::CommitConflict { .. }));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IcebergSink {
    inner: Arc<SinkInner>,
}

/// What every table handle of one sink shares.
pub(crate) struct SinkInner {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) config: IcebergSinkConfig,
}

impl fmt::Debug for IcebergSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the catalog itself: its Debug may print connection options.
        f.debug_struct("IcebergSink")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl IcebergSink {
    /// Validates the configuration and connects to the catalog (creating the
    /// SQLite file and the SQL catalog's tables when missing), within the
    /// configured [`connect_timeout`](IcebergSinkConfig::connect_timeout).
    pub async fn connect(config: IcebergSinkConfig) -> Result<Self, IcebergSinkError> {
        config.validate()?;
        let catalog = tokio::time::timeout(config.connect_timeout, connect(config.catalog()))
            .await
            .map_err(|_| IcebergSinkError::Timeout {
                operation: "connect to the catalog",
                after: config.connect_timeout,
            })??;
        Ok(Self::with_catalog(catalog, config))
    }

    /// Uses an already built catalog (any [`Catalog`] implementation); the
    /// catalog part of `config` is then only used for `Debug` output.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{collections::HashMap, sync::Arc};
    /// use iceberg::CatalogBuilder;
    /// use iceberg::memory::{MemoryCatalogBuilder, MEMORY_CATALOG_WAREHOUSE};
    /// use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let wh = dir.path().to_str().unwrap().to_owned();
    /// let catalog = MemoryCatalogBuilder::default()
    ///     .with_storage_factory(Arc::new(iceberg::io::LocalFsStorageFactory))
    ///     .load("mem", HashMap::from([(MEMORY_CATALOG_WAREHOUSE.to_string(), wh.clone())]))
    ///     .await?;
    /// let sink = IcebergSink::with_catalog(Arc::new(catalog), IcebergSinkConfig::new(CatalogConfig::memory(wh)));
    /// assert!(format!("{sink:?}").contains("IcebergSink"));
    /// # Ok(()) }
    /// ```
    pub fn with_catalog(catalog: Arc<dyn Catalog>, config: IcebergSinkConfig) -> Self {
        Self {
            inner: Arc::new(SinkInner { catalog, config }),
        }
    }

    /// The underlying catalog (for tools: expiring snapshots, inspecting tables).
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.catalog
    }

    /// The configuration.
    pub fn config(&self) -> &IcebergSinkConfig {
        &self.inner.config
    }

    /// [`Sink::open`] with the concrete handle type: resolves `table` once
    /// (identifier, [`IcebergTableOptions`], checked) without touching the
    /// catalog. The handle is cheap to clone.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let cfg = offload_sink_iceberg::IcebergSinkConfig::new(offload_sink_iceberg::CatalogConfig::sqlite(
    /// #     dir.path().join("c.db"), dir.path().to_str().unwrap()));
    /// let sink = offload_sink_iceberg::IcebergSink::connect(cfg).await?;
    /// let t = offload_core::TableConfig::builder("trades")
    ///     .timestamp_column("ts").sequence_column("seq").build()?;
    /// let table = sink.open_table(&t)?;
    /// assert_eq!(table.ident().to_string(), "offload.trades"); // DEFAULT_NAMESPACE
    /// assert!(table.load_if_exists().await?.is_none()); // open creates nothing
    /// # Ok(()) }
    /// ```
    pub fn open_table(&self, table: &TableConfig) -> Result<IcebergTable, IcebergSinkError> {
        let ident = self.table_ident(table)?;
        let options = table.option::<IcebergTableOptions>().cloned().unwrap_or_default();
        let partitioning = options.resolve(table)?;
        Ok(IcebergTable::new(
            self.inner.clone(),
            table.clone(),
            ident,
            options,
            partitioning,
        ))
    }

    /// The Iceberg identifier for a table's `sink_table` ([`TableName::parse`]
    /// with the configured default namespace).
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let cfg = offload_sink_iceberg::IcebergSinkConfig::new(offload_sink_iceberg::CatalogConfig::sqlite(
    /// #     dir.path().join("c.db"), dir.path().to_str().unwrap()));
    /// let sink = offload_sink_iceberg::IcebergSink::connect(cfg).await?;
    /// let t = offload_core::TableConfig::builder("t").sink_table("bronze.trades")
    ///     .timestamp_column("ts").sequence_column("seq").build()?;
    /// assert_eq!(sink.table_ident(&t)?.to_string(), "bronze.trades");
    /// # Ok(()) }
    /// ```
    pub fn table_ident(&self, table: &TableConfig) -> Result<TableIdent, IcebergSinkError> {
        TableName::parse(table.sink_table(), &self.inner.config.default_namespace)
    }

    /// Loads a table's current state from the catalog (for tools and tests;
    /// a shorthand for `open_table(table)?.load()`).
    pub async fn load_table(&self, table: &TableConfig) -> Result<Table, IcebergSinkError> {
        self.open_table(table)?.load().await
    }
}

#[async_trait]
impl Sink for IcebergSink {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SinkTable>, Error> {
        Ok(Arc::new(self.open_table(table)?))
    }
}
