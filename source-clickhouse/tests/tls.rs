//! The source over HTTPS (feature `rustls`), against the chdb front's TLS
//! listener with a certificate the test makes: a window fetched whole when
//! the test CA is trusted; refused with a clear, non-retryable error naming
//! certificate verification when only an unrelated CA (or webpki's roots) is.
#![cfg(feature = "rustls")]

use futures::TryStreamExt;
use offload_core::{SourceTable, TableConfig, Watermark, Window};
use offload_source_clickhouse::{ClickHouseError, ClickHouseSource};
use offload_testkit::{ClickHouseFront, TestCerts};

const ROWS: usize = 5_000;

fn seed(front: &ClickHouseFront) {
    front.query(
        "CREATE TABLE default.tls_trades (ts DateTime64(3, 'UTC'), seq UInt64, symbol String) \
         ENGINE = MergeTree ORDER BY (ts, seq)",
    );
    front.query(&format!(
        "INSERT INTO default.tls_trades SELECT \
         fromUnixTimestamp64Milli(toInt64(1767225600000 + intDiv(number, 7)), 'UTC'), number, \
         ['BTC-USD', 'ETH-USD'][number % 2 + 1] FROM numbers({ROWS})"
    ));
}

fn trades() -> TableConfig {
    TableConfig::builder("tls_trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .batch_size(1_000)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_is_fetched_over_https_trusting_the_test_ca() {
    let certs = TestCerts::generate();
    let front = ClickHouseFront::start_tls(&certs);
    seed(&front);
    let url = front.https_url().expect("a TLS front has an HTTPS URL");
    assert!(url.starts_with("https://"), "{url}");

    let source = ClickHouseSource::builder(url)
        .tls_ca_file(certs.ca())
        .database("default")
        .build()
        .unwrap();
    let table = source
        .open_table(&trades())
        .await
        .unwrap_or_else(|e| panic!("open over HTTPS: {e}"));
    let high = table.high_watermark().await.unwrap().expect("rows are there");
    let batches: Vec<_> = table
        .read(Window::new(Watermark::MIN, high).unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, ROWS, "every row of the window arrives over HTTPS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_signed_by_another_ca_is_refused_naming_certificate_verification() {
    let certs = TestCerts::generate();
    let front = ClickHouseFront::start_tls(&certs);
    seed(&front);
    let url = front.https_url().unwrap();

    // An unrelated CA file, then no file at all (webpki's roots): neither
    // trusts the test CA.
    for source in [
        ClickHouseSource::builder(url)
            .tls_ca_file(certs.wrong_ca())
            .password("hunter2")
            .build()
            .unwrap(),
        ClickHouseSource::builder(url)
            .password("hunter2")
            .build()
            .unwrap(),
    ] {
        let err = source
            .open_table(&trades())
            .await
            .expect_err("a server whose CA we do not trust must be refused");
        let shown = err.to_string();
        assert!(matches!(err, ClickHouseError::Tls { .. }), "{err:?}");
        assert!(
            !err.is_retryable(),
            "a certificate failure is not transient: {shown}"
        );
        for needle in [
            &format!("TLS to ClickHouse at {url} failed"),
            "certificate verification failed",
            "UnknownIssuer",
            "tls_ca_file",
        ] {
            assert!(shown.contains(needle), "{needle:?} missing from: {shown}");
        }
        assert!(!format!("{err:?} {source:?}").contains("hunter2"));
    }
}

#[test]
fn a_ca_file_is_checked_when_the_source_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (builder, needle) in [
        (
            ClickHouseSource::builder("https://127.0.0.1:1").tls_ca_file(dir.join("missing.pem")),
            "cannot read",
        ),
        (
            ClickHouseSource::builder("https://127.0.0.1:1").tls_ca_file(&not_pem),
            "no PEM certificate",
        ),
        (
            ClickHouseSource::builder("http://127.0.0.1:1").tls_ca_file(&not_pem),
            "not https://",
        ),
    ] {
        let err = builder.build().expect_err("refused at build");
        assert!(
            matches!(
                err,
                ClickHouseError::InvalidConfig {
                    field: "tls_ca_file",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(needle), "{needle:?} missing from: {err}");
    }
}
