//! `offload run`: offload every table on a schedule (every `engine.interval`)
//! until Ctrl-C or SIGTERM, or one window per table with `--once`. On the
//! schedule, each table is also maintained every `maintenance.interval`,
//! right after its run (`--once` never maintains: see `offload maintain`).

use std::process::ExitCode;

use offload_core::{CancellationToken, Error, RunSummary, SweepSummary, TableResult};

use super::{Common, startup_failed};
use crate::app::App;

/// `offload run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Run one window per table, then exit.
    #[arg(long)]
    once: bool,
}

/// Prints one line per table; `false` when a table failed.
pub fn report(results: &[TableResult]) -> bool {
    let mut ok = true;
    for (table, r) in results {
        if let Ok(s) = r
            && let Some(sweep) = &s.sweep
            && let Some(line) = sweep_line(sweep)
        {
            println!("{table}: {line}");
        }
        if let Ok(s) = r {
            match &s.maintenance {
                Some(Ok(m)) if !m.is_noop() => {
                    println!("{table}: maintenance: {}", super::maintain::summary_line(m))
                }
                // Logged and counted; the run itself stands.
                Some(Err(f)) => eprintln!("{table}: maintenance FAILED ({}): {f}", f.kind),
                _ => {}
            }
        }
        match r {
            Ok(s) => match s.window {
                Some(w) => println!(
                    "{table}: {} rows in {} files, window {w}, {:.2}s, {:.0} rows/s{}",
                    s.rows,
                    s.files,
                    s.duration.as_secs_f64(),
                    // The window's own rate (read to commit): what a backfill moves.
                    s.rows as f64 / s.duration.as_secs_f64().max(1e-6),
                    progress(s)
                ),
                None => println!("{table}: nothing new"),
            },
            Err(Error::LeaseHeld { holder, .. }) => println!("{table}: skipped, held by {holder}"),
            // A shutdown (Ctrl-C, SIGTERM) abandons a window that has not begun
            // to commit: nothing of it landed, the next run takes it again. That
            // is the graceful stop systemd and Kubernetes ask for, not a failure.
            Err(Error::Cancelled) => {
                println!(
                    "{table}: stopped by shutdown before its commit; nothing committed, the next run takes the window again"
                )
            }
            Err(e) => {
                ok = false;
                eprintln!("{table}: FAILED ({}): {e}", e.kind());
            }
        }
    }
    ok
}

/// `, behind <backlog>, ETA <eta>` for a run that left its table behind (a
/// backfill cut into `max_window` steps); nothing for one that caught up.
pub fn progress(s: &RunSummary) -> String {
    use offload_core::duration::format_approx;
    if s.backlog.is_zero() {
        return String::new();
    }
    let eta = s.eta.map_or_else(|| "unknown".to_owned(), format_approx);
    format!(", behind {}, ETA {eta}", format_approx(s.backlog))
}

/// What a sweep found, or `None` when it found nothing worth a line.
pub fn sweep_line(s: &SweepSummary) -> Option<String> {
    let mut parts = Vec::new();
    if s.late_rows > 0 {
        let age = s.oldest_late.map(|o| {
            let now = offload_core::system_time_to_micros(std::time::SystemTime::now());
            let secs = (now - o.timestamp_micros()).max(0) as u64 / 1_000_000;
            offload_core::duration::format_duration(std::time::Duration::from_secs(secs))
        });
        parts.push(format!(
            "late rows: {} found in {} buckets, {} repaired{}",
            s.late_rows,
            s.buckets_differing,
            s.repaired_rows,
            age.map(|a| format!(" (oldest {a} old)")).unwrap_or_default()
        ));
    }
    if s.beyond_horizon_rows > 0 {
        parts.push(format!(
            "WARNING {} rows arrived older than late_horizon and are NOT offloaded (raise late_horizon and rerun)",
            s.beyond_horizon_rows
        ));
    }
    if s.excess_rows > 0 {
        parts.push(format!(
            "{} rows in Iceberg are gone from ClickHouse (expired upstream?), kept",
            s.excess_rows
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Runs the subcommand.
pub async fn main(args: RunArgs) -> ExitCode {
    let start = async {
        let cfg = args.common.load_with_metrics()?;
        let app = App::build(&cfg).await?;
        Ok::<_, crate::app::AppError>((cfg, app))
    };
    let (cfg, app) = match start.await {
        Ok(v) => v,
        Err(e) => return startup_failed(&e),
    };
    // Every table's series at zero from the first scrape (monitoring/alerts.yml).
    let maintained = cfg.maintenance.run_interval().filter(|_| !args.once);
    offload_core::metrics::register(env!("CARGO_PKG_VERSION"), &app.tables, maintained);
    let shutdown = CancellationToken::new();
    if let Err(e) = crate::signal::install(shutdown.clone()) {
        return startup_failed(&crate::app::AppError::Setup(format!("signal handlers: {e}")));
    }
    crate::http::health().ready();
    let ok = if args.once {
        report(&app.engine.run_all(&app.tables, &shutdown).await)
    } else {
        // The exit status of a loop stopped by SIGTERM says how it left the
        // tables, not whether one failed once a day ago: a transient failure
        // that the next cycle cured must not mark the systemd unit failed.
        let mut failing: std::collections::BTreeSet<String> = Default::default();
        app.engine
            .run_every(&app.tables, cfg.engine.interval.0, &shutdown, |results| {
                report(results);
                for (table, r) in results {
                    match r {
                        Err(e) if !matches!(e, Error::LeaseHeld { .. } | Error::Cancelled) => {
                            failing.insert(table.clone())
                        }
                        _ => failing.remove(table),
                    };
                }
            })
            .await;
        failing.is_empty()
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
