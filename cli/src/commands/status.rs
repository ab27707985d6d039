//! `offload status`: per table, what the Iceberg table holds (committed
//! watermark, how far behind now it is, data files and snapshots) and what
//! the store says of the runs (last run, its status, consecutive failures,
//! the lease). Reads only: connects to the catalog and the store, never to
//! ClickHouse.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use offload_core::{TableConfig, TableState, Watermark, WatermarkStore, system_time_to_micros};
use offload_sink_iceberg::IcebergSink;
use serde_json::{Value, json};

use super::{Common, startup_failed, utc};
use crate::app::{AppError, connect_sink, connect_store};
use crate::stack::Stack;

/// `offload status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Print JSON (one object with a `tables` array) instead of text.
    #[arg(long)]
    json: bool,
}

/// One table's status.
#[derive(Debug, Clone, Default)]
pub struct TableStatus {
    /// The table's `name`.
    pub table: String,
    /// The sink table as configured.
    pub sink_table: String,
    /// What the Iceberg table holds.
    pub committed: Option<Watermark>,
    /// Now minus the committed watermark's timestamp.
    pub lag: Option<Duration>,
    /// Data files in the current snapshot (`None`: no table yet).
    pub files: Option<u64>,
    /// Snapshots in the table's metadata.
    pub snapshots: Option<u64>,
    /// The store's view of the runs.
    pub state: Option<TableState>,
    /// What could not be read.
    pub errors: Vec<String>,
}

impl TableStatus {
    /// Whether the table is healthy: everything read, and its last run did not fail.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.state.as_ref().is_none_or(|s| s.consecutive_failures == 0)
    }

    /// The status as JSON.
    pub fn to_json(&self) -> Value {
        let wm = |w: &Option<Watermark>| {
            w.map(|w| {
                json!({
                    "timestamp_micros": w.timestamp_micros(),
                    "sequence": w.sequence(),
                    "utc": utc(w.timestamp_micros()),
                })
            })
        };
        let at = |t: Option<SystemTime>| t.map(|t| utc(system_time_to_micros(t)));
        let last_run = self.state.as_ref().map(|s| {
            json!({
                "status": s.status.as_str(),
                "run_id": s.last_run_id.map(|r| r.to_string()),
                "at": at(s.updated_at),
                "rows": s.last_row_count,
                "duration_seconds": s.last_run_duration.map(|d| d.as_secs_f64()),
                "last_success_at": at(s.last_success_at),
                "last_error": s.last_error,
            })
        });
        json!({
            "table": self.table,
            "sink_table": self.sink_table,
            "committed": wm(&self.committed),
            "lag_seconds": self.lag.map(|d| d.as_secs_f64()),
            "store_watermark": wm(&self.state.as_ref().and_then(|s| s.watermark)),
            "last_run": last_run,
            "consecutive_failures": self.state.as_ref().map_or(0, |s| s.consecutive_failures),
            "lease": self.state.as_ref().and_then(|s| s.lease.as_ref()).map(|l| json!({
                "holder": l.holder,
                "token": l.token,
                "expires_at": at(Some(l.expires_at)),
            })),
            "files": self.files,
            "snapshots": self.snapshots,
            "errors": self.errors,
            "ok": self.ok(),
        })
    }
}

/// Reads one table's status.
pub async fn table_status(
    iceberg: &IcebergSink,
    sink: &dyn offload_core::Sink,
    store: &dyn WatermarkStore,
    t: &TableConfig,
) -> TableStatus {
    let mut s = TableStatus {
        table: t.name().to_owned(),
        sink_table: t.sink_table().to_owned(),
        ..TableStatus::default()
    };
    match async { sink.open(t).await?.committed().await }.await {
        Ok(c) => s.committed = c.map(|c| c.until),
        Err(e) => s.errors.push(format!("committed watermark: {e}")),
    }
    if let Some(w) = s.committed {
        let now = system_time_to_micros(SystemTime::now());
        s.lag = Some(Duration::from_micros(
            now.saturating_sub(w.timestamp_micros()).max(0) as u64,
        ));
    }
    match async { iceberg.open_table(t)?.load_if_exists().await }.await {
        Ok(Some(table)) => {
            let meta = table.metadata();
            s.snapshots = Some(meta.snapshots().count() as u64);
            s.files = Some(meta.current_snapshot().map_or(0, |snap| {
                snap.summary()
                    .additional_properties
                    .get("total-data-files")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }));
        }
        Ok(None) => {}
        Err(e) => s.errors.push(format!("iceberg table: {e}")),
    }
    match store.load(t.name()).await {
        Ok(state) => s.state = Some(state),
        Err(e) => s.errors.push(format!("store: {e}")),
    }
    s
}

fn text(rows: &[TableStatus]) -> String {
    let dash = || "-".to_owned();
    let mut lines = vec![
        [
            "table",
            "committed (UTC)",
            "lag",
            "last run",
            "status",
            "failures",
            "files",
            "snapshots",
        ]
        .map(str::to_owned),
    ];
    for r in rows {
        let st = r.state.as_ref();
        lines.push([
            r.table.clone(),
            r.committed.map_or_else(dash, |w| utc(w.timestamp_micros())),
            r.lag.map_or_else(dash, |d| {
                offload_core::duration::format_duration(Duration::from_secs(d.as_secs()))
            }),
            st.and_then(|s| s.updated_at)
                .map_or_else(dash, |t| utc(system_time_to_micros(t))),
            st.map_or_else(dash, |s| s.status.as_str().to_owned()),
            st.map_or(0, |s| s.consecutive_failures).to_string(),
            r.files.map_or_else(dash, |n| n.to_string()),
            r.snapshots.map_or_else(dash, |n| n.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows {
        if let Some(e) = r.state.as_ref().and_then(|s| s.last_error.as_ref())
            && r.state.as_ref().is_some_and(|s| s.consecutive_failures > 0)
        {
            out.push_str(&format!("{}: last error: {e}\n", r.table));
        }
        if let Some(l) = r.state.as_ref().and_then(|s| s.lease.as_ref())
            && l.expires_at > SystemTime::now()
        {
            out.push_str(&format!(
                "{}: leased by {} until {}\n",
                r.table,
                l.holder,
                utc(system_time_to_micros(l.expires_at))
            ));
        }
        for e in &r.errors {
            out.push_str(&format!("{}: cannot read {e}\n", r.table));
        }
    }
    out
}

/// Runs the subcommand.
pub async fn main(args: StatusArgs) -> ExitCode {
    let start = async {
        let cfg = args.common.load()?;
        let stack = Stack::from_config(&cfg)?;
        let iceberg = connect_sink(&cfg).await?;
        let sink = stack.sink(iceberg.clone());
        let store = stack.store(connect_store(&cfg).await?);
        Ok::<_, AppError>((cfg.table_configs()?, iceberg, sink, store))
    };
    let (tables, iceberg, sink, store) = match start.await {
        Ok(v) => v,
        Err(e) => return startup_failed(&e),
    };
    let mut rows = Vec::new();
    for t in &tables {
        rows.push(table_status(&iceberg, sink.as_ref(), store.as_ref(), t).await);
    }
    if args.json {
        let doc = json!({ "tables": rows.iter().map(TableStatus::to_json).collect::<Vec<_>>() });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialise")
        );
    } else {
        print!("{}", text(&rows));
    }
    if rows.iter().all(TableStatus::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
