//! [`IcebergTable`]: one opened table of an [`IcebergSink`](crate::IcebergSink),
//! offload-core's `SinkTable`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arrow_schema::SchemaRef as ArrowSchemaRef;
use async_trait::async_trait;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    NullOrder, Schema, SortDirection, SortField, SortOrder, Transform as IceTransform, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::file_writer::location_generator::DefaultLocationGenerator;
use iceberg::{Catalog, ErrorKind, TableCreation, TableIdent};
use offload_core::{
    BucketGrid, CommittedWindow, Error, RunId, SinkTable, StagingWriter, TableConfig, Watermark, Window,
};

use crate::keys::Keys;
use crate::sink::SinkInner;
use crate::writer::{IcebergStagingWriter, WritePlan};
use crate::{
    IcebergSinkConfig, IcebergSinkError, IcebergTableOptions, PartitionField, Transform, markers, schema,
};

/// Table property naming the sink that created a table (for operators).
const PROPERTY_CREATED_BY: &str = "offload.created-by";

/// One table of an [`IcebergSink`](crate::IcebergSink), opened with
/// [`Sink::open`](offload_core::Sink::open) or
/// [`IcebergSink::open_table`](crate::IcebergSink::open_table): the table's
/// identifier and options, resolved once. Every operation reads the table's
/// current state from the catalog; the handle caches none of it, so it never
/// goes stale. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct IcebergTable {
    inner: Arc<TableInner>,
}

struct TableInner {
    sink: Arc<SinkInner>,
    config: TableConfig,
    ident: TableIdent,
    options: IcebergTableOptions,
    partitioning: Vec<PartitionField>,
    /// Staging attempts of this handle: file names carry
    /// `attempt_base + n`, so two stagings of one run never share a name
    /// (within a handle for certain, across handles with odds of 2^-32).
    attempt_base: u32,
    attempts: AtomicU32,
}

impl fmt::Debug for IcebergTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcebergTable")
            .field("name", &self.inner.config.name())
            .field("ident", &self.inner.ident)
            .field("partitioning", &self.inner.partitioning)
            .finish_non_exhaustive()
    }
}

impl IcebergTable {
    pub(crate) fn new(
        sink: Arc<SinkInner>,
        config: TableConfig,
        ident: TableIdent,
        options: IcebergTableOptions,
        partitioning: Vec<PartitionField>,
    ) -> Self {
        Self {
            inner: Arc::new(TableInner {
                sink,
                config,
                ident,
                options,
                partitioning,
                attempt_base: rand::random(),
                attempts: AtomicU32::new(0),
            }),
        }
    }

    /// The Iceberg identifier.
    pub fn ident(&self) -> &TableIdent {
        &self.inner.ident
    }

    /// The options the handle was opened with (the defaults when the
    /// `TableConfig` carried none).
    pub fn options(&self) -> &IcebergTableOptions {
        &self.inner.options
    }

    /// The partition fields a new table gets, the default resolved.
    pub fn partitioning(&self) -> &[PartitionField] {
        &self.inner.partitioning
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.sink.catalog
    }

    pub(crate) fn sink_config(&self) -> &IcebergSinkConfig {
        &self.inner.sink.config
    }

    /// Loads the table's current state from the catalog.
    pub async fn load(&self) -> Result<Table, IcebergSinkError> {
        let ident = self.ident();
        self.catalog()
            .load_table(ident)
            .await
            .map_err(|e| IcebergSinkError::iceberg(format!("load table {ident}"), e))
    }

    /// Loads the table, or `None` if it (or its namespace) does not exist.
    pub async fn load_if_exists(&self) -> Result<Option<Table>, IcebergSinkError> {
        match self.load().await {
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

    fn next_attempt(&self) -> u32 {
        self.inner
            .attempt_base
            .wrapping_add(self.inner.attempts.fetch_add(1, Ordering::Relaxed))
    }

    async fn ensure_namespace(&self) -> Result<(), IcebergSinkError> {
        let catalog = self.catalog();
        let ns = self.ident().namespace();
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

    async fn create(&self, source: &ArrowSchemaRef) -> Result<(), IcebergSinkError> {
        let table = &self.inner.config;
        let ident = self.ident();
        let schema = schema::iceberg_schema(source)?;
        let ts = column_id(&schema, table.timestamp_column(), "timestamp_column")?;
        let seq = column_id(&schema, table.sequence_column(), "sequence_column")?;
        let spec = partition_spec(self.partitioning(), &schema)?;
        let sort = SortOrder::builder()
            .with_order_id(1)
            .with_sort_field(sort_field(ts))
            .with_sort_field(sort_field(seq))
            .build(&schema)
            .map_err(|e| IcebergSinkError::iceberg("build the sort order", e))?;
        let cfg = self.sink_config();
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
        self.catalog()
            .create_table(ident.namespace(), creation)
            .await
            .map(|_| ())
            .map_err(|e| IcebergSinkError::iceberg(format!("create table {ident}"), e))
    }

    /// Adds the source's new columns (as optional) to the existing table in
    /// one attempt, or fails naming the first incompatible column. A refusal
    /// because another writer changed the schema meanwhile is
    /// [`IcebergSinkError::ConcurrentSchemaChange`] (retryable): the retry
    /// layer around `prepare` plans again against the new schema.
    async fn evolve(&self, source: &ArrowSchemaRef) -> Result<(), IcebergSinkError> {
        let ident = self.ident();
        let current = self.load().await?;
        let meta = current.metadata();
        self.warn_on_spec_drift(meta.current_schema(), meta.default_partition_spec().fields());
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
        let refused = match async { action.apply(tx)?.commit(&**self.catalog()).await }.await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // iceberg re-applies the change on a fresh load when the base moved;
        // adding a column someone else just added then fails as a plain
        // precondition. Whether the schema moved tells the two apart.
        let planned = meta.current_schema_id();
        match self.load().await {
            Ok(now) if now.metadata().current_schema_id() != planned => {
                Err(IcebergSinkError::ConcurrentSchemaChange {
                    table: ident.to_string(),
                    source: Box::new(refused),
                })
            }
            _ => Err(IcebergSinkError::iceberg(
                format!("evolve the schema of {ident}"),
                refused,
            )),
        }
    }

    fn warn_on_spec_drift(&self, schema: &Schema, fields: &[iceberg::spec::PartitionField]) {
        let wanted: Vec<(String, String)> = self
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
                table = %self.ident(),
                ?wanted,
                ?actual,
                "the existing table's partition spec differs from the configuration; writing with the table's spec"
            );
        }
    }

    async fn prepare_table(&self, schema: &ArrowSchemaRef) -> Result<(), IcebergSinkError> {
        let ident = self.ident();
        self.ensure_namespace().await?;
        let exists = self
            .catalog()
            .table_exists(ident)
            .await
            .map_err(|e| IcebergSinkError::iceberg(format!("look up table {ident}"), e))?;
        if !exists {
            match self.create(schema).await {
                Ok(()) => {
                    tracing::info!(table = %ident, "created Iceberg table");
                    return Ok(());
                }
                Err(e @ IcebergSinkError::Iceberg { .. }) => {
                    // Lost a creation race? Then the table exists now and is
                    // checked like any existing table.
                    if !self.catalog().table_exists(ident).await.unwrap_or(false) {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.evolve(schema).await
    }

    async fn start_staging(
        &self,
        run_id: RunId,
        schema: ArrowSchemaRef,
    ) -> Result<IcebergStagingWriter, IcebergSinkError> {
        let current = self.load().await?;
        let meta = current.metadata();
        let ice_schema = meta.current_schema().clone();
        let target = Arc::new(
            schema_to_arrow_schema(&ice_schema)
                .map_err(|e| IcebergSinkError::iceberg("convert the table schema to Arrow", e))?,
        );
        let conformer = schema::Conformer::new(target, schema)?;
        let cfg = self.sink_config();
        let plan = WritePlan {
            ident: self.ident().clone(),
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
        IcebergStagingWriter::start(self.clone(), plan, run_id, self.next_attempt())
    }

    /// Deletes every file under the table's (local) location that the table
    /// metadata does not reference and that was last modified more than
    /// `grace` ago, metadata included: data files of crashed runs and
    /// compactions, manifests, manifest lists and metadata files of commits
    /// that were refused or crashed before the catalog swap, and files that
    /// dropped out of the metadata log or of expired snapshots. Returns how
    /// many were deleted. [`SinkTable::cleanup`] is this with the configured
    /// [`orphan_grace`](IcebergSinkConfig::orphan_grace).
    ///
    /// A referenced file is never deleted: the location is listed first and
    /// the references (every snapshot's manifest list, manifests and their
    /// live data and delete files, statistics files, the current metadata
    /// file and the metadata log) are read from a fresh load afterwards, so
    /// a commit landing meanwhile only adds references. Files named like this
    /// sink's data files are kept while their run started less than `grace`
    /// ago too; keep `grace` above the longest time from writing a file to
    /// committing it. Under a `write.data.path` outside the table location
    /// only this sink's data files are candidates. Nothing is deleted when
    /// the table sets `gc.enabled = false`.
    ///
    /// S3 locations (feature `s3`) are listed through OpenDAL with the
    /// catalog's S3 settings, only under the location's `data/` and
    /// `metadata/` prefixes, the age being each object's `LastModified`.
    /// Other object stores fail with [`IcebergSinkError::CleanupUnsupported`]
    /// (iceberg's storage layer cannot list); use your engine's
    /// `remove_orphan_files` there.
    pub async fn cleanup_orphans(&self, grace: Duration) -> Result<u64, IcebergSinkError> {
        self.delete_orphans(grace).await
    }
}

#[async_trait]
impl SinkTable for IcebergTable {
    fn config(&self) -> &TableConfig {
        &self.inner.config
    }

    async fn prepare(&self, schema: ArrowSchemaRef) -> Result<(), Error> {
        Ok(self.prepare_table(&schema).await?)
    }

    async fn begin(&self, run_id: RunId, schema: ArrowSchemaRef) -> Result<Box<dyn StagingWriter>, Error> {
        Ok(Box::new(self.start_staging(run_id, schema).await?))
    }

    async fn committed(&self) -> Result<Option<CommittedWindow>, Error> {
        let Some(current) = self.load_if_exists().await? else {
            return Ok(None);
        };
        Ok(markers::committed(current.metadata())?.map(|(w, _)| w))
    }

    async fn was_committed(&self, run_id: RunId) -> Result<bool, Error> {
        let Some(current) = self.load_if_exists().await? else {
            return Ok(false);
        };
        Ok(markers::contains_run(current.metadata(), run_id))
    }

    async fn cleanup(&self) -> Result<u64, Error> {
        Ok(self
            .cleanup_orphans(self.sink_config().maintenance.orphan_grace)
            .await?)
    }

    async fn maintain(&self) -> Result<offload_core::MaintenanceSummary, Error> {
        Ok(self.maintain_with(&self.sink_config().maintenance).await?)
    }

    /// A scan of main's current snapshot selecting only the timestamp and
    /// sequence columns, filtered on the window's timestamps (so partitions,
    /// files and row groups are pruned by their bounds), kept exactly inside
    /// the window by position.
    async fn positions(&self, window: Window) -> Result<Vec<Watermark>, Error> {
        let Some(current) = self.load_if_exists().await? else {
            return Ok(Vec::new());
        };
        let cfg = &self.inner.config;
        let keys = Keys::new(&current, cfg.timestamp_column(), cfg.sequence_column())?;
        Ok(keys.positions_in(window).await?)
    }

    /// From the manifests where they settle it: a live data file whose
    /// timestamp bounds lie inside one bucket and strictly below the grid's
    /// `until` contributes its record count; files outside the span are
    /// skipped; only the rest are read (key columns only).
    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        let Some(current) = self.load_if_exists().await? else {
            return Ok(vec![0; grid.len()]);
        };
        let cfg = &self.inner.config;
        let keys = Keys::new(&current, cfg.timestamp_column(), cfg.sequence_column())?;
        Ok(keys.bucket_counts(grid).await?)
    }
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
    })
}

/// The partition spec for a new table: one field per configured partition
/// field, named like Spark/pyiceberg name them (`ts_day`, `id_bucket`, ...).
fn partition_spec(
    partitioning: &[PartitionField],
    schema: &Schema,
) -> Result<UnboundPartitionSpec, IcebergSinkError> {
    let mut builder = UnboundPartitionSpec::builder();
    let mut names = HashSet::new();
    for pf in partitioning {
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
