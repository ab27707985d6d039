//! The Kafka layer: messages per bucket per partition, from the offsets of the
//! first message at or after each bucket edge (`offsets_for_times`), or by
//! reading the message timestamps when the broker cannot answer that.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::report::{KafkaFigures, PartitionSpan};
use crate::{Error, TimeRange};

/// How Kafka's per-bucket message counts are obtained.
///
/// ```
/// use offload_reconcile::KafkaCountMethod;
/// assert_eq!("scan".parse::<KafkaCountMethod>().unwrap(), KafkaCountMethod::Scan);
/// assert_eq!(KafkaCountMethod::OffsetsForTimes.to_string(), "offsets_for_times");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCountMethod {
    /// `offsets_for_times` when the broker answers it (checked with a probe),
    /// else `scan` (with a warning in the log and the method named in the report).
    #[default]
    Auto,
    /// One `ListOffsets` by timestamp per bucket edge: the count of a bucket is
    /// the offset difference between its edges. Reads no messages. Exact for
    /// topics whose timestamps do not go backwards within a partition and that
    /// have no transaction markers or compaction holes.
    OffsetsForTimes,
    /// Reads every message of the partitions from the low to the high
    /// watermark and buckets it by its own timestamp. Exact whatever the order
    /// of timestamps, but reads the whole topic.
    Scan,
}

impl fmt::Display for KafkaCountMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KafkaCountMethod::Auto => "auto",
            KafkaCountMethod::OffsetsForTimes => "offsets_for_times",
            KafkaCountMethod::Scan => "scan",
        })
    }
}

impl std::str::FromStr for KafkaCountMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(KafkaCountMethod::Auto),
            "offsets_for_times" | "offsets-for-times" => Ok(KafkaCountMethod::OffsetsForTimes),
            "scan" => Ok(KafkaCountMethod::Scan),
            _ => Err(Error::InvalidConfig {
                field: "kafka method",
                reason: format!("{s:?} is not auto, offsets_for_times or scan"),
            }),
        }
    }
}

/// Kafka as a reconciliation layer: a cluster (bootstrap servers plus any
/// librdkafka settings, e.g. security) to count topic messages in.
///
/// All rdkafka calls block, so they run on tokio's blocking pool.
///
/// ```
/// use std::time::Duration;
/// use offload_reconcile::{KafkaCountMethod, KafkaLayer};
/// let k = KafkaLayer::new("127.0.0.1:9092")
///     .with_config("security.protocol", "plaintext")
///     .with_method(KafkaCountMethod::OffsetsForTimes)
///     .with_timeout(Duration::from_secs(10));
/// assert_eq!(k.bootstrap(), "127.0.0.1:9092");
/// ```
#[derive(Clone, Debug)]
pub struct KafkaLayer {
    bootstrap: String,
    config: BTreeMap<String, String>,
    method: KafkaCountMethod,
    timeout: Duration,
}

/// One partition's offsets: log bounds and the offset at every bucket edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartitionEdges {
    pub low: i64,
    pub high: i64,
    /// `edges[i]`: the first offset whose timestamp is at or after edge `i`
    /// (the high watermark when there is none).
    pub edges: Vec<i64>,
}

/// Messages per bucket, per partition.
type Counts = BTreeMap<i32, Vec<u64>>;

/// Everything Kafka says about a topic over a range.
#[derive(Clone, Debug)]
pub(crate) struct KafkaSide {
    pub method: KafkaCountMethod,
    pub partitions: BTreeMap<i32, PartitionEdges>,
    pub buckets: Vec<KafkaFigures>,
}

impl KafkaSide {
    /// Per partition, the offsets `[lo, hi)` of the messages in the range.
    pub(crate) fn bounds(&self) -> BTreeMap<i32, (i64, i64)> {
        self.partitions
            .iter()
            .map(|(p, e)| (*p, (e.edges[0], *e.edges.last().expect("at least two edges"))))
            .collect()
    }

    /// Splits `[start, end)` of partition `p` into per-bucket pieces.
    pub(crate) fn split(&self, p: i32, start: i64, end: i64) -> Vec<(usize, i64, i64)> {
        let Some(e) = self.partitions.get(&p) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for i in 0..e.edges.len() - 1 {
            let (lo, hi) = (start.max(e.edges[i]), end.min(e.edges[i + 1]));
            if lo < hi {
                out.push((i, lo, hi));
            }
        }
        out
    }
}

impl KafkaLayer {
    /// A layer for the cluster at `bootstrap` (`host:port[,host:port...]`).
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            config: BTreeMap::new(),
            method: KafkaCountMethod::Auto,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets a librdkafka configuration property (security, client.id, ...).
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Sets how messages are counted (default [`KafkaCountMethod::Auto`]).
    pub fn with_method(mut self, method: KafkaCountMethod) -> Self {
        self.method = method;
        self
    }

    /// Bounds each broker request, and a whole scan (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Counts the messages of `topic` per bucket of `range`.
    pub(crate) async fn figures(&self, topic: &str, range: TimeRange) -> Result<KafkaSide, Error> {
        let this = self.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || this.figures_blocking(&topic, range))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    fn consumer(&self, partition_eof: bool) -> Result<BaseConsumer, Error> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap)
            // assign() needs no group, but librdkafka wants an id to create a consumer.
            .set("group.id", "offload-reconcile")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "enable.partition.eof",
                if partition_eof { "true" } else { "false" },
            )
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.config {
            cfg.set(k, v);
        }
        cfg.create().map_err(Error::kafka("create a consumer"))
    }

    fn figures_blocking(&self, topic: &str, range: TimeRange) -> Result<KafkaSide, Error> {
        let consumer = self.consumer(false)?;
        let md = consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(Error::kafka(format!("metadata of {topic}")))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| Error::InvalidConfig {
                field: "kafka topic",
                reason: format!("{topic:?} not in the cluster metadata"),
            })?;
        if let Some(e) = t.error() {
            return Err(Error::InvalidConfig {
                field: "kafka topic",
                reason: format!("{topic:?}: {e:?}"),
            });
        }
        let mut bounds = BTreeMap::new();
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), self.timeout)
                .map_err(Error::kafka(format!("watermarks of {topic}/{}", p.id())))?;
            bounds.insert(p.id(), (low, high));
        }
        if bounds.is_empty() {
            return Err(Error::InvalidConfig {
                field: "kafka topic",
                reason: format!("{topic:?} has no partitions"),
            });
        }
        // Kafka timestamps are milliseconds; bucket edges are whole minutes.
        let edges_ms: Vec<i64> = range.edges().map(|us| us.div_euclid(1_000)).collect();

        let method = match self.method {
            KafkaCountMethod::Scan => KafkaCountMethod::Scan,
            m => {
                if self.answers_offsets_for_times(&consumer, topic, &bounds)? {
                    KafkaCountMethod::OffsetsForTimes
                } else if m == KafkaCountMethod::Auto {
                    tracing::warn!(
                        topic,
                        "broker does not answer offsets_for_times; counting by reading the topic"
                    );
                    KafkaCountMethod::Scan
                } else {
                    return Err(Error::KafkaUnsupported {
                        reason: format!(
                            "ListOffsets by timestamp on {topic} returned no offset for a non-empty partition"
                        ),
                    });
                }
            }
        };
        let (partitions, counts) = match method {
            KafkaCountMethod::Scan => self.scan(&consumer, topic, &bounds, &edges_ms)?,
            _ => {
                let last = self.last_timestamps(topic, &bounds)?;
                let partitions = self.lookup_edges(&consumer, topic, &bounds, &last, &edges_ms)?;
                let counts = partitions
                    .iter()
                    .map(|(p, e)| {
                        (
                            *p,
                            e.edges.windows(2).map(|w| (w[1] - w[0]).max(0) as u64).collect(),
                        )
                    })
                    .collect();
                (partitions, counts)
            }
        };
        let buckets = (0..range.len())
            .map(|i| {
                let mut f = KafkaFigures {
                    messages: 0,
                    complete: true,
                    partitions: BTreeMap::new(),
                };
                for (p, e) in &partitions {
                    let n: u64 = counts.get(p).map_or(0, |c: &Vec<u64>| c[i]);
                    f.messages += n;
                    // Retention may have removed messages of this bucket when the
                    // log no longer starts at 0 and the bucket starts at its head.
                    if e.low > 0 && e.edges[i] <= e.low {
                        f.complete = false;
                    }
                    if n > 0 || e.edges[i] != e.edges[i + 1] {
                        f.partitions.insert(
                            *p,
                            PartitionSpan {
                                first_offset: e.edges[i],
                                end_offset: e.edges[i + 1],
                                messages: n,
                            },
                        );
                    }
                }
                f
            })
            .collect();
        Ok(KafkaSide {
            method,
            partitions,
            buckets,
        })
    }

    /// A real broker answers a lookup at timestamp 0 on a non-empty partition
    /// with an offset (every message has a timestamp >= 0); librdkafka's mock
    /// cluster answers "none".
    fn answers_offsets_for_times(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        bounds: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<bool, Error> {
        let Some((p, _)) = bounds.iter().find(|(_, (lo, hi))| lo < hi) else {
            return Ok(true); // nothing to count, nothing to ask
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, *p, Offset::Offset(0))
            .map_err(Error::kafka("build a probe"))?;
        let res = consumer
            .offsets_for_times(tpl, self.timeout)
            .map_err(Error::kafka("probe offsets_for_times"))?;
        Ok(res
            .elements()
            .first()
            .is_some_and(|e| e.error().is_ok() && matches!(e.offset(), Offset::Offset(_))))
    }

    /// The timestamp of the last message of every non-empty partition (read
    /// from the high watermark backwards by one message; a trailing
    /// transaction marker yields none).
    fn last_timestamps(
        &self,
        topic: &str,
        bounds: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<BTreeMap<i32, i64>, Error> {
        let mut open: BTreeSet<i32> = bounds
            .iter()
            .filter(|(_, (l, h))| l < h)
            .map(|(p, _)| *p)
            .collect();
        let mut out = BTreeMap::new();
        if open.is_empty() {
            return Ok(out);
        }
        let consumer = self.consumer(true)?;
        let mut tpl = TopicPartitionList::new();
        for p in &open {
            let (low, high) = bounds[p];
            tpl.add_partition_offset(topic, *p, Offset::Offset((high - 1).max(low)))
                .map_err(Error::kafka("build an assignment"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(Error::kafka(format!("assign {topic}")))?;
        let deadline = Instant::now() + self.timeout;
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!("reading the last message of {topic} (partitions {open:?})"),
                    after: self.timeout,
                });
            }
            match consumer.poll(left.min(Duration::from_millis(500))) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => return Err(Error::kafka(format!("read the end of {topic}"))(e)),
                Some(Ok(m)) => {
                    if let Some(ts) = m.timestamp().to_millis() {
                        let t = out.entry(m.partition()).or_insert(ts);
                        *t = (*t).max(ts);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Asks the broker for the first offset at or after every edge. Edges after
    /// a partition's last message are answered locally with the high
    /// watermark: Kafka would answer "none" there, but some brokers answer
    /// offset 0 instead (tansu 0.6), which would turn a bucket's count negative.
    fn lookup_edges(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        bounds: &BTreeMap<i32, (i64, i64)>,
        last: &BTreeMap<i32, i64>,
        edges_ms: &[i64],
    ) -> Result<BTreeMap<i32, PartitionEdges>, Error> {
        let mut out: BTreeMap<i32, PartitionEdges> = bounds
            .iter()
            .map(|(p, (low, high))| {
                (
                    *p,
                    PartitionEdges {
                        low: *low,
                        high: *high,
                        edges: Vec::with_capacity(edges_ms.len()),
                    },
                )
            })
            .collect();
        for &edge in edges_ms {
            // Negative ListOffsets timestamps are special (-1 latest, -2
            // earliest); no message has a timestamp below 0, so 0 is the same edge.
            let at = edge.max(0);
            let mut tpl = TopicPartitionList::new();
            for (p, pe) in out.iter_mut() {
                // Empty, or every message is before the edge: no need to ask.
                // (No last timestamp for a non-empty partition, e.g. a trailing
                // transaction marker: ask and trust the broker.)
                if pe.low == pe.high || last.get(p).is_some_and(|&t| t < at) {
                    pe.edges.push(pe.high);
                } else {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(at))
                        .map_err(Error::kafka("build an offsets_for_times request"))?;
                }
            }
            if tpl.count() == 0 {
                continue;
            }
            let res = consumer
                .offsets_for_times(tpl, self.timeout)
                .map_err(Error::kafka(format!("offsets_for_times({topic}, {at} ms)")))?;
            for e in res.elements() {
                e.error().map_err(Error::kafka(format!(
                    "offsets_for_times({topic}/{}, {at} ms)",
                    e.partition()
                )))?;
                let Some(pe) = out.get_mut(&e.partition()) else {
                    continue;
                };
                let o = match e.offset() {
                    Offset::Offset(o) => o.clamp(pe.low, pe.high),
                    // No message at or after the edge.
                    Offset::End => pe.high,
                    other => {
                        return Err(Error::KafkaUnsupported {
                            reason: format!(
                                "offsets_for_times({topic}/{}) answered {other:?}",
                                e.partition()
                            ),
                        });
                    }
                };
                pe.edges.push(o);
            }
        }
        for (p, pe) in &out {
            if pe.edges.len() != edges_ms.len() {
                return Err(Error::KafkaUnsupported {
                    reason: format!("offsets_for_times left out {topic}/{p}"),
                });
            }
            // Kafka's time index answers from the largest timestamp so far, so
            // later edges never get smaller offsets; if they do, the counts
            // would be nonsense.
            if pe.edges.windows(2).any(|w| w[1] < w[0]) {
                return Err(Error::KafkaUnsupported {
                    reason: format!(
                        "offsets_for_times on {topic}/{p} went backwards ({:?}); use the scan method",
                        pe.edges
                    ),
                });
            }
        }
        Ok(out)
    }

    /// Reads every message from the low to the high watermark: per partition,
    /// the edges and the message count of every bucket.
    fn scan(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        bounds: &BTreeMap<i32, (i64, i64)>,
        edges_ms: &[i64],
    ) -> Result<(BTreeMap<i32, PartitionEdges>, Counts), Error> {
        let buckets = edges_ms.len() - 1;
        let mut counts: Counts = bounds.keys().map(|p| (*p, vec![0; buckets])).collect();
        // min_at[p][k]: the smallest offset whose timestamp is in [edge k, edge k+1)
        // (k = edges.len()-1: at or after the last edge).
        let mut min_at: BTreeMap<i32, Vec<i64>> = bounds
            .keys()
            .map(|p| (*p, vec![i64::MAX; edges_ms.len()]))
            .collect();
        let mut remaining: BTreeSet<i32> = bounds
            .iter()
            .filter(|(_, (l, h))| l < h)
            .map(|(p, _)| *p)
            .collect();
        if !remaining.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in &remaining {
                tpl.add_partition_offset(topic, *p, Offset::Offset(bounds[p].0))
                    .map_err(Error::kafka("build an assignment"))?;
            }
            consumer
                .assign(&tpl)
                .map_err(Error::kafka(format!("assign {topic}")))?;
        }
        let deadline = Instant::now() + self.timeout;
        let mut untimed = 0u64;
        while !remaining.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!("reading {topic} (partitions {remaining:?} unfinished)"),
                    after: self.timeout,
                });
            }
            let Some(m) = consumer.poll(left.min(Duration::from_millis(500))) else {
                continue;
            };
            let m = m.map_err(Error::kafka(format!("read {topic}")))?;
            let (p, o) = (m.partition(), m.offset());
            let Some(&(_, high)) = bounds.get(&p) else {
                continue;
            };
            if o >= high {
                remaining.remove(&p); // written after we looked: not part of this count
                continue;
            }
            if o + 1 >= high {
                remaining.remove(&p);
            }
            let Some(ts) = m.timestamp().to_millis() else {
                untimed += 1;
                continue;
            };
            let k = edges_ms.partition_point(|e| *e <= ts);
            if k == 0 {
                continue;
            }
            if k - 1 < buckets
                && let Some(c) = counts.get_mut(&p)
            {
                c[k - 1] += 1;
            }
            if let Some(m) = min_at.get_mut(&p) {
                m[k - 1] = m[k - 1].min(o);
            }
        }
        if untimed > 0 {
            tracing::warn!(topic, untimed, "messages without a timestamp were not counted");
        }
        let partitions = bounds
            .iter()
            .map(|(p, (low, high))| {
                let m = &min_at[p];
                let mut edges = vec![*high; edges_ms.len()];
                let mut best = *high;
                for k in (0..edges_ms.len()).rev() {
                    best = best.min(m[k]);
                    edges[k] = best;
                }
                (
                    *p,
                    PartitionEdges {
                        low: *low,
                        high: *high,
                        edges,
                    },
                )
            })
            .collect();
        Ok((partitions, counts))
    }
}
