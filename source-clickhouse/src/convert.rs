//! Converting decoded ArrowStream columns to the documented target types.
//!
//! ClickHouse's ArrowStream output is close to, but not exactly, the mapping
//! this crate promises (see the README): `DateTime` arrives as `UInt32`
//! seconds, 128/256-bit integers as little-endian `FixedSizeBinary`,
//! `String` as `Binary`, unsigned integers as unsigned Arrow types, and so
//! on. [`convert`] walks the ClickHouse type and the decoded array together
//! and produces exactly the target type — checking every narrowing and
//! failing with a typed error naming the column, never wrapping or nulling.

use std::cell::Cell;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Decimal256Type, DecimalType, Int64Type, TimestampMicrosecondType,
    TimestampNanosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, Decimal128Array, LargeStringArray, ListArray, MapArray, PrimitiveArray, StringArray,
    StructArray,
};
use arrow_buffer::ScalarBuffer;
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{ArrowError, DataType, Field, TimeUnit};

use crate::ClickHouseError;
use crate::types::{ChType, UTC};

/// The largest magnitude a `Decimal(38, s)` holds (unscaled): `10^38 - 1`.
const MAX_38: i128 = 10i128.pow(38) - 1;

fn decode_err(column: &str, what: impl std::fmt::Display) -> ClickHouseError {
    ClickHouseError::Decode {
        reason: format!("column {column:?}: {what}"),
    }
}

/// Converts one decoded column (`array`, of ClickHouse type `ch`) to `target`.
pub(crate) fn convert(
    array: &ArrayRef,
    ch: &ChType,
    target: &DataType,
    column: &str,
) -> Result<ArrayRef, ClickHouseError> {
    // LowCardinality arrives as a dictionary only if the server ignores our
    // setting asking for plain values; unpack it rather than fail.
    if let DataType::Dictionary(_, value) = array.data_type() {
        let plain = cast_with_options(array, value, &exact()).map_err(|e| decode_err(column, e))?;
        return convert(&plain, ch, target, column);
    }
    let out: ArrayRef = match (ch.base(), array.data_type()) {
        (ChType::Unsupported(t), _) => {
            return Err(ClickHouseError::UnsupportedType {
                column: column.into(),
                type_name: t.clone(),
                reason: "not mapped".into(),
            });
        }
        (
            ChType::Int {
                bits: 64,
                signed: false,
            },
            DataType::UInt64,
        ) => uint64(array, target, column)?,
        (
            ChType::Int {
                bits: 128 | 256,
                signed,
            },
            DataType::FixedSizeBinary(16 | 32),
        ) => wide_int(array, *signed, column)?,
        (ChType::Decimal { .. }, DataType::Decimal256(..)) => narrow_decimal256(array, target, column)?,
        (
            ChType::String | ChType::Enum { .. } | ChType::Ipv4 | ChType::Ipv6,
            DataType::Binary | DataType::LargeBinary | DataType::Utf8 | DataType::LargeUtf8,
        ) => utf8(array, column)?,
        (ChType::DateTime { .. }, DataType::UInt32) => {
            let secs = array.as_primitive::<UInt32Type>();
            Arc::new(
                secs.unary::<_, TimestampMicrosecondType>(|s| i64::from(s) * 1_000_000)
                    .with_timezone(UTC),
            )
        }
        (ChType::DateTime { .. } | ChType::DateTime64 { .. }, DataType::Timestamp(unit, _)) => {
            timestamp(array, *unit, target, column)?
        }
        (ChType::Array(t), DataType::List(_)) => list(array, t, target, column)?,
        (ChType::Nested(elems), DataType::List(_)) => {
            let tuple = ChType::Tuple(elems.iter().map(|(n, t)| (Some(n.clone()), t.clone())).collect());
            list(array, &tuple, target, column)?
        }
        (ChType::Map(k, v), DataType::Map(..)) => map(array, k, v, target, column)?,
        (ChType::Tuple(elems), DataType::Struct(_)) => structure(array, elems, target, column)?,
        (_, dt) if dt == target => array.clone(),
        // Widening integers, Bool, floats, dates, fixed strings, UUIDs,
        // decimals: lossless casts (`safe: false` turns any surprise into an error).
        (
            ChType::Int { .. }
            | ChType::Float32
            | ChType::Float64
            | ChType::BFloat16
            | ChType::Bool
            | ChType::Decimal { .. }
            | ChType::Date
            | ChType::Date32
            | ChType::FixedString(_)
            | ChType::Uuid,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Decimal128(..)
            | DataType::Date32
            | DataType::FixedSizeBinary(_),
        ) => cast_with_options(array, target, &exact()).map_err(|e| decode_err(column, e))?,
        (ch, dt) => {
            return Err(decode_err(
                column,
                format!(
                    "ClickHouse type {} arrived as Arrow {dt}, which this crate does not convert",
                    ch.sql()
                ),
            ));
        }
    };
    if out.data_type() != target {
        return Err(decode_err(
            column,
            format!("converted to {} instead of {target}", out.data_type()),
        ));
    }
    Ok(out)
}

/// Checks what the array data alone cannot show: a UUID must arrive marked as
/// the `arrow.uuid` extension, whose bytes are in RFC 4122 order. (Servers
/// that send UUIDs as plain 16 bytes may use ClickHouse's internal order,
/// which would silently scramble every value.) Walks nested types too.
pub(crate) fn check_wire_field(field: &Field, ch: &ChType, column: &str) -> Result<(), ClickHouseError> {
    match (ch.base(), field.data_type()) {
        (ChType::Uuid, _) => {
            if field.metadata().get("ARROW:extension:name").map(String::as_str) != Some("arrow.uuid") {
                return Err(decode_err(
                    column,
                    "UUID arrived without the arrow.uuid extension type, so its byte order is unknown",
                ));
            }
            Ok(())
        }
        (ChType::Array(t), DataType::List(f)) => check_wire_field(f, t, column),
        (ChType::Nested(elems), DataType::List(f)) => match f.data_type() {
            DataType::Struct(fields) if fields.len() == elems.len() => elems
                .iter()
                .zip(fields.iter())
                .try_for_each(|((_, t), f)| check_wire_field(f, t, column)),
            _ => Ok(()),
        },
        (ChType::Map(k, v), DataType::Map(entries, _)) => match entries.data_type() {
            DataType::Struct(fields) if fields.len() == 2 => {
                check_wire_field(&fields[0], k, column)?;
                check_wire_field(&fields[1], v, column)
            }
            _ => Ok(()),
        },
        (ChType::Tuple(elems), DataType::Struct(fields)) if fields.len() == elems.len() => elems
            .iter()
            .zip(fields.iter())
            .try_for_each(|((_, t), f)| check_wire_field(f, t, column)),
        // Shape mismatches are reported by `convert`.
        _ => Ok(()),
    }
}

fn exact() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        ..CastOptions::default()
    }
}

fn out_of_range(column: &str, value: impl std::fmt::Display, target: &DataType) -> ClickHouseError {
    ClickHouseError::ValueOutOfRange {
        column: column.into(),
        value: value.to_string(),
        target: target.to_string(),
    }
}

fn uint64(array: &ArrayRef, target: &DataType, column: &str) -> Result<ArrayRef, ClickHouseError> {
    let values = array.as_primitive::<UInt64Type>();
    Ok(match target {
        DataType::Decimal128(p, s) => Arc::new(
            values
                .unary::<_, Decimal128Type>(i128::from)
                .with_precision_and_scale(*p, *s)
                .map_err(|e| decode_err(column, e))?,
        ),
        DataType::Int64 => {
            if let Some(v) = values.iter().flatten().find(|v| i64::try_from(*v).is_err()) {
                return Err(out_of_range(column, v, target));
            }
            Arc::new(values.unary::<_, Int64Type>(|v| v as i64))
        }
        other => return Err(decode_err(column, format!("UInt64 cannot become {other}"))),
    })
}

/// `(U)Int128/256` as little-endian two's complement bytes -> `Decimal(38, 0)`.
fn wide_int(array: &ArrayRef, signed: bool, column: &str) -> Result<ArrayRef, ClickHouseError> {
    let bytes = array.as_fixed_size_binary();
    let target = DataType::Decimal128(38, 0);
    let mut out = Vec::with_capacity(bytes.len());
    for i in 0..bytes.len() {
        if bytes.is_null(i) {
            out.push(0);
            continue;
        }
        let b = bytes.value(i);
        match fit_i128(b, signed) {
            Some(v) if (-MAX_38..=MAX_38).contains(&v) => out.push(v),
            _ => return Err(out_of_range(column, le_bytes_to_decimal(b, signed), &target)),
        }
    }
    let decimals = Decimal128Array::new(ScalarBuffer::from(out), bytes.nulls().cloned())
        .with_precision_and_scale(38, 0)
        .map_err(|e| decode_err(column, e))?;
    Ok(Arc::new(decimals))
}

/// The value of little-endian integer bytes as an `i128`, if it fits.
fn fit_i128(b: &[u8], signed: bool) -> Option<i128> {
    let (low, high) = b.split_at(16.min(b.len()));
    let low: [u8; 16] = low.try_into().ok()?;
    if signed {
        let v = i128::from_le_bytes(low);
        let ext = if v < 0 { 0xFF } else { 0x00 };
        high.iter().all(|&x| x == ext).then_some(v)
    } else {
        let v = u128::from_le_bytes(low);
        if high.iter().any(|&x| x != 0) {
            return None;
        }
        i128::try_from(v).ok()
    }
}

/// Renders little-endian integer bytes in decimal (for error messages).
fn le_bytes_to_decimal(b: &[u8], signed: bool) -> String {
    let negative = signed && b.last().is_some_and(|x| x & 0x80 != 0);
    let mut limbs: Vec<u32> = b
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    if negative {
        // two's complement negate
        let mut carry = 1u64;
        for l in &mut limbs {
            let v = u64::from(!*l) + carry;
            *l = v as u32;
            carry = v >> 32;
        }
    }
    let mut digits = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / 10) as u32;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
}

/// `Decimal(P > 38, S)` (Decimal256) -> `Decimal(38, S)`, checked.
fn narrow_decimal256(array: &ArrayRef, target: &DataType, column: &str) -> Result<ArrayRef, ClickHouseError> {
    let DataType::Decimal128(p, s) = target else {
        return Err(decode_err(column, format!("Decimal256 cannot become {target}")));
    };
    let DataType::Decimal256(wp, ws) = array.data_type() else {
        unreachable!("matched by the caller")
    };
    if ws != s {
        return Err(decode_err(column, format!("scale {ws} arrived, {s} expected")));
    }
    let wide = array.as_primitive::<Decimal256Type>();
    let mut out = Vec::with_capacity(wide.len());
    for i in 0..wide.len() {
        if wide.is_null(i) {
            out.push(0);
            continue;
        }
        let v = wide.value(i);
        match v.to_i128() {
            Some(n) if (-MAX_38..=MAX_38).contains(&n) => out.push(n),
            _ => {
                return Err(out_of_range(
                    column,
                    Decimal256Type::format_decimal(v, *wp, *ws),
                    target,
                ));
            }
        }
    }
    let narrow = Decimal128Array::new(ScalarBuffer::from(out), wide.nulls().cloned())
        .with_precision_and_scale(*p, *s)
        .map_err(|e| decode_err(column, e))?;
    Ok(Arc::new(narrow))
}

/// Binary (ClickHouse strings are bytes) -> Utf8, validating every value.
fn utf8(array: &ArrayRef, column: &str) -> Result<ArrayRef, ClickHouseError> {
    let invalid = |e: ArrowError| ClickHouseError::InvalidUtf8 {
        column: column.into(),
        detail: e.to_string(),
    };
    Ok(match array.data_type() {
        DataType::Utf8 => array.clone(),
        DataType::Binary => {
            let b = array.as_binary::<i32>();
            Arc::new(
                StringArray::try_new(b.offsets().clone(), b.values().clone(), b.nulls().cloned())
                    .map_err(invalid)?,
            )
        }
        DataType::LargeBinary => {
            let b = array.as_binary::<i64>();
            let large =
                LargeStringArray::try_new(b.offsets().clone(), b.values().clone(), b.nulls().cloned())
                    .map_err(invalid)?;
            cast_with_options(&large, &DataType::Utf8, &exact()).map_err(|e| decode_err(column, e))?
        }
        DataType::LargeUtf8 => {
            cast_with_options(array, &DataType::Utf8, &exact()).map_err(|e| decode_err(column, e))?
        }
        other => return Err(decode_err(column, format!("a string arrived as {other}"))),
    })
}

fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

/// Any timestamp unit -> the target unit, labelled UTC. Finer units are
/// rounded down (towards the past), like the watermark positions.
fn timestamp(
    array: &ArrayRef,
    from: TimeUnit,
    target: &DataType,
    column: &str,
) -> Result<ArrayRef, ClickHouseError> {
    let DataType::Timestamp(to, _) = target else {
        return Err(decode_err(column, format!("a timestamp cannot become {target}")));
    };
    // Timestamp -> Int64 is a reinterpretation of the same values.
    let ticks = cast_with_options(array, &DataType::Int64, &exact()).map_err(|e| decode_err(column, e))?;
    let ticks = ticks.as_primitive::<Int64Type>();
    let (f, t) = (per_second(from), per_second(*to));
    let overflow = Cell::new(None);
    let convert = |v: i64| -> Result<i64, ArrowError> {
        if t >= f {
            v.checked_mul(t / f).ok_or_else(|| {
                overflow.set(Some(v));
                ArrowError::ComputeError("overflow".into())
            })
        } else {
            Ok(v.div_euclid(f / t))
        }
    };
    let values: ScalarBuffer<i64> = match ticks.try_unary::<_, Int64Type, _>(convert) {
        Ok(a) => a.values().clone(),
        Err(_) => {
            let v = overflow.get().unwrap_or_default();
            return Err(out_of_range(
                column,
                format!("{v} ({from:?} since the epoch)"),
                target,
            ));
        }
    };
    let nulls = ticks.nulls().cloned();
    Ok(match to {
        TimeUnit::Microsecond => {
            Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(values, nulls).with_timezone(UTC))
        }
        TimeUnit::Nanosecond => {
            Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(values, nulls).with_timezone(UTC))
        }
        other => return Err(decode_err(column, format!("unexpected target unit {other:?}"))),
    })
}

fn list(
    array: &ArrayRef,
    element: &ChType,
    target: &DataType,
    column: &str,
) -> Result<ArrayRef, ClickHouseError> {
    let DataType::List(field) = target else {
        return Err(decode_err(column, format!("an Array cannot become {target}")));
    };
    let l = array.as_list::<i32>();
    let values = convert(l.values(), element, field.data_type(), column)?;
    let out = ListArray::try_new(field.clone(), l.offsets().clone(), values, l.nulls().cloned())
        .map_err(|e| decode_err(column, e))?;
    Ok(Arc::new(out))
}

fn map(
    array: &ArrayRef,
    k: &ChType,
    v: &ChType,
    target: &DataType,
    column: &str,
) -> Result<ArrayRef, ClickHouseError> {
    let DataType::Map(entries_field, sorted) = target else {
        return Err(decode_err(column, format!("a Map cannot become {target}")));
    };
    let DataType::Struct(fields) = entries_field.data_type() else {
        return Err(decode_err(column, "map entries are not a struct"));
    };
    let m = array.as_map();
    let keys = convert(m.keys(), k, fields[0].data_type(), column)?;
    let values = convert(m.values(), v, fields[1].data_type(), column)?;
    let entries = StructArray::try_new(fields.clone(), vec![keys, values], m.entries().nulls().cloned())
        .map_err(|e| decode_err(column, e))?;
    let out = MapArray::try_new(
        entries_field.clone(),
        m.offsets().clone(),
        entries,
        m.nulls().cloned(),
        *sorted,
    )
    .map_err(|e| decode_err(column, e))?;
    Ok(Arc::new(out))
}

fn structure(
    array: &ArrayRef,
    elems: &[(Option<String>, ChType)],
    target: &DataType,
    column: &str,
) -> Result<ArrayRef, ClickHouseError> {
    let DataType::Struct(fields) = target else {
        return Err(decode_err(column, format!("a Tuple cannot become {target}")));
    };
    let s = array.as_struct();
    if s.num_columns() != elems.len() || fields.len() != elems.len() {
        return Err(decode_err(
            column,
            format!(
                "Tuple of {} elements arrived with {} fields",
                elems.len(),
                s.num_columns()
            ),
        ));
    }
    let children = elems
        .iter()
        .zip(fields.iter())
        .enumerate()
        .map(|(i, ((_, t), f))| convert(s.column(i), t, f.data_type(), column))
        .collect::<Result<Vec<_>, _>>()?;
    let out = StructArray::try_new(fields.clone(), children, s.nulls().cloned())
        .map_err(|e| decode_err(column, e))?;
    Ok(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::types::TimestampNanosecondType;
    use arrow_array::{BinaryArray, FixedSizeBinaryArray, Int8Array, UInt64Array};
    use arrow_buffer::i256;

    use crate::types::MappingOptions;

    fn target(ch: &str) -> (ChType, DataType) {
        let t = ChType::parse(ch).unwrap();
        let dt = t.arrow_type(MappingOptions::default()).unwrap();
        (t, dt)
    }

    #[test]
    fn le_bytes_render_in_decimal() {
        assert_eq!(le_bytes_to_decimal(&(-1i128).to_le_bytes(), true), "-1");
        assert_eq!(
            le_bytes_to_decimal(&u128::MAX.to_le_bytes(), false),
            u128::MAX.to_string()
        );
        assert_eq!(
            le_bytes_to_decimal(&i128::MIN.to_le_bytes(), true),
            i128::MIN.to_string()
        );
        assert_eq!(
            le_bytes_to_decimal(&i256::MAX.to_le_bytes(), true),
            i256::MAX.to_string()
        );
        assert_eq!(le_bytes_to_decimal(&[0; 32], false), "0");
    }

    #[test]
    fn wide_ints_are_checked() {
        let ok =
            FixedSizeBinaryArray::try_from_iter([MAX_38, -MAX_38, 0, -1].iter().map(|v| v.to_le_bytes()))
                .unwrap();
        let (ch, dt) = target("Int128");
        let out = convert(&(Arc::new(ok) as ArrayRef), &ch, &dt, "c").unwrap();
        let d = out.as_primitive::<Decimal128Type>();
        assert_eq!(d.values().to_vec(), vec![MAX_38, -MAX_38, 0, -1]);

        let too_big = FixedSizeBinaryArray::try_from_iter([(MAX_38 + 1).to_le_bytes()].into_iter()).unwrap();
        let err = convert(&(Arc::new(too_big) as ArrayRef), &ch, &dt, "c").unwrap_err();
        assert!(
            matches!(&err, ClickHouseError::ValueOutOfRange { column, value, .. } if column == "c" && *value == (MAX_38 + 1).to_string()),
            "{err:?}"
        );
        // UInt256 with a high bit set does not fit, and is reported unsigned.
        let (ch, dt) = target("UInt256");
        let mut b = [0u8; 32];
        b[31] = 0x80;
        let big = FixedSizeBinaryArray::try_from_iter([b].into_iter()).unwrap();
        let err = convert(&(Arc::new(big) as ArrayRef), &ch, &dt, "u").unwrap_err();
        assert!(
            matches!(&err, ClickHouseError::ValueOutOfRange { value, .. } if !value.starts_with('-')),
            "{err:?}"
        );
        // Int256 -1 fits.
        let (ch, dt) = target("Int256");
        let neg = FixedSizeBinaryArray::try_from_iter([[0xFFu8; 32]].into_iter()).unwrap();
        let out = convert(&(Arc::new(neg) as ArrayRef), &ch, &dt, "i").unwrap();
        assert_eq!(out.as_primitive::<Decimal128Type>().value(0), -1);
    }

    #[test]
    fn uint64_mappings() {
        let a: ArrayRef = Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, Some(0)]));
        let (ch, dt) = target("Nullable(UInt64)");
        let out = convert(&a, &ch, &dt, "c").unwrap();
        let d = out.as_primitive::<Decimal128Type>();
        assert_eq!(d.value(0), i128::from(u64::MAX));
        assert!(d.is_null(1));
        let err = convert(&a, &ch, &DataType::Int64, "c").unwrap_err();
        assert!(matches!(err, ClickHouseError::ValueOutOfRange { .. }), "{err:?}");
        let small: ArrayRef = Arc::new(UInt64Array::from(vec![Some(i64::MAX as u64), None]));
        let out = convert(&small, &ch, &DataType::Int64, "c").unwrap();
        assert_eq!(out.as_primitive::<Int64Type>().value(0), i64::MAX);
    }

    #[test]
    fn strings_are_validated() {
        let (ch, dt) = target("String");
        let good: ArrayRef = Arc::new(BinaryArray::from(vec![&b"ok"[..], "é".as_bytes()]));
        let out = convert(&good, &ch, &dt, "s").unwrap();
        assert_eq!(out.as_string::<i32>().value(1), "é");
        let bad: ArrayRef = Arc::new(BinaryArray::from(vec![&b"ok"[..], &[0xff, 0xfe][..]]));
        let err = convert(&bad, &ch, &dt, "s").unwrap_err();
        assert!(
            matches!(&err, ClickHouseError::InvalidUtf8 { column, .. } if column == "s"),
            "{err:?}"
        );
    }

    #[test]
    fn timestamps_round_down() {
        let ns: ArrayRef = Arc::new(
            PrimitiveArray::<TimestampNanosecondType>::from(vec![Some(-1), Some(1_999), None])
                .with_timezone("Etc/UTC"),
        );
        let (ch, dt) = target("Nullable(DateTime64(9, 'Asia/Tokyo'))");
        let out = convert(&ns, &ch, &dt, "t").unwrap();
        assert_eq!(
            out.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let us = out.as_primitive::<TimestampMicrosecondType>();
        assert_eq!((us.value(0), us.value(1), us.is_null(2)), (-1, 1, true));

        let secs: ArrayRef = Arc::new(arrow_array::UInt32Array::from(vec![u32::MAX, 0]));
        let (ch, dt) = target("DateTime");
        let out = convert(&secs, &ch, &dt, "t").unwrap();
        assert_eq!(
            out.as_primitive::<TimestampMicrosecondType>().value(0),
            i64::from(u32::MAX) * 1_000_000
        );
    }

    #[test]
    fn narrowing_decimal256() {
        let (ch, dt) = target("Decimal(76, 2)");
        let ok = PrimitiveArray::<Decimal256Type>::from(vec![i256::from_i128(MAX_38), i256::from_i128(-5)])
            .with_precision_and_scale(76, 2)
            .unwrap();
        let out = convert(&(Arc::new(ok) as ArrayRef), &ch, &dt, "d").unwrap();
        assert_eq!(out.as_primitive::<Decimal128Type>().value(1), -5);
        let big = PrimitiveArray::<Decimal256Type>::from(vec![i256::from_i128(MAX_38) + i256::ONE])
            .with_precision_and_scale(76, 2)
            .unwrap();
        let err = convert(&(Arc::new(big) as ArrayRef), &ch, &dt, "d").unwrap_err();
        assert!(
            matches!(&err, ClickHouseError::ValueOutOfRange { value, .. } if value == "1000000000000000000000000000000000000.00"),
            "{err:?}"
        );
    }

    #[test]
    fn uuids_must_be_marked() {
        let (ch, dt) = target("Array(Nullable(UUID))");
        let DataType::List(el) = &dt else { panic!() };
        let marked = Field::new("u", dt.clone(), false);
        assert!(check_wire_field(&marked, &ch, "u").is_ok(), "{el:?}");
        let plain = Field::new(
            "u",
            DataType::List(Arc::new(Field::new("item", DataType::FixedSizeBinary(16), true))),
            false,
        );
        let err = check_wire_field(&plain, &ch, "u").unwrap_err();
        assert!(matches!(err, ClickHouseError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn unexpected_wire_types_are_typed_errors() {
        let (ch, dt) = target("DateTime64(3)");
        let a: ArrayRef = Arc::new(Int8Array::from(vec![1]));
        let err = convert(&a, &ch, &dt, "x").unwrap_err();
        assert!(matches!(err, ClickHouseError::Decode { .. }), "{err:?}");
    }
}
