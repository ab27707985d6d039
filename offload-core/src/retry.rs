//! Exponential backoff with full jitter: the one retry loop, used by the
//! [`Retry`](crate::layer::Retry) layer around trait calls and by the engine's
//! commit loop.
//!
//! Retrying lives here, in one place, rather than in every adapter: adapters only
//! classify their errors ([`Error::is_retryable`]) and the layer decides.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::Error;

/// How often and how patiently to retry a retryable error.
///
/// ```
/// use std::time::Duration;
/// use offload_core::RetryPolicy;
/// let p = RetryPolicy::default().max_attempts(3).initial_backoff(Duration::from_millis(10));
/// assert!(p.backoff(1) <= Duration::from_millis(10));
/// assert!(p.backoff(30) <= p.max_backoff_value());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 200 ms doubling to at most 30 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    ///
    /// ```
    /// assert_eq!(offload_core::RetryPolicy::none().max_attempts_value(), 1);
    /// ```
    pub fn none() -> Self {
        Self::default().max_attempts(1)
    }
    /// Total attempts including the first (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Upper bound of the first pause.
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }
    /// Cap on any pause.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }
    /// Growth factor per attempt (at least 1).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() { m.max(1.0) } else { 1.0 };
        self
    }
    /// Total attempts including the first.
    pub fn max_attempts_value(&self) -> u32 {
        self.max_attempts
    }
    /// The cap on any pause.
    pub fn max_backoff_value(&self) -> Duration {
        self.max_backoff
    }

    /// The pause before retry number `attempt` (1-based): uniformly random in
    /// `[0, min(cap, initial * multiplier^(attempt-1))]` ("full jitter"), so a
    /// fleet of workers that failed together does not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let ceiling = self
            .initial_backoff
            .as_secs_f64()
            .mul_add(exp, 0.0)
            .min(self.max_backoff.as_secs_f64());
        if ceiling <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling))
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the
    /// attempts are used up (the last error is returned).
    ///
    /// ```
    /// # tokio_test_block_on(async {
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use offload_core::{Error, RetryPolicy};
    /// let calls = AtomicU32::new(0);
    /// let p = RetryPolicy::default().initial_backoff(std::time::Duration::ZERO);
    /// let out = p.retry("demo", || async {
    ///     if calls.fetch_add(1, Ordering::SeqCst) < 2 {
    ///         Err(Error::source(std::io::Error::other("flaky"), true))
    ///     } else {
    ///         Ok(7)
    ///     }
    /// }).await;
    /// assert_eq!(out.unwrap(), 7);
    /// assert_eq!(calls.load(Ordering::SeqCst), 3);
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let pause = self.backoff(attempt);
                    tracing::warn!(what, attempt, ?pause, error = %e, "retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
