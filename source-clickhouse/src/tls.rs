//! HTTPS to ClickHouse (feature `rustls`): rustls with the ring provider,
//! trusting either one CA file the operator names or webpki's roots, and
//! handshake failures said in words an operator can act on.
//!
//! The `clickhouse` crate's own TLS client would pick aws-lc-rs and webpki
//! roots; we hand it a hyper client with our connector instead
//! (`Client::with_http_client`), so the roots are ours.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::ClickHouseError;

// The clickhouse crate's defaults for its own client: TCP keepalive, and idle
// pooled connections dropped before ClickHouse's 3 s keep-alive timeout.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `clickhouse::Client` speaking HTTPS only, trusting `ca_file` (PEM, one or
/// more certificates) or, without one, webpki's roots.
pub(crate) fn https_client(ca_file: Option<&Path>) -> Result<clickhouse::Client, ClickHouseError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |reason: String| ClickHouseError::InvalidConfig {
        field: "tls_ca_file",
        reason,
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        None => builder
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| invalid(format!("TLS setup: {e}")))?,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!("{} holds no PEM certificate", path.display())));
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(format!("TLS setup: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    // The HTTPS layer above needs the plain connector to accept https:// URIs.
    http.enforce_http(false);
    let connector = builder.https_only().enable_http1().wrap_connector(http);
    let client = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(clickhouse::Client::with_http_client(client))
}

/// The TLS failure inside a client error, told with what to change; `None`
/// when `e` is not a TLS failure.
pub(crate) fn failure(e: &clickhouse::error::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(describe(r));
        }
        // A failed handshake reaches us as rustls's error inside (nested)
        // I/O errors, and `io::Error::source` skips the error it wraps: step
        // into it instead.
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

fn describe(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => "certificate verification failed: certificate not \
             trusted (UnknownIssuer); set the CA that signed the server's certificate as tls_ca_file \
             ([clickhouse] tls_ca_file, ClickHouseSourceBuilder::tls_ca_file)"
            .to_owned(),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "certificate verification failed: the certificate is not valid for the URL's host \
             (NotValidForName); connect by a name the certificate lists"
                .to_owned()
        }
        E::InvalidCertificate(other) => format!("certificate verification failed: {other:?}"),
        other => format!("TLS handshake failed: {other}"),
    }
}
