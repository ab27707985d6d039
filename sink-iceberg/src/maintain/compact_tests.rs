//! Tests of compaction planning and the sorted rewrite, on a real SQLite
//! catalog and a local warehouse.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::{StreamExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataFile, DataFileBuilder, DataFileFormat};
use iceberg::table::Table;
use offload_core::{
    CommitMetadata, RunId, SinkTable, TableConfig, Watermark, Window, sequences_u64, timestamps_micros,
};
use tempfile::TempDir;

use super::*;
use crate::writer::parse_file_name;
use crate::{
    CatalogConfig, IcebergSink, IcebergSinkConfig, IcebergTableOptions, PartitionField, Transform as T,
};

const DAY: i64 = 86_400_000_000;
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200_000_000;

struct Fixture {
    _dir: TempDir,
    table: IcebergTable,
    /// The last committed position.
    until: Watermark,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seq", DataType::Int64, false),
        Field::new("sym", DataType::Utf8, false),
        Field::new("qty", DataType::Int32, true),
        Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
    ]))
}

/// Rows at the given `(ts, seq)` positions, other columns derived from `seq`.
fn rows(keys: &[(i64, i64)]) -> RecordBatch {
    let ts = TimestampMicrosecondArray::from_iter_values(keys.iter().map(|k| k.0)).with_timezone("UTC");
    let seq = Int64Array::from_iter_values(keys.iter().map(|k| k.1));
    let sym = StringArray::from_iter_values(
        keys.iter()
            .map(|k| format!("S{}-{}", k.1 % 17, "x".repeat((k.1 % 5) as usize))),
    );
    let qty = Int32Array::from_iter(keys.iter().map(|k| (k.1 % 7 != 0).then_some((k.1 % 1000) as i32)));
    let mut tags = ListBuilder::new(StringBuilder::new());
    for k in keys {
        if k.1 % 11 == 0 {
            tags.append(false);
        } else {
            for j in 0..(k.1 % 3) {
                tags.values().append_value(format!("t{j}"));
            }
            tags.append(true);
        }
    }
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(ts),
            Arc::new(seq),
            Arc::new(sym),
            Arc::new(qty),
            Arc::new(tags.finish()),
        ],
    )
    .unwrap()
}

/// `n` positions from `ts0`, `step` µs apart, sequences from `seq0`.
fn run(ts0: i64, step: i64, seq0: i64, n: usize) -> Vec<(i64, i64)> {
    (0..n as i64).map(|i| (ts0 + i * step, seq0 + i)).collect()
}

impl Fixture {
    async fn new(options: IcebergTableOptions) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("offload-compact-")
            .tempdir()
            .unwrap();
        let warehouse = dir.path().join("warehouse").to_str().unwrap().to_owned();
        let config = IcebergSinkConfig::new(CatalogConfig::sqlite(dir.path().join("catalog.db"), warehouse));
        let sink = IcebergSink::connect(config).await.unwrap();
        let table_config = TableConfig::builder("t")
            .sink_table("lake.t")
            .timestamp_column("ts")
            .sequence_column("seq")
            .option(options)
            .build()
            .unwrap();
        let table = sink.open_table(&table_config).unwrap();
        table.prepare(schema()).await.unwrap();
        Fixture {
            _dir: dir,
            table,
            until: Watermark::MIN,
        }
    }

    /// Commits `keys` as one window (one data file per partition), moving
    /// the watermark to just past the largest position seen so far.
    async fn commit(&mut self, keys: &[(i64, i64)]) {
        let max = keys.iter().copied().max().unwrap();
        let until = Watermark::new(max.0, max.1 as u64).max(Watermark::new(
            self.until.timestamp_micros(),
            self.until.sequence() + 1,
        ));
        let run_id = RunId::new();
        let mut w = self.table.begin(run_id, schema()).await.unwrap();
        w.write(rows(keys)).await.unwrap();
        let staged = w.finish().await.unwrap();
        let meta = CommitMetadata {
            window: Window::new(self.until, until).unwrap(),
            run_id,
            engine_id: "test".into(),
            fencing_token: 1,
        };
        staged.commit(&meta).await.unwrap();
        self.until = until;
    }

    async fn load(&self) -> Table {
        self.table.load().await.unwrap()
    }
}

/// Every row of `files`, read with the current schema, in file order.
async fn read(table: &Table, files: &[DataFile]) -> Vec<RecordBatch> {
    let schema = table.metadata().current_schema().clone();
    let ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let mut out = Vec::new();
    for f in files {
        let task = FileScanTask::builder()
            .with_file_size_in_bytes(f.file_size_in_bytes())
            .with_start(0)
            .with_length(f.file_size_in_bytes())
            .with_record_count(Some(f.record_count()))
            .with_data_file_path(f.file_path().to_owned())
            .with_data_file_format(DataFileFormat::Parquet)
            .with_schema(schema.clone())
            .with_project_field_ids(ids.clone())
            .with_case_sensitive(true)
            .build();
        let stream = table
            .reader_builder()
            .build()
            .read(futures::stream::iter([Ok(task)]).boxed())
            .unwrap()
            .stream();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

fn keys_of(batches: &[RecordBatch]) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    for b in batches {
        let ts = timestamps_micros(b.column_by_name("ts").unwrap().as_ref()).unwrap();
        let seq = sequences_u64(b.column_by_name("seq").unwrap().as_ref()).unwrap();
        out.extend(ts.into_iter().zip(seq));
    }
    out
}

/// The rows of `batches` as one batch sorted by key (keys are unique in
/// these tests, so the order is total).
fn sorted(batches: &[RecordBatch]) -> RecordBatch {
    let whole = arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap();
    let keys = keys_of(std::slice::from_ref(&whole));
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_by_key(|i| keys[*i as usize]);
    arrow_select::take::take_record_batch(&whole, &UInt32Array::from(order)).unwrap()
}

fn assert_same_rows(a: &RecordBatch, b: &RecordBatch) {
    assert_eq!(a.num_rows(), b.num_rows());
    assert_eq!(a.num_columns(), b.num_columns());
    for i in 0..a.num_columns() {
        assert_eq!(
            a.column(i).to_data(),
            b.column(i).to_data(),
            "column {}",
            a.schema().field(i).name()
        );
    }
}

fn day_of(plan: &PartitionPlan) -> i32 {
    match plan.partition.fields() {
        [Some(Literal::Primitive(PrimitiveLiteral::Int(d)))] => *d,
        other => panic!("not a day partition: {other:?}"),
    }
}

const T0_DAY: i32 = (T0 / DAY) as i32;

#[tokio::test]
async fn plan_picks_closed_partitions_with_enough_files() {
    let mut fx = Fixture::new(IcebergTableOptions::new()).await;
    let cfg = MaintenanceConfig::default().min_input_files(5);
    assert!(
        plan(&fx.table, &fx.load().await, &cfg).await.unwrap().is_empty(),
        "nothing committed"
    );
    // Day 0: 6 windows; day 1: 4 windows; day 2 (the watermark's): 6 windows.
    let mut seq = 0;
    for (day, windows) in [(0, 6), (1, 4), (2, 6)] {
        for w in 0..windows {
            fx.commit(&run(T0 + day * DAY + w * 3_600_000_000, 1_000, seq, 200))
                .await;
            seq += 200;
        }
    }
    let current = fx.load().await;
    let plans = plan(&fx.table, &current, &cfg).await.unwrap();
    assert_eq!(
        plans.iter().map(day_of).collect::<Vec<_>>(),
        vec![T0_DAY],
        "only day 0 is closed with >= 5 files"
    );
    let p = &plans[0];
    assert_eq!(p.files.len(), 6);
    assert_eq!(p.rows, 1_200);
    assert_eq!(
        p.bytes,
        p.files.iter().map(DataFile::file_size_in_bytes).sum::<u64>()
    );
    assert_eq!(p.spec_id, current.metadata().default_partition_spec_id());

    // Four files are enough with min_input_files 4; the open day never is.
    let plans = plan(&fx.table, &current, &cfg.clone().min_input_files(4))
        .await
        .unwrap();
    assert_eq!(
        plans.iter().map(day_of).collect::<Vec<_>>(),
        vec![T0_DAY, T0_DAY + 1]
    );
    let plans = plan(
        &fx.table,
        &current,
        &cfg.clone().min_input_files(2).compact_open(true),
    )
    .await
    .unwrap();
    assert_eq!(
        plans.len(),
        2,
        "compact_open does not open the watermark's partition: {plans:?}"
    );

    // Files already near the target are left alone: 6 files but
    // ceil(bytes / target) >= 6.
    let smallest = p.bytes / 6;
    let plans = plan(&fx.table, &current, &cfg.clone().target_file_size(smallest / 2))
        .await
        .unwrap();
    assert!(plans.is_empty(), "{plans:?}");
}

#[tokio::test]
async fn plan_uses_the_hour_transform_and_leaves_unpartitioned_tables_to_compact_open() {
    let hourly = IcebergTableOptions::new().partition_by(PartitionField::new("ts", T::Hour));
    let mut fx = Fixture::new(hourly).await;
    let mut seq = 0;
    // Hours 0 and 1 closed, hour 2 holds the watermark; 3 windows each.
    for hour in 0..3 {
        for w in 0..3 {
            fx.commit(&run(T0 + hour * 3_600_000_000 + w * 60_000_000, 10, seq, 50))
                .await;
            seq += 50;
        }
    }
    let cfg = MaintenanceConfig::default().min_input_files(3);
    let plans = plan(&fx.table, &fx.load().await, &cfg).await.unwrap();
    let hours: Vec<_> = plans
        .iter()
        .map(|p| match p.partition.fields() {
            [Some(Literal::Primitive(PrimitiveLiteral::Int(h)))] => i64::from(*h),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(hours, vec![T0 / 3_600_000_000, T0 / 3_600_000_000 + 1]);

    let mut flat = Fixture::new(IcebergTableOptions::new().unpartitioned()).await;
    for w in 0..4 {
        flat.commit(&run(T0 + w * DAY, 10, w * 100, 100)).await;
    }
    let current = flat.load().await;
    assert!(
        plan(&flat.table, &current, &cfg).await.unwrap().is_empty(),
        "unpartitioned: open by default"
    );
    let plans = plan(&flat.table, &current, &cfg.clone().compact_open(true))
        .await
        .unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].files.len(), 4);
    assert!(plans[0].partition.fields().is_empty());
}

/// Day 0 gets in-order windows, two repair-like files overlapping them and
/// each other, and a file whose rows are in reverse order; day 1 holds the
/// watermark.
async fn messy_day() -> Fixture {
    let mut fx = Fixture::new(IcebergTableOptions::new()).await;
    let hour = 3_600_000_000;
    // 8 in-order windows of 1500 rows, 2 s apart, even timestamps.
    for w in 0..8 {
        fx.commit(&run(T0 + w * hour, 2_000_000, w * 10_000, 1_500)).await;
    }
    // Repair-like: odd timestamps across windows 0..4 (all of them at once),
    // and a second one overlapping it.
    fx.commit(&run(T0 + 1, 4_000_000 - 1, 100_000, 3_000)).await;
    fx.commit(&run(T0 + 3, 7_000_000, 200_000, 1_000)).await;
    // Unsorted: timestamps descending inside windows 5..6.
    let mut rev = run(T0 + 5 * hour + 5, 3_000_000, 300_000, 1_500);
    rev.reverse();
    fx.commit(&rev).await;
    // Day 1: the watermark's partition.
    fx.commit(&run(T0 + DAY, 1_000, 400_000, 100)).await;
    fx
}

#[tokio::test]
async fn rewrite_merges_overlapping_and_unsorted_files_into_sorted_exact_files() {
    let fx = messy_day().await;
    let current = fx.load().await;
    let target = 64 * 1024;
    let cfg = MaintenanceConfig::default()
        .min_input_files(5)
        .target_file_size(target);
    let plans = plan(&fx.table, &current, &cfg).await.unwrap();
    assert_eq!(plans.iter().map(day_of).collect::<Vec<_>>(), vec![T0_DAY]);
    let p = &plans[0];
    assert_eq!(p.files.len(), 11);
    let before = read(&current, &p.files).await;

    let out = rewrite(&fx.table, &current, p, &cfg).await.unwrap();
    assert_eq!(out.removed, p.files);
    assert_eq!(out.rows, p.rows);
    assert_eq!(
        (out.attempts, out.unsorted_inputs),
        (2, 1),
        "the reversed file is found and sorted"
    );
    assert!(
        (3..=5).contains(&out.max_open_inputs),
        "a window, the two repair-like files and at most the file after: {}",
        out.max_open_inputs
    );
    assert_eq!(out.bytes_read, p.bytes);
    assert_eq!(out.added.iter().map(DataFile::record_count).sum::<u64>(), p.rows);
    assert_eq!(
        out.bytes_written,
        out.added.iter().map(DataFile::file_size_in_bytes).sum::<u64>()
    );
    let limit = p.bytes.div_ceil(target) + 1;
    let sizes: Vec<u64> = out.added.iter().map(DataFile::file_size_in_bytes).collect();
    eprintln!("outputs {sizes:?} for {} input bytes", p.bytes);
    assert!(
        out.added.len() as u64 <= limit,
        "{} outputs for {} input bytes (target {target}): at most {limit}",
        out.added.len(),
        p.bytes
    );
    assert!(out.added.len() > 1, "the small target rolls files");
    for f in &out.added {
        assert_eq!(f.partition(), &p.partition, "outputs keep the partition value");
        assert!(f.file_path().contains("ts_day=2024-03-01"), "{}", f.file_path());
        let name = f.file_path().rsplit('/').next().unwrap();
        let (_, _, task, _) = parse_file_name(name).unwrap_or_else(|| panic!("sink file name: {name}"));
        assert_eq!(task, 0);
        assert!(std::path::Path::new(f.file_path().trim_start_matches("file:")).exists());
    }
    let after = read(&current, &out.added).await;
    let keys = keys_of(&after);
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "outputs sorted across files by (ts, seq)"
    );
    assert_eq!(keys.len() as u64, p.rows);
    assert_same_rows(
        &sorted(&before),
        &arrow_select::concat::concat_batches(&after[0].schema(), &after).unwrap(),
    );
}

#[tokio::test]
async fn rewrite_of_a_large_target_writes_one_file() {
    let fx = messy_day().await;
    let current = fx.load().await;
    let cfg = MaintenanceConfig::default().min_input_files(5);
    let p = plan(&fx.table, &current, &cfg).await.unwrap().remove(0);
    let out = rewrite(&fx.table, &current, &p, &cfg).await.unwrap();
    assert_eq!(out.added.len(), 1);
    let after = read(&current, &out.added).await;
    let keys = keys_of(&after);
    assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    assert_same_rows(&sorted(&read(&current, &p.files).await), &sorted(&after));
}

#[tokio::test]
async fn rewrite_with_a_row_mismatch_fails_and_deletes_its_outputs() {
    let fx = messy_day().await;
    let current = fx.load().await;
    let cfg = MaintenanceConfig::default().min_input_files(5);
    let mut p = plan(&fx.table, &current, &cfg).await.unwrap().remove(0);
    // One file claims a row more than it holds.
    let f = p.files[0].clone();
    p.files[0] = DataFileBuilder::default()
        .content(f.content_type())
        .file_path(f.file_path().to_owned())
        .file_format(f.file_format())
        .partition(f.partition().clone())
        .partition_spec_id(p.spec_id)
        .record_count(f.record_count() + 1)
        .file_size_in_bytes(f.file_size_in_bytes())
        .lower_bounds(f.lower_bounds().clone())
        .upper_bounds(f.upper_bounds().clone())
        .build()
        .unwrap();
    p.rows += 1;
    let data_dir =
        std::path::PathBuf::from(current.metadata().location().trim_start_matches("file:")).join("data");
    let files_before = count_parquet(&data_dir);
    match rewrite(&fx.table, &current, &p, &cfg).await {
        Err(IcebergSinkError::CompactionRowMismatch {
            expected,
            written,
            partition,
            ..
        }) => {
            assert_eq!(expected, p.rows);
            assert_eq!(written, p.rows - 1);
            assert_eq!(partition, "ts_day=2024-03-01");
        }
        other => panic!("expected a row mismatch, got {other:?}"),
    }
    assert_eq!(count_parquet(&data_dir), files_before, "outputs deleted");
    assert!(
        !IcebergSinkError::CompactionRowMismatch {
            table: String::new(),
            partition: String::new(),
            expected: 1,
            written: 0
        }
        .is_retryable()
    );
}

fn count_parquet(root: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn merge_orders_equal_timestamps_by_sequence_across_files() {
    let mut fx = Fixture::new(IcebergTableOptions::new()).await;
    // Many rows share each timestamp; sequences interleave across files.
    for f in 0..5i64 {
        let keys: Vec<(i64, i64)> = (0..2_000i64)
            .map(|i| (T0 + (i / 10) * 1_000, i * 5 + f))
            .collect();
        fx.commit(&keys).await;
    }
    fx.commit(&run(T0 + DAY, 1, 1_000_000, 10)).await;
    let current = fx.load().await;
    let cfg = MaintenanceConfig::default().min_input_files(5);
    let p = plan(&fx.table, &current, &cfg).await.unwrap().remove(0);
    let out = rewrite(&fx.table, &current, &p, &cfg).await.unwrap();
    assert_eq!(
        (out.attempts, out.unsorted_inputs),
        (1, 0),
        "in-order inputs merge in one pass"
    );
    assert_eq!(out.max_open_inputs, 5, "all five files overlap");
    let after = read(&current, &out.added).await;
    let keys = keys_of(&after);
    assert_eq!(keys.len(), 10_000);
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing (ts, seq)"
    );
    assert_same_rows(&sorted(&read(&current, &p.files).await), &sorted(&after));
}

/// `file` with its timestamp lower bound replaced by `bound` (a wrong
/// bound, as another writer might record).
fn with_ts_lower_bound(file: &DataFile, spec_id: i32, ts_id: i32, bound: Datum) -> DataFile {
    let mut lower = file.lower_bounds().clone();
    lower.insert(ts_id, bound);
    DataFileBuilder::default()
        .content(file.content_type())
        .file_path(file.file_path().to_owned())
        .file_format(file.file_format())
        .partition(file.partition().clone())
        .partition_spec_id(spec_id)
        .record_count(file.record_count())
        .file_size_in_bytes(file.file_size_in_bytes())
        .lower_bounds(lower)
        .upper_bounds(file.upper_bounds().clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_file_starting_below_its_lower_bound_is_merged_in_order_after_a_key_check() {
    let mut fx = Fixture::new(IcebergTableOptions::new()).await;
    for w in 0..5 {
        fx.commit(&run(T0 + w * 3_600_000_000, 1_000_000, w * 10_000, 1_000))
            .await;
    }
    fx.commit(&run(T0 + DAY, 1, 1_000_000, 10)).await;
    let current = fx.load().await;
    let ts_id = current
        .metadata()
        .current_schema()
        .field_by_name("ts")
        .unwrap()
        .id;
    let cfg = MaintenanceConfig::default().min_input_files(5);
    let mut p = plan(&fx.table, &current, &cfg).await.unwrap().remove(0);
    // The first window's file claims to start after the last one's.
    let first = p
        .files
        .iter()
        .position(|f| lower_bound_micros(f, ts_id) == Some(T0))
        .unwrap();
    p.files[first] = with_ts_lower_bound(
        &p.files[first],
        p.spec_id,
        ts_id,
        Datum::timestamptz_micros(T0 + 20 * 3_600_000_000),
    );
    let out = rewrite(&fx.table, &current, &p, &cfg).await.unwrap();
    assert_eq!((out.attempts, out.unsorted_inputs), (2, 0));
    assert_eq!(
        out.max_open_inputs, 1,
        "with exact bounds, one window file at a time"
    );
    let after = read(&current, &out.added).await;
    let keys = keys_of(&after);
    assert_eq!(keys.len(), 5_000);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_same_rows(&sorted(&read(&current, &p.files).await), &sorted(&after));
}

#[tokio::test]
async fn many_in_order_windows_are_merged_one_file_at_a_time() {
    let mut fx = Fixture::new(IcebergTableOptions::new()).await;
    // 120 windows of 500 rows within day 0, then the watermark's day.
    for w in 0..120 {
        fx.commit(&run(T0 + w * 600_000_000, 1_000_000, w * 1_000, 500))
            .await;
    }
    fx.commit(&run(T0 + DAY, 1, 1_000_000, 10)).await;
    let current = fx.load().await;
    let cfg = MaintenanceConfig::default()
        .min_input_files(5)
        .target_file_size(256 * 1024);
    let p = plan(&fx.table, &current, &cfg).await.unwrap().remove(0);
    assert_eq!(p.files.len(), 120);
    let out = rewrite(&fx.table, &current, &p, &cfg).await.unwrap();
    assert_eq!(
        out.max_open_inputs, 1,
        "files are opened only when the merge reaches them"
    );
    assert_eq!((out.attempts, out.unsorted_inputs), (1, 0));
    assert!(out.added.len() as u64 <= p.bytes.div_ceil(256 * 1024) + 1);
    let after = read(&current, &out.added).await;
    let keys = keys_of(&after);
    assert_eq!(keys.len(), 60_000);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_same_rows(&sorted(&read(&current, &p.files).await), &sorted(&after));
}

#[tokio::test]
async fn plan_skips_a_partition_that_lists_a_file_twice() {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};

    let mut fx = Fixture::new(IcebergTableOptions::new()).await;
    for w in 0..5 {
        fx.commit(&run(T0 + w * 3_600_000_000, 1_000, w * 1_000, 100))
            .await;
    }
    fx.commit(&run(T0 + DAY, 1, 1_000_000, 10)).await;
    let cfg = MaintenanceConfig::default().min_input_files(5);
    let p = plan(&fx.table, &fx.load().await, &cfg).await.unwrap().remove(0);
    // Another writer appends one of day 0's files again.
    let current = fx.load().await;
    let tx = Transaction::new(&current);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files([p.files[0].clone()])
        .apply(tx)
        .unwrap();
    tx.commit(&**fx.table.catalog()).await.unwrap();
    let plans = plan(&fx.table, &fx.load().await, &cfg).await.unwrap();
    assert!(plans.is_empty(), "{plans:?}");
}
