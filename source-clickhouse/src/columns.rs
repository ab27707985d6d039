//! Column discovery: a table's columns from `system.columns`, with their
//! types parsed by [`ChType::parse`].
//!
//! This is what [`ClickHouseSource`](crate::ClickHouseSource) reads when it
//! opens a table; it is public so that other tools (reconciliation, schema
//! checks) see a ClickHouse table exactly as the source does.
//!
//! ```no_run
//! use offload_source_clickhouse::columns;
//! use offload_source_clickhouse::ident::TableRef;
//! use offload_source_clickhouse::types::ChType;
//!
//! # async fn run() -> Result<(), offload_source_clickhouse::ClickHouseError> {
//! let client = clickhouse::Client::default().with_url("http://localhost:8123");
//! let table = columns::discover(&client, &TableRef::parse("market.bronze_trades")?).await?;
//! for column in table.stored() {
//!     match column.data_type()?.base() {
//!         ChType::DateTime64 { precision, .. } => println!("{}: ticks of 1e-{precision} s", column.name),
//!         other => println!("{}: {other}", column.name),
//!     }
//! }
//! # Ok(()) }
//! ```

use clickhouse::Client;

use crate::ClickHouseError;
use crate::ident::{TableRef, quote_identifier};
use crate::types::{ChType, ParseError};

/// How a column gets its value (`system.columns.default_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColumnKind {
    /// An ordinary stored column (no default, or `DEFAULT expr`).
    Ordinary,
    /// `MATERIALIZED expr`: stored, computed on insert, left out of `SELECT *`.
    Materialized,
    /// `ALIAS expr`: not stored, computed on read.
    Alias,
    /// `EPHEMERAL`: not stored at all, cannot be read.
    Ephemeral,
}

impl ColumnKind {
    fn from_default_kind(kind: &str) -> ColumnKind {
        match kind {
            "MATERIALIZED" => ColumnKind::Materialized,
            "ALIAS" => ColumnKind::Alias,
            "EPHEMERAL" => ColumnKind::Ephemeral,
            _ => ColumnKind::Ordinary,
        }
    }

    /// Whether the column's values are stored in the table (ordinary and
    /// `MATERIALIZED` columns).
    pub fn is_stored(self) -> bool {
        matches!(self, ColumnKind::Ordinary | ColumnKind::Materialized)
    }
}

/// One column of a table, as `system.columns` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Column {
    /// The column's name, unquoted.
    pub name: String,
    /// The type exactly as the server printed it (for messages and reports).
    pub type_name: String,
    /// How the column gets its value.
    pub kind: ColumnKind,
    parsed: Result<ChType, ParseError>,
}

impl Column {
    /// A column named `name` of type `type_name` (parsed here).
    pub fn new(name: impl Into<String>, type_name: impl Into<String>, kind: ColumnKind) -> Column {
        let type_name = type_name.into();
        Column {
            name: name.into(),
            parsed: ChType::parse(&type_name),
            type_name,
            kind,
        }
    }

    /// The parsed type, or [`ClickHouseError::UnsupportedType`] naming the
    /// column when its type text could not be parsed. (A well-formed type
    /// this crate does not map parses as [`ChType::Unsupported`].)
    pub fn data_type(&self) -> Result<&ChType, ClickHouseError> {
        self.parsed
            .as_ref()
            .map_err(|e| ClickHouseError::UnsupportedType {
                column: self.name.clone(),
                type_name: self.type_name.clone(),
                reason: format!("cannot parse the type: {}", e.message()),
            })
    }
}

/// A table's columns in table order, and where the table was found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableColumns {
    /// The database the table was found in (the client's current database
    /// when the reference named none).
    pub database: String,
    /// The table's name, unquoted.
    pub table: String,
    /// Every column, in table order (`ALIAS` and `EPHEMERAL` ones included;
    /// see [`stored`](Self::stored)).
    pub columns: Vec<Column>,
}

impl TableColumns {
    /// The column named `name`.
    pub fn get(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The stored columns (ordinary and `MATERIALIZED`), in table order:
    /// what this crate reads when no column list is configured.
    pub fn stored(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.kind.is_stored())
    }

    /// `` `database`.`table` ``, quoted for SQL.
    pub fn quoted_table(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.database),
            quote_identifier(&self.table)
        )
    }
}

/// Lists the columns of `table` from `system.columns`.
///
/// A reference without a database resolves in the client's current database
/// (`Client::with_database`, else the user's default). Names travel as bound
/// query parameters, never as SQL text. Fails with
/// [`ClickHouseError::TableNotFound`] when the table has no visible columns
/// (it does not exist, or the user may not see it); server and transport
/// errors are classified as everywhere in this crate. The call has no
/// deadline of its own: bound it with the caller's (for the source, core's
/// `layer::Timeout`).
pub async fn discover(client: &Client, table: &TableRef) -> Result<TableColumns, ClickHouseError> {
    let db_sql = if table.database.is_some() {
        "{db:String}"
    } else {
        "currentDatabase()"
    };
    let sql = format!(
        "SELECT name, type, default_kind, toString({db_sql}) FROM system.columns \
         WHERE database = {db_sql} AND table = {{tbl:String}} ORDER BY position"
    );
    let mut query = client.query_raw(&sql).param("tbl", table.table.as_str());
    if let Some(db) = &table.database {
        query = query.param("db", db.as_str());
    }
    let rows: Vec<(String, String, String, String)> =
        query.fetch_all().await.map_err(ClickHouseError::from_client)?;
    let Some(database) = rows.first().map(|r| r.3.clone()) else {
        return Err(ClickHouseError::TableNotFound {
            database: table
                .database
                .clone()
                .unwrap_or_else(|| "currentDatabase()".into()),
            table: table.table.clone(),
        });
    };
    Ok(TableColumns {
        database,
        table: table.table.clone(),
        columns: rows
            .into_iter()
            .map(|(name, type_name, kind, _)| {
                Column::new(name, type_name, ColumnKind::from_default_kind(&kind))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_parse_and_classify() {
        let c = Column::new("ts", "DateTime64(3, 'UTC')", ColumnKind::from_default_kind(""));
        assert_eq!(c.kind, ColumnKind::Ordinary);
        assert!(matches!(
            c.data_type().unwrap(),
            ChType::DateTime64 { precision: 3, .. }
        ));
        let bad = Column::new("x", "Array(Int32", ColumnKind::Ordinary);
        assert!(matches!(
            bad.data_type(),
            Err(ClickHouseError::UnsupportedType { column, .. }) if column == "x"
        ));
        assert!(!ColumnKind::from_default_kind("ALIAS").is_stored());
        assert!(!ColumnKind::from_default_kind("EPHEMERAL").is_stored());
        assert!(ColumnKind::from_default_kind("MATERIALIZED").is_stored());
        assert!(ColumnKind::from_default_kind("DEFAULT").is_stored());
        let t = TableColumns {
            database: "d`b".into(),
            table: "t".into(),
            columns: vec![c, bad, Column::new("a", "UInt8", ColumnKind::Alias)],
        };
        assert_eq!(t.quoted_table(), "`d\\`b`.`t`");
        assert_eq!(t.stored().count(), 2);
        assert_eq!(t.get("a").map(|c| c.kind), Some(ColumnKind::Alias));
    }
}
