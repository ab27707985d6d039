//! An Iceberg REST catalog for tests: `testing/rest-catalog/server.py` (the
//! spec's config, namespace and table endpoints over pyiceberg's SqlCatalog in
//! a SQLite file) as a child process on a free loopback port, with its fault
//! injection (`/_test/faults`) and commit statistics (`/_test/stats`).
//!
//! Self-contained (std, tempfile, serde_json, offload-testkit), so any test
//! binary can include it: `#[path = "common/rest.rs"] mod rest_server;`.
//!
//! ```ignore
//! let server = rest_server::start();
//! let sink = IcebergSink::connect(IcebergSinkConfig::new(server.catalog_config())).await?;
//! server.faults(&[Fault::status(500).after()]); // the next commit lands, then answers 500
//! // ...
//! assert_eq!(server.stats().commits.faults_after, 1);
//! ```
#![allow(dead_code)] // each test binary uses a different subset

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

/// How long the server may take to import pyiceberg and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one admin / raw request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a fresh server: its own SQLite catalog file and warehouse directory
/// (in a temp dir removed on drop), catalog name `offload`, no path prefix.
pub fn start() -> RestServer {
    RestServer::start_with(&RestOptions::default())
}

/// Options for [`RestServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct RestOptions {
    /// Serve under `/v1/<prefix>/` (announced in `/v1/config`'s overrides).
    pub prefix: Option<String>,
    /// The SQL catalog's `catalog_name` (default `offload`).
    pub catalog_name: Option<String>,
    /// Log every request to stderr (shown with the test's output).
    pub verbose: bool,
}

/// A running `server.py`. Dropping it kills the process and removes the
/// catalog file and warehouse.
pub struct RestServer {
    port: u16,
    child: Option<Child>,
    /// Held open while we live: the server exits on EOF, so it does not
    /// outlive a test process killed without unwinding.
    stdin: Option<ChildStdin>,
    dir: TempDir,
}

impl RestServer {
    /// See [`start`].
    ///
    /// # Panics
    /// If the venv is missing (`bash testing/setup-venv.sh`), or the server
    /// does not print `LISTENING <port>` within 120 s.
    pub fn start_with(opts: &RestOptions) -> RestServer {
        let python = offload_testkit::venv_python();
        let script = offload_testkit::repo_root().join("testing/rest-catalog/server.py");
        let dir = tempfile::Builder::new()
            .prefix("offload-rest-")
            .tempdir()
            .expect("create a temp dir for the REST catalog");
        let warehouse = dir.path().join("warehouse");
        std::fs::create_dir_all(&warehouse).expect("create the warehouse dir");
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--exit-on-stdin-eof",
                "--db",
            ])
            .arg(dir.path().join("catalog.db"))
            .arg("--warehouse")
            .arg(&warehouse);
        if let Some(p) = &opts.prefix {
            cmd.args(["--prefix", p]);
        }
        if let Some(n) = &opts.catalog_name {
            cmd.args(["--catalog-name", n]);
        }
        if opts.verbose {
            cmd.arg("--verbose");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", python.display(), script.display()));

        // The server's output goes through eprintln!, so the harness shows it
        // with a failing test's output.
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || for_each_line(stderr, |l| eprintln!("[rest-catalog] {l}")));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for_each_line(stdout, |line| {
                match (
                    line.strip_prefix("LISTENING ").map(|p| p.trim().parse::<u16>()),
                    tx.take(),
                ) {
                    (Some(Ok(port)), Some(tx)) => {
                        let _ = tx.send(port);
                    }
                    (_, sender) => {
                        tx = sender;
                        eprintln!("[rest-catalog] {line}");
                    }
                }
            });
        });
        let port = match rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => port,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the REST catalog server did not report `LISTENING <port>` ({e}); exit status: \
                     {status:?}. Its stderr is above. Is the venv complete? Rerun `bash testing/setup-venv.sh`."
                );
            }
        };
        RestServer {
            port,
            stdin: child.stdin.take(),
            child: Some(child),
            dir,
        }
    }

    /// The catalog's base URI, `http://127.0.0.1:<port>` (no trailing slash):
    /// what `CatalogConfig::rest` takes.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `CatalogConfig::rest(uri, warehouse)` for this server.
    pub fn catalog_config(&self) -> offload_sink_iceberg::CatalogConfig {
        offload_sink_iceberg::CatalogConfig::rest(
            self.uri(),
            self.warehouse().to_str().expect("a UTF-8 temp path"),
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Where new tables are created (`<warehouse>/<namespace>/<table>`).
    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    /// The SQLite file behind the catalog (tables `iceberg_tables` and
    /// `iceberg_namespace_properties`, catalog name `offload` by default):
    /// open it with pyiceberg's SqlCatalog or iceberg-catalog-sql to see what
    /// the server really holds.
    pub fn catalog_db(&self) -> PathBuf {
        self.dir.path().join("catalog.db")
    }

    /// A scratch directory next to the catalog, removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Queues faults (`POST /_test/faults`); each applies to the next matching
    /// request(s), in queue order.
    pub fn faults(&self, faults: &[Fault]) {
        let body = json!({ "faults": faults.iter().map(Fault::to_json).collect::<Vec<_>>() });
        let (status, reply) = self.request("POST", "/_test/faults", Some(&body));
        assert_eq!(status, 200, "POST /_test/faults: {reply:?}");
    }

    /// The faults not yet consumed.
    pub fn pending_faults(&self) -> Vec<Value> {
        let (status, reply) = self.request("GET", "/_test/faults", None);
        assert_eq!(status, 200, "GET /_test/faults: {reply:?}");
        reply
            .and_then(|r| r["pending"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        let (status, reply) = self.request("DELETE", "/_test/faults", None);
        assert_eq!(status, 204, "DELETE /_test/faults: {reply:?}");
    }

    /// `GET /_test/stats`.
    pub fn stats(&self) -> RestStats {
        let (status, reply) = self.request("GET", "/_test/stats", None);
        assert_eq!(status, 200, "GET /_test/stats: {reply:?}");
        RestStats::from_json(reply.expect("a stats body"))
    }

    /// Zeroes the statistics (faults stay queued).
    pub fn reset_stats(&self) {
        let (status, reply) = self.request("DELETE", "/_test/stats", None);
        assert_eq!(status, 204, "DELETE /_test/stats: {reply:?}");
    }

    /// One raw request (`path` from the root, e.g.
    /// `/v1/namespaces/ns/tables/t`), for tests that speak the REST protocol
    /// themselves (a hand-written `{identifier, requirements, updates}`
    /// commit). Returns the status and the JSON body, if any. A connection the
    /// server drops (a `"drop"` fault) panics.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Option<Value>) {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on the REST catalog: {e}"))
    }

    /// [`request`](Self::request) returning transport errors (e.g. a dropped
    /// connection) instead of panicking.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Option<Value>)> {
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.port,
            payload.len()
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("no HTTP response: {:?}", String::from_utf8_lossy(&response)),
                )
            })?;
        let head = String::from_utf8_lossy(&response[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("malformed status line: {head}")))?;
        let body = &response[split + 4..];
        let json = if body.is_empty() || method == "HEAD" {
            None
        } else {
            Some(serde_json::from_slice(body).map_err(|e| {
                std::io::Error::other(format!("non-JSON body ({e}): {}", String::from_utf8_lossy(body)))
            })?)
        };
        Ok((status, json))
    }

    /// `/v1/namespaces/<ns>/tables/<table>` (namespace levels joined with
    /// `%1F`, the spec's separator): the endpoint a commit is POSTed to.
    pub fn table_path(namespace: &[&str], table: &str) -> String {
        format!("/v1/namespaces/{}/tables/{table}", namespace.join("%1F"))
    }
}

impl fmt::Debug for RestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestServer")
            .field("uri", &self.uri())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `dir` (a TempDir) goes after this, once the process is gone.
    }
}

/// What a faulted request answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStatus {
    /// An HTTP status: 409 (CommitFailedException), 500
    /// (CommitStateUnknownException), 502, 503, 504.
    Http(u16),
    /// The connection is closed (reset) without a response.
    Drop,
    /// Not an answer: the commit is validated and its metadata file written,
    /// then another writer (a second SqlCatalog on the same database, outside
    /// the server's lock) commits a property change, so the compare-and-swap
    /// misses and the server answers a genuine 409 (counted as a conflict).
    LoseSwap,
}

/// One queued fault: the next `count` requests of `op` (default the commit,
/// `updateTable`) on `table` (default any) answer `status`, either before
/// anything is applied or after the commit has landed (the client cannot know
/// it did). A 409 is always `before` (the spec: not applied). An `after` fault
/// whose commit is refused on its own merits (a failed requirement) stays
/// queued.
#[derive(Debug, Clone)]
pub struct Fault {
    pub op: String,
    pub status: FaultStatus,
    pub after: bool,
    pub count: u32,
    /// `"ns.table"` (namespace levels joined with '.').
    pub table: Option<String>,
}

impl Fault {
    /// The next commit answers `status` before applying.
    pub fn status(status: u16) -> Fault {
        Fault {
            op: "updateTable".into(),
            status: FaultStatus::Http(status),
            after: false,
            count: 1,
            table: None,
        }
    }

    /// The next commit answers 409 CommitFailedException (not applied).
    pub fn conflict() -> Fault {
        Fault::status(409)
    }

    /// The next commit's connection is dropped before applying.
    pub fn drop_connection() -> Fault {
        Fault {
            status: FaultStatus::Drop,
            ..Fault::status(500)
        }
    }

    /// The next commit loses its compare-and-swap to another writer
    /// ([`FaultStatus::LoseSwap`]).
    pub fn lose_swap() -> Fault {
        Fault {
            status: FaultStatus::LoseSwap,
            ..Fault::status(409)
        }
    }

    /// Apply the commit first, then fail.
    pub fn after(mut self) -> Fault {
        self.after = true;
        self
    }

    /// Fail before applying (the default).
    pub fn before(mut self) -> Fault {
        self.after = false;
        self
    }

    /// The next `n` matching requests.
    pub fn times(mut self, n: u32) -> Fault {
        self.count = n;
        self
    }

    /// Only requests on this table (`"ns.table"`).
    pub fn on_table(mut self, table: impl Into<String>) -> Fault {
        self.table = Some(table.into());
        self
    }

    /// Another operation (the spec's operation ids: `loadTable`,
    /// `createTable`, `tableExists`, `createNamespace`, ...; `*` = any).
    pub fn on_op(mut self, op: impl Into<String>) -> Fault {
        self.op = op.into();
        self
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "op": self.op,
            "status": match self.status {
                FaultStatus::Http(s) => json!(s),
                FaultStatus::Drop => json!("drop"),
                FaultStatus::LoseSwap => json!("lose-swap"),
            },
            "when": if self.after { "after" } else { "before" },
            "count": self.count,
        });
        if let Some(t) = &self.table {
            v["table"] = json!(t);
        }
        v
    }
}

/// Commit counters of `/_test/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commit requests seen (parsed or not).
    pub received: u64,
    /// Commits that changed the table (a fault `after` included).
    pub applied: u64,
    /// 409s on their own merits: a failed requirement or a lost swap.
    pub conflicts: u64,
    /// Other refusals (400, 404, backend errors).
    pub failed: u64,
    /// Faults answered before applying.
    pub faults_before: u64,
    /// Faults answered after applying.
    pub faults_after: u64,
}

/// One commit as the server saw it.
#[derive(Debug, Clone)]
pub struct CommitLogEntry {
    /// `"ns.table"`.
    pub table: String,
    /// Requirement types, e.g. `assert-ref-snapshot-id`.
    pub requirements: Vec<String>,
    /// Update actions, e.g. `add-snapshot`.
    pub updates: Vec<String>,
    pub applied: bool,
    /// The answer: an HTTP status, or `None` for a dropped connection.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The new metadata file, when applied.
    pub metadata_location: Option<String>,
    /// The fault that answered, if any.
    pub fault: Option<Value>,
}

/// `/_test/stats`, typed; `raw` keeps the whole answer.
#[derive(Debug, Clone)]
pub struct RestStats {
    pub commits: CommitStats,
    /// Requests per operation id (`loadTable`, `updateTable`, ...).
    pub requests: std::collections::BTreeMap<String, u64>,
    pub faults_injected: u64,
    pub commit_log: Vec<CommitLogEntry>,
    pub raw: Value,
}

impl RestStats {
    fn from_json(raw: Value) -> RestStats {
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("a counter, got {v}"));
        let c = &raw["commits"];
        let commits = CommitStats {
            received: n(&c["received"]),
            applied: n(&c["applied"]),
            conflicts: n(&c["conflicts"]),
            failed: n(&c["failed"]),
            faults_before: n(&c["faults_before"]),
            faults_after: n(&c["faults_after"]),
        };
        let requests = raw["requests"]
            .as_object()
            .expect("requests")
            .iter()
            .map(|(k, v)| (k.clone(), n(v)))
            .collect();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let commit_log = raw["commit_log"]
            .as_array()
            .expect("commit_log")
            .iter()
            .map(|e| CommitLogEntry {
                table: e["table"].as_str().unwrap_or_default().to_owned(),
                requirements: strings(&e["requirements"]),
                updates: strings(&e["updates"]),
                applied: e["applied"].as_bool().unwrap_or(false),
                status: e["status"].as_u64().map(|s| s as u16),
                error: e["error"].as_str().map(str::to_owned),
                metadata_location: e["metadata_location"].as_str().map(str::to_owned),
                fault: e.get("fault").cloned(),
            })
            .collect();
        RestStats {
            commits,
            requests,
            faults_injected: n(&raw["faults"]["injected"]),
            commit_log,
            raw,
        }
    }

    /// Requests seen for one operation id.
    pub fn requests_of(&self, op: &str) -> u64 {
        self.requests.get(op).copied().unwrap_or(0)
    }
}

/// Calls `f` for every line of `r` until EOF (the pipe is always drained).
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
