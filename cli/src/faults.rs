//! Fault injection for the reliability suite (feature `failpoints` only):
//! `OFFLOAD_FAILPOINTS` arms [`offload_core::layer::Faults`] points
//! (`sink.commit.before`, `sink.write.after=2:stop`, ...). A point aborts the
//! process; a `:stop` point freezes it with `SIGSTOP` until it is continued
//! (`SIGCONT`), so a test can act while the program sits at that step.

use std::sync::Arc;

use offload_core::layer::Faults;

use crate::app::AppError;

/// The environment variable holding the fault spec.
pub const ENV: &str = "OFFLOAD_FAILPOINTS";

/// The faults armed by [`ENV`], if it is set and not empty.
pub fn from_env() -> Result<Option<Faults>, AppError> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(None);
    };
    let faults = Faults::parse(&spec)
        .map_err(|e| AppError::Setup(format!("{ENV}: {e}")))?
        .on_stop(Arc::new(stop));
    if faults.is_empty() {
        return Ok(None);
    }
    tracing::warn!(points = ?faults.points(), "fault injection armed ({ENV})");
    Ok(Some(faults))
}

fn stop(point: &str) {
    eprintln!("fault point {point} reached: stopping (SIGSTOP) until continued");
    // SAFETY: raise(3) with a valid signal number; SIGSTOP suspends the
    // whole process until SIGCONT, then the call returns.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}
