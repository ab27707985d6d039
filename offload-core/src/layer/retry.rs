use futures::future::BoxFuture;

use super::{Op, Policy};
use crate::{Error, RetryPolicy};

/// Retries retryable errors ([`Error::is_retryable`]) of idempotent operations
/// ([`Op::is_idempotent`]) with the backoff of a [`RetryPolicy`]. Commits,
/// writes and finishes are called exactly once: retrying a commit safely needs
/// its outcome resolved first, which is the engine's job.
///
/// ```
/// use offload_core::RetryPolicy;
/// use offload_core::layer::Retry;
/// let retry = Retry::new(RetryPolicy::default().max_attempts(3));
/// assert_eq!(retry.policy().max_attempts_value(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct Retry {
    policy: RetryPolicy,
}

impl Retry {
    /// Retries with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }

    /// The backoff policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl Policy for Retry {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        if !op.is_idempotent() {
            return call();
        }
        Box::pin(async move {
            let _ = table;
            self.policy.retry(op.name(), call).await
        })
    }
}
