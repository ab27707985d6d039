//! `offload cleanup`: delete staged files no commit references (left by
//! crashes), older than the orphan grace (`maintenance.orphan_grace`, or its
//! alias `iceberg.writer.orphan_grace`), then exit.

use std::process::ExitCode;

use super::{Common, startup_failed};
use crate::app::{AppError, connect_sink};
use crate::stack::Stack;

/// `offload cleanup`.
#[derive(clap::Args, Debug, Clone)]
pub struct CleanupArgs {
    #[command(flatten)]
    common: Common,
}

/// Runs the subcommand.
pub async fn main(args: CleanupArgs) -> ExitCode {
    let start = async {
        let cfg = args.common.load()?;
        let sink = Stack::from_config(&cfg)?.sink(connect_sink(&cfg).await?);
        Ok::<_, AppError>((cfg.table_configs()?, sink))
    };
    let (tables, sink) = match start.await {
        Ok(v) => v,
        Err(e) => return startup_failed(&e),
    };
    let mut ok = true;
    for t in &tables {
        let removed = async { sink.open(t).await?.cleanup().await }.await;
        match removed {
            Ok(n) => println!("{}: removed {n} orphaned files", t.name()),
            Err(e) => {
                ok = false;
                eprintln!("{}: cleanup FAILED ({}): {e}", t.name(), e.kind());
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
