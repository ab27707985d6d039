//! [`Compression`]: wire compression of responses, and the `Auto` rule that
//! picks it from the server's address.

/// Wire compression of responses.
///
/// The default, [`Auto`](Self::Auto), is resolved once when the source is
/// built ([`ClickHouseSourceBuilder::build`](crate::ClickHouseSourceBuilder::build));
/// [`ClickHouseSource::compression`](crate::ClickHouseSource::compression)
/// tells what it became.
///
/// ```
/// use offload_source_clickhouse::Compression;
///
/// assert_eq!(Compression::default(), Compression::Auto);
/// // On one host the link costs nothing: no compression.
/// assert_eq!(Compression::Auto.resolve("http://127.0.0.1:8123"), Compression::None);
/// assert_eq!(Compression::Auto.resolve("http://localhost:8123"), Compression::None);
/// assert_eq!(Compression::Auto.resolve("http://[::1]:8123"), Compression::None);
/// // Across a network LZ4 (with the `lz4` feature, on by default).
/// # #[cfg(feature = "lz4")]
/// assert_eq!(Compression::Auto.resolve("http://clickhouse.internal:8123"), Compression::Lz4);
/// // An explicit choice is kept.
/// assert_eq!(Compression::None.resolve("http://clickhouse.internal:8123"), Compression::None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Chosen from the URL's host when the source is built:
    /// [`None`](Self::None) for a loopback host (`localhost`, `127.0.0.0/8`,
    /// `::1`), [`Lz4`](Self::Lz4) otherwise (`None` without the `lz4`
    /// feature). On one host the bytes cross memory, not a network: LZ4
    /// saves nothing and costs CPU on both ends, on the same cores (-8% end
    /// to end in the harness). The host is not resolved: a name other than
    /// `localhost` counts as remote.
    #[default]
    Auto,
    /// No compression.
    None,
    /// LZ4 (`Accept-Encoding: lz4`), ClickHouse's own default. Needs the `lz4`
    /// feature (on by default).
    #[cfg(feature = "lz4")]
    Lz4,
}

impl Compression {
    /// What this choice means for a server at `url`: [`Auto`](Self::Auto)
    /// decided by the rule above, any other value unchanged. Never returns
    /// `Auto`.
    #[must_use]
    pub fn resolve(self, url: &str) -> Compression {
        match self {
            Compression::Auto if is_loopback_url(url) => Compression::None,
            #[cfg(feature = "lz4")]
            Compression::Auto => Compression::Lz4,
            #[cfg(not(feature = "lz4"))]
            Compression::Auto => Compression::None,
            other => other,
        }
    }

    /// The `clickhouse` crate's setting for a resolved choice.
    pub(crate) fn client(self) -> clickhouse::Compression {
        match self {
            // `resolve` never returns `Auto`; treated as no compression
            // rather than a panic should that ever change.
            Compression::Auto | Compression::None => clickhouse::Compression::None,
            #[cfg(feature = "lz4")]
            Compression::Lz4 => clickhouse::Compression::Lz4,
        }
    }
}

/// Whether the host of `url` (`scheme://[user@]host[:port][/...]`) is a
/// loopback address or `localhost`. Anything unparsable is not.
fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials may contain ':' and '@'; the host follows the last '@'.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, _)) => host,
            None => return false,
        },
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://localhost:8123",
            "http://LocalHost",
            "http://localhost.:8123/",
            "https://localhost/?x=1",
            "http://127.0.0.1:8123",
            "http://127.255.3.4",
            "http://user:p@ss:w@rd@127.0.0.1:8123/db",
            "http://[::1]:8123",
            "http://[::1]",
            "http://[::ffff:127.0.0.1]:8123",
        ] {
            assert!(is_loopback_url(url), "{url}");
            assert_eq!(Compression::Auto.resolve(url), Compression::None, "{url}");
        }
    }

    #[test]
    fn other_hosts() {
        for url in [
            "http://clickhouse:8123",
            "http://10.0.0.1:8123",
            "http://128.0.0.1",
            "http://0.0.0.0:8123",
            "http://[::2]:8123",
            "http://localhost.example.com",
            "http://mylocalhost",
            // A loopback address in the credentials or the path is not the host.
            "http://127.0.0.1@db.example.com:8123",
            "http://db.example.com/127.0.0.1",
            "http://[::1",
            "localhost:8123",
            "",
        ] {
            assert!(!is_loopback_url(url), "{url}");
            #[cfg(feature = "lz4")]
            assert_eq!(Compression::Auto.resolve(url), Compression::Lz4, "{url}");
            #[cfg(not(feature = "lz4"))]
            assert_eq!(Compression::Auto.resolve(url), Compression::None, "{url}");
        }
    }

    #[test]
    fn explicit_choices_are_kept() {
        assert_eq!(Compression::None.resolve("http://db:8123"), Compression::None);
        #[cfg(feature = "lz4")]
        assert_eq!(
            Compression::Lz4.resolve("http://127.0.0.1:8123"),
            Compression::Lz4
        );
    }
}
