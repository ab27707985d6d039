//! Scaling out: two worker processes offload four tables, sharing one
//! PostgreSQL watermark store and one Iceberg catalog (SQL catalog on the same
//! PostgreSQL). Each table is claimed by one worker at a time through the
//! store's lease; the other worker skips it. Run:
//! `cargo run -p offload-examples --example two_workers` (needs PostgreSQL on
//! 127.0.0.1:5432 with trust auth, or `OFFLOAD_PG_URL`, and `bash scripts/setup.sh`).
//!
//! The parent starts ClickHouse, loads the tables, then runs two copies of
//! itself (`--worker <id>`), and finally checks every table with ClickHouse's
//! Iceberg reader.

use std::process::Command;
use std::sync::Arc;

use offload_core::{CancellationToken, Error, Offloader, TableConfig};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};
use offload_source_clickhouse::ClickHouseSource;
use offload_watermark_store::PostgresStore;

const TABLES: [&str; 4] = ["trades_a", "trades_b", "trades_c", "trades_d"];

fn tables() -> Vec<TableConfig> {
    TABLES
        .iter()
        .map(|t| {
            TableConfig::builder(*t)
                .sink_table(format!("workers.{t}"))
                .timestamp_column("ts")
                .sequence_column("seq")
                .lag(std::time::Duration::ZERO)
                .build()
                .expect("valid table")
        })
        .collect()
}

/// One worker: its own engine over the shared store and catalog.
async fn worker(
    id: &str,
    ch_url: &str,
    catalog: &str,
    pg: &str,
    schema: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let source = ClickHouseSource::builder(ch_url).database("workers").build()?;
    let sink = IcebergSink::connect(IcebergSinkConfig::new(CatalogConfig::from_uri(catalog)?)).await?;
    let store = PostgresStore::builder(pg).schema(schema).connect().await?;
    let engine = Offloader::builder(Arc::new(source), Arc::new(sink), Arc::new(store))
        .engine_id(id)
        .concurrency(4)
        .build()?;
    for (table, result) in engine.run_all(&tables(), &CancellationToken::new()).await {
        match result {
            Ok(s) => println!("{id}: {table}: committed {} rows", s.rows),
            Err(Error::LeaseHeld { holder, .. }) => println!("{id}: {table}: claimed by {holder}, skipped"),
            Err(e) => return Err(format!("{id}: {table}: {e}").into()),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, id, ch, catalog, pg, schema] = args.as_slice()
        && flag == "--worker"
    {
        return worker(id, ch, catalog, pg, schema).await;
    }

    let front = offload_testkit::ClickHouseFront::start();
    front.query("CREATE DATABASE workers");
    for t in TABLES {
        front.query(&format!(
            "CREATE TABLE workers.{t} (ts DateTime64(3, 'UTC'), seq UInt64, px Decimal(18, 8))
             ENGINE = MergeTree ORDER BY (ts, seq)"
        ));
        front.query(&format!(
            "INSERT INTO workers.{t} SELECT toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(intDiv(number, 3)),
                 number, toDecimal64(number / 100, 8) FROM numbers(200000)"
        ));
    }
    // Under the repository: chdb's icebergLocal reads only below its working directory.
    let runs = offload_testkit::repo_root().join(".run");
    std::fs::create_dir_all(&runs)?;
    let dir = tempfile::tempdir_in(runs)?;
    let pg = std::env::var("OFFLOAD_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let run = format!("w{}", std::process::id());
    let catalog = format!("{pg}?warehouse={}&catalog={run}", dir.path().display());
    let schema = format!("offload_example_{run}");

    let me = std::env::current_exe()?;
    let children: Vec<_> = ["worker-1", "worker-2"]
        .iter()
        .map(|id| {
            Command::new(&me)
                .args(["--worker", id, front.url(), &catalog, &pg, &schema])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        if !c.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    // Each table went to exactly one worker; a table skipped by both (both saw
    // the other's lease) is picked up by one more round in the parent.
    worker("parent", front.url(), &catalog, &pg, &schema).await?;

    let sink = IcebergSink::connect(IcebergSinkConfig::new(CatalogConfig::from_uri(&catalog)?)).await?;
    for t in tables() {
        let location = sink.load_table(&t).await?.metadata().location().to_owned();
        let lake = front.query(&format!(
            "SELECT count(), uniqExact(ts, seq) FROM icebergLocal('{}') FORMAT TSV",
            location.trim_start_matches("file://")
        ));
        println!(
            "{}: iceberg count, distinct keys = {}",
            t.name(),
            lake.trim().replace('\t', ", ")
        );
        if lake.trim() != "200000\t200000" {
            let missing = front.query(&format!(
                "SELECT groupArray(10)((ts, seq)) FROM workers.{} WHERE seq NOT IN \
                 (SELECT toUInt64(seq) FROM icebergLocal('{}')) FORMAT TSV",
                t.source_table(),
                location.trim_start_matches("file://")
            ));
            println!("{}: missing from Iceberg: {}", t.name(), missing.trim());
        }
        assert_eq!(lake.trim(), "200000\t200000", "{} holds every row once", t.name());
    }
    let store = PostgresStore::builder(&pg).schema(&schema).connect().await?;
    store.close().await;
    let _ = Command::new("psql")
        .args([&pg, "-qc", &format!("DROP SCHEMA \"{schema}\" CASCADE")])
        .status();
    Ok(())
}
