//! Kafka, ClickHouse and Iceberg together, with faults planted in each layer.
//!
//! The broker is librdkafka's mock cluster (real Kafka protocol on loopback)
//! unless `KAFKA_BOOTSTRAP` names a real one: `bash reconcile/tests/tansu.sh`
//! runs this file against tansu, where the tests also require the
//! `offsets_for_times` method (the mock cluster cannot answer it, so on the
//! mock the reconciler falls back to reading the topic and the tests require
//! that instead). Nothing is skipped either way.

mod common;

use std::time::Duration;

use common::*;
use offload_reconcile::{
    BucketSize, KafkaCountMethod, KafkaLayer, KeyDiffKind, Layer, OffsetRange, Reconciler, Report, TableSpec,
    TimeRange, Verdict,
};
use offload_testkit::ClickHouseFront;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};

/// A Kafka cluster for one test.
enum Broker {
    Mock(MockCluster<'static, DefaultProducerContext>),
    External(String),
}

impl Broker {
    fn start() -> Broker {
        match std::env::var("KAFKA_BOOTSTRAP")
            .ok()
            .filter(|b| !b.trim().is_empty())
        {
            Some(b) => Broker::External(b),
            None => Broker::Mock(MockCluster::new(1).expect("start librdkafka's mock cluster")),
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(m) => m.bootstrap_servers(),
            Broker::External(b) => b.clone(),
        }
    }

    /// The count method this broker must end up using.
    fn expected_method(&self) -> &'static str {
        match self {
            Broker::Mock(_) => "scan",
            Broker::External(_) => "offsets_for_times",
        }
    }

    /// Creates a fresh topic (unique name: a real broker outlives the test).
    async fn topic(&self, base: &str, partitions: i32) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("{base}-{nanos}");
        match self {
            Broker::Mock(m) => m.create_topic(&name, partitions, 1).expect("create a mock topic"),
            Broker::External(b) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", b)
                    .create()
                    .expect("admin client");
                let res = admin
                    .create_topics(
                        &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                    )
                    .await
                    .expect("create_topics");
                for r in res {
                    r.expect("topic created");
                }
            }
        }
        name
    }
}

/// Produces one message per trade (partition and timestamp from the trade),
/// in order, and fills in the offsets the broker assigned.
async fn produce(bootstrap: &str, topic: &str, trades: &mut [Trade]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    // Enqueue everything first (order per partition is kept), then wait.
    let mut pending = Vec::with_capacity(trades.len());
    for t in trades.iter() {
        let key = t.seq.to_string();
        let payload = t.tsv();
        let record = FutureRecord::to(topic)
            .partition(t.partition)
            .timestamp(t.ts.div_euclid(1_000))
            .key(&key)
            .payload(&payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
    }
    for (t, fut) in trades.iter_mut().zip(pending) {
        let delivery = fut
            .await
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("delivered");
        assert_eq!(delivery.partition, t.partition);
        t.offset = delivery.offset;
    }
}

/// 20 trades a minute over `minutes`, alternating between two partitions.
fn trades(minutes: std::ops::Range<i64>, first_seq: u64) -> Vec<Trade> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    for m in minutes {
        for i in 0..20 {
            out.push(Trade {
                ts: minute(m) + i * 2 * SECOND,
                seq,
                price_ticks: 500_000 + seq as i64,
                partition: (seq % 2) as i32,
                offset: -1,
            });
            seq += 1;
        }
    }
    out
}

fn reconciler(ch: &ClickHouseFront, lake: &Lake, broker: &Broker, to_minute: i64) -> Reconciler {
    let range = TimeRange::new(minute(0), minute(to_minute), BucketSize::Minute).unwrap();
    Reconciler::new(clickhouse(ch), range)
        .with_iceberg(lake.layer())
        .with_kafka(KafkaLayer::new(broker.bootstrap()).with_timeout(Duration::from_secs(30)))
}

fn spec(table: &str, topic: &str) -> TableSpec {
    TableSpec::new(table, table, "ts", "seq")
        .iceberg_table(format!("lake.{table}"))
        .kafka_topic(topic)
        .sum_columns(["price"])
}

fn verdicts(r: &Report) -> Vec<Verdict> {
    assert_eq!(r.tables[0].error, None);
    r.tables[0].buckets.iter().map(|b| b.verdict).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_pipeline_is_ok_in_all_three_layers() {
    let broker = Broker::start();
    let topic = broker.topic("clean", 2).await;
    let mut rows = trades(0..6, 0);
    produce(&broker.bootstrap(), &topic, &mut rows).await;
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("clean"));
    insert(&ch, "clean", &rows);
    let lake = Lake::new().await;
    offload(&ch, &lake, &table_config("clean")).await;

    // Buckets 0..5 are wholly committed (the watermark is inside bucket 5).
    let report = reconciler(&ch, &lake, &broker, 5)
        .run(&[spec("clean", &topic)])
        .await;
    println!("{}", report.render_table(true));
    let t = &report.tables[0];
    assert_eq!(t.kafka_method.as_deref(), Some(broker.expected_method()));
    assert_eq!(verdicts(&report), vec![Verdict::Ok; 5]);
    assert_eq!(
        (t.totals.kafka, t.totals.clickhouse, t.totals.iceberg),
        (Some(100), Some(100), Some(100))
    );
    let k = t.buckets[0].kafka.as_ref().unwrap();
    assert_eq!(
        (k.messages, k.partitions[&0].messages, k.partitions[&1].messages),
        (20, 10, 10)
    );
    assert_eq!(
        (k.partitions[&0].first_offset, k.partitions[&0].end_offset),
        (0, 10)
    );
    assert!(k.complete);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_planted_fault_is_named_with_its_bucket_and_verdict() {
    let broker = Broker::start();
    let topic = broker.topic("trades", 2).await;
    let mut rows = trades(0..6, 0);
    produce(&broker.bootstrap(), &topic, &mut rows).await;
    let by_seq = |s: u64| rows[s as usize].clone();

    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("trades"));
    // Kafka gap (bucket 2): seq 45, 46, 47 never reach ClickHouse.
    // Late arrival (bucket 1): seq 25 reaches ClickHouse after the offload.
    // Redelivery (bucket 3): seq 65 is stored twice.
    let mut first: Vec<Trade> = rows
        .iter()
        .filter(|t| ![25, 45, 46, 47].contains(&t.seq))
        .cloned()
        .collect();
    first.push(by_seq(65));
    insert(&ch, "trades", &first);
    let lake = Lake::new().await;
    let table = table_config("trades");
    offload(&ch, &lake, &table).await;

    insert(&ch, "trades", &[by_seq(25)]);
    // Iceberg duplicate (bucket 0): two rows committed twice.
    assert_eq!(commit_again(&ch, &lake, &table, bucket(0), 2).await, 2);
    // Changed value (bucket 4).
    ch.query("ALTER TABLE trades UPDATE price = price * 2 WHERE seq = 85 SETTINGS mutations_sync = 2");
    // Late rows beyond the watermark (bucket 6): in Kafka and ClickHouse only.
    let mut late = trades(6..7, 120);
    produce(&broker.bootstrap(), &topic, &mut late).await;
    insert(&ch, "trades", &late);

    let report = reconciler(&ch, &lake, &broker, 7)
        .run(&[spec("trades", &topic)])
        .await;
    println!("{}", report.render_table(true));
    let t = &report.tables[0];
    assert_eq!(t.kafka_method.as_deref(), Some(broker.expected_method()));
    assert_eq!(
        verdicts(&report),
        vec![
            Verdict::Duplicated,      // 0: committed twice to Iceberg
            Verdict::Missing,         // 1: reached ClickHouse after the offload
            Verdict::Missing,         // 2: Kafka offsets that never reached ClickHouse
            Verdict::Duplicated,      // 3: a Kafka message stored twice
            Verdict::Diverged,        // 4: a value changed in place
            Verdict::Ok,              // 5: holds the committed watermark, nothing above it
            Verdict::NotYetOffloaded, // 6: beyond it
        ]
    );
    assert_eq!(report.exit_code(), 1);

    let only = |i: usize| {
        let f = &t.buckets[i].findings;
        assert_eq!(f.len(), 1, "bucket {i}: {f:?}");
        f[0].clone()
    };
    // 0: Iceberg holds two rows twice, listed by key.
    let f = only(0);
    assert_eq!(
        (f.layer, f.upstream, f.rows),
        (Layer::Iceberg, Some(Layer::ClickHouse), 2)
    );
    assert_eq!(
        f.keys.iter().map(|k| (k.seq, k.kind)).collect::<Vec<_>>(),
        [(0, KeyDiffKind::Duplicated), (1, KeyDiffKind::Duplicated)]
    );
    // 1: the late row is missing from Iceberg, by key.
    let f = only(1);
    assert_eq!(
        (f.layer, f.rows, f.keys[0].seq, f.keys[0].kind),
        (Layer::Iceberg, 1, 25, KeyDiffKind::Missing)
    );
    // 2: the exact offsets that never reached ClickHouse.
    let f = only(2);
    assert_eq!(
        (f.layer, f.upstream, f.rows),
        (Layer::ClickHouse, Some(Layer::Kafka), 3)
    );
    let (o45, o46) = (by_seq(45).offset, by_seq(46).offset);
    assert_eq!(by_seq(47).offset, o45 + 1);
    assert_eq!(
        f.offsets,
        [
            OffsetRange {
                partition: 0,
                start: o46,
                end: o46 + 1,
                copies: 0
            },
            OffsetRange {
                partition: 1,
                start: o45,
                end: o45 + 2,
                copies: 0
            },
        ]
    );
    assert_eq!(
        (
            t.buckets[2].kafka.as_ref().unwrap().messages,
            t.buckets[2].clickhouse.as_ref().unwrap().rows
        ),
        (20, 17)
    );
    // 3: the redelivered offset, once (not again as a ClickHouse or Iceberg duplicate key).
    let f = only(3);
    assert_eq!(
        (f.verdict, f.layer, f.upstream, f.rows),
        (Verdict::Duplicated, Layer::ClickHouse, Some(Layer::Kafka), 1)
    );
    assert_eq!(
        f.offsets,
        [OffsetRange {
            partition: 1,
            start: by_seq(65).offset,
            end: by_seq(65).offset + 1,
            copies: 2
        }]
    );
    // 4: the changed row, by key.
    let f = only(4);
    assert_eq!(
        (f.verdict, f.keys[0].seq, f.keys[0].kind),
        (Verdict::Diverged, 85, KeyDiffKind::Changed)
    );
    // 6: Kafka and ClickHouse agree, nothing committed yet.
    let b6 = &t.buckets[6];
    assert!(b6.findings.is_empty(), "{:?}", b6.findings);
    assert_eq!(
        (
            b6.kafka.as_ref().unwrap().messages,
            b6.clickhouse.as_ref().unwrap().rows,
            b6.iceberg.as_ref().unwrap().rows
        ),
        (20, 20, 0)
    );
    let json = report.to_json();
    assert!(json.contains("\"offsets\""), "{json}");
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_without_offset_columns_is_compared_by_count() {
    let broker = Broker::start();
    let topic = broker.topic("plain", 1).await;
    let mut rows = trades(0..3, 0);
    for r in &mut rows {
        r.partition = 0;
    }
    produce(&broker.bootstrap(), &topic, &mut rows).await;
    let ch = ClickHouseFront::start();
    ch.query(
        "CREATE TABLE plain (ts DateTime64(3, 'UTC'), seq Int64, price Decimal(18, 4)) ENGINE = MergeTree ORDER BY (ts, seq)",
    );
    let values: Vec<String> = rows
        .iter()
        .filter(|r| r.seq != 30)
        .map(|r| {
            format!(
                "(fromUnixTimestamp64Micro(toInt64({}), 'UTC'), {}, 1)",
                r.ts, r.seq
            )
        })
        .collect();
    ch.query(&format!("INSERT INTO plain VALUES {}", values.join(",")));
    ch.query("INSERT INTO plain SELECT * FROM plain WHERE seq IN (5, 6)");
    let range = TimeRange::new(minute(0), minute(3), BucketSize::Minute).unwrap();
    let report = Reconciler::new(clickhouse(&ch), range)
        .with_kafka(KafkaLayer::new(broker.bootstrap()))
        .run(&[TableSpec::new("plain", "plain", "ts", "seq").kafka_topic(&topic)])
        .await;
    println!("{}", report.render_table(true));
    assert_eq!(
        verdicts(&report),
        [Verdict::Duplicated, Verdict::Missing, Verdict::Ok]
    );
    let b0 = &report.tables[0].buckets[0];
    // Without offsets, both duplicate keys show as rows beyond Kafka's count and as keys stored twice.
    let kinds: Vec<(Option<Layer>, u64)> = b0.findings.iter().map(|f| (f.upstream, f.rows)).collect();
    assert_eq!(kinds, [(Some(Layer::Kafka), 2), (None, 2)]);
    let dup_keys: Vec<u64> = b0.findings[1].keys.iter().map(|k| k.seq).collect();
    assert_eq!(dup_keys, [5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_cluster_cannot_answer_offsets_for_times_and_says_so() {
    // Always on the mock cluster (it exists everywhere): librdkafka's mock
    // brokers answer ListOffsets by timestamp with "no offset". Asking for the
    // method explicitly must fail loudly; `auto` must fall back to scanning.
    let mock = MockCluster::new(1).unwrap();
    let broker = Broker::Mock(mock);
    let topic = broker.topic("probe", 1).await;
    let mut rows = trades(0..1, 0);
    for r in &mut rows {
        r.partition = 0;
    }
    produce(&broker.bootstrap(), &topic, &mut rows).await;
    let ch = ClickHouseFront::start();
    ch.query(&trades_ddl("probe"));
    insert(&ch, "probe", &rows);
    let range = TimeRange::new(minute(0), minute(1), BucketSize::Minute).unwrap();
    let spec = [TableSpec::new("probe", "probe", "ts", "seq").kafka_topic(&topic)];
    let run = async |method| {
        Reconciler::new(clickhouse(&ch), range)
            .with_kafka(KafkaLayer::new(broker.bootstrap()).with_method(method))
            .run(&spec)
            .await
    };
    let r = run(KafkaCountMethod::OffsetsForTimes).await;
    assert_eq!(r.verdict, Verdict::Error);
    assert!(
        r.tables[0].error.as_ref().unwrap().contains("unsupported"),
        "{:?}",
        r.tables[0].error
    );
    let r = run(KafkaCountMethod::Auto).await;
    assert_eq!(
        (r.verdict, r.tables[0].kafka_method.as_deref()),
        (Verdict::Ok, Some("scan"))
    );
    let r = run(KafkaCountMethod::Scan).await;
    assert_eq!(r.tables[0].totals.kafka, Some(20));
}
