//! `offload reconcile`: prove, bucket by bucket, that ClickHouse, Iceberg
//! (and Kafka, with `[reconcile.kafka]`) hold the same rows, for the tables of
//! the same configuration `offload run` uses. Prints the report and exits
//! with the verdict's status (0 ok / not yet offloaded / expired upstream,
//! 1 missing / duplicated / diverged, 2 error), for cron jobs, alerts and CI.

use std::process::ExitCode;
use std::time::SystemTime;

use offload_core::{Watermark, system_time_to_micros};
use offload_reconcile::{
    BucketSize, ClickHouseLayer, CommittedSource, Depth, Format, IcebergLayer, KafkaCountMethod, KafkaLayer,
    Reconciler, TableSpec, Thresholds, TimeRange, parse_time,
};

use super::{Common, startup_failed};
use crate::app::{AppError, connect_sink};
use crate::config::{BucketName, Config, DepthName, EnvVar, KafkaMethodName};
use crate::stack::Stack;

/// `offload reconcile`.
///
/// Times are RFC 3339 (`2024-05-01T00:00:00Z`), dates (`2024-05-01`), integer
/// microseconds, `now`, or `now-<duration>` (`now-2h`, `now-90m`, `now-1d`).
#[derive(clap::Args, Debug, Clone)]
pub struct ReconcileArgs {
    #[command(flatten)]
    common: Common,
    /// Range start (inclusive).
    #[arg(long)]
    from: String,
    /// Range end (exclusive).
    #[arg(long, default_value = "now")]
    to: String,
    /// Bucket width: minute, hour or day (default: `reconcile.bucket`).
    #[arg(long)]
    bucket: Option<BucketSize>,
    /// `full` or `counts` (default: `reconcile.depth`).
    #[arg(long)]
    depth: Option<Depth>,
    /// Judge against this committed watermark (`<micros>:<seq>`) instead of the sink's.
    #[arg(long, value_name = "MICROS:SEQ")]
    committed: Option<Watermark>,
    /// Missing rows per bucket to tolerate (default: `reconcile.missing_tolerance`).
    #[arg(long)]
    missing_tolerance: Option<u64>,
    /// Duplicated rows per bucket to tolerate (default: `reconcile.duplicated_tolerance`).
    #[arg(long)]
    duplicated_tolerance: Option<u64>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show every bucket in the table, not only those that are not ok.
    #[arg(long)]
    all_buckets: bool,
}

fn clickhouse(cfg: &Config) -> Result<ClickHouseLayer, AppError> {
    let ch = &cfg.clickhouse;
    // The source's way to the server: HTTPS trusting `tls_ca_file` or webpki's roots.
    let mut client = offload_source_clickhouse::client_for(&ch.url, ch.tls_ca_file.as_deref())?;
    if let Some(u) = &ch.user {
        client = client.with_user(u);
    }
    if let Some(pw) = EnvVar::secret_opt(&ch.password_env, "clickhouse.password_env")? {
        client = client.with_password(pw.expose());
    }
    if let Some(d) = &ch.database {
        client = client.with_database(d);
    }
    for (k, v) in &ch.settings {
        client = client.with_setting(k, &v.0);
    }
    Ok(ClickHouseLayer::new(client))
}

fn kafka(cfg: &Config) -> Result<Option<KafkaLayer>, AppError> {
    let Some(k) = &cfg.reconcile.kafka else {
        return Ok(None);
    };
    let mut layer = KafkaLayer::new(k.brokers.clone()).with_method(match k.method {
        KafkaMethodName::Auto => KafkaCountMethod::Auto,
        KafkaMethodName::OffsetsForTimes => KafkaCountMethod::OffsetsForTimes,
        KafkaMethodName::Scan => KafkaCountMethod::Scan,
    });
    for (key, value) in &k.properties {
        layer = layer.with_config(key, value);
    }
    for (key, var) in &k.properties_env {
        let v = var.secret(&format!("reconcile.kafka.properties_env.{key}"))?;
        layer = layer.with_config(key, v.expose());
    }
    Ok(Some(layer))
}

async fn reconcile(args: &ReconcileArgs) -> Result<offload_reconcile::Report, AppError> {
    let cfg = args.common.load()?;
    let r = &cfg.reconcile;
    let now = system_time_to_micros(SystemTime::now());
    let bucket = args.bucket.unwrap_or(match r.bucket {
        BucketName::Minute => BucketSize::Minute,
        BucketName::Hour => BucketSize::Hour,
        BucketName::Day => BucketSize::Day,
    });
    let range = TimeRange::new(parse_time(&args.from, now)?, parse_time(&args.to, now)?, bucket)?;
    let depth = args.depth.unwrap_or(match r.depth {
        DepthName::Full => Depth::Full,
        DepthName::Counts => Depth::Counts,
    });
    let mut thresholds = Thresholds::default()
        .missing_rows(args.missing_tolerance.unwrap_or(r.missing_tolerance))
        .duplicated_rows(args.duplicated_tolerance.unwrap_or(r.duplicated_tolerance));
    if let Some(n) = r.list_keys {
        thresholds = thresholds.list_keys(n);
    }
    let iceberg = connect_sink(&cfg).await?;
    // The committed watermark is read through the sink, exactly as the engine sees it.
    let sink = Stack::from_config(&cfg)?.sink(iceberg.clone());
    let mut reconciler = Reconciler::new(clickhouse(&cfg)?, range)
        .with_depth(depth)
        .with_thresholds(thresholds)
        .with_iceberg(IcebergLayer::new(iceberg.catalog().clone()).with_default_namespace(cfg.namespace()));
    if let Some(k) = kafka(&cfg)? {
        reconciler = reconciler.with_kafka(k);
    }
    let expired_before = r.expired_after.map(|d| now - d.0.as_micros() as i64);
    let mut specs = Vec::new();
    for (t, section) in cfg.table_configs()?.iter().zip(&cfg.tables) {
        let mut spec = TableSpec::from_table_config(t);
        spec = match args.committed {
            Some(w) => spec.committed(CommittedSource::Fixed(Some(w))),
            // A table the sink cannot open is reported as this table's error by the reconciler.
            None => match CommittedSource::open(sink.as_ref(), t).await {
                Ok(c) => spec.committed(c),
                Err(e) => {
                    tracing::warn!(table = t.name(), error = %e, "cannot open the sink table; reading its metadata");
                    spec
                }
            },
        };
        let rc = &section.reconcile;
        if let Some(cols) = &rc.content_columns {
            spec = spec.content_columns(cols.iter().cloned());
        }
        spec = spec.sum_columns(rc.sum_columns.iter().cloned());
        if let Some(topic) = &rc.kafka_topic {
            spec = spec.kafka_topic(topic);
        }
        if let Some(e) = expired_before {
            spec = spec.expired_before(e);
        }
        specs.push(spec);
    }
    Ok(reconciler.run(&specs).await)
}

/// Runs the subcommand.
pub async fn main(args: ReconcileArgs) -> ExitCode {
    match reconcile(&args).await {
        Ok(report) => {
            let format = if args.json {
                Format::Json
            } else {
                Format::Table {
                    all_buckets: args.all_buckets,
                }
            };
            let text = report.render(format);
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::from(report.exit_code().clamp(0, 255) as u8)
        }
        Err(e) => startup_failed(&e),
    }
}
