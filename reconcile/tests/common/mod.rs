//! Test fixtures: a real ClickHouse engine (chdb via the testkit front), a
//! real Iceberg table written by `offload-sink-iceberg` through the real
//! `offload-core` engine reading with `offload-source-clickhouse`, and helpers
//! that plant faults the way production bugs would.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use futures::TryStreamExt;
use offload_core::memory::MemoryStore;
use offload_core::{
    CommitMetadata, Offloader, RunId, Sink, Source, SystemClock, TableConfig, Watermark, Window,
};
use offload_reconcile::{Bucket, ClickHouseLayer, IcebergLayer};
use offload_sink_iceberg::{CatalogConfig, DEFAULT_NAMESPACE, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::ClickHouseSource;
use offload_testkit::ClickHouseFront;
use tempfile::TempDir;

/// 2024-05-01T00:00:00Z in µs.
pub const BASE: i64 = 1_714_521_600_000_000;
pub const MINUTE: i64 = 60_000_000;
pub const SECOND: i64 = 1_000_000;

/// Start of minute bucket `n` after [`BASE`].
pub fn minute(n: i64) -> i64 {
    BASE + n * MINUTE
}

pub fn bucket(n: i64) -> Bucket {
    Bucket {
        start: minute(n),
        end: minute(n + 1),
    }
}

/// The trades table every test uses: Kafka coordinates, a decimal price, a
/// low-cardinality symbol, a nullable note.
pub fn trades_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
    ts DateTime64(6, 'UTC'),
    seq UInt64,
    sym LowCardinality(String),
    price Decimal(18, 4),
    qty Int32,
    note Nullable(String),
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = MergeTree ORDER BY (ts, seq)"
    )
}

/// One trade row.
#[derive(Clone, Debug)]
pub struct Trade {
    pub ts: i64,
    pub seq: u64,
    pub price_ticks: i64, // price × 10^4
    pub partition: i32,
    pub offset: i64,
}

impl Trade {
    /// The row as TabSeparated text.
    pub fn tsv(&self) -> String {
        let secs = self.ts.div_euclid(SECOND);
        let us = self.ts.rem_euclid(SECOND);
        format!(
            "{secs}.{us:06}\t{}\tS{}\t{}.{:04}\t{}\t{}\t{}\t{}\n",
            self.seq,
            self.seq % 7,
            self.price_ticks / 10_000,
            self.price_ticks % 10_000,
            self.seq % 100,
            if self.seq.is_multiple_of(3) {
                "\\N".to_owned()
            } else {
                format!("n{}", self.seq)
            },
            self.partition,
            self.offset
        )
    }
}

/// Inserts rows into `table` with one INSERT.
pub fn insert(ch: &ClickHouseFront, table: &str, rows: &[Trade]) {
    if rows.is_empty() {
        return;
    }
    let mut sql = format!("INSERT INTO {table} FORMAT TabSeparated\n");
    for r in rows {
        sql.push_str(&r.tsv());
    }
    ch.query(&sql);
}

/// An Iceberg warehouse and SQLite catalog in a temp dir, and the sink on it.
pub struct Lake {
    pub dir: TempDir,
    pub sink: Arc<IcebergSink>,
    /// The sink's namespace for bare table names.
    pub namespace: String,
}

impl Lake {
    /// A sink that puts bare table names in `lake`.
    pub async fn new() -> Lake {
        Lake::build(Some("lake")).await
    }

    /// A sink with the default configuration: bare names in
    /// `offload_sink_iceberg::DEFAULT_NAMESPACE`, as the `offload` program does.
    pub async fn with_defaults() -> Lake {
        Lake::build(None).await
    }

    async fn build(namespace: Option<&str>) -> Lake {
        let dir = tempfile::tempdir().expect("temp dir");
        let wh = dir.path().join("warehouse");
        std::fs::create_dir_all(&wh).unwrap();
        let cfg = CatalogConfig::sqlite(dir.path().join("catalog.db"), wh.to_str().unwrap());
        let mut config = IcebergSinkConfig::new(cfg);
        if let Some(ns) = namespace {
            config = config.default_namespace(ns);
        }
        let sink = IcebergSink::connect(config)
            .await
            .expect("connect the Iceberg sink");
        Lake {
            dir,
            sink: Arc::new(sink),
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
        }
    }

    /// The reconciliation layer on the sink's catalog, with the sink's namespace.
    pub fn layer(&self) -> IcebergLayer {
        IcebergLayer::new(self.sink.catalog().clone()).with_default_namespace(self.namespace.clone())
    }
}

pub fn source(ch: &ClickHouseFront) -> Arc<ClickHouseSource> {
    Arc::new(
        ClickHouseSource::builder(ch.url())
            .build()
            .expect("ClickHouse source"),
    )
}

pub fn clickhouse(ch: &ClickHouseFront) -> ClickHouseLayer {
    ClickHouseLayer::from_url(ch.url())
}

/// The offload config of `name` (ClickHouse table = name, Iceberg `lake.<name>`), no lag.
pub fn table_config(name: &str) -> TableConfig {
    TableConfig::builder(name)
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(std::time::Duration::ZERO)
        .build()
        .unwrap()
}

/// Runs the real engine until the sink has every row the source offers.
pub async fn offload(ch: &ClickHouseFront, lake: &Lake, table: &TableConfig) -> Watermark {
    let store = Arc::new(MemoryStore::new(SystemClock));
    let engine = Offloader::builder(source(ch), lake.sink.clone(), store)
        .engine_id("reconcile-tests")
        .build()
        .unwrap();
    // Data spanning more than max_window (1 h by default) takes several runs.
    let mut rows = 0;
    loop {
        let summary = engine.run_once(table).await.expect("offload run");
        if summary.window.is_none() {
            break;
        }
        rows += summary.rows;
    }
    assert!(rows > 0, "offload moved nothing");
    committed(lake, table).await.expect("a committed window")
}

/// The sink's committed watermark of `table`, read through its handle.
pub async fn committed(lake: &Lake, table: &TableConfig) -> Option<Watermark> {
    let handle = lake.sink.open(table).await.expect("open the sink table");
    handle.committed().await.unwrap().map(|c| c.until)
}

/// The bug exactly-once exists to prevent: rows of `bucket` committed a
/// second time. Reads them from ClickHouse with the real source and commits
/// them through the sink's staging/commit API in a window just above the
/// committed watermark, so the fence accepts it.
pub async fn commit_again(
    ch: &ClickHouseFront,
    lake: &Lake,
    table: &TableConfig,
    bucket: Bucket,
    max_rows: usize,
) -> usize {
    let src = source(ch).open(table).await.expect("open the source table");
    let window = Window::new(
        Watermark::new(bucket.start - 1, u64::MAX),
        Watermark::new(bucket.end - 1, u64::MAX),
    )
    .unwrap();
    let batches: Vec<_> = src.read(window).await.unwrap().try_collect().await.unwrap();
    let run = RunId::new();
    let sink = lake.sink.open(table).await.expect("open the sink table");
    let mut writer = sink.begin(run, src.schema()).await.unwrap();
    let mut n = 0;
    for b in batches {
        let take = b.num_rows().min(max_rows - n);
        if take == 0 {
            break;
        }
        writer.write(b.slice(0, take)).await.unwrap();
        n += take;
    }
    let staged = writer.finish().await.unwrap();
    let w = sink.committed().await.unwrap().unwrap().until;
    let next = Watermark::new(w.timestamp_micros(), w.sequence() + 1);
    let meta = CommitMetadata {
        window: Window::new(w, next).unwrap(),
        run_id: run,
        engine_id: "buggy-engine".into(),
        fencing_token: 1,
    };
    staged.commit(&meta).await.unwrap();
    n
}
