//! `offload run`: offload every table on a schedule (every `engine.interval`)
//! until Ctrl-C or SIGTERM, or one window per table with `--once`.

use std::process::ExitCode;

use offload_core::{CancellationToken, Error, TableResult};

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
    let shutdown = CancellationToken::new();
    if let Err(e) = crate::signal::install(shutdown.clone()) {
        return startup_failed(&crate::app::AppError::Setup(format!("signal handlers: {e}")));
    }
    let ok = if args.once {
        report(&app.engine.run_all(&app.tables, &shutdown).await)
    } else {
        let mut all_ok = true;
        app.engine
            .run_every(&app.tables, cfg.engine.interval.0, &shutdown, |results| {
                all_ok &= report(results);
            })
            .await;
        all_ok
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
