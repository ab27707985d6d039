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

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::{
    CommitMetadata, Error, Lease, RetryPolicy, RunEvent, RunId, Sink, Source, Staged, TableConfig, Watermark,
    WatermarkStore, Window, failpoint, metrics,
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
    clock: Arc<dyn Clock>,
}

/// Builder for [`Offloader`].
#[derive(Debug)]
pub struct OffloaderBuilder {
    inner: Offloader,
}

impl OffloaderBuilder {
    /// Id recorded with every lease and commit (default: `offload-<uuid>`).
    pub fn engine_id(mut self, id: impl Into<String>) -> Self {
        self.inner.engine_id = id.into();
        self
    }
    /// Retry policy for retryable errors (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.inner.retry = policy;
        self
    }
    /// Lease length; renewed while a run reads (default 5 minutes).
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
    /// staged files left by crashes ([`Sink::cleanup`]; the sink decides what
    /// is old enough to be safe). Default: at start-up and then hourly.
    pub fn cleanup_interval(mut self, every: Option<Duration>) -> Self {
        self.inner.cleanup_interval = every;
        self
    }
    /// Clock used for lag metrics (default the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.inner.clock = clock;
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
        if e.pipeline_depth == 0 {
            return bad("pipeline_depth", "must be at least 1");
        }
        Ok(self.inner)
    }
}

/// How sure we are that a failed commit did not land, which decides whether
/// its staged files may be deleted.
enum CommitFailure {
    NotCommitted(Error),
    InDoubt(Error),
}

impl Offloader {
    /// Starts a builder over the three parts.
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
                clock: Arc::new(SystemClock),
            },
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
        let run_id = RunId::new();
        let span =
            tracing::info_span!("offload_run", table = table.name(), %run_id, window = tracing::field::Empty);
        self.run(table, run_id, cancel).instrument(span).await
    }

    /// Offloads the next window of every table, at most
    /// [`concurrency`](OffloaderBuilder::concurrency) at a time. One table's
    /// failure never stops the others. Results are in completion order.
    pub async fn run_all(&self, tables: &[TableConfig], cancel: &CancellationToken) -> Vec<TableResult> {
        if let Err(e) = self.store.recover_stale_runs(self.stale_run_timeout).await {
            tracing::warn!(error = %e, "could not recover stale runs");
        }
        futures::stream::iter(tables)
            .map(|t| async move { (t.name().to_owned(), self.run_once_cancellable(t, cancel).await) })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }

    /// Runs [`run_all`](Self::run_all) every `interval` until `shutdown` fires,
    /// calling `on_cycle` with each cycle's results. Returns the number of cycles.
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
        let mut last_cleanup: Option<Instant> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return cycles,
                _ = ticker.tick() => {}
            }
            if let Some(every) = self.cleanup_interval
                && last_cleanup.is_none_or(|t| t.elapsed() >= every)
            {
                self.cleanup(tables).await;
                last_cleanup = Some(Instant::now());
            }
            let results = self.run_all(tables, shutdown).await;
            cycles += 1;
            on_cycle(&results);
        }
    }

    /// Asks the sink to delete orphaned staged files of every table (best effort:
    /// failures are logged, never fatal). Returns how many files were removed.
    pub async fn cleanup(&self, tables: &[TableConfig]) -> u64 {
        let mut removed = 0;
        for t in tables {
            match self.sink.cleanup(t).await {
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
    ) -> Result<RunSummary, Error> {
        let started = Instant::now();
        let name = table.name();
        let lease = match self
            .retry
            .retry("acquire lease", || {
                self.store.acquire_lease(name, &self.engine_id, self.lease_ttl)
            })
            .await
        {
            Ok(l) => l,
            Err(e) => {
                metrics::failure(name, &e, started.elapsed(), self.clock.now());
                return Err(e);
            }
        };
        let mut lease = lease;
        failpoint::hit("engine.after_lease");
        let result = match self
            .retry
            .retry("record start", || {
                self.store.record_run(&lease, RunEvent::Started { run_id })
            })
            .await
        {
            Ok(()) => self.run_leased(table, run_id, &mut lease, cancel, started).await,
            Err(e) => Err(e),
        };
        let duration = started.elapsed();
        let now = self.clock.now();
        let event = match &result {
            Ok(s) => {
                metrics::success(name, s.rows, s.bytes, s.files, duration, now);
                if let Some(w) = s.watermark {
                    metrics::watermark(name, w, now);
                }
                tracing::info!(rows = s.rows, files = s.files, ?duration, "run succeeded");
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
        if let Err(e) = self
            .retry
            .retry("record outcome", || self.store.record_run(&lease, event.clone()))
            .await
        {
            tracing::warn!(error = %e, "could not record run outcome");
        }
        if let Err(e) = self.store.release_lease(&lease).await {
            tracing::warn!(error = %e, "could not release lease");
        }
        result
    }

    async fn run_leased(
        &self,
        table: &TableConfig,
        run_id: RunId,
        lease: &mut Lease,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Result<RunSummary, Error> {
        let name = table.name();
        let schema = self
            .retry
            .retry("read schema", || self.source.schema(table))
            .await?;
        self.retry
            .retry("prepare sink", || self.sink.prepare(table, schema.clone()))
            .await?;

        // The sink is the truth; the store follows it. Read the store first: the
        // store only ever moves up to what the sink already holds, so a store
        // value read before the sink's can never look ahead of it, even while
        // another engine advances both in between.
        let stored = self
            .retry
            .retry("load store", || self.store.load(name))
            .await?
            .watermark;
        let committed = self
            .retry
            .retry("read committed", || self.sink.committed(table))
            .await?
            .map(|c| c.until);
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
            self.retry
                .retry("roll store forward", || {
                    self.store.compare_and_set(lease, stored, to)
                })
                .await?;
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
        };
        let after = committed.unwrap_or(Watermark::MIN);
        let Some(mut until) = self
            .retry
            .retry("high watermark", || self.source.high_watermark(table))
            .await?
        else {
            summary.duration = started.elapsed();
            return Ok(summary);
        };
        if let (Some(span), Some(_)) = (table.max_window(), committed) {
            let span = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
            until = until.min(Watermark::new(
                after.timestamp_micros().saturating_add(span),
                u64::MAX,
            ));
        }
        if until <= after {
            summary.duration = started.elapsed();
            return Ok(summary);
        }
        let window = Window::new(after, until)?;
        tracing::Span::current().record("window", tracing::field::display(window));

        let (staged, renewed) = self
            .retry
            .retry("read and stage", || {
                self.stage(table, run_id, schema.clone(), window, lease.clone(), cancel)
            })
            .await?;
        *lease = renewed;

        // Last exit before the point of no return: a lost lease or a shutdown
        // abandons the window with nothing committed.
        let pre_commit = async {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            *lease = self
                .retry
                .retry("renew lease", || self.store.renew_lease(lease, self.lease_ttl))
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = pre_commit {
            self.discard(table, staged).await;
            return Err(e);
        }

        let meta = CommitMetadata {
            window,
            run_id,
            engine_id: self.engine_id.clone(),
            fencing_token: lease.token,
        };
        let (rows, bytes, files) = (staged.rows(), staged.bytes(), staged.files().len());
        failpoint::hit("engine.before_commit");
        match self.commit(table, &staged, &meta).await {
            Ok(()) => {}
            Err(CommitFailure::NotCommitted(e)) => {
                self.discard(table, staged).await;
                return Err(e);
            }
            // The files may be referenced by a commit we cannot see: keep them.
            Err(CommitFailure::InDoubt(e)) => return Err(e),
        }
        tracing::info!(rows, files, "committed");
        failpoint::hit("engine.after_commit");

        // Data is durable. If the store update fails, the next run rolls it forward.
        self.retry
            .retry("advance store", || {
                self.store.compare_and_set(lease, committed, until)
            })
            .await?;
        failpoint::hit("engine.after_store_update");

        summary.window = Some(window);
        summary.rows = rows;
        summary.bytes = bytes;
        summary.files = files;
        summary.watermark = Some(until);
        summary.duration = started.elapsed();
        Ok(summary)
    }

    /// Reads the window and stages it, returning the lease as renewed on the way.
    /// The source is polled on its own task so decoding the next batches
    /// overlaps encoding the current one.
    async fn stage(
        &self,
        table: &TableConfig,
        run_id: RunId,
        schema: SchemaRef,
        window: Window,
        mut lease: Lease,
        cancel: &CancellationToken,
    ) -> Result<(Staged, Lease), Error> {
        let mut stream = self.source.read(table, window).await?;
        let mut writer = self.sink.begin(table, run_id, schema).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.pipeline_depth);
        let reader = AbortOnDrop(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        }));
        let mut last_renewal = Instant::now();
        let outcome: Result<(), Error> = async {
            loop {
                let item = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    item = rx.recv() => item,
                };
                match item {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(batch)) => writer.write(batch).await?,
                }
                failpoint::hit("engine.read_batch");
                // Long windows outlive a lease: renew well before it lapses.
                if last_renewal.elapsed() > self.lease_ttl / 3 {
                    lease = self.store.renew_lease(&lease, self.lease_ttl).await?;
                    last_renewal = Instant::now();
                }
            }
        }
        .await;
        drop(reader);
        match outcome {
            Ok(()) => Ok((writer.finish().await?, lease)),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "could not abort staging; orphans left for cleanup");
                }
                Err(e)
            }
        }
    }

    async fn commit(
        &self,
        table: &TableConfig,
        staged: &Staged,
        meta: &CommitMetadata,
    ) -> Result<(), CommitFailure> {
        let mut attempt = 1;
        loop {
            let mut err = match self.sink.commit(table, staged, meta).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // Unknown outcome, or a conflict that may be our own earlier attempt
            // landing: ask the sink before anything else.
            if matches!(
                err,
                Error::CommitOutcomeUnknown { .. } | Error::CommitConflict { .. }
            ) {
                tracing::warn!(error = %err, "resolving commit outcome");
                match self
                    .retry
                    .retry("resolve commit", || self.sink.was_committed(table, meta.run_id))
                    .await
                {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(resolve) => {
                        tracing::error!(error = %resolve, "commit outcome stays unknown");
                        return Err(CommitFailure::InDoubt(err));
                    }
                }
                if matches!(err, Error::CommitConflict { .. }) {
                    return Err(CommitFailure::NotCommitted(err));
                }
                // Resolved: it did not land. Say so rather than "unknown", and
                // treat it as the retryable sink failure it turned out to be.
                if let Error::CommitOutcomeUnknown { source, .. } = err {
                    err = Error::Sink {
                        retryable: true,
                        source: format!("commit did not land (checked): {source}").into(),
                    };
                }
            }
            let retry = err.is_retryable();
            if !retry || attempt >= self.retry.max_attempts_value() {
                return Err(CommitFailure::NotCommitted(err));
            }
            let pause = self.retry.backoff(attempt);
            tracing::warn!(attempt, ?pause, error = %err, "retrying commit");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    async fn discard(&self, table: &TableConfig, staged: Staged) {
        if let Err(e) = self.sink.abort(table, staged).await {
            tracing::warn!(error = %e, "could not delete staged files; orphans left for cleanup");
        }
    }
}

/// Aborts a spawned task when dropped, so a dropped run stops its reader.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
