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
    let report: Value = run_readers(b.dir.path(), &cfg, 600, "");
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

/// pyiceberg (an independent reader on the same SQLite catalog) sees the rows
/// a repair commit added below the watermark, next to the window's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_reads_repaired_rows() {
    use offload_core::{BucketGrid, RepairMetadata, RunId};

    let python = offload_testkit::venv_python();
    let b = Backend::sqlite();
    let table = b.table("lake.repaired").await;
    table.prepare(trades_schema()).await.unwrap();
    let w1 = trades(T0, 1, 10, 10_000);
    let (u1, _) = commit_window(&table, Watermark::MIN, std::slice::from_ref(&w1)).await;
    let base = table.committed().await.unwrap().unwrap().version;
    let late = trades(T0 + 5_000, 100, 3, 10_000);
    let run = RunId::new();
    let staged = stage(&table, run, std::slice::from_ref(&late)).await;
    let grid = BucketGrid::covering(T0, u1, std::time::Duration::from_millis(10)).unwrap();
    let buckets = (0..3).map(|i| grid.bucket(i)).collect();
    staged
        .commit_repair(&RepairMetadata::new(base, u1, run, "sweeper", 1, buckets, 3))
        .await
        .unwrap();
    assert_eq!(table.committed().await.unwrap().unwrap().until, u1);

    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
cfg = json.loads(sys.argv[1])
cat = SqlCatalog(cfg["catalog"], uri=f"sqlite:///{cfg['db']}", warehouse=f"file://{cfg['warehouse']}")
t = cat.load_table(cfg["table"])
data = t.scan(selected_fields=("ts", "seq")).to_arrow()
rows = sorted(zip(pc.cast(data["ts"], pa.int64()).to_pylist(), data["seq"].to_pylist()))
summary = t.current_snapshot().summary
print(json.dumps({"rows": rows, "repair_rows": summary["offload.repair.rows"]}))
"#;
    let cfg = serde_json::json!({
        "db": b.dir.path().join("catalog.db"),
        "warehouse": b.warehouse(),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "table": "lake.repaired",
    });
    let out = Command::new("timeout")
        .arg("300")
        .arg(&python)
        .arg("-c")
        .arg(script)
        .arg(cfg.to_string())
        .output()
        .expect("run pyiceberg");
    assert!(
        out.status.success(),
        "pyiceberg failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut want: Vec<(i64, i64)> = Vec::new();
    for batch in [&w1, &late] {
        let ts = batch.column(0).as_primitive::<TimestampMicrosecondType>();
        let seq = batch.column(1).as_primitive::<Int64Type>();
        want.extend((0..batch.num_rows()).map(|i| (ts.value(i), seq.value(i))));
    }
    want.sort_unstable();
    let got: Vec<(i64, i64)> = serde_json::from_value(report["rows"].clone()).unwrap();
    assert_eq!(got, want, "pyiceberg reads the window's and the repair's rows");
    assert_eq!(report["repair_rows"], "3");
}
