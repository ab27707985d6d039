//! The PostgreSQL store over TLS, against a private PostgreSQL that accepts
//! TLS connections only (`offload_testkit::TlsPostgres`, certificates made by
//! the test): the whole conformance suite over a verified connection, a
//! server signed by another CA refused with a message naming certificate
//! verification, and a plaintext connection refused by the server.
#![cfg(feature = "postgres")]

use offload_core::RunId;
#[cfg(feature = "rustls")]
use offload_testkit::{TestCerts, TlsPostgres};
use offload_watermark_store::{PostgresStore, StoreError};

/// A schema no other check of this run uses (the server is thrown away after).
fn fresh_schema() -> String {
    format!("tls_{}", RunId::new().to_string().replace('-', ""))
}

#[cfg(feature = "rustls")]
#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_over_verified_tls() {
    let certs = TestCerts::generate();
    let pg = TlsPostgres::start(&certs);
    let url = pg.url(&certs.ca());
    offload_watermark_store::conformance::run_all(|| {
        let url = url.clone();
        async move {
            PostgresStore::connect(&url, &fresh_schema())
                .await
                .unwrap_or_else(|e| panic!("connect over TLS: {e}"))
        }
    })
    .await;
}

#[cfg(feature = "rustls")]
#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused_naming_certificate_verification() {
    let certs = TestCerts::generate();
    let pg = TlsPostgres::start(&certs);
    // A password in the URL (trust ignores it) must not reach the message.
    let url = pg
        .url(&certs.wrong_ca())
        .replacen("postgres@", "postgres:hunter2@", 1);
    let err = PostgresStore::connect(&url, &fresh_schema())
        .await
        .expect_err("a server whose CA we do not trust must be refused");
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Tls { .. }), "{err:?}");
    assert!(
        !err.is_retryable(),
        "a certificate failure is not transient: {shown}"
    );
    for needle in [
        "certificate verification failed",
        &format!("127.0.0.1:{}", pg.port()),
        "UnknownIssuer",
        "sslrootcert",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing from: {shown}");
    }
    assert!(
        !shown.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{shown}"
    );
}

#[cfg(feature = "rustls")]
#[tokio::test]
async fn a_plaintext_connection_is_refused_by_the_server() {
    let certs = TestCerts::generate();
    let pg = TlsPostgres::start(&certs);
    let err = PostgresStore::connect(&pg.url_with_sslmode("disable"), &fresh_schema())
        .await
        .expect_err("the server has no hba line for a connection without TLS");
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(
        shown.contains("no pg_hba.conf entry") && shown.contains("no encryption"),
        "{shown}"
    );
    // And the same server, same role, admits the verified TLS connection.
    let store = PostgresStore::connect(&pg.url(&certs.ca()), &fresh_schema())
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}\nserver log:\n{}", pg.log()));
    store.close().await;
}

/// Without the feature, a URL that requires TLS is refused before any
/// connection is tried: never a silent plaintext connection. (No server is
/// needed: nothing listens on port 1.)
#[cfg(not(feature = "rustls"))]
#[tokio::test]
async fn a_url_requiring_tls_needs_the_rustls_feature() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("postgres://u:hunter2@127.0.0.1:1/db?sslmode={mode}");
        let err = PostgresStore::connect(&url, &fresh_schema())
            .await
            .expect_err("no TLS in this build");
        let shown = err.to_string();
        assert!(matches!(err, StoreError::TlsUnavailable { .. }), "{err:?}");
        assert!(
            shown.contains("`rustls` feature") && shown.contains(mode),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
