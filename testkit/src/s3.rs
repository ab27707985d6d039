//! A real S3-compatible server for tests: `s3s-fs` (crates.io), which serves
//! a directory over the S3 protocol, SigV4 signatures checked against one
//! access key. `scripts/setup.sh` installs it into
//! `~/.cache/offload/tools/bin`; without it [`S3Server::start`] panics with
//! the command to run (tests fail loudly, they never skip).
//!
//! Each server gets its own data directory and a random key pair, so a
//! client with wrong or missing credentials is refused, as by a real store.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use crate::for_each_line;

/// How long s3s-fs may take to bind and report its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The region clients sign with; s3s-fs accepts any.
pub const S3_REGION: &str = "us-east-1";
/// What s3s-fs logs once it listens (with `RUST_LOG=info`).
const READY: &str = "server is running at http://";

/// The s3s-fs binary: `$OFFLOAD_S3S_FS`, else `~/.cache/offload/tools/bin/s3s-fs`.
///
/// # Panics
/// If it does not exist, with the command that installs it.
pub fn s3s_fs_binary() -> PathBuf {
    let bin = std::env::var_os("OFFLOAD_S3S_FS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/offload/tools/bin/s3s-fs")
        });
    assert!(
        bin.is_file(),
        "{} not found: the S3 tests need the s3s-fs server. Install it with `bash scripts/setup.sh` \
         (or `cargo install --locked --root ~/.cache/offload/tools s3s-fs@0.14.1 --features binary`; \
         set OFFLOAD_S3S_FS to use another binary).",
        bin.display()
    );
    bin
}

/// A running s3s-fs on a free loopback port, serving a fresh temp directory
/// (one sub-directory per bucket). Killed, and its data removed, on drop,
/// and also when the thread that started it ends (`PR_SET_PDEATHSIG`): start
/// it on the thread that owns it (a test's own), not on a short-lived one.
pub struct S3Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    child: Child,
    root: TempDir,
}

impl S3Server {
    /// Starts a fresh server with a random access key and secret.
    ///
    /// # Panics
    /// If the binary is missing, fails to start, or does not report its
    /// address within 30 s.
    pub fn start() -> S3Server {
        let bin = s3s_fs_binary();
        let root = tempfile::Builder::new()
            .prefix("offload-s3-")
            .tempdir()
            .expect("create a temp dir for s3s-fs");
        let access_key = format!("AK{}", random_hex(8).to_uppercase());
        let secret_key = random_hex(20);
        let mut cmd = Command::new(&bin);
        // SAFETY: prctl(2) only, between fork and exec: async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Killed with the thread that started it (the test's), so a
                // test process that dies without unwinding (SIGKILL, a
                // timeout) leaves no server behind; Drop covers the rest.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .args(["--host", "127.0.0.1", "--port", "0", "--access-key"])
            .arg(&access_key)
            .arg("--secret-key")
            .arg(&secret_key)
            .arg(root.path())
            // Its only "listening" signal is this log line.
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || for_each_line(stderr, |line| eprintln!("[s3s-fs] {line}")));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for_each_line(stdout, |line| {
                if let Some(at) = line.find(READY) {
                    let addr = line[at + READY.len()..].trim().to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            });
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "s3s-fs did not report its address ({e}); exit status: {status:?}. \
                     Its stderr is above."
                );
            }
        };
        S3Server {
            endpoint: format!("http://{addr}"),
            access_key,
            secret_key,
            child,
            root,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (path-style addressing only).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The access key id the server accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret access key the server accepts.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The region to sign with.
    pub fn region(&self) -> &str {
        S3_REGION
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates `bucket`. s3s-fs keeps a bucket as a directory of its root, so
    /// this is that directory (no signing code needed in the fixture); the
    /// server sees it at once.
    ///
    /// # Panics
    /// If the name is not a plain bucket name or the directory cannot be made.
    pub fn create_bucket(&self, bucket: &str) {
        assert!(
            !bucket.is_empty()
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "not a bucket name: {bucket:?}"
        );
        std::fs::create_dir(self.root.path().join(bucket))
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    }

    /// Where the server keeps object `key` of `bucket` on disk: tests use it
    /// to age an object (its mtime is the `LastModified` the server reports)
    /// or to see what really exists, independently of any S3 client.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key.trim_start_matches('/'))
    }

    /// Every object key in `bucket` under `prefix`, sorted, read from the
    /// server's directory.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&base) {
                    let key = rel.to_string_lossy().into_owned();
                    // s3s-fs keeps its own bookkeeping in hidden `.` files.
                    let internal = rel
                        .components()
                        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
                    if key.starts_with(prefix) && !internal {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `root` (a TempDir) is removed after this, once the server is gone.
    }
}

/// `n` random bytes as hex, from the kernel's generator (no crate needed).
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
