//! `offload`: offload ClickHouse tables into Apache Iceberg, exactly once.
//!
//! ```text
//! offload run --config offload.toml --once      # one window per table, then exit
//! offload run --config offload.toml             # every engine.interval until Ctrl-C / SIGTERM
//! offload cleanup --config offload.toml         # delete orphaned staged files
//! offload maintain --config offload.toml        # compact, expire snapshots, delete unreferenced files
//! offload status --config offload.toml --json   # watermark, lag, last run, failures, files
//! offload reconcile --config offload.toml --from now-2h
//! ```
//!
//! See the crate README and `offload.example.toml`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use offload_cli::app::init_logging;
use offload_cli::commands::{cleanup, maintain, reconcile, run, status};

// No #[global_allocator]: the system allocator (glibc malloc). mimalloc took
// 16-33% more CPU and more peak RSS on the same window (harness row 1m,
// benches/README.md "Allocator (row 1m)"), so the program does not use it.

#[derive(Parser, Debug)]
#[command(
    name = "offload",
    version,
    about = "Offload ClickHouse tables into Apache Iceberg, exactly once",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Offload every table on a schedule (or one window per table with --once).
    Run(run::RunArgs),
    /// Delete staged files no commit references (left by crashes), then exit.
    Cleanup(cleanup::CleanupArgs),
    /// Compact small files, rewrite manifests, expire old snapshots and delete
    /// unreferenced files of every table, then exit.
    Maintain(maintain::MaintainArgs),
    /// Whether anything needs you, then per table: watermark, lag, last run, failures,
    /// rows, files, snapshots, late rows, maintenance, lease.
    Status(status::StatusArgs),
    /// Prove, bucket by bucket, that ClickHouse, Iceberg (and Kafka) hold the same rows.
    Reconcile(reconcile::ReconcileArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(match cli.command {
        Command::Status(_) | Command::Reconcile(_) => "warn",
        _ => "info",
    });
    match cli.command {
        Command::Run(a) => run::main(a).await,
        Command::Cleanup(a) => cleanup::main(a).await,
        Command::Maintain(a) => maintain::main(a).await,
        Command::Status(a) => status::main(a).await,
        Command::Reconcile(a) => reconcile::main(a).await,
    }
}
