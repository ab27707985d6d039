//! Independent readers: pyiceberg (same SQLite catalog) and ClickHouse (chdb,
//! `icebergLocal`) must read exactly the rows this sink wrote: counts, sums,
//! exact decimals, lists, maps with null values, UTC timestamps, partition
//! values and field ids. Needs the test venv (`bash testing/setup-venv.sh`);
//! without it the test fails, it does not skip.
#![cfg(feature = "sqlite")] // the readers open the SQLite catalog

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use common::*;
use iceberg::spec::Type;
use offload_core::{SinkTable, Watermark};
use serde_json::Value;

fn expected_keys(batches: &[RecordBatch]) -> String {
    let mut lines = Vec::new();
    for b in batches {
        let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let seq = b.column(1).as_primitive::<Int64Type>();
        let sym = b.column(2).as_string::<i32>();
        for i in 0..b.num_rows() {
            lines.push(format!("{}:{}:{}", seq.value(i), ts.value(i), sym.value(i)));
        }
    }
    lines.join("\n")
}

fn per_day(batches: &[RecordBatch]) -> Vec<(String, u64)> {
    let mut days = BTreeMap::new();
    for b in batches {
        for ts in b.column(0).as_primitive::<TimestampMicrosecondType>().values() {
            *days
                .entry(offload_core::rfc3339_micros(*ts)[..10].to_owned())
                .or_insert(0u64) += 1;
        }
    }
    days.into_iter().collect()
}

fn attr_null_values(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .map(|b| b.column(6).as_map().values().null_count() as u64)
        .sum()
}

fn ids(t: &Type, path: &str, out: &mut BTreeMap<String, i64>) {
    match t {
        Type::Struct(s) => {
            for f in s.fields() {
                let p = if path.is_empty() {
                    f.name.clone()
                } else {
                    format!("{path}.{}", f.name)
                };
                out.insert(p.clone(), i64::from(f.id));
                ids(&f.field_type, &p, out);
            }
        }
        Type::List(l) => {
            out.insert(format!("{path}.element"), i64::from(l.element_field.id));
            ids(&l.element_field.field_type, &format!("{path}.element"), out);
        }
        Type::Map(m) => {
            out.insert(format!("{path}.key"), i64::from(m.key_field.id));
            out.insert(format!("{path}.value"), i64::from(m.value_field.id));
        }
        Type::Primitive(_) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_and_clickhouse_read_what_we_wrote() {
    let python = offload_testkit::venv_python();
    let b = Backend::sqlite();
    let table = b.table("lake.readers").await;
    table.prepare(trades_schema()).await.unwrap();

    // Five UTC days (from the leap day on) in three commits; several batches per commit.
    let windows = [
        vec![trades(T0 - 3_600_000_000, 1, 1500, 60_000_000)],
        vec![
            trades(T0 + DAY_MICROS + 7, 1501, 1000, 45_000_000),
            trades(T0 + DAY_MICROS + 45_000_000_000, 2501, 1000, 45_000_000),
        ],
        vec![trades(
            T0 + 2 * DAY_MICROS + 40_000_000_000,
            3501,
            2500,
            20_000_000,
        )],
    ];
    let mut after = Watermark::MIN;
    for w in &windows {
        after = commit_window(&table, after, w).await.0;
    }
    let written: Vec<RecordBatch> = windows.concat();
    let expected = figures(&written);
    assert_eq!(
        figures(&read_back(&table).await),
        expected,
        "iceberg-rust reads it back"
    );

    let keys = b.dir.path().join("keys.txt");
    std::fs::write(&keys, expected_keys(&written)).unwrap();
    let t = table.load().await.unwrap();
    let cfg = serde_json::json!({
        "db": b.dir.path().join("catalog.db"),
        "warehouse": b.warehouse(),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "table": "lake.readers",
        "location": t.metadata().location(),
        "expected_keys": keys,
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers.py");
    // chdb only reads files under its working directory (user_files_path = ".").
    let out = Command::new("timeout")
        .current_dir(b.dir.path())
        .arg("600")
        .arg(&python)
        .arg(&script)
        .arg(cfg.to_string())
        .output()
        .expect("run the reader script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "reader script failed: {}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad reader output ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    let want_days: Vec<Value> = per_day(&written)
        .into_iter()
        .map(|(d, c)| serde_json::json!([d, c]))
        .collect();
    assert_eq!(
        want_days.len(),
        5,
        "the data spans five UTC days, 2024-02-29 included"
    );
    let mut want_ids = BTreeMap::new();
    ids(
        &Type::Struct(t.metadata().current_schema().as_struct().clone()),
        "",
        &mut want_ids,
    );

    for reader in ["pyiceberg", "chdb"] {
        let r = &report[reader];
        assert!(r.get("error").is_none(), "{reader} failed: {}", r["error"]);
        let num = |k: &str| -> i128 {
            match &r[k] {
                Value::String(s) => s.parse().unwrap(),
                Value::Number(n) => n.as_i64().unwrap().into(),
                other => panic!("{reader}.{k}: {other}"),
            }
        };
        assert_eq!(num("count"), expected.count as i128, "{reader} count");
        assert_eq!(num("sum_seq"), expected.sum_seq, "{reader} sum(seq)");
        assert_eq!(
            num("sum_price_scaled"),
            expected.sum_price_scaled,
            "{reader} exact sum(price)"
        );
        assert_eq!(num("qty_nulls"), expected.qty_nulls as i128, "{reader} null qty");
        assert_eq!(num("sum_qty"), expected.sum_qty as i128, "{reader} sum(qty)");
        assert_eq!(
            num("tag_elements"),
            expected.tag_elements as i128,
            "{reader} list elements"
        );
        assert_eq!(
            num("attr_entries"),
            expected.attr_entries as i128,
            "{reader} map entries"
        );
        assert_eq!(
            num("attr_null_values"),
            attr_null_values(&written) as i128,
            "{reader} null map values"
        );
        assert_eq!(
            num("min_ts"),
            expected.min_ts as i128,
            "{reader} min(ts) in UTC micros"
        );
        assert_eq!(
            num("max_ts"),
            expected.max_ts as i128,
            "{reader} max(ts) in UTC micros"
        );
        assert_eq!(
            r["digest"], report["expected_digest"],
            "{reader} row keys (seq, ts, symbol)"
        );
        assert_eq!(
            r["partitions"].as_array().unwrap(),
            &want_days,
            "{reader} rows per day"
        );
        let march_2 = want_days.iter().find(|d| d[0] == "2024-03-02").unwrap()[1].clone();
        assert_eq!(
            r["day_count"], march_2,
            "{reader} filtered (partition-pruned) scan of one day"
        );
    }
    let py = &report["pyiceberg"];
    assert_eq!(py["ts_iceberg_type"], "timestamptz");
    let ts_type = py["ts_type"].as_str().unwrap();
    assert!(
        ts_type.contains("us") && (ts_type.contains("UTC") || ts_type.contains("+00:00")),
        "{ts_type}"
    );
    assert_eq!(py["price_type"], "decimal(18, 8)");
    assert_eq!(
        py["files"].as_u64().unwrap() as usize,
        parquet_files(&b.warehouse()).len()
    );
    let got_ids: BTreeMap<String, i64> = serde_json::from_value(py["field_ids"].clone()).unwrap();
    assert_eq!(got_ids, want_ids, "pyiceberg sees the field ids we assigned");
    let file_ids: BTreeMap<String, i64> = serde_json::from_value(py["file_field_ids"].clone()).unwrap();
    for (name, id) in &file_ids {
        assert_eq!(want_ids.get(name), Some(id), "parquet field id of {name}");
    }
    assert_eq!(file_ids.len(), 7, "every column carries its field id in the file");
    let ch = &report["chdb"];
    assert!(
        ch["ts_type"].as_str().unwrap().contains("UTC"),
        "{}",
        ch["ts_type"]
    );
    assert_eq!(ch["price_type"], "Decimal(18, 8)");
    assert!(table.committed().await.unwrap().is_some());
}
