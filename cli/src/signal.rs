//! Shutdown on Ctrl-C (SIGINT) and SIGTERM alike: the first signal cancels
//! the runs in progress — a window whose commit has started is finished, one
//! that has not is abandoned (nothing of it becomes visible) — and a second
//! signal exits at once, which is just as safe: the next start resumes from
//! what the Iceberg table holds. From the first signal on, `/readyz`
//! answers 503 ([`crate::http`]).

use offload_core::CancellationToken;
use tokio::signal::unix::{SignalKind, signal};

/// Cancels `shutdown` at the first SIGINT or SIGTERM and exits the process
/// (status 130 / 143) at the second. Must be called inside a tokio runtime.
pub fn install(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = int.recv() => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
        };
        eprintln!("offload: {name}: finishing or abandoning the current windows (again to exit now)");
        // Before the cancel: a probe must see "draining" as soon as runs may stop.
        crate::http::health().draining();
        shutdown.cancel();
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        std::process::exit(code);
    });
    Ok(())
}
