//! Per-table offload configuration: [`TableConfig`] and its builder.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::Error;

/// Default [`TableConfig::late_horizon`]: 7 days, the hot store's usual TTL.
pub const DEFAULT_LATE_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`TableConfig::sweep_bucket`]: 1 hour.
pub const DEFAULT_SWEEP_BUCKET: Duration = Duration::from_secs(3600);
/// Default [`TableConfig::max_window`]: 1 hour. A steady offload every few
/// minutes never reaches it; a first run on months of data (a backfill)
/// proceeds in hour windows instead of one giant window.
pub const DEFAULT_MAX_WINDOW: Duration = Duration::from_secs(3600);

/// Adapter-specific options of one table, keyed by their type (like
/// `http::Extensions`): each adapter defines its own option type and reads it
/// in `open`, so core knows nothing of partitions or filters.
#[derive(Clone, Default)]
struct Options(HashMap<TypeId, Box<dyn AnyOption>>);

trait AnyOption: Any + Send + Sync + fmt::Debug {
    fn clone_box(&self) -> Box<dyn AnyOption>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Clone + Send + Sync + fmt::Debug + 'static> AnyOption for T {
    fn clone_box(&self) -> Box<dyn AnyOption> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Clone for Box<dyn AnyOption> {
    fn clone(&self) -> Self {
        (**self).clone_box()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.values()).finish()
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
/// assert!(cfg.option::<u32>().is_none()); // no adapter options set
///
/// let err = TableConfig::builder("t").build().unwrap_err();
/// assert!(err.to_string().contains("timestamp_column"));
/// ```
#[derive(Clone)]
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
    late_horizon: Duration,
    sweep_bucket: Duration,
    options: Options,
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
            .field("max_window", &self.max_window)
            .field("late_horizon", &self.late_horizon)
            .field("options", &self.options)
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
            max_window: Some(DEFAULT_MAX_WINDOW),
            late_horizon: DEFAULT_LATE_HORIZON,
            sweep_bucket: DEFAULT_SWEEP_BUCKET,
            options: Options::default(),
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
    /// Largest span of event time one run takes (default
    /// [`DEFAULT_MAX_WINDOW`], 1 hour; `None` = unbounded), so a long backlog
    /// is committed in steps. Measured from the oldest row above the committed
    /// watermark ([`SourceTable::low_watermark`](crate::SourceTable::low_watermark)),
    /// so it also bounds a table's first window and skips gaps without data
    /// in one step; a source that cannot say where its rows start is capped
    /// from the committed watermark, and its first window is unbounded.
    pub fn max_window(&self) -> Option<Duration> {
        self.max_window
    }
    /// How far below the committed watermark the late-row sweep looks for rows
    /// that reached the source after their window was committed (default 7
    /// days; zero turns the sweep off). Rows older than this are reported,
    /// never repaired.
    pub fn late_horizon(&self) -> Duration {
        self.late_horizon
    }
    /// Width of the time buckets the sweep compares source and sink in
    /// (default 1 hour): a bucket whose counts agree costs nothing more.
    pub fn sweep_bucket(&self) -> Duration {
        self.sweep_bucket
    }
    /// The adapter option of type `T` set with [`TableConfigBuilder::option`], if any.
    ///
    /// ```
    /// use offload_core::TableConfig;
    /// #[derive(Clone, Debug, PartialEq)]
    /// struct Filter(String);
    /// let t = TableConfig::builder("t").timestamp_column("ts").sequence_column("seq")
    ///     .option(Filter("venue = 'X'".into()))
    ///     .build().unwrap();
    /// assert_eq!(t.option::<Filter>(), Some(&Filter("venue = 'X'".into())));
    /// assert_eq!(t.option::<u8>(), None);
    /// ```
    pub fn option<T: 'static>(&self) -> Option<&T> {
        self.options
            .0
            .get(&TypeId::of::<T>())
            .and_then(|o| (**o).as_any().downcast_ref())
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
    late_horizon: Duration,
    sweep_bucket: Duration,
    options: Options,
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
    /// Largest event-time span per run (default [`DEFAULT_MAX_WINDOW`], 1 hour).
    pub fn max_window(mut self, v: Duration) -> Self {
        self.max_window = Some(v);
        self
    }
    /// No limit on the event-time span of a run: each run takes everything
    /// up to the high watermark, however long the backlog.
    ///
    /// ```
    /// use offload_core::{TableConfig, DEFAULT_MAX_WINDOW};
    /// let b = TableConfig::builder("t").timestamp_column("ts").sequence_column("seq");
    /// assert_eq!(b.clone().build().unwrap().max_window(), Some(DEFAULT_MAX_WINDOW));
    /// assert_eq!(b.unbounded_window().build().unwrap().max_window(), None);
    /// ```
    pub fn unbounded_window(mut self) -> Self {
        self.max_window = None;
        self
    }
    /// See [`TableConfig::late_horizon`]; zero turns the late-row sweep off.
    pub fn late_horizon(mut self, v: Duration) -> Self {
        self.late_horizon = v;
        self
    }
    /// See [`TableConfig::sweep_bucket`] (at least 1 ms).
    pub fn sweep_bucket(mut self, v: Duration) -> Self {
        self.sweep_bucket = v;
        self
    }
    /// Sets an adapter option (one value per type; a second call replaces the
    /// first). Adapters define the types and read them with [`TableConfig::option`]
    /// when they open the table, and validate them there.
    pub fn option<T: Clone + Send + Sync + fmt::Debug + 'static>(mut self, v: T) -> Self {
        self.options.0.insert(TypeId::of::<T>(), Box::new(v));
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
        if self.sweep_bucket < Duration::from_millis(1) {
            return Err(Error::InvalidConfig {
                field: "sweep_bucket",
                reason: "must be at least 1 ms".into(),
            });
        }
        if i64::try_from(self.late_horizon.as_micros()).is_err() {
            return Err(Error::InvalidConfig {
                field: "late_horizon",
                reason: "is too large".into(),
            });
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
            late_horizon: self.late_horizon,
            sweep_bucket: self.sweep_bucket,
            options: self.options,
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
        ];
        for (b, field) in cases {
            match b.build() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn options_are_typed_replaced_and_cloned() {
        #[derive(Clone, Debug, PartialEq)]
        struct A(u32);
        #[derive(Clone, Debug, PartialEq)]
        struct B(&'static str);
        let c = base().option(A(1)).option(B("x")).option(A(2)).build().unwrap();
        let copy = c.clone();
        assert_eq!(copy.option::<A>(), Some(&A(2)));
        assert_eq!(copy.option::<B>(), Some(&B("x")));
        assert!(format!("{c:?}").contains("A(2)"));
    }

    #[test]
    fn hostile_but_printable_names_are_left_to_backends_to_quote() {
        let c = base().source_table("we`ird; DROP \"x\" ünï").build().unwrap();
        assert_eq!(c.source_table(), "we`ird; DROP \"x\" ünï");
    }
}
