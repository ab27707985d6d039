//! The [`Offloader`]: composes a [`Source`], a [`Sink`] and a [`WatermarkStore`]
//! into exactly-once incremental runs.
//!
//! # Why a crash anywhere is safe
//! The sink is the source of truth: a window's rows and its `until` watermark
//! become visible in one atomic, fenced commit ([`Sink`] contract), and the next
//! window always starts at what the *sink* says is committed. So:
//! - a crash before the commit leaves nothing visible (staged files are orphans
//!   that `cleanup` removes) and the next run reads the same window again;
//! - a crash after the commit but before the store update leaves the store
//!   behind; the next run sees the sink ahead and rolls the store forward
//!   without rewriting anything;
//! - a commit whose reply was lost is resolved by asking the sink for the run id
//!   before any retry, and a retry of a commit that did land is refused by the
//!   fence (`after` no longer matches), so no window is appended twice;
//! - two engines on one table are kept apart by the store's lease, and if a
//!   lease lapses mid-run the sink's fence still lets only one of them commit.
//!
//! The store running *ahead* of the sink can only mean outside interference
//! (someone restored an old table, edited the store); the engine refuses to
//! continue rather than skip the rows in between.
//!
//! # What the engine does not do
//! Retries, timeouts, metrics per call and fault injection are
//! [layers](crate::layer) around the parts. The engine keeps the protocol: the
//! lease and its heartbeat, the reconciliation of store and sink, the window,
//! staging, and the one loop that must know the protocol, resolving and
//! retrying a commit.

mod sweep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::layer::{self, Layered};
use crate::{
    CommitMetadata, Error, Lease, MaintenanceSummary, RetryPolicy, RunEvent, RunId, Sink, SinkTable, Source,
    SourceTable, Staged, SweepSummary, TableConfig, Watermark, WatermarkStore, Window, metrics,
};

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// The table.
    pub table: String,
    /// The run.
    pub run_id: RunId,
    /// The window committed, or `None` when there was nothing new.
    pub window: Option<Window>,
    /// Rows committed.
    pub rows: u64,
    /// Encoded bytes committed.
    pub bytes: u64,
    /// Files committed.
    pub files: usize,
    /// Wall time of the run.
    pub duration: Duration,
    /// The committed watermark after the run.
    pub watermark: Option<Watermark>,
    /// Whether the store was behind the sink and was rolled forward first
    /// (the trace of a crash between a commit and its store update).
    pub rolled_forward: bool,
    /// The late-row sweep of this run, when one ran (see
    /// [`TableConfig::late_horizon`]).
    pub sweep: Option<SweepSummary>,
    /// The table's maintenance after this run, when it was due (see
    /// [`OffloaderBuilder::maintenance_interval`]): what it did, or why it
    /// failed. A failed maintenance never fails the run.
    pub maintenance: Option<Result<MaintenanceSummary, MaintenanceFailure>>,
    /// Event time the table is still behind after this run: the source's high
    /// watermark when the run looked, minus the committed watermark. Zero when
    /// caught up; above zero when [`TableConfig::max_window`] cut the window
    /// short (a backfill), and then [`Offloader::run_every`] goes on at once.
    pub backlog: Duration,
    /// How long the backlog takes at this run's pace (the event time its
    /// window covered, from its oldest row, per second of the run): zero when
    /// caught up, `None` when the run gives no pace to go by.
    pub eta: Option<Duration>,
}

/// Why a table's scheduled maintenance failed ([`RunSummary::maintenance`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceFailure {
    /// The error's [`kind`](Error::kind).
    pub kind: &'static str,
    /// The error, as text.
    pub error: String,
}

impl From<&Error> for MaintenanceFailure {
    fn from(e: &Error) -> Self {
        Self {
            kind: e.kind(),
            error: e.to_string(),
        }
    }
}

impl std::fmt::Display for MaintenanceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// What a run of [`Offloader::run_tables`] adds to a table's window.
#[derive(Clone, Copy, Debug)]
struct Extras {
    sweep: bool,
    maintain: bool,
}

/// One table's result in [`Offloader::run_all`].
pub type TableResult = (String, Result<RunSummary, Error>);

/// The engine. Build with [`Offloader::builder`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, UNIX_EPOCH};
/// use offload_core::memory::{MemorySink, MemorySource, MemoryStore};
/// use offload_core::{ManualClock, Offloader, TableConfig};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
/// let source = Arc::new(MemorySource::new(clock.clone()));
/// // Three trades in the same microsecond, told apart by their sequence numbers.
/// source.insert("trades", &[(500_000_000, 1, 10), (500_000_000, 2, 11), (500_000_000, 3, 12)]);
/// let sink = Arc::new(MemorySink::new());
/// let store = Arc::new(MemoryStore::new(clock.clone()));
///
/// let engine = Offloader::builder(source, sink.clone(), store).build().unwrap();
/// let table = TableConfig::builder("trades")
///     .timestamp_column("ts").sequence_column("seq")
///     .lag(Duration::from_secs(60))
///     .build().unwrap();
///
/// let run = engine.run_once(&table).await.unwrap();
/// assert_eq!(run.rows, 3);
/// assert_eq!(sink.rows("trades"), vec![(500_000_000, 1, 10), (500_000_000, 2, 11), (500_000_000, 3, 12)]);
/// // Nothing new: an empty run commits nothing and leaves the watermark alone.
/// assert_eq!(engine.run_once(&table).await.unwrap().rows, 0);
/// # });
/// ```
#[derive(Debug)]
pub struct Offloader {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    store: Arc<dyn WatermarkStore>,
    engine_id: String,
    retry: RetryPolicy,
    lease_ttl: Duration,
    concurrency: usize,
    stale_run_timeout: Duration,
    pipeline_depth: usize,
    cleanup_interval: Option<Duration>,
    sweep_interval: Duration,
    sweep_diff_rows: u64,
    maintenance_interval: Option<Duration>,
    clock: Arc<dyn Clock>,
}

/// Builder for [`Offloader`].
#[derive(Debug)]
pub struct OffloaderBuilder {
    inner: Offloader,
    default_layers: bool,
}

impl OffloaderBuilder {
    /// Id recorded with every lease and commit (default: `offload-<uuid>`).
    pub fn engine_id(mut self, id: impl Into<String>) -> Self {
        self.inner.engine_id = id.into();
        self
    }
    /// Retry policy (default [`RetryPolicy::default`]): used by the default
    /// [`Retry`](layer::Retry) layer around every idempotent call, and by the
    /// engine's own commit loop, which retries a commit only once its outcome
    /// is known.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.inner.retry = policy;
        self
    }
    /// Lease length (default 5 minutes). A heartbeat renews the lease every
    /// third of it for the whole run, and the wait for each batch from the
    /// source is bounded by it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.inner.lease_ttl = ttl;
        self
    }
    /// Tables offloaded at once by [`Offloader::run_all`] (default 4).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.inner.concurrency = n;
        self
    }
    /// A run left `running` this long with an expired lease is recovered as failed (default 30 min).
    pub fn stale_run_timeout(mut self, d: Duration) -> Self {
        self.inner.stale_run_timeout = d;
        self
    }
    /// Batches read ahead of the sink, so reading and encoding overlap (default 4).
    pub fn pipeline_depth(mut self, n: usize) -> Self {
        self.inner.pipeline_depth = n;
        self
    }
    /// How often [`Offloader::run_every`] asks the sink to delete orphaned
    /// staged files left by crashes ([`SinkTable::cleanup`]; the sink decides
    /// what is old enough to be safe). Default: at start-up and then hourly.
    pub fn cleanup_interval(mut self, every: Option<Duration>) -> Self {
        self.inner.cleanup_interval = every;
        self
    }
    /// How often [`Offloader::run_every`] sweeps each table for late rows
    /// (default every minute; zero sweeps on every cycle). [`Offloader::run_once`]
    /// and [`Offloader::run_all`] always sweep. Tables with a zero
    /// [`late_horizon`](TableConfig::late_horizon) are never swept.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.inner.sweep_interval = every;
        self
    }
    /// How often [`Offloader::run_every`] maintains each table
    /// ([`SinkTable::maintain`]: compaction, snapshot expiry, deletion of
    /// unreferenced files, as the sink is configured), right after that
    /// table's run, under its lease. Default `None`: never; zero: after every
    /// run. A table is due on its first successful run and then once the
    /// interval has passed since its last maintenance (failed ones count:
    /// the next try waits a whole interval). A failed maintenance is logged
    /// and counted, never fails the run, and never touches the watermark.
    /// [`Offloader::run_once`] and [`Offloader::run_all`] never maintain;
    /// [`Offloader::maintain`] does on request.
    pub fn maintenance_interval(mut self, every: Option<Duration>) -> Self {
        self.inner.maintenance_interval = every;
        self
    }
    /// The most keys the sweep holds in memory for one bucket (default 262,144,
    /// 4 MiB): a bucket whose counts disagree and that holds more rows is cut
    /// into 16 parts and recounted until its parts fit.
    pub fn sweep_diff_rows(mut self, rows: u64) -> Self {
        self.inner.sweep_diff_rows = rows;
        self
    }
    /// Clock used for lag metrics (default the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.inner.clock = clock;
        self
    }
    /// Takes the source, sink and store exactly as given, for programs that
    /// stack their own [layers](crate::layer). By default [`build`](Self::build)
    /// wraps each part in [`Retry`](layer::Retry) (with the [`retry`](Self::retry)
    /// policy) inside [`Metrics`](layer::Metrics).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use offload_core::layer::{self, Metrics, Op, Retry, Timeout};
    /// use offload_core::memory::{MemorySink, MemorySource, MemoryStore};
    /// use offload_core::{Offloader, RetryPolicy, SystemClock};
    ///
    /// let retry = RetryPolicy::default();
    /// let timeout = Timeout::new(Duration::from_secs(60)).op(Op::Commit, Duration::from_secs(300));
    /// let source = layer::stack(MemorySource::new(SystemClock))
    ///     .with(timeout.clone()).with(Retry::new(retry.clone())).with(Metrics).into_source();
    /// let sink = layer::stack(MemorySink::new())
    ///     .with(timeout.clone()).with(Retry::new(retry.clone())).with(Metrics).into_sink();
    /// let store = layer::stack(MemoryStore::new(SystemClock))
    ///     .with(timeout).with(Retry::new(retry.clone())).with(Metrics).into_store();
    /// let engine = Offloader::builder(source, sink, store)
    ///     .retry(retry)
    ///     .without_default_layers()
    ///     .build()
    ///     .unwrap();
    /// # let _ = engine;
    /// ```
    pub fn without_default_layers(mut self) -> Self {
        self.default_layers = false;
        self
    }
    /// Validates and builds.
    pub fn build(self) -> Result<Offloader, Error> {
        let e = &self.inner;
        let bad = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if e.engine_id.is_empty() || e.engine_id.chars().any(char::is_control) {
            return bad("engine_id", "must be non-empty printable text");
        }
        if e.lease_ttl < Duration::from_millis(10) {
            return bad("lease_ttl", "must be at least 10 ms");
        }
        if e.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        if e.sweep_diff_rows == 0 {
            return bad("sweep_diff_rows", "must be at least 1");
        }
        if e.pipeline_depth == 0 {
            return bad("pipeline_depth", "must be at least 1");
        }
        let mut engine = self.inner;
        if self.default_layers {
            let retry = || layer::Retry::new(engine.retry.clone());
            engine.source = Arc::new(Layered::new(layer::Metrics, Layered::new(retry(), engine.source)));
            engine.sink = Arc::new(Layered::new(layer::Metrics, Layered::new(retry(), engine.sink)));
            engine.store = Arc::new(Layered::new(layer::Metrics, Layered::new(retry(), engine.store)));
        }
        Ok(engine)
    }
}

/// How a commit ended, which decides whether its staged files may be deleted.
#[derive(Debug)]
enum CommitOutcome {
    /// The window is part of the sink (perhaps by an earlier attempt whose reply was lost).
    Committed,
    /// Known not to have landed: the staged files may go.
    NotCommitted(Error),
    /// May have landed; the sink could not say. The files stay (a commit we
    /// cannot see may reference them); the next run's reconciliation decides.
    InDoubt(Error),
}

/// The lease of one run, renewed in the background for as long as the run lasts.
struct Heartbeat {
    lease: Arc<Mutex<Lease>>,
    lost: CancellationToken,
    why: Arc<Mutex<Option<Error>>>,
    _task: AbortOnDrop,
}

impl Heartbeat {
    fn start(store: Arc<dyn WatermarkStore>, lease: Lease, ttl: Duration) -> Self {
        let shared = Arc::new(Mutex::new(lease));
        let lost = CancellationToken::new();
        let why = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (shared, lost, why) = (shared.clone(), lost.clone(), why.clone());
            async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let current = shared.lock().expect("lease lock").clone();
                    match store.renew_lease(&current, ttl).await {
                        Ok(renewed) => *shared.lock().expect("lease lock") = renewed,
                        Err(e) => {
                            tracing::warn!(error = %e, "lease renewal failed: abandoning the run before its commit");
                            *why.lock().expect("heartbeat lock") = Some(e);
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
            .in_current_span()
        });
        Self {
            lease: shared,
            lost,
            why,
            _task: AbortOnDrop(task),
        }
    }

    fn lease(&self) -> Lease {
        self.lease.lock().expect("lease lock").clone()
    }

    fn set(&self, lease: Lease) {
        *self.lease.lock().expect("lease lock") = lease;
    }

    /// Why the heartbeat stopped: the renewal's error ([`Error::LeaseLost`]
    /// when someone else took the table; a store error when the store could
    /// not be reached through all retries).
    fn lost_error(&self) -> Error {
        self.why
            .lock()
            .expect("heartbeat lock")
            .take()
            .unwrap_or_else(|| {
                let l = self.lease();
                Error::LeaseLost {
                    table: l.table,
                    token: l.token,
                }
            })
    }

    fn check(&self) -> Result<(), Error> {
        if self.lost.is_cancelled() {
            return Err(self.lost_error());
        }
        Ok(())
    }
}

impl Offloader {
    /// Starts a builder over the three parts. [`build`](OffloaderBuilder::build)
    /// wraps them in the default layers ([`Retry`](layer::Retry) inside
    /// [`Metrics`](layer::Metrics)) unless
    /// [`without_default_layers`](OffloaderBuilder::without_default_layers) is called.
    pub fn builder(
        source: Arc<dyn Source>,
        sink: Arc<dyn Sink>,
        store: Arc<dyn WatermarkStore>,
    ) -> OffloaderBuilder {
        OffloaderBuilder {
            inner: Offloader {
                source,
                sink,
                store,
                engine_id: format!("offload-{}", uuid::Uuid::now_v7()),
                retry: RetryPolicy::default(),
                lease_ttl: Duration::from_secs(300),
                concurrency: 4,
                stale_run_timeout: Duration::from_secs(30 * 60),
                pipeline_depth: 4,
                cleanup_interval: Some(Duration::from_secs(3600)),
                sweep_interval: Duration::from_secs(60),
                sweep_diff_rows: 1 << 18,
                maintenance_interval: None,
                clock: Arc::new(SystemClock),
            },
            default_layers: true,
        }
    }

    /// This engine's id.
    pub fn engine_id(&self) -> &str {
        &self.engine_id
    }

    /// Offloads the next window of one table.
    pub async fn run_once(&self, table: &TableConfig) -> Result<RunSummary, Error> {
        self.run_once_cancellable(table, &CancellationToken::new()).await
    }

    /// Like [`run_once`](Self::run_once), abandoning the run cleanly if `cancel`
    /// fires before its commit starts. A commit already under way is finished,
    /// because abandoning it would leave its outcome unknown.
    pub async fn run_once_cancellable(
        &self,
        table: &TableConfig,
        cancel: &CancellationToken,
    ) -> Result<RunSummary, Error> {
        let extras = Extras {
            sweep: true,
            maintain: false,
        };
        self.run_traced(table, cancel, extras).await
    }

    async fn run_traced(
        &self,
        table: &TableConfig,
        cancel: &CancellationToken,
        extras: Extras,
    ) -> Result<RunSummary, Error> {
        let run_id = RunId::new();
        let span =
            tracing::info_span!("offload_run", table = table.name(), %run_id, window = tracing::field::Empty);
        self.run(table, run_id, cancel, extras).instrument(span).await
    }

    /// Maintains one table now ([`SinkTable::maintain`], as the sink is
    /// configured), outside any run and without taking its lease
    /// (maintenance is safe beside commits). Records the maintenance metrics
    /// ([`metrics::MAINTENANCE_RUNS_TOTAL`] and the others).
    pub async fn maintain(&self, table: &TableConfig) -> Result<MaintenanceSummary, Error> {
        let span = tracing::info_span!("offload_maintain", table = table.name());
        async {
            let started = Instant::now();
            let r = async { self.sink.open(table).await?.maintain().await }.await;
            metrics::maintenance(table.name(), r.as_ref(), self.clock.now());
            match &r {
                Ok(s) if s.is_noop() => {
                    tracing::debug!(duration = ?started.elapsed(), "maintenance: nothing to do")
                }
                Ok(s) => tracing::info!(
                    partitions = s.partitions_compacted,
                    files_rewritten = s.files_rewritten,
                    files_written = s.files_written,
                    snapshots_expired = s.snapshots_expired,
                    files_deleted = s.files_deleted,
                    orphans_deleted = s.orphans_deleted,
                    duration = ?started.elapsed(),
                    "maintenance done"
                ),
                Err(e) => tracing::warn!(error = %e, kind = e.kind(), "maintenance failed"),
            }
            r
        }
        .instrument(span)
        .await
    }

    /// Offloads the next window of every table, at most
    /// [`concurrency`](OffloaderBuilder::concurrency) at a time. One table's
    /// failure never stops the others. Results are in completion order.
    /// Every run includes its table's late-row sweep.
    pub async fn run_all(&self, tables: &[TableConfig], cancel: &CancellationToken) -> Vec<TableResult> {
        let extras = Extras {
            sweep: true,
            maintain: false,
        };
        self.run_tables(tables, cancel, &|_| extras).await
    }

    async fn run_tables(
        &self,
        tables: &[TableConfig],
        cancel: &CancellationToken,
        extras: &(dyn Fn(&str) -> Extras + Sync),
    ) -> Vec<TableResult> {
        if let Err(e) = self.store.recover_stale_runs(self.stale_run_timeout).await {
            tracing::warn!(error = %e, "could not recover stale runs");
        }
        futures::stream::iter(tables)
            .map(|t| async move {
                (
                    t.name().to_owned(),
                    self.run_traced(t, cancel, extras(t.name())).await,
                )
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }

    /// Runs [`run_all`](Self::run_all) every `interval` until `shutdown` fires,
    /// calling `on_cycle` with each cycle's results. Returns the number of cycles.
    /// A table's run sweeps for late rows every
    /// [`sweep_interval`](OffloaderBuilder::sweep_interval), and is followed
    /// by the table's maintenance every
    /// [`maintenance_interval`](OffloaderBuilder::maintenance_interval)
    /// ([`RunSummary::maintenance`]).
    ///
    /// A table left behind by its run ([`RunSummary::backlog`] above zero: the
    /// window was cut at [`max_window`](TableConfig::max_window), as in a
    /// backfill) runs again at once, in a cycle of the tables that are behind,
    /// until it has caught up; the others keep to `interval`.
    ///
    /// Shutdown abandons runs that have not started committing and finishes the
    /// ones that have.
    pub async fn run_every<F>(
        &self,
        tables: &[TableConfig],
        interval: Duration,
        shutdown: &CancellationToken,
        mut on_cycle: F,
    ) -> u64
    where
        F: FnMut(&[TableResult]),
    {
        let mut cycles = 0;
        // Tokio's clock (the system's, unless a test pauses time).
        let mut last_cleanup: Option<tokio::time::Instant> = None;
        let mut last_sweep: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut last_maintenance: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Tables whose last run left a backlog: they go on without waiting.
        let mut behind: Vec<&str> = Vec::new();
        loop {
            let due_all = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return cycles,
                _ = ticker.tick() => true,
                _ = std::future::ready(()), if !behind.is_empty() => false,
            };
            if due_all
                && let Some(every) = self.cleanup_interval
                && last_cleanup.is_none_or(|t| t.elapsed() >= every)
            {
                self.cleanup(tables).await;
                last_cleanup = Some(tokio::time::Instant::now());
            }
            let catching_up: Vec<TableConfig>;
            let cycle: &[TableConfig] = if due_all {
                tables
            } else {
                catching_up = tables
                    .iter()
                    .filter(|t| behind.contains(&t.name()))
                    .cloned()
                    .collect();
                &catching_up
            };
            let now = tokio::time::Instant::now();
            let due = |last: &HashMap<String, tokio::time::Instant>, name: &str, every: Duration| {
                last.get(name).is_none_or(|t| now - *t >= every)
            };
            let plan: HashMap<&str, Extras> = cycle
                .iter()
                .map(|t| {
                    let name = t.name();
                    let extras = Extras {
                        sweep: due(&last_sweep, name, self.sweep_interval),
                        maintain: self
                            .maintenance_interval
                            .is_some_and(|every| due(&last_maintenance, name, every)),
                    };
                    (name, extras)
                })
                .collect();
            let results = self
                .run_tables(cycle, shutdown, &|name| {
                    plan.get(name).copied().unwrap_or(Extras {
                        sweep: false,
                        maintain: false,
                    })
                })
                .await;
            for (name, result) in &results {
                // A sweep that ran (clean or not) restarts the table's interval;
                // a failed run sweeps again next cycle. The same for maintenance,
                // which only follows a successful run.
                if result.as_ref().is_ok_and(|s| s.sweep.is_some()) {
                    last_sweep.insert(name.clone(), now);
                }
                if result.as_ref().is_ok_and(|s| s.maintenance.is_some()) {
                    last_maintenance.insert(name.clone(), now);
                }
            }
            behind = tables
                .iter()
                .map(TableConfig::name)
                .filter(|t| {
                    results
                        .iter()
                        .any(|(name, r)| name == t && r.as_ref().is_ok_and(|s| !s.backlog.is_zero()))
                })
                .collect();
            cycles += 1;
            on_cycle(&results);
        }
    }

    /// Asks the sink to delete orphaned staged files of every table (best effort:
    /// failures are logged, never fatal). Returns how many files were removed.
    pub async fn cleanup(&self, tables: &[TableConfig]) -> u64 {
        let mut removed = 0;
        for t in tables {
            match async { self.sink.open(t).await?.cleanup().await }.await {
                Ok(n) => {
                    removed += n;
                    metrics::orphans_removed(t.name(), n);
                    if n > 0 {
                        tracing::info!(table = t.name(), files = n, "removed orphaned staged files");
                    }
                }
                Err(e) => tracing::warn!(table = t.name(), error = %e, "orphan cleanup failed"),
            }
        }
        removed
    }

    async fn run(
        &self,
        table: &TableConfig,
        run_id: RunId,
        cancel: &CancellationToken,
        extras: Extras,
    ) -> Result<RunSummary, Error> {
        let started = Instant::now();
        let name = table.name();
        let lease = match self
            .store
            .acquire_lease(name, &self.engine_id, self.lease_ttl)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                metrics::failure(name, &e, started.elapsed(), self.clock.now());
                if matches!(e, Error::LeaseHeld { .. }) {
                    // Skipped: the holder's runs are what the store counts now.
                    self.export_state(name).await;
                }
                return Err(e);
            }
        };
        let heartbeat = Heartbeat::start(self.store.clone(), lease.clone(), self.lease_ttl);
        let mut result = match self.store.record_run(&lease, RunEvent::Started { run_id }).await {
            Ok(()) => {
                self.run_leased(table, run_id, &heartbeat, cancel, started, extras.sweep)
                    .await
            }
            Err(e) => Err(e),
        };
        // The run's own figures end here; maintenance is accounted for apart.
        let duration = started.elapsed();
        // Maintenance follows a successful run, under its lease (so no other
        // worker offloads or maintains the table meanwhile), unless shutting
        // down or the lease is gone. It is not cancelled once started: it
        // changes no rows and cleans up after itself.
        if let Ok(s) = &mut result
            && extras.maintain
            && !cancel.is_cancelled()
            && !heartbeat.lost.is_cancelled()
        {
            s.maintenance = Some(
                self.maintain(table)
                    .await
                    .map_err(|e| MaintenanceFailure::from(&e)),
            );
        }
        let lease = heartbeat.lease();
        drop(heartbeat);
        let now = self.clock.now();
        let event = match &result {
            Ok(s) => {
                metrics::success(name, s.rows, s.bytes, s.files, duration, now);
                if let Some(w) = s.watermark {
                    metrics::watermark(name, w, now);
                }
                if let Some(sw) = &s.sweep {
                    metrics::sweep(name, sw, now);
                }
                metrics::backlog(name, s.backlog, s.eta);
                tracing::info!(rows = s.rows, files = s.files, ?duration, backlog = ?s.backlog, eta = ?s.eta, "run succeeded");
                RunEvent::Succeeded {
                    run_id,
                    rows: s.rows,
                    duration,
                }
            }
            Err(e) => {
                metrics::failure(name, e, duration, now);
                tracing::warn!(error = %e, kind = e.kind(), "run failed");
                RunEvent::Failed {
                    run_id,
                    error: e.to_string(),
                    duration,
                }
            }
        };
        // Status and lease are bookkeeping: failing to write them must not turn a
        // committed run into an error, and a lost lease means someone else owns
        // the row now.
        match self.store.record_run(&lease, event).await {
            Ok(()) => self.export_state(name).await,
            Err(e) => tracing::warn!(error = %e, "could not record run outcome"),
        }
        if let Err(e) = self.store.release_lease(&lease).await {
            tracing::warn!(error = %e, "could not release lease");
        }
        result
    }

    /// Exports the store's figures for the table ([`metrics::CONSECUTIVE_FAILURES`]):
    /// the store counts across restarts and workers, so every worker reports
    /// the same. Best effort.
    async fn export_state(&self, name: &str) {
        match self.store.load(name).await {
            Ok(state) => metrics::store_state(&state),
            Err(e) => tracing::debug!(error = %e, "could not read back the table's state"),
        }
    }

    async fn run_leased(
        &self,
        table: &TableConfig,
        run_id: RunId,
        heartbeat: &Heartbeat,
        cancel: &CancellationToken,
        started: Instant,
        sweep: bool,
    ) -> Result<RunSummary, Error> {
        let name = table.name();
        // Fresh handles every run, so a schema change upstream is seen now.
        let source = self.source.open(table).await?;
        let sink = self.sink.open(table).await?;
        let schema = source.schema();
        sink.prepare(schema.clone()).await?;

        // The sink is the truth; the store follows it. Read the store first: the
        // store only ever moves up to what the sink already holds, so a store
        // value read before the sink's can never look ahead of it, even while
        // another engine advances both in between.
        let stored = self.store.load(name).await?.watermark;
        let last = sink.committed().await?;
        let committed = last.as_ref().map(|c| c.until);
        let rolled_forward = stored < committed;
        if stored > committed {
            return Err(Error::StoreAheadOfSink {
                table: name.to_owned(),
                store: stored.expect("Some > anything"),
                sink: committed,
            });
        }
        if rolled_forward {
            let to = committed.expect("stored < committed implies Some");
            tracing::warn!(from = ?stored, to = ?to, "store behind sink (earlier crash after commit): rolling forward");
            metrics::store_behind(name);
            self.store.compare_and_set(&heartbeat.lease(), stored, to).await?;
        }

        let mut summary = RunSummary {
            table: name.to_owned(),
            run_id,
            window: None,
            rows: 0,
            bytes: 0,
            files: 0,
            duration: Duration::ZERO,
            watermark: committed,
            rolled_forward,
            sweep: None,
            maintenance: None,
            backlog: Duration::ZERO,
            eta: Some(Duration::ZERO),
        };
        // Late rows first, below what is committed: a failed sweep fails the
        // run before its window, so nothing committed goes unreported.
        if let Some(last) = last.as_ref().filter(|_| sweep && !table.late_horizon().is_zero()) {
            summary.sweep = Some(
                self.sweep(source.as_ref(), sink.as_ref(), table, last, heartbeat, cancel)
                    .await?,
            );
        }
        let after = committed.unwrap_or(Watermark::MIN);
        let Some(high) = source.high_watermark().await? else {
            summary.duration = started.elapsed();
            return Ok(summary);
        };
        let (start, until) = window_bounds(source.as_ref(), table, after, high).await?;
        if until <= after {
            summary.duration = started.elapsed();
            return Ok(summary);
        }
        let window = Window::new(after, until)?;
        tracing::Span::current().record("window", tracing::field::display(window));

        let staged = self
            .stage(source.as_ref(), sink.as_ref(), run_id, window, heartbeat, cancel)
            .await?;

        // Last exit before the point of no return: a lost lease or a shutdown
        // abandons the window with nothing committed. The renewal also makes
        // sure the lease is still ours at this moment, not a third of a TTL ago.
        if let Err(e) = self.pre_commit(heartbeat, cancel).await {
            discard(staged).await;
            return Err(e);
        }

        let meta = CommitMetadata {
            window,
            run_id,
            engine_id: self.engine_id.clone(),
            fencing_token: heartbeat.lease().token,
        };
        let stats = staged.stats().clone();
        let outcome = self.commit(sink.as_ref(), staged.as_ref(), &meta).await;
        settle(staged, outcome).await?;
        tracing::info!(rows = stats.rows, files = stats.files.len(), "committed");

        // Data is durable. If the store update fails, the next run rolls it forward.
        self.store
            .compare_and_set(&heartbeat.lease(), committed, until)
            .await?;

        summary.window = Some(window);
        summary.rows = stats.rows;
        summary.bytes = stats.bytes;
        summary.files = stats.files.len();
        summary.watermark = Some(until);
        summary.duration = started.elapsed();
        (summary.backlog, summary.eta) = progress(start, until, high, summary.duration);
        Ok(summary)
    }

    /// Reads the window and stages it. The source is polled on its own task so
    /// decoding the next batches overlaps encoding the current one; the wait
    /// for each batch is bounded by the lease length, so a silent source fails
    /// the run (retryably) instead of outliving the lease.
    async fn stage(
        &self,
        source: &dyn SourceTable,
        sink: &dyn SinkTable,
        run_id: RunId,
        window: Window,
        heartbeat: &Heartbeat,
        cancel: &CancellationToken,
    ) -> Result<Box<dyn Staged>, Error> {
        let stream = source.read(window).await?;
        let mut writer = sink.begin(run_id, source.schema()).await?;
        match self
            .pump(stream, writer.as_mut(), heartbeat, cancel, &mut |b| Ok(Some(b)))
            .await
        {
            Ok(()) => writer.finish().await,
            Err(e) => {
                abort(writer).await;
                Err(e)
            }
        }
    }

    /// Moves batches from `stream` through `keep` into `writer`. The source is
    /// polled on its own task so decoding the next batches overlaps encoding
    /// the current one; the wait for each batch is bounded by the lease
    /// length; a shutdown or a lost lease stops it.
    async fn pump(
        &self,
        mut stream: crate::BatchStream,
        writer: &mut dyn crate::StagingWriter,
        heartbeat: &Heartbeat,
        cancel: &CancellationToken,
        keep: &mut (
                 dyn FnMut(arrow_array::RecordBatch) -> Result<Option<arrow_array::RecordBatch>, Error> + Send
             ),
    ) -> Result<(), Error> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.pipeline_depth);
        let reader = AbortOnDrop(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        }));
        let ttl = self.lease_ttl;
        let pump = async {
            loop {
                let item = tokio::time::timeout(ttl, rx.recv()).await.map_err(|_| {
                    Error::source(
                        format!("no batch from the source within {ttl:?} (the lease length)"),
                        true,
                    )
                })?;
                match item {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(batch)) => {
                        if let Some(batch) = keep(batch)? {
                            writer.write(batch).await?;
                        }
                    }
                }
            }
        };
        let outcome: Result<(), Error> = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Cancelled),
            _ = heartbeat.lost.cancelled() => Err(heartbeat.lost_error()),
            r = pump => r,
        };
        drop(reader);
        outcome
    }

    /// Last exit before the point of no return: a lost lease or a shutdown
    /// abandons the staged rows with nothing committed. The renewal also makes
    /// sure the lease is still ours at this moment, not a third of a TTL ago.
    async fn pre_commit(&self, heartbeat: &Heartbeat, cancel: &CancellationToken) -> Result<(), Error> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        heartbeat.check()?;
        let renewed = self.store.renew_lease(&heartbeat.lease(), self.lease_ttl).await?;
        heartbeat.set(renewed);
        Ok(())
    }

    /// The one retry loop the engine keeps: a commit may be retried only once
    /// its previous attempt is known not to have landed.
    async fn commit(
        &self,
        sink: &dyn SinkTable,
        staged: &dyn Staged,
        meta: &CommitMetadata,
    ) -> CommitOutcome {
        self.commit_with(sink, meta.run_id, || staged.commit(meta)).await
    }

    /// [`commit`](Self::commit) for any kind of commit (`attempt`) made by `run_id`.
    async fn commit_with<'a, F, Fut>(&self, sink: &dyn SinkTable, run_id: RunId, attempt: F) -> CommitOutcome
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>> + 'a,
    {
        let attempt = &attempt;
        let attempts = self
            .retry
            .retry("sink.commit", || async move {
                match commit_once(sink, run_id, attempt()).await {
                    CommitOutcome::NotCommitted(e) if e.is_retryable() => Err(e),
                    other => Ok(other),
                }
            })
            .await;
        attempts.unwrap_or_else(CommitOutcome::NotCommitted)
    }
}

/// Where a window from `after` starts (the oldest row above it, as far as the
/// source can tell; `after` otherwise) and where it ends: at the high
/// watermark, or [`TableConfig::max_window`] of event time past its start.
/// The low watermark is only asked for when the cap may bite, so the steady
/// state (a few minutes behind) costs no query. Which rows the window holds
/// is decided by `after` and `until` alone: a wrong low watermark can make a
/// window larger or smaller, never skip or repeat a row.
async fn window_bounds(
    source: &dyn SourceTable,
    table: &TableConfig,
    after: Watermark,
    high: Watermark,
) -> Result<(Watermark, Watermark), Error> {
    let Some(span) = table.max_window() else {
        return Ok((after, high));
    };
    let span = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
    let end = |from: Watermark| {
        high.min(Watermark::new(
            from.timestamp_micros().saturating_add(span),
            u64::MAX,
        ))
    };
    if high <= after || (after != Watermark::MIN && end(after) == high) {
        return Ok((after, high));
    }
    // Never behind what is committed, whatever the source says.
    let start = source
        .low_watermark(after)
        .await?
        .map_or(after, |low| low.max(after));
    if start == Watermark::MIN {
        // A first window on a source that cannot say where its rows start:
        // there is nothing to measure the cap from.
        return Ok((after, high));
    }
    Ok((start, end(start)))
}

/// The run's progress figures ([`RunSummary::backlog`], [`RunSummary::eta`])
/// for a window whose rows start at `start` and that ended at `until`, with
/// the source at `high`, after `took` of wall time.
fn progress(
    start: Watermark,
    until: Watermark,
    high: Watermark,
    took: Duration,
) -> (Duration, Option<Duration>) {
    let micros = |d: i128| Duration::from_micros(u64::try_from(d.max(0)).unwrap_or(u64::MAX));
    let behind = i128::from(high.timestamp_micros()) - i128::from(until.timestamp_micros());
    if behind <= 0 {
        return (Duration::ZERO, Some(Duration::ZERO));
    }
    let covered = i128::from(until.timestamp_micros()) - i128::from(start.timestamp_micros());
    let eta = (covered > 0 && start != Watermark::MIN && !took.is_zero())
        .then(|| Duration::try_from_secs_f64(took.as_secs_f64() * behind as f64 / covered as f64).ok())
        .flatten();
    (micros(behind), eta)
}

/// One commit attempt, its outcome resolved with the sink when in doubt.
async fn commit_once(
    sink: &dyn SinkTable,
    run_id: RunId,
    attempt: impl std::future::Future<Output = Result<(), Error>>,
) -> CommitOutcome {
    let err = match attempt.await {
        Ok(()) => return CommitOutcome::Committed,
        Err(e) => e,
    };
    // Unknown outcome, or a conflict that may be our own earlier attempt
    // landing: ask the sink before anything else.
    if !matches!(
        err,
        Error::CommitOutcomeUnknown { .. } | Error::CommitConflict { .. } | Error::RepairConflict { .. }
    ) {
        return CommitOutcome::NotCommitted(err);
    }
    tracing::warn!(error = %err, "resolving commit outcome");
    match sink.was_committed(run_id).await {
        Ok(true) => CommitOutcome::Committed,
        Ok(false) => match err {
            // Resolved: it did not land. Say so rather than "unknown", and
            // treat it as the retryable sink failure it turned out to be.
            Error::CommitOutcomeUnknown { source, .. } => CommitOutcome::NotCommitted(Error::Sink {
                retryable: true,
                source: format!("commit did not land (checked): {source}").into(),
            }),
            conflict => CommitOutcome::NotCommitted(conflict),
        },
        Err(resolve) => {
            tracing::error!(error = %resolve, "commit outcome stays unknown");
            CommitOutcome::InDoubt(err)
        }
    }
}

/// What a commit's outcome leaves to do with its staged files: delete them
/// when the commit is known not to have landed; keep them when it may have
/// (a commit we cannot see may reference them; the next run's reconciliation
/// decides).
async fn settle(staged: Box<dyn Staged>, outcome: CommitOutcome) -> Result<(), Error> {
    match outcome {
        CommitOutcome::Committed => Ok(()),
        CommitOutcome::NotCommitted(e) => {
            discard(staged).await;
            Err(e)
        }
        CommitOutcome::InDoubt(e) => Err(e),
    }
}

async fn abort(writer: Box<dyn crate::StagingWriter>) {
    if let Err(e) = writer.abort().await {
        tracing::warn!(error = %e, "could not abort staging; orphans left for cleanup");
    }
}

async fn discard(staged: Box<dyn Staged>) {
    if let Err(e) = staged.discard().await {
        tracing::warn!(error = %e, "could not delete staged files; orphans left for cleanup");
    }
}

/// Aborts a spawned task when dropped, so a dropped run stops its reader and heartbeat.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
