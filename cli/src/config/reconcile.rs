//! `[reconcile]`: how `offload reconcile` judges the tables.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::value::{Dur, EnvVar};

/// `[reconcile]`. Every key is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    /// Bucket width: `minute`, `hour` (default) or `day`.
    #[serde(default)]
    pub bucket: BucketName,
    /// `full` (fingerprints, distinct keys, sums; default) or `counts`.
    #[serde(default)]
    pub depth: DepthName,
    /// ClickHouse's TTL: buckets older than this (ago) may have lost rows
    /// there, and are judged `expired_upstream` rather than `missing`.
    pub expired_after: Option<Dur>,
    /// Missing rows per bucket to tolerate (default 0: exact).
    #[serde(default)]
    pub missing_tolerance: u64,
    /// Duplicated rows per bucket to tolerate (default 0: exact).
    #[serde(default)]
    pub duplicated_tolerance: u64,
    /// List the differing keys when at most this many rows differ (default 20).
    pub list_keys: Option<usize>,
    /// Compare against Kafka too (tables with `reconcile.kafka_topic`).
    pub kafka: Option<KafkaSection>,
}

/// `reconcile.bucket`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BucketName {
    /// One minute.
    Minute,
    /// One hour.
    #[default]
    Hour,
    /// One day.
    Day,
}

/// `reconcile.depth`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DepthName {
    /// Counts, distinct keys, key and content fingerprints, sums.
    #[default]
    Full,
    /// Counts only.
    Counts,
}

/// `[reconcile.kafka]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:9092,host2:9092`.
    pub brokers: String,
    /// How to count messages: `auto` (default), `offsets_for_times` or `scan`.
    #[serde(default)]
    pub method: KafkaMethodName,
    /// Extra librdkafka properties (not secrets), e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables,
    /// e.g. `"sasl.password" = "KAFKA_PASSWORD"`.
    #[serde(default)]
    pub properties_env: BTreeMap<String, EnvVar>,
}

/// `reconcile.kafka.method`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaMethodName {
    /// Offsets by time where the broker supports it, else a scan.
    #[default]
    Auto,
    /// Offsets by time only.
    OffsetsForTimes,
    /// Read every message's timestamp.
    Scan,
}
