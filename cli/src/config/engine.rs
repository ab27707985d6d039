//! `[engine]`, `[retry]`, `[timeouts]` and `[metrics]`: how the program runs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::value::Dur;

/// `[engine]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Id recorded with leases and commits (default: generated per process).
    pub id: Option<String>,
    /// Pause between scheduled cycles of `offload run` (default 1m).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Tables offloaded at once (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Batches read ahead of the sink per table (default: the engine's).
    pub pipeline_depth: Option<usize>,
    /// Lease length (default 5m); renewed every third of it while a run lasts.
    #[serde(default = "default_lease")]
    pub lease_ttl: Dur,
    /// A run recorded as running for longer than this is taken for crashed
    /// (default: the engine's).
    pub stale_run_timeout: Option<Dur>,
    /// Delete orphaned staged files every so often during `offload run`
    /// (default: at start-up, then hourly; `"0s"` turns it off, leaving it to
    /// `offload cleanup`).
    pub cleanup_interval: Option<Dur>,
    /// How often `offload run` sweeps each table for late rows (default 1m;
    /// `"0s"` sweeps every cycle). `offload run --once` always sweeps.
    pub sweep_interval: Option<Dur>,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            id: None,
            interval: default_interval(),
            concurrency: default_concurrency(),
            pipeline_depth: None,
            lease_ttl: default_lease(),
            stale_run_timeout: None,
            cleanup_interval: None,
            sweep_interval: None,
        }
    }
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_concurrency() -> usize {
    4
}
fn default_lease() -> Dur {
    Dur(Duration::from_secs(300))
}

/// `[retry]`: one policy for every idempotent operation of the source, the
/// sink and the store (retryable errors only), and for the engine's commit
/// resolution.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts in all, the first included (default 5; 1 = no retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the first retry (default 200ms).
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Dur,
    /// Longest wait between attempts (default 30s).
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
    /// Growth of the wait per attempt (default 2).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            multiplier: default_multiplier(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_max_backoff() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_multiplier() -> f64 {
    2.0
}

/// `[timeouts]`: an upper bound per call, by family of operation. An elapsed
/// deadline is a retryable error, except on a commit, where it is an unknown
/// outcome the engine resolves by asking the sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// Source: opening a table (schema discovery), the high watermark,
    /// starting a window's read (default 60s). The stream itself is bounded
    /// by `clickhouse.stream_idle_timeout` and the lease.
    #[serde(default = "default_call")]
    pub source: Dur,
    /// Sink metadata: opening and preparing a table, starting a staging,
    /// reading the committed window, aborting and discarding (default 60s).
    #[serde(default = "default_call")]
    pub sink: Dur,
    /// Staging: writing one batch and finishing the data files (default 10m).
    #[serde(default = "default_staging")]
    pub staging: Dur,
    /// One commit attempt (default 2m), enforced by the sink itself: a commit
    /// that runs out of time after reaching the catalog is an unknown outcome,
    /// which the engine resolves by asking the table.
    #[serde(default = "default_commit")]
    pub commit: Dur,
    /// Connecting to the catalog and to the PostgreSQL store (default 60s).
    #[serde(default = "default_call")]
    pub connect: Dur,
    /// One cleanup of a table's orphaned files (default 30m).
    #[serde(default = "default_cleanup")]
    pub cleanup: Dur,
    /// Every watermark store call (default 30s).
    #[serde(default = "default_store")]
    pub store: Dur,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            source: default_call(),
            sink: default_call(),
            staging: default_staging(),
            commit: default_commit(),
            connect: default_call(),
            cleanup: default_cleanup(),
            store: default_store(),
        }
    }
}

fn default_call() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_staging() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_commit() -> Dur {
    Dur(Duration::from_secs(120))
}
fn default_cleanup() -> Dur {
    Dur(Duration::from_secs(1800))
}
fn default_store() -> Dur {
    Dur(Duration::from_secs(30))
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Serve Prometheus metrics at `http://<listen>/metrics`, e.g. `127.0.0.1:9898`,
    /// with liveness at `/healthz` and readiness at `/readyz` (`offload run` only).
    pub listen: SocketAddr,
}
