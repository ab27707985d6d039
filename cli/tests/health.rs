//! The program's HTTP listener (`[metrics] listen`): `/healthz` and `/readyz`
//! beside `/metrics`, through the phases of a REAL `offload run` (starting
//! while it connects, ready while it takes cycles, a clean exit on SIGTERM
//! with table and store consistent), and draining after SIGTERM (in-process:
//! the program's own signal handler and server, a real signal and real HTTP).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::{Catalog, Lake, Store};

/// `GET <path>`: `(status code, body)`, or `None` while nothing listens.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((code, body))
}

/// Polls `path` until it answers `want`, or panics after `limit` (or when
/// `alive` says the program ended).
fn wait_for(
    addr: SocketAddr,
    path: &str,
    want: u16,
    limit: Duration,
    mut alive: impl FnMut() -> bool,
) -> String {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        assert!(alive(), "the program ended while {path} answered {last:?}");
        last = get(addr, path);
        if let Some((code, body)) = &last
            && *code == want
        {
            return body.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{path} did not answer {want} within {limit:?}: last {last:?}");
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_a_real_run_from_start_to_sigterm() {
    let s = Lake::new("health_run", Catalog::Sqlite, Store::File);
    s.insert(0, 2_000, 5, 10_000);
    let addr = free_port();
    let cfg = s.dir.join("scheduled.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[metrics]\nlisten = \"{addr}\"\n",
            s.config_text(&s.lag, s.engine_id.as_deref())
        ),
    )
    .unwrap();
    let mut child = s.spawn_command(&cfg, None, "run", &[], "run.log");
    let body = wait_for(addr, "/readyz", 200, Duration::from_secs(60), || {
        child.try_wait().unwrap().is_none()
    });
    assert_eq!(body, "ready\n");
    assert_eq!(get(addr, "/healthz"), Some((200, "alive\n".into())));
    // Same path and key as before the listener was ours: what Prometheus scrapes.
    let (code, metrics) = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("# TYPE offload_"), "{metrics}");
    assert_eq!(get(addr, "/nope").map(|r| r.0), Some(404));
    // The first cycle commits the rows; then SIGTERM stops the loop cleanly.
    let started = Instant::now();
    while s.state().await.committed.is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "no commit");
        assert!(child.try_wait().unwrap().is_none(), "run ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(s.dir.join("run.log")).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    let state = s.state().await;
    assert_eq!(
        state.store, state.committed,
        "store and table agree after SIGTERM"
    );
    assert_eq!(s.verify(false).await.rows, 2_000);
}

/// While the store cannot be reached the program is alive but not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_store_does_not_answer() {
    let s = Lake::new("health_start", Catalog::Sqlite, Store::File);
    // A "PostgreSQL" that accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free_port();
    let text = s.config_text(&s.lag, s.engine_id.as_deref()).replace(
        &format!("kind = \"file\"\npath = \"{}/watermarks\"", s.dir.display()),
        &format!(
            "kind = \"postgres\"\nurl = \"postgres://offload@{}/offload\"",
            silent.local_addr().unwrap()
        ),
    );
    assert!(text.contains("kind = \"postgres\""), "{text}");
    let cfg = s.dir.join("silent.toml");
    std::fs::write(&cfg, format!("{text}\n[metrics]\nlisten = \"{addr}\"\n")).unwrap();
    let mut child = s.spawn_command(&cfg, None, "run", &[], "run.log");
    let body = wait_for(addr, "/readyz", 503, Duration::from_secs(30), || {
        child.try_wait().unwrap().is_none()
    });
    assert_eq!(body, "starting\n");
    assert_eq!(get(addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(addr, "/metrics").map(|r| r.0), Some(200));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(silent);
}

/// SIGTERM turns `/readyz` to 503 (draining) before the runs stop, and a
/// ready program answers 200. In-process: the program's signal handler and
/// HTTP server, this test process receiving the real signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_to_draining() {
    use offload_cli::http::{Health, Phase};
    static HEALTH: Health = Health::new();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let addr = offload_cli::http::serve("127.0.0.1:0".parse().unwrap(), recorder, &HEALTH).unwrap();
    let probe = |path: &'static str| tokio::task::spawn_blocking(move || get(addr, path).unwrap());
    assert_eq!(probe("/readyz").await.unwrap(), (503, "starting\n".into()));
    HEALTH.ready();
    assert_eq!(probe("/readyz").await.unwrap(), (200, "ready\n".into()));

    // The program's own handler flips the process-wide state.
    let global = offload_cli::http::health();
    global.ready();
    assert_eq!(global.phase(), Phase::Ready);
    let shutdown = offload_core::CancellationToken::new();
    offload_cli::signal::install(shutdown.clone()).unwrap();
    // SAFETY: kill(2) on this very process; the handler just installed catches it.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    tokio::time::timeout(Duration::from_secs(30), shutdown.cancelled())
        .await
        .expect("SIGTERM cancels the runs");
    assert_eq!(
        global.phase(),
        Phase::Draining,
        "draining is set before the cancel"
    );
    global.ready();
    assert_eq!(
        global.phase(),
        Phase::Draining,
        "a draining program never turns ready again"
    );
    let global_addr = offload_cli::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        global,
    )
    .unwrap();
    let r = tokio::task::spawn_blocking(move || get(global_addr, "/readyz").unwrap())
        .await
        .unwrap();
    assert_eq!(r, (503, "draining\n".into()));
}
