//! Compaction: which closed partitions to rewrite, and the streaming sorted
//! rewrite of their files into files near the target size.
//!
//! A partition is *closed* when it cannot contain the committed watermark's
//! timestamp: its value of a time transform (`year`, `month`, `day`, `hour`,
//! `identity`) of the timestamp column differs from the watermark's. The
//! offload has moved past it, so only the late-row sweep still adds to it
//! (and a replace commit that loses to a repair is rebuilt or abandoned by
//! the commit path). A partition whose spec says nothing about the timestamp
//! (an unpartitioned table, or one partitioned by other columns only) never
//! closes: it is compacted only with
//! [`compact_open`](super::MaintenanceConfig::compact_open). The partition
//! holding the watermark is never compacted. Nothing is compacted before the
//! first commit.
//!
//! The rewrite (see `merge.rs` for the merge and its memory bound) reads the
//! partition's files in key order and writes `(timestamp, sequence)`-sorted
//! files of about `target_file_size`, named like the sink's files under a
//! fresh run id, with the inputs' partition value and spec.

#[path = "merge.rs"]
mod merge;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::TryStreamExt;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::{
    DataFile, Datum, Literal, MAIN_BRANCH, PartitionKey, PartitionSpec, PrimitiveLiteral, PrimitiveType,
    Struct, Transform, Type,
};
use iceberg::table::Table;
use iceberg::transform::create_transform_function;
use iceberg::writer::file_writer::location_generator::DefaultLocationGenerator;
use offload_core::{RunId, SinkTable};

use super::{MaintenanceConfig, files};
use crate::{IcebergSinkError, IcebergTable, markers};

/// Manifests loaded at once while planning.
/// Rows per decoded batch of each open input file.
const INPUT_BATCH_ROWS: usize = 8 * 1024;
/// Most rows per output batch.
const MAX_OUTPUT_ROWS: usize = 64 * 1024;
/// Fewest rows per output batch.
const MIN_OUTPUT_ROWS: usize = 1024;

/// One partition to rewrite: all its live data files.
#[derive(Debug, Clone)]
pub(crate) struct PartitionPlan {
    /// The partition spec the files were written with.
    pub(crate) spec_id: i32,
    /// The files' partition value (kept on the outputs).
    pub(crate) partition: Struct,
    /// The partition's live data files (all of them are rewritten).
    pub(crate) files: Vec<DataFile>,
    /// Their total size on storage.
    pub(crate) bytes: u64,
    /// Their total record count.
    pub(crate) rows: u64,
}

/// What rewriting one partition produced.
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {
    /// The files replaced (live in the snapshot the rewrite read).
    pub(crate) removed: Vec<DataFile>,
    /// The files written, holding exactly the removed files' rows.
    pub(crate) added: Vec<DataFile>,
    /// Rows rewritten.
    pub(crate) rows: u64,
    /// Bytes of the removed files.
    pub(crate) bytes_read: u64,
    /// Bytes of the added files.
    pub(crate) bytes_written: u64,
    /// Merge attempts: 2 when an input turned out not to be in key order
    /// (or to start below its lower bound) and the merge began again.
    #[allow(dead_code, reason = "diagnostics, read by the tests")]
    pub(crate) attempts: u32,
    /// Inputs whose rows were not sorted by the key (read whole and sorted).
    #[allow(dead_code, reason = "diagnostics, read by the tests")]
    pub(crate) unsorted_inputs: usize,
    /// The most input files the merge had open at once.
    #[allow(dead_code, reason = "diagnostics, read by the tests")]
    pub(crate) max_open_inputs: usize,
}

/// Whether a partition can hold the watermark's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A time transform of the timestamp column puts the watermark elsewhere.
    Closed,
    /// The watermark's timestamp falls in this partition.
    Open,
    /// The spec has no time transform of the timestamp column.
    Unknown,
}

/// The closed partitions of `current` worth rewriting: at least
/// `min_input_files` live files and more files than
/// `ceil(bytes / target_file_size)`.
pub(crate) async fn plan(
    table: &IcebergTable,
    current: &Table,
    cfg: &MaintenanceConfig,
) -> Result<Vec<PartitionPlan>, IcebergSinkError> {
    let meta = current.metadata();
    let ident = current.identifier();
    let Some(snapshot) = meta.snapshot_for_ref(MAIN_BRANCH) else {
        return Ok(Vec::new());
    };
    let Some((committed, _)) = markers::committed(meta)? else {
        tracing::debug!(table = %ident, "nothing committed yet: no compaction");
        return Ok(Vec::new());
    };
    let ts_name = table.config().timestamp_column();
    let ts_field = meta
        .current_schema()
        .field_by_name(ts_name)
        .cloned()
        .ok_or_else(|| IcebergSinkError::MissingColumn {
            column: ts_name.to_owned(),
            purpose: "timestamp_column",
        })?;
    let ts_type = match ts_field.field_type.as_ref() {
        Type::Primitive(p) => p.clone(),
        other => {
            return Err(IcebergSinkError::KeyColumn {
                table: ident.to_string(),
                column: ts_name.to_owned(),
                reason: format!("Iceberg type {other}"),
            });
        }
    };
    let watermark = ts_datum(&ts_type, committed.until.timestamp_micros());

    let Some(live) = crate::manifests::live_files(current, snapshot).await? else {
        tracing::warn!(table = %ident, "the table has delete files: compaction skipped (they are not applied by it)");
        return Ok(Vec::new());
    };
    let mut groups: HashMap<(i32, Struct), Vec<DataFile>> = HashMap::new();
    for live in live.entries {
        let file = live.entry.data_file();
        groups
            .entry((live.spec_id, file.partition().clone()))
            .or_default()
            .push(file.clone());
    }
    let mut plans = Vec::new();
    for ((spec_id, partition), files) in groups {
        let Some(spec) = meta.partition_spec_by_id(spec_id) else {
            tracing::warn!(table = %ident, spec_id, "files of an unknown partition spec: not compacted");
            continue;
        };
        let state = match &watermark {
            Some(w) => partition_state(spec, &partition, ts_field.id, w)?,
            None => State::Unknown,
        };
        let closed = match state {
            State::Closed => true,
            State::Open => false,
            State::Unknown => cfg.compact_open,
        };
        let bytes: u64 = files.iter().map(DataFile::file_size_in_bytes).sum();
        let enough = files.len() >= cfg.min_input_files
            && files.len() as u64 > bytes.div_ceil(cfg.target_file_size.max(1));
        if closed && enough {
            let mut paths = HashSet::new();
            if !files.iter().all(|f| paths.insert(f.file_path())) {
                // One file live twice (appended twice) holds its rows twice;
                // a replace cannot name one of its entries. Left alone.
                tracing::warn!(
                    table = %ident,
                    spec_id,
                    "a partition lists a data file more than once: not compacted"
                );
                continue;
            }
            let rows = files.iter().map(DataFile::record_count).sum();
            plans.push(PartitionPlan {
                spec_id,
                partition,
                files,
                bytes,
                rows,
            });
        }
    }
    // Oldest partitions first, deterministically.
    let first_bound = |p: &PartitionPlan| {
        p.files
            .iter()
            .map(|f| lower_bound_micros(f, ts_field.id).unwrap_or(i64::MIN))
            .min()
    };
    plans.sort_by_cached_key(|p| {
        (
            first_bound(p),
            p.spec_id,
            p.files.iter().map(|f| f.file_path().to_owned()).min(),
        )
    });
    Ok(plans)
}

/// Rewrites one partition's files, sorted, into files near the target size.
pub(crate) async fn rewrite(
    table: &IcebergTable,
    current: &Table,
    plan: &PartitionPlan,
    cfg: &MaintenanceConfig,
) -> Result<Rewrite, IcebergSinkError> {
    let meta = current.metadata();
    let ident = current.identifier().to_string();
    let ts = table.config().timestamp_column().to_owned();
    let seq = table.config().sequence_column().to_owned();
    let schema = meta.current_schema().clone();
    let field_id = |name: &str, purpose: &'static str| {
        schema
            .field_by_name(name)
            .map(|f| f.id)
            .ok_or_else(|| IcebergSinkError::MissingColumn {
                column: name.to_owned(),
                purpose,
            })
    };
    let key_ids = [
        field_id(&ts, "timestamp_column")?,
        field_id(&seq, "sequence_column")?,
    ];
    let spec = meta
        .partition_spec_by_id(plan.spec_id)
        .ok_or_else(|| IcebergSinkError::WriterTask {
            reason: format!("partition spec {} of {ident} is gone", plan.spec_id),
        })?;
    let partition = (!spec.is_unpartitioned())
        .then(|| PartitionKey::new((**spec).clone(), schema.clone(), plan.partition.clone()));
    let partition_path = partition
        .as_ref()
        .map_or_else(|| "(unpartitioned)".to_owned(), PartitionKey::to_path);

    let tasks = scan_tasks(current, plan, &schema, &ts, key_ids[0]).await?;
    let mut inputs = Vec::with_capacity(plan.files.len());
    for f in &plan.files {
        let task = tasks
            .get(f.file_path())
            .cloned()
            .ok_or_else(|| IcebergSinkError::WriterTask {
                reason: format!("{} is not in the scan of {ident}", f.file_path()),
            })?;
        inputs.push(merge::Input {
            file: f.clone(),
            task,
            bound: lower_bound_micros(f, key_ids[0]),
            sorted: true,
        });
    }

    let sink = table.sink_config();
    let props =
        crate::writer::data_file_properties(&schema, [&ts, &seq], sink.zstd_level, sink.row_group_rows)?
            // The rolling writer measures a file by what is flushed plus what is
            // buffered, and a page is buffered uncompressed: pages well below the
            // target keep that estimate near the compressed size (1 MiB, Parquet's
            // default, from 16 MiB targets up).
            .set_data_page_size_limit(page_bytes(cfg.target_file_size))
            .set_dictionary_page_size_limit(page_bytes(cfg.target_file_size));
    let props = props.build();
    // Output batches of about a quarter of the target on storage, so a file
    // overshoots its target by at most that much.
    let row_bytes = (plan.bytes / plan.rows.max(1)).max(1);
    let out_rows = usize::try_from(cfg.target_file_size / 4 / row_bytes)
        .unwrap_or(usize::MAX)
        .clamp(MIN_OUTPUT_ROWS, MAX_OUTPUT_ROWS);
    let job = merge::Job {
        table: current.clone(),
        label: ident.clone(),
        partition_path: partition_path.clone(),
        inputs,
        ts,
        seq,
        key_ids,
        schema,
        partition,
        props,
        locations: DefaultLocationGenerator::new(meta)
            .map_err(|e| IcebergSinkError::iceberg("resolve the data location", e))?,
        target_file_size: cfg.target_file_size,
        batch_rows: INPUT_BATCH_ROWS,
        out_rows,
        run_id: RunId::new(),
    };
    // Decoding, merging, encoding and zstd are CPU-bound and iceberg's
    // local-FS storage blocks: keep all of it off the async workers.
    let handle = tokio::runtime::Handle::current();
    let merged = tokio::task::spawn_blocking(move || handle.block_on(job.run()))
        .await
        .map_err(|e| IcebergSinkError::WriterTask {
            reason: format!("compaction task: {e}"),
        })??;
    let added = merged.files;
    let bytes_written = added.iter().map(DataFile::file_size_in_bytes).sum();
    tracing::info!(
        table = %ident,
        partition = %partition_path,
        files_in = plan.files.len(),
        files_out = added.len(),
        rows = plan.rows,
        bytes_read = plan.bytes,
        bytes_written,
        attempts = merged.attempts,
        unsorted_inputs = merged.unsorted,
        max_open_inputs = merged.max_open,
        "compaction outputs written"
    );
    Ok(Rewrite {
        removed: plan.files.clone(),
        added,
        rows: plan.rows,
        bytes_read: plan.bytes,
        bytes_written,
        attempts: merged.attempts,
        unsorted_inputs: merged.unsorted,
        max_open_inputs: merged.max_open,
    })
}

/// Deletes a rewrite's outputs after its commit failed for certain. Best
/// effort: what is left is an orphan for cleanup.
pub(crate) async fn delete_outputs(current: &Table, rewrite: &Rewrite) {
    let keys = rewrite
        .added
        .iter()
        .map(|f| files::file_key(f.file_path()))
        .collect();
    files::delete_all(current.file_io(), keys, || ()).await;
}

/// Whether every file of `plan` is still live on `current`'s main: a plan
/// made on an earlier snapshot is only rewritten if nothing replaced its files.
pub(super) async fn still_live(current: &Table, plan: &PartitionPlan) -> Result<bool, IcebergSinkError> {
    let Some(snapshot) = current.metadata().snapshot_for_ref(MAIN_BRANCH) else {
        return Ok(false);
    };
    let Some(live) = crate::manifests::live_files(current, snapshot).await? else {
        return Ok(false);
    };
    let paths: HashSet<&str> = live
        .entries
        .iter()
        .map(|e| e.entry.data_file().file_path())
        .collect();
    Ok(plan.files.iter().all(|f| paths.contains(f.file_path())))
}

/// Scan tasks (iceberg's own planning, so name mapping and the like apply)
/// for the plan's files, reading every column of the current schema with no
/// row filter. Planning is pruned to the files' timestamp range (the union of
/// their own bounds, so none of them is pruned) so it does not list the
/// whole table for every partition.
async fn scan_tasks(
    current: &Table,
    plan: &PartitionPlan,
    schema: &iceberg::spec::SchemaRef,
    ts: &str,
    ts_id: i32,
) -> Result<HashMap<String, iceberg::scan::FileScanTask>, IcebergSinkError> {
    let ident = current.identifier();
    let Some(snapshot) = current.metadata().snapshot_for_ref(MAIN_BRANCH) else {
        return Ok(HashMap::new());
    };
    let wanted: Arc<HashSet<String>> =
        Arc::new(plan.files.iter().map(|f| f.file_path().to_owned()).collect());
    let ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let bound = |f: &DataFile, upper: bool| {
        if upper {
            f.upper_bounds().get(&ts_id).cloned()
        } else {
            f.lower_bounds().get(&ts_id).cloned()
        }
    };
    let lo: Option<Vec<Datum>> = plan.files.iter().map(|f| bound(f, false)).collect();
    let hi: Option<Vec<Datum>> = plan.files.iter().map(|f| bound(f, true)).collect();
    let range = lo.zip(hi).and_then(|(lo, hi)| {
        let lo = lo.into_iter().reduce(|a, b| if b < a { b } else { a })?;
        let hi = hi.into_iter().reduce(|a, b| if b > a { b } else { a })?;
        Some((lo, hi))
    });
    let plan_tasks = |filter: Option<Predicate>| {
        let wanted = wanted.clone();
        async move {
            let mut scan = current.scan().snapshot_id(snapshot.snapshot_id()).select_all();
            if let Some(filter) = filter {
                scan = scan.with_filter(filter);
            }
            scan.build()
                .map_err(|e| IcebergSinkError::iceberg(format!("plan a compaction scan of {ident}"), e))?
                .plan_files()
                .await
                .map_err(|e| IcebergSinkError::iceberg(format!("plan files of {ident}"), e))?
                .try_filter(move |t| futures::future::ready(wanted.contains(t.data_file_path())))
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| IcebergSinkError::iceberg(format!("plan files of {ident}"), e))
        }
    };
    let filter = range.map(|(lo, hi)| {
        Reference::new(ts)
            .greater_than_or_equal_to(lo)
            .and(Reference::new(ts).less_than_or_equal_to(hi))
    });
    let pruned = filter.is_some();
    let mut tasks = plan_tasks(filter).await?;
    let found: HashSet<&str> = tasks.iter().map(|t| t.data_file_path()).collect();
    if pruned && found.len() < wanted.len() {
        // Bounds that do not match the manifests: plan without pruning.
        tasks = plan_tasks(None).await?;
    }
    Ok(tasks
        .into_iter()
        .map(|mut t| {
            t.schema = schema.clone();
            t.project_field_ids = ids.clone();
            t.predicate = None;
            (t.data_file_path.clone(), t)
        })
        .collect())
}

/// Parquet page size for a target file size: a sixteenth of it, within
/// 4 KiB..=1 MiB.
fn page_bytes(target_file_size: u64) -> usize {
    usize::try_from(target_file_size / 16)
        .unwrap_or(usize::MAX)
        .clamp(4 << 10, 1 << 20)
}

/// The watermark's timestamp as a value of the timestamp column's type.
fn ts_datum(ty: &PrimitiveType, micros: i64) -> Option<Datum> {
    Some(match ty {
        PrimitiveType::Timestamp => Datum::timestamp_micros(micros),
        PrimitiveType::Timestamptz => Datum::timestamptz_micros(micros),
        PrimitiveType::TimestampNs => Datum::timestamp_nanos(micros.checked_mul(1000)?),
        PrimitiveType::TimestamptzNs => Datum::timestamptz_nanos(micros.checked_mul(1000)?),
        PrimitiveType::Long => Datum::long(micros),
        _ => return None,
    })
}

/// A data file's lower timestamp bound in µs (floored for nanoseconds).
fn lower_bound_micros(file: &DataFile, ts_id: i32) -> Option<i64> {
    let d = file.lower_bounds().get(&ts_id)?;
    match (d.data_type(), d.literal()) {
        (
            PrimitiveType::Timestamp | PrimitiveType::Timestamptz | PrimitiveType::Long,
            PrimitiveLiteral::Long(v),
        ) => Some(*v),
        (PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs, PrimitiveLiteral::Long(v)) => {
            Some(v.div_euclid(1000))
        }
        _ => None,
    }
}

/// Whether `partition` (of `spec`) can hold the timestamp `watermark`.
fn partition_state(
    spec: &PartitionSpec,
    partition: &Struct,
    ts_id: i32,
    watermark: &Datum,
) -> Result<State, IcebergSinkError> {
    let mut state = State::Unknown;
    for (i, field) in spec.fields().iter().enumerate() {
        if field.source_id != ts_id
            || !matches!(
                field.transform,
                Transform::Identity | Transform::Year | Transform::Month | Transform::Day | Transform::Hour
            )
        {
            continue;
        }
        let f = create_transform_function(&field.transform)
            .map_err(|e| IcebergSinkError::iceberg(format!("partition transform {}", field.transform), e))?;
        let Some(w) = f.transform_literal(watermark).map_err(|e| {
            IcebergSinkError::iceberg(format!("apply {} to the watermark", field.transform), e)
        })?
        else {
            continue;
        };
        let value = partition.fields().get(i).cloned().flatten();
        if value != Some(Literal::Primitive(w.literal().clone())) {
            return Ok(State::Closed);
        }
        state = State::Open;
    }
    Ok(state)
}

#[cfg(test)]
#[path = "compact_tests.rs"]
mod tests;
