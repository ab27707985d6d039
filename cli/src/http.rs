//! The program's one HTTP listener (`[metrics] listen`): `/metrics`
//! (Prometheus text), `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Our own small server rather than the exporter's listener, because probes
//! need what only the program knows: whether it has connected and is taking
//! cycles ([`Health::ready`]) or is draining after a signal
//! ([`Health::draining`]). Kubernetes stops routing to, and systemd's
//! watchers stop counting on, a process whose `/readyz` answers 503.
//!
//! | path | 200 | 503 |
//! |---|---|---|
//! | `/metrics` | always (the exposition text) | never |
//! | `/healthz` | while the process serves requests: the run loop is alive | never: a dead process does not answer |
//! | `/readyz` | store and sink connected, cycles running | starting (connecting), draining after SIGTERM / Ctrl-C |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;

/// Where the program is in its life, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Reading the configuration and connecting to the store and sink.
    Starting,
    /// Connected and taking cycles.
    Ready,
    /// A shutdown signal arrived: finishing or abandoning the current windows.
    Draining,
}

impl Phase {
    /// The word `/readyz` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// The program's phase, shared by the run loop, the signal handler and the
/// HTTP server. One per process ([`health`]): the probes describe the
/// process, whatever subcommand it runs.
#[derive(Debug)]
pub struct Health {
    phase: AtomicU8,
}

impl Health {
    /// A fresh state: [`Phase::Starting`].
    pub const fn new() -> Self {
        Self {
            phase: AtomicU8::new(0),
        }
    }

    /// Store and sink are connected and the run loop starts: `/readyz` answers 200.
    /// Never undoes [`draining`](Self::draining).
    pub fn ready(&self) {
        let _ = self
            .phase
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A shutdown began: `/readyz` answers 503 from now on.
    pub fn draining(&self) {
        self.phase.store(2, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's health state.
pub fn health() -> &'static Health {
    static HEALTH: Health = Health::new();
    &HEALTH
}

/// Binds `addr` now (an address in use is a startup error) and serves
/// `metrics` and `health` on it from a task of the current tokio runtime.
/// Returns the bound address (`addr` with port 0 picks a free one).
pub fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: &'static Health,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let bound = listener.local_addr()?;
    // The exporter's own listener ran its upkeep (histogram buffers, idle
    // series); without it, `install_recorder` leaves that to us.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors or similar: the next accept may succeed.
                tokio::task::yield_now().await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &metrics, health)) }
                });
                // A client that hangs up mid-request is its own business; one
                // that never finishes its headers is dropped after a while.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn answer(req: &Request<Incoming>, metrics: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => (StatusCode::OK, "text/plain", "alive\n".to_owned()),
        "/readyz" => {
            let phase = health.phase();
            let status = if phase == Phase::Ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", format!("{}\n", phase.as_str()))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
