//! Positions in a table's event stream: [`Watermark`] and [`Window`].
//!
//! A row's position is the pair *(event timestamp, sequence)*, compared
//! lexicographically. Comparing the pair rather than the timestamp alone is the
//! whole point: many trades share a millisecond, and a window edge that falls
//! inside such a run must put every row of it on exactly one side.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// A position in a table: event timestamp in microseconds since the Unix epoch
/// (UTC, may be negative) and a sequence number that orders rows sharing that
/// timestamp.
///
/// Ordering is lexicographic on `(timestamp, sequence)`.
///
/// ```
/// use offload_core::Watermark;
/// let a = Watermark::new(1_000, 7);
/// let b = Watermark::new(1_000, 8);
/// let c = Watermark::new(1_001, 0);
/// assert!(a < b && b < c);
/// assert_eq!("1000:7".parse::<Watermark>().unwrap(), a);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watermark {
    // Field order matters: derived Ord compares timestamp first.
    timestamp_micros: i64,
    sequence: u64,
}

impl Watermark {
    /// The position before every row: the `after` bound of a table's first window.
    pub const MIN: Watermark = Watermark {
        timestamp_micros: i64::MIN,
        sequence: 0,
    };

    /// Creates a watermark from microseconds since the epoch and a sequence number.
    ///
    /// ```
    /// let w = offload_core::Watermark::new(-5, 0); // before 1970 is fine
    /// assert_eq!(w.timestamp_micros(), -5);
    /// ```
    pub const fn new(timestamp_micros: i64, sequence: u64) -> Self {
        Self {
            timestamp_micros,
            sequence,
        }
    }

    /// The event timestamp in microseconds since the Unix epoch (UTC).
    ///
    /// ```
    /// assert_eq!(offload_core::Watermark::new(42, 1).timestamp_micros(), 42);
    /// ```
    pub const fn timestamp_micros(&self) -> i64 {
        self.timestamp_micros
    }

    /// The sequence number that orders rows sharing a timestamp.
    ///
    /// ```
    /// assert_eq!(offload_core::Watermark::new(42, 1).sequence(), 1);
    /// ```
    pub const fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The last position at or before `time`: every row with a timestamp `<= time`
    /// sorts at or below it, whatever its sequence.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use offload_core::Watermark;
    /// let w = Watermark::end_of(UNIX_EPOCH + Duration::from_micros(10));
    /// assert!(Watermark::new(10, u64::MAX) <= w && w < Watermark::new(11, 0));
    /// ```
    pub fn end_of(time: SystemTime) -> Self {
        Self::new(system_time_to_micros(time), u64::MAX)
    }

    /// The timestamp as seconds since the epoch, for gauges and lag arithmetic.
    ///
    /// ```
    /// assert_eq!(offload_core::Watermark::new(1_500_000, 0).as_seconds_f64(), 1.5);
    /// ```
    pub fn as_seconds_f64(&self) -> f64 {
        self.timestamp_micros as f64 / 1e6
    }
}

/// Converts a wall-clock time to signed microseconds since the epoch, saturating.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(offload_core::system_time_to_micros(UNIX_EPOCH + Duration::from_secs(1)), 1_000_000);
/// ```
pub fn system_time_to_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// Converts signed microseconds since the epoch to a wall-clock time.
///
/// ```
/// use std::time::UNIX_EPOCH;
/// assert_eq!(offload_core::micros_to_system_time(0), UNIX_EPOCH);
/// ```
pub fn micros_to_system_time(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

impl fmt::Display for Watermark {
    /// The stable text form `"<timestamp_micros>:<sequence>"`, used in snapshot
    /// summaries, table properties and store files. [`FromStr`] parses it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.timestamp_micros, self.sequence)
    }
}

impl fmt::Debug for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Watermark::MIN {
            return f.write_str("Watermark(MIN)");
        }
        write!(
            f,
            "Watermark({}#{})",
            rfc3339_micros(self.timestamp_micros),
            self.sequence
        )
    }
}

impl FromStr for Watermark {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Error::InvalidWatermark {
            text: s.chars().take(64).collect(),
        };
        let (ts, seq) = s.split_once(':').ok_or_else(bad)?;
        Ok(Watermark::new(
            ts.parse().map_err(|_| bad())?,
            seq.parse().map_err(|_| bad())?,
        ))
    }
}

/// Renders microseconds since the epoch as an RFC 3339 UTC timestamp, for humans.
///
/// ```
/// assert_eq!(offload_core::rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
/// assert_eq!(offload_core::rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
/// // Outside the calendar's range (years -9999 ..= 9999) the raw figure is shown.
/// assert_eq!(offload_core::rfc3339_micros(i64::MAX), "9223372036854775807µs");
/// ```
pub fn rfc3339_micros(micros: i64) -> String {
    match jiff::Timestamp::from_microsecond(micros) {
        Ok(ts) => format!("{ts:.6}"),
        // Beyond jiff's range (years -9999..=9999): no calendar date to show.
        Err(_) => format!("{micros}µs"),
    }
}

/// The rows of one offload run: every position `p` with `after < p <= until`.
///
/// Half-open on the left so that consecutive windows tile the stream: the
/// `until` of one run is the `after` of the next, and no position is in two.
/// A window is never empty; [`Window::new`] refuses `until <= after`.
///
/// ```
/// use offload_core::{Watermark, Window};
/// let w = Window::new(Watermark::new(10, 5), Watermark::new(20, 0)).unwrap();
/// assert!(!w.contains(Watermark::new(10, 5)));   // exclusive lower bound
/// assert!(w.contains(Watermark::new(10, 6)));
/// assert!(w.contains(Watermark::new(20, 0)));    // inclusive upper bound
/// assert!(Window::new(Watermark::new(3, 0), Watermark::new(3, 0)).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    after: Watermark,
    until: Watermark,
}

impl Window {
    /// Creates the window `(after, until]`; fails with [`Error::EmptyWindow`] unless `after < until`.
    pub fn new(after: Watermark, until: Watermark) -> Result<Self, Error> {
        if after < until {
            Ok(Self { after, until })
        } else {
            Err(Error::EmptyWindow { after, until })
        }
    }

    /// The exclusive lower bound: the watermark committed before this window.
    ///
    /// ```
    /// # use offload_core::{Watermark, Window};
    /// let w = Window::new(Watermark::MIN, Watermark::new(1, 0)).unwrap();
    /// assert_eq!(w.after(), Watermark::MIN);
    /// ```
    pub fn after(&self) -> Watermark {
        self.after
    }

    /// The inclusive upper bound: the watermark committed by this window.
    ///
    /// ```
    /// # use offload_core::{Watermark, Window};
    /// let w = Window::new(Watermark::MIN, Watermark::new(1, 0)).unwrap();
    /// assert_eq!(w.until(), Watermark::new(1, 0));
    /// ```
    pub fn until(&self) -> Watermark {
        self.until
    }

    /// Whether `position` lies in `(after, until]`.
    pub fn contains(&self, position: Watermark) -> bool {
        self.after < position && position <= self.until
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}]", self.after, self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_form_round_trips(ts in any::<i64>(), seq in any::<u64>()) {
            let w = Watermark::new(ts, seq);
            prop_assert_eq!(w.to_string().parse::<Watermark>().unwrap(), w);
        }

        #[test]
        fn order_is_lexicographic(a in any::<(i64, u64)>(), b in any::<(i64, u64)>()) {
            prop_assert_eq!(Watermark::new(a.0, a.1).cmp(&Watermark::new(b.0, b.1)), a.cmp(&b));
        }

        #[test]
        fn system_time_round_trips(m in -(1i64 << 60)..(1i64 << 60)) {
            prop_assert_eq!(system_time_to_micros(micros_to_system_time(m)), m);
        }
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for s in ["", "1", "a:b", "1:-1", "1:2:3", "99999999999999999999:1"] {
            assert!(
                matches!(s.parse::<Watermark>(), Err(Error::InvalidWatermark { .. })),
                "{s}"
            );
        }
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(
            rfc3339_micros(1_767_225_600_123_456),
            "2026-01-01T00:00:00.123456Z"
        );
        assert_eq!(rfc3339_micros(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(i64::MIN), format!("{}µs", i64::MIN));
    }
}
