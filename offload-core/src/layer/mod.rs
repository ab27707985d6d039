//! Behaviour composed around the traits, tower-style: one wrapper type,
//! [`Layered`], for every trait family ([`Source`], [`Sink`], [`WatermarkStore`]
//! and the handles they return), and one small [`Policy`] per behaviour:
//!
//! | policy | what it does |
//! | --- | --- |
//! | [`Retry`] | retries retryable errors of idempotent operations, with the [`RetryPolicy`](crate::RetryPolicy) backoff |
//! | [`Timeout`] | bounds each call; an elapsed commit becomes [`Error::CommitOutcomeUnknown`] |
//! | [`Metrics`] | per-operation duration and errors, through the `metrics` facade |
//! | [`Faults`] | fault injection for the reliability suite: abort (or a hook) at a named point |
//!
//! A [`Layered`] wraps the handles its inner part returns the same way, so
//! wrapping a [`Sink`] also wraps its [`SinkTable`]s, their
//! [`StagingWriter`]s and the [`Staged`] output they produce.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use offload_core::layer::{self, Metrics, Op, Retry, Timeout};
//! use offload_core::memory::MemorySink;
//! use offload_core::{RetryPolicy, Sink};
//!
//! let sink: Arc<dyn Sink> = layer::stack(MemorySink::new())
//!     .with(Timeout::new(Duration::from_secs(30)).op(Op::Commit, Duration::from_secs(120)))
//!     .with(Retry::new(RetryPolicy::default()))
//!     .with(Metrics)
//!     .into_sink();
//! # let _ = sink;
//! ```
//!
//! The engine ([`Offloader::builder`](crate::Offloader::builder)) wraps its
//! parts in `Retry` and `Metrics` unless told not to
//! ([`OffloaderBuilder::without_default_layers`](crate::OffloaderBuilder::without_default_layers)).

mod faults;
mod metrics;
mod retry;
mod timeout;
mod wrap;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use faults::Faults;
pub use metrics::Metrics;
pub use retry::Retry;
pub use timeout::{Elapsed, Timeout};

use crate::{Error, Sink, Source, WatermarkStore};

#[cfg(doc)]
use crate::{SinkTable, Staged, StagingWriter};

/// The trait operation being called, as a [`Policy`] sees it.
///
/// ```
/// use offload_core::layer::Op;
/// assert_eq!(Op::Commit.name(), "sink.commit");
/// assert!(!Op::Commit.is_idempotent());
/// assert!(Op::HighWatermark.is_idempotent());
/// assert_eq!(Op::parse("store.compare_and_set"), Some(Op::CompareAndSet));
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Source::open`].
    SourceOpen,
    /// [`SourceTable::high_watermark`](crate::SourceTable::high_watermark).
    HighWatermark,
    /// [`SourceTable::low_watermark`](crate::SourceTable::low_watermark).
    LowWatermark,
    /// [`SourceTable::read`](crate::SourceTable::read) (opening the stream, not its batches).
    Read,
    /// [`SourceTable::bucket_counts`](crate::SourceTable::bucket_counts).
    SourceBucketCounts,
    /// [`Sink::open`].
    SinkOpen,
    /// [`SinkTable::prepare`].
    Prepare,
    /// [`SinkTable::begin`].
    Begin,
    /// [`StagingWriter::write`].
    Write,
    /// [`StagingWriter::finish`].
    Finish,
    /// [`StagingWriter::abort`].
    Abort,
    /// [`Staged::commit`].
    Commit,
    /// [`Staged::commit_repair`].
    CommitRepair,
    /// [`Staged::discard`].
    Discard,
    /// [`SinkTable::committed`].
    Committed,
    /// [`SinkTable::was_committed`].
    WasCommitted,
    /// [`SinkTable::cleanup`].
    Cleanup,
    /// [`SinkTable::positions`].
    Positions,
    /// [`SinkTable::bucket_counts`].
    SinkBucketCounts,
    /// [`SinkTable::maintain`].
    Maintain,
    /// [`WatermarkStore::load`].
    Load,
    /// [`WatermarkStore::acquire_lease`].
    AcquireLease,
    /// [`WatermarkStore::renew_lease`].
    RenewLease,
    /// [`WatermarkStore::release_lease`].
    ReleaseLease,
    /// [`WatermarkStore::compare_and_set`].
    CompareAndSet,
    /// [`WatermarkStore::record_run`].
    RecordRun,
    /// [`WatermarkStore::recover_stale_runs`].
    RecoverStaleRuns,
}

/// Which trait family an operation belongs to: decides the error variant a
/// policy reports its own failures in, and lets a program set one deadline
/// per family.
///
/// ```
/// use offload_core::layer::{Family, Op};
/// assert_eq!(Op::HighWatermark.family(), Family::Source);
/// assert_eq!(Op::Commit.family(), Family::Sink);
/// assert_eq!(Op::CompareAndSet.family(), Family::Store);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// [`Source`] and [`SourceTable`](crate::SourceTable).
    Source,
    /// [`Sink`], [`SinkTable`], [`StagingWriter`], [`Staged`].
    Sink,
    /// [`WatermarkStore`].
    Store,
}

impl Op {
    /// Every operation, in trait order.
    pub const ALL: [Op; 27] = [
        Op::SourceOpen,
        Op::HighWatermark,
        Op::LowWatermark,
        Op::Read,
        Op::SourceBucketCounts,
        Op::SinkOpen,
        Op::Prepare,
        Op::Begin,
        Op::Write,
        Op::Finish,
        Op::Abort,
        Op::Commit,
        Op::CommitRepair,
        Op::Discard,
        Op::Committed,
        Op::WasCommitted,
        Op::Cleanup,
        Op::Positions,
        Op::SinkBucketCounts,
        Op::Maintain,
        Op::Load,
        Op::AcquireLease,
        Op::RenewLease,
        Op::ReleaseLease,
        Op::CompareAndSet,
        Op::RecordRun,
        Op::RecoverStaleRuns,
    ];

    /// The stable name used in metrics labels and fault points (`"sink.commit"`).
    pub fn name(self) -> &'static str {
        match self {
            Op::SourceOpen => "source.open",
            Op::HighWatermark => "source.high_watermark",
            Op::LowWatermark => "source.low_watermark",
            Op::Read => "source.read",
            Op::SourceBucketCounts => "source.bucket_counts",
            Op::SinkOpen => "sink.open",
            Op::Prepare => "sink.prepare",
            Op::Begin => "sink.begin",
            Op::Write => "sink.write",
            Op::Finish => "sink.finish",
            Op::Abort => "sink.abort",
            Op::Commit => "sink.commit",
            Op::CommitRepair => "sink.commit_repair",
            Op::Discard => "sink.discard",
            Op::Committed => "sink.committed",
            Op::WasCommitted => "sink.was_committed",
            Op::Cleanup => "sink.cleanup",
            Op::Positions => "sink.positions",
            Op::SinkBucketCounts => "sink.bucket_counts",
            Op::Maintain => "sink.maintain",
            Op::Load => "store.load",
            Op::AcquireLease => "store.acquire_lease",
            Op::RenewLease => "store.renew_lease",
            Op::ReleaseLease => "store.release_lease",
            Op::CompareAndSet => "store.compare_and_set",
            Op::RecordRun => "store.record_run",
            Op::RecoverStaleRuns => "store.recover_stale_runs",
        }
    }

    /// The operation named `name` ([`Op::name`]'s output).
    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Whether the operation makes a commit: one interrupted by a deadline may
    /// have landed, so its outcome is unknown rather than failed.
    pub fn is_commit(self) -> bool {
        matches!(self, Op::Commit | Op::CommitRepair)
    }

    /// Whether calling the operation again after a failure is safe. `false`
    /// for [`Commit`](Op::Commit) and [`CommitRepair`](Op::CommitRepair) (only the engine may retry it, after resolving
    /// the outcome), [`Write`](Op::Write) and [`Finish`](Op::Finish) (a second
    /// call would stage twice), and [`Discard`](Op::Discard) / [`Abort`](Op::Abort),
    /// which consume their receiver.
    pub fn is_idempotent(self) -> bool {
        !matches!(
            self,
            Op::Commit | Op::CommitRepair | Op::Write | Op::Finish | Op::Discard | Op::Abort
        )
    }

    /// The trait family the operation belongs to.
    pub fn family(self) -> Family {
        match self {
            Op::SourceOpen | Op::HighWatermark | Op::LowWatermark | Op::Read | Op::SourceBucketCounts => {
                Family::Source
            }
            Op::SinkOpen
            | Op::Prepare
            | Op::Begin
            | Op::Write
            | Op::Finish
            | Op::Abort
            | Op::Commit
            | Op::CommitRepair
            | Op::Discard
            | Op::Committed
            | Op::WasCommitted
            | Op::Cleanup
            | Op::Positions
            | Op::SinkBucketCounts
            | Op::Maintain => Family::Sink,
            Op::Load
            | Op::AcquireLease
            | Op::RenewLease
            | Op::ReleaseLease
            | Op::CompareAndSet
            | Op::RecordRun
            | Op::RecoverStaleRuns => Family::Store,
        }
    }

    /// An error of this operation's family (source, sink, store).
    pub(crate) fn error(self, err: impl Into<crate::BoxError>, retryable: bool) -> Error {
        match self.family() {
            Family::Source => Error::source(err, retryable),
            Family::Sink => Error::sink(err, retryable),
            Family::Store => Error::store(err, retryable),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Behaviour around one call of a trait operation.
///
/// `call` invokes the wrapped operation; a policy may call it once, not at
/// all (failing instead), or again (retrying). Operations that consume their
/// receiver or take it mutably ([`StagingWriter::write`], `finish`, `abort`,
/// [`Staged::discard`]) can be invoked only once: a second `call()` fails with
/// a non-retryable error. [`Op::is_idempotent`] says which operations may be
/// called again.
///
/// ```
/// use futures::future::BoxFuture;
/// use offload_core::Error;
/// use offload_core::layer::{Op, Policy};
///
/// /// Logs every failed call.
/// #[derive(Debug)]
/// struct LogErrors;
///
/// impl Policy for LogErrors {
///     fn around<'a, T: Send + 'a>(
///         &'a self,
///         op: Op,
///         table: &'a str,
///         call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
///     ) -> BoxFuture<'a, Result<T, Error>> {
///         Box::pin(async move {
///             let r = call().await;
///             if let Err(e) = &r {
///                 eprintln!("{op} on {table} failed: {e}");
///             }
///             r
///         })
///     }
/// }
/// ```
pub trait Policy: Send + Sync + fmt::Debug + 'static {
    /// Runs `call` (the operation `op` on `table`) with this behaviour around it.
    /// `table` is the [`TableConfig::name`](crate::TableConfig::name), or `""`
    /// for calls that are not about one table (`store.recover_stale_runs`).
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>>;
}

/// A part (`S`) with a [`Policy`] (`P`) around every call.
///
/// Implements [`Source`], [`Sink`] and [`WatermarkStore`] when `S` does
/// (including `Arc<dyn Source>` and friends, so wrappers stack), and the
/// handle traits ([`SourceTable`](crate::SourceTable), [`SinkTable`],
/// [`StagingWriter`], [`Staged`]) likewise: the handles a wrapped part returns
/// come back wrapped in the same policy.
///
/// ```
/// use std::sync::Arc;
/// use offload_core::layer::{Layered, Metrics};
/// use offload_core::memory::MemoryStore;
/// use offload_core::{SystemClock, WatermarkStore};
/// let store: Arc<dyn WatermarkStore> = Arc::new(Layered::new(Metrics, MemoryStore::new(SystemClock)));
/// # let _ = store;
/// ```
pub struct Layered<P, S> {
    policy: Arc<P>,
    inner: S,
    /// The table a handle belongs to; empty for the top-level parts, whose
    /// calls name their table themselves.
    table: Arc<str>,
}

impl<P, S> Layered<P, S> {
    /// Wraps `inner` in `policy`.
    pub fn new(policy: P, inner: S) -> Self {
        Self {
            policy: Arc::new(policy),
            inner,
            table: Arc::from(""),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The wrapped part.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub(crate) fn handle<T>(&self, table: Arc<str>, inner: T) -> Layered<P, T> {
        Layered {
            policy: self.policy.clone(),
            inner,
            table,
        }
    }
}

impl<P: fmt::Debug, S: fmt::Debug> fmt::Debug for Layered<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("policy", &self.policy)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Starts a stack of policies around `inner`; see [`Stack`].
///
/// ```
/// use std::sync::Arc;
/// use offload_core::layer::{self, Metrics, Retry};
/// use offload_core::memory::MemorySource;
/// use offload_core::{RetryPolicy, Source, SystemClock};
/// let source: Arc<dyn Source> = layer::stack(MemorySource::new(SystemClock))
///     .with(Retry::new(RetryPolicy::default()))
///     .with(Metrics)
///     .into_source();
/// # let _ = source;
/// ```
pub fn stack<S>(inner: S) -> Stack<S> {
    Stack(inner)
}

/// A part with policies around it, innermost first: each [`with`](Stack::with)
/// adds a policy *outside* the ones before.
#[derive(Debug)]
pub struct Stack<S>(S);

impl<S> Stack<S> {
    /// Wraps everything so far in `policy`.
    pub fn with<P: Policy>(self, policy: P) -> Stack<Layered<P, S>> {
        Stack(Layered::new(policy, self.0))
    }

    /// The stacked part.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S: Source + 'static> Stack<S> {
    /// The stack as a shared [`Source`].
    pub fn into_source(self) -> Arc<dyn Source> {
        Arc::new(self.0)
    }
}

impl<S: Sink + 'static> Stack<S> {
    /// The stack as a shared [`Sink`].
    pub fn into_sink(self) -> Arc<dyn Sink> {
        Arc::new(self.0)
    }
}

impl<S: WatermarkStore + 'static> Stack<S> {
    /// The stack as a shared [`WatermarkStore`].
    pub fn into_store(self) -> Arc<dyn WatermarkStore> {
        Arc::new(self.0)
    }
}

/// The error a once-only operation reports when a policy calls it again.
pub(crate) fn reinvoked(op: Op) -> Error {
    op.error(
        format!("{op} consumes its receiver and cannot be called again by a policy"),
        false,
    )
}
