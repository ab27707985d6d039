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
//!          Array     u64(n) ‖ enc(e₁) ‖ … ‖ enc(eₙ)  elements in order (NULL elements as 0x00)
//!          Map       u64(n) ‖ E₁ ‖ … ‖ Eₙ          Eᵢ = enc(kᵢ) ‖ enc(vᵢ), sorted by their bytes
//!          Tuple     enc(f₁) ‖ … ‖ enc(fₘ)         fields in declaration order (m fixed by the type)
//! ```
//!
//! Every ClickHouse type the offload maps has an encoding: Int8…Int256 and
//! UInt8…UInt256 are `Int` (the wide ones are offloaded as `decimal(38, 0)`,
//! so every value Iceberg can hold fits an i128), every `Decimal(P, S)` is
//! `Decimal(S)`, `UUID` is `String` over its 16 bytes in RFC 4122 order (the
//! bytes of its canonical text, as the offload writes it), `Nested(...)` is an
//! `Array` of `Tuple`s. The kinds nest: `Array(Map(String, Array(Nullable(Decimal(18, 4)))))`
//! encodes recursively with the same rules at every level.
//!
//! Map entries are sorted (ascending, unsigned byte-wise, as ClickHouse
//! compares `String`s and Rust compares `[u8]`) because a map's order is not
//! part of its value in Iceberg; duplicate keys, which ClickHouse allows, are
//! kept. Since `enc` is self-delimiting, the order is by key bytes, then by value bytes.
//!
//! ```text
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
/// let map = ContentKind::Map {
///     key: Box::new(ContentKind::String),
///     value: Box::new(ContentKind::Array { element: Box::new(ContentKind::Int) }),
/// };
/// assert_eq!(map.to_string(), "map(string, array(int))");
/// assert!(!map.summable());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Array(T) and Nested (an array of tuples): the element count, then every element.
    Array {
        /// How the elements are encoded.
        element: Box<ContentKind>,
    },
    /// Map(K, V): the entry count, then the entries sorted by their encoded bytes.
    Map {
        /// How the keys are encoded.
        key: Box<ContentKind>,
        /// How the values are encoded.
        value: Box<ContentKind>,
    },
    /// Tuple(T, ...): every field in order.
    Tuple {
        /// How each field is encoded.
        fields: Vec<ContentKind>,
    },
}

impl ContentKind {
    /// Whether exact sums are defined for the kind (integers and decimals).
    pub fn summable(&self) -> bool {
        matches!(self, ContentKind::Int | ContentKind::Decimal { .. })
    }

    /// The decimal scale of the kind's sums (0 for integers).
    pub fn scale(&self) -> u8 {
        match self {
            ContentKind::Decimal { scale } => *scale,
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
            ContentKind::Array { element } => write!(f, "array({element})"),
            ContentKind::Map { key, value } => write!(f, "map({key}, {value})"),
            ContentKind::Tuple { fields } => {
                f.write_str("tuple(")?;
                for (i, k) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}")?;
                }
                f.write_str(")")
            }
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
    /// [`ContentKind::Array`]: the elements in order.
    Array(Vec<Value<'a>>),
    /// [`ContentKind::Map`]: the entries, in any order (they are sorted when encoded).
    Map(Vec<(Value<'a>, Value<'a>)>),
    /// [`ContentKind::Tuple`]: the fields in order.
    Tuple(Vec<Value<'a>>),
}

impl Value<'_> {
    /// Appends `enc(self)` to the row being hashed.
    fn encode(&self, h: &mut RowHasher) {
        match self {
            Value::Null => h.null(),
            Value::Int(x) | Value::Decimal(x) => h.int(*x),
            Value::Float(x) => h.float(*x),
            Value::Bytes(b) => h.bytes(b),
            Value::Timestamp(x) => h.timestamp(*x),
            Value::Date(x) => h.date(*x),
            Value::Array(v) => {
                h.begin_list(v.len());
                for e in v {
                    e.encode(h);
                }
            }
            Value::Map(entries) => {
                let m = h.begin_map(entries.len());
                for (k, v) in entries {
                    let e = h.begin_entry();
                    k.encode(h);
                    v.encode(h);
                    h.end_entry(e);
                }
                h.end_map(m);
            }
            Value::Tuple(fields) => {
                h.begin_tuple();
                for f in fields {
                    f.encode(h);
                }
            }
        }
    }
}

/// The row hash of a row with key `(ts_micros, seq)` and `values` in order.
///
/// ```
/// use offload_reconcile::fingerprint::{row_hash, Value};
/// let a = row_hash(0, 1, &[Value::Bytes(b"ab"), Value::Bytes(b"c")]);
/// let b = row_hash(0, 1, &[Value::Bytes(b"a"), Value::Bytes(b"bc")]);
/// assert_ne!(a, b);
/// // Arrays keep their order, maps do not have one.
/// let arr = |v: Vec<Value<'static>>| row_hash(0, 1, &[Value::Array(v)]);
/// assert_ne!(arr(vec![Value::Int(1), Value::Int(2)]), arr(vec![Value::Int(2), Value::Int(1)]));
/// let map = |v: Vec<(Value<'static>, Value<'static>)>| row_hash(0, 1, &[Value::Map(v)]);
/// assert_eq!(
///     map(vec![(Value::Bytes(b"a"), Value::Int(1)), (Value::Bytes(b"b"), Value::Int(2))]),
///     map(vec![(Value::Bytes(b"b"), Value::Int(2)), (Value::Bytes(b"a"), Value::Int(1))]),
/// );
/// ```
pub fn row_hash(ts_micros: i64, seq: u64, values: &[Value<'_>]) -> u64 {
    let mut h = RowHasher::default();
    h.begin(ts_micros, seq);
    for v in values {
        v.encode(&mut h);
    }
    h.finish()
}

/// Builds one row's hash input in a reused buffer (no allocation per row,
/// except the scratch space map entries are sorted in, which is reused too).
#[derive(Debug, Default)]
pub(crate) struct RowHasher {
    buf: Vec<u8>,
    /// Byte ranges of the open maps' entries (a stack: maps nest).
    entries: Vec<(usize, usize)>,
    scratch: Vec<u8>,
}

/// An open map: where its entries start in the buffer and in the entry stack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenMap {
    bytes: usize,
    entries: usize,
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
    /// `0x01 ‖ u64(n)`: an array of `n` elements follows.
    pub(crate) fn begin_list(&mut self, n: usize) {
        self.buf.push(1);
        self.buf.extend_from_slice(&(n as u64).to_le_bytes());
    }
    /// `0x01`: the tuple's fields follow.
    pub(crate) fn begin_tuple(&mut self) {
        self.buf.push(1);
    }
    /// `0x01 ‖ u64(n)`: a map of `n` entries follows, each between
    /// [`begin_entry`](Self::begin_entry) and [`end_entry`](Self::end_entry),
    /// then [`end_map`](Self::end_map) sorts them.
    pub(crate) fn begin_map(&mut self, n: usize) -> OpenMap {
        self.buf.push(1);
        self.buf.extend_from_slice(&(n as u64).to_le_bytes());
        OpenMap {
            bytes: self.buf.len(),
            entries: self.entries.len(),
        }
    }
    pub(crate) fn begin_entry(&mut self) -> usize {
        self.buf.len()
    }
    pub(crate) fn end_entry(&mut self, start: usize) {
        self.entries.push((start, self.buf.len()));
    }
    /// Rewrites the map's entries in ascending byte order.
    pub(crate) fn end_map(&mut self, m: OpenMap) {
        let ranges = &mut self.entries[m.entries..];
        if ranges.len() > 1 {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.buf[m.bytes..]);
            let base = m.bytes;
            let scratch = &self.scratch;
            ranges.sort_unstable_by(|a, b| {
                scratch[a.0 - base..a.1 - base].cmp(&scratch[b.0 - base..b.1 - base])
            });
            self.buf.truncate(base);
            for &(s, e) in ranges.iter() {
                self.buf.extend_from_slice(&scratch[s - base..e - base]);
            }
        }
        self.entries.truncate(m.entries);
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

    /// `enc` of `values` alone (without the 16 key bytes).
    fn enc(values: &[Value<'_>]) -> Vec<u8> {
        let mut h = RowHasher::default();
        h.begin(0, 0);
        for v in values {
            v.encode(&mut h);
        }
        h.buf[16..].to_vec()
    }

    #[test]
    fn nested_encodings_are_counted_tagged_and_sorted() {
        const N0: [u8; 8] = [0; 8];
        let n = |k: u8| [k, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(enc(&[Value::Array(vec![])]), [&[1][..], &N0].concat());
        assert_eq!(
            enc(&[Value::Array(vec![Value::Null])]),
            [&[1][..], &n(1), &[0]].concat()
        );
        // Entries sorted by their bytes: '' before 'b', whatever the input order.
        let map = Value::Map(vec![
            (Value::Bytes(b"b"), Value::Null),
            (Value::Bytes(b""), Value::Int(7)),
        ]);
        let seven = 7i128.to_le_bytes();
        assert_eq!(
            enc(std::slice::from_ref(&map)),
            [&[1][..], &n(2), &[1], &N0, &[1], &seven, &[1], &n(1), b"b", &[0]].concat()
        );
        let Value::Map(mut entries) = map.clone() else {
            unreachable!()
        };
        entries.reverse();
        assert_eq!(enc(&[Value::Map(entries)]), enc(&[map]));
        // Nested maps are sorted at every level.
        let inner = |a: &'static [u8], b: &'static [u8]| {
            Value::Map(vec![
                (Value::Bytes(a), Value::Int(1)),
                (Value::Bytes(b), Value::Int(2)),
            ])
        };
        assert_eq!(
            enc(&[Value::Map(vec![
                (Value::Bytes(b"y"), inner(b"q", b"p")),
                (Value::Bytes(b"x"), inner(b"b", b"a")),
            ])]),
            enc(&[Value::Map(vec![
                (
                    Value::Bytes(b"x"),
                    Value::Map(vec![
                        (Value::Bytes(b"a"), Value::Int(2)),
                        (Value::Bytes(b"b"), Value::Int(1)),
                    ])
                ),
                (
                    Value::Bytes(b"y"),
                    Value::Map(vec![
                        (Value::Bytes(b"p"), Value::Int(2)),
                        (Value::Bytes(b"q"), Value::Int(1)),
                    ])
                ),
            ])])
        );
        assert_eq!(
            enc(&[Value::Tuple(vec![Value::Int(1), Value::Null])]),
            [&[1u8, 1][..], &1i128.to_le_bytes(), &[0]].concat()
        );
    }

    #[test]
    fn nested_encodings_are_injective_within_a_kind() {
        let a = Value::Array;
        let per_kind: Vec<Vec<Value>> = vec![
            vec![
                Value::Null,
                a(vec![]),
                a(vec![Value::Null]),
                a(vec![Value::Null, Value::Null]),
                a(vec![Value::Int(0)]),
            ],
            vec![
                Value::Null,
                a(vec![]),
                a(vec![a(vec![])]),
                a(vec![a(vec![]), a(vec![])]),
                a(vec![a(vec![Value::Null])]),
                a(vec![Value::Null]),
            ],
            vec![
                a(vec![Value::Bytes(b"ab"), Value::Bytes(b"")]),
                a(vec![Value::Bytes(b"a"), Value::Bytes(b"b")]),
                a(vec![Value::Bytes(b"b"), Value::Bytes(b"a")]),
                a(vec![Value::Bytes(b"ab")]),
            ],
            vec![
                Value::Null,
                Value::Map(vec![]),
                Value::Map(vec![(Value::Bytes(b""), Value::Null)]),
                Value::Map(vec![(Value::Bytes(b""), Value::Bytes(b""))]),
                Value::Map(vec![(Value::Bytes(b"a"), Value::Bytes(b""))]),
                Value::Map(vec![(Value::Bytes(b""), Value::Bytes(b"a"))]),
                // ClickHouse allows a key twice: kept, not merged.
                Value::Map(vec![
                    (Value::Bytes(b""), Value::Bytes(b"a")),
                    (Value::Bytes(b""), Value::Bytes(b"a")),
                ]),
            ],
        ];
        for values in per_kind {
            let hashes: std::collections::HashSet<u64> = values
                .iter()
                .map(|v| row_hash(1, 2, std::slice::from_ref(v)))
                .collect();
            assert_eq!(hashes.len(), values.len(), "{values:?}");
        }
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
