//! [`ClickHouseTable`]: one opened table, the `offload_core::SourceTable`
//! implementation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use clickhouse::Client;
use futures::StreamExt;
use offload_core::{BatchStream, BucketGrid, Error, SourceTable, TableConfig, Watermark, Window};

use crate::ClickHouseError;
use crate::columns::{self, Column, ColumnKind, TableColumns};
use crate::decode::ArrowStreamDecoder;
use crate::derived;
use crate::ident::{TableRef, quote_identifier, validate_identifier};
use crate::source::{ARROW_SETTINGS, BLOCK_SETTINGS, ClickHouseTableOptions};
use crate::sql::{Cond, Positions, SeqColumn, TimeColumn};
use crate::stream::{BatchShape, WindowReader};
use crate::types::{ChType, MappingOptions};

/// One ClickHouse table opened by [`ClickHouseSource`](crate::ClickHouseSource):
/// its columns were read from `system.columns` when it was opened, and its
/// schema, window SQL and decoder are fixed for the life of the handle.
///
/// Obtained from [`Source::open`](offload_core::Source::open) as an
/// `Arc<dyn SourceTable>`, or from
/// [`ClickHouseSource::open_table`](crate::ClickHouseSource::open_table) as
/// this type. Cheap to share; every call is one query.
pub struct ClickHouseTable {
    client: Client,
    config: TableConfig,
    stream_idle_timeout: Duration,
    /// Whether window queries ask for blocks of the batch size (the user
    /// set no block setting of their own).
    tune_blocks: bool,
    /// `` `db`.`table` ``
    table_sql: String,
    select_sql: String,
    filter: Option<String>,
    positions: Positions,
    /// The derived sequence's SQL, when the table has key columns instead
    /// of a sequence column.
    derived: Option<String>,
    shape: Arc<BatchShape>,
    columns: TableColumns,
}

impl fmt::Debug for ClickHouseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client is left out: it holds the credentials.
        f.debug_struct("ClickHouseTable")
            .field("name", &self.config.name())
            .field("table", &self.table_sql)
            .field("select", &self.select_sql)
            .field("filter", &self.filter)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ClickHouseTable {
    /// Reads `system.columns` and derives the table's layout.
    pub(crate) async fn open(
        client: Client,
        default_database: Option<&str>,
        mapping: MappingOptions,
        stream_idle_timeout: Duration,
        tune_blocks: bool,
        table: &TableConfig,
    ) -> Result<ClickHouseTable, ClickHouseError> {
        let options = table.option::<ClickHouseTableOptions>();
        let filter = options.and_then(ClickHouseTableOptions::filter_sql);
        if let Some(options) = options {
            options.validate().map_err(|e| match e {
                ClickHouseError::InvalidConfig { field, reason } => ClickHouseError::InvalidConfig {
                    field,
                    reason: format!("{field} for table {:?}: {reason}", table.name()),
                },
                e => e,
            })?;
        }
        let key_columns = options.and_then(ClickHouseTableOptions::key_columns_list);
        let mut tref = TableRef::parse(table.source_table())?;
        if tref.database.is_none() {
            tref.database = default_database.map(str::to_owned);
        }
        let discovered = columns::discover(&client, &tref).await?;
        let table_name = format!("{}.{}", discovered.database, discovered.table);

        let column = |name: &str| -> Result<(&Column, ChType), ClickHouseError> {
            validate_identifier("column", name)?;
            let column = discovered
                .get(name)
                .ok_or_else(|| ClickHouseError::ColumnNotFound {
                    table: table_name.clone(),
                    column: name.to_owned(),
                })?;
            if column.kind == ColumnKind::Ephemeral {
                return Err(ClickHouseError::UnsupportedType {
                    column: name.to_owned(),
                    type_name: column.type_name.clone(),
                    reason: "EPHEMERAL columns are not stored and cannot be read".into(),
                });
            }
            Ok((column, column.data_type()?.clone()))
        };

        let watermark_column = |name: &str, role: &'static str| -> Result<ChType, ClickHouseError> {
            let (column, ch) = column(name)?;
            let ok = match role {
                "timestamp" => TimeColumn::from_type(&ch).is_some(),
                "key" => !ch.is_nullable(),
                _ => SeqColumn::from_type(&ch).is_some(),
            };
            if !ok {
                let reason = match role {
                    "timestamp" => "must be DateTime or DateTime64 (not Nullable)",
                    // A NULL key would give the row no position.
                    "key" => "a key column of a derived sequence must not be Nullable",
                    _ => "must be an integer of at most 64 bits, signed or unsigned (not Nullable)",
                };
                return Err(ClickHouseError::InvalidWatermarkColumn {
                    column: name.to_owned(),
                    role,
                    type_name: column.type_name.clone(),
                    reason: reason.into(),
                });
            }
            Ok(ch)
        };
        let ts_type = watermark_column(table.timestamp_column(), "timestamp")?;
        // The sequence: a stored column, or derived from the key columns by
        // an expression that then stands for it in every query.
        let derived: Option<String> = match key_columns {
            None => None,
            Some(keys) => {
                if discovered.get(table.sequence_column()).is_some() {
                    return Err(ClickHouseError::DerivedSequenceClash {
                        table: table_name.clone(),
                        column: table.sequence_column().to_owned(),
                    });
                }
                for key in keys {
                    watermark_column(key, "key")?;
                }
                Some(derived::sequence_sql(keys))
            }
        };
        let (seq_type, seq_sql) = match &derived {
            None => (
                watermark_column(table.sequence_column(), "sequence")?,
                quote_identifier(table.sequence_column()),
            ),
            Some(sql) => (derived_type(), sql.clone()),
        };
        let positions = Positions {
            ts: TimeColumn::from_type(&ts_type).expect("checked"),
            ts_sql: quote_identifier(table.timestamp_column()),
            seq: SeqColumn::from_type(&seq_type).expect("checked"),
            seq_sql,
        };

        let mut selected: Vec<&str> = match table.columns() {
            Some(cols) => cols.iter().map(String::as_str).collect(),
            // Every stored column, MATERIALIZED ones included (which `SELECT *`
            // would leave out): ALIAS columns are computed on read and
            // EPHEMERAL ones are not stored at all.
            None => discovered.stored().map(|c| c.name.as_str()).collect(),
        };
        if derived.is_some() && !selected.contains(&table.sequence_column()) {
            // The derived sequence is materialised like any other column.
            selected.push(table.sequence_column());
        }
        let selected = selected
            .into_iter()
            .map(|name| match &derived {
                Some(sql) if name == table.sequence_column() => Ok((
                    name.to_owned(),
                    derived_type(),
                    derived::SEQUENCE_TYPE.to_owned(),
                    Some(sql.clone()),
                )),
                _ => column(name).map(|(c, ch)| (name.to_owned(), ch, c.type_name.clone(), None)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (shape, select_sql) = BatchShape::for_columns(selected, mapping)?;
        Ok(ClickHouseTable {
            client,
            config: table.clone(),
            stream_idle_timeout,
            tune_blocks,
            table_sql: discovered.quoted_table(),
            select_sql,
            filter: filter.map(str::to_owned),
            positions,
            derived,
            shape: Arc::new(shape),
            columns: discovered,
        })
    }

    /// The table's columns as discovered when it was opened (all of them,
    /// not only the selected ones).
    pub fn columns(&self) -> &TableColumns {
        &self.columns
    }

    /// The table as it appears in the SQL: `` `database`.`table` ``.
    pub fn table_sql(&self) -> &str {
        &self.table_sql
    }

    /// The SQL of the position's sequence as the source's queries use it:
    /// the quoted sequence column, or the derived expression over the key
    /// columns ([`derived::sequence_sql`]) when the table has no sequence
    /// column.
    pub fn sequence_sql(&self) -> &str {
        &self.positions.seq_sql
    }

    /// Whether the sequence is derived from key columns.
    pub fn is_sequence_derived(&self) -> bool {
        self.derived.is_some()
    }

    /// The extra condition from [`ClickHouseTableOptions`], if any.
    pub fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    fn where_clause(&self, cond: Cond) -> String {
        match &self.filter {
            Some(filter) => format!("({}) AND ({filter})", cond.render()),
            None => cond.render(),
        }
    }

    /// The SQL [`read`](SourceTable::read) sends for `window` (for logs,
    /// `EXPLAIN`, and measuring the server on its own). Send it with
    /// [`window_settings`](Self::window_settings) and `FORMAT ArrowStream`
    /// to get bytes for [`decoder`](Self::decoder).
    pub fn window_sql(&self, window: Window) -> String {
        format!(
            "SELECT {} FROM {} WHERE {}",
            self.select_sql,
            self.table_sql,
            self.where_clause(self.positions.window(window))
        )
    }

    /// The settings [`read`](SourceTable::read) sends with every window
    /// query, besides the source's own [`setting`](crate::ClickHouseSourceBuilder::setting)s:
    /// [`ArrowStreamDecoder::server_settings`] (the shape of the ArrowStream),
    /// then `max_block_size = batch_size` and `preferred_block_size_bytes = 0`
    /// unless the source was given either of those.
    ///
    /// Why the block settings: by default ClickHouse sizes blocks by bytes
    /// (`preferred_block_size_bytes`, 1 MB), 8,192 rows for a 97-byte trade,
    /// and every batch would be a concatenation of eight blocks, i.e. a copy
    /// of the window. Blocks of the batch size are passed on as they are
    /// decoded (half the decode CPU, 14% end to end in the benches). A block
    /// then holds as many bytes as a batch, which the engine holds anyway.
    /// MergeTree sends whole granules (ClickHouse 26.9): a block is
    /// `max_block_size` rounded up to whole granules of the table's
    /// `index_granularity` (8,192 rows by default), so the default batch
    /// size, 65,536 rows (eight granules), gets blocks of exactly one batch;
    /// another size gets blocks the stream slices, still with few copies.
    pub fn window_settings(&self) -> Vec<(&'static str, String)> {
        let mut settings: Vec<(&'static str, String)> = ARROW_SETTINGS
            .iter()
            .map(|&(name, value)| (name, value.to_owned()))
            .collect();
        if self.tune_blocks {
            let [rows, bytes] = BLOCK_SETTINGS;
            settings.push((rows, self.config.batch_size().to_string()));
            settings.push((bytes, "0".to_owned()));
        }
        settings
    }

    /// The one aggregate [`bucket_counts`](SourceTable::bucket_counts) sends
    /// for `grid`: the rows of `grid.span()`, selected by exactly the
    /// predicate (and filter) [`read`](SourceTable::read) uses for that
    /// window, grouped by bucket index. Returns `(index, count)` rows.
    ///
    /// The index expression is repeated in `GROUP BY` rather than aliased: an
    /// alias would shadow a column of the same name in the configured filter.
    pub fn bucket_counts_sql(&self, grid: &BucketGrid) -> String {
        let index = self.positions.bucket_index_sql(grid);
        format!(
            "SELECT {index}, count() FROM {} WHERE {} GROUP BY {index}",
            self.table_sql,
            self.where_clause(self.positions.window(grid.span()))
        )
    }

    /// The decoder [`read`](SourceTable::read) uses: the same target schema,
    /// the same conversions, and the table's batch size. For decoding
    /// `ArrowStream` bytes obtained some other way, or for measuring the
    /// decoding stage on its own.
    pub fn decoder(&self) -> ArrowStreamDecoder {
        ArrowStreamDecoder::from_shape(
            self.shape.clone(),
            self.select_sql.clone(),
            self.config.batch_size(),
        )
    }

    async fn high_watermark_inner(&self) -> Result<Option<Watermark>, ClickHouseError> {
        // The server's clock, not ours: the lag protects rows the *server*
        // may still receive.
        let now: i64 = self
            .client
            .query_raw("SELECT toUnixTimestamp64Micro(now64(6))")
            .fetch_one()
            .await?;
        let lag = i64::try_from(self.config.lag().as_micros()).unwrap_or(i64::MAX);
        let horizon = self.positions.timestamp_at_or_before(now.saturating_sub(lag));
        if horizon == Cond::False {
            return Ok(None);
        }
        let p = &self.positions;
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} ORDER BY {} DESC, {} DESC LIMIT 1",
            p.ts.ticks_sql(&p.ts_sql),
            p.seq.position_sql(&p.seq_sql),
            self.table_sql,
            self.where_clause(horizon),
            p.ts_sql,
            p.seq_sql,
        );
        let row: Option<(i64, u64)> = self.client.query_raw(&sql).fetch_optional().await?;
        Ok(row.map(|(ticks, seq)| Watermark::new(p.ts.ticks_to_micros(ticks), seq)))
    }

    async fn bucket_counts_inner(&self, grid: &BucketGrid) -> Result<Vec<u64>, ClickHouseError> {
        let sql = self.bucket_counts_sql(grid);
        tracing::debug!(table = self.config.name(), ?grid, sql, "counting buckets");
        let rows: Vec<(i64, u64)> = self.client.query_raw(&sql).fetch_all().await?;
        let mut counts = vec![0u64; grid.len()];
        for (index, count) in rows {
            // The predicate keeps every row inside the grid, so an index
            // outside it means the SQL and the grid disagree: refuse to guess.
            let slot = usize::try_from(index)
                .ok()
                .and_then(|i| counts.get_mut(i))
                .ok_or_else(|| ClickHouseError::ValueOutOfRange {
                    column: self.config.timestamp_column().to_owned(),
                    value: format!("bucket index {index}"),
                    target: format!("a grid of {} buckets", grid.len()),
                })?;
            *slot += count;
        }
        Ok(counts)
    }

    async fn read_inner(&self, window: Window) -> Result<WindowReader, ClickHouseError> {
        let sql = self.window_sql(window);
        tracing::debug!(table = self.config.name(), %window, sql, "reading window");
        let mut query = self.client.query_raw(&sql);
        for (name, value) in self.window_settings() {
            query = query.with_setting(name, value);
        }
        let cursor = query
            .fetch_bytes("ArrowStream")
            .map_err(ClickHouseError::from_client)?;
        WindowReader::start(
            cursor,
            self.shape.clone(),
            self.config.batch_size(),
            self.stream_idle_timeout,
        )
        .await
    }
}

/// The type of a derived sequence ([`derived::SEQUENCE_TYPE`]).
fn derived_type() -> ChType {
    ChType::parse(derived::SEQUENCE_TYPE).expect("Int64 parses")
}

#[async_trait]
impl SourceTable for ClickHouseTable {
    fn config(&self) -> &TableConfig {
        &self.config
    }

    fn schema(&self) -> SchemaRef {
        self.shape.schema.clone()
    }

    async fn high_watermark(&self) -> Result<Option<Watermark>, Error> {
        Ok(self.high_watermark_inner().await?)
    }

    /// One query, `ORDER BY` the position `LIMIT 1` above `after` (and the
    /// filter): on a table sorted by the watermark columns ClickHouse reads
    /// in order and stops at the first granule.
    async fn low_watermark(&self, after: Watermark) -> Result<Option<Watermark>, Error> {
        let p = &self.positions;
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE {} ORDER BY {}, {} LIMIT 1",
            p.ts.ticks_sql(&p.ts_sql),
            p.seq.position_sql(&p.seq_sql),
            self.table_sql,
            self.where_clause(p.after(after)),
            p.ts_sql,
            p.seq_sql,
        );
        let row: Option<(i64, u64)> = self
            .client
            .query_raw(&sql)
            .fetch_optional()
            .await
            .map_err(ClickHouseError::from)?;
        Ok(row.map(|(ticks, seq)| Watermark::new(p.ts.ticks_to_micros(ticks), seq)))
    }

    async fn read(&self, window: Window) -> Result<BatchStream, Error> {
        let reader = self.read_inner(window).await?;
        Ok(reader.into_stream().map(|r| r.map_err(Error::from)).boxed())
    }

    /// One aggregate query ([`bucket_counts_sql`](ClickHouseTable::bucket_counts_sql))
    /// instead of reading the span.
    async fn bucket_counts(&self, grid: &BucketGrid) -> Result<Vec<u64>, Error> {
        Ok(self.bucket_counts_inner(grid).await?)
    }
}
