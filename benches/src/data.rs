//! The benchmark tables: DDL and generators that run inside ClickHouse, and
//! the content hash every output is checked with.

/// Database holding the benchmark tables.
pub const DATABASE: &str = "bench";

/// The seed's `bronze_trades` shape (MergeTree, ordered by the watermark pair).
pub fn bronze_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {DATABASE}.{table} (
            exchange_timestamp DateTime64(3, 'UTC'),
            sequence_number UInt64,
            symbol LowCardinality(String),
            price Decimal(18, 8),
            quantity Decimal(18, 8),
            quote_volume Decimal(18, 8),
            event_time DateTime64(3),
            kafka_offset UInt64,
            kafka_partition UInt16,
            ingestion_timestamp DateTime
        ) ENGINE = MergeTree ORDER BY (exchange_timestamp, sequence_number)"
    )
}

/// `rows` realistic trades: four per millisecond, centred on midnight
/// 2025-01-01 UTC so every run spans two day partitions; eight symbols with
/// their own price levels, prices on a 0.01 tick, quantities with five
/// decimals, Kafka offsets and partitions, an ingestion time a second later.
/// Deterministic: the same `rows` always gives the same table.
pub fn bronze_insert(table: &str, rows: u64) -> String {
    format!(
        "INSERT INTO {DATABASE}.{table} SELECT
            toDateTime64('2025-01-01 00:00:00', 3, 'UTC')
                + toIntervalMillisecond(intDiv(number, 4)) - toIntervalMillisecond(intDiv({rows}, 8)) AS ts,
            1000000000 + number,
            ['BTCUSDT', 'ETHUSDT', 'SOLUSDT', 'XRPUSDT', 'BNBUSDT', 'ADAUSDT', 'DOGEUSDT', 'AVAXUSDT'][sym + 1],
            toDecimal64(round([97000, 3400, 190, 2.3, 700, 0.9, 0.32, 38][sym + 1]
                * (1 + (toInt64(cityHash64(intDiv(number, 400), sym) % 2001) - 1000) / 100000), 2), 8) AS px,
            toDecimal64((cityHash64(number, 2) % 500000 + 1) / 100000, 8) AS qty,
            toDecimal64(round(toFloat64(px) * toFloat64(qty), 8), 8),
            ts + toIntervalMillisecond(cityHash64(number, 3) % 50),
            5000000000 + intDiv(number, 12),
            number % 12,
            toDateTime(ts) + 1
         FROM (SELECT number, cityHash64(number) % 8 AS sym FROM numbers({rows}))"
    )
}

/// Columns and types of the wide table: 50 columns, every family the source
/// maps (integers of each width, floats, decimals, strings, low-cardinality
/// strings, fixed strings, UUIDs, dates and times, booleans, nullables,
/// arrays, maps, a tuple, an enum).
pub const WIDE_COLUMNS: &[(&str, &str)] = &[
    ("ts", "DateTime64(3, 'UTC')"),
    ("seq", "UInt64"),
    ("i8", "Int8"),
    ("i16", "Int16"),
    ("i32", "Int32"),
    ("i64", "Int64"),
    ("u8", "UInt8"),
    ("u16", "UInt16"),
    ("u32", "UInt32"),
    ("u64", "UInt64"),
    ("i64_b", "Int64"),
    ("f32", "Float32"),
    ("f64", "Float64"),
    ("f64_b", "Float64"),
    ("f64_c", "Float64"),
    ("dec9", "Decimal(9, 2)"),
    ("dec18", "Decimal(18, 8)"),
    ("dec38", "Decimal(38, 10)"),
    ("s_short", "String"),
    ("s_medium", "String"),
    ("s_long", "String"),
    ("s_id", "String"),
    ("s_url", "String"),
    ("s_json", "String"),
    ("s_hex", "String"),
    ("s_word", "String"),
    ("lc_symbol", "LowCardinality(String)"),
    ("lc_venue", "LowCardinality(String)"),
    ("lc_country", "LowCardinality(String)"),
    ("fixed8", "FixedString(8)"),
    ("id", "UUID"),
    ("day", "Date"),
    ("day32", "Date32"),
    ("dt", "DateTime"),
    ("dt64", "DateTime64(6, 'UTC')"),
    ("flag", "Bool"),
    ("n_i64", "Nullable(Int64)"),
    ("n_str", "Nullable(String)"),
    ("n_f64", "Nullable(Float64)"),
    ("n_dec", "Nullable(Decimal(18, 4))"),
    ("tags", "Array(String)"),
    ("levels", "Array(Int32)"),
    ("weights", "Array(Float64)"),
    ("n_tags", "Array(Nullable(String))"),
    ("attrs", "Map(String, String)"),
    ("counters", "Map(String, UInt64)"),
    ("scores", "Map(String, Int32)"),
    ("pair", "Tuple(a Int32, b String)"),
    ("side", "Enum8('buy' = 1, 'sell' = 2)"),
    ("ip", "IPv4"),
];

/// The wide table's DDL (MergeTree, ordered by `(ts, seq)`).
pub fn wide_ddl(table: &str) -> String {
    let columns: Vec<String> = WIDE_COLUMNS.iter().map(|(n, t)| format!("{n} {t}")).collect();
    format!(
        "CREATE TABLE {DATABASE}.{table} ({}) ENGINE = MergeTree ORDER BY (ts, seq)",
        columns.join(", ")
    )
}

/// `rows` rows of the wide table, four per millisecond around 2025-01-01.
pub fn wide_insert(table: &str, rows: u64) -> String {
    let values = [
        "toDateTime64('2025-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(intDiv(number, 4)) - toIntervalMillisecond(intDiv({rows}, 8))",
        "number",
        "toInt8(h % 256 - 128)",
        "toInt16(h % 65536 - 32768)",
        "toInt32(h % 2000000) - 1000000",
        "toInt64(h) ",
        "toUInt8(h % 256)",
        "toUInt16(h % 65536)",
        "toUInt32(h % 4294967296)",
        "h",
        "toInt64(number * 1000 + h % 1000)",
        "toFloat32((h % 100000) / 100)",
        "(h % 1000000) / 1000",
        "sin(number / 1000)",
        "toFloat64(number % 97)",
        "toDecimal32((h % 100000) / 100, 2)",
        "toDecimal64((h % 10000000000) / 100000000, 8)",
        "toDecimal128(toString(h % 1000000000000) || '.' || toString(h % 10000000000), 10)",
        "['a', 'bb', 'ccc', 'dddd'][h % 4 + 1]",
        "concat('order-', toString(h % 100000))",
        "repeat(concat('lorem ipsum ', toString(h % 1000), ' '), 1 + h % 4)",
        "toString(generateUUIDv4(number))",
        "concat('https://example.com/', toString(h % 5000), '/item?id=', toString(number))",
        "concat('{\"k\":', toString(h % 100), ',\"v\":\"', hex(h % 65536), '\"}')",
        "hex(h)",
        "['alpha', 'beta', 'gamma', 'delta', 'epsilon'][number % 5 + 1]",
        "['BTCUSDT', 'ETHUSDT', 'SOLUSDT', 'XRPUSDT'][h % 4 + 1]",
        "['binance', 'kraken', 'coinbase'][h % 3 + 1]",
        "['US', 'DE', 'JP', 'BR', 'IN', 'GB'][h % 6 + 1]",
        "toFixedString(substring(hex(h), 1, 8), 8)",
        "generateUUIDv4(number)",
        "toDate('2025-01-01') - h % 1000",
        "toDate32('1960-01-01') + h % 40000",
        "toDateTime('2025-01-01 00:00:00', 'UTC') + h % 100000000",
        "toDateTime64('2025-01-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(h % 1000000000000)",
        "h % 2 = 0",
        "if(h % 5 = 0, NULL, toInt64(h % 1000000))",
        "if(h % 3 = 0, NULL, concat('n', toString(h % 1000)))",
        "if(h % 7 = 0, NULL, (h % 10000) / 10)",
        "if(h % 4 = 0, NULL, toDecimal64((h % 100000000) / 10000, 4))",
        "arrayMap(i -> concat('t', toString((h + i) % 20)), range(h % 4))",
        "arrayMap(i -> toInt32((h + i) % 1000), range(h % 6))",
        "arrayMap(i -> (h % (i + 7)) / 7, range(h % 5))",
        "arrayMap(i -> if((h + i) % 3 = 0, NULL, toString(i)), range(h % 3))",
        "mapFromArrays(arrayMap(i -> concat('k', toString(i)), range(h % 4)), arrayMap(i -> toString(h % (i + 11)), range(h % 4)))",
        "map('bids', h % 1000, 'asks', h % 777)",
        "map('a', toInt32(h % 100), 'b', toInt32(h % 50), 'c', toInt32(h % 10))",
        "tuple(toInt32(h % 1000), concat('p', toString(h % 10)))",
        "if(h % 3 = 0, 'sell', 'buy')",
        "toIPv4(toUInt32(h % 4294967296))",
    ];
    assert_eq!(values.len(), WIDE_COLUMNS.len());
    format!(
        "INSERT INTO {DATABASE}.{table} SELECT {} FROM (SELECT number, cityHash64(number) AS h FROM numbers({rows}))",
        values.join(",\n ").replace("{rows}", &rows.to_string())
    )
}

/// Columns and types of the seed's silver trades, as this harness generates
/// them: the bronze columns at silver precision (`Decimal128(8)` prices,
/// `DateTime64(6, 'UTC')` times), the categoricals as `LowCardinality(String)`,
/// and the two columns the seed's JDBC path dropped, `trade_conditions
/// Array(String)` and `vendor_data Map(String, String)`.
pub const SILVER_COLUMNS: &[(&str, &str)] = &[
    ("exchange_timestamp", "DateTime64(6, 'UTC')"),
    ("sequence_number", "UInt64"),
    ("exchange", "LowCardinality(String)"),
    ("symbol", "LowCardinality(String)"),
    ("currency", "LowCardinality(String)"),
    ("price", "Decimal128(8)"),
    ("quantity", "Decimal128(8)"),
    ("quote_volume", "Decimal128(8)"),
    ("event_time", "DateTime64(6, 'UTC')"),
    ("kafka_offset", "UInt64"),
    ("kafka_partition", "UInt16"),
    ("ingestion_timestamp", "DateTime64(6, 'UTC')"),
    ("trade_conditions", "Array(String)"),
    ("vendor_data", "Map(String, String)"),
];

/// The silver table's DDL. Ordered by the watermark pair like
/// [`bronze_ddl`] (the seed orders silver by exchange and symbol first; the
/// engine reads windows in watermark order, which that key would make a sort).
pub fn silver_ddl(table: &str) -> String {
    let columns: Vec<String> = SILVER_COLUMNS.iter().map(|(n, t)| format!("{n} {t}")).collect();
    format!(
        "CREATE TABLE {DATABASE}.{table} ({}) ENGINE = MergeTree ORDER BY (exchange_timestamp, sequence_number)",
        columns.join(", ")
    )
}

/// `rows` silver trades: four per millisecond (250 µs apart), centred on
/// midnight 2025-01-01 UTC like [`bronze_insert`]; three exchanges with their
/// quote currencies, the eight bronze symbols and price levels, 0-2 trade
/// conditions, and vendor data of 4 entries (binance) or 2 (the others).
/// Deterministic.
pub fn silver_insert(table: &str, rows: u64) -> String {
    format!(
        "INSERT INTO {DATABASE}.{table} SELECT
            toDateTime64('2025-01-01 00:00:00', 6, 'UTC')
                + toIntervalMicrosecond(intDiv(number, 4) * 1000 + number % 4 * 250)
                - toIntervalMillisecond(intDiv({rows}, 8)) AS ts,
            1000000000 + number,
            ['binance', 'kraken', 'coinbase'][ex + 1],
            ['BTCUSDT', 'ETHUSDT', 'SOLUSDT', 'XRPUSDT', 'BNBUSDT', 'ADAUSDT', 'DOGEUSDT', 'AVAXUSDT'][sym + 1],
            ['USDT', 'USD', 'USD'][ex + 1],
            toDecimal128(round([97000, 3400, 190, 2.3, 700, 0.9, 0.32, 38][sym + 1]
                * (1 + (toInt64(cityHash64(intDiv(number, 400), sym) % 2001) - 1000) / 100000), 2), 8) AS px,
            toDecimal128((cityHash64(number, 2) % 500000 + 1) / 100000, 8) AS qty,
            toDecimal128(round(toFloat64(px) * toFloat64(qty), 8), 8),
            ts + toIntervalMicrosecond(cityHash64(number, 3) % 50000),
            5000000000 + intDiv(number, 12),
            number % 12,
            ts + toIntervalMicrosecond(1000000 + cityHash64(number, 4) % 200000),
            arrayMap(i -> ['@', 'F', 'T', 'I', 'Z', '4'][(h + i) % 6 + 1], range(h % 3)),
            if(ex = 0,
               map('event_type', 'trade', 'is_buyer_maker', if(h % 2 = 0, 'true', 'false'),
                   'buyer_order_id', toString(h % 1000000007), 'seller_order_id', toString(h % 998244353)),
               map('trade_id', toString(number), 'venue_ts', toString(toUnixTimestamp64Micro(ts) - h % 1000)))
         FROM (SELECT number, cityHash64(number) AS h, cityHash64(number) % 8 AS sym, cityHash64(number, 5) % 3 AS ex
               FROM numbers({rows}))"
    )
}

/// `count()` and an order-independent content hash over every column of a
/// table of `columns` (such as [`SILVER_COLUMNS`] or [`WIDE_COLUMNS`]), like
/// [`bronze_checksum`]. Each value is normalised to text by its source type
/// so that every Iceberg copy hashes like the ClickHouse table whatever
/// types its writer chose: times as microseconds since the epoch, `Bool` as
/// 0/1, `NULL` as `'NULL'`, everything else (numbers, decimals, strings,
/// enums, UUIDs, dates, arrays, maps, tuples) as ClickHouse prints it, which
/// does not depend on the integer width, `Date` vs `Date32`, `Enum` vs
/// `String`, `UInt64` vs `Decimal(20, 0)` or a tuple's vs a struct's names.
/// (Times nested in arrays, maps or tuples would print by type; the
/// benchmark tables have none.)
pub fn content_checksum(columns: &[(&str, &str)], from: &str) -> String {
    let values: Vec<String> = columns.iter().map(|(n, t)| normalised(n, t)).collect();
    format!(
        "SELECT count(), sum(cityHash64({})) FROM {from} FORMAT TSV",
        values.join(", ")
    )
}

/// A column's value as [`content_checksum`] hashes it.
fn normalised(column: &str, ty: &str) -> String {
    let ty = ty.trim();
    let inner = |prefix: &str| {
        ty.strip_prefix(prefix)
            .and_then(|t| t.strip_suffix(')'))
            .map(str::to_owned)
    };
    if let Some(t) = inner("Nullable(") {
        format!("ifNull({}, 'NULL')", normalised(column, &t))
    } else if let Some(t) = inner("LowCardinality(") {
        normalised(column, &t)
    } else if ty.starts_with("DateTime") {
        format!("toString(toUnixTimestamp64Micro(toDateTime64({column}, 6, 'UTC')))")
    } else if ty == "Bool" {
        format!("toString(toUInt8({column}))")
    } else {
        format!("toString({column})")
    }
}

/// `count()` and an order-independent content hash of a `bronze_trades`
/// table, computed on values normalised so the ClickHouse table and every
/// Iceberg copy of it (whatever integer, timestamp or string type each writer
/// chose) hash alike: every column takes part.
pub fn bronze_checksum(from: &str) -> String {
    format!(
        "SELECT count(), sum(cityHash64(
            toUnixTimestamp64Micro(toDateTime64(exchange_timestamp, 6, 'UTC')),
            toInt64(sequence_number), toString(symbol),
            toString(price), toString(quantity), toString(quote_volume),
            toUnixTimestamp64Micro(toDateTime64(event_time, 6, 'UTC')),
            toInt64(kafka_offset), toInt32(kafka_partition),
            toUnixTimestamp64Micro(toDateTime64(ingestion_timestamp, 6, 'UTC'))))
         FROM {from} FORMAT TSV"
    )
}

/// Parses the `count \t hash` line [`bronze_checksum`] returns.
pub fn parse_checksum(tsv: &str) -> Option<(u64, u64)> {
    let mut parts = tsv.trim().split('\t');
    let count = parts.next()?.parse().ok()?;
    let hash = parts.next()?.parse().ok()?;
    Some((count, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_well_formed() {
        assert_eq!(WIDE_COLUMNS.len(), 50);
        assert!(wide_insert("w", 10).contains("numbers(10)"));
        assert!(!wide_insert("w", 10).contains("{rows}"));
        assert!(bronze_insert("t", 8).contains("intDiv(8, 8)"));
        assert_eq!(parse_checksum("3\t42\n"), Some((3, 42)));
        assert_eq!(parse_checksum("x"), None);
        assert!(silver_insert("s", 10).contains("numbers(10)"));
        assert!(silver_ddl("s").contains("vendor_data Map(String, String)"));
        let sum = content_checksum(SILVER_COLUMNS, "t");
        assert!(sum.contains("toString(toUnixTimestamp64Micro(toDateTime64(exchange_timestamp, 6, 'UTC')))"));
        assert!(sum.contains("toString(symbol)") && sum.ends_with("FROM t FORMAT TSV"));
        let sum = content_checksum(WIDE_COLUMNS, "t");
        assert!(sum.contains("ifNull(toString(n_i64), 'NULL')") && sum.contains("toString(toUInt8(flag))"));
    }
}
