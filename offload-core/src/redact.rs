//! Hiding secrets in connection URLs: the one place that decides what a log
//! line or a `Debug` impl may show of a URL.

/// `url` with every secret replaced by `***`, for messages, logs and `Debug`.
///
/// Errs on the side of hiding:
/// - the user info is everything before the *last* `@` (a password may hold
///   `@`, `/`, `?` or `#` unescaped); the password is hidden, and the whole
///   user info when it holds anything a user name would not;
/// - every query value is hidden (it may be a token), except those of the
///   TLS settings an operator must see to fix a refused handshake (`sslmode`,
///   `sslrootcert`: a mode and a file path, never secrets), and a query key
///   that could be an encoded `password` (`%`) or names one (`pass`) is
///   hidden too;
/// - text that is not a URL is hidden entirely.
///
/// ```
/// use offload_core::redact::redact_url;
/// assert_eq!(redact_url("postgres://u:s3cret@h:5432/db"), "postgres://u:***@h:5432/db");
/// assert_eq!(redact_url("http://u:pa/ss@h:8123"), "http://***@h:8123");
/// assert_eq!(redact_url("s3://b/p?token=abc&region=x"), "s3://b/p?token=***&region=***");
/// assert_eq!(
///     redact_url("postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/ca.pem&sslpassword=k"),
///     "postgres://u:***@h/db?sslmode=verify-full&sslrootcert=/ca.pem&***=***"
/// );
/// assert_eq!(redact_url("host=h password=x"), "<redacted: not a URL>");
/// ```
pub fn redact_url(url: &str) -> String {
    /// Query keys whose values are shown (exact, case-sensitive: as drivers read them).
    const SHOWN: [&str; 2] = ["sslmode", "sslrootcert"];
    let Some(scheme_end) = url.find("://") else {
        return "<redacted: not a URL>".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let mut out = scheme.to_owned();
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                _ if userinfo.contains(['/', '?', '#']) => out.push_str("***"),
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    match rest.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|kv| {
                    let key = kv.split('=').next().unwrap_or_default();
                    let lower = key.to_ascii_lowercase();
                    // `%` too: drivers decode `pass%77ord` to `password`.
                    if lower.contains("pass") || key.contains('%') {
                        "***=***".to_owned()
                    } else if SHOWN.contains(&key) {
                        kv.to_owned()
                    } else {
                        format!("{key}=***")
                    }
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

/// `Some(secret)` as `Some("***")`, for `Debug` impls of configuration.
///
/// ```
/// assert_eq!(offload_core::redact::redact_opt(&Some("pw".to_string())), Some("***"));
/// ```
pub fn redact_opt<T>(v: &Option<T>) -> Option<&'static str> {
    v.as_ref().map(|_| "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let cases = [
            ("postgres://u:s3cret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?sslmode=require",
                "postgres://h/db?sslmode=require",
            ),
            // Shown only under their exact names.
            ("postgres://h/db?SSLMODE=s3", "postgres://h/db?SSLMODE=***"),
            (
                "postgres://h/db?sslkey=s3&sslpassword=s3",
                "postgres://h/db?sslkey=***&***=***",
            ),
            (
                "postgres://h/db?user=u&password=s3cret&x=1",
                "postgres://h/db?user=***&***=***&x=***",
            ),
            ("postgres://h/db?PASSWORD=s3cret", "postgres://h/db?***=***"),
            ("postgres://h/db?pass%77ord=s3cret", "postgres://h/db?***=***"),
            ("postgres://u:s3/cr#et@h/db", "postgres://***@h/db"),
            ("postgres://u:s3?cr@h/db", "postgres://***@h/db"),
            ("postgres://u:s3@cret@h/db", "postgres://u:***@h/db"),
            ("postgres://h/db?password=s3:x@y", "postgres://***@y"),
            // The two rules that were weaker elsewhere: a `/` in the password,
            // and a token in the query string.
            ("http://default:s3/x@127.0.0.1:8123", "http://***@127.0.0.1:8123"),
            (
                "http://h:8123/?access_token=s3cret",
                "http://h:8123/?access_token=***",
            ),
            ("host=h password=s3cret", "<redacted: not a URL>"),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("s3"), "{got}");
        }
    }
}
