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
    }
}
