//! The streaming sorted rewrite of one partition: a lazy k-way merge of its
//! data files on `(timestamp, sequence)` into rolling Parquet files.
//!
//! # Memory bound
//!
//! A file is opened only when the merge frontier (the smallest key among the
//! open files) reaches the file's lower timestamp bound, and each open file
//! holds one decoded batch of at most `batch_rows` rows plus what Parquet's
//! async reader buffers for it (the projected column chunks of one row group).
//! Files are closed as soon as they are exhausted. The output side holds at
//! most `out_rows` row indices, the batches they point into (the open files'
//! current batches plus at most [`MAX_RETIRED`] exhausted ones) and the
//! Parquet writer's in-progress row group. So memory is
//!
//! `open_files × (batch_rows rows + one row group's chunks) + MAX_RETIRED batches + out_rows rows + one row group`
//!
//! where `open_files` is the number of files whose key ranges overlap at the
//! frontier: one or two for windows offloaded in order, a few more around
//! repair files, never a function of how many files or rows the partition has.
//! A file found not sorted by the key is read whole and sorted, so it costs
//! its decoded size while it is open (bounded by that file).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::{RecordBatch, UInt32Array};
use futures::{StreamExt, TryStreamExt};
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::{DataFile, PartitionKey, SchemaRef};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use offload_core::{RunId, sequences_u64, timestamps_micros};
use parquet::file::properties::WriterProperties;

use crate::IcebergSinkError;

/// At most this many exhausted input batches are kept for the pending output
/// rows before the output is flushed early.
pub(super) const MAX_RETIRED: usize = 64;

/// A merge key: `(timestamp µs, sequence)`.
type Key = (i64, u64);

/// One input file of the merge.
#[derive(Clone)]
pub(super) struct Input {
    /// The live data file.
    pub(super) file: DataFile,
    /// A scan task reading all of it in the output schema.
    pub(super) task: FileScanTask,
    /// Lower bound of its timestamps (µs); `None` opens it at the start.
    pub(super) bound: Option<i64>,
    /// Whether its rows are (believed to be) sorted by the key.
    pub(super) sorted: bool,
}

/// Everything the rewrite of one partition needs, owned (it runs on a
/// blocking-pool thread).
pub(super) struct Job {
    pub(super) table: Table,
    /// `namespace.table`, for errors.
    pub(super) label: String,
    /// The partition path, for errors and logs.
    pub(super) partition_path: String,
    pub(super) inputs: Vec<Input>,
    pub(super) ts: String,
    pub(super) seq: String,
    /// Field ids of the key columns (for key-only scans).
    pub(super) key_ids: [i32; 2],
    pub(super) schema: SchemaRef,
    pub(super) partition: Option<PartitionKey>,
    pub(super) props: WriterProperties,
    pub(super) locations: DefaultLocationGenerator,
    pub(super) target_file_size: u64,
    pub(super) batch_rows: usize,
    pub(super) out_rows: usize,
    pub(super) run_id: RunId,
}

/// What a merge produced.
pub(super) struct Merged {
    /// The files written.
    pub(super) files: Vec<DataFile>,
    /// Merge attempts (2 when an input was found out of key order).
    pub(super) attempts: u32,
    /// Inputs that were not sorted by the key (read whole and sorted).
    pub(super) unsorted: usize,
    /// The most input files open at once (the memory bound's `open_files`).
    pub(super) max_open: usize,
}

/// Why a merge attempt stopped early.
enum Stop {
    /// An input is not sorted, or starts below its lower bound: the attempt
    /// is discarded and the inputs are checked key by key.
    Restart {
        input: usize,
        reason: String,
    },
    Fail(IcebergSinkError),
}

impl From<IcebergSinkError> for Stop {
    fn from(e: IcebergSinkError) -> Self {
        Stop::Fail(e)
    }
}

/// Every location handed to the writer, so a failed attempt deletes exactly
/// what it created (also a file still being written).
#[derive(Clone, Default)]
struct Tracker(Arc<Mutex<Vec<String>>>);

impl Tracker {
    fn locations(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[derive(Clone)]
struct TrackedLocations {
    inner: DefaultLocationGenerator,
    tracker: Tracker,
}

impl LocationGenerator for TrackedLocations {
    fn generate_location(&self, partition_key: Option<&PartitionKey>, file_name: &str) -> String {
        let location = self.inner.generate_location(partition_key, file_name);
        self.tracker
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(location.clone());
        location
    }
}

/// The sink's data file names, `<run_id>-<attempt>-<task>-<n>.parquet`
/// (task 0: one writer), so orphan cleanup recognises them.
#[derive(Clone)]
struct Names {
    prefix: String,
    next: Arc<AtomicU64>,
}

impl FileNameGenerator for Names {
    fn generate_file_name(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:05}.parquet", self.prefix)
    }
}

impl Job {
    /// Merges the inputs into new files and returns them, after checking
    /// that they hold exactly the inputs' rows; on any failure the files
    /// written so far are deleted.
    pub(super) async fn run(mut self) -> Result<Merged, IcebergSinkError> {
        let expected: u64 = self.inputs.iter().map(|i| i.file.record_count()).sum();
        let mut rescanned = false;
        for attempt in 0u32.. {
            let tracker = Tracker::default();
            let builder = DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
                ParquetWriterBuilder::new(self.props.clone(), self.schema.clone()),
                usize::try_from(self.target_file_size).unwrap_or(usize::MAX),
                self.table.file_io().clone(),
                TrackedLocations {
                    inner: self.locations.clone(),
                    tracker: tracker.clone(),
                },
                Names {
                    prefix: format!("{}-{attempt}-0", self.run_id),
                    next: Arc::new(AtomicU64::new(0)),
                },
            ));
            let mut writer = builder
                .build(self.partition.clone())
                .await
                .map_err(|e| self.ice("open a compaction writer", e))?;
            let merged = self.merge(&mut writer).await;
            let stop = match merged {
                Ok((rows, max_open)) => {
                    let files = match writer.close().await {
                        Ok(f) => f,
                        Err(e) => {
                            self.delete(&tracker).await;
                            return Err(self.ice("close compaction outputs", e));
                        }
                    };
                    let written: u64 = files.iter().map(DataFile::record_count).sum();
                    if rows != expected || written != expected {
                        self.delete(&tracker).await;
                        return Err(IcebergSinkError::CompactionRowMismatch {
                            table: self.label.clone(),
                            partition: self.partition_path.clone(),
                            expected,
                            written: if rows != expected { rows } else { written },
                        });
                    }
                    return Ok(Merged {
                        files,
                        attempts: attempt + 1,
                        unsorted: self.inputs.iter().filter(|i| !i.sorted).count(),
                        max_open,
                    });
                }
                Err(stop) => stop,
            };
            drop(writer);
            self.delete(&tracker).await;
            match stop {
                Stop::Fail(e) => return Err(e),
                Stop::Restart { input, reason } if !rescanned => {
                    tracing::warn!(
                        table = %self.label,
                        partition = %self.partition_path,
                        file = self.inputs[input].file.file_path(),
                        %reason,
                        "compaction input is not in key order; checking every input's keys and merging again"
                    );
                    self.rescan().await?;
                    rescanned = true;
                }
                Stop::Restart { input, reason } => {
                    return Err(IcebergSinkError::WriterTask {
                        reason: format!(
                            "compaction merge of {} {} out of order after checking every input: {} {reason}",
                            self.label,
                            self.partition_path,
                            self.inputs[input].file.file_path()
                        ),
                    });
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn ice(&self, what: &str, e: iceberg::Error) -> IcebergSinkError {
        IcebergSinkError::iceberg(format!("{what} for {} {}", self.label, self.partition_path), e)
    }

    async fn delete(&self, tracker: &Tracker) {
        for location in tracker.locations() {
            if let Err(e) = self.table.file_io().delete(&location).await {
                tracing::warn!(%location, error = %e, "could not delete a compaction output; left for orphan cleanup");
            }
        }
    }

    fn stream(&self, task: FileScanTask) -> Result<ArrowRecordBatchStream, IcebergSinkError> {
        let path = task.data_file_path.clone();
        let reader = self
            .table
            .reader_builder()
            .with_batch_size(self.batch_rows)
            .with_data_file_concurrency_limit(1)
            .build();
        Ok(reader
            .read(futures::stream::iter([Ok(task)]).boxed())
            .map_err(|e| self.ice(&format!("read {path}"), e))?
            .stream())
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Vec<Key>, IcebergSinkError> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| IcebergSinkError::KeyColumn {
                    table: self.label.clone(),
                    column: name.to_owned(),
                    reason: "missing from a compaction input".into(),
                })
        };
        let bad = |name: &str, reason: String| IcebergSinkError::KeyColumn {
            table: self.label.clone(),
            column: name.to_owned(),
            reason,
        };
        let ts = timestamps_micros(col(&self.ts)?.as_ref()).map_err(|r| bad(&self.ts, r))?;
        let seq = sequences_u64(col(&self.seq)?.as_ref()).map_err(|r| bad(&self.seq, r))?;
        Ok(ts.into_iter().zip(seq).collect())
    }

    /// Reads every input's key columns: whether it is sorted, and its exact
    /// smallest timestamp (the lower bound the merge opens it at).
    async fn rescan(&mut self) -> Result<(), IcebergSinkError> {
        for i in 0..self.inputs.len() {
            let mut task = self.inputs[i].task.clone();
            task.project_field_ids = self.key_ids.to_vec();
            let path = task.data_file_path.clone();
            let mut stream = self.stream(task)?;
            let (mut sorted, mut min, mut last) = (true, None::<i64>, None::<Key>);
            while let Some(batch) = stream
                .try_next()
                .await
                .map_err(|e| self.ice(&format!("read the keys of {path}"), e))?
            {
                for k in self.keys(&batch)? {
                    sorted &= last.is_none_or(|l| l <= k);
                    min = Some(min.map_or(k.0, |m| m.min(k.0)));
                    last = Some(k);
                }
            }
            let input = &mut self.inputs[i];
            input.sorted = sorted;
            input.bound = Some(min.unwrap_or(i64::MIN));
        }
        Ok(())
    }

    /// One merge attempt into `writer`; returns the rows merged and the
    /// most files that were open at once.
    async fn merge<W: IcebergWriter>(&self, writer: &mut W) -> Result<(u64, usize), Stop> {
        let bound = |i: usize| self.inputs[i].bound.unwrap_or(i64::MIN);
        let mut order: Vec<usize> = (0..self.inputs.len()).collect();
        order.sort_by_key(|i| (bound(*i), *i));
        let mut pending: VecDeque<usize> = order.into();
        let mut cursors: Vec<Option<Cursor>> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
        let mut out = Out::default();
        let (mut open, mut max_open) = (0usize, 0usize);
        loop {
            // Open every file the frontier has reached: its rows may be the
            // smallest now. A file whose bound is above the frontier's
            // timestamp holds only larger keys.
            while let Some(&i) = pending.front() {
                if heap.peek().is_some_and(|Reverse((k, _))| bound(i) > k.0) {
                    break;
                }
                pending.pop_front();
                if let Some(c) = self.open(i, &mut out).await? {
                    heap.push(Reverse((c.keys[c.pos], cursors.len())));
                    cursors.push(Some(c));
                    open += 1;
                    max_open = max_open.max(open);
                }
            }
            let Some(Reverse((_, id))) = heap.pop() else {
                break;
            };
            let next_heap = heap.peek().map(|Reverse((k, _))| *k);
            let next_bound = pending.front().map(|i| bound(*i));
            let Some(c) = cursors[id].as_mut() else {
                unreachable!("only live cursors are in the heap");
            };
            // Emit the run of this file's rows that no other open or
            // pending file can precede.
            let room = self.out_rows.saturating_sub(out.idx.len()).max(1);
            let start = c.pos;
            let mut end = start + 1;
            while end < c.keys.len() && end - start < room {
                let k = c.keys[end];
                if next_heap.is_some_and(|h| k > h) || next_bound.is_some_and(|b| k.0 >= b) {
                    break;
                }
                end += 1;
            }
            out.idx.extend((start..end).map(|r| (c.slot, r)));
            out.last = Some(c.keys[end - 1]);
            out.rows += (end - start) as u64;
            c.pos = end;
            let live = c.pos < c.keys.len() || self.next_batch(c, &mut out).await?;
            if live {
                heap.push(Reverse((c.keys[c.pos], id)));
            } else {
                cursors[id] = None;
                open -= 1;
            }
            if out.idx.len() >= self.out_rows || out.retired >= MAX_RETIRED {
                out.flush(self, writer, &mut cursors).await?;
            }
        }
        out.flush(self, writer, &mut cursors).await?;
        Ok((out.rows, max_open))
    }

    /// Opens input `i`: `None` when it has no rows.
    async fn open(&self, i: usize, out: &mut Out) -> Result<Option<Cursor>, Stop> {
        let input = &self.inputs[i];
        let path = input.file.file_path();
        let mut stream = self.stream(input.task.clone())?;
        if input.sorted {
            let mut c = Cursor {
                input: i,
                stream: Some(stream),
                slot: 0,
                keys: Vec::new(),
                pos: 0,
            };
            return Ok(self.next_batch(&mut c, out).await?.then_some(c));
        }
        // Not sorted: read it whole and sort it.
        let mut batches = Vec::new();
        while let Some(b) = stream
            .try_next()
            .await
            .map_err(|e| self.ice(&format!("read {path}"), e))?
        {
            batches.push(b);
        }
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let whole = arrow_select::concat::concat_batches(&first.schema(), &batches)
            .map_err(|e| IcebergSinkError::arrow(format!("assemble {path}"), e))?;
        drop(batches);
        if whole.num_rows() == 0 {
            return Ok(None);
        }
        let keys = self.keys(&whole)?;
        let mut order: Vec<u32> = (0..u32::try_from(keys.len()).map_err(|_| {
            Stop::Fail(IcebergSinkError::WriterTask {
                reason: format!("{path} has more than 2^32 rows"),
            })
        })?)
            .collect();
        order.sort_by_key(|r| keys[*r as usize]);
        let sorted_keys: Vec<Key> = order.iter().map(|r| keys[*r as usize]).collect();
        let sorted = arrow_select::take::take_record_batch(&whole, &UInt32Array::from(order))
            .map_err(|e| IcebergSinkError::arrow(format!("sort {path}"), e))?;
        drop(whole);
        self.check_start(i, &sorted_keys, out)?;
        let slot = out.push(sorted);
        Ok(Some(Cursor {
            input: i,
            stream: None,
            slot,
            keys: sorted_keys,
            pos: 0,
        }))
    }

    /// Loads the cursor's next non-empty batch; `false` at the end of its
    /// file. Refuses (restart) a batch that is not sorted or starts below the
    /// last row merged.
    async fn next_batch(&self, c: &mut Cursor, out: &mut Out) -> Result<bool, Stop> {
        if !c.keys.is_empty() {
            // The batch just exhausted stays until the next flush.
            out.retired += 1;
        }
        let Some(stream) = c.stream.as_mut() else {
            return Ok(false);
        };
        let path = self.inputs[c.input].file.file_path();
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| self.ice(&format!("read {path}"), e))?
        {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys(&batch)?;
            if let Some(w) = keys.windows(2).position(|w| w[0] > w[1]) {
                return Err(Stop::Restart {
                    input: c.input,
                    reason: format!("row key {:?} follows {:?}", keys[w + 1], keys[w]),
                });
            }
            self.check_start(c.input, &keys, out)?;
            c.slot = out.push(batch);
            c.keys = keys;
            c.pos = 0;
            return Ok(true);
        }
        c.stream = None;
        Ok(false)
    }

    /// A newly loaded batch must not start below the last row merged.
    fn check_start(&self, input: usize, keys: &[Key], out: &Out) -> Result<(), Stop> {
        match (keys.first(), out.last) {
            (Some(first), Some(last)) if *first < last => Err(Stop::Restart {
                input,
                reason: format!("a batch starts at {first:?}, below the last row merged {last:?}"),
            }),
            _ => Ok(()),
        }
    }
}

/// An open input file.
struct Cursor {
    input: usize,
    /// `None` once the file is exhausted or when it was read whole.
    stream: Option<ArrowRecordBatchStream>,
    /// Its current batch in [`Out::arena`].
    slot: usize,
    /// Keys of the current batch.
    keys: Vec<Key>,
    /// Next row of the current batch.
    pos: usize,
}

/// The output being assembled.
#[derive(Default)]
struct Out {
    /// Batches the pending rows point into.
    arena: Vec<RecordBatch>,
    /// Pending output rows: `(arena slot, row)`.
    idx: Vec<(usize, usize)>,
    /// Exhausted batches still in the arena.
    retired: usize,
    /// The last row merged.
    last: Option<Key>,
    /// Rows merged.
    rows: u64,
}

impl Out {
    fn push(&mut self, batch: RecordBatch) -> usize {
        self.arena.push(batch);
        self.arena.len() - 1
    }

    /// Writes the pending rows as one batch and keeps only the open files'
    /// current batches.
    async fn flush<W: IcebergWriter>(
        &mut self,
        job: &Job,
        writer: &mut W,
        cursors: &mut [Option<Cursor>],
    ) -> Result<(), IcebergSinkError> {
        if !self.idx.is_empty() {
            let refs: Vec<&RecordBatch> = self.arena.iter().collect();
            let batch = arrow_select::interleave::interleave_record_batch(&refs, &self.idx)
                .map_err(|e| IcebergSinkError::arrow("assemble a compaction batch", e))?;
            self.idx.clear();
            writer
                .write(batch)
                .await
                .map_err(|e| job.ice("write a compaction output", e))?;
        }
        let mut kept = Vec::with_capacity(cursors.len());
        for c in cursors.iter_mut().flatten() {
            kept.push(self.arena[c.slot].clone());
            c.slot = kept.len() - 1;
        }
        self.arena = kept;
        self.retired = 0;
        Ok(())
    }
}
