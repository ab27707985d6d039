//! Fault injection for the reliability suite (feature `failpoints` only):
//! `OFFLOAD_FAILPOINTS` arms [`offload_core::layer::Faults`] points
//! (`sink.commit.before`, `sink.write.after=2:stop`, ...), and the Iceberg
//! sink's maintenance steps ([`Step::name`]: `maintain.outputs`,
//! `maintain.manifests`, `maintain.metadata`, `maintain.commit`,
//! `maintain.expire`, `maintain.delete`, same `=N` / `:stop` syntax). A point
//! aborts the process; a `:stop` point freezes it with `SIGSTOP` until it is
//! continued (`SIGCONT`), so a test can act while the program sits at that step.

use std::sync::Arc;

use offload_core::layer::Faults;
use offload_sink_iceberg::{Step, StepHook};

use crate::app::AppError;

/// The environment variable holding the fault spec.
pub const ENV: &str = "OFFLOAD_FAILPOINTS";

/// The faults armed by [`ENV`], if it is set and not empty.
pub fn from_env() -> Result<Option<Faults>, AppError> {
    let faults = parse_env()?;
    if let Some(f) = &faults {
        tracing::warn!(points = ?f.points(), "fault injection armed ({ENV})");
    }
    Ok(faults)
}

/// The maintenance step hook reaching the `maintain.*` points armed by
/// [`ENV`], if any is.
pub fn step_hook() -> Result<Option<StepHook>, AppError> {
    let Some(faults) = parse_env()? else {
        return Ok(None);
    };
    if !faults.points().iter().any(|p| Step::parse(p).is_some()) {
        return Ok(None);
    }
    Ok(Some(Arc::new(move |step: Step| faults.hit(step.name()))))
}

fn parse_env() -> Result<Option<Faults>, AppError> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(None);
    };
    let steps = Step::ALL.map(Step::name);
    let faults = Faults::parse_with(&spec, &steps)
        .map_err(|e| AppError::Setup(format!("{ENV}: {e}")))?
        .on_stop(Arc::new(stop));
    Ok((!faults.is_empty()).then_some(faults))
}

fn stop(point: &str) {
    eprintln!("fault point {point} reached: stopping (SIGSTOP) until continued");
    // SAFETY: raise(3) with a valid signal number; SIGSTOP suspends the
    // whole process until SIGCONT, then the call returns.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}
