//! TLS to PostgreSQL: what the URL asks for, and handshake failures said in
//! words an operator can act on.
//!
//! TLS is configured by the URL as with libpq (`sslmode=verify-full&sslrootcert=/path/ca.pem`);
//! with the `rustls` feature sqlx speaks it through rustls and its ring
//! provider, trusting the `sslrootcert` file and webpki's roots.

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Whether the URL's `sslmode` refuses a connection without TLS (`require`,
/// `verify-ca`, `verify-full`). `prefer` (the default) and `allow` fall back
/// to plaintext by definition, so they do not count.
pub(crate) fn required(options: &PgConnectOptions) -> bool {
    matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    )
}

/// The URL spelling of an `sslmode`, for messages.
pub(crate) fn sslmode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// The TLS failure inside a connect error, described for the operator with
/// what to change, or `None` when `e` is not a TLS failure.
#[cfg(feature = "rustls")]
pub(crate) fn failure(e: &sqlx::Error, options: &PgConnectOptions) -> Option<String> {
    let endpoint = format!("{}:{}", options.get_host(), options.get_port());
    let rustls_error = match e {
        // A failed handshake surfaces as an I/O error wrapping rustls's own.
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        sqlx::Error::Tls(inner) => match inner.downcast_ref::<rustls::Error>() {
            Some(r) => r,
            // sqlx's own words: "server does not support TLS", a bad sslrootcert file, ...
            None => return Some(format!("{inner} ({endpoint})")),
        },
        _ => return None,
    };
    Some(describe(rustls_error, &endpoint))
}

#[cfg(feature = "rustls")]
fn describe(e: &rustls::Error, endpoint: &str) -> String {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "certificate verification failed for {endpoint}: certificate not trusted (UnknownIssuer); \
             set sslrootcert=<file of the CA that signed the server's certificate> in the URL"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "certificate verification failed for {endpoint}: the certificate is not valid for this host \
             name (NotValidForName); connect by a name the certificate lists, or use sslmode=verify-ca"
        ),
        E::InvalidCertificate(other) => {
            format!("certificate verification failed for {endpoint}: {other:?}")
        }
        other => format!("TLS handshake with {endpoint} failed: {other}"),
    }
}

#[cfg(not(feature = "rustls"))]
pub(crate) fn failure(_: &sqlx::Error, _: &PgConnectOptions) -> Option<String> {
    // Without the feature no handshake is ever attempted: `required` URLs are
    // refused before connecting, and `prefer` connects in plaintext.
    None
}
