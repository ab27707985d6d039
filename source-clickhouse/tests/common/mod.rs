//! Shared fixtures for the integration tests: one chdb front per test binary,
//! a fresh database per test, and helpers to read windows.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use futures::TryStreamExt;
use offload_core::{SourceTable, TableConfig, Watermark, Window};
use offload_source_clickhouse::{ClickHouseSource, ClickHouseSourceBuilder, ClickHouseTable};
use offload_testkit::ClickHouseFront;

/// The front shared by the tests of this binary that run at the same time
/// (starting chdb per test would dominate the run time). It lives while any
/// test holds it and is dropped — process stopped, data directory removed —
/// when the last one finishes; a later test starts a new one. Tests isolate
/// themselves by database.
pub fn front() -> Arc<ClickHouseFront> {
    static SHARED: Mutex<Weak<ClickHouseFront>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(front) = slot.upgrade() {
        return front;
    }
    let front = Arc::new(ClickHouseFront::start());
    *slot = Arc::downgrade(&front);
    front
}

/// A fresh database named after the test, on a shared front; dropped with it.
pub struct TestDb {
    pub name: String,
    pub front: Arc<ClickHouseFront>,
}

impl TestDb {
    pub fn new(test: &str) -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t_{test}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let front = front();
        front.query(&format!("CREATE DATABASE `{name}`"));
        TestDb { name, front }
    }

    pub fn query(&self, sql: &str) -> String {
        self.front.query(sql)
    }

    pub fn url(&self) -> &str {
        self.front.url()
    }

    /// A builder pointed at the front with this database as the default.
    pub fn source(&self) -> ClickHouseSourceBuilder {
        ClickHouseSource::builder(self.front.url()).database(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Keeps a shared data directory small; skipped while panicking so a
        // failing test causes no second panic.
        if !std::thread::panicking() {
            self.front
                .query(&format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// The window holding every row.
pub fn everything() -> Window {
    Window::new(Watermark::MIN, Watermark::new(i64::MAX, u64::MAX)).unwrap()
}

/// Opens `table`, panicking with the error.
pub async fn open(source: &ClickHouseSource, table: &TableConfig) -> ClickHouseTable {
    source
        .open_table(table)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", table.name()))
}

pub async fn read_all(table: &(impl SourceTable + ?Sized), window: Window) -> Vec<RecordBatch> {
    table
        .read(window)
        .await
        .unwrap_or_else(|e| panic!("read {window}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("stream {window}: {e}"))
}

/// The (timestamp µs, sequence) positions in batches, from the columns named
/// by the table config (timestamp: Timestamp(µs); sequence: Decimal(20,0),
/// Int64 or Int32).
pub fn positions(table: &TableConfig, batches: &[RecordBatch]) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    for b in batches {
        let ts = b.column_by_name(table.timestamp_column()).expect("ts column");
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let seq = b.column_by_name(table.sequence_column()).expect("seq column");
        for i in 0..b.num_rows() {
            let s = match seq.data_type() {
                DataType::Decimal128(..) => {
                    u64::try_from(seq.as_primitive::<Decimal128Type>().value(i)).unwrap()
                }
                DataType::Int64 => seq.as_primitive::<Int64Type>().value(i).max(0) as u64,
                DataType::Int32 => seq
                    .as_primitive::<arrow_array::types::Int32Type>()
                    .value(i)
                    .max(0) as u64,
                other => panic!("sequence column as {other}"),
            };
            assert!(!ts.is_null(i));
            out.push((ts.value(i), s));
        }
    }
    out
}

/// Parses TSV lines of two integers.
pub fn parse_pairs(tsv: &str) -> Vec<(i64, u64)> {
    tsv.lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap_or_else(|| panic!("bad line {l:?}"));
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// A small deterministic PRNG (SplitMix64): reproducible cut points with the
/// seed printed on failure, no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
