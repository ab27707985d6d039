//! What `offload status` reports: the per-table figures, the verdict on the
//! alert rules' thresholds, and the text and JSON renderings.

use std::time::{Duration, SystemTime};

use offload_core::duration::format_approx;
use offload_core::{TableState, Watermark, system_time_to_micros};
use serde_json::{Value, json};

use crate::commands::utc;

/// Consecutive failures that need a person (alert `OffloadConsecutiveFailures`).
pub const FAILURES: u32 = 3;
/// Lag (now minus the committed watermark) that needs a person (alert `OffloadLagHigh`).
pub const MAX_LAG: Duration = Duration::from_secs(30 * 60);
/// Lag at which a watermark that is not catching up is stale (alert
/// `OffloadWatermarkStale`).
pub const STALE: Duration = Duration::from_secs(3600);
/// A watermark moved this recently (a successful run committed rows) is
/// catching up, not stale (the alert's `changes(...[15m])`).
const CATCHING_UP: Duration = Duration::from_secs(15 * 60);

/// Late rows as the next sweep would find them, from per-bucket counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LateRows {
    /// Rows ClickHouse holds inside the late horizon beyond what Iceberg
    /// holds there: the next sweep repairs them.
    pub pending: u64,
    /// Rows ClickHouse holds in the horizon below the late horizon beyond
    /// what Iceberg holds: they arrived too late and are never offloaded.
    pub beyond_horizon: u64,
    /// Rows Iceberg holds inside the horizon that ClickHouse does not
    /// (expired upstream): kept, reported.
    pub excess: u64,
    /// Buckets inside the horizon whose counts differ.
    pub buckets_differing: usize,
}

/// Whether and how late rows were counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Late {
    /// Nothing committed yet: nothing to sweep below.
    #[default]
    NothingCommitted,
    /// `late_horizon = "0s"`: the table is never swept.
    Off,
    /// `--no-source`.
    Skipped,
    /// Counted.
    Counted(LateRows),
}

/// What the Iceberg table says of its maintenance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// When the newest maintenance (compaction, manifest rewrite) snapshot
    /// still in the metadata was committed.
    pub last_commit: Option<SystemTime>,
    /// Snapshots on main that a maintenance within the allowed interval
    /// would have expired: more than `keep_snapshots`, older than
    /// `snapshot_retention` (and replaced longer than `delete_grace` ago) by
    /// more than that interval. Above 0: maintenance is overdue.
    pub overdue_snapshots: u64,
    /// The interval allowed: twice `[maintenance] interval` (a day when it is
    /// `"0s"`: `offload maintain` from cron).
    pub interval: Duration,
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
    /// Rows in the current snapshot (its summary's `total-records`).
    pub rows: Option<u64>,
    /// Data files in the current snapshot (`None`: no table yet).
    pub files: Option<u64>,
    /// Snapshots in the table's metadata.
    pub snapshots: Option<u64>,
    /// Late rows.
    pub late: Late,
    /// Maintenance, once the table exists.
    pub maintenance: Option<Maintenance>,
    /// The store's view of the runs.
    pub state: Option<TableState>,
    /// What could not be read.
    pub errors: Vec<String>,
}

impl TableStatus {
    /// What needs a person, one phrase each; empty when nothing does.
    pub fn problems(&self, now: SystemTime) -> Vec<String> {
        let mut out: Vec<String> = self.errors.iter().map(|e| format!("cannot read {e}")).collect();
        if let Some(s) = &self.state
            && s.consecutive_failures >= FAILURES
        {
            out.push(format!("{} consecutive failures", s.consecutive_failures));
        }
        if let Some(lag) = self.lag {
            // Catching up: the latest run succeeded lately and moved the watermark.
            let moving = self.state.as_ref().is_some_and(|s| {
                s.last_row_count > 0
                    && s.last_success_at
                        .and_then(|at| now.duration_since(at).ok())
                        .is_some_and(|age| age <= CATCHING_UP)
            });
            if lag > STALE && !moving {
                out.push(format!(
                    "lag {} > {} and not catching up",
                    format_approx(lag),
                    format_approx(STALE)
                ));
            } else if lag > MAX_LAG {
                out.push(format!("lag {} > {}", format_approx(lag), format_approx(MAX_LAG)));
            }
        }
        // The engine refuses to run past a store that claims more than the
        // table holds (a restored or recreated table): only a person can say
        // which side is right. Not judged when the table could not be read.
        let store = self.state.as_ref().and_then(|s| s.watermark);
        if let Some(store) = store
            && self.errors.is_empty()
            && self.committed.is_none_or(|table| store > table)
        {
            let table = self
                .committed
                .map_or_else(|| "nothing".to_owned(), |t| t.to_string());
            out.push(format!(
                "store ahead of Iceberg ({store} > {table}): runs are refused until a person looks"
            ));
        }
        if let Late::Counted(l) = &self.late
            && l.beyond_horizon > 0
        {
            out.push(format!(
                "{} rows arrived older than late_horizon and are not offloaded",
                l.beyond_horizon
            ));
        }
        if let Some(m) = &self.maintenance
            && m.overdue_snapshots > 0
        {
            out.push(format!(
                "maintenance overdue ({} snapshots past retention)",
                m.overdue_snapshots
            ));
        }
        out
    }

    /// The status as JSON.
    pub fn to_json(&self, now: SystemTime) -> Value {
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
                "started_at": at(started(s)),
                "at": at(finished(s)),
                "rows": s.last_row_count,
                "duration_seconds": s.last_run_duration.map(|d| d.as_secs_f64()),
                "last_success_at": at(s.last_success_at),
                "last_error": s.last_error,
            })
        });
        let late = match &self.late {
            Late::Counted(l) => json!({
                "checked": "counted",
                "pending": l.pending,
                "beyond_horizon": l.beyond_horizon,
                "excess": l.excess,
                "buckets_differing": l.buckets_differing,
            }),
            other => json!({ "checked": match other {
                Late::NothingCommitted => "nothing_committed",
                Late::Off => "off",
                _ => "skipped",
            } }),
        };
        let problems = self.problems(now);
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
                "held": l.expires_at > now,
            })),
            "rows": self.rows,
            "files": self.files,
            "snapshots": self.snapshots,
            "late_rows": late,
            "maintenance": self.maintenance.as_ref().map(|m| json!({
                "last_commit_at": at(m.last_commit),
                "overdue": m.overdue_snapshots > 0,
                "overdue_snapshots": m.overdue_snapshots,
                "interval_seconds": m.interval.as_secs_f64(),
            })),
            "errors": self.errors,
            "problems": problems,
            "ok": problems.is_empty(),
        })
    }
}

/// When the latest run started (its run id is a UUIDv7).
fn started(s: &TableState) -> Option<SystemTime> {
    s.last_run_id.and_then(|r| r.started_at())
}

/// When the latest run finished: its start plus its duration, else the
/// store's last change.
fn finished(s: &TableState) -> Option<SystemTime> {
    match (started(s), s.last_run_duration) {
        (Some(t), Some(d)) => Some(t + d),
        _ => s.updated_at,
    }
}

/// The verdict over every table: `(needs a person, first line)`.
pub fn verdict(rows: &[TableStatus], now: SystemTime) -> (bool, String) {
    let bad: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let p = r.problems(now);
            (!p.is_empty()).then(|| format!("{}: {}", r.table, p.join(", ")))
        })
        .collect();
    if bad.is_empty() {
        let n = rows.len();
        let tables = if n == 1 { "table" } else { "tables" };
        (false, format!("OK  {n} {tables}, nothing needs you"))
    } else {
        (true, format!("ATTENTION  {}", bad.join("; ")))
    }
}

/// `1 file`, `2 files`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub(super) fn text(rows: &[TableStatus], now: SystemTime) -> String {
    let (_, first) = verdict(rows, now);
    let mut out = format!("{first}\n");
    let at = |t: SystemTime| utc(system_time_to_micros(t));
    for r in rows {
        out.push_str(&format!("\n{} ({})\n", r.table, r.sink_table));
        let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
        line(
            "watermark",
            match (r.committed, r.lag) {
                (Some(w), Some(lag)) => format!(
                    "{} (seq {}), lag {}",
                    utc(w.timestamp_micros()),
                    w.sequence(),
                    format_approx(lag)
                ),
                _ => "nothing committed".into(),
            },
        );
        if let Some(s) = &r.state {
            let when = finished(s).map_or_else(|| "-".into(), at);
            let took = s
                .last_run_duration
                .map(|d| format!(" in {:.2}s", d.as_secs_f64()))
                .unwrap_or_default();
            let rows = if s.status == offload_core::RunStatus::Success {
                format!(", {} rows", s.last_row_count)
            } else {
                String::new()
            };
            line(
                "last run",
                if s.last_run_id.is_none() {
                    "never".into()
                } else {
                    format!("{} {when}{rows}{took}", s.status.as_str())
                },
            );
            line(
                "failures",
                format!("{} in a row (attention at {FAILURES})", s.consecutive_failures),
            );
            if s.consecutive_failures > 0
                && let Some(e) = &s.last_error
            {
                line("last error", e.clone());
            }
            line(
                "lease",
                match &s.lease {
                    Some(l) if l.expires_at > now => {
                        format!("held by {} until {}", l.holder, at(l.expires_at))
                    }
                    Some(l) => format!("free (last held by {})", l.holder),
                    None => "free".into(),
                },
            );
        }
        if let (Some(n), Some(f), Some(sn)) = (r.rows, r.files, r.snapshots) {
            line(
                "table",
                format!(
                    "{} in {}, {}",
                    count(n, "row"),
                    count(f, "file"),
                    count(sn, "snapshot")
                ),
            );
        } else {
            line("table", "not created yet".into());
        }
        line(
            "late rows",
            match &r.late {
                Late::Counted(l) => {
                    let mut v = format!("{} pending (the next sweep repairs them)", l.pending);
                    if l.beyond_horizon > 0 {
                        v.push_str(&format!(
                            ", {} beyond the horizon (never offloaded)",
                            l.beyond_horizon
                        ));
                    }
                    if l.excess > 0 {
                        v.push_str(&format!(", {} in Iceberg only (expired upstream?)", l.excess));
                    }
                    v
                }
                Late::NothingCommitted => "-".into(),
                Late::Off => "sweep off (late_horizon = 0s)".into(),
                Late::Skipped => "not counted".into(),
            },
        );
        if let Some(m) = &r.maintenance {
            let last = m.last_commit.map_or_else(
                || "no maintenance commit in the metadata".into(),
                |t| format!("last commit {}", at(t)),
            );
            let state = if m.overdue_snapshots > 0 {
                format!("OVERDUE: {} snapshots past retention", m.overdue_snapshots)
            } else {
                "not overdue".into()
            };
            line("maintenance", format!("{last}, {state}"));
        }
        for e in &r.errors {
            line("cannot read", e.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_each_table_that_needs_a_person() {
        let now = SystemTime::now();
        let mut state = TableState::new("trades");
        state.consecutive_failures = 4;
        let failing = TableStatus {
            table: "trades".into(),
            state: Some(state),
            ..TableStatus::default()
        };
        // Catching up: its latest run committed rows a minute ago.
        let mut moving = TableState::new("quotes");
        moving.last_row_count = 500;
        moving.last_success_at = Some(now - Duration::from_secs(60));
        let behind = TableStatus {
            table: "quotes".into(),
            lag: Some(Duration::from_secs(2 * 3600 + 600)),
            state: Some(moving),
            ..TableStatus::default()
        };
        // Not moving: stale.
        let stale = TableStatus {
            state: None,
            ..behind.clone()
        };
        assert_eq!(stale.problems(now), ["lag 2h 10m > 1h and not catching up"]);
        let mut ahead = TableState::new("bars");
        ahead.watermark = Some(Watermark::new(10, 2));
        let ahead = TableStatus {
            table: "bars".into(),
            committed: Some(Watermark::new(10, 1)),
            state: Some(ahead),
            ..TableStatus::default()
        };
        assert_eq!(ahead.problems(now).len(), 1);
        assert!(ahead.problems(now)[0].starts_with("store ahead of Iceberg"));
        let fine = TableStatus {
            table: "bars".into(),
            lag: Some(Duration::from_secs(60)),
            ..TableStatus::default()
        };
        assert_eq!(
            verdict(std::slice::from_ref(&fine), now),
            (false, "OK  1 table, nothing needs you".into())
        );
        assert_eq!(
            verdict(&[failing, behind, fine], now),
            (
                true,
                "ATTENTION  trades: 4 consecutive failures; quotes: lag 2h 10m > 30m".into()
            )
        );
    }
}
