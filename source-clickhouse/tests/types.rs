//! Every type of the documented mapping round-trips exactly: values, NULLs,
//! time zones, decimals and extremes. Types without a mapping are refused,
//! naming the column.
//!
//! The oracle is independent of the crate: for every cell the server renders
//! a canonical text (`canon_sql`, built from ClickHouse functions on the
//! stored value) and the test renders the Arrow value the source produced
//! (`canon_arrow`, driven only by the Arrow type). They must be equal.

mod common;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, TimeUnit};
use common::{TestDb, everything, open, read_all};
use offload_core::{Source, SourceTable, TableConfig};
use offload_source_clickhouse::columns::{self, ColumnKind};
use offload_source_clickhouse::ident::TableRef;
use offload_source_clickhouse::types::ChType;
use offload_source_clickhouse::{ClickHouseError, SubMicrosecond, UInt64Mapping};

/// A ClickHouse type for the test table: its DDL text, sample values (SQL
/// expressions, cycled over the rows) and its documented Arrow type.
#[derive(Clone)]
enum T {
    /// name, samples, Arrow type
    Leaf(&'static str, Vec<String>, DataType),
    Nullable(Box<T>),
    LowCardinality(Box<T>),
    Array(Box<T>),
    Map(Box<T>, Box<T>),
    Tuple(Vec<(Option<&'static str>, T)>),
}

fn leaf(name: &'static str, samples: &[&str], dt: DataType) -> T {
    T::Leaf(name, samples.iter().map(|s| s.to_string()).collect(), dt)
}

fn utc(unit: TimeUnit) -> DataType {
    DataType::Timestamp(unit, Some("UTC".into()))
}

const MAX38: &str = "99999999999999999999999999999999999999";

impl T {
    fn ddl(&self) -> String {
        match self {
            T::Leaf(n, ..) => n.to_string(),
            T::Nullable(t) => format!("Nullable({})", t.ddl()),
            T::LowCardinality(t) => format!("LowCardinality({})", t.ddl()),
            T::Array(t) => format!("Array({})", t.ddl()),
            T::Map(k, v) => format!("Map({}, {})", k.ddl(), v.ddl()),
            T::Tuple(es) => format!(
                "Tuple({})",
                es.iter()
                    .map(|(n, t)| match n {
                        Some(n) => format!("{n} {}", t.ddl()),
                        None => t.ddl(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn nullable(&self) -> bool {
        match self {
            T::Nullable(_) => true,
            T::LowCardinality(t) => t.nullable(),
            _ => false,
        }
    }

    /// The documented Arrow type.
    fn arrow(&self) -> DataType {
        match self {
            T::Leaf(_, _, dt) => dt.clone(),
            T::Nullable(t) | T::LowCardinality(t) => t.arrow(),
            T::Array(t) => DataType::List(Arc::new(
                Field::new("element", t.arrow(), t.nullable()).with_metadata(t.meta()),
            )),
            T::Map(k, v) => DataType::Map(
                Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(
                        vec![
                            Field::new("key", k.arrow(), false).with_metadata(k.meta()),
                            Field::new("value", v.arrow(), v.nullable()).with_metadata(v.meta()),
                        ]
                        .into(),
                    ),
                    false,
                )),
                false,
            ),
            T::Tuple(es) => DataType::Struct(
                es.iter()
                    .enumerate()
                    .map(|(i, (n, t))| {
                        Field::new(
                            n.map(str::to_owned).unwrap_or_else(|| (i + 1).to_string()),
                            t.arrow(),
                            t.nullable(),
                        )
                        .with_metadata(t.meta())
                    })
                    .collect::<Vec<_>>()
                    .into(),
            ),
        }
    }

    fn meta(&self) -> std::collections::HashMap<String, String> {
        match self {
            T::Leaf("UUID", ..) => [
                ("ARROW:extension:name".to_owned(), "arrow.uuid".to_owned()),
                ("ARROW:extension:metadata".to_owned(), String::new()),
            ]
            .into(),
            T::Nullable(t) | T::LowCardinality(t) => t.meta(),
            _ => Default::default(),
        }
    }

    /// Sample value `i` as SQL (samples cycle; containers combine their parts).
    fn sample(&self, i: usize) -> String {
        match self {
            T::Leaf(_, s, _) => s[i % s.len()].clone(),
            T::Nullable(t) => {
                if i % 3 == 1 {
                    "NULL".into()
                } else {
                    t.sample(i)
                }
            }
            T::LowCardinality(t) => t.sample(i),
            T::Array(t) => match i % 3 {
                0 => "[]".into(),
                _ => format!("[{}, {}, {}]", t.sample(i), t.sample(i + 1), t.sample(i + 2)),
            },
            // Keys from one sample index only: distinct keys per map.
            T::Map(k, v) => match i % 3 {
                0 => "map()".into(),
                _ => format!("map({}, {})", k.sample(i), v.sample(i + 1)),
            },
            T::Tuple(es) => format!(
                "tuple({})",
                es.iter()
                    .enumerate()
                    .map(|(j, (_, t))| t.sample(i + j))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn samples(&self) -> usize {
        match self {
            T::Leaf(_, s, _) => s.len(),
            T::Nullable(t) | T::LowCardinality(t) => t.samples().max(3),
            T::Array(t) | T::Map(t, _) => t.samples().max(3),
            T::Tuple(es) => es.iter().map(|(_, t)| t.samples()).max().unwrap_or(1),
        }
    }

    /// SQL rendering the canonical text of `e` (of this type); `d` names lambdas.
    fn canon_sql(&self, e: &str, d: usize) -> String {
        match self {
            T::Leaf(name, ..) => {
                let n = *name;
                if n == "Float32" {
                    format!("toString(reinterpretAsUInt32({e}))")
                } else if n == "Float64" {
                    format!("toString(reinterpretAsUInt64({e}))")
                } else if n == "BFloat16" {
                    format!("toString(bitShiftLeft(toUInt32(reinterpretAsUInt16({e})), 16))")
                } else if n.starts_with("Decimal") {
                    format!("toString({e})")
                } else if n == "String" || n.starts_with("FixedString") {
                    format!("hex({e})")
                } else if n.starts_with("Enum") || n.starts_with("IPv") {
                    format!("hex(toString({e}))")
                } else if n == "UUID" {
                    format!("hex(UUIDStringToNum(toString({e})))")
                } else if n == "Date" || n == "Date32" {
                    format!("toString(toInt32({e}))")
                } else if n.starts_with("DateTime64") {
                    let p: i64 = n["DateTime64(".len()..]
                        .split([',', ')'])
                        .next()
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    if p <= 6 {
                        format!("toString(reinterpretAsInt64({e}) * {})", 10i64.pow(6 - p as u32))
                    } else {
                        let k = 10i64.pow(p as u32 - 6);
                        format!(
                            "toString(intDiv(reinterpretAsInt64({e}) - positiveModulo(reinterpretAsInt64({e}), {k}), {k}))"
                        )
                    }
                } else if n.starts_with("DateTime") {
                    format!("toString(toInt64(toUnixTimestamp({e})) * 1000000)")
                } else {
                    // integers, Bool
                    format!("toString({e})")
                }
            }
            T::Nullable(t) => format!(
                "if(isNull({e}), 'NULL', {})",
                t.canon_sql(&format!("assumeNotNull({e})"), d)
            ),
            T::LowCardinality(t) => t.canon_sql(e, d),
            T::Array(t) => {
                let x = format!("x{d}");
                format!(
                    "concat('[', arrayStringConcat(arrayMap({x} -> {}, {e}), ','), ']')",
                    t.canon_sql(&x, d + 1)
                )
            }
            T::Map(k, v) => {
                let (kx, vx) = (format!("k{d}"), format!("v{d}"));
                format!(
                    "concat('{{', arrayStringConcat(arrayMap(({kx}, {vx}) -> concat({}, ':', {}), mapKeys({e}), mapValues({e})), ','), '}}')",
                    k.canon_sql(&kx, d + 1),
                    v.canon_sql(&vx, d + 1)
                )
            }
            T::Tuple(es) => {
                let parts: Vec<String> = es
                    .iter()
                    .enumerate()
                    .map(|(i, (_, t))| t.canon_sql(&format!("tupleElement({e}, {})", i + 1), d))
                    .collect();
                format!("concat('(', {}, ')')", parts.join(", ',', "))
            }
        }
    }
}

/// The canonical text of row `i` of an Arrow array, by Arrow type only.
fn canon_arrow(a: &dyn Array, i: usize) -> String {
    if a.is_null(i) {
        return "NULL".into();
    }
    match a.data_type() {
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Float32 => a.as_primitive::<Float32Type>().value(i).to_bits().to_string(),
        DataType::Float64 => a.as_primitive::<Float64Type>().value(i).to_bits().to_string(),
        DataType::Boolean => a.as_boolean().value(i).to_string(),
        DataType::Decimal128(p, s) => {
            let text = Decimal128Type::format_decimal(a.as_primitive::<Decimal128Type>().value(i), *p, *s);
            // ClickHouse drops trailing fractional zeros.
            if text.contains('.') {
                text.trim_end_matches('0').trim_end_matches('.').to_owned()
            } else {
                text
            }
        }
        DataType::Utf8 => hex(a.as_string::<i32>().value(i).as_bytes()),
        DataType::FixedSizeBinary(_) => hex(a.as_fixed_size_binary().value(i)),
        DataType::Date32 => a.as_primitive::<Date32Type>().value(i).to_string(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
            a.as_primitive::<TimestampMicrosecondType>().value(i).to_string()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) if tz.as_ref() == "UTC" => {
            a.as_primitive::<TimestampNanosecondType>().value(i).to_string()
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>().value(i);
            format!(
                "[{}]",
                (0..l.len())
                    .map(|j| canon_arrow(&l, j))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        DataType::Map(..) => {
            let m = a.as_map().value(i);
            let (k, v) = (m.column(0), m.column(1));
            format!(
                "{{{}}}",
                (0..m.len())
                    .map(|j| format!("{}:{}", canon_arrow(k, j), canon_arrow(v, j)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        DataType::Struct(_) => {
            let s = a.as_struct();
            format!(
                "({})",
                s.columns()
                    .iter()
                    .map(|c| canon_arrow(c, i))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        other => panic!("unexpected Arrow type {other} in the output"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn unhex(s: &str) -> String {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// Every mapped type, with extremes, NULLs and time zones.
fn all_types() -> Vec<(&'static str, T)> {
    use DataType as D;
    let b = |t: T| Box::new(t);
    let dec = |p, s| D::Decimal128(p, s);
    let i8s = leaf("Int8", &["-128", "127", "0", "-1"], D::Int32);
    let strings = leaf(
        "String",
        &[
            "''",
            "'hello'",
            "'é中😀'",
            "'tab\\there\\nnew\\'quote\\\\back\\0nul'",
        ],
        D::Utf8,
    );
    let uuid = leaf(
        "UUID",
        &[
            "toUUID('00000000-0000-0000-0000-000000000000')",
            "toUUID('ffffffff-ffff-ffff-ffff-ffffffffffff')",
            "toUUID('00112233-4455-6677-8899-aabbccddeeff')",
        ],
        D::FixedSizeBinary(16),
    );
    let dt64_3 = leaf(
        "DateTime64(3, 'UTC')",
        &[
            "toDateTime64('1900-01-01 00:00:00.000', 3, 'UTC')",
            "toDateTime64('2299-12-31 23:59:59.999', 3, 'UTC')",
            "toDateTime64(toDecimal128('-0.001', 3), 3, 'UTC')",
            "toDateTime64('2026-01-01 12:34:56.789', 3, 'UTC')",
        ],
        utc(TimeUnit::Microsecond),
    );
    let ipv6 = leaf(
        "IPv6",
        &[
            "toIPv6('::')",
            "toIPv6('::ffff:1.2.3.4')",
            "toIPv6('2001:db8::1')",
            "toIPv6('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff')",
        ],
        D::Utf8,
    );
    let dec18 = leaf(
        "Decimal(18, 8)",
        &[
            "toDecimal64('9999999999.99999999', 8)",
            "toDecimal64('-9999999999.99999999', 8)",
            "toDecimal64('0.00000001', 8)",
            "0",
        ],
        dec(18, 8),
    );
    vec![
        ("c_i8", i8s.clone()),
        ("c_i16", leaf("Int16", &["-32768", "32767", "0"], D::Int32)),
        (
            "c_i32",
            leaf("Int32", &["-2147483648", "2147483647", "0"], D::Int32),
        ),
        (
            "c_i64",
            leaf(
                "Int64",
                &["-9223372036854775808", "9223372036854775807", "0"],
                D::Int64,
            ),
        ),
        ("c_u8", leaf("UInt8", &["0", "255", "1"], D::Int32)),
        ("c_u16", leaf("UInt16", &["0", "65535"], D::Int32)),
        ("c_u32", leaf("UInt32", &["0", "4294967295"], D::Int64)),
        (
            "c_u64",
            leaf(
                "UInt64",
                &["0", "18446744073709551615", "9223372036854775808"],
                dec(20, 0),
            ),
        ),
        (
            "c_i128",
            leaf(
                "Int128",
                &[
                    &format!("toInt128('-{MAX38}')"),
                    &format!("toInt128('{MAX38}')"),
                    "-1",
                    "0",
                ],
                dec(38, 0),
            ),
        ),
        (
            "c_u128",
            leaf("UInt128", &["0", &format!("toUInt128('{MAX38}')")], dec(38, 0)),
        ),
        (
            "c_i256",
            leaf(
                "Int256",
                &[
                    &format!("toInt256('-{MAX38}')"),
                    &format!("toInt256('{MAX38}')"),
                    "-1",
                ],
                dec(38, 0),
            ),
        ),
        (
            "c_u256",
            leaf("UInt256", &["0", &format!("toUInt256('{MAX38}')")], dec(38, 0)),
        ),
        (
            "c_f32",
            leaf(
                "Float32",
                &[
                    "0",
                    "-0.",
                    "inf",
                    "-inf",
                    "nan",
                    "1.5",
                    "1e-45",
                    "3.4028235e38",
                    "-1.1754944e-38",
                ],
                D::Float32,
            ),
        ),
        (
            "c_f64",
            leaf(
                "Float64",
                &[
                    "0",
                    "-0.",
                    "inf",
                    "-inf",
                    "nan",
                    "0.1",
                    "5e-324",
                    "1.7976931348623157e308",
                ],
                D::Float64,
            ),
        ),
        (
            "c_bf16",
            leaf(
                "BFloat16",
                &[
                    "toBFloat16(1.5)",
                    "toBFloat16(-2)",
                    "toBFloat16(inf)",
                    "toBFloat16(0)",
                ],
                D::Float32,
            ),
        ),
        (
            "c_d9",
            leaf(
                "Decimal(9, 2)",
                &[
                    "toDecimal32('9999999.99', 2)",
                    "toDecimal32('-9999999.99', 2)",
                    "0",
                ],
                dec(9, 2),
            ),
        ),
        ("c_d18", dec18.clone()),
        (
            "c_d38",
            leaf(
                "Decimal(38, 10)",
                &[
                    "toDecimal128('9999999999999999999999999999.9999999999', 10)",
                    "toDecimal128('-9999999999999999999999999999.9999999999', 10)",
                    "toDecimal128('0.0000000001', 10)",
                ],
                dec(38, 10),
            ),
        ),
        (
            "c_d76",
            leaf(
                "Decimal(76, 20)",
                &[
                    "toDecimal256('999999999999999999.99999999999999999999', 20)",
                    "toDecimal256('-999999999999999999.99999999999999999999', 20)",
                    "toDecimal256('1.5', 20)",
                ],
                dec(38, 20),
            ),
        ),
        ("c_bool", leaf("Bool", &["true", "false"], D::Boolean)),
        ("c_str", strings.clone()),
        (
            "c_fixed",
            leaf(
                "FixedString(4)",
                &["'abcd'", "'\\0\\0\\0\\0'", "'ab'"],
                D::FixedSizeBinary(4),
            ),
        ),
        ("c_lc", T::LowCardinality(b(strings.clone()))),
        ("c_lcn", T::LowCardinality(b(T::Nullable(b(strings.clone()))))),
        ("c_ni32", T::Nullable(b(leaf("Int32", &["7", "-7"], D::Int32)))),
        ("c_nd18", T::Nullable(b(dec18.clone()))),
        (
            "c_date",
            leaf(
                "Date",
                &[
                    "toDate('1970-01-01')",
                    "toDate('2149-06-06')",
                    "toDate('2000-02-29')",
                ],
                D::Date32,
            ),
        ),
        (
            "c_date32",
            leaf(
                "Date32",
                &[
                    "toDate32('1900-01-01')",
                    "toDate32('2299-12-31')",
                    "toDate32('1969-12-31')",
                ],
                D::Date32,
            ),
        ),
        (
            "c_dt",
            leaf(
                "DateTime",
                &[
                    "toDateTime(0)",
                    "toDateTime(4294967295)",
                    "toDateTime('2026-01-01 00:00:00', 'UTC')",
                ],
                utc(TimeUnit::Microsecond),
            ),
        ),
        (
            "c_dt_tokyo",
            leaf(
                "DateTime('Asia/Tokyo')",
                &["toDateTime('2026-01-01 09:00:00', 'Asia/Tokyo')", "toDateTime(1)"],
                utc(TimeUnit::Microsecond),
            ),
        ),
        (
            "c_dt64_0",
            leaf(
                "DateTime64(0)",
                &[
                    "toDateTime64('1900-01-01 00:00:00', 0, 'UTC')",
                    "toDateTime64('2299-12-31 23:59:59', 0, 'UTC')",
                ],
                utc(TimeUnit::Microsecond),
            ),
        ),
        (
            "c_dt64_1_kolkata",
            leaf(
                "DateTime64(1, 'Asia/Kolkata')",
                &[
                    "toDateTime64(-1.5, 1, 'UTC')",
                    "toDateTime64('2026-06-01 05:30:00.5', 1, 'Asia/Kolkata')",
                ],
                utc(TimeUnit::Microsecond),
            ),
        ),
        ("c_dt64_3", dt64_3.clone()),
        (
            "c_dt64_6",
            leaf(
                "DateTime64(6, 'Europe/Amsterdam')",
                &[
                    "toDateTime64('1900-01-01 00:00:00.000001', 6, 'UTC')",
                    "toDateTime64('2299-12-31 23:59:59.999999', 6, 'UTC')",
                    "toDateTime64(toDecimal128('-0.000001', 6), 6, 'UTC')",
                ],
                utc(TimeUnit::Microsecond),
            ),
        ),
        (
            "c_dt64_9_ny",
            leaf(
                "DateTime64(9, 'America/New_York')",
                &[
                    "toDateTime64('1900-01-01 00:00:00.000000001', 9, 'UTC')",
                    "toDateTime64('2262-04-11 23:47:16.854775807', 9, 'UTC')",
                    "toDateTime64(toDecimal128('-0.000000001', 9), 9, 'UTC')",
                    "toDateTime64(toDecimal128('0.000001999', 9), 9, 'UTC')",
                ],
                utc(TimeUnit::Microsecond),
            ),
        ),
        ("c_uuid", uuid.clone()),
        (
            "c_ipv4",
            leaf(
                "IPv4",
                &[
                    "toIPv4('0.0.0.0')",
                    "toIPv4('255.255.255.255')",
                    "toIPv4('1.2.3.4')",
                ],
                D::Utf8,
            ),
        ),
        ("c_ipv6", ipv6.clone()),
        (
            "c_enum8",
            leaf(
                "Enum8('a' = 1, 'b' = -128, 'c\\'q' = 127)",
                &["'a'", "'b'", "'c\\'q'"],
                D::Utf8,
            ),
        ),
        (
            "c_enum16",
            leaf("Enum16('x' = -32768, 'y' = 32767)", &["'x'", "'y'"], D::Utf8),
        ),
        ("c_n_uuid", T::Nullable(b(uuid.clone()))),
        (
            "c_n_ipv4",
            T::Nullable(b(leaf("IPv4", &["toIPv4('10.0.0.1')"], D::Utf8))),
        ),
        ("c_n_dt64", T::Nullable(b(dt64_3.clone()))),
        ("c_arr_str", T::Array(b(strings.clone()))),
        (
            "c_arr_ni32",
            T::Array(b(T::Nullable(b(leaf("Int32", &["1", "-2147483648"], D::Int32))))),
        ),
        (
            "c_arr_arr_u8",
            T::Array(b(T::Array(b(leaf("UInt8", &["0", "255"], D::Int32))))),
        ),
        (
            "c_arr_enum",
            T::Array(b(leaf(
                "Enum8('buy' = 1, 'sell' = 2)",
                &["'buy'", "'sell'"],
                D::Utf8,
            ))),
        ),
        ("c_arr_ipv6", T::Array(b(ipv6.clone()))),
        (
            "c_arr_dt",
            T::Array(b(leaf(
                "DateTime",
                &["toDateTime(0)", "toDateTime(4294967295)"],
                utc(TimeUnit::Microsecond),
            ))),
        ),
        (
            "c_arr_i128",
            T::Array(b(leaf(
                "Int128",
                &[&format!("toInt128('-{MAX38}')"), "5"],
                dec(38, 0),
            ))),
        ),
        (
            "c_arr_u64",
            T::Array(b(leaf("UInt64", &["18446744073709551615", "0"], dec(20, 0)))),
        ),
        ("c_map_ss", T::Map(b(strings.clone()), b(strings.clone()))),
        (
            "c_map_u64_nf64",
            T::Map(
                b(leaf("UInt64", &["1", "18446744073709551615"], dec(20, 0))),
                b(T::Nullable(b(leaf("Float64", &["0.5", "-inf"], D::Float64)))),
            ),
        ),
        (
            "c_map_lc_arr",
            T::Map(
                b(T::LowCardinality(b(strings.clone()))),
                b(T::Array(b(dec18.clone()))),
            ),
        ),
        (
            "c_map_s_ipv4",
            T::Map(
                b(strings.clone()),
                b(leaf("IPv4", &["toIPv4('192.168.0.1')"], D::Utf8)),
            ),
        ),
        (
            "c_tup_named",
            T::Tuple(vec![
                (Some("a"), leaf("Int32", &["1", "-1"], D::Int32)),
                (Some("b"), strings.clone()),
            ]),
        ),
        (
            "c_tup_plain",
            T::Tuple(vec![(None, i8s.clone()), (None, T::Nullable(b(strings.clone())))]),
        ),
        (
            "c_tup_deep",
            T::Tuple(vec![
                (Some("id"), uuid.clone()),
                (Some("times"), T::Array(b(dt64_3.clone()))),
                (
                    Some("side"),
                    leaf("Enum8('buy' = 1, 'sell' = 2)", &["'buy'", "'sell'"], D::Utf8),
                ),
            ]),
        ),
    ]
}

/// Reads `table` to the end and returns the error the stream must end with.
async fn read_error(
    source: &offload_source_clickhouse::ClickHouseSource,
    table: &TableConfig,
) -> offload_core::Error {
    let mut stream = open(source, table).await.read(everything()).await.unwrap();
    let mut err = None;
    while let Some(item) = futures::StreamExt::next(&mut stream).await {
        if let Err(e) = item {
            err = Some(e);
        }
    }
    err.expect("the read must fail")
}

fn types_config(name: &str) -> offload_core::TableConfigBuilder {
    TableConfig::builder(name)
        .timestamp_column("ts")
        .sequence_column("seq")
}

/// Creates `all_types`, inserts the sample rows, reads everything back and
/// compares every cell with the server's own rendering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_round_trips_exactly() {
    let db = TestDb::new("types");
    let columns = all_types();
    let ddl: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {}", t.ddl())).collect();
    db.query(&format!(
        "CREATE TABLE `{}`.all_types (ts DateTime64(3, 'UTC'), seq UInt64, {}) ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name,
        ddl.join(", ")
    ));
    let rows = columns.iter().map(|(_, t)| t.samples()).max().unwrap().max(6);
    for i in 0..rows {
        let values: Vec<String> = columns
            .iter()
            .map(|(_, t)| format!("CAST({} AS {})", t.sample(i), t.ddl()))
            .collect();
        db.query(&format!(
            "INSERT INTO `{}`.all_types SELECT toDateTime64('2026-01-01 00:00:00', 3, 'UTC'), {i}, {}",
            db.name,
            values.join(", ")
        ));
    }

    let source = db.source().build().unwrap();
    let table = types_config("all_types").batch_size(4).build().unwrap();
    let schema = open(&source, &table).await.schema();
    // The documented mapping, column by column.
    for (name, t) in &columns {
        let field = schema.field_with_name(name).unwrap();
        assert_eq!(
            field.data_type(),
            &t.arrow(),
            "Arrow type of {name} ({})",
            t.ddl()
        );
        assert_eq!(field.is_nullable(), t.nullable(), "nullability of {name}");
        assert_eq!(field.metadata(), &t.meta(), "metadata of {name}");
    }

    let batches = read_all(&open(&source, &table).await, common::everything()).await;
    assert!(batches.len() > 1, "several batches: the re-chunking is exercised");
    let batch = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
    assert_eq!(batch.num_rows(), rows);

    let canon: Vec<String> = columns
        .iter()
        .map(|(n, t)| format!("hex({})", t.canon_sql(n, 0)))
        .collect();
    let expected = db.query(&format!(
        "SELECT seq, {} FROM `{}`.all_types ORDER BY seq FORMAT TSVRaw",
        canon.join(", "),
        db.name
    ));
    let seqs = batch
        .column_by_name("seq")
        .unwrap()
        .as_primitive::<Decimal128Type>()
        .clone();
    let mut compared = 0;
    for line in expected.lines() {
        let mut cells = line.split('\t');
        let seq: i128 = cells.next().unwrap().parse().unwrap();
        let row = (0..batch.num_rows())
            .find(|&r| seqs.value(r) == seq)
            .expect("row read");
        for ((name, t), cell) in columns.iter().zip(cells) {
            let want = unhex(cell);
            let got = canon_arrow(batch.column_by_name(name).unwrap(), row);
            assert_eq!(got, want, "row {seq}, column {name} ({})", t.ddl());
            compared += 1;
        }
    }
    assert_eq!(compared, rows * columns.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_columns_flattened_or_not() {
    let db = TestDb::new("nested");
    let client = clickhouse::Client::default().with_url(db.url());
    for (table, flatten) in [("flat", "1"), ("deep", "0")] {
        client
            .query(&format!(
                "CREATE TABLE `{}`.{table} (ts DateTime64(3, 'UTC'), seq UInt32, n Nested(x Int32, y IPv4)) \
                 ENGINE = MergeTree ORDER BY (ts, seq)",
                db.name
            ))
            .with_setting("flatten_nested", flatten)
            .execute()
            .await
            .unwrap();
        let values = if flatten == "1" {
            "arrayMap(i -> toInt32(i), range(number)), arrayMap(i -> toIPv4(i), range(number))"
        } else {
            "arrayMap(i -> (toInt32(i), toIPv4(i)), range(number))"
        };
        client
            .query(&format!(
                "INSERT INTO `{}`.{table} SELECT now64(3) - INTERVAL 1 DAY, number, {values} FROM numbers(4)",
                db.name
            ))
            .with_setting("flatten_nested", flatten)
            .execute()
            .await
            .unwrap();
    }
    let source = db.source().build().unwrap();

    let flat = types_config("flat").build().unwrap();
    let schema = open(&source, &flat).await.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["ts", "seq", "n.x", "n.y"]);
    let b = arrow_select::concat::concat_batches(
        &schema,
        &read_all(&open(&source, &flat).await, everything()).await,
    )
    .unwrap();
    let seq = b.column(1).as_primitive::<Int64Type>();
    let row3 = (0..4).find(|&r| seq.value(r) == 3).unwrap();
    assert_eq!(canon_arrow(b.column(2), row3), "[0,1,2]");
    assert_eq!(
        canon_arrow(b.column(3), row3),
        format!("[{},{},{}]", hex(b"0.0.0.0"), hex(b"0.0.0.1"), hex(b"0.0.0.2"))
    );

    let deep = types_config("deep").build().unwrap();
    let schema = open(&source, &deep).await.schema();
    let DataType::List(element) = schema.field_with_name("n").unwrap().data_type() else {
        panic!("{schema:?}")
    };
    let DataType::Struct(fields) = element.data_type() else {
        panic!()
    };
    assert_eq!(
        fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
        ["x", "y"]
    );
    let b = arrow_select::concat::concat_batches(
        &schema,
        &read_all(&open(&source, &deep).await, everything()).await,
    )
    .unwrap();
    let seq = b.column(1).as_primitive::<Int64Type>();
    let row2 = (0..4).find(|&r| seq.value(r) == 2).unwrap();
    assert_eq!(
        canon_arrow(b.column(2), row2),
        format!("[(0,{}),(1,{})]", hex(b"0.0.0.0"), hex(b"0.0.0.1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_types_are_refused_by_name_never_dropped() {
    let db = TestDb::new("refused");
    let client = clickhouse::Client::default().with_url(db.url());
    for (col, ty) in [
        ("c_json", "JSON"),
        ("c_dynamic", "Dynamic"),
        ("c_variant", "Variant(String, UInt64)"),
        ("c_agg", "AggregateFunction(uniq, String)"),
        ("c_point", "Point"),
        ("c_arr_json", "Array(JSON)"),
    ] {
        let table = format!("r_{col}");
        client
            .query(&format!(
                "CREATE TABLE `{}`.{table} (ts DateTime64(3, 'UTC'), seq UInt64, ok String, {col} {ty}) \
                 ENGINE = MergeTree ORDER BY (ts, seq)",
                db.name
            ))
            .with_setting("allow_experimental_json_type", "1")
            .with_setting("allow_experimental_dynamic_type", "1")
            .with_setting("allow_experimental_variant_type", "1")
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e}"));
        let source = db.source().build().unwrap();
        let err = source
            .open(&types_config(&table).build().unwrap())
            .await
            .unwrap_err();
        let offload_core::Error::Source {
            retryable: false,
            source: inner,
        } = &err
        else {
            panic!("{ty}: {err:?}")
        };
        match inner.downcast_ref::<ClickHouseError>() {
            Some(ClickHouseError::UnsupportedType {
                column, type_name, ..
            }) => {
                assert_eq!(column, col);
                assert!(
                    type_name.starts_with(ty.split('(').next().unwrap()),
                    "{type_name}"
                );
            }
            other => panic!("{ty}: {other:?}"),
        }
        // Excluding the column makes the table readable.
        let cfg = types_config(&table).columns(["ok"]).build().unwrap();
        let schema = open(&source, &cfg).await.schema();
        assert_eq!(schema.fields().len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_values_fail_with_the_column_named() {
    let db = TestDb::new("range");
    db.query(&format!(
        "CREATE TABLE `{}`.wide (ts DateTime64(3, 'UTC'), seq UInt64, big Int256, u UInt64, s String) \
         ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name
    ));
    db.query(&format!(
        "INSERT INTO `{}`.wide VALUES (now64(3), 1, 1, 1, 'ok'), (now64(3), 2, 1, 1, 'ok')",
        db.name
    ));
    let source = db.source().build().unwrap();
    let int64 = db.source().uint64_mapping(UInt64Mapping::Int64).build().unwrap();
    let table = types_config("wide").build().unwrap();
    for s in [&source, &int64] {
        assert_eq!(
            read_all(&open(s, &table).await, everything())
                .await
                .iter()
                .map(RecordBatch::num_rows)
                .sum::<usize>(),
            2
        );
    }
    assert_eq!(
        open(&int64, &table)
            .await
            .schema()
            .field_with_name("u")
            .unwrap()
            .data_type(),
        &DataType::Int64
    );

    let expect = |err: offload_core::Error, column: &str| {
        assert!(!err.is_retryable(), "{err}");
        let offload_core::Error::Source { source, .. } = &err else {
            panic!("{err:?}")
        };
        match source.downcast_ref::<ClickHouseError>() {
            Some(
                ClickHouseError::ValueOutOfRange { column: c, .. }
                | ClickHouseError::InvalidUtf8 { column: c, .. },
            ) => {
                assert_eq!(c, column)
            }
            other => panic!("{other:?}"),
        }
    };

    // One bad row per copy of the table, so each failure is the one expected.
    let bad_copy = |name: &str, row: &str| {
        db.query(&format!("CREATE TABLE `{0}`.{name} AS `{0}`.wide", db.name));
        db.query(&format!(
            "INSERT INTO `{0}`.{name} SELECT * FROM `{0}`.wide",
            db.name
        ));
        db.query(&format!("INSERT INTO `{}`.{name} VALUES {row}", db.name));
        types_config(name).build().unwrap()
    };
    let t = bad_copy(
        "wide_int256",
        &format!("(now64(3), 3, toInt256('1{}'), 1, 'ok')", "0".repeat(38)),
    );
    expect(read_error(&source, &t).await, "big");
    let t = bad_copy("wide_u64", "(now64(3), 4, 1, 9223372036854775808, 'ok')");
    expect(read_error(&int64, &t).await, "u");
    let rows = read_all(&open(&source, &t).await, everything()).await;
    assert_eq!(
        rows.iter().map(RecordBatch::num_rows).sum::<usize>(),
        3,
        "Decimal(20, 0) holds it"
    );
    let t = bad_copy("wide_utf8", "(now64(3), 5, 1, 1, unhex('FF00'))");
    expect(read_error(&source, &t).await, "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_microsecond_policies() {
    let db = TestDb::new("submicro");
    db.query(&format!(
        "CREATE TABLE `{}`.ns (ts DateTime64(3, 'UTC'), seq UInt64, t9 DateTime64(9)) ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name
    ));
    db.query(&format!(
        "INSERT INTO `{}`.ns VALUES (now64(3), 1, toDateTime64(toDecimal128('-0.000000001', 9), 9, 'UTC'))",
        db.name
    ));
    let table = types_config("ns").build().unwrap();
    let read = |policy| {
        let source = db.source().sub_microsecond(policy).build().unwrap();
        let table = table.clone();
        async move {
            let b = read_all(&open(&source, &table).await, everything()).await;
            canon_arrow(b[0].column(2), 0)
        }
    };
    assert_eq!(
        read(SubMicrosecond::Truncate).await,
        "-1",
        "rounded down to the microsecond"
    );
    assert_eq!(read(SubMicrosecond::Nanoseconds).await, "-1");
    let ns_schema = db
        .source()
        .sub_microsecond(SubMicrosecond::Nanoseconds)
        .build()
        .unwrap()
        .open_table(&table)
        .await
        .unwrap()
        .schema();
    assert_eq!(ns_schema.field(2).data_type(), &utc(TimeUnit::Nanosecond));
    let refuse = db
        .source()
        .sub_microsecond(SubMicrosecond::Refuse)
        .build()
        .unwrap();
    let err = refuse.open(&table).await.unwrap_err();
    assert!(err.to_string().contains("t9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_columns_by_default_alias_on_request() {
    let db = TestDb::new("kinds");
    db.query(&format!(
        "CREATE TABLE `{}`.kinds (ts DateTime64(3, 'UTC'), seq UInt64, v Int32, \
         m Int32 MATERIALIZED v * 2, a Int32 ALIAS v * 3, e Int32 EPHEMERAL) \
         ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name
    ));
    db.query(&format!(
        "INSERT INTO `{}`.kinds (ts, seq, v) VALUES (now64(3), 1, 7)",
        db.name
    ));
    let source = db.source().build().unwrap();
    let all = types_config("kinds").build().unwrap();
    let schema = open(&source, &all).await.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["ts", "seq", "v", "m"]);
    let b = read_all(&open(&source, &all).await, everything()).await;
    assert_eq!(canon_arrow(b[0].column(3), 0), "14");

    let alias = types_config("kinds").columns(["a"]).build().unwrap();
    let b = read_all(&open(&source, &alias).await, everything()).await;
    assert_eq!(canon_arrow(b[0].column(0), 0), "21");

    let ephemeral = types_config("kinds").columns(["e"]).build().unwrap();
    let err = source.open(&ephemeral).await.unwrap_err();
    assert!(err.to_string().contains("EPHEMERAL"), "{err}");

    // The public discovery sees the same columns, with their kinds and types,
    // resolving an unqualified name in the client's database.
    let found = columns::discover(source.client(), &TableRef::parse("kinds").unwrap())
        .await
        .unwrap();
    assert_eq!(found.database, db.name);
    assert_eq!(found.quoted_table(), format!("`{}`.`kinds`", db.name));
    let kinds: Vec<(&str, ColumnKind)> = found.columns.iter().map(|c| (c.name.as_str(), c.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("ts", ColumnKind::Ordinary),
            ("seq", ColumnKind::Ordinary),
            ("v", ColumnKind::Ordinary),
            ("m", ColumnKind::Materialized),
            ("a", ColumnKind::Alias),
            ("e", ColumnKind::Ephemeral),
        ]
    );
    assert_eq!(
        found.stored().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        names,
        "the source reads the stored columns"
    );
    let ts = found.get("ts").unwrap();
    assert_eq!(ts.type_name, "DateTime64(3, 'UTC')");
    assert_eq!(
        ts.data_type().unwrap(),
        &ChType::DateTime64 {
            precision: 3,
            tz: Some("UTC".into())
        }
    );
    // The opened handle carries the same discovery.
    assert_eq!(open(&source, &all).await.columns(), &found);
    // Qualified, through a client without a database.
    let plain = clickhouse::Client::default().with_url(db.url());
    let qualified = TableRef::parse(&format!("`{}`.kinds", db.name)).unwrap();
    assert_eq!(columns::discover(&plain, &qualified).await.unwrap(), found);
    let missing = columns::discover(&plain, &TableRef::parse("no_such_table").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ClickHouseError::TableNotFound { .. }),
        "{missing:?}"
    );
}
