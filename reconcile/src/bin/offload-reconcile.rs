//! `offload-reconcile`: reconcile Kafka, ClickHouse and Iceberg bucket by
//! bucket, print the report, exit with the verdict's status (0 ok /
//! not_yet_offloaded / expired_upstream, 1 missing / duplicated / diverged,
//! 2 error), so cron jobs, alerts and CI can act on it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::Parser;
use offload_core::{TableConfig, system_time_to_micros};
use offload_reconcile::{
    BucketSize, ClickHouseLayer, CommittedSource, Depth, Error, IcebergLayer, KafkaCountMethod, KafkaLayer,
    Reconciler, TableSpec, Thresholds, TimeRange, parse_instant,
};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};

/// Prove, bucket by bucket, that Kafka, ClickHouse and Iceberg hold the same rows.
///
/// Times are RFC 3339 (`2024-05-01T00:00:00Z`), dates (`2024-05-01`), integer
/// microseconds, `now`, or `now-<n><s|m|h|d>` (e.g. `now-2h`).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// ClickHouse HTTP URL.
    #[arg(long, env = "CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// ClickHouse user.
    #[arg(long, env = "CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// ClickHouse password.
    #[arg(long, env = "CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
    /// ClickHouse default database.
    #[arg(long)]
    clickhouse_database: Option<String>,

    /// Iceberg catalog URI, as offload-sink-iceberg reads it, e.g.
    /// `sqlite:///var/lib/offload/catalog.db?warehouse=/var/lib/offload/wh`
    /// or `postgres://user@host/db?warehouse=s3://bucket/wh`.
    #[arg(long, env = "OFFLOAD_CATALOG")]
    catalog: Option<String>,
    /// Iceberg namespace for tables given without one.
    #[arg(long, default_value = "default")]
    namespace: String,

    /// A table: `NAME`, or `name=NAME,clickhouse=DB.TABLE,iceberg=NS.TABLE,topic=TOPIC`
    /// (every key but `name` optional; `clickhouse` defaults to the name,
    /// `iceberg` to `<namespace>.<name>` when a catalog is given). Repeatable.
    #[arg(long = "table", required = true)]
    tables: Vec<String>,
    /// Event-time column (DateTime / DateTime64).
    #[arg(long, default_value = "ts")]
    timestamp_column: String,
    /// Sequence column (integer).
    #[arg(long, default_value = "seq")]
    sequence_column: String,
    /// Fingerprint exactly these columns (repeatable; default: every shared column).
    #[arg(long = "content-column")]
    content_columns: Vec<String>,
    /// Sum these integer/decimal columns exactly (repeatable).
    #[arg(long = "sum-column")]
    sum_columns: Vec<String>,

    /// Range start (inclusive).
    #[arg(long)]
    from: String,
    /// Range end (exclusive).
    #[arg(long, default_value = "now")]
    to: String,
    /// Bucket size: minute, hour or day.
    #[arg(long, default_value = "hour")]
    bucket: BucketSize,
    /// ClickHouse's TTL horizon: buckets starting before it may have lost rows there.
    #[arg(long)]
    expired_before: Option<String>,
    /// Use this committed watermark (`<micros>:<seq>`) instead of the sink's.
    #[arg(long)]
    committed: Option<String>,
    /// `full` (fingerprints, distinct keys, sums) or `counts`.
    #[arg(long, default_value = "full", value_parser = parse_depth)]
    depth: Depth,

    /// Kafka bootstrap servers (enables the Kafka layer for tables with a topic).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// How to count Kafka messages: auto, offsets_for_times or scan.
    #[arg(long, default_value = "auto")]
    kafka_method: KafkaCountMethod,
    /// Extra librdkafka properties, `key=value` (repeatable).
    #[arg(long = "kafka-config")]
    kafka_config: Vec<String>,

    /// Missing rows per bucket to tolerate (default 0: exact).
    #[arg(long, default_value_t = 0)]
    missing_tolerance: u64,
    /// Duplicated rows per bucket to tolerate (default 0: exact).
    #[arg(long, default_value_t = 0)]
    duplicated_tolerance: u64,
    /// List differing keys when at most this many rows differ.
    #[arg(long, default_value_t = 20)]
    list_keys: usize,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show every bucket in the table, not only those that are not ok.
    #[arg(long)]
    all_buckets: bool,
}

fn parse_depth(s: &str) -> Result<Depth, String> {
    match s {
        "full" => Ok(Depth::Full),
        "counts" => Ok(Depth::Counts),
        _ => Err(format!("{s:?} is not full or counts")),
    }
}

/// `now`, `now-<n><unit>` or anything [`parse_instant`] reads.
fn parse_time(s: &str, now: i64) -> Result<i64, Error> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rest) = s.strip_prefix("now-") {
        let bad = || Error::InvalidConfig {
            field: "time",
            reason: format!("{s:?}: expected now-<n><s|m|h|d>"),
        };
        let (n, unit) = rest.split_at(rest.len().saturating_sub(1));
        let n: i64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(secs * 1_000_000)
            .and_then(|d| now.checked_sub(d))
            .ok_or_else(bad);
    }
    parse_instant(s)
}

fn table_spec(text: &str, args: &Args, has_catalog: bool) -> Result<TableSpec, Error> {
    let bad = |reason: String| Error::InvalidConfig {
        field: "table",
        reason,
    };
    let mut name = None;
    let (mut ch, mut ice, mut topic) = (None, None, None);
    if !text.contains('=') {
        name = Some(text.to_owned());
    } else {
        for part in text.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "name" => name = v,
                "clickhouse" => ch = v,
                "iceberg" => ice = v,
                "topic" => topic = v,
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (name, clickhouse, iceberg, topic)"
                    )));
                }
            }
        }
    }
    let name = name.ok_or_else(|| bad(format!("{text:?} has no name")))?;
    let cfg = TableConfig::builder(name.clone())
        .source_table(ch.unwrap_or_else(|| name.clone()))
        .sink_table(ice.unwrap_or_else(|| name.clone()))
        .timestamp_column(args.timestamp_column.clone())
        .sequence_column(args.sequence_column.clone())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut spec = if has_catalog {
        TableSpec::from_table_config(&cfg, &args.namespace)
    } else {
        TableSpec::new(
            cfg.name(),
            cfg.source_table(),
            cfg.timestamp_column(),
            cfg.sequence_column(),
        )
    };
    if !args.content_columns.is_empty() {
        spec = spec.content_columns(args.content_columns.iter().cloned());
    }
    spec = spec.sum_columns(args.sum_columns.iter().cloned());
    if let Some(t) = topic {
        spec = spec.kafka_topic(t);
    }
    Ok(spec)
}

async fn run(args: Args) -> Result<ExitCode, Error> {
    let now = system_time_to_micros(SystemTime::now());
    let range = TimeRange::new(
        parse_time(&args.from, now)?,
        parse_time(&args.to, now)?,
        args.bucket,
    )?;

    let mut client = clickhouse::Client::default().with_url(&args.clickhouse_url);
    if let Some(u) = &args.clickhouse_user {
        client = client.with_user(u);
    }
    if let Some(p) = &args.clickhouse_password {
        client = client.with_password(p);
    }
    if let Some(d) = &args.clickhouse_database {
        client = client.with_database(d);
    }
    let mut reconciler = Reconciler::new(ClickHouseLayer::new(client), range)
        .with_depth(args.depth)
        .with_thresholds(
            Thresholds::default()
                .missing_rows(args.missing_tolerance)
                .duplicated_rows(args.duplicated_tolerance)
                .list_keys(args.list_keys),
        );

    // The sink itself answers "what is committed", exactly as the engine sees it.
    let sink = match &args.catalog {
        Some(uri) => {
            let cfg = CatalogConfig::from_uri(uri).map_err(|e| Error::InvalidConfig {
                field: "catalog",
                reason: e.to_string(),
            })?;
            let sink =
                IcebergSink::connect(IcebergSinkConfig::new(cfg).default_namespace(args.namespace.clone()))
                    .await
                    .map_err(|e| Error::InvalidConfig {
                        field: "catalog",
                        reason: e.to_string(),
                    })?;
            reconciler = reconciler.with_iceberg(IcebergLayer::new(sink.catalog().clone()));
            Some(Arc::new(sink))
        }
        None => None,
    };
    if let Some(bootstrap) = &args.kafka_bootstrap {
        let mut k = KafkaLayer::new(bootstrap.clone()).with_method(args.kafka_method);
        for kv in &args.kafka_config {
            let (key, value) = kv.split_once('=').ok_or_else(|| Error::InvalidConfig {
                field: "kafka-config",
                reason: format!("{kv:?} is not key=value"),
            })?;
            k = k.with_config(key, value);
        }
        reconciler = reconciler.with_kafka(k);
    }

    let expired_before = args
        .expired_before
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let committed = args
        .committed
        .as_deref()
        .map(|w| {
            w.parse().map_err(|_| Error::InvalidConfig {
                field: "committed",
                reason: format!("{w:?} is not <micros>:<sequence>"),
            })
        })
        .transpose()?;
    let mut specs = Vec::new();
    for t in &args.tables {
        let mut spec = table_spec(t, &args, sink.is_some())?;
        if let Some(e) = expired_before {
            spec = spec.expired_before(e);
        }
        if let Some(w) = committed {
            spec = spec.committed(CommittedSource::Fixed(Some(w)));
        } else if let (Some(sink), Some(ice)) = (&sink, spec.iceberg()) {
            let cfg = TableConfig::builder(spec.name())
                .sink_table(ice)
                .timestamp_column(args.timestamp_column.clone())
                .sequence_column(args.sequence_column.clone())
                .build()
                .map_err(|e| Error::InvalidConfig {
                    field: "table",
                    reason: e.to_string(),
                })?;
            spec = spec.committed(CommittedSource::Sink {
                sink: sink.clone(),
                table: cfg,
            });
        }
        specs.push(spec);
    }

    let report = reconciler.run(&specs).await;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_table(args.all_buckets));
    }
    Ok(ExitCode::from(report.exit_code() as u8))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("offload-reconcile: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = 10 * 86_400_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("now-2h", now).unwrap(), now - 7_200_000_000);
        assert_eq!(parse_time("now-1d", now).unwrap(), 9 * 86_400_000_000);
        assert!(parse_time("now-2w", now).is_err());
        assert_eq!(parse_time("1970-01-02", now).unwrap(), 86_400_000_000);
    }

    #[test]
    fn table_specs() {
        let args = Args::parse_from(["x", "--table", "t", "--from", "now-1h"]);
        let s = table_spec("name=a,clickhouse=db.a,iceberg=lake.a,topic=ta", &args, true).unwrap();
        assert_eq!((s.name(), s.iceberg()), ("a", Some("lake.a")));
        let s = table_spec("a", &args, true).unwrap();
        assert_eq!(s.iceberg(), Some("default.a"));
        assert!(table_spec("name=a,bogus=1", &args, true).is_err());
        assert!(table_spec("clickhouse=x", &args, false).is_err());
    }
}
