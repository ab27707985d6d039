//! The program's layers around the source, the sink and the store, innermost
//! first: fault injection (only in builds with the `failpoints` feature, and
//! only when `OFFLOAD_FAILPOINTS` is set), then [`Timeout`] (per family of
//! operation, `[timeouts]`), [`Retry`] (`[retry]`; retryable errors of
//! idempotent operations only), and [`Metrics`] outermost, so a call's
//! duration and errors are measured as the engine sees them, retries
//! included. The engine is built with
//! [`without_default_layers`](offload_core::OffloaderBuilder::without_default_layers),
//! so nothing is wrapped twice.

use std::sync::Arc;

use offload_core::layer::{self, Family, Layered, Metrics, Op, Retry, Timeout};
use offload_core::{Sink, Source, WatermarkStore};

use crate::app::{AppError, retry_policy};
use crate::config::{Config, TimeoutsSection};

/// The layers of one program run, built once from the configuration and put
/// around each part.
#[derive(Clone, Debug)]
pub struct Stack {
    #[cfg(feature = "failpoints")]
    faults: Option<offload_core::layer::Faults>,
    timeout: Timeout,
    retry: Retry,
}

impl Stack {
    /// The layers `cfg` asks for (and, with the `failpoints` feature, the
    /// fault points armed by `OFFLOAD_FAILPOINTS`).
    pub fn from_config(cfg: &Config) -> Result<Self, AppError> {
        Ok(Stack {
            #[cfg(feature = "failpoints")]
            faults: crate::faults::from_env()?,
            timeout: timeouts(&cfg.timeouts),
            retry: Retry::new(retry_policy(cfg)),
        })
    }

    /// `source` with the layers around it.
    pub fn source(&self, source: Arc<dyn Source>) -> Arc<dyn Source> {
        #[cfg(feature = "failpoints")]
        if let Some(f) = &self.faults {
            return self.outer(layer::stack(source).with(f.clone())).into_source();
        }
        self.outer(layer::stack(source)).into_source()
    }

    /// `sink` with the layers around it.
    pub fn sink(&self, sink: Arc<dyn Sink>) -> Arc<dyn Sink> {
        #[cfg(feature = "failpoints")]
        if let Some(f) = &self.faults {
            return self.outer(layer::stack(sink).with(f.clone())).into_sink();
        }
        self.outer(layer::stack(sink)).into_sink()
    }

    /// `store` with the layers around it.
    pub fn store(&self, store: Arc<dyn WatermarkStore>) -> Arc<dyn WatermarkStore> {
        #[cfg(feature = "failpoints")]
        if let Some(f) = &self.faults {
            return self.outer(layer::stack(store).with(f.clone())).into_store();
        }
        self.outer(layer::stack(store)).into_store()
    }

    fn outer<S>(&self, s: layer::Stack<S>) -> Outer<S> {
        s.with(self.timeout.clone())
            .with(self.retry.clone())
            .with(Metrics)
    }
}

type Outer<S> = layer::Stack<Layered<Metrics, Layered<Retry, Layered<Timeout, S>>>>;

/// `[timeouts]` as one [`Timeout`] policy: a deadline per operation family.
pub fn timeouts(t: &TimeoutsSection) -> Timeout {
    let mut policy = Timeout::new(t.sink.0);
    for op in Op::ALL {
        let d = match (op, op.family()) {
            // Writing, and the sweep's counts and key scans, move data.
            (Op::Write | Op::Finish | Op::SourceBucketCounts | Op::SinkBucketCounts | Op::Positions, _) => {
                t.staging
            }
            (Op::Cleanup, _) => t.cleanup,
            (_, Family::Source) => t.source,
            (_, Family::Store) => t.store,
            _ => t.sink,
        };
        policy = policy.op(op, d.0);
    }
    // The sink bounds its own commits (`timeouts.commit`, see `app::sink_config`).
    // Maintenance bounds its own commits and may rewrite for a long time.
    policy
        .without(Op::Commit)
        .without(Op::CommitRepair)
        .without(Op::Maintain)
}
