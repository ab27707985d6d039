//! Per-table offload configuration: [`TableConfig`] and its builder.

use std::fmt;
use std::time::Duration;

use crate::Error;

/// How the sink should partition a table. A hint: sinks without partitions ignore it.
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
    /// Hash bucket `0..n` of the column's value.
    Bucket(u32),
    /// The value truncated to a width (strings: prefix length; integers: multiple of).
    Truncate(u32),
}

/// One partition field: a source column and the transform applied to it.
///
/// ```
/// use offload_core::{PartitionField, Transform};
/// let f = PartitionField::new("exchange_timestamp", Transform::Day);
/// assert_eq!(f.column(), "exchange_timestamp");
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

/// What to offload for one table and how. Build it with [`TableConfig::builder`];
/// a `TableConfig` that exists has been validated.
///
/// ```
/// use std::time::Duration;
/// use offload_core::TableConfig;
///
/// let cfg = TableConfig::builder("bronze_trades")
///     .timestamp_column("exchange_timestamp")
///     .sequence_column("sequence_number")
///     .lag(Duration::from_secs(300))
///     .build()
///     .unwrap();
/// assert_eq!(cfg.source_table(), "bronze_trades"); // defaults to the name
/// assert_eq!(cfg.partitioning()[0].column(), "exchange_timestamp"); // day(ts) by default
///
/// let err = TableConfig::builder("t").build().unwrap_err();
/// assert!(err.to_string().contains("timestamp_column"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TableConfig {
    name: String,
    source_table: String,
    sink_table: String,
    timestamp_column: String,
    sequence_column: String,
    columns: Option<Vec<String>>,
    lag: Duration,
    batch_size: usize,
    max_window: Option<Duration>,
    partitioning: Vec<PartitionField>,
}

impl fmt::Debug for TableConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableConfig")
            .field("name", &self.name)
            .field("source_table", &self.source_table)
            .field("sink_table", &self.sink_table)
            .field("timestamp_column", &self.timestamp_column)
            .field("sequence_column", &self.sequence_column)
            .field("lag", &self.lag)
            .finish_non_exhaustive()
    }
}

impl TableConfig {
    /// Starts a builder. `name` is the table's key in the watermark store and in
    /// metrics; source and sink table names default to it.
    pub fn builder(name: impl Into<String>) -> TableConfigBuilder {
        TableConfigBuilder {
            name: name.into(),
            source_table: None,
            sink_table: None,
            timestamp_column: None,
            sequence_column: None,
            columns: None,
            lag: Duration::from_secs(300),
            batch_size: 65_536,
            max_window: None,
            partitioning: None,
        }
    }

    /// The table's key in the watermark store, logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The table the source reads (e.g. `db.bronze_trades`; the source interprets it).
    pub fn source_table(&self) -> &str {
        &self.source_table
    }
    /// The table the sink writes (e.g. `namespace.table`; the sink interprets it).
    pub fn sink_table(&self) -> &str {
        &self.sink_table
    }
    /// The event-time column: first half of the watermark.
    pub fn timestamp_column(&self) -> &str {
        &self.timestamp_column
    }
    /// The sequence column: second half of the watermark, orders rows sharing a timestamp.
    pub fn sequence_column(&self) -> &str {
        &self.sequence_column
    }
    /// Columns to copy, or `None` for all. Always includes the watermark columns when set.
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }
    /// How far behind the source's clock a window must end: rows may arrive this late.
    pub fn lag(&self) -> Duration {
        self.lag
    }
    /// Preferred rows per batch when reading.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
    /// Largest span of event time one run takes, so a long backlog is committed
    /// in steps. Measured from the committed watermark, so it applies from the
    /// second window on: the first window (from nothing) has no lower bound to
    /// measure from and runs to the high watermark.
    pub fn max_window(&self) -> Option<Duration> {
        self.max_window
    }
    /// Partition hint for the sink. Empty means unpartitioned.
    pub fn partitioning(&self) -> &[PartitionField] {
        &self.partitioning
    }
}

/// Builder for [`TableConfig`]; [`build`](Self::build) validates.
#[derive(Clone, Debug)]
pub struct TableConfigBuilder {
    name: String,
    source_table: Option<String>,
    sink_table: Option<String>,
    timestamp_column: Option<String>,
    sequence_column: Option<String>,
    columns: Option<Vec<String>>,
    lag: Duration,
    batch_size: usize,
    max_window: Option<Duration>,
    partitioning: Option<Vec<PartitionField>>,
}

impl TableConfigBuilder {
    /// Source table (defaults to the name).
    pub fn source_table(mut self, v: impl Into<String>) -> Self {
        self.source_table = Some(v.into());
        self
    }
    /// Sink table (defaults to the name).
    pub fn sink_table(mut self, v: impl Into<String>) -> Self {
        self.sink_table = Some(v.into());
        self
    }
    /// Event-time column (required).
    pub fn timestamp_column(mut self, v: impl Into<String>) -> Self {
        self.timestamp_column = Some(v.into());
        self
    }
    /// Sequence column (required).
    pub fn sequence_column(mut self, v: impl Into<String>) -> Self {
        self.sequence_column = Some(v.into());
        self
    }
    /// Copy only these columns (the watermark columns are added if missing).
    pub fn columns<I, S>(mut self, cols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.columns = Some(cols.into_iter().map(Into::into).collect());
        self
    }
    /// Hold-back behind the source's clock (default 5 minutes).
    pub fn lag(mut self, v: Duration) -> Self {
        self.lag = v;
        self
    }
    /// Rows per batch (default 65,536; 1 ..= 16,777,216).
    pub fn batch_size(mut self, v: usize) -> Self {
        self.batch_size = v;
        self
    }
    /// Largest event-time span per run (default: unbounded).
    pub fn max_window(mut self, v: Duration) -> Self {
        self.max_window = Some(v);
        self
    }
    /// Adds a partition field (replacing the default `day(timestamp_column)`).
    pub fn partition_by(mut self, field: PartitionField) -> Self {
        self.partitioning.get_or_insert_with(Vec::new).push(field);
        self
    }
    /// No partitioning.
    pub fn unpartitioned(mut self) -> Self {
        self.partitioning = Some(Vec::new());
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<TableConfig, Error> {
        let name = identifier("name", self.name)?;
        let timestamp_column = identifier(
            "timestamp_column",
            self.timestamp_column.ok_or(missing("timestamp_column"))?,
        )?;
        let sequence_column = identifier(
            "sequence_column",
            self.sequence_column.ok_or(missing("sequence_column"))?,
        )?;
        if timestamp_column == sequence_column {
            return Err(Error::InvalidConfig {
                field: "sequence_column",
                reason: "must differ from timestamp_column".into(),
            });
        }
        let source_table = identifier("source_table", self.source_table.unwrap_or(name.clone()))?;
        let sink_table = identifier("sink_table", self.sink_table.unwrap_or(name.clone()))?;
        let columns = match self.columns {
            None => None,
            Some(cols) => {
                let mut out = Vec::with_capacity(cols.len() + 2);
                for c in cols {
                    let c = identifier("columns", c)?;
                    if out.contains(&c) {
                        return Err(Error::InvalidConfig {
                            field: "columns",
                            reason: format!("column {c:?} listed twice"),
                        });
                    }
                    out.push(c);
                }
                for key in [&timestamp_column, &sequence_column] {
                    if !out.contains(key) {
                        out.push(key.clone());
                    }
                }
                Some(out)
            }
        };
        if !(1..=1 << 24).contains(&self.batch_size) {
            return Err(Error::InvalidConfig {
                field: "batch_size",
                reason: format!("{} is outside 1..=16777216", self.batch_size),
            });
        }
        if self.max_window.is_some_and(|w| w.is_zero()) {
            return Err(Error::InvalidConfig {
                field: "max_window",
                reason: "must be positive".into(),
            });
        }
        let partitioning = self
            .partitioning
            .unwrap_or_else(|| vec![PartitionField::new(timestamp_column.clone(), Transform::Day)]);
        for f in &partitioning {
            identifier("partitioning", f.column.clone())?;
            if let Transform::Bucket(0) | Transform::Truncate(0) = f.transform {
                return Err(Error::InvalidConfig {
                    field: "partitioning",
                    reason: format!("{:?} on {:?} needs a positive parameter", f.transform, f.column),
                });
            }
            if let Some(cols) = &columns
                && !cols.contains(&f.column)
            {
                return Err(Error::InvalidConfig {
                    field: "partitioning",
                    reason: format!("column {:?} is not among the selected columns", f.column),
                });
            }
        }
        Ok(TableConfig {
            name,
            source_table,
            sink_table,
            timestamp_column,
            sequence_column,
            columns,
            lag: self.lag,
            batch_size: self.batch_size,
            max_window: self.max_window,
            partitioning,
        })
    }
}

fn missing(field: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        reason: "is required".into(),
    }
}

/// The checks every backend relies on before it quotes a name its own way:
/// non-empty, at most 255 bytes, no control characters (NUL, newlines, ...).
/// Quotes, backticks, semicolons and unicode are allowed here: backends quote.
fn identifier(field: &'static str, v: String) -> Result<String, Error> {
    let reason = if v.is_empty() {
        "must not be empty"
    } else if v.len() > 255 {
        "must be at most 255 bytes"
    } else if v.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(v);
    };
    Err(Error::InvalidConfig {
        field,
        reason: format!("{:?} {reason}", v.chars().take(64).collect::<String>()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TableConfigBuilder {
        TableConfig::builder("t")
            .timestamp_column("ts")
            .sequence_column("seq")
    }

    #[test]
    fn selected_columns_gain_the_watermark_columns() {
        let c = base().columns(["price"]).build().unwrap();
        assert_eq!(c.columns().unwrap(), ["price", "ts", "seq"]);
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let cases = [
            (base().batch_size(0), "batch_size"),
            (base().columns(["a", "a"]), "columns"),
            (base().sequence_column("ts"), "sequence_column"),
            (base().source_table("a\0b"), "source_table"),
            (base().sink_table(""), "sink_table"),
            (base().max_window(Duration::ZERO), "max_window"),
            (
                base().partition_by(PartitionField::new("ts", Transform::Bucket(0))),
                "partitioning",
            ),
            (
                base()
                    .columns(["x"])
                    .partition_by(PartitionField::new("y", Transform::Identity)),
                "partitioning",
            ),
        ];
        for (b, field) in cases {
            match b.build() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn hostile_but_printable_names_are_left_to_backends_to_quote() {
        let c = base().source_table("we`ird; DROP \"x\" ünï").build().unwrap();
        assert_eq!(c.source_table(), "we`ird; DROP \"x\" ünï");
    }
}
