//! Shared fixtures: catalogs on SQLite and PostgreSQL, a trades-like table,
//! staging/commit helpers and a Rust-side reader.
#![allow(dead_code)] // each test binary uses a different subset

pub mod faulty;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, MapBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::TryStreamExt;
use offload_core::{CommitMetadata, RunId, SinkTable, Staged, TableConfig, Watermark, Window};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig, IcebergTable};
#[cfg(feature = "postgres")]
use sqlx::Connection;
use tempfile::TempDir;

pub const DAY_MICROS: i64 = 86_400_000_000;
/// 2024-03-01T00:00:00Z
pub const T0: i64 = 1_709_251_200_000_000;

/// A catalog for one test: its own SQLite file, or its own PostgreSQL
/// database (dropped again when the fixture is dropped, even on panic).
pub struct Backend {
    pub name: &'static str,
    pub dir: TempDir,
    catalog: CatalogConfig,
    pg_db: Option<(String, String)>,
}

impl Backend {
    pub fn sqlite() -> Backend {
        let dir = tempfile::Builder::new()
            .prefix("offload-iceberg-")
            .tempdir()
            .unwrap();
        let catalog = CatalogConfig::sqlite(dir.path().join("catalog.db"), warehouse(dir.path()));
        Backend {
            name: "sqlite",
            dir,
            catalog,
            pg_db: None,
        }
    }

    /// A fresh database on the test server. Panics (fails the test) when
    /// PostgreSQL is unreachable: these tests never skip.
    #[cfg(feature = "postgres")]
    pub async fn postgres() -> Backend {
        let admin = std::env::var("OFFLOAD_PG_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db = format!("offload_sink_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is required for these tests (set OFFLOAD_PG_URL): {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let url = with_database(&admin, &db);
        let dir = tempfile::Builder::new()
            .prefix("offload-iceberg-")
            .tempdir()
            .unwrap();
        let catalog = CatalogConfig::postgres(url, warehouse(dir.path()));
        Backend {
            name: "postgres",
            dir,
            catalog,
            pg_db: Some((admin, db)),
        }
    }

    pub fn catalog(&self) -> CatalogConfig {
        self.catalog.clone()
    }

    pub fn config(&self) -> IcebergSinkConfig {
        IcebergSinkConfig::new(self.catalog())
    }

    /// A new, independent sink (its own connection pool).
    pub async fn sink(&self) -> IcebergSink {
        IcebergSink::connect(self.config()).await.unwrap()
    }

    /// A new, independent sink with `table` opened on it.
    pub async fn table(&self, sink_table: &str) -> IcebergTable {
        open(&self.sink().await, sink_table)
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }
}

/// Opens `sink_table` (see [`table_config`]) on `sink`.
pub fn open(sink: &IcebergSink, sink_table: &str) -> IcebergTable {
    sink.open_table(&table_config(sink_table)).unwrap()
}

impl Drop for Backend {
    #[cfg(not(feature = "postgres"))]
    fn drop(&mut self) {
        assert!(
            self.pg_db.is_none(),
            "no PostgreSQL without the `postgres` feature"
        );
    }

    #[cfg(feature = "postgres")]
    fn drop(&mut self) {
        let Some((admin, db)) = self.pg_db.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut conn = sqlx::PgConnection::connect(&admin).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database: {dropped:?}");
        }
    }
}

fn warehouse(dir: &Path) -> String {
    dir.join("warehouse").to_str().unwrap().to_owned()
}

#[cfg(feature = "postgres")]
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

pub fn table_config(sink_table: &str) -> TableConfig {
    TableConfig::builder(sink_table.replace('.', "_"))
        .sink_table(sink_table)
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()
        .unwrap()
}

/// The trades-like source schema: timestamptz, long, string, decimal(18,8),
/// a nullable int, a list and a map.
pub fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seq", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Decimal128(18, 8), false),
        Field::new("qty", DataType::Int32, true),
        Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
        Field::new_map(
            "attrs",
            "entries",
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, true),
            false,
            true,
        ),
    ]))
}

const SYMBOLS: [&str; 4] = ["BTC-USD", "ETH-USD", "SOL-USD", "ünïcødé"];

/// `n` deterministic trades starting at `(ts0, seq0)`, `step` µs apart.
pub fn trades(ts0: i64, seq0: i64, n: usize, step: i64) -> RecordBatch {
    let ts = TimestampMicrosecondArray::from_iter_values((0..n).map(|i| ts0 + i as i64 * step))
        .with_timezone("UTC");
    let seq = Int64Array::from_iter_values((0..n).map(|i| seq0 + i as i64));
    let symbol = StringArray::from_iter_values((0..n).map(|i| SYMBOLS[(seq0 as usize + i) % SYMBOLS.len()]));
    let price = Decimal128Array::from_iter_values((0..n).map(|i| {
        let k = (seq0 + i as i64) as i128;
        // up to 10 integer digits and all 8 fractional ones, some negative
        (k * 7_919_999_983 + 12_345_678) * if k % 13 == 0 { -1 } else { 1 }
    }))
    .with_precision_and_scale(18, 8)
    .unwrap();
    let qty = Int32Array::from_iter((0..n).map(|i| {
        let k = seq0 + i as i64;
        (k % 7 != 0).then_some((k % 1000) as i32)
    }));
    let mut tags = ListBuilder::new(StringBuilder::new());
    let mut attrs = MapBuilder::new(
        Some(arrow_array::builder::MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        }),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for i in 0..n {
        let k = seq0 + i as i64;
        if k % 11 == 0 {
            tags.append(false);
        } else {
            for j in 0..(k % 4) {
                tags.values().append_value(format!("tag{j}"));
            }
            tags.append(true);
        }
        for j in 0..(k % 3) {
            attrs.keys().append_value(format!("k{j}"));
            if j == 1 && k % 5 == 0 {
                attrs.values().append_null();
            } else {
                attrs.values().append_value(format!("v{}", k % 17));
            }
        }
        attrs.append(true).unwrap();
    }
    RecordBatch::try_new(
        trades_schema(),
        vec![
            Arc::new(ts),
            Arc::new(seq),
            Arc::new(symbol),
            Arc::new(price),
            Arc::new(qty),
            Arc::new(tags.finish()),
            Arc::new(attrs.finish()),
        ],
    )
    .unwrap()
}

/// The position of a batch's last row (batches are generated in order).
pub fn last_position(batch: &RecordBatch) -> Watermark {
    let i = batch.num_rows() - 1;
    let ts = batch
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .value(i);
    let seq = batch.column(1).as_primitive::<Int64Type>().value(i);
    Watermark::new(ts, seq as u64)
}

pub async fn stage(table: &IcebergTable, run_id: RunId, batches: &[RecordBatch]) -> Box<dyn Staged> {
    let schema = batches.first().map_or_else(trades_schema, |b| b.schema());
    let mut w = table.begin(run_id, schema).await.unwrap();
    for b in batches {
        w.write(b.clone()).await.unwrap();
    }
    w.finish().await.unwrap()
}

pub fn meta(after: Watermark, until: Watermark, run_id: RunId, engine: &str) -> CommitMetadata {
    CommitMetadata {
        window: Window::new(after, until).unwrap(),
        run_id,
        engine_id: engine.into(),
        fencing_token: 7,
    }
}

/// Stages and commits `batches` as the window `(after, last row]`; returns its `until`.
pub async fn commit_window(
    table: &IcebergTable,
    after: Watermark,
    batches: &[RecordBatch],
) -> (Watermark, RunId) {
    let until = last_position(batches.last().unwrap());
    let run_id = RunId::new();
    let staged = stage(table, run_id, batches).await;
    staged.commit(&meta(after, until, run_id, "test")).await.unwrap();
    (until, run_id)
}

/// The committed watermark (panics when there is none).
pub async fn committed_until(table: &IcebergTable) -> Watermark {
    table
        .committed()
        .await
        .unwrap()
        .expect("a committed window")
        .until
}

/// Every row of the table as read back by iceberg-rust's own scan.
pub async fn read_back(table: &IcebergTable) -> Vec<RecordBatch> {
    let t = table.load().await.unwrap();
    t.scan()
        .select_all()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Figures every reader must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Figures {
    pub count: u64,
    pub sum_seq: i128,
    /// sum(price) * 10^8, exact
    pub sum_price_scaled: i128,
    pub qty_nulls: u64,
    pub sum_qty: i64,
    pub tag_elements: u64,
    pub attr_entries: u64,
    pub min_ts: i64,
    pub max_ts: i64,
}

pub fn figures(batches: &[RecordBatch]) -> Figures {
    let mut f = Figures {
        min_ts: i64::MAX,
        max_ts: i64::MIN,
        ..Figures::default()
    };
    for b in batches {
        let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
        f.count += b.num_rows() as u64;
        let seq = col("seq");
        for v in seq.as_primitive::<Int64Type>().values() {
            f.sum_seq += *v as i128;
        }
        for v in col("price").as_primitive::<Decimal128Type>().values() {
            f.sum_price_scaled += v;
        }
        let qty = col("qty");
        let qty = qty.as_primitive::<Int32Type>();
        f.qty_nulls += qty.null_count() as u64;
        f.sum_qty += qty.iter().flatten().map(i64::from).sum::<i64>();
        let tags = col("tags");
        let tags = tags.as_list::<i32>();
        f.tag_elements += (0..tags.len())
            .filter(|i| tags.is_valid(*i))
            .map(|i| tags.value_length(i) as u64)
            .sum::<u64>();
        let attrs = col("attrs");
        let attrs = attrs.as_map();
        f.attr_entries += (0..attrs.len())
            .map(|i| attrs.value_length(i) as u64)
            .sum::<u64>();
        for v in col("ts").as_primitive::<TimestampMicrosecondType>().values() {
            f.min_ts = f.min_ts.min(*v);
            f.max_ts = f.max_ts.max(*v);
        }
    }
    f
}

/// Data files currently on disk under the warehouse.
pub fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs `tests/readers.py` (pyiceberg and chdb's `icebergLocal`) with `cfg`
/// inside `dir` (chdb only reads files under its working directory,
/// `user_files_path = "."`), at most `timeout_s` seconds, and returns its
/// JSON report. Panics with the script's output if it fails; `when` names the
/// moment in the message.
pub fn run_readers(dir: &Path, cfg: &serde_json::Value, timeout_s: u32, when: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers.py");
    let out = std::process::Command::new("timeout")
        .current_dir(dir)
        .arg(timeout_s.to_string())
        .arg(offload_testkit::venv_python())
        .arg(&script)
        .arg(cfg.to_string())
        .output()
        .expect("run the reader script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "reader script failed{when}: {}\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad reader output ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
