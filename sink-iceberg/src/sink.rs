//! [`IcebergSink`]: offload-core's `Sink` on an Iceberg catalog.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arrow_schema::SchemaRef as ArrowSchemaRef;
use async_trait::async_trait;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    NullOrder, Schema, SortDirection, SortField, SortOrder, Transform as IceTransform, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::file_writer::location_generator::DefaultLocationGenerator;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use offload_core::{
    CommitMetadata, CommittedWindow, Error, RunId, Sink, Staged, StagingWriter, TableConfig, Transform,
    Watermark,
};

use crate::catalog::{FencedCatalog, Phase, connect};
use crate::config::IcebergSinkConfig;
use crate::writer::{IcebergStagingWriter, StagedFiles, WritePlan, parse_file_name};
use crate::{IcebergSinkError, markers, schema};

/// Table property naming the sink that created a table (for operators).
const PROPERTY_CREATED_BY: &str = "offload.created-by";

/// Apache Iceberg implementation of offload-core's [`Sink`].
///
/// * [`prepare`](Sink::prepare) creates the table from the source's Arrow
///   schema (partitioned per the [`TableConfig`], sorted by timestamp and
///   sequence) or evolves it (new columns are added as optional; incompatible
///   changes are a typed error naming the column).
/// * [`begin`](Sink::begin) returns a writer that encodes zstd Parquet on
///   background tasks, fanning out across partitions and rolling files at the
///   target size. Nothing is visible until `commit`.
/// * [`commit`](Sink::commit) appends the files in one `fast_append`
///   transaction that also records the window in the snapshot summary and the
///   watermark in the table properties, fenced so it only lands if the
///   table's committed watermark is still the window's lower bound.
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
/// let table = TableConfig::builder("trades")
///     .sink_table("lake.trades")
///     .timestamp_column("ts")
///     .sequence_column("seq")
///     .build()?;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
///     Field::new("seq", DataType::Int64, false),
/// ]));
/// sink.prepare(&table, schema.clone()).await?;
///
/// let run_id = RunId::new();
/// let mut writer = sink.begin(&table, run_id, schema.clone()).await?;
/// writer.write(RecordBatch::try_new(schema, vec![
///     Arc::new(TimestampMicrosecondArray::from(vec![1_000, 2_000]).with_timezone("UTC")),
///     Arc::new(Int64Array::from(vec![1, 2])),
/// ])?).await?;
/// let staged = writer.finish().await?;
///
/// let window = Window::new(Watermark::MIN, Watermark::new(2_000, 2))?;
/// let meta = CommitMetadata { window, run_id, engine_id: "doc".into(), fencing_token: 1 };
/// sink.commit(&table, &staged, &meta).await?;
/// assert_eq!(sink.committed(&table).await?.unwrap().until, Watermark::new(2_000, 2));
/// assert!(sink.was_committed(&table, run_id).await?);
///
/// // A second commit of the same window is fenced off.
/// let again = sink.commit(&table, &staged, &meta).await.unwrap_err();
/// assert!(matches!(again, offload_core::Error::CommitConflict { .. }));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IcebergSink {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    config: IcebergSinkConfig,
    /// Staging attempts per run (file names are unique per run and attempt);
    /// an entry lives until the run commits or is aborted.
    attempts: Mutex<HashMap<RunId, u32>>,
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
    /// SQLite file and the SQL catalog's tables when missing).
    pub async fn connect(config: IcebergSinkConfig) -> Result<Self, IcebergSinkError> {
        config.validate()?;
        let catalog = tokio::time::timeout(config.operation_timeout, connect(config.catalog()))
            .await
            .map_err(|_| IcebergSinkError::Timeout {
                operation: "connect to the catalog",
                after: config.operation_timeout,
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
            inner: Arc::new(Inner {
                catalog,
                config,
                attempts: Mutex::new(HashMap::new()),
            }),
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

    /// The Iceberg identifier for a table's `sink_table`: `ns.table`,
    /// `ns1.ns2.table`, or `table` in the configured default namespace.
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
        parse_ident(table.sink_table(), &self.inner.config.default_namespace)
    }

    /// Loads the table's current state from the catalog.
    pub async fn load_table(&self, table: &TableConfig) -> Result<Table, IcebergSinkError> {
        let ident = self.table_ident(table)?;
        self.load(&ident).await
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, IcebergSinkError>>,
    ) -> Result<T, IcebergSinkError> {
        let after = self.inner.config.operation_timeout;
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| IcebergSinkError::Timeout { operation, after })?
    }

    async fn load(&self, ident: &TableIdent) -> Result<Table, IcebergSinkError> {
        self.timed("load table", async {
            self.inner
                .catalog
                .load_table(ident)
                .await
                .map_err(|e| IcebergSinkError::iceberg(format!("load table {ident}"), e))
        })
        .await
    }

    /// Loads the table, or `None` if it (or its namespace) does not exist.
    async fn load_if_exists(&self, ident: &TableIdent) -> Result<Option<Table>, IcebergSinkError> {
        match self.load(ident).await {
            Ok(t) => Ok(Some(t)),
            Err(IcebergSinkError::Iceberg { source, .. })
                if matches!(
                    source.kind(),
                    ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn ensure_namespace(&self, ns: &NamespaceIdent) -> Result<(), IcebergSinkError> {
        let catalog = &self.inner.catalog;
        let err = |e| IcebergSinkError::iceberg(format!("create namespace {ns}"), e);
        if catalog.namespace_exists(ns).await.map_err(err)? {
            return Ok(());
        }
        match catalog.create_namespace(ns, HashMap::new()).await {
            Ok(_) => Ok(()),
            // Another engine created it meanwhile: fine.
            Err(e) => match catalog.namespace_exists(ns).await {
                Ok(true) => Ok(()),
                _ => Err(err(e)),
            },
        }
    }

    async fn create_table(
        &self,
        table: &TableConfig,
        ident: &TableIdent,
        source: &ArrowSchemaRef,
    ) -> Result<(), IcebergSinkError> {
        let schema = schema::iceberg_schema(source)?;
        let ts = column_id(&schema, table.timestamp_column(), "timestamp_column")?;
        let seq = column_id(&schema, table.sequence_column(), "sequence_column")?;
        let spec = partition_spec(table, &schema)?;
        let sort = SortOrder::builder()
            .with_order_id(1)
            .with_sort_field(sort_field(ts))
            .with_sort_field(sort_field(seq))
            .build(&schema)
            .map_err(|e| IcebergSinkError::iceberg("build the sort order", e))?;
        let cfg = &self.inner.config;
        let properties = [
            ("write.format.default", "parquet".to_owned()),
            ("write.parquet.compression-codec", "zstd".to_owned()),
            ("write.parquet.compression-level", cfg.zstd_level.to_string()),
            ("write.target-file-size-bytes", cfg.target_file_size.to_string()),
            (
                PROPERTY_CREATED_BY,
                format!("offload-sink-iceberg {}", env!("CARGO_PKG_VERSION")),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let creation = TableCreation::builder()
            .name(ident.name().to_owned())
            .schema(schema)
            .partition_spec(spec)
            .sort_order(sort)
            .properties(properties)
            .build();
        self.inner
            .catalog
            .create_table(ident.namespace(), creation)
            .await
            .map(|_| ())
            .map_err(|e| IcebergSinkError::iceberg(format!("create table {ident}"), e))
    }

    /// Adds the source's new columns (as optional) to an existing table, or
    /// fails naming the first incompatible column.
    async fn evolve(
        &self,
        table: &TableConfig,
        ident: &TableIdent,
        source: &ArrowSchemaRef,
    ) -> Result<(), IcebergSinkError> {
        // Another engine may evolve the same table concurrently: re-plan on a
        // fresh load when our change is refused.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.load(ident).await?;
            let meta = current.metadata();
            warn_on_spec_drift(
                table,
                meta.current_schema(),
                meta.default_partition_spec().fields(),
            );
            let new = schema::plan_evolution(meta.current_schema(), source)?;
            if new.is_empty() {
                return Ok(());
            }
            let names: Vec<&str> = new.iter().map(|c| c.name.as_str()).collect();
            tracing::info!(table = %ident, columns = ?names, "adding source columns to the Iceberg table");
            let tx = Transaction::new(&current);
            let mut action = tx.update_schema();
            for c in &new {
                action = action.add_column(AddColumn::optional(&c.name, c.ty.clone()));
            }
            let result = async { action.apply(tx)?.commit(&*self.inner.catalog).await.map(|_| ()) }.await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 => {
                    tracing::warn!(table = %ident, error = %e, "schema update refused; re-planning");
                }
                Err(e) => {
                    return Err(IcebergSinkError::iceberg(
                        format!("evolve the schema of {ident}"),
                        e,
                    ));
                }
            }
        }
    }

    fn next_attempt(&self, run_id: RunId) -> u32 {
        let mut map = self.inner.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(run_id).or_insert(0);
        *n += 1;
        *n
    }

    fn forget_run(&self, run_id: RunId) {
        self.inner
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&run_id);
    }

    fn staged_files<'a>(
        &self,
        table: &TableConfig,
        staged: &'a Staged,
    ) -> Result<(&'a StagedFiles, TableIdent), IcebergSinkError> {
        let files: &StagedFiles = staged.payload().ok_or_else(|| IcebergSinkError::ForeignStaging {
            reason: "the payload was not produced by offload-sink-iceberg".into(),
        })?;
        let ident = self.table_ident(table)?;
        if files.ident != ident {
            return Err(IcebergSinkError::ForeignStaging {
                reason: format!("staged for {} but committed to {ident}", files.ident),
            });
        }
        Ok((files, ident))
    }

    async fn commit_fenced(
        &self,
        table: &TableConfig,
        staged: &Staged,
        meta: &CommitMetadata,
    ) -> Result<(), Error> {
        let (files, ident) = self.staged_files(table, staged)?;
        let after = meta.window.after();
        let conflict = |found: Option<Watermark>| Error::CommitConflict {
            table: table.sink_table().to_owned(),
            expected: after,
            found,
        };
        let fence = FencedCatalog::new(self.inner.catalog.clone(), ident.clone(), after);
        let cfg = &self.inner.config;

        let attempt = async {
            let base = fence
                .load_table(&ident)
                .await
                .map_err(|e| IcebergSinkError::iceberg(format!("load table {ident}"), e))?;
            // Cheap early exit before iceberg writes manifests for a stale window.
            if let Some(found) = fence.base()
                && found.unwrap_or(Watermark::MIN) != after
            {
                return Ok(Err(found));
            }
            let tx = Transaction::new(&base);
            let append = tx
                .fast_append()
                .with_check_duplicate(cfg.check_duplicate_files)
                .set_snapshot_properties(markers::summary(meta))
                .add_data_files(files.data_files.iter().cloned());
            let tx = append
                .apply(tx)
                .map_err(|e| IcebergSinkError::iceberg("build the append", e))?;
            let mut props = tx.update_table_properties();
            for (k, v) in markers::properties(meta) {
                props = props.set(k, v);
            }
            let tx = props
                .apply(tx)
                .map_err(|e| IcebergSinkError::iceberg("build the property update", e))?;
            Ok::<_, IcebergSinkError>(Ok(tx.commit(&fence).await))
        };

        let outcome = tokio::time::timeout(cfg.commit_timeout, attempt).await;
        let state = fence.take_state();
        let in_doubt = |source: Box<dyn std::error::Error + Send + Sync>| Error::CommitOutcomeUnknown {
            run_id: meta.run_id,
            source,
        };
        let result = match outcome {
            Err(_elapsed) => {
                let err = IcebergSinkError::Timeout {
                    operation: "commit",
                    after: cfg.commit_timeout,
                };
                return match state.phase {
                    Phase::Idle => Err(err.into()),
                    _ => Err(in_doubt(Box::new(err))),
                };
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Err(found))) => return Err(conflict(found)),
            Ok(Ok(Ok(result))) => result,
        };
        match result {
            Ok(_) => {}
            Err(e) => {
                if let Some(found) = state.conflict {
                    return Err(conflict(found));
                }
                return Err(match state.phase {
                    Phase::InDoubt(_) | Phase::Sending | Phase::Acknowledged => in_doubt(Box::new(
                        IcebergSinkError::iceberg(format!("commit to {ident}"), e),
                    )),
                    Phase::Idle => IcebergSinkError::iceberg(format!("commit to {ident}"), e).into(),
                });
            }
        }
        // The SQL catalog in iceberg-catalog-sql 0.10.1 ignores the result of
        // its database transaction's COMMIT, so an acknowledgement is not proof:
        // read the table back.
        match self.load(&ident).await {
            Ok(t) if markers::contains_run(t.metadata(), meta.run_id) => Ok(()),
            Ok(_) => Err(IcebergSinkError::CommitNotVisible {
                run_id: meta.run_id.to_string(),
            }
            .into()),
            Err(e) => Err(in_doubt(Box::new(e))),
        }
    }

    /// Deletes data files under the table's (local) data location that no
    /// snapshot in the table metadata references, that this sink wrote
    /// (`<run_id>-<attempt>-<task>-<n>.parquet`), and whose run started and
    /// whose file was last modified more than `grace` ago. Returns how many
    /// were deleted.
    ///
    /// Files of other writers are never touched. Object-storage locations
    /// fail with [`IcebergSinkError::CleanupUnsupported`]: iceberg's storage
    /// layer cannot list; use your engine's `remove_orphan_files` there.
    pub async fn cleanup_orphans(
        &self,
        table: &TableConfig,
        grace: Duration,
    ) -> Result<u64, IcebergSinkError> {
        let ident = self.table_ident(table)?;
        let Some(current) = self.load_if_exists(&ident).await? else {
            return Ok(0);
        };
        let meta = current.metadata();
        let data_location = meta
            .properties()
            .get("write.data.path")
            .or_else(|| meta.properties().get("write.folder-storage.path"))
            .cloned()
            .unwrap_or_else(|| format!("{}/data", meta.location()));
        let Some(root) = local_path(&data_location) else {
            return Err(IcebergSinkError::CleanupUnsupported {
                location: data_location,
                reason: "only local file-system warehouses can be listed".into(),
            });
        };
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // List first, read the referenced set second: a commit landing in
        // between then only adds references, never hides one.
        let listed = tokio::task::spawn_blocking(move || list_files(&root))
            .await
            .map_err(|e| IcebergSinkError::WriterTask {
                reason: e.to_string(),
            })??;
        let candidates: Vec<PathBuf> = listed
            .into_iter()
            .filter(|(path, modified)| {
                let Some((run, ..)) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_file_name)
                else {
                    return false;
                };
                let started = run
                    .get_timestamp()
                    .map(|t| {
                        let (s, n) = t.to_unix();
                        SystemTime::UNIX_EPOCH + Duration::new(s, n)
                    })
                    .unwrap_or_else(SystemTime::now);
                started < cutoff && *modified < cutoff
            })
            .map(|(p, _)| p)
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let fresh = self.load(&ident).await?;
        let referenced = self.timed("read manifests", referenced_files(&fresh)).await?;
        let mut deleted = 0;
        for path in candidates {
            if referenced.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "deleted orphan data file");
                    deleted += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(IcebergSinkError::io(format!("delete {}", path.display()), e)),
            }
        }
        Ok(deleted)
    }
}

#[async_trait]
impl Sink for IcebergSink {
    async fn prepare(&self, table: &TableConfig, schema: ArrowSchemaRef) -> Result<(), Error> {
        let ident = self.table_ident(table)?;
        self.timed("prepare table", async {
            self.ensure_namespace(ident.namespace()).await?;
            let exists = self
                .inner
                .catalog
                .table_exists(&ident)
                .await
                .map_err(|e| IcebergSinkError::iceberg(format!("look up table {ident}"), e))?;
            if !exists {
                match self.create_table(table, &ident, &schema).await {
                    Ok(()) => {
                        tracing::info!(table = %ident, "created Iceberg table");
                        return Ok(());
                    }
                    Err(e @ IcebergSinkError::Iceberg { .. }) => {
                        // Lost a creation race? Then the table exists now and
                        // is checked like any existing table.
                        if !self.inner.catalog.table_exists(&ident).await.unwrap_or(false) {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            self.evolve(table, &ident, &schema).await
        })
        .await?;
        Ok(())
    }

    async fn begin(
        &self,
        table: &TableConfig,
        run_id: RunId,
        schema: ArrowSchemaRef,
    ) -> Result<Box<dyn StagingWriter>, Error> {
        let ident = self.table_ident(table)?;
        let current = self.load(&ident).await?;
        let meta = current.metadata();
        let ice_schema = meta.current_schema().clone();
        let target = Arc::new(
            schema_to_arrow_schema(&ice_schema)
                .map_err(|e| IcebergSinkError::iceberg("convert the table schema to Arrow", e))?,
        );
        let conformer = schema::Conformer::new(target, schema)?;
        let cfg = &self.inner.config;
        let plan = WritePlan {
            ident,
            schema: ice_schema,
            spec: meta.default_partition_spec().clone(),
            file_io: current.file_io().clone(),
            locations: DefaultLocationGenerator::new(meta)
                .map_err(|e| IcebergSinkError::iceberg("resolve the data location", e))?,
            conformer: Arc::new(conformer),
            zstd_level: cfg.zstd_level,
            target_file_size: cfg.target_file_size,
            row_group_rows: cfg.row_group_rows,
            tasks: cfg.writer_tasks,
            queue_depth: cfg.queue_depth,
        };
        let attempt = self.next_attempt(run_id);
        Ok(Box::new(IcebergStagingWriter::start(plan, run_id, attempt)?))
    }

    async fn commit(&self, table: &TableConfig, staged: &Staged, meta: &CommitMetadata) -> Result<(), Error> {
        if staged.run_id() != meta.run_id {
            return Err(IcebergSinkError::ForeignStaging {
                reason: format!(
                    "staged by run {} but committed as run {}",
                    staged.run_id(),
                    meta.run_id
                ),
            }
            .into());
        }
        let result = self.commit_fenced(table, staged, meta).await;
        if result.is_ok() {
            self.forget_run(meta.run_id);
        }
        result
    }

    async fn abort(&self, table: &TableConfig, staged: Staged) -> Result<(), Error> {
        let (files, ident) = self.staged_files(table, &staged)?;
        let Some(current) = self.load_if_exists(&ident).await? else {
            // No table: nothing can reference the files, and there is no
            // FileIO to delete them with; cleanup handles them once it exists.
            return Ok(());
        };
        // Deleting files a commit references would lose committed rows.
        if markers::contains_run(current.metadata(), staged.run_id()) {
            return Err(IcebergSinkError::AbortOfCommittedRun {
                run_id: staged.run_id().to_string(),
            }
            .into());
        }
        let mut first_err = None;
        for f in &files.data_files {
            if let Err(e) = current.file_io().delete(f.file_path()).await {
                first_err.get_or_insert(IcebergSinkError::iceberg(format!("delete {}", f.file_path()), e));
            }
        }
        self.forget_run(staged.run_id());
        match first_err {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }

    async fn committed(&self, table: &TableConfig) -> Result<Option<CommittedWindow>, Error> {
        let ident = self.table_ident(table)?;
        let Some(current) = self.load_if_exists(&ident).await? else {
            return Ok(None);
        };
        Ok(markers::committed(current.metadata())?.map(|(w, _)| w))
    }

    async fn was_committed(&self, table: &TableConfig, run_id: RunId) -> Result<bool, Error> {
        let ident = self.table_ident(table)?;
        let Some(current) = self.load_if_exists(&ident).await? else {
            return Ok(false);
        };
        Ok(markers::contains_run(current.metadata(), run_id))
    }

    async fn cleanup(&self, table: &TableConfig) -> Result<u64, Error> {
        Ok(self
            .cleanup_orphans(table, self.inner.config.orphan_grace)
            .await?)
    }
}

fn parse_ident(name: &str, default_namespace: &str) -> Result<TableIdent, IcebergSinkError> {
    let bad = |reason: &str| IcebergSinkError::InvalidTableName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let mut parts: Vec<&str> = name.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty name segment (expected `namespace.table`)"));
    }
    let table = parts.pop().ok_or_else(|| bad("empty"))?;
    let ns = if parts.is_empty() {
        vec![default_namespace]
    } else {
        parts
    };
    let ns = NamespaceIdent::from_strs(ns).map_err(|e| bad(&e.to_string()))?;
    Ok(TableIdent::new(ns, table.to_owned()))
}

fn column_id(schema: &Schema, column: &str, purpose: &'static str) -> Result<i32, IcebergSinkError> {
    schema
        .as_struct()
        .field_by_name(column)
        .map(|f| f.id)
        .ok_or_else(|| IcebergSinkError::MissingColumn {
            column: column.to_owned(),
            purpose,
        })
}

fn sort_field(source_id: i32) -> SortField {
    SortField {
        source_id,
        transform: IceTransform::Identity,
        direction: SortDirection::Ascending,
        null_order: NullOrder::First,
    }
}

/// Iceberg transform and partition-field name suffix for a configured transform.
fn transform(t: &Transform) -> Result<(IceTransform, Option<&'static str>), IcebergSinkError> {
    Ok(match t {
        Transform::Identity => (IceTransform::Identity, None),
        Transform::Year => (IceTransform::Year, Some("year")),
        Transform::Month => (IceTransform::Month, Some("month")),
        Transform::Day => (IceTransform::Day, Some("day")),
        Transform::Hour => (IceTransform::Hour, Some("hour")),
        Transform::Bucket(n) => (IceTransform::Bucket(*n), Some("bucket")),
        Transform::Truncate(w) => (IceTransform::Truncate(*w), Some("trunc")),
        other => {
            return Err(IcebergSinkError::Config {
                field: "partitioning",
                reason: format!("transform {other:?} is not supported by the Iceberg sink"),
            });
        }
    })
}

/// The partition spec for a new table: one field per configured partition
/// field, named like Spark/pyiceberg name them (`ts_day`, `id_bucket`, ...).
fn partition_spec(table: &TableConfig, schema: &Schema) -> Result<UnboundPartitionSpec, IcebergSinkError> {
    let mut builder = UnboundPartitionSpec::builder();
    let mut names = HashSet::new();
    for pf in table.partitioning() {
        let field =
            schema
                .as_struct()
                .field_by_name(pf.column())
                .ok_or_else(|| IcebergSinkError::MissingColumn {
                    column: pf.column().to_owned(),
                    purpose: "partitioning",
                })?;
        let (t, suffix) = transform(pf.transform())?;
        t.result_type(&field.field_type)
            .map_err(|e| IcebergSinkError::IncompatibleSchema {
                column: pf.column().to_owned(),
                reason: format!("cannot partition by {t} of a {} column: {e}", field.field_type),
            })?;
        let base = suffix.map_or_else(|| pf.column().to_owned(), |s| format!("{}_{s}", pf.column()));
        let mut name = base.clone();
        let mut n = 1;
        while !names.insert(name.clone())
            || (suffix.is_some() && schema.as_struct().field_by_name(&name).is_some())
        {
            n += 1;
            name = format!("{base}_{n}");
        }
        builder = builder
            .add_partition_field(field.id, name, t)
            .map_err(|e| IcebergSinkError::iceberg("build the partition spec", e))?;
    }
    Ok(builder.build())
}

fn warn_on_spec_drift(table: &TableConfig, schema: &Schema, fields: &[iceberg::spec::PartitionField]) {
    let wanted: Vec<(String, String)> = table
        .partitioning()
        .iter()
        .filter_map(|pf| {
            transform(pf.transform())
                .ok()
                .map(|(t, _)| (pf.column().to_owned(), t.to_string()))
        })
        .collect();
    let actual: Vec<(String, String)> = fields
        .iter()
        .map(|f| {
            (
                schema.name_by_field_id(f.source_id).unwrap_or("?").to_owned(),
                f.transform.to_string(),
            )
        })
        .collect();
    if wanted != actual {
        tracing::warn!(
            table = table.sink_table(),
            ?wanted,
            ?actual,
            "the existing table's partition spec differs from the configuration; writing with the table's spec"
        );
    }
}

/// A local path for `file:` URLs and absolute paths; `None` for object storage.
fn local_path(location: &str) -> Option<PathBuf> {
    if let Some(rest) = location.strip_prefix("file://") {
        Some(PathBuf::from(if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        }))
    } else if let Some(rest) = location.strip_prefix("file:") {
        Some(PathBuf::from(rest))
    } else if location.starts_with('/') {
        Some(PathBuf::from(location))
    } else {
        None
    }
}

/// Every regular file under `root` with its modification time.
fn list_files(root: &Path) -> Result<Vec<(PathBuf, SystemTime)>, IcebergSinkError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IcebergSinkError::io(format!("list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| IcebergSinkError::io(format!("list {}", dir.display()), e))?;
            let ty = entry
                .file_type()
                .map_err(|e| IcebergSinkError::io(format!("stat {}", entry.path().display()), e))?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(|e| IcebergSinkError::io(format!("stat {}", entry.path().display()), e))?;
                out.push((entry.path(), modified));
            }
        }
    }
    Ok(out)
}

/// Local paths of every data file any snapshot in the metadata references.
async fn referenced_files(table: &Table) -> Result<HashSet<PathBuf>, IcebergSinkError> {
    let err = |what: &str, e| IcebergSinkError::iceberg(format!("read {what} of {}", table.identifier()), e);
    let mut manifests = HashSet::new();
    let mut files = HashSet::new();
    for snapshot in table.metadata().snapshots() {
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(|e| err("a manifest list", e))?;
        for manifest in list.entries() {
            // Fast appends carry every earlier manifest forward: read each once.
            if !manifests.insert(manifest.manifest_path.clone()) {
                continue;
            }
            let m = manifest
                .load_manifest(table.file_io())
                .await
                .map_err(|e| err("a manifest", e))?;
            for entry in m.entries() {
                if let Some(p) = local_path(entry.file_path()) {
                    files.insert(p);
                }
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents() {
        assert_eq!(parse_ident("a.b", "d").unwrap().to_string(), "a.b");
        assert_eq!(parse_ident("t", "d").unwrap().to_string(), "d.t");
        let multi = parse_ident("x.y.t", "d").unwrap();
        assert_eq!(
            multi.namespace().as_ref(),
            &vec!["x".to_string(), "y".to_string()]
        );
        assert!(matches!(
            parse_ident("a..b", "d"),
            Err(IcebergSinkError::InvalidTableName { .. })
        ));
        assert!(parse_ident("a.", "d").is_err());
    }

    #[test]
    fn local_paths() {
        assert_eq!(local_path("file:///tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("file:/tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("/tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("s3://b/x"), None);
    }
}
