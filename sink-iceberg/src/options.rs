//! Per-table options of the Iceberg sink ([`IcebergTableOptions`]): how a new
//! table is partitioned. Carried in `offload_core::TableConfig` as a typed
//! option, so core holds no Iceberg vocabulary.

use offload_core::TableConfig;

use crate::IcebergSinkError;

/// A partition transform, applied to one source column.
///
/// ```
/// use offload_sink_iceberg::Transform;
/// assert_eq!(Transform::Bucket(16), Transform::Bucket(16));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transform {
    /// The column's value itself.
    Identity,
    /// Calendar year of a timestamp or date column.
    Year,
    /// Calendar month of a timestamp or date column.
    Month,
    /// Calendar day of a timestamp or date column (the default, on the timestamp column).
    Day,
    /// Hour of a timestamp column.
    Hour,
    /// Hash bucket `0..n` of the column's value (`n > 0`).
    Bucket(u32),
    /// The value truncated to a width (strings: prefix length; integers: multiple of; `w > 0`).
    Truncate(u32),
}

impl std::str::FromStr for Transform {
    type Err = String;

    /// The transform as Iceberg spells it: `identity`, `year`, `month`, `day`,
    /// `hour`, `bucket[N]`, `truncate[W]` (N, W > 0).
    ///
    /// ```
    /// use offload_sink_iceberg::Transform;
    /// assert_eq!("bucket[16]".parse::<Transform>(), Ok(Transform::Bucket(16)));
    /// assert_eq!("day".parse::<Transform>(), Ok(Transform::Day));
    /// assert!("bucket[0]".parse::<Transform>().is_err());
    /// assert!("bucket".parse::<Transform>().is_err());
    /// assert_eq!(Transform::Truncate(4).to_string().parse::<Transform>(), Ok(Transform::Truncate(4)));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || {
            format!("{s:?}: expected identity, year, month, day, hour, bucket[N] or truncate[W] (N, W > 0)")
        };
        let param = |rest: &str| {
            rest.strip_suffix(']')
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(expected)
        };
        Ok(match s.trim() {
            "identity" => Transform::Identity,
            "year" => Transform::Year,
            "month" => Transform::Month,
            "day" => Transform::Day,
            "hour" => Transform::Hour,
            t => {
                if let Some(rest) = t.strip_prefix("bucket[") {
                    Transform::Bucket(param(rest)?)
                } else if let Some(rest) = t.strip_prefix("truncate[") {
                    Transform::Truncate(param(rest)?)
                } else {
                    return Err(expected());
                }
            }
        })
    }
}

impl std::fmt::Display for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transform::Identity => f.write_str("identity"),
            Transform::Year => f.write_str("year"),
            Transform::Month => f.write_str("month"),
            Transform::Day => f.write_str("day"),
            Transform::Hour => f.write_str("hour"),
            Transform::Bucket(n) => write!(f, "bucket[{n}]"),
            Transform::Truncate(w) => write!(f, "truncate[{w}]"),
        }
    }
}

/// One partition field: a source column and the transform applied to it.
///
/// ```
/// use offload_sink_iceberg::{PartitionField, Transform};
/// let f = PartitionField::new("exchange_timestamp", Transform::Day);
/// assert_eq!(f.column(), "exchange_timestamp");
/// assert_eq!(f.transform(), &Transform::Day);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionField {
    column: String,
    transform: Transform,
}

impl PartitionField {
    /// A partition field on `column` with `transform`.
    pub fn new(column: impl Into<String>, transform: Transform) -> Self {
        Self {
            column: column.into(),
            transform,
        }
    }

    /// The source column.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The transform.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }
}

/// How the Iceberg sink lays out one table, given to `TableConfig` as a typed
/// option and read by [`IcebergSink::open`](crate::IcebergSink). Without it (or
/// with [`IcebergTableOptions::default`]) a new table is partitioned by
/// `day(<timestamp column>)`.
///
/// The partitioning applies when [`prepare`](offload_core::SinkTable::prepare)
/// creates the table; an existing table keeps its own spec (a difference is
/// logged as a warning; partition evolution is left to operators).
///
/// ```
/// use offload_core::TableConfig;
/// use offload_sink_iceberg::{IcebergTableOptions, PartitionField, Transform};
///
/// let table = TableConfig::builder("trades")
///     .timestamp_column("ts")
///     .sequence_column("seq")
///     .option(
///         IcebergTableOptions::default()
///             .partition_by(PartitionField::new("ts", Transform::Hour))
///             .partition_by(PartitionField::new("symbol", Transform::Bucket(8))),
///     )
///     .build()
///     .unwrap();
/// let opts = table.option::<IcebergTableOptions>().unwrap();
/// assert_eq!(opts.partitioning(&table).len(), 2);
///
/// // No option: day(timestamp_column).
/// let plain = TableConfig::builder("t").timestamp_column("ts").sequence_column("seq").build().unwrap();
/// let fields = IcebergTableOptions::default().partitioning(&plain);
/// assert_eq!(fields, vec![PartitionField::new("ts", Transform::Day)]);
/// assert!(IcebergTableOptions::default().unpartitioned().partitioning(&plain).is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IcebergTableOptions {
    /// `None`: the default, `day(timestamp_column)`.
    partitioning: Option<Vec<PartitionField>>,
}

impl IcebergTableOptions {
    /// The defaults (`day(timestamp_column)`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a partition field, in order (replacing the default `day(timestamp_column)`).
    pub fn partition_by(mut self, field: PartitionField) -> Self {
        self.partitioning.get_or_insert_with(Vec::new).push(field);
        self
    }

    /// No partitioning at all.
    pub fn unpartitioned(mut self) -> Self {
        self.partitioning = Some(Vec::new());
        self
    }

    /// The partition fields for `table`, the default resolved.
    pub fn partitioning(&self, table: &TableConfig) -> Vec<PartitionField> {
        match &self.partitioning {
            Some(fields) => fields.clone(),
            None => vec![PartitionField::new(table.timestamp_column(), Transform::Day)],
        }
    }

    /// The partition fields for `table`, checked: transforms with a
    /// parameter need a positive one, and a column must be among the
    /// table's selected columns (when it selects some).
    pub(crate) fn resolve(&self, table: &TableConfig) -> Result<Vec<PartitionField>, IcebergSinkError> {
        let fields = self.partitioning(table);
        for f in &fields {
            if f.column.is_empty() || f.column.chars().any(char::is_control) {
                return Err(IcebergSinkError::Config {
                    field: "partitioning",
                    reason: format!("{:?} is not a column name", f.column),
                });
            }
            if let Transform::Bucket(0) | Transform::Truncate(0) = f.transform {
                return Err(IcebergSinkError::Config {
                    field: "partitioning",
                    reason: format!("{:?} on {:?} needs a positive parameter", f.transform, f.column),
                });
            }
            if let Some(cols) = table.columns()
                && !cols.contains(&f.column)
            {
                return Err(IcebergSinkError::Config {
                    field: "partitioning",
                    reason: format!("column {:?} is not among the selected columns", f.column),
                });
            }
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> offload_core::TableConfigBuilder {
        TableConfig::builder("t")
            .timestamp_column("ts")
            .sequence_column("seq")
    }

    #[test]
    fn bad_partitioning_is_refused_naming_the_field() {
        let t = base().build().unwrap();
        let zero = IcebergTableOptions::new().partition_by(PartitionField::new("ts", Transform::Bucket(0)));
        assert!(matches!(
            zero.resolve(&t),
            Err(IcebergSinkError::Config {
                field: "partitioning",
                ..
            })
        ));
        let t = base().columns(["x"]).build().unwrap();
        let missing = IcebergTableOptions::new().partition_by(PartitionField::new("y", Transform::Identity));
        assert!(matches!(
            missing.resolve(&t),
            Err(IcebergSinkError::Config {
                field: "partitioning",
                ..
            })
        ));
        let fine = IcebergTableOptions::new().partition_by(PartitionField::new("x", Transform::Identity));
        assert_eq!(fine.resolve(&t).unwrap().len(), 1);
        assert_eq!(IcebergTableOptions::new().resolve(&t).unwrap()[0].column(), "ts");
    }
}
