//! The ClickHouse layer: per-bucket figures computed by ClickHouse itself
//! (one aggregation query, nothing but the result leaves the server), key
//! listings for small differences, and Kafka offset gaps and duplicates.

use std::collections::BTreeMap;

use clickhouse::Client;
use offload_source_clickhouse::columns::{self, Column};
use offload_source_clickhouse::ident::TableRef;
use offload_source_clickhouse::types::ChType;
use serde::Deserialize;

use crate::fingerprint::ContentKind;
#[cfg(feature = "kafka")]
use crate::report::OffsetRange;
use crate::report::{ExactSum, Figures};
use crate::{Bucket, Error, TimeRange};

/// ClickHouse as a reconciliation layer.
///
/// Takes a configured [`clickhouse::Client`] (URL, credentials, database,
/// compression), so it works with whatever connection settings the rest of
/// the deployment uses.
///
/// ```
/// let layer = offload_reconcile::ClickHouseLayer::new(
///     clickhouse::Client::default().with_url("http://localhost:8123"),
/// );
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ClickHouseLayer {
    client: Client,
}

impl std::fmt::Debug for ClickHouseLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseLayer").finish_non_exhaustive()
    }
}

/// A ClickHouse column's type: the text the server prints (for reports) and
/// the type parsed by the source's own parser
/// ([`offload_source_clickhouse::types::ChType`]), so both crates read every
/// type name the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColumnType {
    /// The full type text, as the server prints it.
    pub text: String,
    pub nullable: bool,
    /// The type without `Nullable` / `LowCardinality`; `Unsupported` when the
    /// text does not parse.
    pub base: ChType,
}

impl ColumnType {
    /// The type of a column as [`columns::discover`] lists it.
    pub(crate) fn of(column: &Column) -> ColumnType {
        match column.data_type() {
            Ok(t) => ColumnType {
                text: column.type_name.clone(),
                nullable: t.is_nullable(),
                base: t.base().clone(),
            },
            Err(_) => ColumnType {
                text: column.type_name.clone(),
                nullable: false,
                base: ChType::Unsupported(column.type_name.clone()),
            },
        }
    }

    /// The fingerprint encoding of the type, or why it has none.
    pub(crate) fn content_kind(&self) -> Result<ContentKind, String> {
        kind_of(&self.base)
    }
}

/// The fingerprint encoding of a ClickHouse type (wrappers included), or why
/// it has none: every type the offload maps has one, nested types recursively.
fn kind_of(t: &ChType) -> Result<ContentKind, String> {
    Ok(match t.base() {
        // Int128/Int256 and their unsigned twins are offloaded as decimal(38, 0)
        // (a value beyond fails the read), so what Iceberg holds fits an i128.
        ChType::Int {
            bits: 8 | 16 | 32 | 64 | 128 | 256,
            ..
        }
        | ChType::Bool => ContentKind::Int,
        // Decimal(P > 38, S) is offloaded as decimal(38, S), checked, likewise.
        ChType::Decimal { scale, .. } if *scale <= 38 => ContentKind::Decimal { scale: *scale },
        ChType::Decimal { .. } => {
            return Err("decimals with more than 38 fractional digits are not offloaded".into());
        }
        ChType::Float32 | ChType::Float64 | ChType::BFloat16 => ContentKind::Float,
        // String and FixedString: hashed as stored; Enum, IPv4, IPv6: as
        // their `toString` text (how they are offloaded); UUID: its 16 bytes
        // in RFC 4122 order (the offload's `arrow.uuid`, Iceberg's `uuid`).
        ChType::String
        | ChType::FixedString(_)
        | ChType::Enum { .. }
        | ChType::Ipv4
        | ChType::Ipv6
        | ChType::Uuid => ContentKind::String,
        ChType::DateTime { .. } | ChType::DateTime64 { .. } => ContentKind::Timestamp,
        ChType::Date | ChType::Date32 => ContentKind::Date,
        ChType::Array(e) => ContentKind::Array {
            element: Box::new(kind_of(e).map_err(|r| format!("array element: {r}"))?),
        },
        ChType::Nested(fields) => ContentKind::Array {
            element: Box::new(ContentKind::Tuple {
                fields: fields
                    .iter()
                    .map(|(n, t)| kind_of(t).map_err(|r| format!("nested field {n}: {r}")))
                    .collect::<Result<_, _>>()?,
            }),
        },
        ChType::Map(k, v) => ContentKind::Map {
            key: Box::new(kind_of(k).map_err(|r| format!("map key: {r}"))?),
            value: Box::new(kind_of(v).map_err(|r| format!("map value: {r}"))?),
        },
        ChType::Tuple(fields) => ContentKind::Tuple {
            fields: fields
                .iter()
                .enumerate()
                .map(|(i, (_, t))| kind_of(t).map_err(|r| format!("tuple field {}: {r}", i + 1)))
                .collect::<Result<_, _>>()?,
        },
        ChType::Int { bits, .. } => return Err(format!("no {bits}-bit integer type")),
        ChType::Unsupported(text) => {
            return Err(format!("{text} is not offloaded, so there is nothing to compare"));
        }
        _ => return Err("no fingerprint encoding for this type".into()),
    })
}

pub(crate) use offload_source_clickhouse::ident::quote_identifier as quote_ident;

/// Quotes a table reference `table` or `db.table` (either part backtick-quoted
/// when it holds a dot), parsed by the ClickHouse source's own rules so both
/// crates accept exactly the same names.
pub(crate) fn quote_table(text: &str) -> Result<String, Error> {
    table_ref(text).map(|t| t.quoted(None))
}

fn table_ref(text: &str) -> Result<TableRef, Error> {
    TableRef::parse(text).map_err(|e| Error::InvalidConfig {
        field: "clickhouse table",
        reason: e.to_string(),
    })
}

#[cfg(feature = "kafka")]
/// The partitions whose offset range `[lo, hi)` holds at least one offset.
fn live_partitions(bounds: &BTreeMap<i32, (i64, i64)>) -> BTreeMap<i32, (i64, i64)> {
    bounds
        .iter()
        .filter(|(_, b)| b.0 < b.1)
        .map(|(p, b)| (*p, *b))
        .collect()
}

/// What to compute for a table on the ClickHouse side.
#[derive(Clone, Debug)]
pub(crate) struct ChPlan {
    pub table_sql: String,
    pub ts: (String, ColumnType),
    pub seq: (String, ColumnType),
    /// The sequence's SQL when it is derived from key columns (the ClickHouse
    /// source's [`derived::sequence_sql`](offload_source_clickhouse::derived::sequence_sql)),
    /// `None` for a stored sequence column.
    pub seq_sql: Option<String>,
    pub content: Vec<(String, ColumnType, ContentKind)>,
    pub sums: Vec<(String, ColumnType, ContentKind)>,
    pub kafka_columns: Option<(String, String)>,
    pub range: TimeRange,
    /// Split every bucket at this watermark (`Some(None)`: nothing committed,
    /// every row is beyond it; `None`: no split wanted).
    pub split: Option<Option<offload_core::Watermark>>,
    pub full: bool,
}

/// One row of the figures query, keyed by (bucket start, at or below the watermark).
pub(crate) type ChFigures = BTreeMap<(i64, bool), Figures>;

impl ChPlan {
    /// `Int64` microseconds since the epoch, floored, of the timestamp column.
    fn ts_us(&self) -> Result<String, Error> {
        ts_micros_sql(&quote_ident(&self.ts.0), &self.ts.1.base).ok_or_else(|| Error::UnsupportedColumn {
            column: self.ts.0.clone(),
            type_name: self.ts.1.text.clone(),
            role: "timestamp",
            reason: "expected DateTime or DateTime64".into(),
        })
    }

    fn seq_u(&self) -> Result<String, Error> {
        let c = match &self.seq_sql {
            Some(sql) => sql.clone(),
            None => quote_ident(&self.seq.0),
        };
        match self.seq.1.base {
            ChType::Int {
                signed: false,
                bits: 8 | 16 | 32 | 64,
            } => Ok(format!("toUInt64({c})")),
            // Negative sequences wrap like `i64 as u64` in Rust.
            ChType::Int {
                signed: true,
                bits: 8 | 16 | 32 | 64,
            } => Ok(format!("reinterpretAsUInt64(toInt64({c}))")),
            _ => Err(Error::UnsupportedColumn {
                column: self.seq.0.clone(),
                type_name: self.seq.1.text.clone(),
                role: "sequence",
                reason: "expected an integer of at most 64 bits".into(),
            }),
        }
    }

    /// `WITH` aliases `__ts`, `__seq` and the range filter.
    fn prelude(&self) -> Result<(String, String), Error> {
        let with = format!("WITH {} AS __ts, {} AS __seq", self.ts_us()?, self.seq_u()?);
        let mut filter = format!("__ts >= {} AND __ts < {}", self.range.start(), self.range.end());
        // Also compare the raw column, so ClickHouse can use the primary key
        // and partition pruning (exact for DateTime64 at any precision, since
        // the edges are whole microseconds).
        if let ChType::DateTime64 { .. } = self.ts.1.base {
            let c = quote_ident(&self.ts.0);
            filter = format!(
                "{c} >= fromUnixTimestamp64Micro(toInt64({}), 'UTC') AND {c} < fromUnixTimestamp64Micro(toInt64({}), 'UTC') AND {filter}",
                self.range.start(),
                self.range.end()
            );
        }
        Ok((with, filter))
    }

    fn key_bytes_sql() -> &'static str {
        "reinterpretAsFixedString(__ts), reinterpretAsFixedString(__seq)"
    }

    fn row_hash_sql(&self) -> String {
        let mut parts = vec![Self::key_bytes_sql().to_owned()];
        for (name, ty, _) in &self.content {
            parts.push(encode_sql(&quote_ident(name), ty));
        }
        format!("xxHash64(concat({}))", parts.join(", "))
    }

    fn committed_sql(&self) -> String {
        match self.split {
            None => "1".into(),
            Some(None) => "0".into(),
            Some(Some(w)) => format!(
                "tuple(__ts, __seq) <= tuple(toInt64({}), toUInt64({}))",
                w.timestamp_micros(),
                w.sequence()
            ),
        }
    }

    pub(crate) fn figures_sql(&self) -> Result<String, Error> {
        let (with, filter) = self.prelude()?;
        let w = self.range.size().micros();
        let mut cols = vec![
            format!("__ts - positiveModulo(__ts, toInt64({w})) AS __bucket"),
            format!("toUInt8({}) AS __committed", self.committed_sql()),
            "count() AS __rows".to_owned(),
        ];
        if self.full {
            cols.push("uniqExact(__ts, __seq) AS __distinct".into());
            cols.push(match &self.kafka_columns {
                Some((p, o)) => format!(
                    "uniqExact(toInt32({}), toInt64({}))",
                    quote_ident(p),
                    quote_ident(o)
                ),
                None => "toUInt64(0)".into(),
            });
            cols.push(format!(
                "sumWithOverflow(xxHash64(concat({})))",
                Self::key_bytes_sql()
            ));
            cols.push(format!("sumWithOverflow({})", self.row_hash_sql()));
            for (name, ty, kind) in &self.sums {
                cols.push(sum_sql(&quote_ident(name), ty, kind));
            }
        } else if let Some((p, o)) = &self.kafka_columns {
            // Counting offsets is cheap and exact; keep it even in counts-only mode.
            cols.push("toUInt64(0)".into());
            cols.push(format!(
                "uniqExact(toInt32({}), toInt64({}))",
                quote_ident(p),
                quote_ident(o)
            ));
        }
        Ok(format!(
            "{with} SELECT {} FROM {} WHERE {filter} GROUP BY __bucket, __committed ORDER BY __bucket, __committed",
            cols.join(", "),
            self.table_sql
        ))
    }

    fn parse_figures(&self, tsv: &str) -> Result<ChFigures, Error> {
        let mut out = ChFigures::new();
        for line in tsv.lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let num = |i: usize| -> Result<u64, Error> {
                f.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| Error::Parse {
                    what: "ClickHouse figures",
                    text: line.chars().take(200).collect(),
                    reason: format!("field {i} is not an unsigned integer"),
                })
            };
            let bucket: i64 = f
                .first()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Parse {
                    what: "ClickHouse figures",
                    text: line.chars().take(200).collect(),
                    reason: "bucket is not an integer".into(),
                })?;
            let committed = num(1)? == 1;
            let mut fig = Figures::counted(num(2)?);
            if self.full {
                fig.distinct_keys = Some(num(3)?);
                fig.distinct_offsets = self.kafka_columns.as_ref().map(|_| num(4)).transpose()?;
                fig.key_fingerprint = Some(num(5)?);
                fig.content_fingerprint = Some(num(6)?);
                for (i, (name, _, kind)) in self.sums.iter().enumerate() {
                    // ClickHouse returns the unscaled integer (value × 10^scale).
                    let text = f.get(7 + i).copied().unwrap_or("");
                    let unscaled = ExactSum::parse_scaled(text, 0)?.unscaled;
                    fig.sums
                        .insert(name.clone(), ExactSum::new(unscaled, kind.scale()));
                }
            } else if self.kafka_columns.is_some() {
                fig.distinct_offsets = Some(num(4)?);
            }
            out.insert((bucket, committed), fig);
        }
        Ok(out)
    }

    /// Every key of one bucket with its row hash, sorted.
    pub(crate) fn keys_sql(&self, bucket: Bucket, committed_only: bool) -> Result<String, Error> {
        let (with, filter) = self.prelude()?;
        let committed = if committed_only {
            format!(" AND {}", self.committed_sql())
        } else {
            String::new()
        };
        Ok(format!(
            "{with} SELECT __ts AS __rk_ts, __seq AS __rk_seq, {} AS __rk_hash FROM {} WHERE {filter} AND __ts >= {} AND __ts < {}{committed} ORDER BY __rk_ts, __rk_seq, __rk_hash",
            self.row_hash_sql(),
            self.table_sql,
            bucket.start,
            bucket.end
        ))
    }

    /// Keys stored more than once in one bucket (ClickHouse's own duplicates).
    pub(crate) fn duplicate_keys_sql(&self, bucket: Bucket, limit: usize) -> Result<String, Error> {
        let (with, filter) = self.prelude()?;
        Ok(format!(
            "{with} SELECT __ts AS __rk_ts, __seq AS __rk_seq, count() AS __rk_copies FROM {} WHERE {filter} AND __ts >= {} AND __ts < {} GROUP BY __rk_ts, __rk_seq HAVING __rk_copies > 1 ORDER BY __rk_ts, __rk_seq LIMIT {limit}",
            self.table_sql, bucket.start, bucket.end
        ))
    }

    #[cfg(feature = "kafka")]
    /// The distinct (partition, offset) pairs inside Kafka's `[lo, hi)` per partition.
    fn offsets_subquery(&self, bounds: &BTreeMap<i32, (i64, i64)>, with_ts: bool) -> Result<String, Error> {
        let (p, o) = self.kafka_columns.as_ref().ok_or_else(|| Error::InvalidConfig {
            field: "kafka columns",
            reason: "the ClickHouse table has no Kafka partition/offset columns".into(),
        })?;
        let parts: Vec<String> = bounds.keys().map(ToString::to_string).collect();
        let los: Vec<String> = bounds.values().map(|b| b.0.to_string()).collect();
        let his: Vec<String> = bounds.values().map(|b| b.1.to_string()).collect();
        let ts = if with_ts {
            format!(", {} AS __t", self.ts_us()?)
        } else {
            String::new()
        };
        Ok(format!(
            "SELECT toInt32({}) AS __p, toInt64({}) AS __o, \
             transform(__p, CAST([{}] AS Array(Int32)), CAST([{}] AS Array(Int64)), toInt64(0)) AS __lo, \
             transform(__p, CAST([{}] AS Array(Int32)), CAST([{}] AS Array(Int64)), toInt64(0)) AS __hi{ts} \
             FROM {} WHERE __o >= __lo AND __o < __hi",
            quote_ident(p),
            quote_ident(o),
            parts.join(","),
            los.join(","),
            parts.join(","),
            his.join(","),
            self.table_sql
        ))
    }
}

/// `Int64` µs (floored) of a timestamp column expression.
pub(crate) fn ts_micros_sql(c: &str, ty: &ChType) -> Option<String> {
    match ty.base() {
        ChType::DateTime64 { precision, .. } if *precision <= 6 => {
            Some(format!("toUnixTimestamp64Micro({c})"))
        }
        // toUnixTimestamp64Micro truncates towards zero; the offload engine
        // floors (towards the past), so floor explicitly.
        ChType::DateTime64 { .. } => Some(format!(
            "intDiv(toUnixTimestamp64Nano({c}) - positiveModulo(toUnixTimestamp64Nano({c}), toInt64(1000)), toInt64(1000))"
        )),
        ChType::DateTime { .. } => Some(format!("toInt64(toUnixTimestamp({c})) * 1000000")),
        _ => None,
    }
}

/// The `enc(v)` bytes of the fingerprint definition for one column, as
/// arguments of `concat`.
pub(crate) fn encode_sql(c: &str, ty: &ColumnType) -> String {
    let t = if ty.nullable {
        ChType::Nullable(Box::new(ty.base.clone()))
    } else {
        ty.base.clone()
    };
    enc_sql(c, &t, 0)
}

/// `enc(v)` of the value expression `v` of type `t` (wrappers included), as
/// arguments of `concat`. `depth` names the lambda variables of nested
/// arrays and maps apart.
fn enc_sql(v: &str, t: &ChType, depth: usize) -> String {
    if t.is_nullable() {
        let payload = payload_sql(&format!("assumeNotNull({v})"), t.base(), depth);
        format!("if(isNull({v}), char(0), concat(char(1), {payload}))")
    } else {
        format!("char(1), {}", payload_sql(v, t.base(), depth))
    }
}

/// `payload(v)` of a value of the (unwrapped) type `t`, as arguments of
/// `concat`: the same bytes as `RowHasher` produces in Rust.
fn payload_sql(v: &str, t: &ChType, depth: usize) -> String {
    // A String of its arguments' bytes, for arrayStringConcat and arraySort
    // (concat of FixedStrings keeps their zero padding).
    let string = |parts: String| format!("concat('', {parts})");
    let count = |n: String| format!("reinterpretAsFixedString(toUInt64({n}))");
    match t {
        ChType::Int { .. } | ChType::Bool => format!("reinterpretAsFixedString(toInt128({v}))"),
        ChType::Decimal { precision, scale } if *precision <= 38 => {
            format!("reinterpretAsFixedString(reinterpret(toDecimal128({v}, {scale}), 'Int128'))")
        }
        // Wider decimals: the unscaled Int256, of which Iceberg holds only
        // values that fit decimal(38, S), hence an i128.
        ChType::Decimal { scale, .. } => {
            format!("reinterpretAsFixedString(toInt128(reinterpret(toDecimal256({v}, {scale}), 'Int256')))")
        }
        ChType::Float32 | ChType::Float64 | ChType::BFloat16 => {
            format!("reinterpretAsFixedString(toFloat64({v}))")
        }
        // FixedString keeps its zero padding (a CAST to String would strip it);
        // `length` counts bytes.
        ChType::String | ChType::FixedString(_) => format!("{}, {v}", count(format!("length({v})"))),
        ChType::Enum { .. } | ChType::Ipv4 | ChType::Ipv6 => {
            format!("{}, toString({v})", count(format!("length(toString({v}))")))
        }
        ChType::Uuid => format!("{}, UUIDStringToNum(toString({v}))", count("16".into())),
        ChType::DateTime { .. } | ChType::DateTime64 { .. } => {
            let us = ts_micros_sql(v, t).unwrap_or_else(|| format!("toInt64({v})"));
            format!("reinterpretAsFixedString(toInt64({us}))")
        }
        ChType::Date | ChType::Date32 => format!("reinterpretAsFixedString(toInt32({v}))"),
        ChType::Array(e) => {
            let x = format!("__rk_e{depth}");
            format!(
                "{}, arrayStringConcat(arrayMap({x} -> {}, {v}))",
                count(format!("length({v})")),
                string(enc_sql(&x, e, depth + 1))
            )
        }
        ChType::Nested(fields) => {
            let tuple = ChType::Tuple(fields.iter().map(|(n, t)| (Some(n.clone()), t.clone())).collect());
            payload_sql(v, &ChType::Array(Box::new(tuple)), depth)
        }
        ChType::Map(k, val) => {
            let (xk, xv) = (format!("__rk_k{depth}"), format!("__rk_v{depth}"));
            format!(
                "{}, arrayStringConcat(arraySort(arrayMap(({xk}, {xv}) -> concat({}, {}), mapKeys({v}), mapValues({v}))))",
                count(format!("length({v})")),
                enc_sql(&xk, k, depth + 1),
                enc_sql(&xv, val, depth + 1)
            )
        }
        ChType::Tuple(fields) if fields.is_empty() => "''".into(),
        ChType::Tuple(fields) => fields
            .iter()
            .enumerate()
            .map(|(i, (_, ft))| enc_sql(&format!("tupleElement({v}, {})", i + 1), ft, depth))
            .collect::<Vec<_>>()
            .join(", "),
        ChType::Nullable(_) | ChType::LowCardinality(_) => payload_sql(v, t.base(), depth),
        // No kind (see `kind_of`): never part of the content columns.
        _ => "''".into(),
    }
}

/// Exact sum of one column as the text of its unscaled integer.
fn sum_sql(c: &str, _ty: &ColumnType, kind: &ContentKind) -> String {
    match kind {
        ContentKind::Decimal { scale } => {
            format!("toString(reinterpret(sum(toDecimal256({c}, {scale})), 'Int256'))")
        }
        _ => format!("toString(sum(toInt256({c})))"),
    }
}

#[derive(clickhouse::Row, Deserialize)]
pub(crate) struct KeyRow {
    #[serde(rename = "__rk_ts")]
    pub ts: i64,
    #[serde(rename = "__rk_seq")]
    pub seq: u64,
    #[serde(rename = "__rk_hash")]
    pub hash: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct DupKeyRow {
    #[serde(rename = "__rk_ts")]
    ts: i64,
    #[serde(rename = "__rk_seq")]
    seq: u64,
    #[serde(rename = "__rk_copies")]
    copies: u64,
}

#[cfg(feature = "kafka")]
#[derive(clickhouse::Row, Deserialize)]
struct GapRow {
    #[serde(rename = "__rk_p")]
    p: i32,
    #[serde(rename = "__rk_from")]
    from: i64,
    #[serde(rename = "__rk_to")]
    to: i64,
}

#[cfg(feature = "kafka")]
#[derive(clickhouse::Row, Deserialize)]
struct TailRow {
    #[serde(rename = "__rk_p")]
    p: i32,
    #[serde(rename = "__rk_max")]
    max_offset: i64,
}

#[cfg(feature = "kafka")]
#[derive(clickhouse::Row, Deserialize)]
struct DupOffsetRow {
    #[serde(rename = "__rk_p")]
    p: i32,
    #[serde(rename = "__rk_o")]
    o: i64,
    #[serde(rename = "__rk_copies")]
    copies: u64,
    #[serde(rename = "__rk_t")]
    t: i64,
}

#[cfg(feature = "kafka")]
/// An offset stored more than once, with the (earliest) event time of its rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DupOffset {
    pub range: OffsetRange,
    pub ts: i64,
}

impl ClickHouseLayer {
    /// Wraps a configured client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// A client for `url` (e.g. `http://localhost:8123`) with default settings.
    ///
    /// ```
    /// let _ = offload_reconcile::ClickHouseLayer::from_url("http://localhost:8123");
    /// ```
    pub fn from_url(url: &str) -> Self {
        Self::new(Client::default().with_url(url))
    }

    /// Unqualified table names resolve in `database` (ClickHouse's `default` otherwise).
    ///
    /// ```
    /// let _ = offload_reconcile::ClickHouseLayer::from_url("http://localhost:8123").with_database("market");
    /// ```
    pub fn with_database(self, database: &str) -> Self {
        Self::new(self.client.with_database(database))
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn text(&self, sql: &str, context: &str) -> Result<String, Error> {
        let mut cursor = self
            .client
            .query_raw(sql)
            .fetch_bytes("TabSeparated")
            .map_err(Error::clickhouse(context))?;
        let bytes = cursor.collect().await.map_err(Error::clickhouse(context))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Parse {
            what: "ClickHouse response",
            text: String::new(),
            reason: e.to_string(),
        })
    }

    /// `(name, type)` of every column of `table` (`table` or `db.table`), in
    /// table order, discovered as the ClickHouse source discovers them
    /// ([`columns::discover`]).
    pub(crate) async fn describe(&self, table: &str) -> Result<Vec<(String, ColumnType)>, Error> {
        let found = columns::discover(&self.client, &table_ref(table)?)
            .await
            .map_err(|e| Error::Columns {
                table: table.to_owned(),
                source: Box::new(e),
            })?;
        Ok(found
            .columns
            .iter()
            .map(|c| (c.name.clone(), ColumnType::of(c)))
            .collect())
    }

    pub(crate) async fn figures(&self, plan: &ChPlan) -> Result<ChFigures, Error> {
        let sql = plan.figures_sql()?;
        let text = self.text(&sql, "per-bucket figures").await?;
        plan.parse_figures(&text)
    }

    pub(crate) async fn keys(
        &self,
        plan: &ChPlan,
        bucket: Bucket,
        committed_only: bool,
    ) -> Result<Vec<KeyRow>, Error> {
        let sql = plan.keys_sql(bucket, committed_only)?;
        self.client
            .query_raw(&sql)
            .fetch_all::<KeyRow>()
            .await
            .map_err(Error::clickhouse("list keys of a bucket"))
    }

    pub(crate) async fn duplicate_keys(
        &self,
        plan: &ChPlan,
        bucket: Bucket,
        limit: usize,
    ) -> Result<Vec<(i64, u64, u64)>, Error> {
        let sql = plan.duplicate_keys_sql(bucket, limit)?;
        let rows = self
            .client
            .query_raw(&sql)
            .fetch_all::<DupKeyRow>()
            .await
            .map_err(Error::clickhouse("list duplicate keys"))?;
        Ok(rows.into_iter().map(|r| (r.ts, r.seq, r.copies)).collect())
    }

    #[cfg(feature = "kafka")]
    /// Offset ranges inside `bounds` (per partition `[lo, hi)`) that ClickHouse
    /// does not hold, by partition and offset, at most `limit`. (The exact
    /// number of missing messages per bucket comes from the figures; this only
    /// names them.)
    pub(crate) async fn offset_gaps(
        &self,
        plan: &ChPlan,
        bounds: &BTreeMap<i32, (i64, i64)>,
        limit: usize,
    ) -> Result<Vec<OffsetRange>, Error> {
        let live = live_partitions(bounds);
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let sub = plan.offsets_subquery(&live, false)?;
        // Interior and leading gaps: the previous stored offset (or lo - 1 for
        // the first) is more than one below the current one.
        let sql = format!(
            "SELECT __p AS __rk_p, __prev + 1 AS __rk_from, __o AS __rk_to FROM (\
               SELECT __p, __o, ifNull(lagInFrame(toNullable(__o), 1) OVER \
                 (PARTITION BY __p ORDER BY __o ASC ROWS BETWEEN 1 PRECEDING AND CURRENT ROW), __lo - 1) AS __prev \
               FROM (SELECT DISTINCT __p, __o, __lo FROM ({sub}))\
             ) WHERE __o > __prev + 1 ORDER BY __rk_p, __rk_from LIMIT {limit}"
        );
        let rows = self
            .client
            .query_raw(&sql)
            .fetch_all::<GapRow>()
            .await
            .map_err(Error::clickhouse("find Kafka offset gaps"))?;
        let mut gaps: Vec<OffsetRange> = rows
            .into_iter()
            .map(|r| OffsetRange {
                partition: r.p,
                start: r.from,
                end: r.to,
                copies: 0,
            })
            .collect();
        // Trailing gaps and partitions with nothing stored at all.
        let tails = self
            .client
            .query_raw(&format!(
                "SELECT __p AS __rk_p, max(__o) AS __rk_max FROM ({sub}) GROUP BY __rk_p ORDER BY __rk_p"
            ))
            .fetch_all::<TailRow>()
            .await
            .map_err(Error::clickhouse("find the last stored Kafka offsets"))?;
        let maxes: BTreeMap<i32, i64> = tails.into_iter().map(|r| (r.p, r.max_offset)).collect();
        for (p, (lo, hi)) in &live {
            let from = maxes.get(p).map_or(*lo, |m| m + 1);
            if from < *hi {
                gaps.push(OffsetRange {
                    partition: *p,
                    start: from,
                    end: *hi,
                    copies: 0,
                });
            }
        }
        gaps.sort_by_key(|g| (g.partition, g.start));
        gaps.truncate(limit);
        Ok(gaps)
    }

    #[cfg(feature = "kafka")]
    /// Offsets inside `bounds` stored more than once, at most `limit`.
    pub(crate) async fn offset_duplicates(
        &self,
        plan: &ChPlan,
        bounds: &BTreeMap<i32, (i64, i64)>,
        limit: usize,
    ) -> Result<Vec<DupOffset>, Error> {
        let live = live_partitions(bounds);
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let sub = plan.offsets_subquery(&live, true)?;
        let sql = format!(
            "SELECT __p AS __rk_p, __o AS __rk_o, count() AS __rk_copies, min(__t) AS __rk_t FROM ({sub}) \
             GROUP BY __rk_p, __rk_o HAVING __rk_copies > 1 ORDER BY __rk_p, __rk_o LIMIT {limit}"
        );
        let rows = self
            .client
            .query_raw(&sql)
            .fetch_all::<DupOffsetRow>()
            .await
            .map_err(Error::clickhouse("find duplicated Kafka offsets"))?;
        Ok(rows
            .into_iter()
            .map(|r| DupOffset {
                range: OffsetRange {
                    partition: r.p,
                    start: r.o,
                    end: r.o + 1,
                    copies: r.copies,
                },
                ts: r.t,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> ColumnType {
        ColumnType::of(&Column::new("c", text, columns::ColumnKind::Ordinary))
    }

    #[test]
    fn types_parse() {
        let t = ty("LowCardinality(Nullable(String))");
        assert!(t.nullable);
        assert_eq!(t.base, ChType::String);
        assert_eq!(t.text, "LowCardinality(Nullable(String))");
        assert_eq!(
            ty("Nullable(Decimal(18, 4))").content_kind().unwrap(),
            ContentKind::Decimal { scale: 4 }
        );
        assert_eq!(
            ty("Decimal128(38)").content_kind().unwrap(),
            ContentKind::Decimal { scale: 38 }
        );
        assert!(matches!(
            ty("DateTime64(9, 'UTC')").base,
            ChType::DateTime64 { precision: 9, .. }
        ));
        assert!(matches!(
            ty("DateTime('Europe/Paris')").base,
            ChType::DateTime { .. }
        ));
        assert_eq!(
            ty("UInt64").base,
            ChType::Int {
                signed: false,
                bits: 64
            }
        );
        assert_eq!(ty("Enum8('a' = 1)").content_kind().unwrap(), ContentKind::String);
        // Every type the offload maps has an encoding, nested ones recursively.
        for (text, kind) in [
            ("UUID", "string"),
            ("Int256", "int"),
            ("UInt128", "int"),
            ("Decimal256(2)", "decimal(2)"),
            ("Array(Nullable(Int32))", "array(int)"),
            ("Array(Array(LowCardinality(String)))", "array(array(string))"),
            (
                "Map(LowCardinality(String), Array(Nullable(Decimal(18, 4))))",
                "map(string, array(decimal(4)))",
            ),
            (
                "Tuple(a DateTime64(3, 'UTC'), b Date32, IPv4)",
                "tuple(timestamp, date, string)",
            ),
            (
                "Nested(x Float32, y Enum8('a' = 1))",
                "array(tuple(float, string))",
            ),
            ("Nullable(Tuple(Bool))", "tuple(int)"),
        ] {
            assert_eq!(ty(text).content_kind().unwrap().to_string(), kind, "{text}");
        }
        for bad in [
            "JSON",
            "Array(JSON)",
            "Map(String, Dynamic)",
            "Tuple(Int32, Variant(String, UInt8))",
            "Array(Int32", // malformed: no encoding, not a failure
        ] {
            let err = ty(bad).content_kind().unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(
            ty("Map(String, Dynamic)")
                .content_kind()
                .unwrap_err()
                .starts_with("map value: Dynamic")
        );
    }

    #[test]
    fn tables_are_quoted() {
        assert_eq!(quote_table("db.t").unwrap(), "`db`.`t`");
        assert_eq!(quote_table("t").unwrap(), "`t`");
        assert_eq!(quote_table("`a.b`.`c``d`").unwrap(), "`a.b`.`c\\`d`");
        assert_eq!(quote_table("`we``ird`").unwrap(), "`we\\`ird`");
        // The source's rule: a backtick needs the part quoted (as the source reads it).
        for bad in ["", "a.b.c", "a.", "`x", "a\nb", "we`ird"] {
            assert!(quote_table(bad).is_err(), "{bad}");
        }
    }
}
