//! Arrays, maps, tuples and the other types that used to be "not
//! fingerprinted" (UUID, 128-bit integers, wide decimals): ClickHouse's SQL,
//! this crate's Rust over the Iceberg table the real engine wrote, and
//! `fingerprint::row_hash` over the values written out by hand agree bit for
//! bit on edge values; and a corrupted array element or map value, on either
//! side, turns the bucket from ok into a mismatch.

mod common;

use common::*;
use offload_core::Watermark;
use offload_reconcile::fingerprint::{Value, row_hash};
use offload_reconcile::{
    Bucket, BucketSize, ContentKind, KeyDiffKind, Reconciler, Report, TableSpec, TimeRange, Verdict,
};
use offload_testkit::ClickHouseFront;

const DAY: i64 = 86_400_000_000;
/// 1900-01-01T00:00:00Z in µs.
const Y1900: i64 = -2_208_988_800_000_000;

/// The seed's silver table has `trade_conditions Array` and `vendor_data Map`;
/// the other columns cover every element type the fingerprint knows, nested.
const DDL: &str = "CREATE TABLE nested (
    ts DateTime64(6, 'UTC'),
    seq UInt64,
    trade_conditions Array(LowCardinality(String)),
    vendor_data Map(LowCardinality(String), String),
    ni Array(Nullable(Int64)),
    nn Array(Array(Nullable(Int32))),
    dec Array(Decimal(18, 8)),
    dec128 Array(Nullable(Decimal128(8))),
    t64 Array(DateTime64(6, 'UTC')),
    t9 Array(Nullable(DateTime64(9, 'UTC'))),
    dates Array(Date32),
    fl Array(Float64),
    bo Array(Bool),
    u64s Array(UInt64),
    mi Map(Int32, Array(Nullable(Decimal(18, 4)))),
    mm Map(String, Map(String, Int32)),
    tup Tuple(a Int32, b Nullable(String), c Array(String)),
    uuid UUID,
    i128 Int128,
    d256 Decimal(50, 4),
    fsa Array(FixedString(3)),
    en Array(Enum8('a' = 1, 'b' = 2)),
    ip Array(IPv4)
) ENGINE = MergeTree ORDER BY (ts, seq)";

const COLUMNS: [&str; 21] = [
    "trade_conditions",
    "vendor_data",
    "ni",
    "nn",
    "dec",
    "dec128",
    "t64",
    "t9",
    "dates",
    "fl",
    "bo",
    "u64s",
    "mi",
    "mm",
    "tup",
    "uuid",
    "i128",
    "d256",
    "fsa",
    "en",
    "ip",
];

/// Row 1: everything empty. Row 2: edge values.
const ROWS: &str = r"INSERT INTO nested VALUES
 (fromUnixTimestamp64Micro(toInt64(1714521600000000), 'UTC'), 1, [], {}, [], [], [], [], [], [], [], [], [], [],
  {}, {}, (0, NULL, []), '00000000-0000-0000-0000-000000000000', 0, 0, [], [], []),
 (fromUnixTimestamp64Micro(toInt64(1714521601000000), 'UTC'), 2,
  ['', '@', 'héllo 🌍', '\0x'],
  map('z', 'last', '', '', 'a', '\t'),
  [NULL, -9223372036854775808, 9223372036854775807, NULL],
  [[], [NULL], [1, NULL, -2147483648]],
  [-9999999999.99999999, 0.00000001, 0],
  [NULL, toDecimal128('-999999999999999999999999999999.99999999', 8)],
  ['1900-01-01 00:00:00.000001', '1969-12-31 23:59:59.999999'],
  ['1969-12-31 23:59:59.999999999', NULL, '2262-04-11 23:47:16.854775807'],
  ['1900-01-01', '2299-12-31'],
  [-0., nan, inf, 1e-308],
  [true, false],
  [18446744073709551615, 0],
  map(-1, [NULL, 1.5], 2147483647, []),
  map('x', map(), '', map('b', 2, 'a', 1)),
  (-1, 'x', ['a', '']),
  '61f0c404-5cb3-11e7-907b-a6006ad3dba0',
  -99999999999999999999999999999999999999,
  toDecimal256('-1234567890123456789012345678901234.5678', 4),
  ['a', 'abc'],
  ['b', 'a'],
  ['0.0.0.0', '255.255.255.255'])";

/// Row 3: large counts (the other columns take their defaults).
const LARGE: usize = 100_000;
const LARGE_MAP: usize = 5_000;
const LARGE_ROW: &str = "INSERT INTO nested (ts, seq, trade_conditions, vendor_data, ni, nn)
 SELECT fromUnixTimestamp64Micro(toInt64(1714521602000000), 'UTC'), 3,
  arrayMap(i -> toString(i), range(100000)),
  mapFromArrays(arrayMap(i -> toString(i), range(5000)), arrayMap(i -> repeat('v', i % 7), range(5000))),
  arrayMap(i -> if(i % 3 = 0, NULL, toInt64(i) - 50000), range(100000)),
  arrayMap(i -> arrayMap(j -> if(j = 2, NULL, toInt32(j)), range(i % 5)), range(1000))";

const UUID: [u8; 16] = [
    0x61, 0xf0, 0xc4, 0x04, 0x5c, 0xb3, 0x11, 0xe7, 0x90, 0x7b, 0xa6, 0x00, 0x6a, 0xd3, 0xdb, 0xa0,
];

fn b(s: &str) -> Value<'_> {
    Value::Bytes(s.as_bytes())
}

fn arr(v: Vec<Value<'_>>) -> Value<'_> {
    Value::Array(v)
}

/// The defaults of the columns after `nn` (row 3 leaves them out).
fn defaults_after_nn() -> Vec<Value<'static>> {
    let mut v = vec![arr(vec![]); 8]; // dec … u64s
    v.extend([
        Value::Map(vec![]),
        Value::Map(vec![]),
        Value::Tuple(vec![Value::Int(0), Value::Null, arr(vec![])]),
        Value::Bytes(&[0; 16]),
        Value::Int(0),
        Value::Decimal(0),
        arr(vec![]),
        arr(vec![]),
        arr(vec![]),
    ]);
    v
}

fn empty_row() -> Vec<Value<'static>> {
    let mut v = vec![arr(vec![]), Value::Map(vec![]), arr(vec![]), arr(vec![])];
    v.extend(defaults_after_nn());
    v
}

fn edge_row() -> Vec<Value<'static>> {
    vec![
        arr(vec![b(""), b("@"), b("héllo 🌍"), Value::Bytes(b"\0x")]),
        // In insertion order; the encoding sorts the entries.
        Value::Map(vec![(b("z"), b("last")), (b(""), b("")), (b("a"), b("\t"))]),
        arr(vec![
            Value::Null,
            Value::Int(i64::MIN.into()),
            Value::Int(i64::MAX.into()),
            Value::Null,
        ]),
        arr(vec![
            arr(vec![]),
            arr(vec![Value::Null]),
            arr(vec![Value::Int(1), Value::Null, Value::Int(i32::MIN.into())]),
        ]),
        arr(vec![
            Value::Decimal(-999_999_999_999_999_999),
            Value::Decimal(1),
            Value::Decimal(0),
        ]),
        arr(vec![Value::Null, Value::Decimal(-(10i128.pow(38) - 1))]),
        arr(vec![Value::Timestamp(Y1900 + 1), Value::Timestamp(-1)]),
        arr(vec![
            Value::Timestamp(-1), // floor of -1 ns
            Value::Null,
            Value::Timestamp(9_223_372_036_854_775),
        ]),
        arr(vec![Value::Date(-25_567), Value::Date(120_529)]),
        arr(vec![
            Value::Float(-0.0),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(1e-308),
        ]),
        arr(vec![Value::Int(1), Value::Int(0)]),
        arr(vec![Value::Int(u64::MAX.into()), Value::Int(0)]),
        Value::Map(vec![
            (Value::Int(-1), arr(vec![Value::Null, Value::Decimal(15_000)])),
            (Value::Int(i32::MAX.into()), arr(vec![])),
        ]),
        Value::Map(vec![
            (b("x"), Value::Map(vec![])),
            (
                b(""),
                Value::Map(vec![(b("b"), Value::Int(2)), (b("a"), Value::Int(1))]),
            ),
        ]),
        Value::Tuple(vec![Value::Int(-1), b("x"), arr(vec![b("a"), b("")])]),
        Value::Bytes(&UUID),
        Value::Int(-(10i128.pow(38) - 1)),
        Value::Decimal(-12_345_678_901_234_567_890_123_456_789_012_345_678),
        arr(vec![Value::Bytes(b"a\0\0"), b("abc")]),
        arr(vec![b("b"), b("a")]),
        arr(vec![b("0.0.0.0"), b("255.255.255.255")]),
    ]
}

/// Row 3's values, borrowing the texts in `texts`.
fn large_row<'a>(texts: &'a [String], values: &'a [String]) -> Vec<Value<'a>> {
    let mut v = vec![
        arr(texts.iter().map(|t| b(t)).collect()),
        Value::Map(
            texts[..LARGE_MAP]
                .iter()
                .zip(values)
                .map(|(k, v)| (b(k), b(v)))
                .collect(),
        ),
        arr((0..LARGE as i128)
            .map(|i| {
                if i % 3 == 0 {
                    Value::Null
                } else {
                    Value::Int(i - 50_000)
                }
            })
            .collect()),
        arr((0..1000)
            .map(|i| {
                arr((0..i % 5)
                    .map(|j| if j == 2 { Value::Null } else { Value::Int(j) })
                    .collect())
            })
            .collect()),
    ];
    v.extend(defaults_after_nn());
    v
}

async fn setup(ch: &ClickHouseFront, lake: &Lake) {
    let w = offload(ch, lake, &table_config("nested")).await;
    assert_eq!(w, Watermark::new(BASE + 2 * SECOND, 3), "every row is committed");
}

fn start_clickhouse() -> ClickHouseFront {
    let ch = ClickHouseFront::start();
    ch.query(DDL);
    ch.query(ROWS);
    ch.query(LARGE_ROW);
    ch
}

fn spec() -> TableSpec {
    TableSpec::new("nested", "nested", "ts", "seq")
        .iceberg_table("lake.nested")
        .sum_columns(["i128", "d256"])
}

fn day() -> TimeRange {
    TimeRange::new(BASE, BASE + DAY, BucketSize::Day).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_maps_and_tuples_agree_bit_for_bit_on_edge_values() {
    let ch = start_clickhouse();
    let lake = Lake::new().await;
    setup(&ch, &lake).await;
    let reconciler = Reconciler::new(clickhouse(&ch), day()).with_iceberg(lake.layer());

    let hashes = reconciler
        .row_hashes(
            &spec(),
            Bucket {
                start: BASE,
                end: BASE + DAY,
            },
        )
        .await
        .unwrap();
    let names: Vec<&str> = hashes.content_columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, COLUMNS, "every column is fingerprinted");
    let kind = |name: &str| {
        hashes
            .content_columns
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .kind
            .to_string()
    };
    assert_eq!(kind("trade_conditions"), "array(string)");
    assert_eq!(kind("vendor_data"), "map(string, string)");
    assert_eq!(kind("mi"), "map(int, array(decimal(4)))");
    assert_eq!(kind("tup"), "tuple(int, string, array(string))");
    assert_eq!(kind("d256"), "decimal(4)");

    let texts: Vec<String> = (0..LARGE).map(|i| i.to_string()).collect();
    let values: Vec<String> = (0..LARGE_MAP).map(|i| "v".repeat(i % 7)).collect();
    let rows = [
        (BASE, 1, empty_row()),
        (BASE + SECOND, 2, edge_row()),
        (BASE + 2 * SECOND, 3, large_row(&texts, &values)),
    ];
    let ice = hashes.iceberg.as_ref().unwrap();
    assert_eq!((hashes.clickhouse.len(), ice.len()), (3, 3));
    for (ts, seq, values) in &rows {
        assert_eq!(values.len(), COLUMNS.len());
        let want = row_hash(*ts, *seq, values);
        let ch_row = hashes
            .clickhouse
            .iter()
            .find(|r| (r.ts, r.seq) == (*ts, *seq))
            .unwrap();
        let ice_row = ice.iter().find(|r| (r.ts, r.seq) == (*ts, *seq)).unwrap();
        assert_eq!(ch_row.hash, want, "ClickHouse vs definition, row {seq}");
        assert_eq!(ice_row.hash, want, "Iceberg vs definition, row {seq}");
    }
    // The definition is not vacuous: an element more, or one changed, is another hash.
    let mut longer = edge_row();
    let Value::Array(v) = &mut longer[0] else {
        unreachable!()
    };
    v.push(b(""));
    assert_ne!(
        row_hash(BASE + SECOND, 2, &longer),
        row_hash(BASE + SECOND, 2, &edge_row())
    );

    // The whole reconciliation: ok, nothing left out, sums of the wide types exact.
    let report = reconciler.run(&[spec()]).await;
    println!("{}", report.render_table(true));
    assert_eq!(report.verdict, Verdict::Ok, "{}", report.render_table(true));
    let t = &report.tables[0];
    assert!(t.skipped_columns.is_empty(), "{:?}", t.skipped_columns);
    assert!(!report.render_table(true).contains("not fingerprinted"));
    let ice = t.buckets[0].iceberg.as_ref().unwrap();
    assert_eq!(
        ice.sums["i128"].to_string(),
        "-99999999999999999999999999999999999999"
    );
    assert_eq!(
        ice.sums["d256"].to_string(),
        "-1234567890123456789012345678901234.5678"
    );
    // Nested kinds survive the JSON report.
    let back: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back.tables[0].content_columns, t.content_columns);
    assert!(matches!(
        &back.tables[0].content_columns[1].kind,
        ContentKind::Map { key, value } if **key == ContentKind::String && **value == ContentKind::String
    ));
}

/// Runs the reconciliation and returns bucket 0's verdict and changed keys.
async fn judge(reconciler: &Reconciler) -> (Verdict, Vec<(i64, u64)>, String) {
    let report = reconciler.run(&[spec()]).await;
    let b = &report.tables[0].buckets[0];
    let keys = b
        .findings
        .iter()
        .flat_map(|f| &f.keys)
        .filter(|k| k.kind == KeyDiffKind::Changed)
        .map(|k| (k.ts, k.seq))
        .collect();
    (b.verdict, keys, report.render_table(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_array_element_or_map_entry_in_clickhouse_is_a_mismatch() {
    let ch = start_clickhouse();
    let lake = Lake::new().await;
    setup(&ch, &lake).await;
    let reconciler = Reconciler::new(clickhouse(&ch), day()).with_iceberg(lake.layer());
    assert_eq!(judge(&reconciler).await.0, Verdict::Ok);

    let update = |set: &str| {
        ch.query(&format!(
            "ALTER TABLE nested UPDATE {set} WHERE seq = 2 SETTINGS mutations_sync = 2"
        ));
    };
    // A map's entry order is not part of its value: reordering is no change.
    update(r"vendor_data = map('a', '\t', '', '', 'z', 'last')");
    assert_eq!(judge(&reconciler).await.0, Verdict::Ok, "map entries reordered");
    update(r"vendor_data = map('z', 'last', '', '', 'a', '\t')");

    // Change one thing of row 2 at a time, check, and put it back.
    for (set, undo) in [
        (
            r"trade_conditions = ['', 'A', 'héllo 🌍', '\0x']",
            r"trade_conditions = ['', '@', 'héllo 🌍', '\0x']",
        ),
        (
            r"trade_conditions = ['@', '', 'héllo 🌍', '\0x']",
            r"trade_conditions = ['', '@', 'héllo 🌍', '\0x']",
        ),
        (
            r"trade_conditions = ['', '@', 'héllo 🌍', '\0x', '']",
            r"trade_conditions = ['', '@', 'héllo 🌍', '\0x']",
        ),
        (
            r"vendor_data = map('z', 'last', '', ' ', 'a', '\t')",
            r"vendor_data = map('z', 'last', '', '', 'a', '\t')",
        ),
        (
            r"vendor_data = map('z', 'last', '', '', 'b', '\t')",
            r"vendor_data = map('z', 'last', '', '', 'a', '\t')",
        ),
        (
            "ni = [0, -9223372036854775808, 9223372036854775807, NULL]",
            "ni = [NULL, -9223372036854775808, 9223372036854775807, NULL]",
        ),
        (
            "nn = [[], [NULL], [1, NULL, -2147483647]]",
            "nn = [[], [NULL], [1, NULL, -2147483648]]",
        ),
        (
            "nn = [[NULL], [], [1, NULL, -2147483648]]",
            "nn = [[], [NULL], [1, NULL, -2147483648]]",
        ),
        // (In an expression a decimal literal is a Float64: cast from text.)
        (
            "dec = CAST(['-9999999999.99999998', '0.00000001', '0'] AS Array(Decimal(18, 8)))",
            "dec = CAST(['-9999999999.99999999', '0.00000001', '0'] AS Array(Decimal(18, 8)))",
        ),
        (
            "t64 = ['1900-01-01 00:00:00.000002', '1969-12-31 23:59:59.999999']",
            "t64 = ['1900-01-01 00:00:00.000001', '1969-12-31 23:59:59.999999']",
        ),
        (
            "mi = map(-1, [NULL, toDecimal64('1.5001', 4)], 2147483647, [])",
            "mi = map(-1, [NULL, toDecimal64('1.5', 4)], 2147483647, [])",
        ),
        (
            "mm = map('x', map(), '', map('b', 2, 'a', 0))",
            "mm = map('x', map(), '', map('b', 2, 'a', 1))",
        ),
        ("tup = (-1, 'x', ['a', ' '])", "tup = (-1, 'x', ['a', ''])"),
        ("tup = (-1, NULL, ['a', ''])", "tup = (-1, 'x', ['a', ''])"),
        (
            "uuid = '61f0c404-5cb3-11e7-907b-a6006ad3dba1'",
            "uuid = '61f0c404-5cb3-11e7-907b-a6006ad3dba0'",
        ),
        (
            "i128 = toInt128('-99999999999999999999999999999999999998')",
            "i128 = toInt128('-99999999999999999999999999999999999999')",
        ),
        ("en = ['a', 'a']", "en = ['b', 'a']"),
        (
            "ip = ['0.0.0.1', '255.255.255.255']",
            "ip = ['0.0.0.0', '255.255.255.255']",
        ),
    ] {
        update(set);
        let (verdict, keys, text) = judge(&reconciler).await;
        assert_eq!(verdict, Verdict::Diverged, "{set}: {text}");
        assert_eq!(keys, [(BASE + SECOND, 2)], "{set}: {text}");
        update(undo);
        let (verdict, _, text) = judge(&reconciler).await;
        assert_eq!(verdict, Verdict::Ok, "after undoing {set}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_trade_conditions_in_iceberg_fails_reconciliation() {
    let ch = start_clickhouse();
    // Offload a corrupted copy: one array element of row 2, one map value deep
    // in row 3's 5000 entries; then put ClickHouse back, so only Iceberg is wrong.
    ch.query(
        r"ALTER TABLE nested UPDATE trade_conditions = ['', '@', 'hello 🌍', '\0x'] WHERE seq = 2 SETTINGS mutations_sync = 2",
    );
    ch.query(
        "ALTER TABLE nested UPDATE vendor_data = mapUpdate(vendor_data, map('4321', 'corrupt')) WHERE seq = 3 SETTINGS mutations_sync = 2",
    );
    let lake = Lake::new().await;
    setup(&ch, &lake).await;
    let reconciler = Reconciler::new(clickhouse(&ch), day()).with_iceberg(lake.layer());
    let (verdict, keys, text) = judge(&reconciler).await;
    assert_eq!(verdict, Verdict::Ok, "both sides equally corrupted: {text}");
    assert!(keys.is_empty());

    ch.query(
        r"ALTER TABLE nested UPDATE trade_conditions = ['', '@', 'héllo 🌍', '\0x'] WHERE seq = 2 SETTINGS mutations_sync = 2",
    );
    let (verdict, keys, text) = judge(&reconciler).await;
    assert_eq!(verdict, Verdict::Diverged, "{text}");
    assert_eq!(keys, [(BASE + SECOND, 2)], "{text}");

    ch.query(
        "ALTER TABLE nested UPDATE vendor_data = mapUpdate(vendor_data, map('4321', repeat('v', 4321 % 7))) WHERE seq = 3 SETTINGS mutations_sync = 2",
    );
    let (verdict, keys, text) = judge(&reconciler).await;
    assert_eq!(verdict, Verdict::Diverged, "{text}");
    assert_eq!(keys, [(BASE + SECOND, 2), (BASE + 2 * SECOND, 3)], "{text}");
    println!("{text}");
    assert!(text.contains("diverged"), "{text}");
}
