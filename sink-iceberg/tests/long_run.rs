//! The long run of issue #13: 2,000 small windows over five day partitions,
//! offloaded twice (SQLite catalogs, local warehouses; side by side, one
//! core each): table A without maintenance and table B with
//! `maintain_with` every 100 windows.
//! Without maintenance the metadata grows with every commit (2,000
//! snapshots); with it the snapshots, the metadata file, the manifests and
//! the files of closed partitions stay bounded, nothing unreferenced is left
//! on disk, and B holds exactly A's rows and committed window. pyiceberg and
//! ClickHouse (chdb, `icebergLocal`) read B the same as iceberg-rust, before
//! and after the final maintenance.
//!
//! The figures are printed (`--nocapture`); the assertions are on counts,
//! never on time. Needs the test venv (`bash testing/setup-venv.sh`). Takes
//! about 2-3 minutes on a busy 2-core machine (debug build), most of it A's
//! commits: each one reads and rewrites A's whole, ever longer metadata file.
#![cfg(feature = "sqlite")] // the independent readers open the SQLite catalog

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{RecordBatch, UInt32Array};
use common::*;
use futures::TryStreamExt;
use iceberg::spec::DataContentType;
use iceberg::table::Table;
use offload_core::{MaintenanceSummary, RunId, SinkTable, Watermark};
use offload_sink_iceberg::{IcebergTable, MaintenanceConfig};
use serde_json::Value;

/// Windows offloaded into each table.
const WINDOWS: usize = 2_000;
/// Windows per UTC day: five day partitions, four of them closed at the end.
const PER_DAY: usize = 400;
const DAYS: usize = WINDOWS / PER_DAY;
/// Rows per window.
const ROWS: usize = 20;
/// Windows measured at the start and at the end of the run.
const PROBE: usize = 50;
/// B is maintained every this many windows: after windows 50, 150, ...,
/// 1950, so the last [`PROBE`] windows follow a maintenance as the first
/// ones follow the start; then once more after the last window.
const EVERY: usize = 100;
/// Compaction's target: a closed day (400 files of ~20 rows) compacts into
/// several files.
const TARGET: u64 = 32 * 1024;
const MIN_INPUT_FILES: usize = 4;
const KEEP: usize = 10;
const MAX_MANIFESTS: usize = 16;
const KEEP_METADATA_FILES: usize = 10;

fn maintenance() -> MaintenanceConfig {
    MaintenanceConfig::default()
        .target_file_size(TARGET)
        .min_input_files(MIN_INPUT_FILES)
        .max_manifests(MAX_MANIFESTS)
        .snapshot_retention(Duration::ZERO)
        .keep_snapshots(KEEP)
        .delete_grace(Duration::ZERO)
        .orphan_grace(Duration::ZERO)
        .keep_metadata_files(KEEP_METADATA_FILES)
}

/// Window `w`'s rows: `ROWS` trades spread over its slice of its day.
fn window(w: usize) -> RecordBatch {
    let span = DAY_MICROS / PER_DAY as i64;
    let day = (w / PER_DAY) as i64;
    let slot = (w % PER_DAY) as i64;
    trades(
        T0 + day * DAY_MICROS + slot * span,
        1 + (w * ROWS) as i64,
        ROWS,
        span / ROWS as i64,
    )
}

/// The local path of a location written as a path or a `file:` URL.
fn local(location: &str) -> PathBuf {
    let p = location
        .strip_prefix("file://")
        .or_else(|| location.strip_prefix("file:"))
        .unwrap_or(location);
    Path::new(p).components().collect()
}

/// What the table's current state looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    metadata_bytes: u64,
    snapshots: usize,
    metadata_log: usize,
    /// Manifests in main's current manifest list.
    manifests: usize,
    /// Live data files of main's current snapshot.
    files: usize,
}

impl Shape {
    const EMPTY: Shape = Shape {
        metadata_bytes: 0,
        snapshots: 0,
        metadata_log: 0,
        manifests: 0,
        files: 0,
    };
}

async fn shape(table: &IcebergTable) -> Shape {
    let t = table.load().await.unwrap();
    let meta = t.metadata();
    let snapshot = meta.current_snapshot().unwrap();
    let list = t.manifest_list_reader(snapshot).load().await.unwrap();
    let mut files = 0;
    for m in list.entries() {
        let manifest = m.load_manifest(t.file_io()).await.unwrap();
        for e in manifest.entries() {
            assert_eq!(e.content_type(), DataContentType::Data);
            files += usize::from(e.is_alive());
        }
    }
    Shape {
        metadata_bytes: std::fs::metadata(local(t.metadata_location().unwrap()))
            .unwrap()
            .len(),
        snapshots: meta.snapshots().count(),
        metadata_log: meta.metadata_log().len(),
        manifests: list.entries().len(),
        files,
    }
}

/// `(partition directory, files, bytes)` of main's live data files.
async fn live_files(table: &IcebergTable) -> BTreeMap<String, (usize, u64)> {
    let t = table.load().await.unwrap();
    let tasks: Vec<_> = t
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for task in tasks {
        let dir = task.data_file_path.rsplit('/').nth(1).unwrap().to_owned();
        let e = out.entry(dir).or_insert((0, 0));
        e.0 += 1;
        e.1 += task.file_size_in_bytes;
    }
    out
}

/// Every file the metadata references, computed here (not by the sink): the
/// current metadata file and its log, and for every snapshot its manifest
/// list, its manifests and their live entries.
async fn referenced(t: &Table) -> BTreeSet<PathBuf> {
    let meta = t.metadata();
    let mut out: BTreeSet<PathBuf> = meta
        .metadata_log()
        .iter()
        .map(|l| local(&l.metadata_file))
        .collect();
    out.insert(local(t.metadata_location().unwrap()));
    for s in meta.snapshots() {
        out.insert(local(s.manifest_list()));
        for m in t.manifest_list_reader(s).load().await.unwrap().entries() {
            out.insert(local(&m.manifest_path));
            for e in m.load_manifest(t.file_io()).await.unwrap().entries() {
                if e.is_alive() {
                    out.insert(local(e.file_path()));
                }
            }
        }
    }
    out
}

/// Files under the table location its metadata does not reference, and
/// referenced files missing from disk.
async fn unreferenced(t: &Table) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let want = referenced(t).await;
    let have = on_disk(&local(t.metadata().location()));
    (
        have.difference(&want).cloned().collect(),
        want.difference(&have).cloned().collect(),
    )
}

/// Every file under `root`.
fn on_disk(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p);
            }
        }
    }
    out
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// What one offload of the 2,000 windows measured.
struct Run {
    /// `Staged::commit` of every window.
    latency: Vec<Duration>,
    start: Shape,
    end: Shape,
    /// After each maintenance (B only), in order.
    maintained: Vec<Shape>,
    summary: MaintenanceSummary,
    maintain_time: Duration,
    total: Duration,
}

fn add(sum: &mut MaintenanceSummary, r: &MaintenanceSummary) {
    sum.partitions_compacted += r.partitions_compacted;
    sum.files_rewritten += r.files_rewritten;
    sum.files_written += r.files_written;
    sum.rows_rewritten += r.rows_rewritten;
    sum.bytes_read += r.bytes_read;
    sum.bytes_written += r.bytes_written;
    sum.manifests_before = sum.manifests_before.max(r.manifests_before);
    sum.manifests_after = r.manifests_after;
    sum.snapshots_expired += r.snapshots_expired;
    sum.files_deleted += r.files_deleted;
    sum.orphans_deleted += r.orphans_deleted;
    sum.commits += r.commits;
    sum.conflicts_retried += r.conflicts_retried;
}

/// Offloads every window into `table`, maintaining it every [`EVERY`]
/// windows when `cfg` is set (not after the last window: the caller runs the
/// final maintenance).
async fn offload(table: &IcebergTable, batches: &[RecordBatch], cfg: Option<&MaintenanceConfig>) -> Run {
    let began = Instant::now();
    table.prepare(trades_schema()).await.unwrap();
    let mut run = Run {
        latency: Vec::with_capacity(batches.len()),
        start: Shape::EMPTY,
        end: Shape::EMPTY,
        maintained: Vec::new(),
        summary: MaintenanceSummary::default(),
        maintain_time: Duration::ZERO,
        total: Duration::ZERO,
    };
    let mut after = Watermark::MIN;
    let mut done = 0;
    while done < batches.len() {
        // The setup batched: stage every window up to the next maintenance
        // (all of them without maintenance), then commit them one by one.
        // Nothing is staged while maintain runs: its orphan grace is 0.
        let upto = match cfg {
            Some(_) => (done + 1..batches.len())
                .find(|w| w % EVERY == PROBE)
                .unwrap_or(batches.len()),
            None => batches.len(),
        };
        let mut staged = Vec::with_capacity(upto - done);
        for batch in &batches[done..upto] {
            let run_id = RunId::new();
            staged.push((run_id, stage(table, run_id, std::slice::from_ref(batch)).await));
        }
        for (batch, (run_id, staged)) in batches[done..upto].iter().zip(staged) {
            let until = last_position(batch);
            let m = meta(after, until, run_id, "long-run");
            let t = Instant::now();
            staged.commit(&m).await.unwrap();
            run.latency.push(t.elapsed());
            after = until;
            done += 1;
            if done == PROBE {
                run.start = shape(table).await;
            }
        }
        if let Some(cfg) = cfg
            && done < batches.len()
        {
            let t = Instant::now();
            let r = table.maintain_with(cfg).await.unwrap();
            run.maintain_time += t.elapsed();
            add(&mut run.summary, &r);
            run.maintained.push(shape(table).await);
        }
    }
    run.end = shape(table).await;
    run.total = began.elapsed();
    run
}

fn keys(batches: &[RecordBatch]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let ts = b
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let seq = b.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
        out.extend(ts.values().iter().copied().zip(seq.values().iter().copied()));
    }
    out
}

/// All rows as one batch sorted by `(ts, seq)` (unique here).
fn sorted(batches: &[RecordBatch]) -> RecordBatch {
    let whole = arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap();
    let k = keys(std::slice::from_ref(&whole));
    let mut order: Vec<u32> = (0..k.len() as u32).collect();
    order.sort_by_key(|i| k[*i as usize]);
    arrow_select::take::take_record_batch(&whole, &UInt32Array::from(order)).unwrap()
}

fn assert_same_rows(a: &RecordBatch, b: &RecordBatch) {
    assert_eq!(a.num_rows(), b.num_rows());
    assert_eq!(a.schema(), b.schema());
    for i in 0..a.num_columns() {
        assert_eq!(
            a.column(i).to_data(),
            b.column(i).to_data(),
            "column {}",
            a.schema().field(i).name()
        );
    }
}

/// Rows per UTC day, as `["2024-03-01", n]`.
fn per_day(batches: &[RecordBatch]) -> Vec<Value> {
    let mut days = BTreeMap::new();
    for b in batches {
        let ts = b
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        for t in ts.values() {
            *days
                .entry(offload_core::rfc3339_micros(*t)[..10].to_owned())
                .or_insert(0u64) += 1;
        }
    }
    days.into_iter().map(|(d, n)| serde_json::json!([d, n])).collect()
}

/// pyiceberg (on the SQLite catalog) and chdb (`icebergLocal` on the table
/// location) read `table` with `tests/readers.py`; both must read what
/// iceberg-rust reads now: count, sums of the numeric columns (exact
/// decimal), nulls, list and map sizes, min/max ts, rows per day, a digest of
/// every row's key, and (pyiceberg) the live file count.
async fn assert_readers_agree(b: &Backend, table: &IcebergTable, name: &str, when: &str) {
    let rows = read_back(table).await;
    let want = figures(&rows);
    let mut lines = Vec::with_capacity(want.count as usize);
    for batch in &rows {
        let ts = batch
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let seq = batch.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
        let sym = batch.column_by_name("symbol").unwrap().as_string::<i32>();
        for i in 0..batch.num_rows() {
            lines.push(format!("{}:{}:{}", seq.value(i), ts.value(i), sym.value(i)));
        }
    }
    let keys = b.dir.path().join(format!("keys-{when}.txt"));
    std::fs::write(&keys, lines.join("\n")).unwrap();
    let t = table.load().await.unwrap();
    let files: usize = live_files(table).await.values().map(|v| v.0).sum();
    let cfg = serde_json::json!({
        "db": b.dir.path().join("catalog.db"),
        "warehouse": b.warehouse(),
        "catalog": offload_sink_iceberg::DEFAULT_CATALOG_NAME,
        "table": name,
        "location": t.metadata().location(),
        "expected_keys": keys,
    });
    let report: Value = run_readers(b.dir.path(), &cfg, 300, &format!(" ({when})"));
    let days = per_day(&rows);
    for reader in ["pyiceberg", "chdb"] {
        let r = &report[reader];
        assert!(r.get("error").is_none(), "{reader} failed {when}: {}", r["error"]);
        let num = |k: &str| -> i128 {
            match &r[k] {
                Value::String(s) => s.parse().unwrap(),
                Value::Number(n) => n.as_i64().unwrap().into(),
                other => panic!("{reader}.{k} {when}: {other}"),
            }
        };
        let got = Figures {
            count: num("count") as u64,
            sum_seq: num("sum_seq"),
            sum_price_scaled: num("sum_price_scaled"),
            qty_nulls: num("qty_nulls") as u64,
            sum_qty: num("sum_qty") as i64,
            tag_elements: num("tag_elements") as u64,
            attr_entries: num("attr_entries") as u64,
            min_ts: num("min_ts") as i64,
            max_ts: num("max_ts") as i64,
        };
        assert_eq!(got, want, "{reader} reads what iceberg-rust reads, {when}");
        assert_eq!(r["digest"], report["expected_digest"], "{reader} row keys {when}");
        assert_eq!(
            r["partitions"].as_array().unwrap(),
            &days,
            "{reader} rows per day {when}"
        );
        eprintln!(
            "{reader} {when}: {} rows, sum(seq) {}, ts {}..{}",
            got.count, got.sum_seq, got.min_ts, got.max_ts
        );
    }
    assert_eq!(
        report["pyiceberg"]["files"].as_u64().unwrap() as usize,
        files,
        "pyiceberg's live files {when}"
    );
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(label: &str, latency: &[Duration], s: &Shape) {
    let latency = if latency.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.1}", ms(median(latency)))
    };
    eprintln!(
        "{label:<34} {latency:>10} {:>12.1} {:>10} {:>8} {:>10} {:>8}",
        kib(s.metadata_bytes),
        s.snapshots,
        s.metadata_log,
        s.manifests,
        s.files
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_windows_with_and_without_maintenance() {
    let began = Instant::now();
    // One catalog file each: the two offloads run side by side (one core
    // each) without contending for SQLite's write lock.
    let (ba, b) = (Backend::sqlite(), Backend::sqlite());
    let plain = ba.table("lake.plain").await;
    let kept = b.table("lake.maintained").await;
    let batches: Arc<Vec<RecordBatch>> = Arc::new((0..WINDOWS).map(window).collect());
    let cfg = maintenance();

    let a = tokio::spawn({
        let (plain, batches) = (plain.clone(), batches.clone());
        async move { offload(&plain, &batches, None).await }
    });
    let m = tokio::spawn({
        let (kept, batches, cfg) = (kept.clone(), batches.clone(), cfg.clone());
        async move {
            let mut m = offload(&kept, &batches, Some(&cfg)).await;
            // Before the final maintenance (B's newest 50 windows not
            // compacted, expired or rewritten yet) and after it, the
            // independent readers read what iceberg-rust reads.
            let window = kept.committed().await.unwrap().unwrap();
            let t = kept.load().await.unwrap();
            let unreferenced = unreferenced(&t).await;
            assert_readers_agree(&b, &kept, "lake.maintained", "before the final maintain").await;
            let t = Instant::now();
            let last = kept.maintain_with(&cfg).await.unwrap();
            m.maintain_time += t.elapsed();
            add(&mut m.summary, &last);
            m.maintained.push(shape(&kept).await);
            assert_readers_agree(&b, &kept, "lake.maintained", "after the final maintain").await;
            (b, m, window, unreferenced)
        }
    });
    let (a, (_b, m, window_before, left)) = (a.await.unwrap(), m.await.unwrap());
    let fin = *m.maintained.last().unwrap();
    let checks = Instant::now();

    eprintln!(
        "\n{WINDOWS} windows of {ROWS} rows, {PER_DAY} per day over {DAYS} days; B maintained every {EVERY} \
         windows (target {TARGET} B, min_input_files {MIN_INPUT_FILES}, keep_snapshots {KEEP}, \
         max_manifests {MAX_MANIFESTS}, retention/grace 0 s)"
    );
    eprintln!(
        "{:<34} {:>10} {:>12} {:>10} {:>8} {:>10} {:>8}",
        "", "commit ms", "metadata KiB", "snapshots", "log", "manifests", "files"
    );
    let (first, tail) = (PROBE, WINDOWS - PROBE);
    row("A (no maintenance), windows 1-50", &a.latency[..first], &a.start);
    row("A, windows 1951-2000", &a.latency[tail..], &a.end);
    row("B (maintained), windows 1-50", &m.latency[..first], &m.start);
    row("B, windows 1951-2000", &m.latency[tail..], &m.end);
    let most = |f: fn(&Shape) -> usize| m.maintained.iter().map(f).max().unwrap();
    let peak = Shape {
        metadata_bytes: m.maintained.iter().map(|s| s.metadata_bytes).max().unwrap(),
        snapshots: most(|s| s.snapshots),
        metadata_log: most(|s| s.metadata_log),
        manifests: most(|s| s.manifests),
        files: most(|s| s.files),
    };
    row("B after any maintain (largest)", &[], &peak);
    row("B after the final maintain", &[], &fin);
    let by_day = |l: &[Duration]| -> Vec<String> {
        l.chunks(PER_DAY)
            .map(|c| format!("{:.1}", ms(median(c))))
            .collect()
    };
    eprintln!(
        "median commit ms per day of windows: A {:?}, B {:?}",
        by_day(&a.latency),
        by_day(&m.latency)
    );
    eprintln!(
        "A: {:.1} s offload ({:.1} s in commits); B: {:.1} s offload ({:.1} s in commits) incl. {:.1} s in {} maintains; {:?}",
        a.total.as_secs_f64(),
        a.latency.iter().sum::<Duration>().as_secs_f64(),
        m.total.as_secs_f64(),
        m.latency.iter().sum::<Duration>().as_secs_f64(),
        m.maintain_time.as_secs_f64(),
        m.maintained.len(),
        m.summary
    );

    // Without maintenance every window is a snapshot and the metadata file
    // grows with them (this is what makes the bounds below able to fail).
    assert_eq!(a.end.snapshots, WINDOWS);
    assert_eq!(a.end.files, WINDOWS);
    assert!(
        a.end.metadata_bytes >= 5 * a.start.metadata_bytes,
        "A's metadata grew several-fold: {} -> {} bytes",
        a.start.metadata_bytes,
        a.end.metadata_bytes
    );
    assert!(a.end.manifests >= WINDOWS / 2, "{:?}", a.end);

    // With maintenance: after every maintenance at most KEEP snapshots (+2
    // for the window commit and the data version, should they sit below the
    // newest KEEP), a bounded manifest list and metadata log.
    for (i, s) in m.maintained.iter().enumerate() {
        assert!(s.snapshots <= KEEP + 2, "maintenance {i}: {s:?}");
        assert!(s.manifests <= MAX_MANIFESTS + 1, "maintenance {i}: {s:?}");
        assert!(s.metadata_log <= KEEP_METADATA_FILES, "maintenance {i}: {s:?}");
    }
    // The metadata file at the end (50 windows after a maintenance) against
    // the start (50 windows after the start): the same 50 appended snapshots
    // plus at most KEEP + 2 carried over, a shorter log: (50 + 12) / 50 =
    // 1.24, so 1.5x leaves room for summaries a few digits longer.
    assert!(
        m.end.metadata_bytes * 2 <= m.start.metadata_bytes * 3,
        "B's metadata at the end is within 1.5x of the start: {} -> {} bytes",
        m.start.metadata_bytes,
        m.end.metadata_bytes
    );
    assert!(m.end.snapshots <= PROBE + KEEP + 2, "{:?}", m.end);

    // Each closed day was compacted exactly once, into files near the target;
    // the watermark's day is left as written.
    assert_eq!(
        m.summary.partitions_compacted,
        (DAYS - 1) as u64,
        "{:?}",
        m.summary
    );
    assert_eq!(m.summary.rows_rewritten, ((DAYS - 1) * PER_DAY * ROWS) as u64);
    let days = live_files(&kept).await;
    assert_eq!(days.len(), DAYS, "{days:?}");
    for (dir, (files, bytes)) in days.iter().take(DAYS - 1) {
        let limit = bytes.div_ceil(TARGET) as usize + 1;
        assert!(*files <= limit, "{dir}: {files} files for {bytes} bytes");
        assert!(
            *files >= 2,
            "{dir}: the target splits a closed day ({files} files)"
        );
    }
    assert_eq!(
        days.values().last().unwrap().0,
        PER_DAY,
        "the open day is not compacted"
    );

    // Between maintenances the only unreferenced files are the metadata
    // files window commits pushed out of the (bounded) log; after the final
    // maintenance no file under B's location is unreferenced, and none
    // referenced is missing.
    let (stale, missing) = left;
    assert!(missing.is_empty(), "referenced files missing: {missing:?}");
    let not_metadata: Vec<_> = stale
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".metadata.json"))
        .collect();
    assert!(not_metadata.is_empty(), "{not_metadata:?}");
    eprintln!(
        "before the final maintain: {} unreferenced files under B, all metadata files out of the log",
        stale.len()
    );
    let t = kept.load().await.unwrap();
    let (stale, missing) = unreferenced(&t).await;
    assert!(stale.is_empty(), "unreferenced files under B: {stale:?}");
    assert!(missing.is_empty(), "referenced files missing: {missing:?}");

    // B holds exactly A's rows (every column) and A's committed window.
    assert_same_rows(
        &sorted(&read_back(&plain).await),
        &sorted(&read_back(&kept).await),
    );
    let (wa, wb) = (
        plain.committed().await.unwrap().unwrap(),
        kept.committed().await.unwrap().unwrap(),
    );
    assert_eq!(wb.until, wa.until);
    assert_eq!(wb.until, last_position(batches.last().unwrap()));
    assert_eq!(
        wb, window_before,
        "the final maintenance leaves B's window as it was"
    );
    eprintln!(
        "long run: {:.1} s ({:.1} s of checks after the offloads)",
        began.elapsed().as_secs_f64(),
        checks.elapsed().as_secs_f64()
    );
}

/// Right after a compaction, before any expiry, main's snapshot is the
/// replace: its manifests list the compacted files as `DELETED` next to the
/// `ADDED` outputs, and the old files are still on disk. pyiceberg and chdb
/// must skip the deleted entries (no row counted twice) and read exactly
/// what iceberg-rust reads. (The long run's readers see this state only
/// after expiry and manifest rewrites dropped those entries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_skip_the_entries_a_compaction_deleted() {
    use iceberg::spec::{ManifestStatus, Operation};

    let b = Backend::sqlite();
    let table = b.table("lake.fresh").await;
    table.prepare(trades_schema()).await.unwrap();
    let mut after = Watermark::MIN;
    // Twelve windows of the first day, two of the second (the watermark's).
    for w in (0..12).chain(PER_DAY..PER_DAY + 2) {
        after = commit_window(&table, after, &[window(w)]).await.0;
    }
    assert_readers_agree(&b, &table, "lake.fresh", "before the compaction").await;
    let rows_before = figures(&read_back(&table).await);

    let cfg = MaintenanceConfig::default()
        .target_file_size(TARGET)
        .min_input_files(MIN_INPUT_FILES);
    let report = table.maintain_with(&cfg).await.unwrap();
    assert_eq!(report.partitions_compacted, 1, "{report:?}");
    assert_eq!(report.files_rewritten, 12, "{report:?}");
    assert_eq!(report.snapshots_expired, 0, "default retention: {report:?}");
    let t = table.load().await.unwrap();
    let current = t.metadata().current_snapshot().unwrap();
    assert_eq!(current.summary().operation, Operation::Replace);
    let mut deleted = 0;
    for m in t.manifest_list_reader(current).load().await.unwrap().entries() {
        for e in m.load_manifest(t.file_io()).await.unwrap().entries() {
            if e.status() == ManifestStatus::Deleted {
                deleted += 1;
                assert!(local(e.file_path()).exists(), "not expired yet: the file stays");
            }
        }
    }
    assert_eq!(deleted, 12, "the replace lists the compacted files as deleted");
    assert_eq!(figures(&read_back(&table).await), rows_before);
    assert_readers_agree(&b, &table, "lake.fresh", "after the compaction").await;
}
