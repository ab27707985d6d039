//! S3-compatible storage (feature `s3`) on a real S3 server: each test starts
//! its own s3s-fs (`offload_testkit::S3Server`, installed by
//! `scripts/setup.sh`) on loopback with a random key pair, and keeps the
//! warehouse in a bucket there (path-style addressing). Without the server
//! binary the tests fail with the command that installs it.
#![cfg(all(feature = "s3", feature = "sqlite"))] // the catalog is a SQLite file

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use offload_core::{RunId, SinkTable, Watermark};
use offload_sink_iceberg::{
    CatalogConfig, IcebergSink, IcebergSinkConfig, IcebergSinkError, IcebergTable, MaintenanceConfig,
    S3Config, StorageConfig,
};
use offload_testkit::S3Server;

const HOUR: Duration = Duration::from_secs(3600);

/// The server's S3 settings (its own credentials unless `secret` overrides).
fn s3_config(server: &S3Server, secret: Option<&str>) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint().to_owned()),
        region: Some(server.region().to_owned()),
        access_key_id: Some(server.access_key().to_owned()),
        secret_access_key: Some(secret.unwrap_or(server.secret_key()).to_owned()),
        path_style_access: true,
        ..S3Config::default()
    }
}

/// A sink whose SQLite catalog lives in `dir` and whose warehouse is `s3://<bucket>/warehouse`.
async fn s3_sink(
    server: &S3Server,
    bucket: &str,
    dir: &std::path::Path,
    secret: Option<&str>,
) -> IcebergSink {
    let catalog = CatalogConfig::sqlite(dir.join("catalog.db"), format!("s3://{bucket}/warehouse"))
        .with_storage(StorageConfig::S3(s3_config(server, secret)));
    IcebergSink::connect(IcebergSinkConfig::new(catalog))
        .await
        .unwrap()
}

/// The object key of an `s3://<bucket>/<key>` location.
fn key_of<'a>(bucket: &str, location: &'a str) -> &'a str {
    location
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap_or_else(|| panic!("{location} is not in bucket {bucket}"))
}

/// Sets an object's `LastModified` `age` into the past: s3s-fs reports its
/// file's mtime, so this ages the object for the server itself.
fn age(server: &S3Server, bucket: &str, location: &str, age: Duration) {
    let path = server.object_path(bucket, key_of(bucket, location));
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

/// Writes `bytes` to `location` through the table's own storage (a signed PUT).
async fn put(table: &IcebergTable, location: &str, bytes: &'static [u8]) {
    let t = table.load().await.unwrap();
    t.file_io()
        .new_output(location)
        .unwrap()
        .write(bytes.into())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_warehouse_round_trip_read_by_both_readers() {
    let server = S3Server::start();
    let bucket = "lake";
    server.create_bucket(bucket);
    let dir = tempfile::tempdir().unwrap();
    let sink = s3_sink(&server, bucket, dir.path(), None).await;
    let table = open(&sink, "lake.s3");
    table.prepare(trades_schema()).await.unwrap();

    let w1 = [trades(T0, 1, 2000, 60_000_000)];
    let (u1, r1) = commit_window(&table, Watermark::MIN, &w1).await;
    let w2 = [trades(T0 + 2 * DAY_MICROS, 2001, 1000, 1_000_000)];
    let (u2, _) = commit_window(&table, u1, &w2).await;
    assert_eq!(committed_until(&table).await, u2);
    assert!(table.was_committed(r1).await.unwrap());
    let all: Vec<_> = w1.iter().chain(&w2).cloned().collect();
    assert_eq!(figures(&read_back(&table).await), figures(&all));
    let t = table.load().await.unwrap();
    let location = t.metadata().location().to_owned();
    assert!(location.starts_with(&format!("s3://{bucket}/")));
    // The objects really are on the server.
    let prefix = key_of(bucket, &location);
    let keys = server.keys(bucket, prefix);
    assert!(
        keys.iter().any(|k| k.ends_with(".parquet")) && keys.iter().any(|k| k.ends_with(".metadata.json")),
        "{keys:?}"
    );

    // A stale commit is fenced; discarding deletes its objects.
    let run = RunId::new();
    let staged = stage(&table, run, &w2).await;
    let err = staged
        .commit(&meta(u1, last_position(&w2[0]), run, "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, offload_core::Error::CommitConflict { .. }),
        "{err:?}"
    );
    let paths: Vec<String> = staged.stats().files.clone();
    for p in &paths {
        assert!(t.file_io().exists(p).await.unwrap(), "{p} staged");
    }
    staged.discard().await.unwrap();
    for p in &paths {
        assert!(!t.file_io().exists(p).await.unwrap(), "{p} deleted");
    }

    // Both independent readers, on the same catalog and bucket.
    let keys_file = dir.path().join("keys.txt");
    let mut lines = Vec::new();
    for b in &all {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Int64Type, TimestampMicrosecondType};
        let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let seq = b.column(1).as_primitive::<Int64Type>();
        let sym = b.column(2).as_string::<i32>();
        for i in 0..b.num_rows() {
            lines.push(format!("{}:{}:{}", seq.value(i), ts.value(i), sym.value(i)));
        }
    }
    std::fs::write(&keys_file, lines.join("\n")).unwrap();
    let cfg = serde_json::json!({
        "db": dir.path().join("catalog.db"),
        "warehouse": format!("s3://{bucket}/warehouse"),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "table": "lake.s3",
        "location": location,
        "expected_keys": keys_file,
        "s3": {
            "endpoint": server.endpoint(),
            "access_key": server.access_key(),
            "secret_key": server.secret_key(),
            "region": server.region(),
        },
    });
    let report = run_readers(dir.path(), &cfg, 600, " on S3");
    let want = figures(&all);
    for reader in ["pyiceberg", "chdb"] {
        let r = &report[reader];
        assert!(r.get("error").is_none(), "{reader} failed: {}", r["error"]);
        assert_eq!(r["count"].as_u64(), Some(want.count), "{reader} count");
        assert_eq!(
            r["sum_seq"].as_str(),
            Some(want.sum_seq.to_string().as_str()),
            "{reader} sum(seq)"
        );
        assert_eq!(
            r["sum_price_scaled"].as_str(),
            Some(want.sum_price_scaled.to_string().as_str()),
            "{reader} exact sum(price)"
        );
        assert_eq!(r["digest"], report["expected_digest"], "{reader} row keys");
    }
    // Every parquet object left on the server (the discarded ones are gone) is a live file.
    let parquet = server
        .keys(bucket, prefix)
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .count();
    assert_eq!(report["pyiceberg"]["files"].as_u64(), Some(parquet as u64));
    assert_eq!(parquet, 3, "w1 spans two days, w2 one");
}

/// Orphan cleanup lists the bucket: an old unreferenced object is deleted; a
/// referenced one (however old), a fresh staged file (younger than the
/// grace), hidden names and objects outside the table's `data/` and
/// `metadata/` prefixes (a sibling table's `<location>2/` included) are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_orphan_cleanup_keeps_what_it_must() {
    let server = S3Server::start();
    let bucket = "orphans";
    server.create_bucket(bucket);
    let dir = tempfile::tempdir().unwrap();
    let sink = s3_sink(&server, bucket, dir.path(), None).await;
    let table = open(&sink, "lake.orphans");
    table.prepare(trades_schema()).await.unwrap();
    let w = [trades(T0, 1, 500, 1_000_000)];
    let (until, _) = commit_window(&table, Watermark::MIN, &w).await;
    let t = table.load().await.unwrap();
    let location = t.metadata().location().to_owned();

    // Every referenced object made old: still referenced, so kept.
    let referenced: Vec<String> = server
        .keys(bucket, key_of(bucket, &location))
        .into_iter()
        .map(|k| format!("s3://{bucket}/{k}"))
        .collect();
    assert!(referenced.len() >= 4, "{referenced:?}");
    for l in &referenced {
        age(&server, bucket, l, 2 * HOUR);
    }
    // A run still staging: its file is fresh.
    let staged = stage(&table, RunId::new(), &[trades(T0 + DAY_MICROS, 501, 100, 1_000)]).await;
    let fresh = staged.stats().files.clone();
    assert_eq!(fresh.len(), 1);
    // Old and unreferenced: a crashed writer's data file and metadata file.
    let stray_data = format!("{location}/data/ts_day=2024-03-01/stray-1.parquet");
    let stray_meta = format!("{location}/metadata/99999-stray.metadata.json");
    // Old, unreferenced, but not the table's to delete.
    let hidden = format!("{location}/data/_tmp/x.parquet");
    let outside = format!("{location}/other/x.parquet");
    let sibling = format!("{location}2/data/x.parquet");
    for l in [&stray_data, &stray_meta, &hidden, &outside, &sibling] {
        put(&table, l, b"old").await;
        age(&server, bucket, l, 2 * HOUR);
    }
    // Unreferenced but just written (a commit in flight): younger than the grace.
    let young_meta = format!("{location}/metadata/00042-in-flight.metadata.json");
    put(&table, &young_meta, b"new").await;

    let deleted = table.cleanup_orphans(HOUR).await.unwrap();
    assert_eq!(deleted, 2, "the two old strays");
    let io = t.file_io();
    for l in [&stray_data, &stray_meta] {
        assert!(!io.exists(l).await.unwrap(), "{l} deleted");
    }
    for l in referenced
        .iter()
        .chain(&fresh)
        .chain([&hidden, &outside, &sibling, &young_meta])
    {
        assert!(io.exists(l).await.unwrap(), "{l} kept");
    }
    assert_eq!(figures(&read_back(&table).await), figures(&w));
    assert_eq!(committed_until(&table).await, until);

    // An old object of a run that started within the grace (its id, in the
    // file name, says when) is still kept: the run may yet commit it.
    age(&server, bucket, &fresh[0], 2 * HOUR);
    assert_eq!(table.cleanup_orphans(HOUR).await.unwrap(), 0);
    assert!(io.exists(&fresh[0]).await.unwrap());
    // Past the grace (zero here) the abandoned staged file and the young
    // metadata file go too.
    assert_eq!(table.cleanup_orphans(Duration::ZERO).await.unwrap(), 2);
    assert!(!io.exists(&fresh[0]).await.unwrap());
    assert!(!io.exists(&young_meta).await.unwrap());
    for l in &referenced {
        assert!(io.exists(l).await.unwrap(), "{l} kept");
    }
    drop(staged);

    // The server checks signatures: a wrong secret cannot list, and the
    // error does not carry the secret.
    let wrong = "not-the-secret-0123456789";
    let bad = s3_sink(&server, bucket, dir.path(), Some(wrong)).await;
    let err = open(&bad, "lake.orphans")
        .cleanup_orphans(Duration::ZERO)
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(wrong) && !text.contains(server.secret_key()),
        "{text}"
    );
    assert!(
        !matches!(err, IcebergSinkError::CleanupUnsupported { .. }),
        "a refused request is an error, not 'unsupported': {err}"
    );
}

/// Maintenance on S3: the expiry deletes the expired snapshots' files, and
/// orphan removal (now listing the bucket) deletes an old stray object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_maintain_expires_and_removes_orphans() {
    let server = S3Server::start();
    let bucket = "maintain";
    server.create_bucket(bucket);
    let dir = tempfile::tempdir().unwrap();
    let sink = s3_sink(&server, bucket, dir.path(), None).await;
    let table = open(&sink, "lake.s3_maintain");
    table.prepare(trades_schema()).await.unwrap();
    let mut after = Watermark::MIN;
    let mut written = Vec::new();
    for k in 0..5 {
        let w = [trades(T0 + k * 60_000_000, 1 + k * 100, 50, 1_000)];
        after = commit_window(&table, after, &w).await.0;
        written.extend(w);
    }
    let t = table.load().await.unwrap();
    let location = t.metadata().location().to_owned();
    let lists: Vec<String> = t
        .metadata()
        .snapshots()
        .map(|s| s.manifest_list().to_owned())
        .collect();
    let newest = t
        .metadata()
        .current_snapshot()
        .unwrap()
        .manifest_list()
        .to_owned();
    let stray = format!("{location}/data/ts_day=2024-03-01/stray-2.parquet");
    put(&table, &stray, b"old").await;
    age(&server, bucket, &stray, 2 * HOUR);

    let cfg = MaintenanceConfig::default()
        .min_input_files(usize::MAX)
        .max_manifests(usize::MAX)
        .snapshot_retention(Duration::ZERO)
        .delete_grace(Duration::ZERO)
        .orphan_grace(HOUR)
        .keep_snapshots(1);
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.snapshots_expired, 4);
    assert_eq!(report.orphans_deleted, 1, "the old stray: {report:?}");
    assert!(report.files_deleted >= 4, "{report:?}");
    let t = table.load().await.unwrap();
    assert!(!t.file_io().exists(&stray).await.unwrap());
    assert_eq!(t.metadata().snapshots().len(), 1);
    for l in &lists {
        let exists = t.file_io().exists(l).await.unwrap();
        assert_eq!(exists, *l == newest, "{l}");
    }
    assert_eq!(figures(&read_back(&table).await), figures(&written));
    assert_eq!(committed_until(&table).await, after);
}
