//! The hash definition, checked three ways on edge values: ClickHouse's SQL,
//! this crate's Rust over the Iceberg table the real engine wrote, and
//! `fingerprint::row_hash` over values written out by hand from the README's
//! definition. Any drift between the three fails here.

mod common;

use common::*;
use offload_core::Watermark;
use offload_reconcile::fingerprint::{Value, key_hash, row_hash};
use offload_reconcile::{Bucket, BucketSize, Reconciler, TableSpec, TimeRange, Verdict};
use offload_testkit::ClickHouseFront;

const DAY: i64 = 86_400_000_000;
/// 1900-01-01T00:00:00Z in µs.
const Y1900: i64 = -2_208_988_800_000_000;

const EDGE_DDL: &str = "CREATE TABLE edge (
    ts DateTime64(6, 'UTC'),
    seq UInt64,
    i8 Int8,
    u64v UInt64,
    i64v Int64,
    b Bool,
    dmax Decimal(38, 38),
    d18 Nullable(Decimal(18, 4)),
    f64 Float64,
    f32 Float32,
    s String,
    ns Nullable(String),
    fs FixedString(3),
    lc LowCardinality(Nullable(String)),
    e Enum8('a' = 1, 'b' = -2),
    dt DateTime('UTC'),
    dt9 Nullable(DateTime64(9, 'UTC')),
    d32 Date32,
    ni Nullable(Int64)
) ENGINE = MergeTree ORDER BY (ts, seq)";

const EDGE_ROWS: &str = r"INSERT INTO edge VALUES
 (fromUnixTimestamp64Micro(toInt64(-1), 'UTC'), 18446744073709551615, -128, 18446744073709551615, -9223372036854775808, true,
  toDecimal128('0.99999999999999999999999999999999999999', 38), NULL, -0., 1.5, '', NULL, 'a', NULL, 'b',
  '1970-01-01 00:00:00', '1969-12-31 23:59:59.999999999', '1900-01-01', NULL),
 (fromUnixTimestamp64Micro(toInt64(-2208988799999999), 'UTC'), 0, 127, 0, 9223372036854775807, false,
  toDecimal128('-0.00000000000000000000000000000000000001', 38), toDecimal64('-99999999999999.9999', 4), inf, -inf,
  'héllo 🌍 \t\n\\ \'quote', '', '\0\0\0', 'ü', 'a',
  '2106-02-07 06:28:15', '2262-04-11 23:47:16.854775807', '2299-12-31', 0),
 (fromUnixTimestamp64Micro(toInt64(1714521600000000), 'UTC'), 1, 0, 1, -1, true,
  toDecimal128('0', 38), toDecimal64('1.5', 4), nan, 0, 'x', 'y', 'abc', 'z', 'a',
  '2024-05-01 00:00:00', NULL, '1970-01-01', -5),
 (fromUnixTimestamp64Micro(toInt64(1714780800000000), 'UTC'), 2, 0, 2, 2, false,
  toDecimal128('0', 38), NULL, 2, 2, 's', NULL, 'xyz', 'w', 'b',
  '2024-05-04 00:00:00', NULL, '2024-05-04', NULL)";

/// The rows above, value by value, as the README's definition encodes them.
fn expected() -> Vec<(i64, u64, Vec<Value<'static>>)> {
    vec![
        (
            -1,
            u64::MAX,
            vec![
                Value::Int(-128),
                Value::Int(i128::from(u64::MAX)),
                Value::Int(i128::from(i64::MIN)),
                Value::Int(1),
                Value::Decimal(10i128.pow(38) - 1),
                Value::Null,
                Value::Float(-0.0),
                Value::Float(1.5),
                Value::Bytes(b""),
                Value::Null,
                Value::Bytes(b"a\0\0"),
                Value::Null,
                Value::Bytes(b"b"),
                Value::Timestamp(0),
                Value::Timestamp(-1), // floor of -1 ns
                Value::Date(-25_567),
                Value::Null,
            ],
        ),
        (
            Y1900 + 1,
            0,
            vec![
                Value::Int(127),
                Value::Int(0),
                Value::Int(i128::from(i64::MAX)),
                Value::Int(0),
                Value::Decimal(-1),
                Value::Decimal(-999_999_999_999_999_999),
                Value::Float(f64::INFINITY),
                Value::Float(f64::NEG_INFINITY),
                Value::Bytes("héllo 🌍 \t\n\\ 'quote".as_bytes()),
                Value::Bytes(b""),
                Value::Bytes(b"\0\0\0"),
                Value::Bytes("ü".as_bytes()),
                Value::Bytes(b"a"),
                Value::Timestamp(4_294_967_295_000_000),
                Value::Timestamp(9_223_372_036_854_775),
                Value::Date(120_529),
                Value::Int(0),
            ],
        ),
        (
            BASE,
            1,
            vec![
                Value::Int(0),
                Value::Int(1),
                Value::Int(-1),
                Value::Int(1),
                Value::Decimal(0),
                Value::Decimal(15_000),
                Value::Float(f64::NAN),
                Value::Float(0.0),
                Value::Bytes(b"x"),
                Value::Bytes(b"y"),
                Value::Bytes(b"abc"),
                Value::Bytes(b"z"),
                Value::Bytes(b"a"),
                Value::Timestamp(BASE),
                Value::Null,
                Value::Date(0),
                Value::Int(-5),
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_rust_and_iceberg_agree_on_edge_values() {
    let ch = ClickHouseFront::start();
    ch.query(EDGE_DDL);
    ch.query(EDGE_ROWS);
    let lake = Lake::new().await;
    let w = offload(&ch, &lake, &table_config("edge")).await;
    assert_eq!(
        w,
        Watermark::new(BASE + 3 * DAY, 2),
        "the sentinel row is committed"
    );

    let spec = TableSpec::new("edge", "edge", "ts", "seq")
        .iceberg_table("lake.edge")
        .sum_columns(["i8", "u64v", "i64v", "dmax", "d18", "ni"]);
    let range = TimeRange::new(Y1900, BASE + DAY, BucketSize::Day).unwrap();
    let reconciler = Reconciler::new(clickhouse(&ch), range).with_iceberg(lake.layer());

    // Row by row: ClickHouse's SQL, Rust over Iceberg's Arrow, and the definition by hand.
    let mut checked = 0;
    for (ts, seq, values) in expected() {
        let day = BucketSize::Day.floor(ts);
        let hashes = reconciler
            .row_hashes(
                &spec,
                Bucket {
                    start: day,
                    end: day + DAY,
                },
            )
            .await
            .unwrap();
        let names: Vec<&str> = hashes.content_columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "i8", "u64v", "i64v", "b", "dmax", "d18", "f64", "f32", "s", "ns", "fs", "lc", "e", "dt",
                "dt9", "d32", "ni"
            ]
        );
        let want = row_hash(ts, seq, &values);
        let ch_row = hashes
            .clickhouse
            .iter()
            .find(|r| (r.ts, r.seq) == (ts, seq))
            .expect("row in ClickHouse");
        let ice_row = hashes
            .iceberg
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| (r.ts, r.seq) == (ts, seq))
            .expect("row in Iceberg");
        assert_eq!(ch_row.hash, want, "ClickHouse vs definition, row ({ts}, {seq})");
        assert_eq!(ice_row.hash, want, "Iceberg vs definition, row ({ts}, {seq})");
        checked += 1;
    }
    assert_eq!(checked, 3);

    // And the whole reconciliation: every bucket ok, sums included.
    let report = reconciler.run(&[spec]).await;
    println!("{}", report.render_table(false));
    assert_eq!(report.verdict, Verdict::Ok, "{}", report.render_table(false));
    let t = &report.tables[0];
    assert_eq!(t.totals.iceberg, Some(3));
    let b = t.bucket_at(BucketSize::Day.floor(-1)).unwrap();
    let ice = b.iceberg.as_ref().unwrap();
    assert_eq!(ice.key_fingerprint, Some(key_hash(-1, u64::MAX)));
    assert_eq!(ice.sums["u64v"].to_string(), u64::MAX.to_string());
    assert_eq!(
        ice.sums["dmax"].to_string(),
        "0.99999999999999999999999999999999999999"
    );
    assert_eq!(
        ice.sums["d18"].to_string(),
        "0.0000",
        "NULL contributes nothing to a sum"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_changed_byte_is_caught_in_every_column_kind() {
    let ch = ClickHouseFront::start();
    ch.query(EDGE_DDL);
    ch.query(EDGE_ROWS);
    let lake = Lake::new().await;
    offload(&ch, &lake, &table_config("edge")).await;
    let spec = TableSpec::new("edge", "edge", "ts", "seq").iceberg_table("lake.edge");
    let range = TimeRange::new(BASE, BASE + DAY, BucketSize::Day).unwrap();
    let reconciler = Reconciler::new(clickhouse(&ch), range).with_iceberg(lake.layer());
    assert_eq!(
        reconciler.run(std::slice::from_ref(&spec)).await.verdict,
        Verdict::Ok
    );
    // Change one column of row (BASE, 1) at a time, check, and put it back.
    for (set, undo) in [
        ("s = 'x '", "s = 'x'"),
        ("ns = NULL", "ns = 'y'"),
        ("fs = 'abd'", "fs = 'abc'"),
        ("d18 = toDecimal64('1.5001', 4)", "d18 = toDecimal64('1.5', 4)"),
        ("f32 = -0.", "f32 = 0"),
        ("dt = '2024-05-01 00:00:01'", "dt = '2024-05-01 00:00:00'"),
        ("dt9 = '2024-05-01 00:00:00.000001'", "dt9 = NULL"),
        ("d32 = '1970-01-02'", "d32 = '1970-01-01'"),
        ("e = 'b'", "e = 'a'"),
        ("b = false", "b = true"),
        ("i64v = -2", "i64v = -1"),
    ] {
        ch.query(&format!(
            "ALTER TABLE edge UPDATE {set} WHERE seq = 1 SETTINGS mutations_sync = 2"
        ));
        let report = reconciler.run(std::slice::from_ref(&spec)).await;
        let b = &report.tables[0].buckets[0];
        assert_eq!(
            b.verdict,
            Verdict::Diverged,
            "{set}: {}",
            report.render_table(true)
        );
        assert_eq!(
            (b.findings[0].keys[0].ts, b.findings[0].keys[0].seq),
            (BASE, 1),
            "{set}"
        );
        ch.query(&format!(
            "ALTER TABLE edge UPDATE {undo} WHERE seq = 1 SETTINGS mutations_sync = 2"
        ));
        assert_eq!(
            reconciler.run(std::slice::from_ref(&spec)).await.verdict,
            Verdict::Ok,
            "after undoing {set}"
        );
    }
}
