use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Op, Policy};
use crate::Error;

/// Bounds every call with a deadline: the default, or one set per operation.
///
/// An elapsed deadline is a *retryable* error of the operation's family
/// ([`Error::Source`], [`Error::Sink`] or [`Error::Store`], holding an
/// [`Elapsed`]), except on [`Op::Commit`], where the commit may have landed:
/// there it is [`Error::CommitOutcomeUnknown`], so the engine asks the sink
/// before doing anything else. [`Op::Read`] bounds opening the stream; the
/// engine bounds the wait for each batch by the lease length.
///
/// ```
/// use std::time::Duration;
/// use offload_core::layer::{Op, Timeout};
/// let t = Timeout::new(Duration::from_secs(30)).op(Op::Commit, Duration::from_secs(300));
/// assert_eq!(t.deadline(Op::Commit), Some(Duration::from_secs(300)));
/// assert_eq!(t.deadline(Op::Load), Some(Duration::from_secs(30)));
/// assert_eq!(t.without(Op::Write).deadline(Op::Write), None);
/// ```
#[derive(Clone, Debug)]
pub struct Timeout {
    default: Option<Duration>,
    per_op: HashMap<Op, Option<Duration>>,
}

impl Timeout {
    /// Every operation gets `default`.
    pub fn new(default: Duration) -> Self {
        Self {
            default: Some(default),
            per_op: HashMap::new(),
        }
    }

    /// `op` gets `deadline` instead of the default.
    pub fn op(mut self, op: Op, deadline: Duration) -> Self {
        self.per_op.insert(op, Some(deadline));
        self
    }

    /// `op` gets no deadline at all.
    pub fn without(mut self, op: Op) -> Self {
        self.per_op.insert(op, None);
        self
    }

    /// The deadline `op` gets, if any.
    pub fn deadline(&self, op: Op) -> Option<Duration> {
        self.per_op.get(&op).copied().unwrap_or(self.default)
    }
}

/// The error inside the [`Error`] a [`Timeout`] reports: which operation ran
/// out of time, and after how long.
///
/// ```
/// use std::time::Duration;
/// use offload_core::layer::{Elapsed, Op};
/// let e = Elapsed { op: Op::Load, after: Duration::from_secs(3) };
/// assert_eq!(e.to_string(), "store.load timed out after 3s");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed {
    /// The operation.
    pub op: Op,
    /// Its deadline.
    pub after: Duration,
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timed out after {:?}", self.op, self.after)
    }
}

impl std::error::Error for Elapsed {}

impl Policy for Timeout {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        let Some(after) = self.deadline(op) else {
            return call();
        };
        let fut = call();
        Box::pin(async move {
            match tokio::time::timeout(after, fut).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(op = op.name(), table, ?after, "call timed out");
                    // On a commit, [`Layered`](super::Layered) turns this into
                    // `CommitOutcomeUnknown` (it knows the run id).
                    Err(op.error(Elapsed { op, after }, !op.is_commit()))
                }
            }
        })
    }
}
