//! The one duration grammar of every configuration text (the `offload`
//! program's TOML, reconcile's `now-<duration>`): jiff's "friendly" format,
//! with days of 24 hours and no calendar units (months and years have no fixed
//! length, so they are refused rather than guessed).

use std::time::Duration;

/// Parses `250ms`, `30s`, `5m`, `2h`, `1d`, `1h 30m`, `1h30m`, `2 weeks`, or an
/// ISO 8601 duration (`PT5M`). Negative and calendar (month/year) durations are
/// refused; the error says why, for the caller to attach to its key.
///
/// ```
/// use std::time::Duration;
/// use offload_core::duration::parse_duration;
/// assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
/// assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert!(parse_duration("2mo").is_err());
/// assert!(parse_duration("5 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let span: jiff::Span = s
        .parse()
        .map_err(|e: jiff::Error| format!("{s:?} is not a duration like 250ms, 30s, 5m, 2h or 1d ({e})"))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// Formats a duration in the same grammar, compactly (`1h 30m`, `250ms`), so
/// what the program prints can be pasted back into its configuration.
///
/// ```
/// use std::time::Duration;
/// use offload_core::duration::{format_duration, parse_duration};
/// assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
/// let d = Duration::from_millis(90_250);
/// assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
/// ```
pub fn format_duration(d: Duration) -> String {
    match jiff::SignedDuration::try_from(d) {
        Ok(sd) => jiff::fmt::friendly::SpanPrinter::new()
            .spacing(jiff::fmt::friendly::Spacing::BetweenUnits)
            .duration_to_string(&sd),
        Err(_) => format!("{}s", d.as_secs()),
    }
}

/// Formats a duration to its two largest units, rounded down (`41d 3h`,
/// `12m 5s`, `45s`), for progress figures where the rest is noise; below a
/// second, `0s`. The result parses with [`parse_duration`].
///
/// ```
/// use std::time::Duration;
/// use offload_core::duration::format_approx;
/// assert_eq!(format_approx(Duration::from_secs(41 * 86_400 + 3 * 3600 + 59 * 60)), "41d 3h");
/// assert_eq!(format_approx(Duration::from_secs(12 * 60 + 5)), "12m 5s");
/// assert_eq!(format_approx(Duration::from_secs(2 * 3600 + 7)), "2h");
/// assert_eq!(format_approx(Duration::from_millis(999)), "0s");
/// ```
pub fn format_approx(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|&(n, _)| secs >= n) else {
        return "0s".into();
    };
    let (n, unit) = units[first];
    let mut out = format!("{}{unit}", secs / n);
    if let Some(&(m, next)) = units.get(first + 1)
        && (secs % n) / m > 0
    {
        out.push_str(&format!(" {}{next}", (secs % n) / m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refusals() {
        for s in ["0s", "1ms", "30s", "5m", "2h", "1d", "1h 30m", "2h 0m 5s", "1w"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{s}");
        }
        for bad in ["", "-5m", "1y", "3mo", "five minutes", "5 parsecs", "5m ago"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
