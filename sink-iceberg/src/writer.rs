//! Staging: batches flow through a bounded channel to background encoder
//! tasks that split them by partition and write rolling zstd Parquet files.

mod partitions;
mod props;

pub(crate) use props::data_file_properties;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::{Array, RecordBatch};
use async_trait::async_trait;
use iceberg::TableIdent;
use iceberg::arrow::{PartitionValueCalculator, RecordBatchPartitionSplitter, arrow_struct_to_literal};
use iceberg::io::FileIO;
use iceberg::spec::{DataFile, Literal, PartitionKey, PartitionSpecRef, SchemaRef, StructType};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use offload_core::{RunId, SinkTable, Staged, StagedStats, StagingWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::schema::Conformer;
use crate::{IcebergSinkError, IcebergStaged, IcebergTable};

/// Every location handed out to a writer of one run, so `abort` and failures
/// can delete exactly what this run created (also files still being written).
#[derive(Debug, Default, Clone)]
pub(crate) struct FileTracker(Arc<Mutex<Vec<String>>>);

impl FileTracker {
    fn push(&self, location: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(location);
    }

    pub(crate) fn locations(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// iceberg's default layout (`<data location>/<partition path>/<file>`), with
/// every generated location recorded.
#[derive(Debug, Clone)]
struct TrackingLocations {
    inner: DefaultLocationGenerator,
    tracker: FileTracker,
}

impl LocationGenerator for TrackingLocations {
    fn generate_location(&self, partition_key: Option<&PartitionKey>, file_name: &str) -> String {
        let location = self.inner.generate_location(partition_key, file_name);
        self.tracker.push(location.clone());
        location
    }
}

/// `<run_id>-<attempt>-<task>-<n>.parquet`: unique per run, attempt and
/// encoder task, and parseable by orphan cleanup (the run id is a UUIDv7, so
/// the name also says when the run started).
#[derive(Debug, Clone)]
struct RunFileNames {
    prefix: String,
    next: Arc<AtomicU64>,
}

impl FileNameGenerator for RunFileNames {
    fn generate_file_name(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:05}.parquet", self.prefix)
    }
}

/// Parses a data file name written by this sink: `(run uuid, attempt, task, n)`.
pub(crate) fn parse_file_name(name: &str) -> Option<(uuid::Uuid, u32, u32, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let run = uuid::Uuid::parse_str(stem.get(..36)?).ok()?;
    let mut rest = stem.get(36..)?.strip_prefix('-')?.split('-');
    let attempt = rest.next()?.parse().ok()?;
    let task = rest.next()?.parse().ok()?;
    let n = rest.next()?.parse().ok()?;
    rest.next().is_none().then_some((run, attempt, task, n))
}

/// Everything an encoder task needs, resolved once per run from the table.
#[derive(Clone)]
pub(crate) struct WritePlan {
    pub(crate) ident: TableIdent,
    pub(crate) schema: SchemaRef,
    pub(crate) spec: PartitionSpecRef,
    pub(crate) file_io: FileIO,
    pub(crate) locations: DefaultLocationGenerator,
    pub(crate) conformer: Arc<Conformer>,
    pub(crate) zstd_level: i32,
    pub(crate) target_file_size: u64,
    pub(crate) row_group_rows: usize,
    pub(crate) tasks: usize,
    pub(crate) queue_depth: usize,
}

type TaskResult = Result<Vec<DataFile>, IcebergSinkError>;

/// The [`StagingWriter`] of the Iceberg sink. `write` only enqueues: encoding
/// runs on blocking-pool threads, so the engine's reader keeps decoding the
/// next batches meanwhile.
pub(crate) struct IcebergStagingWriter {
    run_id: RunId,
    table: IcebergTable,
    file_io: FileIO,
    senders: Vec<mpsc::Sender<RecordBatch>>,
    tasks: Vec<JoinHandle<TaskResult>>,
    next: usize,
    rows: u64,
    cancel: Arc<AtomicBool>,
    tracker: FileTracker,
}

impl IcebergStagingWriter {
    /// Starts the encoder tasks for one staging attempt of a run.
    pub(crate) fn start(
        table: IcebergTable,
        plan: WritePlan,
        run_id: RunId,
        attempt: u32,
    ) -> Result<Self, IcebergSinkError> {
        let cfg = table.sink_config();
        let watermark = [
            table.config().timestamp_column(),
            table.config().sequence_column(),
        ];
        let props =
            data_file_properties(&plan.schema, watermark, plan.zstd_level, plan.row_group_rows)?.build();
        let limits = partitions::Limits {
            idle_batches: cfg.partition_idle_batches,
            max_open: cfg.max_open_partitions,
        };
        let tracker = FileTracker::default();
        let cancel = Arc::new(AtomicBool::new(false));
        let handle = tokio::runtime::Handle::current();
        let mut senders = Vec::with_capacity(plan.tasks);
        let mut tasks = Vec::with_capacity(plan.tasks);
        for task in 0..plan.tasks {
            let (tx, rx) = mpsc::channel(plan.queue_depth);
            let names = RunFileNames {
                prefix: format!("{run_id}-{attempt}-{task}"),
                next: Arc::new(AtomicU64::new(0)),
            };
            let locations = TrackingLocations {
                inner: plan.locations.clone(),
                tracker: tracker.clone(),
            };
            let builder = DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
                ParquetWriterBuilder::new(props.clone(), plan.schema.clone()),
                usize::try_from(plan.target_file_size).unwrap_or(usize::MAX),
                plan.file_io.clone(),
                locations,
                names,
            ));
            let plan = plan.clone();
            let cancel = cancel.clone();
            let handle = handle.clone();
            // Parquet encoding and zstd are CPU-bound and iceberg's local-FS
            // storage does blocking I/O: keep both off the async workers.
            tasks.push(tokio::task::spawn_blocking(move || {
                handle.block_on(encode(plan, builder, limits, rx, cancel))
            }));
            senders.push(tx);
        }
        Ok(Self {
            run_id,
            table,
            file_io: plan.file_io,
            senders,
            tasks,
            next: 0,
            rows: 0,
            cancel,
            tracker,
        })
    }

    /// Waits for every task; the first error wins.
    async fn join(&mut self) -> Result<Vec<DataFile>, IcebergSinkError> {
        self.senders.clear();
        let mut files = Vec::new();
        let mut first_err = None;
        for task in self.tasks.drain(..) {
            let outcome = task.await.unwrap_or_else(|e| {
                Err(IcebergSinkError::WriterTask {
                    reason: e.to_string(),
                })
            });
            match outcome {
                Ok(f) => files.extend(f),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(files),
            Some(e) => Err(e),
        }
    }

    /// Deletes every file this writer created. Only after the tasks stopped,
    /// so no file appears after its deletion.
    async fn delete_all(&self) -> Result<(), IcebergSinkError> {
        let mut first_err = None;
        for location in self.tracker.locations() {
            if let Err(e) = self.file_io.delete(&location).await {
                tracing::warn!(%location, error = %e, "could not delete staged file");
                first_err.get_or_insert(IcebergSinkError::iceberg(
                    format!("delete staged file {location}"),
                    e,
                ));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn fail(mut self: Box<Self>, err: IcebergSinkError) -> IcebergSinkError {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.join().await;
        if let Err(e) = self.delete_all().await {
            tracing::warn!(error = %e, "staged files left for cleanup");
        }
        err
    }
}

impl Drop for IcebergStagingWriter {
    fn drop(&mut self) {
        // Dropped without finish/abort (engine task cancelled): stop encoding
        // early. Files written so far stay as orphans for `cleanup`.
        self.cancel.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl StagingWriter for IcebergStagingWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), offload_core::Error> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        let i = self.next;
        self.next = (self.next + 1) % self.senders.len().max(1);
        let sent = match self.senders.get(i) {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        };
        if sent {
            self.rows += rows;
            return Ok(());
        }
        // The task stopped early: its error explains why.
        let err = match self.join().await {
            Err(e) => e,
            Ok(_) => IcebergSinkError::WriterTask {
                reason: "encoder stopped before the end of input".into(),
            },
        };
        // Keep `self` usable for a later abort(): only record the failure here.
        Err(err.into())
    }

    async fn finish(mut self: Box<Self>) -> Result<Box<dyn Staged>, offload_core::Error> {
        let files = match self.join().await {
            Ok(files) => files,
            Err(e) => return Err(self.fail(e).await.into()),
        };
        let rows: u64 = files.iter().map(DataFile::record_count).sum();
        if rows != self.rows {
            let err = IcebergSinkError::WriterTask {
                reason: format!("{} rows were queued but the data files hold {rows}", self.rows),
            };
            return Err(self.fail(err).await.into());
        }
        let bytes = files.iter().map(DataFile::file_size_in_bytes).sum();
        let paths = files.iter().map(|f| f.file_path().to_owned()).collect();
        let stats = StagedStats::new(self.run_id, rows, bytes, paths);
        Ok(Box::new(IcebergStaged::new(self.table.clone(), stats, files)))
    }

    async fn abort(mut self: Box<Self>) -> Result<(), offload_core::Error> {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.join().await;
        self.delete_all().await.map_err(Into::into)
    }
}

/// One encoder task: conform, split by partition, write.
async fn encode<B>(
    plan: WritePlan,
    builder: B,
    limits: partitions::Limits,
    mut rx: mpsc::Receiver<RecordBatch>,
    cancel: Arc<AtomicBool>,
) -> TaskResult
where
    B: IcebergWriterBuilder,
{
    let cancelled = || IcebergSinkError::WriterTask {
        reason: "staging was cancelled".into(),
    };
    let ice = |what: &str, e| IcebergSinkError::iceberg(format!("{what} for {}", plan.ident), e);
    if plan.spec.is_unpartitioned() {
        let mut writer = builder
            .build(None)
            .await
            .map_err(|e| ice("open a data file writer", e))?;
        while let Some(batch) = rx.recv().await {
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let batch = plan.conformer.conform(&batch)?;
            writer.write(batch).await.map_err(|e| ice("write parquet", e))?;
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        return writer.close().await.map_err(|e| ice("close data files", e));
    }

    let splitter = Splitter::new(&plan).map_err(|e| ice("plan partitioning", e))?;
    let mut writers = partitions::PartitionWriters::new(builder, limits);
    while let Some(batch) = rx.recv().await {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        let batch = plan.conformer.conform(&batch)?;
        let parts = splitter.split(&batch).map_err(|e| ice("split by partition", e))?;
        writers
            .write_batch(parts)
            .await
            .map_err(|e| ice("write parquet", e))?;
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(cancelled());
    }
    let (files, counts) = writers.close().await.map_err(|e| ice("close data files", e))?;
    tracing::debug!(
        table = %plan.ident,
        files = files.len(),
        opened = counts.opened,
        closed_idle = counts.closed_idle,
        evicted = counts.evicted,
        max_open = counts.max_open_seen,
        "partition writers closed"
    );
    Ok(files)
}

/// Splits a batch by partition value.
///
/// Source batches arrive ordered by the watermark, so rows of one partition
/// (say, one day) are almost always contiguous: the fast path finds the runs of
/// equal partition values with one vectorised comparison and hands out
/// zero-copy slices. Unordered input falls back to iceberg's hash splitter.
struct Splitter {
    calculator: PartitionValueCalculator,
    partition_type: StructType,
    plan: WritePlan,
    fallback: RecordBatchPartitionSplitter,
}

/// Above this many runs per batch the input is not ordered by partition and
/// per-run slicing would only produce tiny pieces.
const MAX_RUNS: usize = 64;

impl Splitter {
    fn new(plan: &WritePlan) -> iceberg::Result<Self> {
        Ok(Self {
            calculator: PartitionValueCalculator::try_new(&plan.spec, &plan.schema)?,
            partition_type: plan.spec.partition_type(&plan.schema)?,
            plan: plan.clone(),
            fallback: RecordBatchPartitionSplitter::try_new_with_computed_values(
                plan.schema.clone(),
                plan.spec.clone(),
            )?,
        })
    }

    fn split(&self, batch: &RecordBatch) -> iceberg::Result<Vec<(PartitionKey, RecordBatch)>> {
        let values = self.calculator.calculate(batch)?;
        let columns = arrow_array::cast::AsArray::as_struct(&values).columns().to_vec();
        let ranges = arrow_ord::partition::partition(&columns)
            .map_err(|e| {
                iceberg::Error::new(iceberg::ErrorKind::Unexpected, "compare partition values").with_source(e)
            })?
            .ranges();
        if ranges.len() > MAX_RUNS {
            return self.fallback.split(batch);
        }
        ranges
            .into_iter()
            .map(|r| {
                let first = values.slice(r.start, 1);
                let literal = arrow_struct_to_literal(&first, &self.partition_type)?
                    .into_iter()
                    .next()
                    .flatten();
                let Some(Literal::Struct(data)) = literal else {
                    return Err(iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        "partition value is not a struct",
                    ));
                };
                let key = PartitionKey::new((*self.plan.spec).clone(), self.plan.schema.clone(), data);
                Ok((key, batch.slice(r.start, r.end - r.start)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let run = RunId::new();
        let g = RunFileNames {
            prefix: format!("{run}-2-1"),
            next: Arc::new(AtomicU64::new(0)),
        };
        let a = g.generate_file_name();
        let b = g.generate_file_name();
        assert_ne!(a, b);
        let (uuid, attempt, task, n) = parse_file_name(&a).unwrap();
        assert_eq!(uuid.to_string(), run.to_string());
        assert_eq!((attempt, task, n), (2, 1, 0));
        assert_eq!(parse_file_name(&b).unwrap().3, 1);
        assert!(parse_file_name("00000-0-abc.parquet").is_none());
        assert!(parse_file_name(&format!("{run}-1-0-0-extra.parquet")).is_none());
        assert!(parse_file_name(&format!("{run}-1-0-0.avro")).is_none());
    }
}
