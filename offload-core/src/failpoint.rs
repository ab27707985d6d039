//! Deterministic crash points for the reliability suite (feature `failpoints`).
//!
//! With the feature on, `OFFLOAD_FAILPOINTS=name[=N][:stop][,...]` acts the
//! N-th time (default: first) execution reaches [`hit`]`(name)`: by default the
//! process aborts — like `kill -9`, no destructors, no flushing; with `:stop`
//! it sends itself `SIGSTOP`, freezing at exactly that step until a `SIGCONT`
//! (how the suite makes a worker outlive its lease at a chosen point). Without
//! the feature, [`hit`] is an empty inline function and costs nothing.
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

    static ARMED: OnceLock<HashMap<String, (u64, bool, AtomicU64)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("OFFLOAD_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (s, stop) = match s.strip_suffix(":stop") {
                    Some(rest) => (rest, true),
                    None => (s, false),
                };
                let (name, nth) = match s.split_once('=') {
                    Some((n, k)) => (n, k.parse().unwrap_or(1).max(1)),
                    None => (s, 1),
                };
                (name.to_owned(), (nth, stop, AtomicU64::new(0)))
            })
            .collect()
    });
    if let Some((at, stop, seen)) = armed.get(name)
        && seen.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        if *stop {
            eprintln!("failpoint {name} reached: stopping (SIGSTOP) until continued");
            // SAFETY: raise(3) with a valid signal number has no preconditions.
            unsafe { libc::raise(libc::SIGSTOP) };
            return;
        }
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
