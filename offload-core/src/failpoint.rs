//! Deterministic crash points for the reliability suite (feature `failpoints`).
//!
//! With the feature on, `OFFLOAD_FAILPOINTS=name[=N][,name[=N]...]` makes the
//! process abort — like `kill -9`, no destructors, no flushing — the N-th time
//! (default: first) execution reaches [`hit`]`(name)`. Without the feature,
//! [`hit`] is an empty inline function and costs nothing.
//!
//! Points in the engine, in run order: `engine.after_lease`, `engine.read_batch`
//! (after each batch staged), `engine.before_commit` (files staged, nothing
//! committed), `engine.after_commit` (committed, store not updated),
//! `engine.after_store_update`. Adapters add their own (e.g. inside a catalog
//! commit) with the same function.

/// Aborts the process here if `OFFLOAD_FAILPOINTS` names this point (feature `failpoints`).
///
/// ```
/// offload_core::failpoint::hit("nothing.configured"); // returns: not armed
/// ```
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static ARMED: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("OFFLOAD_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.trim().split_once('=') {
                Some((n, k)) => (n.to_owned(), (k.parse().unwrap_or(1).max(1), AtomicU64::new(0))),
                None => (s.trim().to_owned(), (1, AtomicU64::new(0))),
            })
            .collect()
    });
    if let Some((at, seen)) = armed.get(name)
        && seen.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Aborts the process here if `OFFLOAD_FAILPOINTS` names this point (feature `failpoints`).
///
/// ```
/// offload_core::failpoint::hit("nothing.configured"); // no-op without the feature
/// ```
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
