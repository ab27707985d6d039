//! The value types the schema is written in: durations (core's one grammar), secrets
//! named by environment variable, byte sizes.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// A duration in [`offload_core::duration`]'s grammar: `250ms`, `30s`, `5m`, `2h`, `1d`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl std::str::FromStr for Dur {
    type Err = String;

    /// ```
    /// use offload_cli::config::Dur;
    /// assert_eq!("5m".parse::<Dur>().unwrap().0.as_secs(), 300);
    /// assert_eq!("1h 30m".parse::<Dur>().unwrap().0.as_secs(), 5400);
    /// assert!("5 parsecs".parse::<Dur>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        offload_core::duration::parse_duration(s).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&offload_core::duration::format_duration(self.0))
    }
}

/// A size in bytes: an integer (bytes) or text with a binary unit,
/// `"512KiB"`, `"256MiB"`, `"1GiB"`, `"1 TiB"`, `"100B"` (units are
/// case-insensitive; decimal units such as `MB` are refused rather than
/// guessed at).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    /// ```
    /// use offload_cli::config::ByteSize;
    /// assert_eq!("256MiB".parse::<ByteSize>().unwrap().0, 256 << 20);
    /// assert_eq!("1 gib".parse::<ByteSize>().unwrap().0, 1 << 30);
    /// assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
    /// assert!("256MB".parse::<ByteSize>().is_err());
    /// assert!("1.5GiB".parse::<ByteSize>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let bad = || {
            format!(
                "{s:?} is not a byte size: write an integer (bytes) or one with a binary unit, \
                 e.g. \"256MiB\" (B, KiB, MiB, GiB, TiB)"
            )
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "kib" => 10,
            "mib" => 20,
            "gib" => 30,
            "tib" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            N(u64),
            S(String),
        }
        match Any::deserialize(d) {
            Ok(Any::N(n)) => Ok(ByteSize(n)),
            Ok(Any::S(s)) => s.parse().map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a byte size: an integer (bytes) or a string such as \"256MiB\"",
            )),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

/// The name of an environment variable that holds a secret. The
/// configuration file only ever names the variable; [`EnvVar::secret`]
/// reads it when the program connects.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct EnvVar(pub String);

impl EnvVar {
    /// The variable's value, or [`ConfigError::MissingEnv`] naming the key that named it.
    pub fn secret(&self, key: &str) -> Result<Secret, ConfigError> {
        match std::env::var(&self.0) {
            Ok(v) => Ok(Secret(v)),
            Err(_) => Err(ConfigError::MissingEnv {
                var: self.0.clone(),
                key: key.to_owned(),
            }),
        }
    }

    /// Like [`secret`](Self::secret) for an optional key.
    pub fn secret_opt(v: &Option<EnvVar>, key: &str) -> Result<Option<Secret>, ConfigError> {
        v.as_ref().map(|e| e.secret(key)).transpose()
    }
}

/// A secret read from the environment. `Debug` prints `***`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, to hand to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A ClickHouse setting's value: TOML strings, integers, floats and booleans
/// are all sent as text.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingValue(pub String);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(SettingValue(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::I(i) => i.to_string(),
            Any::F(f) => f.to_string(),
            Any::B(b) => u8::from(b).to_string(),
        }))
    }
}

/// Refuses a URL whose user info carries a password: secrets come from the
/// environment only (`password_env`, `url_env`).
pub(crate) fn refuse_inline_password(key: &str, url: &str) -> Result<(), ConfigError> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(());
    };
    if let Some(at) = rest.rfind('@')
        && rest[..at].contains(':')
    {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} holds a password: secrets come from the environment only (password_env, or url_env for the whole URL)",
                offload_core::redact::redact_url(url)
            ),
        ));
    }
    Ok(())
}

/// Puts `password` into a `scheme://user@host/...` URL's user info
/// (percent-encoded), replacing any password there.
pub(crate) fn with_password(key: &str, url: &str, password: &Secret) -> Result<String, ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ConfigError::invalid(key, "expected scheme://user@host/..."))?;
    let at = rest.rfind('@').ok_or_else(|| {
        ConfigError::invalid(
            key,
            "password_env needs a user in the URL (scheme://user@host/...)",
        )
    })?;
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    let encoded: String = password
        .expose()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("{scheme}://{user}:{encoded}@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_encoded_into_the_user_info() {
        let pw = Secret("p@ss/w:rd".into());
        assert_eq!(
            with_password("k", "postgres://u@h:5432/db", &pw).unwrap(),
            "postgres://u:p%40ss%2Fw%3Ard@h:5432/db"
        );
        assert!(with_password("k", "postgres://h/db", &pw).is_err());
        assert!(refuse_inline_password("k", "postgres://u:x@h/db").is_err());
        assert!(refuse_inline_password("k", "postgres://u@h/db").is_ok());
        assert_eq!(format!("{pw:?}"), "***");
    }
}
