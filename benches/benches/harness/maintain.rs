//! Row 5, `--systems maintain`: table maintenance (issue #13) on a table the
//! engine offloaded in many small windows.
//!
//! For each of two partition sizes (a fifth and four fifths of the rows), a
//! setup child copies the source table with its timestamps shifted so that
//! exactly that many rows fall on the day before midnight (a closed day
//! partition; the rest is the open day holding the watermark), and row 1's
//! engine offloads the copy in `--maintain-windows` windows (`max_window`),
//! as a running offload would have. The table is then kept as a pristine copy
//! and, once per repetition, restored and maintained by a child of its own
//! (`IcebergTable::maintain_with`: compaction of the closed partition,
//! expiry of every snapshot but the newest, deletion of what only they
//! referenced), so the child's peak RSS is the maintenance's alone.
//!
//! Checked before a run counts: the table's count and content hash through
//! ClickHouse (`icebergLocal`) equal the copy's before and after, the
//! maintenance rewrote exactly the closed partition's files and rows, the
//! closed partition then has at most `ceil(bytes / target) + 1` live files,
//! the open one is untouched, and no Parquet file but the live ones is left
//! on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offload_benches::data::{self, DATABASE};
use offload_benches::procfs;
use offload_core::{Offloader, TableConfig};
use offload_sink_iceberg::{MaintenanceConfig, Step};
use offload_watermark_store::FileStore;
use serde_json::{Value, json};

use super::{
    Args, BoxError, Run, SOURCE_TABLE, Setup, Summary, System, Timer, child_command, execute, human, median,
    sink, source, spawn_child, table_config, thousands, tsv, with,
};

/// Midnight 2025-01-01 UTC, in milliseconds: the day boundary the maintenance
/// tables are split at (the generator centres the source's rows on it).
const MIDNIGHT_MS: i64 = 1_735_689_600_000;
/// Fewest live files the closed partition must have before compaction.
const MIN_FILES: u64 = 50;

/// A partition of an Iceberg table as ClickHouse reads it.
#[derive(Debug, Clone, Default)]
struct PartitionStats {
    files: u64,
    rows: u64,
    bytes: u64,
}

impl PartitionStats {
    fn to_json(&self) -> Value {
        json!({ "files": self.files, "rows": self.rows, "bytes": self.bytes })
    }
}

/// Live files, rows and bytes per day of the table at `location`, read
/// through ClickHouse (`_path` of every row; sizes from the file system).
/// A file holding rows of two days is an error.
fn partitions(setup: &Setup, location: &str) -> Result<BTreeMap<String, PartitionStats>, BoxError> {
    let text = setup.front.query(&format!(
        "SELECT _path, toString(toDate(min(exchange_timestamp), 'UTC')), \
         toString(toDate(max(exchange_timestamp), 'UTC')), count() \
         FROM icebergLocal('{location}') GROUP BY _path FORMAT TSV"
    ));
    let mut days: BTreeMap<String, PartitionStats> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, lo, hi, rows] = fields[..] else {
            return Err(format!("unreadable file line {line:?}").into());
        };
        if lo != hi {
            return Err(format!("{path} holds rows of {lo} and {hi}").into());
        }
        // ClickHouse may report the path without its leading '/'.
        let size = std::fs::metadata(path)
            .or_else(|_| std::fs::metadata(format!("/{path}")))
            .map_err(|e| format!("{path}: {e}"))?
            .len();
        let day = days.entry(lo.to_owned()).or_default();
        day.files += 1;
        day.rows += rows.parse::<u64>()?;
        day.bytes += size;
    }
    Ok(days)
}

/// The closed day (the one before the last) and the open day of a table
/// split by the setup.
fn split(days: &BTreeMap<String, PartitionStats>) -> Result<(&PartitionStats, &PartitionStats), BoxError> {
    let mut it = days.values();
    match (it.next(), it.next(), it.next()) {
        (Some(closed), Some(open), None) => Ok((closed, open)),
        _ => Err(format!(
            "expected two day partitions, found {:?}",
            days.keys().collect::<Vec<_>>()
        )
        .into()),
    }
}

fn days_json(days: &BTreeMap<String, PartitionStats>) -> Value {
    days.iter()
        .map(|(d, s)| (d.clone(), s.to_json()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), BoxError> {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !status.success() {
        return Err(format!("cp -a {} {} failed: {status}", from.display(), to.display()).into());
    }
    Ok(())
}

/// A table offloaded in small windows, kept pristine for every repetition.
pub(super) struct Prepared {
    partition_rows: u64,
    out: PathBuf,
    pristine: PathBuf,
    table: String,
    location: String,
    checksum: (u64, u64),
    before: BTreeMap<String, PartitionStats>,
    setup: Value,
}

/// Runs the setup child for a closed partition of `partition_rows` rows and
/// checks the table it offloaded.
pub(super) fn prepare(args: &Args, setup: &Setup, partition_rows: u64) -> Result<Prepared, BoxError> {
    let tag = format!("maintain-setup-{partition_rows}");
    let out = setup.run_dir.join(&tag);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let mut command = child_command(args, setup, System::MaintainSetup, SOURCE_TABLE, &out)?;
    command.args(["--partition-rows", &partition_rows.to_string()]);
    let report = spawn_child(setup, System::MaintainSetup, command)?;
    let raw = report.raw;
    let copy = raw["source_table"].as_str().ok_or("no source_table")?.to_owned();
    let location = raw["table_location"]
        .as_str()
        .ok_or("no table_location")?
        .to_owned();

    let expected = data::parse_checksum(
        &setup
            .front
            .query(&data::bronze_checksum(&format!("{DATABASE}.{copy}"))),
    )
    .ok_or("unreadable checksum")?;
    setup
        .front
        .query(&format!("DROP TABLE IF EXISTS {DATABASE}.{copy}"));
    if expected.0 != setup.checksum.0 {
        return Err(format!(
            "maintain setup: the copy holds {} rows, the source {}",
            expected.0, setup.checksum.0
        )
        .into());
    }
    let got = data::parse_checksum(
        &setup
            .front
            .query(&data::bronze_checksum(&format!("icebergLocal('{location}')"))),
    )
    .ok_or("unreadable checksum")?;
    if got != expected {
        return Err(
            format!("maintain setup: the Iceberg table holds {got:?}, its source {expected:?}").into(),
        );
    }
    let before = partitions(setup, &location)?;
    let (closed, open) = split(&before)?;
    if closed.rows != partition_rows || closed.rows + open.rows != expected.0 {
        return Err(format!(
            "maintain setup: partitions {before:?}, wanted {partition_rows} rows in the closed one"
        )
        .into());
    }
    if closed.files < MIN_FILES {
        return Err(format!(
            "maintain setup: the closed partition has {} files, fewer than {MIN_FILES} (raise --maintain-windows)",
            closed.files
        )
        .into());
    }
    let pristine = setup.run_dir.join(format!("{tag}.pristine"));
    copy_dir(&out, &pristine)?;
    eprintln!(
        "[maintain] setup: {} rows offloaded in {} windows ({:.3} s of run_once, {} rows/s, peak RSS {} MiB); \
         closed partition {} rows in {} files ({:.1} MB), open {} rows in {} files",
        thousands(expected.0),
        raw["windows"],
        raw["seconds"].as_f64().unwrap_or(f64::NAN),
        thousands((expected.0 as f64 / raw["seconds"].as_f64().unwrap_or(f64::NAN)) as u64),
        report.usage.peak_rss >> 20,
        thousands(closed.rows),
        closed.files,
        closed.bytes as f64 / 1e6,
        thousands(open.rows),
        open.files,
    );
    let setup_json = json!({
        "child_report": raw, "client_peak_rss_bytes": report.usage.peak_rss,
        "partitions": days_json(&before), "checked": "count + content hash match the copy",
    });
    Ok(Prepared {
        partition_rows,
        out,
        pristine,
        table: copy,
        location,
        checksum: expected,
        before,
        setup: setup_json,
    })
}

/// Restores the prepared table and times its maintenance in a child.
pub(super) fn measure(args: &Args, setup: &Setup, prepared: &Prepared) -> Result<Run, BoxError> {
    copy_dir(&prepared.pristine, &prepared.out)?;
    let command = child_command(args, setup, System::Maintain, &prepared.table, &prepared.out)?;
    let report = spawn_child(setup, System::Maintain, command)?;
    let raw = report.raw;
    let n = |k: &str| raw[k].as_u64().unwrap_or(0);
    let p = prepared.partition_rows;
    let (closed_before, open_before) = split(&prepared.before)?;
    if n("partitions_compacted") != 1
        || n("rows_rewritten") != p
        || n("files_rewritten") != closed_before.files
        || n("snapshots_expired") == 0
    {
        return Err(format!(
            "maintain: expected the closed partition ({p} rows, {} files) compacted and snapshots expired, got {raw}",
            closed_before.files
        )
        .into());
    }
    let got = data::parse_checksum(&setup.front.query(&data::bronze_checksum(&format!(
        "icebergLocal('{}')",
        prepared.location
    ))))
    .ok_or("unreadable checksum")?;
    if got != prepared.checksum {
        return Err(format!(
            "maintain: the table holds {got:?} after, {:?} before",
            prepared.checksum
        )
        .into());
    }
    let after = partitions(setup, &prepared.location)?;
    let (closed, open) = split(&after)?;
    let target = args.maintain_target_file_size;
    let bound = closed.bytes.div_ceil(target) + 1;
    if closed.rows != p || closed.files > bound {
        return Err(format!(
            "maintain: the closed partition has {} rows in {} files after ({} bytes, at most {bound} files)",
            closed.rows, closed.files, closed.bytes
        )
        .into());
    }
    if open.files != open_before.files || open.rows != open_before.rows {
        return Err(format!("maintain: the open partition changed: {open_before:?} -> {open:?}").into());
    }
    // Expiry keeps main's newest snapshot (the replace) and the append below
    // it: that one is the table's data version (the replace changes no rows),
    // which the committed window's markers name. It still lists the
    // compacted-away files, so they stay on disk until the next append lets
    // it expire; every other snapshot goes.
    let windows = prepared.setup["child_report"]["windows"].as_u64().unwrap_or(0);
    let (on_disk, _) = procfs::parquet_files(&prepared.out);
    let live = closed.files + open.files;
    if n("snapshots_expired") + 1 != windows || on_disk as u64 != live + closed_before.files {
        return Err(format!(
            "maintain: {} of {windows} append snapshots expired (expected all but the data version); \
             {on_disk} Parquet files on disk, {live} live + {} compacted away expected",
            n("snapshots_expired"),
            closed_before.files
        )
        .into());
    }
    let checked = format!(
        "count + content hash unchanged; closed partition {} -> {} files (<= {bound}); {} of {windows} snapshots \
         expired; on disk: the live files + the {} compacted-away ones the data-version snapshot lists",
        closed_before.files,
        closed.files,
        n("snapshots_expired"),
        closed_before.files
    );
    let number = |k: &str| raw[k].as_f64().unwrap_or(0.0);
    let run = Run {
        system: System::Maintain,
        rows: p,
        seconds: number("compaction_seconds"),
        client_cpu: number("client_cpu"),
        server_cpu: number("server_cpu"),
        client_peak_rss: report.usage.peak_rss,
        server_peak_rss: report.server_peak_rss,
        files: closed.files as usize,
        parquet_bytes: closed.bytes,
        checked,
        raw: raw.clone(),
    };
    let mut raw = with(raw, "partition_rows", p.into());
    raw = with(raw, "target_file_size", target.into());
    raw = with(raw, "partitions_before", days_json(&prepared.before));
    raw = with(raw, "partitions_after", days_json(&after));
    raw = with(raw, "setup", prepared.setup.clone());
    Ok(Run { raw, ..run })
}

/// The maintenance figures: per partition size, medians over the
/// repetitions, and their ratios to row 1 of the same run: of the medians
/// (`engine`), and the median of each repetition's ratio to the row-1 run
/// just before it (`engine_runs`, in repetition order), which drifting load
/// on a shared machine disturbs less.
pub(super) fn summary(runs: &[&Run], engine: Option<&Summary>, engine_runs: &[&Run]) -> Option<Value> {
    if runs.is_empty() {
        return None;
    }
    let mut sizes: Vec<u64> = runs.iter().map(|r| r.rows).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let engine_rps = engine.map(Summary::rows_per_s);
    let engine_rss = engine.map(|e| e.median.client_peak_rss as f64);
    let per_size: Vec<Value> = sizes
        .iter()
        .map(|&p| {
            let mine: Vec<&&Run> = runs.iter().filter(|r| r.rows == p).collect();
            let m = |f: &dyn Fn(&Run) -> f64| median(&mut mine.iter().map(|r| f(r)).collect::<Vec<_>>());
            let compaction_s = m(&|r| r.seconds);
            let total_s = m(&|r| r.raw["seconds"].as_f64().unwrap_or(f64::NAN));
            let rss = m(&|r| r.client_peak_rss as f64);
            let first = &mine[0].raw;
            let bytes_read = first["bytes_read"].as_f64().unwrap_or(f64::NAN);
            let rps = p as f64 / compaction_s;
            // Each repetition against the row-1 run of the same repetition.
            let paired = |f: &dyn Fn(&Run, &Run) -> f64| -> Option<f64> {
                let mut v: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| {
                        let e = engine_runs.get(usize::try_from(r.raw["repetition"].as_u64()?).ok()?)?;
                        Some(f(r, e))
                    })
                    .collect();
                (!v.is_empty()).then(|| median(&mut v))
            };
            let paired_rps = paired(&|r, e| (r.rows as f64 / r.seconds) / (e.rows as f64 / e.seconds));
            let paired_rss = paired(&|r, e| r.client_peak_rss as f64 / e.client_peak_rss as f64);
            let setup = &first["setup"];
            let setup_s = setup["child_report"]["seconds"].as_f64().unwrap_or(f64::NAN);
            let setup_rows = setup["child_report"]["rows"].as_f64().unwrap_or(f64::NAN);
            json!({
                "partition_rows": p,
                "samples": mine.len(),
                "compaction_seconds_samples": mine.iter().map(|r| r.seconds).collect::<Vec<_>>(),
                "peak_rss_samples": mine.iter().map(|r| r.client_peak_rss).collect::<Vec<_>>(),
                "compaction_seconds": compaction_s,
                "maintain_seconds": total_s,
                "expiry_and_deletion_seconds": total_s - compaction_s,
                "client_cpu_s": m(&|r| r.client_cpu),
                "rows_per_s": rps,
                "input_mb_per_s": bytes_read / compaction_s / 1e6,
                "bytes_read": bytes_read, "bytes_written": first["bytes_written"],
                "files_rewritten": first["files_rewritten"], "files_written": first["files_written"],
                "snapshots_expired": first["snapshots_expired"], "files_deleted": first["files_deleted"],
                "manifests_before": first["manifests_before"], "manifests_after": first["manifests_after"],
                "peak_rss_bytes": rss,
                "rows_per_s_over_engine": engine_rps.map(|e| rps / e),
                "peak_rss_over_engine": engine_rss.map(|e| rss / e),
                "rows_per_s_over_engine_paired_median": paired_rps,
                "peak_rss_over_engine_paired_median": paired_rss,
                "setup": {
                    "windows": setup["child_report"]["windows"], "window_ms": setup["child_report"]["window_ms"],
                    "run_once_seconds": setup_s, "rows_per_s": setup_rows / setup_s,
                    "peak_rss_bytes": setup["client_peak_rss_bytes"],
                },
            })
        })
        .collect();
    let rss = |v: &Value| v["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN);
    let (small, large) = (&per_size[0], &per_size[per_size.len() - 1]);
    Some(json!({
        "engine": { "rows_per_s": engine_rps, "peak_rss_bytes": engine_rss },
        "per_partition_size": per_size,
        "partition_rows_ratio": large["partition_rows"].as_f64().unwrap_or(f64::NAN)
            / small["partition_rows"].as_f64().unwrap_or(f64::NAN),
        "peak_rss_ratio_large_over_small": rss(large) / rss(small),
    }))
}

pub(super) fn render(v: &Value) -> String {
    let sizes = v["per_partition_size"].as_array().cloned().unwrap_or_default();
    let f = |x: &Value, k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    let ratio = |x: &Value, k: &str| x[k].as_f64().map_or("-".to_owned(), |r| format!("{r:.2}x"));
    let mut s = format!(
        "\nmaintenance: maintain_with (compaction of the closed day partition + expiry) on a table the engine \
         offloaded in {} windows; medians of {}\n",
        sizes
            .first()
            .map_or(Value::Null, |x| x["setup"]["windows"].clone()),
        sizes.first().map_or(Value::Null, |x| x["samples"].clone()),
    );
    s += &format!(
        "  {:<26} {:>11} {:>8} {:>9} {:>9} {:>13} {:>9} {:>16} {:>16}\n",
        "closed partition",
        "rows/s",
        "MB/s in",
        "compact s",
        "total s",
        "files",
        "peak RSS",
        "rows/s ÷ engine",
        "RSS ÷ engine"
    );
    for x in &sizes {
        s += &format!(
            "  {:<26} {:>11} {:>8.1} {:>9.3} {:>9.3} {:>13} {:>5} MiB {:>16} {:>16}\n",
            format!(
                "{} rows, {:.1} MB",
                human(f(x, "partition_rows")),
                f(x, "bytes_read") / 1e6
            ),
            thousands(f(x, "rows_per_s") as u64),
            f(x, "input_mb_per_s"),
            f(x, "compaction_seconds"),
            f(x, "maintain_seconds"),
            format!("{} -> {}", x["files_rewritten"], x["files_written"]),
            (f(x, "peak_rss_bytes") as u64) >> 20,
            format!(
                "{} ({})",
                ratio(x, "rows_per_s_over_engine"),
                ratio(x, "rows_per_s_over_engine_paired_median")
            ),
            format!(
                "{} ({})",
                ratio(x, "peak_rss_over_engine"),
                ratio(x, "peak_rss_over_engine_paired_median")
            ),
        );
    }
    s += "  ÷ engine: of the medians (in brackets: the median of each repetition's ratio to its own row-1 run)\n";
    s += &format!(
        "  peak RSS, largest ÷ smallest partition: {:.2}x for {:.1}x the rows\n",
        f(v, "peak_rss_ratio_large_over_small"),
        f(v, "partition_rows_ratio"),
    );
    for x in &sizes {
        s += &format!(
            "  setup ({} rows closed): offload in {} windows of {} ms: {} rows/s, peak RSS {} MiB\n",
            human(f(x, "partition_rows")),
            x["setup"]["windows"],
            x["setup"]["window_ms"],
            thousands(f(&x["setup"], "rows_per_s") as u64),
            x["setup"]["peak_rss_bytes"].as_u64().unwrap_or(0) >> 20,
        );
    }
    s
}

// ---------------------------------------------------------------------------
// Children.
// ---------------------------------------------------------------------------

/// The setup: a copy of the source table with every timestamp shifted so the
/// first `--partition-rows` rows (in key order) fall before midnight, offloaded
/// by row 1's engine in `--maintain-windows` windows: the first window holds
/// the copy's first rows only (a first window runs to the high watermark),
/// then the rest arrives and `run_once` with `max_window` takes it in steps.
pub(super) async fn maintain_setup_child(
    args: &Args,
    url: &str,
    table_name: &str,
    out: &Path,
) -> Result<Value, BoxError> {
    let p = args.partition_rows.ok_or("--partition-rows")?;
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_database(DATABASE)
        .with_compression(clickhouse::Compression::None);
    let src = format!("{DATABASE}.{table_name}");
    let suffix = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("t")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let copy = format!("{table_name}_maintain_{suffix}");

    let n: u64 = client
        .query_raw(&format!("SELECT count() FROM {src}"))
        .fetch_one()
        .await?;
    if p == 0 || p >= n {
        return Err(format!("--partition-rows {p} of {n} rows").into());
    }
    let key_ms = |offset: u64| {
        format!(
            "SELECT toUnixTimestamp64Milli(exchange_timestamp) FROM {src} \
             ORDER BY exchange_timestamp, sequence_number LIMIT 1 OFFSET {offset}"
        )
    };
    let last_closed: i64 = tsv(&client, &key_ms(p - 1)).await?.trim().parse()?;
    let first_open: i64 = tsv(&client, &key_ms(p)).await?.trim().parse()?;
    if last_closed >= first_open {
        return Err(format!(
            "rows {} and {p} share a millisecond: choose another --rows",
            p - 1
        )
        .into());
    }
    let shift_ms = MIDNIGHT_MS - first_open;
    let span = tsv(
        &client,
        &format!(
            "SELECT toUnixTimestamp64Milli(min(exchange_timestamp)), toUnixTimestamp64Milli(max(exchange_timestamp)) \
             FROM {src}"
        ),
    )
    .await?;
    let (min_ms, max_ms) = span
        .trim()
        .split_once('\t')
        .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
        .ok_or_else(|| format!("unreadable span {span:?}"))?;
    let window_ms = ((max_ms - min_ms) / i64::try_from(args.maintain_windows.max(1))?).max(1);

    // The copy, shifted (columns by position; the filter is on the source's
    // own timestamps).
    let select = format!(
        "SELECT addMilliseconds(exchange_timestamp, {shift_ms}) AS shifted, sequence_number, symbol, price, quantity, \
         quote_volume, event_time, kafka_offset, kafka_partition, ingestion_timestamp FROM {src}"
    );
    let first_until = min_ms + window_ms;
    execute(&client, &format!("DROP TABLE IF EXISTS {DATABASE}.{copy}")).await?;
    execute(&client, &format!("CREATE TABLE {DATABASE}.{copy} AS {src}")).await?;
    execute(
        &client,
        &format!(
            "INSERT INTO {DATABASE}.{copy} {select} WHERE toUnixTimestamp64Milli(exchange_timestamp) < {first_until}"
        ),
    )
    .await?;

    let table = TableConfig::builder(&copy)
        .sink_table(format!("{DATABASE}.{copy}"))
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .lag(Duration::from_secs(60))
        .batch_size(args.batch_size)
        .late_horizon(Duration::ZERO)
        .max_window(Duration::from_millis(u64::try_from(window_ms)?))
        .build()?;
    let sink = sink(args, out).await?;
    let store = FileStore::open(out.join("watermarks"))?;
    let engine = Offloader::builder(
        Arc::new(source(args, url)?),
        Arc::new(sink.clone()),
        Arc::new(store),
    )
    .build()?;

    let (mut seconds, mut cpu, mut rows, mut files, mut windows) = (0.0, 0.0, 0u64, 0usize, 0u64);
    let mut inserted_rest = false;
    loop {
        let (t, c) = (Instant::now(), procfs::self_cpu_seconds());
        let s = engine.run_once(&table).await?;
        seconds += t.elapsed().as_secs_f64();
        cpu += procfs::self_cpu_seconds() - c;
        if s.window.is_none() {
            if inserted_rest {
                break;
            }
            return Err("the first window committed nothing".into());
        }
        windows += 1;
        rows += s.rows;
        files += s.files;
        if !inserted_rest {
            // The rest of the rows arrive (untimed).
            execute(
                &client,
                &format!(
                    "INSERT INTO {DATABASE}.{copy} {select} \
                     WHERE toUnixTimestamp64Milli(exchange_timestamp) >= {first_until}"
                ),
            )
            .await?;
            execute(&client, &format!("OPTIMIZE TABLE {DATABASE}.{copy} FINAL")).await?;
            inserted_rest = true;
        }
        if windows > 100 * args.maintain_windows.max(1) {
            return Err(format!("{windows} windows and still going").into());
        }
    }
    let closed: u64 = client
        .query_raw(&format!(
            "SELECT count() FROM {DATABASE}.{copy} WHERE toUnixTimestamp64Milli(exchange_timestamp) < {MIDNIGHT_MS}"
        ))
        .fetch_one()
        .await?;
    if rows != n || closed != p {
        return Err(
            format!("offloaded {rows} of {n} rows; {closed} rows before midnight, wanted {p}").into(),
        );
    }
    let location = sink.load_table(&table).await?.metadata().location().to_owned();
    Ok(json!({
        "rows": rows, "seconds": seconds, "client_cpu": cpu, "server_cpu": 0.0,
        "table_location": location, "source_table": copy, "partition_rows": p,
        "windows": windows, "window_ms": window_ms, "committed_files": files, "shift_ms": shift_ms,
    }))
}

/// The timed maintenance: `maintain_with` on the prepared table, snapshots
/// kept only as long as the newest one (retention and delete grace 0, keep 1),
/// the orphan grace at its default (nothing here is an orphan).
pub(super) async fn maintain_child(args: &Args, table_name: &str, out: &Path) -> Result<Value, BoxError> {
    let table = table_config(table_name, args.batch_size)?;
    let sink = sink(args, out).await?;
    let iceberg = sink.open_table(&table)?;
    // (step, seconds since the start, VmRSS, VmHWM): where the peak is reached.
    type Seen = (&'static str, f64, u64, u64);
    let steps: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let started = Instant::now();
    let hook_steps = Arc::clone(&steps);
    let cfg = MaintenanceConfig::default()
        .target_file_size(args.maintain_target_file_size)
        .snapshot_retention(Duration::ZERO)
        .keep_snapshots(1)
        .delete_grace(Duration::ZERO)
        .on_step(Arc::new(move |step: Step| {
            let at = started.elapsed().as_secs_f64();
            let me = std::process::id();
            let rss = procfs::process_rss(me).unwrap_or(0);
            let hwm = procfs::process_peak_rss(me).unwrap_or(0);
            hook_steps
                .lock()
                .expect("steps")
                .push((step.name(), at, rss, hwm));
        }));
    let rss_before = procfs::process_rss(std::process::id()).unwrap_or(0);
    let timer = Timer::start(args.front_pid);
    let s = iceberg.maintain_with(&cfg).await?;
    let total = started.elapsed().as_secs_f64();
    let steps = steps.lock().expect("steps").clone();
    // Compaction ends with the last replace commit before the expiry.
    let compaction_seconds = steps
        .iter()
        .take_while(|(name, ..)| *name != Step::Expired.name())
        .filter(|(name, ..)| *name == Step::Committed.name())
        .map(|(_, at, ..)| *at)
        .last()
        .ok_or("no replace commit")?;
    let result = timer.stop(
        s.rows_rewritten,
        json!({
            "compaction_seconds": compaction_seconds, "maintain_seconds": total,
            "steps": steps
                .iter()
                .map(|(n, at, rss, hwm)| json!({ "step": n, "at_s": at, "rss_bytes": rss, "peak_rss_bytes": hwm }))
                .collect::<Vec<_>>(),
            "rss_before_bytes": rss_before,
            "partitions_compacted": s.partitions_compacted, "files_rewritten": s.files_rewritten,
            "files_written": s.files_written, "rows_rewritten": s.rows_rewritten,
            "bytes_read": s.bytes_read, "bytes_written": s.bytes_written,
            "manifests_before": s.manifests_before, "manifests_after": s.manifests_after,
            "snapshots_expired": s.snapshots_expired, "files_deleted": s.files_deleted,
            "orphans_deleted": s.orphans_deleted, "commits": s.commits, "conflicts_retried": s.conflicts_retried,
        }),
    );
    Ok(result)
}
