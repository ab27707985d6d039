//! The row hash and bucket fingerprints, defined once so that ClickHouse (in
//! SQL) and this crate (in Rust, over Arrow data read from Iceberg) compute
//! bit-identical values.
//!
//! # Definition
//!
//! All integers are little-endian; `xxh64` is XXH64 with seed 0 (ClickHouse's
//! `xxHash64(String)`).
//!
//! ```text
//! key_bytes(row) = i64(ts_micros) ‖ u64(seq)                       16 bytes
//! key_hash(row)  = xxh64(key_bytes)
//! row_hash(row)  = xxh64(key_bytes ‖ enc(c₁) ‖ … ‖ enc(cₙ))        content columns in report order
//!
//! enc(NULL)      = 0x00
//! enc(v)         = 0x01 ‖ payload(v)
//! payload: Int       i128(v)                       16 bytes (every integer width, Bool as 0/1)
//!          Decimal(s) i128(unscaled v)             16 bytes (v × 10^s)
//!          Float     u64(f64 bits of v)            8 bytes (Float32 widened exactly)
//!          String    u64(byte length) ‖ bytes      raw bytes, no normalisation
//!          Timestamp i64(µs since epoch, floor)    8 bytes
//!          Date      i32(days since epoch)         4 bytes
//!
//! bucket key_fingerprint     = Σ key_hash  mod 2⁶⁴   (ClickHouse sumWithOverflow)
//! bucket content_fingerprint = Σ row_hash  mod 2⁶⁴
//! bucket sum(c)              = Σ unscaled c, NULLs skipped, exact (i128; overflow is an error)
//! ```
//!
//! Why a wrapping **sum** and not xor: xor cancels pairs, so a row stored twice
//! would vanish from an xor fingerprint; with a sum it adds its hash again. The
//! NULL tag keeps NULL, `0` and `''` apart, and the length prefix keeps
//! `('ab', 'c')` apart from `('a', 'bc')`. The key is part of every row hash,
//! so two rows swapping values change the content fingerprint.
//!
//! ```
//! use offload_reconcile::fingerprint::{key_hash, row_hash, Value};
//! // the 16 key bytes of (ts = -1 µs, seq = 0): ff×8 then 00×8
//! assert_eq!(key_hash(-1, 0), 2799159664705967183);
//! // no content columns: the row hash is the key hash
//! assert_eq!(row_hash(-1, 0, &[]), key_hash(-1, 0));
//! assert_ne!(row_hash(5, 1, &[Value::Null]), row_hash(5, 1, &[Value::Bytes(b"")]));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use twox_hash::XxHash64;

/// The 16 key bytes of a row: `ts_micros` as i64 LE, then `seq` as u64 LE.
///
/// ```
/// let b = offload_reconcile::fingerprint::key_bytes(1, 2);
/// assert_eq!(b[0], 1);
/// assert_eq!(b[8], 2);
/// ```
pub fn key_bytes(ts_micros: i64, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&ts_micros.to_le_bytes());
    b[8..].copy_from_slice(&seq.to_le_bytes());
    b
}

/// `xxh64(key_bytes(ts, seq))`, seed 0.
///
/// ```
/// // the same value ClickHouse returns for
/// // xxHash64(concat(reinterpretAsFixedString(toInt64(-1)), reinterpretAsFixedString(toUInt64(0))))
/// assert_eq!(offload_reconcile::fingerprint::key_hash(-1, 0), 2799159664705967183);
/// ```
pub fn key_hash(ts_micros: i64, seq: u64) -> u64 {
    XxHash64::oneshot(0, &key_bytes(ts_micros, seq))
}

/// How a content column's values are encoded in the row hash (see the module docs).
///
/// ```
/// use offload_reconcile::ContentKind;
/// assert_eq!(ContentKind::Decimal { scale: 2 }.to_string(), "decimal(2)");
/// assert!(ContentKind::Int.summable() && !ContentKind::Float.summable());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ContentKind {
    /// Any integer (and Bool): `i128`.
    Int,
    /// A decimal with `scale` fractional digits: its unscaled `i128`.
    Decimal {
        /// Digits after the point.
        scale: u8,
    },
    /// Float32/Float64: the `f64` bit pattern.
    Float,
    /// String, FixedString, Enum (its name), binary: length-prefixed bytes.
    String,
    /// DateTime/DateTime64/timestamps: `i64` microseconds, floored.
    Timestamp,
    /// Date/Date32: `i32` days since the epoch.
    Date,
}

impl ContentKind {
    /// Whether exact sums are defined for the kind (integers and decimals).
    pub fn summable(self) -> bool {
        matches!(self, ContentKind::Int | ContentKind::Decimal { .. })
    }

    /// The decimal scale of the kind's sums (0 for integers).
    pub fn scale(self) -> u8 {
        match self {
            ContentKind::Decimal { scale } => scale,
            _ => 0,
        }
    }
}

impl fmt::Display for ContentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentKind::Int => f.write_str("int"),
            ContentKind::Decimal { scale } => write!(f, "decimal({scale})"),
            ContentKind::Float => f.write_str("float"),
            ContentKind::String => f.write_str("string"),
            ContentKind::Timestamp => f.write_str("timestamp"),
            ContentKind::Date => f.write_str("date"),
        }
    }
}

/// One content value, for [`row_hash`] (tests, documentation, tools). The
/// reconciler itself encodes Arrow columns directly with the same rules.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// NULL of any kind.
    Null,
    /// [`ContentKind::Int`].
    Int(i128),
    /// [`ContentKind::Decimal`]: the unscaled value.
    Decimal(i128),
    /// [`ContentKind::Float`].
    Float(f64),
    /// [`ContentKind::String`].
    Bytes(&'a [u8]),
    /// [`ContentKind::Timestamp`]: microseconds.
    Timestamp(i64),
    /// [`ContentKind::Date`]: days.
    Date(i32),
}

/// The row hash of a row with key `(ts_micros, seq)` and `values` in order.
///
/// ```
/// use offload_reconcile::fingerprint::{row_hash, Value};
/// let a = row_hash(0, 1, &[Value::Bytes(b"ab"), Value::Bytes(b"c")]);
/// let b = row_hash(0, 1, &[Value::Bytes(b"a"), Value::Bytes(b"bc")]);
/// assert_ne!(a, b);
/// ```
pub fn row_hash(ts_micros: i64, seq: u64, values: &[Value<'_>]) -> u64 {
    let mut h = RowHasher::default();
    h.begin(ts_micros, seq);
    for v in values {
        match *v {
            Value::Null => h.null(),
            Value::Int(x) | Value::Decimal(x) => h.int(x),
            Value::Float(x) => h.float(x),
            Value::Bytes(b) => h.bytes(b),
            Value::Timestamp(x) => h.timestamp(x),
            Value::Date(x) => h.date(x),
        }
    }
    h.finish()
}

/// Builds one row's hash input in a reused buffer (no allocation per row).
#[derive(Debug, Default)]
pub(crate) struct RowHasher {
    buf: Vec<u8>,
}

impl RowHasher {
    pub(crate) fn begin(&mut self, ts_micros: i64, seq: u64) {
        self.buf.clear();
        self.buf.extend_from_slice(&key_bytes(ts_micros, seq));
    }
    pub(crate) fn null(&mut self) {
        self.buf.push(0);
    }
    pub(crate) fn int(&mut self, v: i128) {
        self.buf.push(1);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn float(&mut self, v: f64) {
        self.buf.push(1);
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.push(1);
        self.buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn timestamp(&mut self, v: i64) {
        self.buf.push(1);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn date(&mut self, v: i32) {
        self.buf.push(1);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn finish(&self) -> u64 {
        XxHash64::oneshot(0, &self.buf)
    }
}

/// Formats a 64-bit fingerprint the way reports show it: 16 hex digits.
///
/// ```
/// assert_eq!(offload_reconcile::fingerprint::hex(255), "00000000000000ff");
/// ```
pub fn hex(v: u64) -> String {
    format!("{v:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // XXH64 of the empty input with seed 0, as ClickHouse's xxHash64('') returns.
        assert_eq!(XxHash64::oneshot(0, b""), 17241709254077376921);
        assert_eq!(XxHash64::oneshot(0, b"abc"), 4952883123889572249);
    }

    #[test]
    fn encodings_are_injective_within_a_kind() {
        // A column's kind is fixed by its type, so only values of one kind
        // (and NULL) ever meet at a position: those must never collide.
        // (Across kinds they may: Float 0.0, Timestamp 0 and '' all encode as
        // 0x01 followed by eight zero bytes.)
        let per_kind: Vec<Vec<Vec<Value>>> = vec![
            vec![
                vec![Value::Null],
                vec![Value::Int(0)],
                vec![Value::Int(-1)],
                vec![Value::Int(i128::from(u64::MAX))],
            ],
            vec![
                vec![Value::Null],
                vec![Value::Float(0.0)],
                vec![Value::Float(-0.0)],
                vec![Value::Float(f64::NAN)],
            ],
            vec![
                vec![Value::Null],
                vec![Value::Bytes(b"")],
                vec![Value::Bytes(b"\x00")],
                vec![Value::Bytes(b"\x01")],
            ],
            vec![
                vec![Value::Null, Value::Bytes(b"a")],
                vec![Value::Bytes(b"a"), Value::Null],
            ],
            vec![
                vec![Value::Bytes(b"ab"), Value::Bytes(b"")],
                vec![Value::Bytes(b"a"), Value::Bytes(b"b")],
            ],
        ];
        for rows in per_kind {
            let hashes: std::collections::HashSet<u64> = rows.iter().map(|v| row_hash(1, 2, v)).collect();
            assert_eq!(hashes.len(), rows.len(), "{rows:?}");
        }
        assert_ne!(row_hash(1, 2, &[]), row_hash(2, 1, &[]));
    }

    #[test]
    fn sum_detects_a_duplicate_where_xor_would_not() {
        let h = [key_hash(1, 1), key_hash(2, 2)];
        let once = h[0].wrapping_add(h[1]);
        let twice = once.wrapping_add(h[1]);
        assert_ne!(once, twice);
        assert_eq!(h[0] ^ h[1] ^ h[1] ^ h[1], h[0] ^ h[1]); // xor would have hidden one extra pair
    }
}
