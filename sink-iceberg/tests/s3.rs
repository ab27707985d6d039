//! S3-compatible storage (feature `s3`): the warehouse lives in a bucket on
//! the server at `OFFLOAD_S3_ENDPOINT` (path-style addressing, credentials
//! `OFFLOAD_S3_ACCESS_KEY`/`OFFLOAD_S3_SECRET_KEY`, default `test`/`test`).
//! Any S3-compatible server works, e.g. `moto_server -p 5555` from
//! `pip install "moto[server]"`, or MinIO.
//!
//! Only built with `--features s3`; then it fails (never skips) when the
//! endpoint is not set or not reachable.
#![cfg(all(feature = "s3", feature = "sqlite"))] // the catalog is a SQLite file

mod common;

use std::io::{Read, Write};

use common::*;
use offload_core::{RunId, SinkTable, Watermark};
use offload_sink_iceberg::{
    CatalogConfig, IcebergSink, IcebergSinkConfig, IcebergSinkError, MaintenanceConfig, S3Config,
    StorageConfig,
};

/// Creates a bucket with a plain (unsigned) path-style PUT, which S3 test
/// servers accept.
fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint
        .strip_prefix("http://")
        .expect("OFFLOAD_S3_ENDPOINT must be an http:// URL")
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)
        .unwrap_or_else(|e| panic!("S3 endpoint {endpoint} is not reachable: {e}"));
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "create bucket {bucket}: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_warehouse_round_trip() {
    let endpoint = std::env::var("OFFLOAD_S3_ENDPOINT").expect(
        "the s3 tests need an S3-compatible server: set OFFLOAD_S3_ENDPOINT=http://127.0.0.1:5555 \
         (e.g. `moto_server -p 5555`)",
    );
    let bucket = format!("offload-{}", uuid::Uuid::now_v7().simple());
    create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Config {
        endpoint: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some(std::env::var("OFFLOAD_S3_ACCESS_KEY").unwrap_or_else(|_| "test".into())),
        secret_access_key: Some(std::env::var("OFFLOAD_S3_SECRET_KEY").unwrap_or_else(|_| "test".into())),
        path_style_access: true,
        ..S3Config::default()
    };
    let catalog = CatalogConfig::sqlite(dir.path().join("catalog.db"), format!("s3://{bucket}/warehouse"))
        .with_storage(StorageConfig::S3(s3));
    let sink = IcebergSink::connect(IcebergSinkConfig::new(catalog))
        .await
        .unwrap();
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
    assert!(t.metadata().location().starts_with(&format!("s3://{bucket}/")));

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

    // Listing object storage is not supported by cleanup: a typed error, not a silent 0.
    let err = table.cleanup().await.unwrap_err();
    match err {
        offload_core::Error::Sink { source, .. } => assert!(matches!(
            source.downcast_ref::<IcebergSinkError>(),
            Some(IcebergSinkError::CleanupUnsupported { .. })
        )),
        other => panic!("{other:?}"),
    }
}

/// Maintenance on object storage: the expiry deletes the expired snapshots'
/// files through iceberg's storage; orphan removal (which needs a listing) is
/// skipped, without failing `maintain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_maintain_expires_and_deletes_without_listing() {
    let endpoint = std::env::var("OFFLOAD_S3_ENDPOINT").expect(
        "the s3 tests need an S3-compatible server: set OFFLOAD_S3_ENDPOINT=http://127.0.0.1:5555 \
         (e.g. `moto_server -p 5555`)",
    );
    let bucket = format!("offload-{}", uuid::Uuid::now_v7().simple());
    create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Config {
        endpoint: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some(std::env::var("OFFLOAD_S3_ACCESS_KEY").unwrap_or_else(|_| "test".into())),
        secret_access_key: Some(std::env::var("OFFLOAD_S3_SECRET_KEY").unwrap_or_else(|_| "test".into())),
        path_style_access: true,
        ..S3Config::default()
    };
    let catalog = CatalogConfig::sqlite(dir.path().join("catalog.db"), format!("s3://{bucket}/warehouse"))
        .with_storage(StorageConfig::S3(s3));
    let sink = IcebergSink::connect(IcebergSinkConfig::new(catalog))
        .await
        .unwrap();
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

    let cfg = MaintenanceConfig::default()
        .min_input_files(usize::MAX)
        .max_manifests(usize::MAX)
        .snapshot_retention(std::time::Duration::ZERO)
        .delete_grace(std::time::Duration::ZERO)
        .orphan_grace(std::time::Duration::ZERO)
        .keep_snapshots(1);
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.snapshots_expired, 4);
    assert_eq!(report.orphans_deleted, 0, "no listing on object storage");
    assert!(report.files_deleted >= 4, "{report:?}");
    let t = table.load().await.unwrap();
    assert_eq!(t.metadata().snapshots().len(), 1);
    for l in &lists {
        let exists = t.file_io().exists(l).await.unwrap();
        assert_eq!(exists, *l == newest, "{l}");
    }
    assert_eq!(figures(&read_back(&table).await), figures(&written));
    assert_eq!(committed_until(&table).await, after);
}
