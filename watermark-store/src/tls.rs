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
pub(crate) fn failure(e: &sqlx::Error, options: &PgConnectOptions) -> Option<String> {
    let endpoint = format!("{}:{}", options.get_host(), options.get_port());
    offload_core::sql::tls_failure(e, &endpoint)
}
