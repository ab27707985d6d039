//! Derived sequences: a position for tables that have no sequence column.
//!
//! The engine orders rows by `(timestamp, sequence)` and the late-row sweep
//! diffs the two sides by that position, so positions must be unique. A table
//! with only a timestamp and a unique key of one or more columns (say
//! `(symbol, trade_id)`) gets its sequence **computed by ClickHouse** from
//! the key ([`ClickHouseTableOptions::key_columns`](crate::ClickHouseTableOptions::key_columns)):
//!
//! ```text
//! toInt64(bitShiftRight(sipHash64(`k1`, `k2`, ...), 1))
//! ```
//!
//! SipHash-2-4 with ClickHouse's fixed key over each key column's value as
//! ClickHouse stores it (strings as their bytes, integers as their
//! little-endian binary of the column's width, ...; `LowCardinality(T)`
//! hashes like `T`), combined in key order; the top bit is dropped so the
//! value is a non-negative `Int64`. That type maps to Arrow `Int64` and
//! Iceberg `long` whatever the source's `UInt64` mapping, so the column is
//! materialised into Iceberg like any other column and everything downstream
//! (sink, sweep, reconciliation) sees an ordinary sequence column.
//!
//! The expression is the same in every query the source sends (window
//! predicate, high watermark, bucket counts, SELECT list) and in
//! `offload-reconcile`, which calls [`sequence_sql`] too.
//!
//! Consequences, documented in the README:
//!
//! * Windows stay exactly once even when two rows' hashes collide: a window
//!   edge is a position, rows with equal positions fall on the same side.
//! * The sweep compares positions as a multiset per bucket, so it could miss
//!   one of two *colliding* rows with the same microsecond if only one of
//!   them arrived late: probability about `2^-63` per pair of rows sharing a
//!   microsecond.
//! * The key must be unique per row (two rows with equal keys and timestamps
//!   have one position, as with a duplicated sequence).
//! * A key column's type is part of the hash: changing it (e.g. `UInt32` to
//!   `UInt64`) changes every position; offload into a new table then.

use crate::ident::quote_identifier;

/// The ClickHouse type of a derived sequence (the type of [`sequence_sql`]).
pub const SEQUENCE_TYPE: &str = "Int64";

/// The sequence column's name when a configuration gives key columns and no
/// sequence column (`offload`'s TOML does this; the library itself always
/// takes the name from `TableConfig::sequence_column`).
pub const DEFAULT_SEQUENCE_COLUMN: &str = "_offload_key";

/// The ClickHouse SQL of the derived sequence over `key_columns`, each
/// quoted. The names must already be validated (as
/// [`ClickHouseTableOptions::validate`](crate::ClickHouseTableOptions::validate) does).
///
/// ```
/// use offload_source_clickhouse::derived::sequence_sql;
/// assert_eq!(
///     sequence_sql(&["symbol", "trade`id"]),
///     "toInt64(bitShiftRight(sipHash64(`symbol`, `trade\\`id`), 1))"
/// );
/// ```
pub fn sequence_sql<S: AsRef<str>>(key_columns: &[S]) -> String {
    let keys: Vec<String> = key_columns.iter().map(|k| quote_identifier(k.as_ref())).collect();
    format!("toInt64(bitShiftRight(sipHash64({}), 1))", keys.join(", "))
}
