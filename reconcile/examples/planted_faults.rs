//! The reconciliation report for a small demo pipeline, end to end and local:
//! a Kafka topic (librdkafka's mock cluster), the real ClickHouse engine
//! (chdb behind the testkit front; needs `bash testing/setup-venv.sh` once),
//! and an Iceberg table written by the real offload engine.
//!
//! ```sh
//! cargo run -p offload-reconcile --example planted_faults            # human tables
//! cargo run -p offload-reconcile --example planted_faults -- --json  # the faulty report as JSON
//! ```
//!
//! It prints the report of the clean offload, then plants one fault of each
//! kind (a Kafka message that never reached ClickHouse, a row that reached
//! ClickHouse after the offload, a value changed in place, a row committed to
//! Iceberg twice, rows beyond the committed watermark) and prints it again.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use offload_core::memory::MemoryStore;
use offload_core::{
    CommitMetadata, Offloader, RunId, Sink, Source, SystemClock, TableConfig, Watermark, Window,
};
use offload_reconcile::{
    BucketSize, ClickHouseLayer, Format, IcebergLayer, KafkaLayer, Reconciler, TableSpec, TimeRange,
};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::ClickHouseSource;
use offload_testkit::ClickHouseFront;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// 2024-05-01T00:00:00Z.
const BASE_US: i64 = 1_714_521_600_000_000;
const MINUTE_US: i64 = 60_000_000;

struct Row {
    ts: i64,
    seq: u64,
    partition: i32,
    offset: i64,
}

impl Row {
    fn values(&self) -> String {
        format!(
            "(fromUnixTimestamp64Micro(toInt64({}), 'UTC'), {}, 'S{}', toDecimal64({}, 4) / 100, {}, {})",
            self.ts,
            self.seq,
            self.seq % 5,
            10_000 + self.seq,
            self.partition,
            self.offset
        )
    }
}

fn insert(ch: &ClickHouseFront, rows: &[&Row]) {
    let values: Vec<String> = rows.iter().map(|r| r.values()).collect();
    ch.query(&format!("INSERT INTO trades VALUES {}", values.join(",")));
}

async fn produce(producer: &FutureProducer, topic: &str, rows: &mut [Row]) {
    for r in rows {
        let payload = r.seq.to_string();
        let d = producer
            .send(
                FutureRecord::to(topic)
                    .partition(r.partition)
                    .timestamp(r.ts / 1000)
                    .key(&payload)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        r.offset = d.offset;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args().any(|a| a == "--json");

    // Kafka: 8 minutes of trades, 30 a minute, two partitions.
    let kafka = MockCluster::new(1)?;
    kafka.create_topic("trades", 2, 1)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .create()?;
    let mut rows: Vec<Row> = (0..240u64)
        .map(|seq| Row {
            ts: BASE_US + (seq as i64 / 30) * MINUTE_US + (seq as i64 % 30) * 2_000_000,
            seq,
            partition: (seq % 2) as i32,
            offset: -1,
        })
        .collect();
    produce(&producer, "trades", &mut rows).await;

    // ClickHouse ingests the topic, except seq 100 and 101 (a gap) and 40 (late).
    let ch = ClickHouseFront::start();
    ch.query(
        "CREATE TABLE trades (ts DateTime64(6, 'UTC'), seq UInt64, sym LowCardinality(String), \
         price Decimal(18, 4), kafka_partition Int32, kafka_offset Int64) ENGINE = MergeTree ORDER BY (ts, seq)",
    );
    insert(
        &ch,
        &rows
            .iter()
            .filter(|r| ![40, 100, 101].contains(&r.seq))
            .collect::<Vec<_>>(),
    );

    // The real engine offloads ClickHouse to Iceberg.
    let dir = tempfile::tempdir()?;
    let wh = dir.path().join("warehouse");
    std::fs::create_dir_all(&wh)?;
    let sink = Arc::new(
        IcebergSink::connect(
            IcebergSinkConfig::new(CatalogConfig::sqlite(
                dir.path().join("catalog.db"),
                wh.to_str().unwrap(),
            ))
            .default_namespace("lake"),
        )
        .await?,
    );
    let source = Arc::new(ClickHouseSource::builder(ch.url()).build()?);
    let table = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .lag(Duration::ZERO)
        .build()?;
    Offloader::builder(
        source.clone(),
        sink.clone(),
        Arc::new(MemoryStore::new(SystemClock)),
    )
    .build()?
    .run_once(&table)
    .await?;

    let range = TimeRange::new(BASE_US, BASE_US + 9 * MINUTE_US, BucketSize::Minute)?;
    let reconciler = Reconciler::new(ClickHouseLayer::from_url(ch.url()), range)
        .with_iceberg(IcebergLayer::new(sink.catalog().clone()))
        .with_kafka(KafkaLayer::new(kafka.bootstrap_servers()));
    let spec = [TableSpec::new("trades", "trades", "ts", "seq")
        .iceberg_table("lake.trades")
        .kafka_topic("trades")
        .sum_columns(["price"])];

    let before = reconciler.run(&spec).await;
    if !json {
        println!("=== after the offload (Kafka messages 40, 100, 101 not yet in ClickHouse)\n");
        print!("{}", before.render(Format::Table { all_buckets: true }));
    }

    // Faults: seq 40 arrives in ClickHouse after the offload; a price changes
    // in place; two rows of minute 5 are committed to Iceberg a second time;
    // minute 8 arrives in Kafka and ClickHouse after the offload.
    insert(&ch, &[&rows[40]]);
    ch.query("ALTER TABLE trades UPDATE price = price + 1 WHERE seq = 130 SETTINGS mutations_sync = 2");
    let window = Window::new(
        Watermark::new(BASE_US + 5 * MINUTE_US - 1, u64::MAX),
        Watermark::new(BASE_US + 5 * MINUTE_US + 2_000_000, u64::MAX),
    )?;
    let source_table = source.open(&table).await?;
    let sink_table = sink.open(&table).await?;
    let batches: Vec<_> = source_table.read(window).await?.try_collect().await?;
    let run = RunId::new();
    let mut writer = sink_table.begin(run, source_table.schema()).await?;
    for b in batches {
        writer.write(b).await?;
    }
    let staged = writer.finish().await?;
    let w = sink_table.committed().await?.expect("committed").until;
    staged
        .commit(&CommitMetadata {
            window: Window::new(w, Watermark::new(w.timestamp_micros(), w.sequence() + 1))?,
            run_id: run,
            engine_id: "a buggy engine".into(),
            fencing_token: 0,
        })
        .await?;
    let mut late: Vec<Row> = (240..270u64)
        .map(|seq| Row {
            ts: BASE_US + 8 * MINUTE_US + (seq as i64 - 240) * 2_000_000,
            seq,
            partition: (seq % 2) as i32,
            offset: -1,
        })
        .collect();
    produce(&producer, "trades", &mut late).await;
    insert(&ch, &late.iter().collect::<Vec<_>>());

    let after = reconciler.run(&spec).await;
    if json {
        print!("{}", after.render(Format::Json));
    } else {
        println!("=== after planting faults\n");
        print!("{}", after.render(Format::Table { all_buckets: true }));
        println!("exit status for alerts/CI: {}", after.exit_code());
    }
    Ok(())
}
