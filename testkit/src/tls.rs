//! TLS fixtures: certificates made by the test, and a PostgreSQL that speaks
//! TLS only.
//!
//! [`TestCerts::generate`] makes, in-process (rcgen), a test CA, a server
//! certificate it signs for `127.0.0.1` and `localhost`, and a second,
//! unrelated CA: a client that trusts only the second one must refuse the
//! server (the wrong-certificate case). Everything is written as PEM files in
//! a temp dir removed on drop.
//!
//! [`TlsPostgres::start`] runs a private PostgreSQL (initdb + postgres from
//! `/usr/lib/postgresql/*/bin`) on a free loopback port with `ssl = on` and a
//! `pg_hba.conf` of one `hostssl` line: a plaintext connection is refused by
//! the server itself. The system PostgreSQL is not touched.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// How long PostgreSQL may take from `postgres` to accepting connections.
const PG_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the postmaster is killed.
const PG_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Runs the server (`"$@"`) and stops it (SIGINT: a fast shutdown) when the
/// other end of the guard's stdin closes: on drop, and also when the test
/// process dies without unwinding (killed by a timeout), so no server
/// outlives its test. The guard exits with the server.
const GUARD: &str =
    r#"exec 3<&0; "$@" </dev/null & pid=$!; (read -r _ <&3; kill -INT "$pid" 2>/dev/null) & wait "$pid""#;

/// A test CA, a server certificate it signed for `127.0.0.1` and
/// `localhost`, and an unrelated CA, as PEM files in a temp dir.
pub struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    /// Generates fresh keys and certificates (ECDSA P-256, valid from now
    /// for rcgen's default period).
    ///
    /// # Panics
    /// If generation or writing the files fails.
    pub fn generate() -> TestCerts {
        let dir = tempfile::Builder::new()
            .prefix("offload-certs-")
            .tempdir()
            .expect("create a temp dir for test certificates");
        let ca = make_ca("offload test CA");
        let wrong = make_ca("offload unrelated CA");

        let key = KeyPair::generate().expect("generate the server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server certificate names");
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = params.signed_by(&key, &ca).expect("sign the server certificate");

        let write = |name: &str, pem: String| {
            fs::write(dir.path().join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"));
        };
        write("ca.pem", ca.pem());
        write("wrong-ca.pem", wrong.pem());
        write("server.pem", server.pem());
        write("server.key", key.serialize_pem());
        TestCerts { dir }
    }

    /// The CA that signed the server certificate: trust this one.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA unrelated to the server certificate: trusting only this one must fail.
    pub fn wrong_ca(&self) -> PathBuf {
        self.dir.path().join("wrong-ca.pem")
    }

    /// The server certificate (for `127.0.0.1` and `localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's private key (PKCS#8 PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate a CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign the CA")
}

/// A private PostgreSQL that accepts TLS connections only, on a free
/// loopback port, in its own temp dir; stopped and removed on drop.
///
/// Role `postgres` (superuser, `trust` over TLS), database `postgres`.
pub struct TlsPostgres {
    port: u16,
    server: Option<Guarded>,
    dir: TempDir,
}

/// The guard shell running the postmaster, and our end of its stdin.
struct Guarded {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl TlsPostgres {
    /// Starts a server presenting `certs`' server certificate.
    ///
    /// Run as root, the server runs as the `postgres` OS user (PostgreSQL
    /// refuses root); its directory and key file are handed to that user.
    ///
    /// # Panics
    /// If the PostgreSQL binaries are missing (with the setup command to
    /// run), initdb fails, or the server does not accept connections within
    /// 60 s (with its log).
    pub fn start(certs: &TestCerts) -> TlsPostgres {
        let bin = pg_bin_dir();
        let owner = server_owner();
        let dir = tempfile::Builder::new()
            .prefix("offload-pg-tls-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL");
        let data = dir.path().join("data");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        fs::copy(certs.server_cert(), &cert).expect("copy the server certificate");
        fs::copy(certs.server_key(), &key).expect("copy the server key");
        // PostgreSQL refuses a key file others can read.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod the server key");
        if let Some((uid, gid)) = owner {
            for path in [dir.path(), &cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
            }
        }

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
                "-D",
            ])
            .arg(&data);
        as_owner(&mut initdb, owner);
        let out = initdb
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.join("initdb").display()));
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // TLS only: no `local` line (no socket either) and no plain `host`
        // line, so the server itself refuses a connection without TLS.
        fs::write(
            data.join("pg_hba.conf"),
            "# offload-testkit: TLS connections only\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");

        // A free port can be taken between our probe and the server's bind;
        // a few attempts make that race harmless.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("postgres-{port}.log"));
            let log_file = fs::File::create(&log).expect("create the PostgreSQL log");
            if let Some((uid, gid)) = owner {
                let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
            }
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", GUARD, "offload-pg-guard"])
                .arg(bin.join("postgres"))
                .arg("-D")
                .arg(&data);
            for setting in [
                format!("port={port}"),
                "listen_addresses=127.0.0.1".to_owned(),
                "unix_socket_directories=".to_owned(),
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
                "fsync=off".to_owned(),
                "max_connections=50".to_owned(),
            ] {
                cmd.arg("-c").arg(setting);
            }
            cmd.stdin(Stdio::piped())
                .stdout(log_file.try_clone().expect("dup the log file"))
                .stderr(log_file);
            as_owner(&mut cmd, owner);
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn postgres: {e}"));
            let stdin = child.stdin.take();
            let mut server = Guarded { child, stdin };
            match wait_ready(&bin, port, &mut server.child) {
                Ok(()) => {
                    return TlsPostgres {
                        port,
                        server: Some(server),
                        dir,
                    };
                }
                Err(why) => {
                    server.stop(&data);
                    last_log = format!("{why}\n{}", read_lossy(&log));
                    if !last_log.contains("could not bind") && !last_log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("the TLS PostgreSQL did not start:\n{last_log}");
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `postgres` as role `postgres`, verifying the server
    /// against `ca` (`sslmode=verify-full&sslrootcert=<ca>`).
    pub fn url(&self, ca: &Path) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    /// A URL with the given `sslmode` and no root certificate, e.g. `disable`
    /// for the plaintext case.
    pub fn url_with_sslmode(&self, sslmode: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }

    /// The server's log so far (connection refusals, TLS handshake errors).
    pub fn log(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    all.push_str(&read_lossy(&path));
                }
            }
        }
        all
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(&self.dir.path().join("data"));
        }
        // `dir` is removed after this, once the server is gone.
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and
/// `postgres`, or `$OFFLOAD_PG_BIN`.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OFFLOAD_PG_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: the TLS PostgreSQL fixture \
             needs them. Install with `bash scripts/setup.sh` (Debian package `postgresql`), or set \
             OFFLOAD_PG_BIN to a directory holding initdb and postgres."
        )
    })
}

/// `Some((uid, gid))` of the `postgres` OS user when we are root (PostgreSQL
/// refuses to run as root); `None` otherwise (run as ourselves).
fn server_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .unwrap_or_else(|| {
            panic!(
                "running as root, the TLS PostgreSQL fixture runs the server as the `postgres` OS \
                 user, and there is none: install Debian's `postgresql` (bash scripts/setup.sh)"
            )
        });
    let uid = entry[2].parse().expect("numeric uid of postgres");
    let gid = entry[3].parse().expect("numeric gid of postgres");
    Some((uid, gid))
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
        // initdb and postgres read $HOME-free config only, but a root HOME
        // they cannot enter makes some tools complain.
        cmd.env("HOME", "/");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

/// Polls `pg_isready` (a real protocol round trip; an authentication refusal
/// still counts as up) until the server answers, it exits, or time runs out.
fn wait_ready(bin: &Path, port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + PG_START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "postgres exited with {status} before accepting connections"
            ));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "2"])
            .status()
            .map_err(|e| format!("run pg_isready: {e}"))?;
        if ready.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not accepting connections on port {port} after {PG_START_TIMEOUT:?}"
            ));
        }
        // A poll interval, not a synchronisation: readiness is checked again.
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Guarded {
    /// Fast shutdown (the guard sends SIGINT once its stdin closes), bounded;
    /// then SIGKILL to the postmaster (`postmaster.pid` in `data`) and the guard.
    fn stop(&mut self, data: &Path) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PG_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let postmaster = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|pid| pid.lines().next()?.trim().parse::<libc::pid_t>().ok());
        if let Some(pid) = postmaster {
            // SAFETY: kill has no memory preconditions; the pid is the
            // postmaster's own, which is still running (the guard waits on it).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    let _ = fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes));
    String::from_utf8_lossy(&bytes).into_owned()
}
