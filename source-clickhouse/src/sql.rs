//! The window filter and the other SQL this crate sends.
//!
//! # Positions and ticks
//!
//! A row's position is `(P(ts), seq)` where `P(ts)` is the row's timestamp in
//! whole microseconds, **rounded down** (towards the past) for `DateTime64(7..9)`.
//! The column stores an integer `T` of ticks (`10^-p` s; seconds for `DateTime`).
//! For a microsecond value `x`, `lo(x)` is the smallest tick with `P(T) >= x`:
//! `ceil(x / 10^(6-p))` for `p <= 6`, `x * 10^(p-6)` for `p > 6`. Then
//!
//! * `P(T) >= x`  ⇔  `T >= lo(x)`
//! * `P(T) == x`  ⇔  `lo(x) <= T < lo(x + 1)`
//! * `P(T) <= x`  ⇔  `T < lo(x + 1)`
//!
//! and the window `(a, u]` on pairs becomes, with `A0 = lo(a.ts)`,
//! `A1 = lo(a.ts + 1)`, `U0 = lo(u.ts)`, `U1 = lo(u.ts + 1)`:
//!
//! ```text
//! T >= A0 AND T < U1                       -- a plain range: the primary key prunes
//!   AND (T >= A1 OR seq > a.seq)           -- exclusive lower bound on the pair
//!   AND (T < U0 OR seq <= u.seq)           -- inclusive upper bound on the pair
//! ```
//!
//! Every comparison is between the column and a literal of exactly the
//! column's type, so ClickHouse compares integers: no rounding happens on the
//! server, and the row's value in Arrow (rounded down the same way) agrees
//! with its position. Bounds that fall outside what the column can represent
//! are decided here (`TRUE`/`FALSE`) instead of being sent as out-of-range
//! literals; in particular `Watermark::MIN` as the lower bound simply drops it.

use offload_core::{BucketGrid, Watermark, Window};

use crate::ident::quote_string;
use crate::types::ChType;

/// The timestamp column's representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeColumn {
    /// `DateTime`: unsigned 32-bit seconds.
    DateTime,
    /// `DateTime64(p)`: signed 64-bit ticks of `10^-p` seconds.
    DateTime64 { precision: u8 },
}

impl TimeColumn {
    /// The watermark-capable timestamp types (not Nullable: a row needs a position).
    pub(crate) fn from_type(t: &ChType) -> Option<TimeColumn> {
        match t {
            ChType::DateTime { .. } => Some(TimeColumn::DateTime),
            ChType::DateTime64 { precision, .. } if *precision <= 9 => Some(TimeColumn::DateTime64 {
                precision: *precision,
            }),
            _ => None,
        }
    }

    fn precision(self) -> u32 {
        match self {
            TimeColumn::DateTime => 0,
            TimeColumn::DateTime64 { precision } => u32::from(precision),
        }
    }

    /// The ticks the column can hold.
    fn tick_range(self) -> (i128, i128) {
        match self {
            TimeColumn::DateTime => (0, i128::from(u32::MAX)),
            TimeColumn::DateTime64 { .. } => (i128::from(i64::MIN), i128::from(i64::MAX)),
        }
    }

    /// `lo(x)`: the smallest tick whose microsecond position is `>= x`.
    pub(crate) fn lo(self, micros: i128) -> i128 {
        let p = self.precision();
        if p <= 6 {
            let k = 10i128.pow(6 - p);
            // ceil(x / k) for any sign
            -((-micros).div_euclid(k))
        } else {
            micros * 10i128.pow(p - 6)
        }
    }

    /// A row's microsecond position from its ticks: exact for `p <= 6`,
    /// rounded down for `p > 6`.
    pub(crate) fn ticks_to_micros(self, ticks: i64) -> i64 {
        let p = self.precision();
        if p <= 6 {
            ticks.saturating_mul(10i64.pow(6 - p))
        } else {
            ticks.div_euclid(10i64.pow(p - 6))
        }
    }

    /// SQL for the column's ticks as an `Int64` (for the high watermark).
    pub(crate) fn ticks_sql(self, column: &str) -> String {
        match self {
            TimeColumn::DateTime => format!("toInt64({column})"),
            // The in-memory value of a DateTime64 is its Int64 tick count.
            TimeColumn::DateTime64 { .. } => format!("reinterpretAsInt64({column})"),
        }
    }

    /// A literal of exactly the column's type holding `ticks` (within `tick_range`).
    /// Numbers only: nothing here comes from outside.
    fn literal(self, ticks: i128) -> String {
        match self {
            TimeColumn::DateTime => format!("toDateTime({ticks}, 'UTC')"),
            TimeColumn::DateTime64 { precision } => {
                // Decimal text -> Decimal128 -> DateTime64(p) is exact for every Int64
                // tick count (Decimal64 would overflow its 18 digits near the extremes).
                let p = u32::from(precision);
                let scale = 10u128.pow(p);
                let sign = if ticks < 0 { "-" } else { "" };
                let abs = ticks.unsigned_abs();
                let text = if p == 0 {
                    format!("{sign}{abs}")
                } else {
                    format!(
                        "{sign}{}.{:0width$}",
                        abs / scale,
                        abs % scale,
                        width = p as usize
                    )
                };
                format!(
                    "toDateTime64(toDecimal128({}, {p}), {p}, 'UTC')",
                    quote_string(&text)
                )
            }
        }
    }
}

/// The sequence column: any integer type of at most 64 bits.
///
/// Negative values of signed columns take position sequence `0`: all rows
/// still get exactly one position, and `seq > s` / `seq <= s` on the raw
/// column are exactly the comparisons on the clamped value (since `s >= 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeqColumn {
    pub bits: u16,
    pub signed: bool,
}

impl SeqColumn {
    pub(crate) fn from_type(t: &ChType) -> Option<SeqColumn> {
        match t {
            ChType::Int { bits, signed } if *bits <= 64 => Some(SeqColumn {
                bits: *bits,
                signed: *signed,
            }),
            _ => None,
        }
    }

    fn max(self) -> u64 {
        if self.signed {
            (1u64 << (self.bits - 1)) - 1
        } else if self.bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        }
    }

    /// SQL for the position's sequence as a `UInt64`.
    pub(crate) fn position_sql(self, column: &str) -> String {
        if self.signed {
            format!("toUInt64(greatest({column}, 0))")
        } else {
            format!("toUInt64({column})")
        }
    }
}

/// A boolean condition that simplifies constants away as it is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cond {
    True,
    False,
    Sql(String),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

impl Cond {
    pub(crate) fn and(self, other: Cond) -> Cond {
        match (self, other) {
            (Cond::False, _) | (_, Cond::False) => Cond::False,
            (Cond::True, c) | (c, Cond::True) => c,
            (Cond::And(mut a), Cond::And(b)) => {
                a.extend(b);
                Cond::And(a)
            }
            (Cond::And(mut a), c) => {
                a.push(c);
                Cond::And(a)
            }
            (c, Cond::And(mut b)) => {
                b.insert(0, c);
                Cond::And(b)
            }
            (a, b) => Cond::And(vec![a, b]),
        }
    }

    pub(crate) fn or(self, other: Cond) -> Cond {
        match (self, other) {
            (Cond::True, _) | (_, Cond::True) => Cond::True,
            (Cond::False, c) | (c, Cond::False) => c,
            (Cond::Or(mut a), Cond::Or(b)) => {
                a.extend(b);
                Cond::Or(a)
            }
            (a, b) => Cond::Or(vec![a, b]),
        }
    }

    pub(crate) fn render(&self) -> String {
        match self {
            Cond::True => "1".into(),
            Cond::False => "0".into(),
            Cond::Sql(s) => s.clone(),
            Cond::And(cs) => cs
                .iter()
                .map(Cond::render_inner)
                .collect::<Vec<_>>()
                .join(" AND "),
            Cond::Or(cs) => cs.iter().map(Cond::render_inner).collect::<Vec<_>>().join(" OR "),
        }
    }

    fn render_inner(&self) -> String {
        match self {
            Cond::And(_) | Cond::Or(_) => format!("({})", self.render()),
            c => c.render(),
        }
    }
}

/// Builds conditions on one table's watermark columns.
#[derive(Clone, Debug)]
pub(crate) struct Positions {
    pub ts: TimeColumn,
    /// The quoted timestamp column.
    pub ts_sql: String,
    pub seq: SeqColumn,
    /// The quoted sequence column.
    pub seq_sql: String,
}

impl Positions {
    fn ts_ge(&self, ticks: i128) -> Cond {
        let (min, max) = self.ts.tick_range();
        if ticks <= min {
            Cond::True
        } else if ticks > max {
            Cond::False
        } else {
            Cond::Sql(format!("{} >= {}", self.ts_sql, self.ts.literal(ticks)))
        }
    }

    fn ts_lt(&self, ticks: i128) -> Cond {
        let (min, max) = self.ts.tick_range();
        if ticks <= min {
            Cond::False
        } else if ticks > max {
            Cond::True
        } else {
            Cond::Sql(format!("{} < {}", self.ts_sql, self.ts.literal(ticks)))
        }
    }

    fn seq_gt(&self, s: u64) -> Cond {
        if s >= self.seq.max() {
            Cond::False
        } else {
            Cond::Sql(format!("{} > {s}", self.seq_sql))
        }
    }

    fn seq_le(&self, s: u64) -> Cond {
        if s >= self.seq.max() {
            Cond::True
        } else {
            Cond::Sql(format!("{} <= {s}", self.seq_sql))
        }
    }

    /// Rows with position `> w`.
    pub(crate) fn after(&self, w: Watermark) -> Cond {
        if w == Watermark::MIN {
            // The position before every row: no lower bound at all.
            return Cond::True;
        }
        let a = i128::from(w.timestamp_micros());
        self.ts_ge(self.ts.lo(a))
            .and(self.ts_ge(self.ts.lo(a + 1)).or(self.seq_gt(w.sequence())))
    }

    /// Rows with position `<= w`.
    pub(crate) fn at_or_before(&self, w: Watermark) -> Cond {
        let u = i128::from(w.timestamp_micros());
        self.ts_lt(self.ts.lo(u + 1))
            .and(self.ts_lt(self.ts.lo(u)).or(self.seq_le(w.sequence())))
    }

    /// Rows in `window`.
    pub(crate) fn window(&self, window: Window) -> Cond {
        self.after(window.after()).and(self.at_or_before(window.until()))
    }

    /// Rows whose timestamp (in whole microseconds) is `<= micros`.
    pub(crate) fn timestamp_at_or_before(&self, micros: i64) -> Cond {
        self.ts_lt(self.ts.lo(i128::from(micros) + 1))
    }

    /// SQL for the index of a row's bucket in `grid`, as an `Int64`:
    /// `floor((P(T) - start) / width)`, with `P(T)` the row's microsecond
    /// position rounded down exactly as the decoder rounds it.
    ///
    /// Only meaningful for rows inside `grid.span()` (the query's predicate):
    /// there `P(T) >= start`, so every dividend below is non-negative and
    /// `intDiv` (which truncates) is the floor. It is computed in `Int128`,
    /// so no tick count, bound or product overflows:
    ///
    /// * `p <= 6`: `P(T) = T * 10^(6-p)`, index `intDiv(T * 10^(6-p) - start, width)`;
    /// * `p > 6`: `P(T) = floor(T / k)` with `k = 10^(p-6)`, and since
    ///   `floor((floor(T / k) - s) / w) = floor((T - s*k) / (w*k))` for integers,
    ///   index `intDiv(T - start*k, width*k)`.
    pub(crate) fn bucket_index_sql(&self, grid: &BucketGrid) -> String {
        let ticks = format!("toInt128({})", self.ts.ticks_sql(&self.ts_sql));
        let int128 = |v: i128| format!("toInt128({})", quote_string(&v.to_string()));
        let (start, width) = (i128::from(grid.start_micros()), i128::from(grid.width_micros()));
        let p = self.ts.precision();
        let (dividend, divisor) = if p <= 6 {
            let m = 10i128.pow(6 - p);
            (format!("{ticks} * {m} - {}", int128(start)), width)
        } else {
            let k = 10i128.pow(p - 6);
            (format!("{ticks} - {}", int128(start * k)), width * k)
        };
        format!("toInt64(intDiv({dividend}, {}))", int128(divisor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ts: TimeColumn, seq: SeqColumn) -> Positions {
        Positions {
            ts,
            ts_sql: "`ts`".into(),
            seq,
            seq_sql: "`seq`".into(),
        }
    }

    const U64: SeqColumn = SeqColumn {
        bits: 64,
        signed: false,
    };
    const MS: TimeColumn = TimeColumn::DateTime64 { precision: 3 };
    const NS: TimeColumn = TimeColumn::DateTime64 { precision: 9 };

    #[test]
    fn lo_rounds_the_right_way() {
        // DateTime64(3): 1 ms = 1000 µs; the first tick at or after x µs.
        assert_eq!(MS.lo(0), 0);
        assert_eq!(MS.lo(1), 1);
        assert_eq!(MS.lo(1000), 1);
        assert_eq!(MS.lo(1001), 2);
        assert_eq!(MS.lo(-1), 0);
        assert_eq!(MS.lo(-1000), -1);
        assert_eq!(MS.lo(-1001), -1);
        assert_eq!(NS.lo(-3), -3000);
        assert_eq!(TimeColumn::DateTime.lo(1_000_001), 2);
        // ticks -> micros rounds down, consistent with lo
        assert_eq!(NS.ticks_to_micros(-1), -1);
        assert_eq!(NS.ticks_to_micros(1999), 1);
        assert_eq!(MS.ticks_to_micros(-2), -2000);
        for p in 0..=9u8 {
            let t = TimeColumn::DateTime64 { precision: p };
            for ticks in [-1_000_001i64, -999, -1, 0, 1, 999, 1_000_001] {
                let m = t.ticks_to_micros(ticks);
                // P(T) >= m and P(T) < m + 1, expressed through lo
                assert!(
                    t.lo(m.into()) <= ticks.into() && i128::from(ticks) < t.lo(i128::from(m) + 1),
                    "p={p} ticks={ticks}"
                );
            }
        }
    }

    #[test]
    fn literals_are_exact_text() {
        assert_eq!(
            MS.literal(-1),
            "toDateTime64(toDecimal128('-0.001', 3), 3, 'UTC')"
        );
        assert_eq!(
            NS.literal(i64::MAX.into()),
            "toDateTime64(toDecimal128('9223372036.854775807', 9), 9, 'UTC')"
        );
        assert_eq!(
            TimeColumn::DateTime64 { precision: 0 }.literal(-5),
            "toDateTime64(toDecimal128('-5', 0), 0, 'UTC')"
        );
        assert_eq!(TimeColumn::DateTime.literal(7), "toDateTime(7, 'UTC')");
    }

    #[test]
    fn window_sql() {
        let p = pos(MS, U64);
        let w = Window::new(Watermark::new(5_000, 7), Watermark::new(9_000, 3)).unwrap();
        let lit = |t: i64| MS.literal(t.into());
        assert_eq!(
            p.window(w).render(),
            format!(
                "`ts` >= {} AND (`ts` >= {} OR `seq` > 7) AND `ts` < {} AND (`ts` < {} OR `seq` <= 3)",
                lit(5),
                lit(6),
                lit(10),
                lit(9)
            )
        );
        // A bound between two ticks: P(T) == 5500 µs is impossible at ms precision,
        // so the sequence part drops out of the lower bound (A0 == A1).
        let w = Window::new(Watermark::new(5_500, 7), Watermark::new(9_000, u64::MAX)).unwrap();
        assert_eq!(
            p.window(w).render(),
            format!(
                "`ts` >= {} AND (`ts` >= {} OR `seq` > 7) AND `ts` < {}",
                lit(6),
                lit(6),
                lit(10)
            )
        );
    }

    #[test]
    fn min_and_extremes_are_decided_here() {
        let p = pos(
            TimeColumn::DateTime,
            SeqColumn {
                bits: 8,
                signed: false,
            },
        );
        // MIN: no lower bound.
        assert_eq!(p.after(Watermark::MIN), Cond::True);
        // Beyond DateTime's range: decided without literals.
        assert_eq!(p.at_or_before(Watermark::new(i64::MAX, 0)), Cond::True);
        assert_eq!(p.after(Watermark::new(i64::MAX, 0)), Cond::False);
        assert_eq!(p.after(Watermark::new(-10_000_000, 0)), Cond::True);
        assert_eq!(p.at_or_before(Watermark::new(-1, u64::MAX)), Cond::False);
        // UInt8 sequence: 255 is the largest, so `seq > 255` is false and `seq <= 300` true.
        let w =
            p.window(Window::new(Watermark::new(2_000_000, 255), Watermark::new(3_000_000, 300)).unwrap());
        assert_eq!(
            w.render(),
            "`ts` >= toDateTime(2, 'UTC') AND `ts` >= toDateTime(3, 'UTC') AND `ts` < toDateTime(4, 'UTC')"
        );
        let never = Window::new(Watermark::new(-5, 0), Watermark::new(-4, 0)).unwrap();
        assert_eq!(p.window(never), Cond::False);
        assert_eq!(p.window(never).render(), "0");
        // i64::MIN + 1 µs at nanosecond precision is below Int64 ticks: TRUE, no overflow.
        let n = pos(NS, U64);
        assert_eq!(n.after(Watermark::new(i64::MIN, 5)), Cond::True);
        assert_eq!(n.at_or_before(Watermark::new(i64::MAX, 5)), Cond::True);
    }

    #[test]
    fn bucket_index_floors_in_int128() {
        let grid = BucketGrid::new(-2, 1, 2, Watermark::new(-1, u64::MAX)).unwrap();
        // Nanoseconds: (T - start·1000) over (width·1000), no µs value in between.
        assert_eq!(
            pos(NS, U64).bucket_index_sql(&grid),
            "toInt64(intDiv(toInt128(reinterpretAsInt64(`ts`)) - toInt128('-2000'), toInt128('1000')))"
        );
        assert_eq!(
            pos(MS, U64).bucket_index_sql(&grid),
            "toInt64(intDiv(toInt128(reinterpretAsInt64(`ts`)) * 1000 - toInt128('-2'), toInt128('1')))"
        );
        assert_eq!(
            pos(TimeColumn::DateTime, U64).bucket_index_sql(&grid),
            "toInt64(intDiv(toInt128(toInt64(`ts`)) * 1000000 - toInt128('-2'), toInt128('1')))"
        );
    }

    #[test]
    fn signed_sequences() {
        let s = SeqColumn {
            bits: 32,
            signed: true,
        };
        assert_eq!(s.max(), i32::MAX as u64);
        assert_eq!(s.position_sql("`s`"), "toUInt64(greatest(`s`, 0))");
        assert_eq!(U64.max(), u64::MAX);
        assert_eq!(
            SeqColumn {
                bits: 16,
                signed: false
            }
            .max(),
            65_535
        );
    }

    #[test]
    fn cond_algebra() {
        let a = Cond::Sql("a".into());
        let b = Cond::Sql("b".into());
        assert_eq!(a.clone().and(Cond::True), a);
        assert_eq!(a.clone().or(Cond::True), Cond::True);
        assert_eq!(a.clone().and(Cond::False), Cond::False);
        assert_eq!(a.clone().or(Cond::False), a);
        assert_eq!(a.clone().or(b.clone()).and(a.clone()).render(), "(a OR b) AND a");
        assert_eq!(a.clone().and(b.clone()).and(a.clone()).render(), "a AND b AND a");
    }
}
