//! `offload`: offload ClickHouse tables into Iceberg, exactly once.
//!
//! ```text
//! offload --config offload.toml --once     # one window per table, then exit
//! offload --config offload.toml            # every `interval` until Ctrl-C
//! ```
//!
//! Ctrl-C finishes a window whose commit has started and abandons one that has
//! not (nothing of it becomes visible); a second Ctrl-C exits at once, which is
//! just as safe: the next start resumes from what the Iceberg table holds.
//! Exit status: 0 when every table succeeded or was skipped because another
//! worker held it, 1 when a table failed, 2 when the program could not start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use offload_core::{CancellationToken, Error, TableResult};
use offload_examples::app::{App, init_logging, init_metrics};
use offload_examples::config::Config;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Offload ClickHouse tables into Apache Iceberg, exactly once"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Run one window per table and exit.
    #[arg(long)]
    once: bool,
    /// Delete staged files no commit references (left by crashes), then exit.
    #[arg(long)]
    cleanup: bool,
}

fn report(results: &[TableResult]) -> bool {
    let mut ok = true;
    for (table, r) in results {
        match r {
            Ok(s) => match s.window {
                Some(w) => println!(
                    "{table}: {} rows in {} files, window {w}, {:.2}s",
                    s.rows,
                    s.files,
                    s.duration.as_secs_f64()
                ),
                None => println!("{table}: nothing new"),
            },
            Err(Error::LeaseHeld { holder, .. }) => println!("{table}: skipped, held by {holder}"),
            Err(e) => {
                ok = false;
                eprintln!("{table}: FAILED ({}): {e}", e.kind());
            }
        }
    }
    ok
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging("info");
    let args = Args::parse();
    let start = async {
        let cfg = Config::load(&args.config)?;
        if let Some(addr) = cfg.metrics_addr {
            init_metrics(addr)?;
        }
        let app = App::build(&cfg).await?;
        Ok::<_, offload_examples::app::AppError>((cfg, app))
    };
    let (cfg, app) = match start.await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("offload: {e}");
            return ExitCode::from(2);
        }
    };

    if args.cleanup {
        let mut ok = true;
        for t in &app.tables {
            match offload_core::Sink::cleanup(app.sink.as_ref(), t).await {
                Ok(n) => println!("{}: removed {n} orphaned files", t.name()),
                Err(e) => {
                    ok = false;
                    eprintln!("{}: cleanup failed: {e}", t.name());
                }
            }
        }
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("offload: finishing or abandoning the current windows (Ctrl-C again to exit now)");
                shutdown.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        }
    });

    let ok = if args.once {
        report(&app.engine.run_all(&app.tables, &shutdown).await)
    } else {
        let mut all_ok = true;
        app.engine
            .run_every(&app.tables, cfg.interval.0, &shutdown, |results| {
                all_ok &= report(results);
            })
            .await;
        all_ok
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
