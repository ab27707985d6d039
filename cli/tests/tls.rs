//! The real `offload` program against servers that speak TLS only, with
//! certificates the test makes (`offload_testkit::TestCerts`): the store and
//! the Iceberg SQL catalog on a PostgreSQL that refuses plaintext
//! (`TlsPostgres`), ClickHouse over HTTPS (the chdb front's TLS listener).
//! One `offload run` offloads every row and `offload reconcile` over the same
//! HTTPS finds Iceberg equal to ClickHouse; a run trusting the wrong CA, for
//! PostgreSQL or for ClickHouse, exits non-zero saying which certificate was
//! refused and what to set. No password reaches the output at debug level.
#![cfg(feature = "rustls")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use offload_reconcile::{Report, Verdict};
use offload_testkit::{ClickHouseFront, TestCerts, TlsPostgres, repo_root};

const ROWS: u64 = 20_000;
const PASSWORD_ENV: &str = "OFFLOAD_TEST_PG_PASSWORD";
/// Trust authentication ignores it; it is there to prove it is never printed.
const PASSWORD: &str = "tls-hunter2";

struct Servers {
    certs: TestCerts,
    pg: TlsPostgres,
    front: ClickHouseFront,
    dir: PathBuf,
}

impl Servers {
    fn start() -> Servers {
        let certs = TestCerts::generate();
        let pg = TlsPostgres::start(&certs);
        let front = ClickHouseFront::start_tls(&certs);
        front.query("CREATE DATABASE tls");
        front.query(
            "CREATE TABLE tls.trades (ts DateTime64(3, 'UTC'), seq UInt64, symbol LowCardinality(String),
                price Decimal(18, 8)) ENGINE = MergeTree ORDER BY (ts, seq)",
        );
        // Ten minutes of rows, four per millisecond, the newest a minute old.
        front.query(&format!(
            "INSERT INTO tls.trades SELECT
                now64(3, 'UTC') - toIntervalMillisecond(60000 + intDiv({ROWS} - 1 - number, 4) * 120),
                number, ['BTC', 'ETH', 'SOL'][number % 3 + 1], toDecimal64(100 + number / 1000, 8)
             FROM numbers({ROWS})"
        ));
        let runs = repo_root().join(".run");
        std::fs::create_dir_all(&runs).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("tls-")
            .tempdir_in(runs)
            .unwrap()
            .keep();
        Servers {
            certs,
            pg,
            front,
            dir,
        }
    }

    /// A config file: PostgreSQL verified against `pg_ca`, ClickHouse against `ch_ca`.
    fn config(&self, file: &str, pg_ca: &Path, ch_ca: &Path) -> PathBuf {
        let pg_url = self.pg.url(pg_ca);
        let text = format!(
            "[engine]\nlease_ttl = \"5m\"\n\
             [clickhouse]\nurl = \"{ch}\"\ndatabase = \"tls\"\ntls_ca_file = \"{ch_ca}\"\n\
             [iceberg]\nwarehouse = \"{dir}/warehouse\"\n\
             [iceberg.catalog]\nkind = \"postgres\"\nurl = \"{pg_url}\"\npassword_env = \"{PASSWORD_ENV}\"\nname = \"tls\"\n\
             [store]\nkind = \"postgres\"\nurl = \"{pg_url}\"\npassword_env = \"{PASSWORD_ENV}\"\nschema = \"offload_tls\"\n\
             [[tables]]\nname = \"trades\"\nsink_table = \"lake.trades\"\ntimestamp_column = \"ts\"\n\
             sequence_column = \"seq\"\nlag = \"0s\"\nmax_window = \"0s\"\nbatch_size = 4096\n",
            ch = self.front.https_url().expect("a TLS front"),
            ch_ca = ch_ca.display(),
            dir = self.dir.display(),
        );
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn offload(&self, config: &Path, args: &[&str]) -> Ran {
        let out = Command::new(env!("CARGO_BIN_EXE_offload"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env(PASSWORD_ENV, PASSWORD)
            .env("RUST_LOG", "debug")
            .env_remove("OFFLOAD_FAILPOINTS")
            .output()
            .unwrap();
        let ran = Ran::from(out);
        assert!(
            !ran.stdout.contains(PASSWORD) && !ran.stderr.contains(PASSWORD),
            "the password reached the output: {}",
            ran.describe()
        );
        ran
    }
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

#[test]
fn a_run_over_tls_offloads_every_row_and_reconciles_exactly() {
    let s = Servers::start();
    let cfg = s.config("offload.toml", &s.certs.ca(), &s.certs.ca());

    let run = s.offload(&cfg, &["run", "--once"]);
    assert_eq!(run.code, Some(0), "offload run over TLS: {}", run.describe());
    eprintln!("{}", run.stdout);

    // The same servers, the same TLS: ClickHouse and Iceberg agree in every
    // bucket, and Iceberg holds every row once.
    let reconcile = s.offload(
        &cfg,
        &[
            "reconcile",
            "--from",
            "now-1h",
            "--to",
            "now",
            "--bucket",
            "minute",
            "--json",
        ],
    );
    assert_eq!(
        reconcile.code,
        Some(0),
        "offload reconcile over TLS: {}",
        reconcile.describe()
    );
    let report: Report = serde_json::from_str(&reconcile.stdout)
        .unwrap_or_else(|e| panic!("--json prints a Report ({e}): {}", reconcile.describe()));
    assert_eq!(report.verdict, Verdict::Ok, "{}", reconcile.describe());
    let totals = &report.tables[0].totals;
    assert_eq!(totals.clickhouse, Some(ROWS), "{}", reconcile.describe());
    assert_eq!(totals.iceberg, Some(ROWS), "{}", reconcile.describe());
}

#[test]
fn a_run_trusting_the_wrong_ca_fails_saying_which_certificate_and_what_to_set() {
    let s = Servers::start();

    // PostgreSQL (store and catalog) verified against an unrelated CA.
    let cfg = s.config("wrong-pg.toml", &s.certs.wrong_ca(), &s.certs.ca());
    let run = s.offload(&cfg, &["run", "--once"]);
    assert_ne!(
        run.code,
        Some(0),
        "a refused certificate must fail the run: {}",
        run.describe()
    );
    eprintln!("what the operator sees (PostgreSQL):\n{}", run.describe());
    for needle in [
        "certificate verification failed",
        &format!("127.0.0.1:{}", s.pg.port()),
        "UnknownIssuer",
        "sslrootcert",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} missing: {}",
            run.describe()
        );
    }

    // ClickHouse verified against an unrelated CA.
    let cfg = s.config("wrong-ch.toml", &s.certs.ca(), &s.certs.wrong_ca());
    let run = s.offload(&cfg, &["run", "--once"]);
    assert_ne!(
        run.code,
        Some(0),
        "a refused certificate must fail the run: {}",
        run.describe()
    );
    eprintln!("what the operator sees (ClickHouse):\n{}", run.describe());
    let all = format!("{}{}", run.stdout, run.stderr);
    let at = format!("TLS to ClickHouse at {} failed", s.front.https_url().unwrap());
    for needle in [
        &at[..],
        "certificate verification failed",
        "UnknownIssuer",
        "tls_ca_file",
    ] {
        assert!(all.contains(needle), "{needle:?} missing: {}", run.describe());
    }
}
