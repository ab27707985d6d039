//! One classification of SQL driver errors (feature `sqlx`), shared by every
//! crate that talks to a database through sqlx: the PostgreSQL watermark store
//! and the SQL Iceberg catalog (SQLite or PostgreSQL).

/// Whether `e` is transient: lost or refused connections, pool exhaustion
/// (not a pool closed on purpose: it never reopens),
/// timeouts, SQLite's busy/locked codes and PostgreSQL's transient SQLSTATEs
/// are; authentication, missing objects, constraint violations and decode
/// errors are not.
///
/// ```
/// use offload_core::sql::sqlx_retryable;
/// assert!(sqlx_retryable(&sqlx::Error::PoolTimedOut));
/// assert!(!sqlx_retryable(&sqlx::Error::RowNotFound));
/// ```
pub fn sqlx_retryable(e: &sqlx::Error) -> bool {
    match e {
        // A refused certificate stays refused: retrying only delays the message.
        sqlx::Error::Io(io) => !is_tls(io),
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| sqlstate_retryable(&code))
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// Whether a database error code is transient: PostgreSQL SQLSTATEs
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>) and
/// SQLite result codes (5 `SQLITE_BUSY`, 6 `SQLITE_LOCKED` and their extended
/// codes such as 517 `BUSY_SNAPSHOT`).
///
/// ```
/// use offload_core::sql::sqlstate_retryable;
/// assert!(sqlstate_retryable("40001") && sqlstate_retryable("517"));
/// assert!(!sqlstate_retryable("28P01"));
/// ```
pub fn sqlstate_retryable(code: &str) -> bool {
    // SQLSTATEs are always five characters, some all digits ("22021"); SQLite's
    // (extended) result codes have at most four digits. Only the latter are
    // read as numbers, or "22021" (0x5605) would pass for SQLITE_BUSY.
    let sqlite_busy = code.len() < 5 && code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
    sqlite_busy
        || code.starts_with("08") // connection_exception
        || code.starts_with("53") // insufficient_resources (too many connections, disk full)
        || matches!(
            code,
            "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "55P03" // lock_not_available
                | "57014" // query_canceled (statement_timeout)
                | "57P01" // admin_shutdown (backend terminated)
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (starting up)
        )
}

/// Whether an I/O error is a failed TLS handshake (rustls's error inside it).
fn is_tls(io: &std::io::Error) -> bool {
    #[cfg(feature = "rustls")]
    if io.get_ref().is_some_and(|e| e.is::<rustls::Error>()) {
        return true;
    }
    let _ = io;
    false
}

/// The TLS failure inside a sqlx connect error, described for the operator
/// with what to change (`sslrootcert`, the host name), or `None` when `e` is
/// not a TLS failure. `endpoint` (`host:port`) names the server; the store and
/// the SQL catalog both tell their handshake failures through this.
pub fn tls_failure(e: &sqlx::Error, endpoint: &str) -> Option<String> {
    match e {
        #[cfg(feature = "rustls")]
        // A failed handshake surfaces as an I/O error wrapping rustls's own.
        sqlx::Error::Io(io) => Some(describe_rustls(io.get_ref()?.downcast_ref()?, endpoint)),
        sqlx::Error::Tls(inner) => {
            #[cfg(feature = "rustls")]
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(describe_rustls(r, endpoint));
            }
            // sqlx's own words: "server does not support TLS", a bad sslrootcert file, ...
            Some(format!("{inner} ({endpoint})"))
        }
        _ => None,
    }
}

#[cfg(feature = "rustls")]
fn describe_rustls(e: &rustls::Error, endpoint: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_named_and_never_retried() {
        let refused = || sqlx::Error::Tls("server does not support TLS".into());
        assert!(!sqlx_retryable(&refused()));
        assert_eq!(
            tls_failure(&refused(), "h:5432").as_deref(),
            Some("server does not support TLS (h:5432)")
        );
        assert_eq!(tls_failure(&sqlx::Error::PoolTimedOut, "h:5432"), None);
        let plain_io = sqlx::Error::Io(std::io::Error::other("connection reset"));
        assert!(sqlx_retryable(&plain_io));
        assert_eq!(tls_failure(&plain_io, "h:5432"), None);
        #[cfg(feature = "rustls")]
        {
            let untrusted = || {
                sqlx::Error::Io(std::io::Error::other(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )))
            };
            assert!(!sqlx_retryable(&untrusted()));
            let said = tls_failure(&untrusted(), "h:5432").unwrap();
            assert!(
                said.contains("UnknownIssuer") && said.contains("sslrootcert"),
                "{said}"
            );
        }
    }

    #[test]
    fn codes_are_classified() {
        for code in [
            "08006", "53300", "40001", "40P01", "57P01", "57014", "5", "6", "517", "261",
        ] {
            assert!(sqlstate_retryable(code), "{code}");
        }
        for code in [
            "28P01", "28000", "3D000", "42P01", "23505", "22021", "22005", "XX000", "19", "2067",
        ] {
            assert!(!sqlstate_retryable(code), "{code}");
        }
    }
}
