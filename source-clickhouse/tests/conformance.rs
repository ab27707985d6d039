//! Core's Source conformance suite (`offload_core::conformance::source`)
//! against real ClickHouse tables on the chdb front: one test per check,
//! each on a fresh database.
//!
//! Two table shapes: `DateTime64(6)` timestamps with a `UInt64` sequence, and
//! `DateTime64(3)` timestamps with an `Int64` sequence (positions then fall on
//! whole milliseconds, as the suite places them when "now" does).
//!
//! Not run on a table whose sequence is derived from key columns
//! (`ClickHouseTableOptions::key_columns`): the suite inserts rows at
//! sequences it chooses, and a derived sequence is a hash of the key, so no
//! fixture can place a row at a chosen sequence. `tests/derived.rs` checks
//! the same properties on the positions the server computes.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use common::TestDb;
use offload_core::conformance::source::{SourceFixture, TableSpec};
use offload_core::{Error, Source, TableConfig};
use offload_source_clickhouse::ident::quote_identifier;
use offload_source_clickhouse::{ClickHouseError, ClickHouseSource, UInt64Mapping};

/// A fresh database on the shared front, and a source reading it.
struct ClickHouseFixture {
    db: TestDb,
    source: Arc<ClickHouseSource>,
    /// Timestamp column type; its precision (3 or 6).
    precision: u8,
    /// Sequence column type.
    seq_type: &'static str,
}

impl ClickHouseFixture {
    fn new(precision: u8, seq_type: &'static str) -> Self {
        let db = TestDb::new("conformance");
        // The suite reads sequences as UInt64/Int64 Arrow columns: UInt64 as
        // Int64 (checked), not the exact Decimal(20, 0) default.
        let source = Arc::new(db.source().uint64_mapping(UInt64Mapping::Int64).build().unwrap());
        ClickHouseFixture {
            db,
            source,
            precision,
            seq_type,
        }
    }

    fn table_sql(&self, table: &TableConfig) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.db.name),
            quote_identifier(table.source_table())
        )
    }

    async fn execute(&self, sql: &str) -> Result<(), Error> {
        self.source
            .client()
            .query(sql)
            .execute()
            .await
            .map_err(|e| ClickHouseError::from(e).into())
    }
}

#[async_trait]
impl SourceFixture for ClickHouseFixture {
    fn source(&self) -> Arc<dyn Source> {
        self.source.clone()
    }

    async fn create_table(&self, spec: &TableSpec) -> Result<TableConfig, Error> {
        let table = TableConfig::builder(spec.name.clone())
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(spec.lag)
            .batch_size(spec.batch_size)
            .build()?;
        self.execute(&format!(
            "CREATE TABLE {} (ts DateTime64({}, 'UTC'), seq {}, payload String) \
             ENGINE = MergeTree ORDER BY (ts, seq) SETTINGS index_granularity = 8",
            self.table_sql(&table),
            self.precision,
            self.seq_type
        ))
        .await?;
        Ok(table)
    }

    async fn insert(&self, table: &TableConfig, rows: &[(i64, u64)]) -> Result<(), Error> {
        let scale = 10i64.pow(6 - u32::from(self.precision));
        let values: Vec<String> = rows
            .iter()
            .map(|&(ts, seq)| {
                assert_eq!(
                    ts.rem_euclid(scale),
                    0,
                    "the suite placed a row at {ts} µs, finer than DateTime64({})",
                    self.precision
                );
                format!("(fromUnixTimestamp64Micro(toInt64({ts}), 'UTC'), {seq}, 'row {ts} {seq}')")
            })
            .collect();
        // One synchronous INSERT: the rows are visible when it returns.
        self.execute(&format!(
            "INSERT INTO {} (ts, seq, payload) VALUES {}",
            self.table_sql(table),
            values.join(", ")
        ))
        .await
    }

    async fn now(&self) -> Result<SystemTime, Error> {
        // The server's clock, the one the high watermark's lag is measured on,
        // at the column's precision.
        let micros: i64 = self
            .source
            .client()
            .query("SELECT toUnixTimestamp64Micro(now64(6))")
            .fetch_one()
            .await
            .map_err(ClickHouseError::from)?;
        let scale = 10i64.pow(6 - u32::from(self.precision));
        let micros = u64::try_from(micros - micros.rem_euclid(scale)).expect("after 1970");
        Ok(UNIX_EPOCH + Duration::from_micros(micros))
    }
}

mod micros {
    use super::*;

    async fn fixture() -> ClickHouseFixture {
        ClickHouseFixture::new(6, "UInt64")
    }

    offload_core::source_conformance_tests!(fixture);
}

mod millis {
    use super::*;

    async fn fixture() -> ClickHouseFixture {
        ClickHouseFixture::new(3, "Int64")
    }

    offload_core::source_conformance_tests!(fixture);
}
