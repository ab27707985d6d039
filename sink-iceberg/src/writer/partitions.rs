//! The open data-file writers of one encoder task, one per partition, with
//! a bound on how many stay open.
//!
//! iceberg's `FanoutWriter` keeps every partition's writer (and its buffered
//! row group) open until the end of the window, so a window crossing
//! midnight holds two per encoder task, and unordered input over many
//! partitions holds one per partition. Here a writer is closed once the input
//! has moved past its partition: after `idle_batches` input batches without a
//! row for it, or when opening another would exceed `max_open` (the least
//! recently written one goes). Correctness never depends on the input's
//! order: a partition that comes back simply gets another file.

use arrow_array::RecordBatch;
use iceberg::spec::{DataFile, PartitionKey, Struct};
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

/// When open partition writers are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Close a writer after this many input batches (of its task) brought
    /// no row for its partition (>= 1).
    pub(crate) idle_batches: u64,
    /// At most this many writers open at once (>= 1); opening one more
    /// closes the least recently written.
    pub(crate) max_open: usize,
}

/// How many writers were opened and why they were closed (diagnostics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Writers opened.
    pub(crate) opened: usize,
    /// Closed because their partition received nothing for `idle_batches`.
    pub(crate) closed_idle: usize,
    /// Closed to stay within `max_open`.
    pub(crate) evicted: usize,
    /// The most writers open at once.
    pub(crate) max_open_seen: usize,
}

struct Open<W> {
    partition: Struct,
    writer: W,
    /// The input batch that last brought rows.
    last_batch: u64,
    /// A counter of writes, for least-recently-written eviction.
    last_write: u64,
}

/// The partition writers of one encoder task.
pub(crate) struct PartitionWriters<B: IcebergWriterBuilder> {
    builder: B,
    limits: Limits,
    /// Few (`max_open`), so a linear search beats hashing the partition value.
    open: Vec<Open<B::R>>,
    batch: u64,
    writes: u64,
    done: Vec<DataFile>,
    counts: Counts,
}

impl<B: IcebergWriterBuilder> PartitionWriters<B> {
    pub(crate) fn new(builder: B, limits: Limits) -> Self {
        Self {
            builder,
            limits: Limits {
                idle_batches: limits.idle_batches.max(1),
                max_open: limits.max_open.max(1),
            },
            open: Vec::new(),
            batch: 0,
            writes: 0,
            done: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// Writes one input batch, already split by partition, then closes the
    /// writers whose partition the input has left.
    pub(crate) async fn write_batch(
        &mut self,
        parts: Vec<(PartitionKey, RecordBatch)>,
    ) -> iceberg::Result<()> {
        self.batch += 1;
        for (key, part) in parts {
            let i = match self.open.iter().position(|o| &o.partition == key.data()) {
                Some(i) => i,
                None => self.open_writer(key).await?,
            };
            self.writes += 1;
            let open = &mut self.open[i];
            open.last_batch = self.batch;
            open.last_write = self.writes;
            open.writer.write(part).await?;
        }
        let mut i = 0;
        while i < self.open.len() {
            if self.batch - self.open[i].last_batch >= self.limits.idle_batches {
                self.close_at(i).await?;
                self.counts.closed_idle += 1;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    async fn open_writer(&mut self, key: PartitionKey) -> iceberg::Result<usize> {
        if self.open.len() >= self.limits.max_open {
            let lru = self
                .open
                .iter()
                .enumerate()
                .min_by_key(|(_, o)| o.last_write)
                .map(|(i, _)| i);
            if let Some(i) = lru {
                self.close_at(i).await?;
                self.counts.evicted += 1;
            }
        }
        let partition = key.data().clone();
        let writer = self.builder.build(Some(key)).await?;
        self.open.push(Open {
            partition,
            writer,
            last_batch: self.batch,
            last_write: self.writes,
        });
        self.counts.opened += 1;
        self.counts.max_open_seen = self.counts.max_open_seen.max(self.open.len());
        Ok(self.open.len() - 1)
    }

    async fn close_at(&mut self, i: usize) -> iceberg::Result<()> {
        let mut open = self.open.swap_remove(i);
        self.done.extend(open.writer.close().await?);
        Ok(())
    }

    /// Closes every writer; returns all files written.
    pub(crate) async fn close(mut self) -> iceberg::Result<(Vec<DataFile>, Counts)> {
        while !self.open.is_empty() {
            self.close_at(self.open.len() - 1).await?;
        }
        Ok((self.done, self.counts))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow_array::{Int32Array, Int64Array};
    use arrow_schema::{DataType, Field, Schema as ArrowSchema};
    use iceberg::io::{FileIOBuilder, LocalFsStorageFactory};
    use iceberg::spec::{
        DataFileFormat, Literal, NestedField, PartitionSpec, PrimitiveType, Schema, Transform, Type,
    };
    use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
    use iceberg::writer::file_writer::ParquetWriterBuilder;
    use iceberg::writer::file_writer::location_generator::{
        DefaultFileNameGenerator, DefaultLocationGenerator,
    };
    use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// A table `(p int, n long)` partitioned by `identity(p)`, written with
    /// the real Parquet/data-file writers into a temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
        schema: Arc<Schema>,
        spec: PartitionSpec,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(
            Schema::builder()
                .with_fields([
                    Arc::new(NestedField::required(1, "p", Type::Primitive(PrimitiveType::Int))),
                    Arc::new(NestedField::required(
                        2,
                        "n",
                        Type::Primitive(PrimitiveType::Long),
                    )),
                ])
                .build()
                .unwrap(),
        );
        let spec = PartitionSpec::builder(schema.clone())
            .add_partition_field("p", "p", Transform::Identity)
            .unwrap()
            .build()
            .unwrap();
        Fixture { dir, schema, spec }
    }

    impl Fixture {
        fn builder(
            &self,
        ) -> DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>
        {
            let file_io = FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build();
            let locations =
                DefaultLocationGenerator::with_data_location(self.dir.path().to_string_lossy().into_owned());
            let names = DefaultFileNameGenerator::new(
                uuid::Uuid::now_v7().to_string(),
                None,
                DataFileFormat::Parquet,
            );
            DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
                ParquetWriterBuilder::new(WriterProperties::default(), self.schema.clone()),
                128 << 20,
                file_io,
                locations,
                names,
            ))
        }

        /// `rows` rows of partition `p`, `n` counting on from `n0`.
        fn part(&self, p: i32, n0: i64, rows: usize) -> (PartitionKey, RecordBatch) {
            let arrow = Arc::new(ArrowSchema::new(vec![
                Field::new("p", DataType::Int32, false)
                    .with_metadata([("PARQUET:field_id".to_owned(), "1".to_owned())].into()),
                Field::new("n", DataType::Int64, false)
                    .with_metadata([("PARQUET:field_id".to_owned(), "2".to_owned())].into()),
            ]));
            let batch = RecordBatch::try_new(
                arrow,
                vec![
                    Arc::new(Int32Array::from(vec![p; rows])),
                    Arc::new(Int64Array::from_iter_values(n0..n0 + rows as i64)),
                ],
            )
            .unwrap();
            let key = PartitionKey::new(
                self.spec.clone(),
                self.schema.clone(),
                Struct::from_iter([Some(Literal::int(p))]),
            );
            (key, batch)
        }

        /// Writes `batches` (each a list of `(partition, rows)`), returns
        /// files per partition as `partition -> [rows per file]`, and the counts.
        async fn run(
            &self,
            limits: Limits,
            batches: &[&[(i32, usize)]],
        ) -> (BTreeMap<i32, Vec<u64>>, Counts) {
            let mut w = PartitionWriters::new(self.builder(), limits);
            let mut n = 0;
            for batch in batches {
                let parts = batch
                    .iter()
                    .map(|&(p, rows)| {
                        n += rows as i64;
                        self.part(p, n, rows)
                    })
                    .collect();
                w.write_batch(parts).await.unwrap();
            }
            let (files, counts) = w.close().await.unwrap();
            let mut per = BTreeMap::<i32, Vec<u64>>::new();
            for f in files {
                let Some(Some(Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(p)))) =
                    f.partition().fields().first().cloned()
                else {
                    panic!("partition value {:?}", f.partition());
                };
                per.entry(p).or_default().push(f.record_count());
            }
            (per, counts)
        }
    }

    const fn limits(idle_batches: u64, max_open: usize) -> Limits {
        Limits {
            idle_batches,
            max_open,
        }
    }

    #[tokio::test]
    async fn ordered_input_closes_each_partition_once_it_is_left() {
        let f = fixture();
        // Three days, a batch crossing each midnight.
        let batches: &[&[(i32, usize)]] = &[
            &[(0, 100)],
            &[(0, 100)],
            &[(0, 50), (1, 50)],
            &[(1, 100)],
            &[(1, 30), (2, 70)],
            &[(2, 100)],
        ];
        let (files, counts) = f.run(limits(1, 8), batches).await;
        assert_eq!(
            files,
            BTreeMap::from([(0, vec![250]), (1, vec![180]), (2, vec![170])])
        );
        assert_eq!(counts.opened, 3);
        assert_eq!(counts.closed_idle, 2, "closed before the end: the first two days");
        assert_eq!(counts.evicted, 0);
        assert_eq!(
            counts.max_open_seen, 2,
            "never more than the two days of a crossing"
        );
    }

    #[tokio::test]
    async fn interleaved_input_keeps_writers_within_the_idle_limit() {
        let f = fixture();
        let batches: &[&[(i32, usize)]] = &[
            &[(0, 10)],
            &[(1, 20)],
            &[(0, 30)],
            &[(1, 40)],
            &[(0, 50), (1, 60)],
        ];
        // Each partition comes back within two batches: one file each.
        let (files, counts) = f.run(limits(2, 8), batches).await;
        assert_eq!(files, BTreeMap::from([(0, vec![90]), (1, vec![120])]));
        assert_eq!((counts.opened, counts.closed_idle, counts.evicted), (2, 0, 0));
        // Closed after one batch without rows: every return is a new file,
        // and still every row is in exactly one.
        let (files, counts) = f.run(limits(1, 8), batches).await;
        assert_eq!(files, BTreeMap::from([(0, vec![10, 30, 50]), (1, vec![20, 100])]));
        assert_eq!(counts.opened, 5);
        assert_eq!(counts.closed_idle, 3);
    }

    #[tokio::test]
    async fn a_partition_that_returns_gets_a_new_file() {
        let f = fixture();
        let batches: &[&[(i32, usize)]] = &[&[(0, 10)], &[(1, 10)], &[(1, 10)], &[(1, 10)], &[(0, 5)]];
        let (files, counts) = f.run(limits(2, 8), batches).await;
        assert_eq!(files, BTreeMap::from([(0, vec![10, 5]), (1, vec![30])]));
        assert_eq!((counts.opened, counts.closed_idle), (3, 1));
    }

    #[tokio::test]
    async fn the_cap_evicts_the_least_recently_written() {
        let f = fixture();
        // Five partitions in one batch with room for two, then 4 and 3 again.
        let batches: &[&[(i32, usize)]] = &[&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], &[(4, 6), (3, 7)]];
        let (files, counts) = f.run(limits(100, 2), batches).await;
        assert_eq!(counts.max_open_seen, 2);
        assert_eq!(counts.evicted, 3, "0, 1 and 2 made room");
        // 3 and 4 were the most recent: still open when they came back.
        assert_eq!(
            files,
            BTreeMap::from([
                (0, vec![1]),
                (1, vec![2]),
                (2, vec![3]),
                (3, vec![11]),
                (4, vec![11])
            ])
        );
        // Evicting the one just written when the next partition arrives.
        let batches: &[&[(i32, usize)]] = &[&[(0, 1), (1, 2)], &[(0, 3), (2, 4)], &[(1, 5)]];
        let (files, counts) = f.run(limits(100, 2), batches).await;
        assert_eq!(
            files,
            BTreeMap::from([(0, vec![4]), (1, vec![2, 5]), (2, vec![4])])
        );
        assert_eq!(counts.evicted, 2);
    }
}
