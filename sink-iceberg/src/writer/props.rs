//! The Parquet writer properties of a table's data files: one place for the
//! staging writer and for compaction, so both write the same layout.

use iceberg::spec::{PrimitiveType as P, Schema, Type};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterPropertiesBuilder;
use parquet::schema::types::ColumnPath;

use crate::IcebergSinkError;

/// The properties a table's data files are written with, before any
/// caller-specific page sizes (compaction sets smaller pages for small targets):
///
/// * zstd at the configured level, row groups of at most `row_group_rows`;
/// * no dictionary attempt on top-level numeric, temporal and boolean
///   columns: prices, timestamps and sequence numbers are nearly unique, so
///   the dictionary is built, found too large and thrown away for every page
///   (profiling put that at ~19% of the engine's CPU on `bronze_trades`).
///   Strings and nested columns keep dictionaries, where they pay;
/// * `DELTA_BINARY_PACKED` for every column Parquet stores as INT32/INT64
///   except decimals, and for the watermark columns (`timestamp_column`,
///   `sequence_column`) even when they are decimals up to 18 digits. The
///   watermark columns arrive nearly sorted and the other timestamps and
///   counters of an event stream nearly so, so the deltas are small. Random
///   decimals (prices, quantities) grow under delta (criterion `parquet`, 1M
///   `bronze_trades` rows, one core: watermark columns only 199 ms / 13.5 MB,
///   every non-decimal integer 183 ms / 13.5 MB, every integer including
///   decimals 136 ms / 16.4 MB; the 50-column table 19.0 / 18.5 / 18.3 MB), and
///   the cold table keeps its bytes forever, so decimals stay plain. Unsorted
///   input still round-trips, only less compactly.
pub(crate) fn data_file_properties(
    schema: &Schema,
    watermark_columns: [&str; 2],
    zstd_level: i32,
    row_group_rows: usize,
) -> Result<WriterPropertiesBuilder, IcebergSinkError> {
    let level = ZstdLevel::try_new(zstd_level).map_err(|e| IcebergSinkError::Config {
        field: "zstd_level",
        reason: e.to_string(),
    })?;
    let mut props = parquet::file::properties::WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)));
    for field in schema.as_struct().fields() {
        let Type::Primitive(p) = &*field.field_type else {
            continue;
        };
        let column = || ColumnPath::from(field.name.as_str());
        if is_numeric(p) {
            props = props.set_column_dictionary_enabled(column(), false);
        }
        let watermark = watermark_columns.contains(&field.name.as_str());
        let delta = match p {
            P::Decimal { .. } => watermark && is_physical_integer(p),
            _ => is_physical_integer(p),
        };
        if delta {
            props = props.set_column_encoding(column(), Encoding::DELTA_BINARY_PACKED);
        }
    }
    Ok(props)
}

fn is_numeric(p: &P) -> bool {
    matches!(
        p,
        P::Boolean
            | P::Int
            | P::Long
            | P::Float
            | P::Double
            | P::Decimal { .. }
            | P::Date
            | P::Time
            | P::Timestamp
            | P::Timestamptz
            | P::TimestampNs
            | P::TimestamptzNs
    )
}

/// Whether arrow-rs stores the type as Parquet INT32 or INT64, the physical
/// types `DELTA_BINARY_PACKED` applies to. Decimals up to 18 digits are
/// integers there; wider ones (a UInt64 mapped to `decimal(20, 0)`) are
/// fixed-length byte arrays, where the encoding is refused at write time.
fn is_physical_integer(p: &P) -> bool {
    match p {
        P::Int
        | P::Long
        | P::Date
        | P::Time
        | P::Timestamp
        | P::Timestamptz
        | P::TimestampNs
        | P::TimestamptzNs => true,
        P::Decimal { precision, .. } => *precision <= 18,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iceberg::spec::NestedField;
    use parquet::file::properties::WriterProperties;

    use super::*;

    fn schema() -> Schema {
        let f = |id, name: &str, t| Arc::new(NestedField::required(id, name, Type::Primitive(t)));
        Schema::builder()
            .with_fields([
                f(1, "ts", P::Timestamptz),
                f(
                    2,
                    "seq",
                    P::Decimal {
                        precision: 20,
                        scale: 0,
                    },
                ),
                f(3, "n", P::Long),
                f(4, "s", P::String),
                f(5, "seq2", P::Long),
                f(
                    6,
                    "price",
                    P::Decimal {
                        precision: 18,
                        scale: 8,
                    },
                ),
                f(7, "x", P::Double),
            ])
            .build()
            .unwrap()
    }

    fn build(cols: [&str; 2]) -> WriterProperties {
        data_file_properties(&schema(), cols, 3, 1000).unwrap().build()
    }

    #[test]
    fn delta_on_integers_and_decimal_watermark_columns_only() {
        let p = build(["ts", "seq"]);
        let col = ColumnPath::from;
        let delta = Some(Encoding::DELTA_BINARY_PACKED);
        assert_eq!(p.encoding(&col("ts")), delta);
        // decimal(20, 0) is a fixed-length byte array in Parquet.
        assert_eq!(p.encoding(&col("seq")), None);
        assert_eq!(p.encoding(&col("n")), delta);
        assert_eq!(p.encoding(&col("seq2")), delta);
        // A decimal that is no watermark column stays plain; floats too.
        assert_eq!(p.encoding(&col("price")), None);
        assert_eq!(p.encoding(&col("x")), None);
        assert_eq!(p.encoding(&col("s")), None);
        let p = build(["ts", "price"]);
        assert_eq!(p.encoding(&col("price")), delta);
        for c in ["ts", "seq", "n", "seq2", "price", "x"] {
            assert!(!p.dictionary_enabled(&col(c)), "{c}");
        }
        assert!(p.dictionary_enabled(&col("s")));
        assert_eq!(p.max_row_group_row_count(), Some(1000));
    }
}
