//! Time buckets: UTC-aligned minutes, hours or days over a half-open range.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Microseconds per second.
const SECOND: i64 = 1_000_000;

/// The most buckets one reconciliation may span. A year of minutes is 525,600;
/// anything larger is almost certainly a typo in the range, and every bucket
/// costs a row in each layer's result and a Kafka offset lookup per partition.
pub const MAX_BUCKETS: u64 = 1_000_000;

/// The width of a bucket. Buckets are aligned to UTC: Unix time has no leap
/// seconds, so every minute, hour and day has a fixed number of microseconds
/// and alignment is plain floor division of the event timestamp.
///
/// ```
/// use offload_reconcile::BucketSize;
/// assert_eq!("hour".parse::<BucketSize>().unwrap(), BucketSize::Hour);
/// assert_eq!(BucketSize::Minute.micros(), 60_000_000);
/// // floor, not truncation: one microsecond before 1970 is in 1969's last minute
/// assert_eq!(BucketSize::Minute.floor(-1), -60_000_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketSize {
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds (a UTC calendar day).
    Day,
}

impl BucketSize {
    /// The width in microseconds.
    ///
    /// ```
    /// assert_eq!(offload_reconcile::BucketSize::Day.micros(), 86_400_000_000);
    /// ```
    pub const fn micros(self) -> i64 {
        match self {
            BucketSize::Minute => 60 * SECOND,
            BucketSize::Hour => 3_600 * SECOND,
            BucketSize::Day => 86_400 * SECOND,
        }
    }

    /// The start of the bucket holding `ts_micros` (floor towards the past).
    ///
    /// ```
    /// use offload_reconcile::BucketSize;
    /// assert_eq!(BucketSize::Hour.floor(3_600_000_000 + 5), 3_600_000_000);
    /// ```
    pub const fn floor(self, ts_micros: i64) -> i64 {
        ts_micros - ts_micros.rem_euclid(self.micros())
    }

    /// The lower-case name: `minute`, `hour` or `day`.
    ///
    /// ```
    /// assert_eq!(offload_reconcile::BucketSize::Day.as_str(), "day");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            BucketSize::Minute => "minute",
            BucketSize::Hour => "hour",
            BucketSize::Day => "day",
        }
    }
}

impl fmt::Display for BucketSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BucketSize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "minute" | "min" | "m" => Ok(BucketSize::Minute),
            "hour" | "h" => Ok(BucketSize::Hour),
            "day" | "d" => Ok(BucketSize::Day),
            _ => Err(Error::InvalidConfig {
                field: "bucket",
                reason: format!("{s:?} is not one of minute, hour, day"),
            }),
        }
    }
}

/// One bucket: event timestamps `start <= ts < end`, in microseconds since
/// the Unix epoch (UTC).
///
/// ```
/// use offload_reconcile::Bucket;
/// let b = Bucket { start: 0, end: 60_000_000 };
/// assert!(b.contains(0) && b.contains(59_999_999) && !b.contains(60_000_000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bucket {
    /// Inclusive start (µs since the epoch).
    pub start: i64,
    /// Exclusive end (µs since the epoch).
    pub end: i64,
}

impl Bucket {
    /// Whether `ts_micros` lies in `[start, end)`.
    pub const fn contains(&self, ts_micros: i64) -> bool {
        self.start <= ts_micros && ts_micros < self.end
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {})",
            offload_core::rfc3339_micros(self.start),
            offload_core::rfc3339_micros(self.end)
        )
    }
}

/// A half-open range of event time `[start, end)` cut into buckets of one size.
/// The edges are widened outwards to bucket boundaries, so every bucket is whole.
///
/// ```
/// use offload_reconcile::{BucketSize, TimeRange};
/// let r = TimeRange::new(90_000_000, 150_000_000, BucketSize::Minute).unwrap();
/// assert_eq!((r.start(), r.end()), (60_000_000, 180_000_000)); // widened
/// assert_eq!(r.len(), 2);
/// assert_eq!(r.bucket_of(100_000_000).unwrap().start, 60_000_000);
/// assert!(TimeRange::new(5, 5, BucketSize::Day).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeRange {
    start: i64,
    end: i64,
    size: BucketSize,
}

impl TimeRange {
    /// `[start, end)` in µs, widened to `size` boundaries. Fails when empty,
    /// when a widened edge does not fit in an `i64`, or when it would make
    /// more than [`MAX_BUCKETS`] buckets.
    pub fn new(start: i64, end: i64, size: BucketSize) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "range",
            reason,
        };
        if start >= end {
            return Err(bad(format!("start {start} must be before end {end}")));
        }
        let w = size.micros();
        let lo = size.floor(start);
        let hi = if end.rem_euclid(w) == 0 {
            end
        } else {
            size.floor(end)
                .checked_add(w)
                .ok_or_else(|| bad(format!("end {end} is too close to the end of time")))?
        };
        let count = (i128::from(hi) - i128::from(lo)) / i128::from(w);
        if count > i128::from(MAX_BUCKETS) {
            return Err(bad(format!(
                "{count} {size} buckets is more than the {MAX_BUCKETS} allowed; use a larger bucket"
            )));
        }
        Ok(Self {
            start: lo,
            end: hi,
            size,
        })
    }

    /// Inclusive start (µs), a bucket edge.
    pub const fn start(&self) -> i64 {
        self.start
    }

    /// Exclusive end (µs), a bucket edge.
    pub const fn end(&self) -> i64 {
        self.end
    }

    /// The bucket width.
    pub const fn size(&self) -> BucketSize {
        self.size
    }

    /// The number of buckets.
    pub const fn len(&self) -> usize {
        ((self.end - self.start) / self.size.micros()) as usize
    }

    /// Always false: a range holds at least one bucket.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether `ts_micros` lies in `[start, end)`.
    pub const fn contains(&self, ts_micros: i64) -> bool {
        self.start <= ts_micros && ts_micros < self.end
    }

    /// The index of the bucket holding `ts_micros`, if it is in range.
    ///
    /// ```
    /// # use offload_reconcile::{BucketSize, TimeRange};
    /// let r = TimeRange::new(0, 180_000_000, BucketSize::Minute).unwrap();
    /// assert_eq!(r.index_of(125_000_000), Some(2));
    /// assert_eq!(r.index_of(-1), None);
    /// ```
    pub const fn index_of(&self, ts_micros: i64) -> Option<usize> {
        if self.contains(ts_micros) {
            Some(((ts_micros - self.start) / self.size.micros()) as usize)
        } else {
            None
        }
    }

    /// The bucket holding `ts_micros`, if it is in range.
    pub fn bucket_of(&self, ts_micros: i64) -> Option<Bucket> {
        self.index_of(ts_micros).map(|i| self.bucket(i))
    }

    /// The `i`-th bucket (0-based). Callers keep `i < len()`.
    pub const fn bucket(&self, i: usize) -> Bucket {
        let start = self.start + i as i64 * self.size.micros();
        Bucket {
            start,
            end: start + self.size.micros(),
        }
    }

    /// Every bucket, oldest first.
    pub fn buckets(&self) -> impl ExactSizeIterator<Item = Bucket> + '_ {
        (0..self.len()).map(|i| self.bucket(i))
    }

    /// The `len() + 1` bucket edges, oldest first.
    pub fn edges(&self) -> impl ExactSizeIterator<Item = i64> + '_ {
        (0..self.len() + 1).map(|i| self.start + i as i64 * self.size.micros())
    }
}

impl fmt::Display for TimeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}) by {}",
            offload_core::rfc3339_micros(self.start),
            offload_core::rfc3339_micros(self.end),
            self.size
        )
    }
}

/// Parses an RFC 3339 instant (`2024-05-01T12:00:00Z`, optional fraction,
/// `Z` or a numeric offset), a date (`2024-05-01`, UTC midnight), or plain
/// integer microseconds since the epoch, into µs. The calendar is
/// [`jiff`]'s; digits finer than a microsecond are floored (towards the past).
///
/// ```
/// use offload_reconcile::parse_instant;
/// assert_eq!(parse_instant("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
/// assert_eq!(parse_instant("1969-12-31T23:59:59.999999Z").unwrap(), -1);
/// assert_eq!(parse_instant("1969-12-31T23:59:59.9999999Z").unwrap(), -1);
/// assert_eq!(parse_instant("1970-01-02").unwrap(), 86_400_000_000);
/// assert_eq!(parse_instant("1970-01-01T01:00:00+01:00").unwrap(), 0);
/// assert_eq!(parse_instant("-5").unwrap(), -5);
/// assert!(parse_instant("yesterday").is_err());
/// ```
pub fn parse_instant(text: &str) -> Result<i64, Error> {
    let s = text.trim();
    let bad = |why: String| Error::InvalidConfig {
        field: "time",
        reason: format!(
            "{:?} is not an RFC 3339 instant, a YYYY-MM-DD date or integer microseconds: {why}",
            s.chars().take(64).collect::<String>()
        ),
    };
    if let Ok(us) = s.parse::<i64>() {
        return Ok(us);
    }
    let nanos = if s.len() == 10 {
        let date: jiff::civil::Date = s.parse().map_err(|e: jiff::Error| bad(e.to_string()))?;
        date.to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|e| bad(e.to_string()))?
            .timestamp()
            .as_nanosecond()
    } else {
        s.parse::<jiff::Timestamp>()
            .map_err(|e| bad(e.to_string()))?
            .as_nanosecond()
    };
    i64::try_from(nanos.div_euclid(1_000)).map_err(|e| bad(e.to_string()))
}

/// Parses a time given relative to `now_micros`: `now`, `now-<duration>`
/// (`now-2h`, `now-1d`, `now-90m`, `now-1h30m`: [`jiff`]'s friendly or ISO 8601
/// duration, days as 24 hours), or anything [`parse_instant`] reads.
///
/// ```
/// use offload_reconcile::parse_time;
/// let now = 10 * 86_400_000_000;
/// assert_eq!(parse_time("now", now).unwrap(), now);
/// assert_eq!(parse_time("now-2h", now).unwrap(), now - 7_200_000_000);
/// assert_eq!(parse_time("now-1d", now).unwrap(), 9 * 86_400_000_000);
/// assert_eq!(parse_time("1970-01-02", now).unwrap(), 86_400_000_000);
/// assert!(parse_time("now-2mo", now).is_err()); // months have no fixed length
/// assert!(parse_time("now-", now).is_err());
/// ```
pub fn parse_time(text: &str, now_micros: i64) -> Result<i64, Error> {
    let s = text.trim();
    if s == "now" {
        return Ok(now_micros);
    }
    let Some(rest) = s.strip_prefix("now-") else {
        return parse_instant(s);
    };
    let bad = |why: String| Error::InvalidConfig {
        field: "time",
        reason: format!("{s:?}: expected now-<duration> (e.g. now-2h, now-1d): {why}"),
    };
    let d = offload_core::duration::parse_duration(rest).map_err(bad)?;
    i64::try_from(d.as_micros())
        .ok()
        .and_then(|d| now_micros.checked_sub(d))
        .ok_or_else(|| bad("out of range".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn floor_is_aligned_and_at_or_below(ts in any::<i64>().prop_filter("room", |t| *t > i64::MIN + 86_400_000_000)) {
            for size in [BucketSize::Minute, BucketSize::Hour, BucketSize::Day] {
                let f = size.floor(ts);
                prop_assert!(f <= ts && ts - f < size.micros());
                prop_assert_eq!(f.rem_euclid(size.micros()), 0);
            }
        }

        #[test]
        fn rfc3339_round_trips(us in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            let text = offload_core::rfc3339_micros(us);
            prop_assert_eq!(parse_instant(&text).unwrap(), us);
        }

        #[test]
        fn every_instant_in_range_has_exactly_one_bucket(a in -1_000_000_000_000i64..1_000_000_000_000, len in 1i64..10_000_000_000, t in any::<u32>()) {
            let r = TimeRange::new(a, a + len, BucketSize::Minute).unwrap();
            let ts = r.start() + i64::from(t) % (r.end() - r.start());
            let hits = r.buckets().filter(|b| b.contains(ts)).count();
            prop_assert_eq!(hits, 1);
            prop_assert!(r.bucket_of(ts).unwrap().contains(ts));
        }
    }

    #[test]
    fn range_is_widened_and_counted() {
        let h = BucketSize::Hour.micros();
        let r = TimeRange::new(-1, 1, BucketSize::Hour).unwrap();
        assert_eq!((r.start(), r.end(), r.len()), (-h, h, 2));
        assert_eq!(r.edges().collect::<Vec<_>>(), vec![-h, 0, h]);
        assert!(TimeRange::new(0, i64::MAX, BucketSize::Minute).is_err());
        assert!(TimeRange::new(1, 0, BucketSize::Minute).is_err());
    }

    #[test]
    fn bucket_names_parse() {
        for (s, b) in [
            ("Minute", BucketSize::Minute),
            ("h", BucketSize::Hour),
            ("day", BucketSize::Day),
        ] {
            assert_eq!(s.parse::<BucketSize>().unwrap(), b);
        }
        assert!("week".parse::<BucketSize>().is_err());
    }

    #[test]
    fn bad_instants_are_refused() {
        for s in [
            "",
            "2024-13-01",
            "2023-02-29",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
        ] {
            assert!(parse_instant(s).is_err(), "{s}");
        }
        assert_eq!(
            parse_instant("2024-02-29T00:00:00.5Z").unwrap(),
            1_709_164_800_500_000
        );
    }

    #[test]
    fn relative_times() {
        let now = 10 * 86_400_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time(" now-2h ", now).unwrap(), now - 7_200_000_000);
        assert_eq!(parse_time("now-30s", now).unwrap(), now - 30_000_000);
        assert_eq!(parse_time("now-5m", now).unwrap(), now - 300_000_000);
        assert_eq!(parse_time("now-1d", now).unwrap(), 9 * 86_400_000_000);
        assert_eq!(parse_time("now-1w", now).unwrap(), 3 * 86_400_000_000);
        for bad in ["now-", "now-2x", "now-1y", "now+1h", "now-soon"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
        assert_eq!(parse_time("1970-01-02", now).unwrap(), 86_400_000_000);
        assert_eq!(parse_time("-7", now).unwrap(), -7);
    }
}
