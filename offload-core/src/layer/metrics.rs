use std::time::Instant;

use futures::future::BoxFuture;

use super::{Op, Policy};
use crate::Error;

/// Records every call: [`OPERATION_DURATION_SECONDS`](crate::metrics::OPERATION_DURATION_SECONDS)
/// `{op, table}` (histogram) and, for failures,
/// [`OPERATION_ERRORS_TOTAL`](crate::metrics::OPERATION_ERRORS_TOTAL) `{op, table, kind}`
/// (counter), through the `metrics` facade. Outermost in a stack, it sees
/// each call once with its retries included; innermost, every attempt.
///
/// ```
/// use offload_core::layer::{self, Metrics};
/// use offload_core::{SystemClock, memory::MemoryStore};
/// let store = layer::stack(MemoryStore::new(SystemClock)).with(Metrics).into_store();
/// # let _ = store;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics;

impl Policy for Metrics {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        table: &'a str,
        call: &'a mut (dyn FnMut() -> BoxFuture<'a, Result<T, Error>> + Send + 'a),
    ) -> BoxFuture<'a, Result<T, Error>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = call().await;
            crate::metrics::operation(op.name(), table, started.elapsed(), r.as_ref().err());
            r
        })
    }
}
