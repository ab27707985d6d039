//! `[clickhouse]`: where rows come from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::value::{Dur, EnvVar, SettingValue};

/// `[clickhouse]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSection {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123` (no password in it).
    pub url: String,
    /// Database for tables named without one (default: the user's default).
    pub database: Option<String>,
    /// User (default: the server's `default`).
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    pub password_env: Option<EnvVar>,
    /// For an `https://` URL: a PEM file of the CA certificate(s) to trust
    /// instead of webpki's roots (Mozilla's list), e.g. a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// Response compression on the wire (default `auto`: none to a loopback
    /// host, LZ4 otherwise).
    #[serde(default)]
    pub compression: CompressionName,
    /// Longest wait for the next piece of a response on the wire (default
    /// 60s): a guard against a silent connection. Per-call deadlines are
    /// `[timeouts]`; the engine also bounds each batch's wait by the lease.
    pub stream_idle_timeout: Option<Dur>,
    /// How `UInt64` columns are represented in Iceberg (default `decimal`).
    #[serde(default)]
    pub uint64: UInt64Name,
    /// What to do with `DateTime64(7..9)` (default `truncate`).
    #[serde(default)]
    pub sub_microsecond: SubMicrosecondName,
    /// ClickHouse settings sent with every query, e.g. `max_execution_time = 600`.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingValue>,
}

/// `clickhouse.compression`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CompressionName {
    /// None when the URL's host is `localhost`, `127.0.0.0/8` or `::1`
    /// (LZ4 would only cost CPU on both ends of a link inside one host),
    /// LZ4 otherwise.
    #[default]
    Auto,
    /// LZ4, ClickHouse's own default.
    Lz4,
    /// None.
    None,
}

/// `clickhouse.uint64`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UInt64Name {
    /// `decimal(20, 0)`: every value fits.
    #[default]
    Decimal,
    /// `long`: values above `i64::MAX` fail the run.
    Int64,
}

/// `clickhouse.sub_microsecond`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubMicrosecondName {
    /// Cut to microseconds.
    #[default]
    Truncate,
    /// Iceberg v3 nanosecond timestamps.
    Nanoseconds,
    /// Refuse such columns.
    Refuse,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> ClickHouseSection {
        toml::from_str(&format!("url = \"http://127.0.0.1:8123\"\n{extra}")).unwrap()
    }

    #[test]
    fn compression_is_auto_unless_named() {
        assert_eq!(parse("").compression, CompressionName::Auto);
        for (text, want) in [
            ("auto", CompressionName::Auto),
            ("lz4", CompressionName::Lz4),
            ("none", CompressionName::None),
        ] {
            assert_eq!(parse(&format!("compression = \"{text}\"")).compression, want);
        }
        let err = toml::from_str::<ClickHouseSection>("url = \"http://h\"\ncompression = \"zstd\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auto") && err.contains("lz4"), "{err}");
    }

    /// The name reaches the source: `auto` is resolved for the URL's host.
    #[test]
    fn compression_reaches_the_source() {
        for (url, name, want) in [
            ("http://127.0.0.1:8123", "auto", "None"),
            ("http://localhost:8123", "auto", "None"),
            ("http://clickhouse.internal:8123", "auto", "Lz4"),
            ("http://127.0.0.1:8123", "lz4", "Lz4"),
            ("http://clickhouse.internal:8123", "none", "None"),
        ] {
            let section: ClickHouseSection =
                toml::from_str(&format!("url = \"{url}\"\ncompression = \"{name}\"")).unwrap();
            let source = crate::app::clickhouse_source(&section).unwrap();
            let text = format!("{source:?}");
            assert!(
                text.starts_with(&format!("ClickHouseSource {{ compression: {want},")),
                "{url} {name}: {text}"
            );
        }
    }
}
