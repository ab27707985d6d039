//! ClickHouse type names parsed into a typed AST ([`ChType`]), the mapping to
//! Arrow, and the server-side casts some types need before they are sent as
//! ArrowStream.
//!
//! The parser is the one this crate uses for every column it reads; it is
//! public so that other tools looking at ClickHouse tables (reconciliation,
//! schema checks) read type names exactly the same way. Pair it with
//! [`columns::discover`](crate::columns::discover), which lists a table's
//! columns with their parsed types.
//!
//! ```
//! use offload_source_clickhouse::types::ChType;
//!
//! let t = ChType::parse("LowCardinality(Nullable(DateTime64(9, 'UTC')))").unwrap();
//! assert!(t.is_nullable());
//! assert_eq!(t.base(), &ChType::DateTime64 { precision: 9, tz: Some("UTC".into()) });
//! assert_eq!(t.to_string(), "LowCardinality(Nullable(DateTime64(9, 'UTC')))");
//! // Types this crate does not map still parse, as `Unsupported` with their text.
//! assert_eq!(ChType::parse("JSON").unwrap(), ChType::Unsupported("JSON".into()));
//! assert!(ChType::parse("Array(Int32").is_err());
//! ```
//!
//! The mapping is documented in the README (the table there is the contract).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};

use crate::ident::{quote_identifier, quote_string};

/// Name of a list's element field (Iceberg's convention, so the schema
/// survives an Arrow -> Iceberg -> Arrow round trip unchanged).
pub(crate) const LIST_ELEMENT: &str = "element";
/// Name of a map's entries field, and of its key and value fields (Iceberg's).
pub(crate) const MAP_ENTRIES: &str = "key_value";
pub(crate) const MAP_KEY: &str = "key";
pub(crate) const MAP_VALUE: &str = "value";
/// The Arrow timezone of every timestamp: ClickHouse stores instants, its
/// column time zone is only a display hint, so the instant is kept and labelled UTC.
pub(crate) const UTC: &str = "UTC";

/// How `UInt64` values are represented in Arrow (Iceberg has no unsigned types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UInt64Mapping {
    /// `Decimal128(20, 0)`: exact for every `UInt64` (the default).
    #[default]
    Decimal,
    /// `Int64`: convenient, but a value above `i64::MAX` fails the read with
    /// [`ClickHouseError::ValueOutOfRange`](crate::ClickHouseError::ValueOutOfRange) naming the column.
    Int64,
}

/// What to do with `DateTime64(p)` for `p > 6` (finer than microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubMicrosecond {
    /// `Timestamp(Microsecond, "UTC")`, rounded down (towards the past) to
    /// the microsecond — the same rounding the watermark uses, so a row's
    /// value and its position agree (the default).
    #[default]
    Truncate,
    /// `Timestamp(Nanosecond, "UTC")`: exact (for Iceberg v3 `timestamptz_ns`).
    /// `DateTime64(7|8)` values beyond 2262-04-11 do not fit and fail the read.
    Nanoseconds,
    /// Refuse such columns when the table is opened, with
    /// [`ClickHouseError::UnsupportedType`](crate::ClickHouseError::UnsupportedType).
    Refuse,
}

/// Options that influence the type mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct MappingOptions {
    pub uint64: UInt64Mapping,
    pub sub_micros: SubMicrosecond,
}

/// A parsed ClickHouse data type, as `system.columns`, `DESCRIBE` or
/// `toTypeName` print it.
///
/// [`parse`](Self::parse) then [`Display`](fmt::Display) (or
/// [`sql`](Self::sql)) gives back equivalent type text. Type names this crate
/// has no mapping for still parse, as [`Unsupported`](Self::Unsupported);
/// only malformed text is an error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChType {
    /// `Int8` .. `Int256`, `UInt8` .. `UInt256`.
    Int {
        /// 8, 16, 32, 64, 128 or 256.
        bits: u16,
        /// `IntN` (true) or `UIntN` (false).
        signed: bool,
    },
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `BFloat16`.
    BFloat16,
    /// `Decimal(P, S)`, and `Decimal32/64/128/256(S)` with P = 9/18/38/76.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// `Bool`.
    Bool,
    /// `String` (bytes, not necessarily UTF-8).
    String,
    /// `FixedString(N)`: N bytes, zero padded.
    FixedString(i32),
    /// `Date`: days since 1970-01-01 as `UInt16`.
    Date,
    /// `Date32`: days since 1970-01-01 as `Int32`.
    Date32,
    /// `DateTime` / `DateTime('tz')`: seconds since the epoch as `UInt32`.
    DateTime {
        /// The column's display time zone, if any.
        tz: Option<String>,
    },
    /// `DateTime64(p)` / `DateTime64(p, 'tz')`: `Int64` ticks of `10^-p` s.
    DateTime64 {
        /// Digits after the second (0..=9 in practice).
        precision: u8,
        /// The column's display time zone, if any.
        tz: Option<String>,
    },
    /// `UUID`.
    Uuid,
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
    /// `Enum8(...)` or `Enum16(...)`.
    Enum {
        /// 8 or 16.
        bits: u8,
        /// The `(name, value)` pairs, in declaration order.
        values: Vec<(String, i16)>,
    },
    /// `Nullable(T)`.
    Nullable(Box<ChType>),
    /// `LowCardinality(T)` (a storage detail: the values are those of `T`).
    LowCardinality(Box<ChType>),
    /// `Array(T)`.
    Array(Box<ChType>),
    /// `Map(K, V)`.
    Map(Box<ChType>, Box<ChType>),
    /// `Tuple(T, ...)` / `Tuple(name T, ...)`: elements with their names, if named.
    Tuple(Vec<(Option<String>, ChType)>),
    /// `Nested(name T, ...)`.
    Nested(Vec<(String, ChType)>),
    /// A type this crate does not map (JSON, Dynamic, Variant, geo,
    /// AggregateFunction, Time, Interval, ...), with its full text.
    /// (`SimpleAggregateFunction(f, T)` parses as `T`, the stored value.)
    Unsupported(String),
}

/// Type text that is not well-formed (unbalanced parentheses, an unterminated
/// quote, a bad argument), with the position in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub(crate) String);

impl ParseError {
    /// What was wrong, and where.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot parse the ClickHouse type: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

impl fmt::Display for ChType {
    /// The type as ClickHouse type text (same as [`sql`](ChType::sql)).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

impl std::str::FromStr for ChType {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChType::parse(s)
    }
}

impl ChType {
    /// Parses a type as printed by `system.columns`, `DESCRIBE` or `toTypeName`.
    pub fn parse(text: &str) -> Result<ChType, ParseError> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let t = p.parse_type()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("trailing text"));
        }
        Ok(t)
    }

    /// The type without its `Nullable` and `LowCardinality` wrappers, which
    /// do not change the values.
    pub fn base(&self) -> &ChType {
        match self {
            ChType::Nullable(t) | ChType::LowCardinality(t) => t.base(),
            t => t,
        }
    }

    /// Whether the values may be NULL (`Nullable(T)`, possibly inside `LowCardinality`).
    pub fn is_nullable(&self) -> bool {
        match self {
            ChType::Nullable(_) => true,
            ChType::LowCardinality(t) => t.is_nullable(),
            _ => false,
        }
    }

    /// The Arrow type of this ClickHouse type under `opts`, or why there is none.
    pub(crate) fn arrow_type(&self, opts: MappingOptions) -> Result<DataType, String> {
        Ok(match self {
            ChType::Nullable(t) | ChType::LowCardinality(t) => t.arrow_type(opts)?,
            ChType::Int {
                bits: 8 | 16 | 32,
                signed: true,
            }
            | ChType::Int {
                bits: 8 | 16,
                signed: false,
            } => DataType::Int32,
            ChType::Int {
                bits: 64,
                signed: true,
            }
            | ChType::Int {
                bits: 32,
                signed: false,
            } => DataType::Int64,
            ChType::Int {
                bits: 64,
                signed: false,
            } => match opts.uint64 {
                UInt64Mapping::Decimal => DataType::Decimal128(20, 0),
                UInt64Mapping::Int64 => DataType::Int64,
            },
            ChType::Int { bits: 128 | 256, .. } => DataType::Decimal128(38, 0),
            ChType::Int { bits, signed } => {
                return Err(format!(
                    "{}Int{bits} is not a ClickHouse type",
                    if *signed { "" } else { "U" }
                ));
            }
            ChType::Float32 | ChType::BFloat16 => DataType::Float32,
            ChType::Float64 => DataType::Float64,
            ChType::Decimal { precision, scale } => {
                if *scale > 38 {
                    return Err(format!(
                        "Decimal({precision}, {scale}) has more than 38 fractional digits; \
                         Arrow Decimal128 / Iceberg decimals hold at most 38"
                    ));
                }
                DataType::Decimal128((*precision).min(38), *scale as i8)
            }
            ChType::Bool => DataType::Boolean,
            ChType::String | ChType::Enum { .. } | ChType::Ipv4 | ChType::Ipv6 => DataType::Utf8,
            ChType::FixedString(n) => DataType::FixedSizeBinary(*n),
            ChType::Date | ChType::Date32 => DataType::Date32,
            ChType::DateTime { .. } => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            ChType::DateTime64 { precision, .. } => {
                if *precision > 9 {
                    return Err(format!("DateTime64({precision}) is finer than nanoseconds"));
                }
                let unit = if *precision <= 6 {
                    TimeUnit::Microsecond
                } else {
                    match opts.sub_micros {
                        SubMicrosecond::Truncate => TimeUnit::Microsecond,
                        SubMicrosecond::Nanoseconds => TimeUnit::Nanosecond,
                        SubMicrosecond::Refuse => {
                            return Err(format!(
                                "DateTime64({precision}) is finer than microseconds and the source is \
                                 configured to refuse it (SubMicrosecond::Refuse)"
                            ));
                        }
                    }
                };
                DataType::Timestamp(unit, Some(UTC.into()))
            }
            ChType::Uuid => DataType::FixedSizeBinary(16),
            ChType::Array(t) => DataType::List(Arc::new(element_field(t, opts)?)),
            ChType::Nested(fields) => {
                let fields = fields
                    .iter()
                    .map(|(name, t)| {
                        Ok(Field::new(name, t.arrow_type(opts)?, t.is_nullable())
                            .with_metadata(t.field_metadata()))
                    })
                    .collect::<Result<Fields, String>>()?;
                DataType::List(Arc::new(Field::new(
                    LIST_ELEMENT,
                    DataType::Struct(fields),
                    false,
                )))
            }
            ChType::Map(k, v) => {
                if k.is_nullable() {
                    return Err("Map keys must not be Nullable".into());
                }
                let key = Field::new(MAP_KEY, k.arrow_type(opts)?, false).with_metadata(k.field_metadata());
                let value = Field::new(MAP_VALUE, v.arrow_type(opts)?, v.is_nullable())
                    .with_metadata(v.field_metadata());
                DataType::Map(
                    Arc::new(Field::new(
                        MAP_ENTRIES,
                        DataType::Struct(Fields::from(vec![key, value])),
                        false,
                    )),
                    false,
                )
            }
            ChType::Tuple(elems) => {
                let fields = elems
                    .iter()
                    .enumerate()
                    .map(|(i, (name, t))| {
                        // Unnamed elements are named by position, as ClickHouse itself does (`t.1`).
                        let name = name.clone().unwrap_or_else(|| (i + 1).to_string());
                        Ok(Field::new(name, t.arrow_type(opts)?, t.is_nullable())
                            .with_metadata(t.field_metadata()))
                    })
                    .collect::<Result<Fields, String>>()?;
                DataType::Struct(fields)
            }
            ChType::Unsupported(text) => return Err(unsupported_reason(text)),
        })
    }

    /// Field metadata for this type: the Arrow canonical `arrow.uuid`
    /// extension on UUIDs, so a sink can tell them from other 16-byte values.
    pub(crate) fn field_metadata(&self) -> HashMap<String, String> {
        match self.base() {
            ChType::Uuid => HashMap::from([
                ("ARROW:extension:name".to_owned(), "arrow.uuid".to_owned()),
                ("ARROW:extension:metadata".to_owned(), String::new()),
            ]),
            _ => HashMap::new(),
        }
    }

    /// Whether the server must cast this type before sending it, because its
    /// ArrowStream form is not the documented value: Enum (sent as its
    /// number), IPv4 (a `UInt32`), IPv6 (16 raw bytes) and BFloat16 (2 raw
    /// bytes) are cast to `String` / `Float32`, so the text is ClickHouse's
    /// own canonical rendering.
    pub(crate) fn needs_server_cast(&self) -> bool {
        match self {
            ChType::Enum { .. } | ChType::Ipv4 | ChType::Ipv6 | ChType::BFloat16 => true,
            ChType::Nullable(t) | ChType::LowCardinality(t) | ChType::Array(t) => t.needs_server_cast(),
            ChType::Map(k, v) => k.needs_server_cast() || v.needs_server_cast(),
            ChType::Tuple(e) => e.iter().any(|(_, t)| t.needs_server_cast()),
            ChType::Nested(e) => e.iter().any(|(_, t)| t.needs_server_cast()),
            _ => false,
        }
    }

    /// The type the server casts to (see [`needs_server_cast`](Self::needs_server_cast)),
    /// as ClickHouse type text. `Nested` becomes the equivalent `Array(Tuple(...))`.
    pub(crate) fn wire_type_sql(&self) -> String {
        match self {
            ChType::Enum { .. } | ChType::Ipv4 | ChType::Ipv6 => "String".into(),
            ChType::BFloat16 => "Float32".into(),
            ChType::Nullable(t) => format!("Nullable({})", t.wire_type_sql()),
            // The cast result is plain: LowCardinality only affects storage, and
            // LowCardinality(String) of a cast is not always allowed.
            ChType::LowCardinality(t) if t.needs_server_cast() => t.wire_type_sql(),
            ChType::LowCardinality(t) => format!("LowCardinality({})", t.wire_type_sql()),
            ChType::Array(t) => format!("Array({})", t.wire_type_sql()),
            ChType::Map(k, v) => format!("Map({}, {})", k.wire_type_sql(), v.wire_type_sql()),
            ChType::Tuple(elems) => {
                let parts: Vec<String> = elems
                    .iter()
                    .map(|(name, t)| match name {
                        Some(n) => format!("{} {}", quote_identifier(n), t.wire_type_sql()),
                        None => t.wire_type_sql(),
                    })
                    .collect();
                format!("Tuple({})", parts.join(", "))
            }
            ChType::Nested(elems) => {
                let parts: Vec<String> = elems
                    .iter()
                    .map(|(n, t)| format!("{} {}", quote_identifier(n), t.wire_type_sql()))
                    .collect();
                format!("Array(Tuple({}))", parts.join(", "))
            }
            other => other.sql(),
        }
    }

    /// Renders the type back as ClickHouse type text.
    pub fn sql(&self) -> String {
        match self {
            ChType::Int { bits, signed } => format!("{}Int{bits}", if *signed { "" } else { "U" }),
            ChType::Float32 => "Float32".into(),
            ChType::Float64 => "Float64".into(),
            ChType::BFloat16 => "BFloat16".into(),
            ChType::Decimal { precision, scale } => format!("Decimal({precision}, {scale})"),
            ChType::Bool => "Bool".into(),
            ChType::String => "String".into(),
            ChType::FixedString(n) => format!("FixedString({n})"),
            ChType::Date => "Date".into(),
            ChType::Date32 => "Date32".into(),
            ChType::DateTime { tz: None } => "DateTime".into(),
            ChType::DateTime { tz: Some(tz) } => format!("DateTime({})", quote_string(tz)),
            ChType::DateTime64 { precision, tz: None } => format!("DateTime64({precision})"),
            ChType::DateTime64 {
                precision,
                tz: Some(tz),
            } => {
                format!("DateTime64({precision}, {})", quote_string(tz))
            }
            ChType::Uuid => "UUID".into(),
            ChType::Ipv4 => "IPv4".into(),
            ChType::Ipv6 => "IPv6".into(),
            ChType::Enum { bits, values } => {
                let parts: Vec<String> = values
                    .iter()
                    .map(|(n, v)| format!("{} = {v}", quote_string(n)))
                    .collect();
                format!("Enum{bits}({})", parts.join(", "))
            }
            ChType::Nullable(t) => format!("Nullable({})", t.sql()),
            ChType::LowCardinality(t) => format!("LowCardinality({})", t.sql()),
            ChType::Array(t) => format!("Array({})", t.sql()),
            ChType::Map(k, v) => format!("Map({}, {})", k.sql(), v.sql()),
            ChType::Tuple(elems) => {
                let parts: Vec<String> = elems
                    .iter()
                    .map(|(name, t)| match name {
                        Some(n) => format!("{} {}", quote_identifier(n), t.sql()),
                        None => t.sql(),
                    })
                    .collect();
                format!("Tuple({})", parts.join(", "))
            }
            ChType::Nested(elems) => {
                let parts: Vec<String> = elems
                    .iter()
                    .map(|(n, t)| format!("{} {}", quote_identifier(n), t.sql()))
                    .collect();
                format!("Nested({})", parts.join(", "))
            }
            ChType::Unsupported(text) => text.clone(),
        }
    }
}

/// The element field of a list of `t`.
fn element_field(t: &ChType, opts: MappingOptions) -> Result<Field, String> {
    Ok(Field::new(LIST_ELEMENT, t.arrow_type(opts)?, t.is_nullable()).with_metadata(t.field_metadata()))
}

fn unsupported_reason(text: &str) -> String {
    let head = text.split('(').next().unwrap_or(text).trim();
    let why = match head {
        "JSON" | "Object" | "Dynamic" | "Variant" => {
            "semi-structured types have no exact Arrow/Iceberg equivalent"
        }
        "AggregateFunction" => "aggregate states are opaque binary",
        "Point" | "Ring" | "LineString" | "MultiLineString" | "Polygon" | "MultiPolygon" | "Geometry" => {
            "geo types are not mapped"
        }
        "Time" | "Time64" => "Time spans ±999 hours, not a time of day, and is not mapped",
        "Nothing" => "Nothing holds no values",
        h if h.starts_with("Interval") => "intervals are not mapped",
        _ => "unknown type",
    };
    format!("{why}; exclude the column with TableConfig::columns or cast it in a view")
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ParseError {
        ParseError(format!(
            "{what} at byte {} of {:?}",
            self.i,
            String::from_utf8_lossy(self.s)
        ))
    }

    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), ParseError> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected `{}`", b as char)))
        }
    }

    /// A bare word `[A-Za-z0-9_]+`.
    fn word(&mut self) -> Result<String, ParseError> {
        self.ws();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A bare word or a backtick/double-quoted identifier.
    fn identifier(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(q @ (b'`' | b'"')) => self.quoted(q),
            _ => self.word(),
        }
    }

    /// A quoted string or identifier with backslash escapes and doubled quotes.
    fn quoted(&mut self, q: u8) -> Result<String, ParseError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i).copied() {
                None => return Err(self.err("unterminated quote")),
                Some(b'\\') => {
                    let c = self
                        .s
                        .get(self.i + 1)
                        .copied()
                        .ok_or_else(|| self.err("dangling backslash"))?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'0' => 0,
                        b'b' => 8,
                        b'f' => 12,
                        c => c,
                    });
                    self.i += 2;
                }
                Some(c) if c == q => {
                    if self.s.get(self.i + 1) == Some(&q) {
                        out.push(q);
                        self.i += 2;
                    } else {
                        self.i += 1;
                        break;
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("quoted text is not UTF-8"))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        if self.peek() != Some(b'\'') {
            return Err(self.err("expected a string literal"));
        }
        self.quoted(b'\'')
    }

    fn integer(&mut self) -> Result<i64, ParseError> {
        self.ws();
        let start = self.i;
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| self.err("expected an integer"))
    }

    fn small<T: TryFrom<i64>>(&mut self) -> Result<T, ParseError> {
        let v = self.integer()?;
        T::try_from(v).map_err(|_| self.err("integer out of range"))
    }

    /// Skips a balanced argument list (the `(` already consumed), respecting quotes.
    fn skip_args(&mut self) -> Result<(), ParseError> {
        let mut depth = 1;
        while depth > 0 {
            match self.s.get(self.i).copied() {
                None => return Err(self.err("unbalanced parentheses")),
                Some(q @ (b'\'' | b'`' | b'"')) => {
                    self.quoted(q)?;
                    continue;
                }
                Some(b'(') => depth += 1,
                Some(b')') => depth -= 1,
                Some(_) => {}
            }
            self.i += 1;
        }
        Ok(())
    }

    fn parse_type(&mut self) -> Result<ChType, ParseError> {
        let start = {
            self.ws();
            self.i
        };
        let name = self.word()?;
        let has_args = self.peek() == Some(b'(');
        let one = |p: &mut Self| -> Result<Box<ChType>, ParseError> {
            p.expect(b'(')?;
            let t = p.parse_type()?;
            p.expect(b')')?;
            Ok(Box::new(t))
        };
        let t = match (name.as_str(), has_args) {
            (
                "Int8" | "UInt8" | "Int16" | "UInt16" | "Int32" | "UInt32" | "Int64" | "UInt64" | "Int128"
                | "UInt128" | "Int256" | "UInt256",
                false,
            ) => {
                let signed = !name.starts_with('U');
                let bits = name
                    .trim_start_matches('U')
                    .trim_start_matches("Int")
                    .parse()
                    .expect("known names");
                ChType::Int { bits, signed }
            }
            ("Float32", false) => ChType::Float32,
            ("Float64", false) => ChType::Float64,
            ("BFloat16", false) => ChType::BFloat16,
            ("Bool", false) => ChType::Bool,
            ("String", false) => ChType::String,
            ("UUID", false) => ChType::Uuid,
            ("IPv4", false) => ChType::Ipv4,
            ("IPv6", false) => ChType::Ipv6,
            ("Date", false) => ChType::Date,
            ("Date32", false) => ChType::Date32,
            ("DateTime", false) => ChType::DateTime { tz: None },
            ("DateTime", true) => {
                self.expect(b'(')?;
                let tz = self.string()?;
                self.expect(b')')?;
                ChType::DateTime { tz: Some(tz) }
            }
            ("DateTime64", true) => {
                self.expect(b'(')?;
                let precision = self.small()?;
                let tz = if self.peek() == Some(b',') {
                    self.i += 1;
                    Some(self.string()?)
                } else {
                    None
                };
                self.expect(b')')?;
                ChType::DateTime64 { precision, tz }
            }
            ("FixedString", true) => {
                self.expect(b'(')?;
                let n = self.small()?;
                self.expect(b')')?;
                ChType::FixedString(n)
            }
            ("Decimal", true) => {
                self.expect(b'(')?;
                let precision = self.small()?;
                let scale = if self.peek() == Some(b',') {
                    self.i += 1;
                    self.small()?
                } else {
                    0
                };
                self.expect(b')')?;
                ChType::Decimal { precision, scale }
            }
            ("Decimal32" | "Decimal64" | "Decimal128" | "Decimal256", true) => {
                self.expect(b'(')?;
                let scale = self.small()?;
                self.expect(b')')?;
                let precision = match name.as_str() {
                    "Decimal32" => 9,
                    "Decimal64" => 18,
                    "Decimal128" => 38,
                    _ => 76,
                };
                ChType::Decimal { precision, scale }
            }
            ("Enum8" | "Enum16", true) => {
                self.expect(b'(')?;
                let mut values = Vec::new();
                loop {
                    let n = self.string()?;
                    self.expect(b'=')?;
                    let v = self.small()?;
                    values.push((n, v));
                    if self.peek() == Some(b',') {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                self.expect(b')')?;
                ChType::Enum {
                    bits: if name == "Enum8" { 8 } else { 16 },
                    values,
                }
            }
            ("Nullable", true) => ChType::Nullable(one(self)?),
            ("LowCardinality", true) => ChType::LowCardinality(one(self)?),
            ("Array", true) => ChType::Array(one(self)?),
            ("Map", true) => {
                self.expect(b'(')?;
                let k = self.parse_type()?;
                self.expect(b',')?;
                let v = self.parse_type()?;
                self.expect(b')')?;
                ChType::Map(Box::new(k), Box::new(v))
            }
            ("Tuple", true) => {
                self.expect(b'(')?;
                let elems = self.elements()?;
                ChType::Tuple(elems)
            }
            ("Nested", true) => {
                self.expect(b'(')?;
                let elems = self.elements()?;
                let named = elems
                    .into_iter()
                    .map(|(n, t)| n.map(|n| (n, t)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.err("Nested elements must be named"))?;
                ChType::Nested(named)
            }
            ("SimpleAggregateFunction", true) => {
                // The stored value is the plain argument type: skip the function.
                self.expect(b'(')?;
                let mut depth = 0;
                loop {
                    match self.s.get(self.i).copied() {
                        None => return Err(self.err("unbalanced parentheses")),
                        Some(b'(') => depth += 1,
                        Some(b')') => depth -= 1,
                        Some(b',') if depth == 0 => break,
                        Some(q @ (b'\'' | b'`' | b'"')) => {
                            self.quoted(q)?;
                            continue;
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                self.i += 1;
                let t = self.parse_type()?;
                self.expect(b')')?;
                return Ok(t);
            }
            (_, true) => {
                self.expect(b'(')?;
                self.skip_args()?;
                ChType::Unsupported(String::from_utf8_lossy(&self.s[start..self.i]).trim().to_owned())
            }
            (_, false) => ChType::Unsupported(name),
        };
        Ok(t)
    }

    /// Tuple/Nested elements, `(` consumed: `name Type` or `Type`, comma-separated.
    fn elements(&mut self) -> Result<Vec<(Option<String>, ChType)>, ParseError> {
        let mut out = Vec::new();
        if self.peek() == Some(b')') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            let save = self.i;
            // `name Type`: an identifier followed by another identifier.
            let named = match self.identifier() {
                Ok(n) => {
                    let quoted = matches!(
                        self.s
                            .get(save..)
                            .and_then(|s| s.iter().find(|b| !b.is_ascii_whitespace())),
                        Some(b'`' | b'"')
                    );
                    let next = self.peek();
                    if quoted || next.is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') {
                        Some(n)
                    } else {
                        None
                    }
                }
                Err(_) => None,
            };
            if named.is_none() {
                self.i = save;
            }
            let t = self.parse_type()?;
            out.push((named, t));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b')') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(self.err("expected `,` or `)`")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChType {
        ChType::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn arrow(s: &str) -> DataType {
        p(s).arrow_type(MappingOptions::default())
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_what_system_columns_prints() {
        assert_eq!(
            p("UInt64"),
            ChType::Int {
                bits: 64,
                signed: false
            }
        );
        assert_eq!(
            p("Int256"),
            ChType::Int {
                bits: 256,
                signed: true
            }
        );
        assert_eq!(
            p("Decimal(18, 8)"),
            ChType::Decimal {
                precision: 18,
                scale: 8
            }
        );
        assert_eq!(
            p("Decimal128(3)"),
            ChType::Decimal {
                precision: 38,
                scale: 3
            }
        );
        assert_eq!(
            p("DateTime64(9, 'America/New_York')"),
            ChType::DateTime64 {
                precision: 9,
                tz: Some("America/New_York".into())
            }
        );
        assert_eq!(
            p("DateTime('Asia/Tokyo')"),
            ChType::DateTime {
                tz: Some("Asia/Tokyo".into())
            }
        );
        assert_eq!(
            p("Enum8('b' = -2, 'a\\'x' = 1)"),
            ChType::Enum {
                bits: 8,
                values: vec![("b".into(), -2), ("a'x".into(), 1)]
            }
        );
        assert_eq!(
            p("Map(LowCardinality(String), Array(Nullable(Decimal(76, 20))))"),
            ChType::Map(
                Box::new(ChType::LowCardinality(Box::new(ChType::String))),
                Box::new(ChType::Array(Box::new(ChType::Nullable(Box::new(
                    ChType::Decimal {
                        precision: 76,
                        scale: 20
                    }
                )))))
            )
        );
        assert_eq!(
            p("Tuple(\n    a Int32,\n    `b c` String)"),
            ChType::Tuple(vec![
                (
                    Some("a".into()),
                    ChType::Int {
                        bits: 32,
                        signed: true
                    }
                ),
                (Some("b c".into()), ChType::String)
            ])
        );
        assert_eq!(
            p("Tuple(Int32, DateTime64(3), Nullable(String))"),
            ChType::Tuple(vec![
                (
                    None,
                    ChType::Int {
                        bits: 32,
                        signed: true
                    }
                ),
                (
                    None,
                    ChType::DateTime64 {
                        precision: 3,
                        tz: None
                    }
                ),
                (None, ChType::Nullable(Box::new(ChType::String))),
            ])
        );
        assert_eq!(
            p("Nested(x Int32, y String)"),
            ChType::Nested(vec![
                (
                    "x".into(),
                    ChType::Int {
                        bits: 32,
                        signed: true
                    }
                ),
                ("y".into(), ChType::String)
            ])
        );
        assert_eq!(
            p("SimpleAggregateFunction(anyLast, Nullable(String))"),
            ChType::Nullable(Box::new(ChType::String))
        );
        assert_eq!(
            p("SimpleAggregateFunction(sumMap, Tuple(Array(Int8), Array(Int64)))").sql(),
            "Tuple(Array(Int8), Array(Int64))"
        );
        assert_eq!(
            p("JSON(max_dynamic_paths=10, a.b UInt32)"),
            ChType::Unsupported("JSON(max_dynamic_paths=10, a.b UInt32)".into())
        );
        assert_eq!(p("Dynamic"), ChType::Unsupported("Dynamic".into()));
        assert_eq!(
            p("Variant(String, UInt8)"),
            ChType::Unsupported("Variant(String, UInt8)".into())
        );
        assert_eq!(
            p("AggregateFunction(uniq, String)"),
            ChType::Unsupported("AggregateFunction(uniq, String)".into())
        );
        for bad in [
            "",
            "Array(",
            "Decimal(x)",
            "Map(String)",
            "Int32 junk",
            "Enum8('a' 1)",
        ] {
            assert!(ChType::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_mapping() {
        use DataType as D;
        let ts = |u| D::Timestamp(u, Some(UTC.into()));
        for (ch, want) in [
            ("Int8", D::Int32),
            ("Int16", D::Int32),
            ("Int32", D::Int32),
            ("Int64", D::Int64),
            ("UInt8", D::Int32),
            ("UInt16", D::Int32),
            ("UInt32", D::Int64),
            ("UInt64", D::Decimal128(20, 0)),
            ("Int128", D::Decimal128(38, 0)),
            ("UInt256", D::Decimal128(38, 0)),
            ("Float32", D::Float32),
            ("BFloat16", D::Float32),
            ("Float64", D::Float64),
            ("Decimal(9, 2)", D::Decimal128(9, 2)),
            ("Decimal(38, 10)", D::Decimal128(38, 10)),
            ("Decimal(76, 20)", D::Decimal128(38, 20)),
            ("Bool", D::Boolean),
            ("String", D::Utf8),
            ("LowCardinality(Nullable(String))", D::Utf8),
            ("FixedString(4)", D::FixedSizeBinary(4)),
            ("Date", D::Date32),
            ("Date32", D::Date32),
            ("DateTime", ts(TimeUnit::Microsecond)),
            ("DateTime('Asia/Tokyo')", ts(TimeUnit::Microsecond)),
            ("DateTime64(0)", ts(TimeUnit::Microsecond)),
            ("DateTime64(3, 'UTC')", ts(TimeUnit::Microsecond)),
            ("DateTime64(9, 'UTC')", ts(TimeUnit::Microsecond)),
            ("UUID", D::FixedSizeBinary(16)),
            ("IPv4", D::Utf8),
            ("IPv6", D::Utf8),
            ("Enum8('a' = 1)", D::Utf8),
            ("Enum16('a' = 1000)", D::Utf8),
        ] {
            assert_eq!(arrow(ch), want, "{ch}");
        }
        let list = arrow("Array(Nullable(Int32))");
        let D::List(f) = &list else { panic!("{list:?}") };
        assert_eq!(
            (f.name().as_str(), f.data_type(), f.is_nullable()),
            ("element", &D::Int32, true)
        );
        let map = arrow("Map(String, Nullable(UInt64))");
        let D::Map(entries, false) = &map else {
            panic!("{map:?}")
        };
        let D::Struct(kv) = entries.data_type() else {
            panic!()
        };
        assert_eq!(entries.name(), "key_value");
        assert!(!kv[0].is_nullable() && kv[1].is_nullable());
        assert_eq!(kv[1].data_type(), &D::Decimal128(20, 0));
        let tup = arrow("Tuple(Int32, s String)");
        let D::Struct(fs) = &tup else { panic!() };
        assert_eq!(fs[0].name(), "1");
        assert_eq!(fs[1].name(), "s");
        let nested = arrow("Nested(x Int32, y String)");
        let D::List(el) = &nested else { panic!() };
        assert!(matches!(el.data_type(), D::Struct(f) if f.len() == 2));

        let opts = MappingOptions {
            uint64: UInt64Mapping::Int64,
            sub_micros: SubMicrosecond::Nanoseconds,
        };
        assert_eq!(p("UInt64").arrow_type(opts).unwrap(), D::Int64);
        assert_eq!(
            p("DateTime64(9)").arrow_type(opts).unwrap(),
            ts(TimeUnit::Nanosecond)
        );
        assert_eq!(
            p("DateTime64(6)").arrow_type(opts).unwrap(),
            ts(TimeUnit::Microsecond)
        );
        let refuse = MappingOptions {
            sub_micros: SubMicrosecond::Refuse,
            ..MappingOptions::default()
        };
        assert!(p("DateTime64(7)").arrow_type(refuse).is_err());
        for bad in [
            "JSON",
            "Dynamic",
            "Variant(String, UInt8)",
            "Array(JSON)",
            "Map(String, Dynamic)",
            "Point",
            "Time",
            "Decimal(76, 40)",
        ] {
            assert!(p(bad).arrow_type(MappingOptions::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_casts() {
        assert!(!p("Array(Nullable(String))").needs_server_cast());
        for (ch, wire) in [
            ("Enum8('a' = 1)", "String"),
            ("Nullable(IPv4)", "Nullable(String)"),
            ("Array(IPv6)", "Array(String)"),
            ("Map(String, Enum16('x' = 1000))", "Map(String, String)"),
            (
                "Tuple(a Enum8('a' = 1), `b c` Int32)",
                "Tuple(`a` String, `b c` Int32)",
            ),
            ("Nested(x IPv4, y String)", "Array(Tuple(`x` String, `y` String))"),
            ("Array(BFloat16)", "Array(Float32)"),
            ("LowCardinality(Nullable(IPv4))", "Nullable(String)"),
        ] {
            let t = p(ch);
            assert!(t.needs_server_cast(), "{ch}");
            assert_eq!(t.wire_type_sql(), wire, "{ch}");
        }
    }

    #[test]
    fn rendering_round_trips() {
        for s in [
            "Map(String, Array(Nullable(Decimal(18, 8))))",
            "Tuple(`a` Int32, `b` Enum8('x\\'y' = 1, 'z' = -3))",
            "DateTime64(6, 'Europe/Amsterdam')",
            "Nested(`x` UInt8, `y` FixedString(3))",
            "LowCardinality(Nullable(String))",
        ] {
            assert_eq!(p(s).sql(), s);
            assert_eq!(p(&p(s).sql()), p(s));
        }
    }
}
