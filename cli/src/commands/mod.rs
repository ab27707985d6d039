//! The subcommands. Each returns the process exit status:
//!
//! | status | `run`, `cleanup`, `maintain` | `status` | `reconcile` |
//! |---|---|---|---|
//! | 0 | every table succeeded (or was skipped: another worker held it; a failed maintenance inside `run` does not count) | nothing needs you | verdict ok, not yet offloaded, or expired upstream |
//! | 1 | a table failed (the scheduled loop: a table's latest run had failed when it stopped) | something needs a person: >= 3 consecutive failures, lag > 30 min, rows beyond `late_horizon`, the store ahead of the table, maintenance overdue, or a part could not be read | missing, duplicated or diverged rows |
//! | 2 | could not start: bad configuration, unreachable server | same | same, or reconcile could not run |

pub mod cleanup;
pub mod maintain;
pub mod reconcile;
pub mod run;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::{AppError, init_metrics};
use crate::config::{Config, ConfigError};

/// Arguments every subcommand takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The TOML configuration file (see offload.example.toml).
    #[arg(long, short, env = "OFFLOAD_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Only this table (its `name`; repeatable; default: every table).
    #[arg(long = "table", value_name = "NAME")]
    pub tables: Vec<String>,
}

impl Common {
    /// Loads the configuration, keeping only the tables asked for.
    pub fn load(&self) -> Result<Config, AppError> {
        let mut cfg = Config::load(&self.config)?;
        if !self.tables.is_empty() {
            for name in &self.tables {
                if !cfg.tables.iter().any(|t| &t.name == name) {
                    return Err(ConfigError::invalid(
                        "--table",
                        format!("no table named {name:?} in the configuration"),
                    )
                    .into());
                }
            }
            cfg.tables.retain(|t| self.tables.contains(&t.name));
        }
        Ok(cfg)
    }

    /// [`load`](Self::load), then serves metrics if `[metrics]` asks for it.
    pub fn load_with_metrics(&self) -> Result<Config, AppError> {
        let cfg = self.load()?;
        if let Some(m) = &cfg.metrics {
            init_metrics(m.listen)?;
        }
        Ok(cfg)
    }
}

/// Prints a startup error and returns exit status 2.
pub fn startup_failed(e: &AppError) -> ExitCode {
    eprintln!("offload: {e}");
    ExitCode::from(2)
}

/// `micros` as RFC 3339 UTC text.
pub(crate) fn utc(micros: i64) -> String {
    offload_core::rfc3339_micros(micros)
}
