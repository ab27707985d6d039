//! Test fixtures for offload.
//!
//! [`ClickHouseFront`] gives tests a real ClickHouse engine: PyPI `chdb`
//! (embedded ClickHouse) behind `testing/chdb-front/server.py`, a small
//! threaded server speaking the ClickHouse HTTP interface that the
//! `clickhouse` crate uses. The Python side lives in a venv created by
//! `testing/setup-venv.sh`; without it the fixture panics (tests fail loudly,
//! they never skip).
//!
//! Set `CLICKHOUSE_URL=http://host:port` to run the same tests against an
//! existing ClickHouse server instead.
//!
//! [`tls`] makes test certificates and runs a TLS-only PostgreSQL;
//! [`ClickHouseFront::start_tls`] adds an HTTPS listener to the front.
//!
//! [`S3Server`] gives tests a real S3-compatible server (s3s-fs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

pub mod tls;
pub use tls::{TestCerts, TlsPostgres};

mod s3;
pub use s3::{S3Server, s3s_fs_binary};

/// How long the front may take to import chdb and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one [`ClickHouseFront::query`] round trip.
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspace root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

/// The venv's python: `$OFFLOAD_VENV/bin/python`, else `<repo>/.venv/bin/python`.
///
/// # Panics
/// If it does not exist, with a message saying how to create it.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("OFFLOAD_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "{} not found: the ClickHouse test fixture needs the Python test venv. \
         Create it with `bash testing/setup-venv.sh` (from the repo root; \
         set OFFLOAD_VENV to use another location).",
        python.display()
    );
    python
}

/// A running ClickHouse HTTP endpoint for tests: a private chdb-front child
/// process with its own fresh data directory, or an external server named by
/// `CLICKHOUSE_URL`. The child is killed and the data removed on drop.
pub struct ClickHouseFront {
    url: String,
    /// The HTTPS listener of a [`start_tls`](Self::start_tls) front.
    https_url: Option<String>,
    child: Option<Child>,
    /// Held open while we live: the front exits when it sees EOF on stdin, so
    /// it does not outlive a test process that is killed without unwinding.
    stdin: Option<ChildStdin>,
    data_dir: Option<TempDir>,
}

impl ClickHouseFront {
    /// Starts a fresh front (or points at `CLICKHOUSE_URL` if set).
    ///
    /// # Panics
    /// If the venv is missing, the front fails to start, or it does not print
    /// `LISTENING <port>` within 120 s.
    pub fn start() -> ClickHouseFront {
        if let Some(url) = std::env::var("CLICKHOUSE_URL").ok().filter(|u| !u.is_empty()) {
            return ClickHouseFront {
                url: url.trim_end_matches('/').to_owned(),
                https_url: None,
                child: None,
                stdin: None,
                data_dir: None,
            };
        }
        Self::spawn(None)
    }

    /// Starts a fresh front with a second listener speaking HTTPS with
    /// `certs`' server certificate ([`https_url`](Self::https_url)); the plain
    /// one ([`url`](Self::url)) stays for [`query`](Self::query) and test setup.
    /// Always a private front: `CLICKHOUSE_URL` is not used.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_tls(certs: &TestCerts) -> ClickHouseFront {
        Self::spawn(Some(certs))
    }

    fn spawn(tls: Option<&TestCerts>) -> ClickHouseFront {
        let python = venv_python();
        let server = repo_root().join("testing/chdb-front/server.py");
        let data_dir = tempfile::Builder::new()
            .prefix("offload-chdb-")
            .tempdir()
            .expect("create a temp dir for chdb");
        let mut cmd = Command::new(&python);
        cmd.arg(&server);
        if let Some(certs) = tls {
            cmd.arg("--tls-port=0")
                .arg("--tls-cert")
                .arg(certs.server_cert())
                .arg("--tls-key")
                .arg(certs.server_key());
        }
        let mut child = cmd
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--exit-on-stdin-eof",
                "--data",
            ])
            .arg(data_dir.path())
            // chdb's file table functions (`icebergLocal`, `file`) only read below
            // the working directory: from `/`, tests can read any warehouse they write.
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", python.display(), server.display()));

        // Forward the front's output through eprintln!, so the test harness
        // captures it with the test's own output (shown when a test fails).
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || for_each_line(stderr, |line| eprintln!("[chdb-front] {line}")));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for_each_line(stdout, |line| {
                // `LISTENING <port>` and, with TLS, `LISTENING_TLS <port>`.
                let listening = line.split_once(' ').and_then(|(tag, port)| {
                    let tls = match tag {
                        "LISTENING" => false,
                        "LISTENING_TLS" => true,
                        _ => return None,
                    };
                    Some((tls, port.trim().parse::<u16>().ok()?))
                });
                match listening {
                    Some(found) => {
                        let _ = tx.send(found);
                    }
                    None => eprintln!("[chdb-front] {line}"),
                }
            });
        });

        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let (mut port, mut tls_port) = (None, None);
        while port.is_none() || (tls.is_some() && tls_port.is_none()) {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok((false, p)) => port = Some(p),
                Ok((true, p)) => tls_port = Some(p),
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    let and_tls = if tls.is_some() {
                        " and `LISTENING_TLS <port>`"
                    } else {
                        ""
                    };
                    panic!(
                        "chdb-front did not report `LISTENING <port>`{and_tls} ({e}); exit status: {status:?}. \
                         Its stderr is above. Is the venv complete? Rerun `bash testing/setup-venv.sh`."
                    );
                }
            }
        }
        let port = port.expect("loop ends with the port");

        ClickHouseFront {
            url: format!("http://127.0.0.1:{port}"),
            https_url: tls_port.map(|p| format!("https://127.0.0.1:{p}")),
            stdin: child.stdin.take(),
            child: Some(child),
            data_dir: Some(data_dir),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTPS URL of a [`start_tls`](Self::start_tls) front, e.g.
    /// `https://127.0.0.1:41235`; `None` for a plain one.
    pub fn https_url(&self) -> Option<&str> {
        self.https_url.as_deref()
    }

    /// The front process's id; `None` for an external `CLICKHOUSE_URL` server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The chdb data directory; `None` for an external `CLICKHOUSE_URL` server.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_ref().map(TempDir::path)
    }

    /// Runs one statement and returns the response body (TabSeparated unless
    /// the SQL says `FORMAT ...`). A tiny std-only HTTP/1.0 client meant for
    /// test setup: `CREATE TABLE`, `INSERT ... SELECT FROM numbers(...)`, checks.
    ///
    /// # Panics
    /// On connection errors, a non-200 status, or an exception reported in
    /// the middle of the response, with the server's error text.
    pub fn query(&self, sql: &str) -> String {
        let authority = self
            .url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("query() speaks plain http only, url is {}", self.url))
            .split('/')
            .next()
            .expect("split yields at least one item");
        let mut stream = TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect {authority}: {e}"));
        stream.set_read_timeout(Some(QUERY_TIMEOUT)).expect("set timeout");
        let head = format!(
            "POST / HTTP/1.0\r\nHost: {authority}\r\nContent-Type: text/plain; charset=UTF-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            sql.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(sql.as_bytes()))
            .unwrap_or_else(|e| panic!("send query to {authority}: {e}"));
        // HTTP/1.0 + Connection: close: the body runs until the server closes.
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .unwrap_or_else(|e| panic!("read response from {authority}: {e}"));

        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "malformed HTTP response: {:?}",
                    String::from_utf8_lossy(&response)
                )
            });
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let body = String::from_utf8_lossy(&response[split + 4..]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            panic!(
                "ClickHouse query failed (HTTP {status}): {}\nquery: {sql}",
                body.trim_end()
            );
        }
        // A streamed response that failed midway ends with a tagged exception
        // block (ClickHouse >= 25.11 format).
        let tag = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("X-ClickHouse-Exception-Tag")
                .then(|| value.trim().to_owned())
        });
        if let Some(tag) = tag
            && body.ends_with(&format!("{tag}\r\n__exception__\r\n"))
        {
            panic!(
                "ClickHouse query failed mid-stream: {}\nquery: {sql}",
                body.trim_end()
            );
        }
        body
    }
}

/// Calls `f` for every line of `r` until EOF, tolerating non-UTF-8 output, so
/// the pipe is always drained and the child never blocks on a full pipe.
fn for_each_line(r: impl Read, mut f: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => f(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n'])),
        }
    }
}

impl Drop for ClickHouseFront {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `data_dir` (a TempDir) is removed after this, once the child is gone.
    }
}
