//! Shared fixture of the reliability suite (`crash.rs`, `hostile.rs`): one real
//! ClickHouse engine (chdb behind the testkit's HTTP front) per test binary, a
//! scenario = one ClickHouse database + one Iceberg catalog + one watermark
//! store, the REAL `offload` binary run as a child process (optionally with a
//! fail point armed), and the judge: exact figures and per-key checks between
//! ClickHouse's source table and the Iceberg table (read back by ClickHouse's
//! `icebergLocal` and by pyiceberg), the window chain in the snapshot log,
//! store == the table's committed watermark, and `offload-reconcile` over the
//! table (per minute bucket: counts, distinct keys, key and content
//! fingerprints, exact sums, ClickHouse against Iceberg).
#![allow(dead_code)] // each test binary uses its own part of the fixture

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use offload_cli::app::App;
use offload_cli::config::Config;
use offload_core::{CommitMetadata, RunId, Sink, Source, Watermark, WatermarkStore, Window};
use offload_reconcile::{
    BucketSize, ClickHouseLayer, Depth, IcebergLayer, Reconciler, Report, TableSpec, TimeRange,
};
use offload_source_clickhouse::ClickHouseSource;
use offload_testkit::{ClickHouseFront, S3Server, repo_root, venv_python};

/// Exact figures, in the order `lake_figures.py` prints them.
pub const FIGURES: &str = "count(), uniqExact(ts, seq), sum(toInt128(toUnixTimestamp64Micro(toDateTime64(ts, 6)))), \
    sum(toInt128(seq)), sum(toInt128(toDecimal128(price, 8) * 100000000)), sum(length(conditions)), \
    sum(length(mapKeys(vendor))), countIf(trade_id IS NULL)";

pub const SIGABRT: i32 = 6;
pub const SIGKILL: i32 = 9;

/// One ClickHouse engine for the whole test binary (starting chdb costs
/// seconds). The front exits when this process's end closes its stdin.
pub fn front() -> &'static ClickHouseFront {
    static FRONT: OnceLock<ClickHouseFront> = OnceLock::new();
    FRONT.get_or_init(ClickHouseFront::start)
}

pub fn pg_url() -> String {
    std::env::var("OFFLOAD_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Where the Iceberg catalog lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Catalog {
    Sqlite,
    Postgres,
}

/// Where the watermarks and leases live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    File,
    Postgres,
}

/// The (store, sink) watermarks of the scenario's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub store: Option<Watermark>,
    pub committed: Option<Watermark>,
}

/// What the judge found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub rows: u64,
    pub windows: usize,
    pub lost: u64,
    pub duplicates: u64,
}

/// How one run of the program ended.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(o: Output) -> Self {
        Run {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// One scenario: a source table `<db>.trades`, an Iceberg table `lake.trades`,
/// a store, and a config file for the program.
pub struct Lake {
    pub name: String,
    pub db: String,
    pub dir: PathBuf,
    pub catalog: Catalog,
    pub store: Store,
    pub catalog_name: String,
    pub pg_schema: String,
    pub lag: String,
    pub lease_ttl: String,
    pub batch_size: usize,
    pub engine_id: Option<String>,
    /// The sweep's horizon: rows arriving older than this are never offloaded.
    pub late_horizon: String,
    /// Sequence ranges `(first, n)` inserted older than the horizon, after
    /// their window: the judge expects exactly these rows missing, and reported.
    pub beyond: std::sync::Mutex<Vec<(u64, u64)>>,
    /// The table's `partition` value (TOML), if not the default (`day`).
    pub partition: Option<String>,
    /// The `[maintenance]` section's keys (TOML lines), if any.
    pub maintenance: String,
    /// The warehouse on S3 instead of under `dir` ([`Lake::on_s3`]).
    pub s3: Option<S3Lake>,
}

/// A scenario's S3 warehouse: `s3://<bucket>/warehouse` on its own server.
pub struct S3Lake {
    pub server: S3Server,
    pub bucket: String,
}

/// The variables `[iceberg.s3]` names for the credentials: the program (and
/// the judge's in-process `App`) read them from the environment only.
pub const S3_KEY_ENV: &str = "OFFLOAD_TEST_S3_ACCESS_KEY";
pub const S3_SECRET_ENV: &str = "OFFLOAD_TEST_S3_SECRET_KEY";

/// How old rows that arrive "hours late" are: inside [`LATE_HORIZON`].
pub const HOURS_LATE_MS: i64 = 2 * 3600 * 1000;
/// The suite's `late_horizon`.
pub const LATE_HORIZON: &str = "3h";
/// How old rows that arrive beyond the horizon are: inside the hour below it
/// that the sweep reports on.
pub const BEYOND_MS: i64 = 4 * 3600 * 1000;

impl Lake {
    pub fn new(name: &str, catalog: Catalog, store: Store) -> Self {
        let runs = repo_root().join(".run");
        std::fs::create_dir_all(&runs).unwrap();
        // Under the repository: chdb's icebergLocal reads below its working directory.
        let dir = tempfile::Builder::new()
            .prefix(&format!("rel-{name}-"))
            .tempdir_in(runs)
            .unwrap()
            .keep();
        let unique = format!("{name}_{}", std::process::id());
        let db = format!("rel_{unique}");
        let f = front();
        f.query(&format!("CREATE DATABASE {db}"));
        f.query(&format!(
            "CREATE TABLE {db}.trades (ts DateTime64(3, 'UTC'), seq UInt64, symbol LowCardinality(String),
                price Decimal(18, 8), conditions Array(String), vendor Map(String, String),
                trade_id Nullable(String)) ENGINE = MergeTree ORDER BY (ts, seq)"
        ));
        Lake {
            name: name.to_owned(),
            db,
            dir,
            catalog,
            store,
            catalog_name: format!("rel_{unique}"),
            pg_schema: format!("offload_rel_{unique}"),
            lag: "2s".into(),
            lease_ttl: "5m".into(),
            batch_size: 500,
            engine_id: Some("crash-suite".into()),
            late_horizon: LATE_HORIZON.into(),
            beyond: std::sync::Mutex::new(Vec::new()),
            partition: None,
            maintenance: String::new(),
            s3: None,
        }
    }

    /// Keeps the warehouse in a bucket of `server` (path-style, credentials
    /// from [`S3_KEY_ENV`] / [`S3_SECRET_ENV`], which the caller must have set
    /// to the server's pair in this process: the judge builds the program's
    /// `App` in-process) and runs every program with `RUST_LOG=debug`.
    pub fn on_s3(mut self, server: S3Server) -> Self {
        let bucket = "lake".to_owned();
        server.create_bucket(&bucket);
        self.s3 = Some(S3Lake { server, bucket });
        self
    }

    /// The `iceberg.warehouse` value.
    pub fn warehouse(&self) -> String {
        match &self.s3 {
            Some(s3) => format!("s3://{}/warehouse", s3.bucket),
            None => format!("{}/warehouse", self.dir.display()),
        }
    }

    /// The `[iceberg.s3]` section (empty for a local warehouse).
    fn s3_section(&self) -> String {
        match &self.s3 {
            Some(s3) => format!(
                "[iceberg.s3]\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\n\
                 access_key_id_env = \"{S3_KEY_ENV}\"\nsecret_access_key_env = \"{S3_SECRET_ENV}\"\n",
                s3.server.endpoint(),
                s3.server.region()
            ),
            None => String::new(),
        }
    }

    fn catalog_section(&self) -> String {
        match self.catalog {
            Catalog::Sqlite => format!(
                "kind = \"sqlite\"\npath = \"{}/catalog.db\"\nname = \"{}\"",
                self.dir.display(),
                self.catalog_name
            ),
            Catalog::Postgres => format!(
                "kind = \"postgres\"\nurl = \"{}\"\nname = \"{}\"",
                pg_url(),
                self.catalog_name
            ),
        }
    }

    /// The program's configuration as TOML text.
    pub fn config_text(&self, lag: &str, engine_id: Option<&str>) -> String {
        let store = match self.store {
            Store::File => format!("kind = \"file\"\npath = \"{}/watermarks\"", self.dir.display()),
            Store::Postgres => format!(
                "kind = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"",
                pg_url(),
                self.pg_schema
            ),
        };
        let engine = engine_id.map(|id| format!("id = \"{id}\"\n")).unwrap_or_default();
        let partition = self
            .partition
            .as_ref()
            .map(|p| format!("partition = {p}\n"))
            .unwrap_or_default();
        let maintenance = if self.maintenance.is_empty() {
            String::new()
        } else {
            format!("[maintenance]\n{}\n", self.maintenance.trim_end())
        };
        let text = format!(
            "[engine]\n{engine}lease_ttl = \"{}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n\
             [iceberg]\nwarehouse = \"{}\"\n[iceberg.catalog]\n{}\n{}[store]\n{store}\n\
             [[tables]]\nname = \"trades\"\nsink_table = \"lake.trades\"\ntimestamp_column = \"ts\"\n\
             sequence_column = \"seq\"\nlag = \"{lag}\"\nbatch_size = {}\nlate_horizon = \"{}\"\n\
             sweep_bucket = \"10m\"\n",
            self.lease_ttl,
            front().url(),
            self.db,
            self.warehouse(),
            self.catalog_section(),
            self.s3_section(),
            self.batch_size,
            self.late_horizon,
        );
        text + &partition + &maintenance
    }

    /// Writes a config file (the scenario's engine id unless `engine_id` says otherwise).
    pub fn write_config(&self, file: &str, lag: &str, engine_id: Option<&str>) -> PathBuf {
        let path = self.dir.join(file);
        let id = engine_id.or(self.engine_id.as_deref());
        std::fs::write(&path, self.config_text(lag, id)).unwrap();
        path
    }

    pub fn config(&self) -> PathBuf {
        self.write_config("offload.toml", &self.lag.clone(), None)
    }

    /// `n` rows, `per_ts` sharing each millisecond, the newest `newest_ms_ago` old.
    pub fn insert(&self, first_seq: u64, n: u64, per_ts: u64, newest_ms_ago: i64) {
        front().query(&format!(
            "INSERT INTO {}.trades SELECT now64(3, 'UTC') - toIntervalMillisecond({newest_ms_ago} + intDiv({n} - 1 - number, {per_ts})),
                {first_seq} + number, ['BTC', 'ETH', 'SOL'][number % 3 + 1], toDecimal64(100 + number / 1000, 8),
                if(number % 4 = 0, ['late', 'odd'], []), map('venue', 'x', 'n', toString(number % 7)),
                if(number % 5 = 0, NULL, toString(number)) FROM numbers({n})",
            self.db
        ));
    }

    /// `n` rows arriving now, `ms_ago` old: below the committed watermark when
    /// that is newer (rows that arrive late).
    pub fn insert_late(&self, first_seq: u64, n: u64, ms_ago: i64) {
        self.insert(first_seq, n, 5, ms_ago);
    }

    /// `n` rows arriving [`BEYOND_MS`] old, older than the horizon: never
    /// offloaded, and the judge expects exactly them missing.
    pub fn insert_beyond(&self, first_seq: u64, n: u64) {
        self.insert(first_seq, n, 5, BEYOND_MS);
        self.beyond.lock().unwrap().push((first_seq, n));
    }

    /// SQL: whether `seq` is one of the rows inserted beyond the horizon.
    pub fn beyond_sql(&self) -> String {
        let b = self.beyond.lock().unwrap();
        if b.is_empty() {
            return "0".into();
        }
        b.iter()
            .map(|(f, n)| format!("(seq BETWEEN {f} AND {})", f + n - 1))
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// Rows inserted beyond the horizon.
    pub fn beyond_rows(&self) -> u64 {
        self.beyond.lock().unwrap().iter().map(|b| b.1).sum()
    }

    /// `offload <subcommand> --config <config> <args>`, fail points armed by `failpoints`.
    pub fn command(
        &self,
        config: &Path,
        failpoints: Option<&str>,
        subcommand: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_offload"));
        cmd.arg(subcommand).arg("--config").arg(config).args(args);
        cmd.env_remove("OFFLOAD_FAILPOINTS");
        if let Some(s3) = &self.s3 {
            // Debug logging everywhere, so a test can tell no secret is logged.
            cmd.env(S3_KEY_ENV, s3.server.access_key())
                .env(S3_SECRET_ENV, s3.server.secret_key())
                .env("RUST_LOG", "debug");
        }
        if let Some(fp) = failpoints {
            cmd.env("OFFLOAD_FAILPOINTS", fp);
        }
        cmd
    }

    /// Runs `offload run --once` to its end.
    pub fn run(&self, failpoints: Option<&str>) -> Run {
        let cfg = self.config();
        Run::from_output(
            self.command(&cfg, failpoints, "run", &["--once"])
                .output()
                .unwrap(),
        )
    }

    /// Runs `offload run --once` with another config file.
    pub fn run_with_config(&self, config: &Path) -> Run {
        Run::from_output(self.command(config, None, "run", &["--once"]).output().unwrap())
    }

    /// Runs `offload run --once` and requires success.
    pub fn run_ok(&self) -> Run {
        let r = self.run(None);
        assert!(
            r.status.success(),
            "[{}] offload run --once failed: {}",
            self.name,
            r.describe()
        );
        assert!(
            !r.stdout.contains("skipped"),
            "[{}] run skipped: {}",
            self.name,
            r.describe()
        );
        r
    }

    /// Runs `offload run --once` with `failpoint` armed and requires it to abort there.
    pub fn crash_at(&self, failpoint: &str) -> Run {
        let r = self.run(Some(failpoint));
        assert_eq!(
            r.signal(),
            Some(SIGABRT),
            "[{}] fault point {failpoint} did not abort the program (is offload-cli's `failpoints` \
             feature compiled into the test build of `offload`?): {}",
            self.name,
            r.describe()
        );
        let point = failpoint.split('=').next().unwrap();
        assert!(
            r.stderr.contains(&format!("fault point {point} reached")),
            "{}",
            r.describe()
        );
        r
    }

    /// Spawns `offload run --once` with its output in `<dir>/<log>`.
    pub fn spawn(&self, config: &Path, failpoints: Option<&str>, log: &str) -> Child {
        self.spawn_command(config, failpoints, "run", &["--once"], log)
    }

    /// Spawns `offload <subcommand> <args>` with its output in `<dir>/<log>`.
    pub fn spawn_command(
        &self,
        config: &Path,
        failpoints: Option<&str>,
        subcommand: &str,
        args: &[&str],
        log: &str,
    ) -> Child {
        let out = File::create(self.dir.join(log)).unwrap();
        self.command(config, failpoints, subcommand, args)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap()
    }

    /// Spawns `offload <subcommand> <args>`, its stdout in `<dir>/<log>` and
    /// its stderr in `<dir>/<log>.stderr` ([`Lake::collect`] reads both).
    pub fn spawn_split(&self, failpoints: Option<&str>, subcommand: &str, args: &[&str], log: &str) -> Child {
        let cfg = self.config();
        self.command(&cfg, failpoints, subcommand, args)
            .stdout(Stdio::from(File::create(self.dir.join(log)).unwrap()))
            .stderr(Stdio::from(
                File::create(self.dir.join(format!("{log}.stderr"))).unwrap(),
            ))
            .spawn()
            .unwrap()
    }

    /// Waits for a child of [`Lake::spawn_split`] and reads its output.
    pub fn collect(&self, mut child: Child, log: &str) -> Run {
        let status = child.wait().unwrap();
        let read = |f: String| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        Run {
            status,
            stdout: read(log.to_owned()),
            stderr: read(format!("{log}.stderr")),
        }
    }

    /// `offload maintain --json <args>` to its end, with `failpoints` armed.
    pub fn maintain(&self, failpoints: Option<&str>, args: &[&str]) -> Run {
        let cfg = self.config();
        let args = [&["--json"], args].concat();
        Run::from_output(
            self.command(&cfg, failpoints, "maintain", &args)
                .output()
                .unwrap(),
        )
    }

    /// `offload maintain --json <args>`; it must succeed. Its report.
    pub fn maintain_ok(&self, args: &[&str]) -> Maintained {
        let r = self.maintain(None, args);
        assert!(
            r.status.success(),
            "[{}] offload maintain failed: {}",
            self.name,
            r.describe()
        );
        Maintained::parse(&r)
    }

    /// `offload maintain` with `failpoint` armed; it must abort there.
    pub fn maintain_crash_at(&self, failpoint: &str) -> Run {
        let r = self.maintain(Some(failpoint), &[]);
        assert_eq!(
            r.signal(),
            Some(SIGABRT),
            "[{}] fault point {failpoint} did not abort offload maintain: {}",
            self.name,
            r.describe()
        );
        let point = failpoint.split('=').next().unwrap();
        assert!(
            r.stderr.contains(&format!("fault point {point} reached")),
            "{}",
            r.describe()
        );
        r
    }

    /// Runs with no hold-back until there is nothing new (rows stopped
    /// arriving), every run sweeping. Returns the last run's output: its sweep
    /// found nothing left to repair, and reports the rows beyond the horizon.
    pub fn drain(&self) -> Run {
        let cfg = self.write_config("drain.toml", "0s", None);
        for _ in 0..20 {
            let r = Run::from_output(self.command(&cfg, None, "run", &["--once"]).output().unwrap());
            assert!(
                r.status.success(),
                "[{}] drain failed: {}",
                self.name,
                r.describe()
            );
            if r.stdout.contains("nothing new") && !r.stdout.contains("repaired") {
                return r;
            }
        }
        panic!("[{}] drain did not reach `nothing new` in 20 runs", self.name);
    }

    pub async fn app(&self) -> App {
        let cfg = Config::parse(&self.config_text(&self.lag, self.engine_id.as_deref())).unwrap();
        App::build(&cfg).await.unwrap()
    }

    /// The store's and the table's committed watermarks.
    pub async fn state(&self) -> State {
        let app = self.app().await;
        let committed = app
            .iceberg
            .open(&app.tables[0])
            .await
            .unwrap()
            .committed()
            .await
            .unwrap()
            .map(|c| c.until);
        let store = match self.store {
            Store::File => {
                offload_watermark_store::FileStore::open(self.dir.join("watermarks"))
                    .unwrap()
                    .load("trades")
                    .await
                    .unwrap()
                    .watermark
            }
            Store::Postgres => {
                let s = offload_watermark_store::PostgresStore::connect(&pg_url(), &self.pg_schema)
                    .await
                    .unwrap();
                let w = s.load("trades").await.unwrap().watermark;
                s.close().await;
                w
            }
        };
        State { store, committed }
    }

    /// The lease holder recorded in the store, if any.
    pub async fn lease_holder(&self, store: &offload_watermark_store::PostgresStore) -> Option<String> {
        store.load("trades").await.unwrap().lease.map(|l| l.holder)
    }

    /// ClickHouse's table function reading the Iceberg table: `icebergLocal`
    /// on its directory, or `icebergS3` on its S3 location (path-style URL,
    /// the server's credentials).
    pub async fn ice_source(&self) -> String {
        match &self.s3 {
            None => format!("icebergLocal('{}')", self.table_path().await),
            Some(s3) => {
                let app = self.app().await;
                let t = app.iceberg.load_table(&app.tables[0]).await.unwrap();
                let key = t
                    .metadata()
                    .location()
                    .split_once("://")
                    .unwrap()
                    .1
                    .trim_end_matches('/')
                    .to_owned();
                format!(
                    "icebergS3('{}/{key}/', '{}', '{}')",
                    s3.server.endpoint(),
                    s3.server.access_key(),
                    s3.server.secret_key()
                )
            }
        }
    }

    /// The Iceberg table's directory (for `icebergLocal`) once it exists.
    pub async fn table_path(&self) -> String {
        let app = self.app().await;
        let t = app.iceberg.load_table(&app.tables[0]).await.unwrap();
        t.metadata().location().trim_start_matches("file://").to_owned()
    }

    /// `.parquet` files under the table's data directory.
    pub async fn data_files(&self) -> usize {
        fn walk(p: &Path, n: &mut usize) {
            let Ok(rd) = std::fs::read_dir(p) else { return };
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, n);
                } else if path.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&Path::new(&self.table_path().await).join("data"), &mut n);
        n
    }

    /// The offload windows in the snapshot log, in commit order: every
    /// snapshot's window must start exactly where the previous one ended (a
    /// window committed twice, or a gap, breaks the chain), and no run id twice.
    pub async fn window_chain(&self) -> usize {
        let app = self.app().await;
        let t = app.iceberg.load_table(&app.tables[0]).await.unwrap();
        let mut snaps: Vec<_> = t.metadata().snapshots().collect();
        snaps.sort_by_key(|s| s.sequence_number());
        let mut prev_until: Option<String> = None;
        let mut runs = std::collections::HashSet::new();
        let mut windows = 0;
        for s in snaps {
            let p = &s.summary().additional_properties;
            let (Some(after), Some(until)) = (p.get("offload.window.after"), p.get("offload.window.until"))
            else {
                continue;
            };
            if let Some(prev) = &prev_until {
                assert_eq!(
                    after,
                    prev,
                    "[{}] window chain broken at snapshot {}: starts at {after}, previous ended at {prev}",
                    self.name,
                    s.snapshot_id()
                );
            }
            if let Some(run) = p.get("offload.run-id") {
                assert!(
                    runs.insert(run.clone()),
                    "[{}] run {run} committed twice",
                    self.name
                );
            }
            prev_until = Some(until.clone());
            windows += 1;
        }
        windows
    }

    fn ch(&self, sql: &str) -> String {
        front().query(sql).trim().to_owned()
    }

    /// Drains, then judges: figures (ClickHouse vs icebergLocal, and pyiceberg
    /// when `pyiceberg`), per-key lost / duplicated / unknown rows, the window
    /// chain, store == committed, and offload-reconcile ([`Lake::reconcile`],
    /// [`Lake::assert_reconciled`]).
    pub async fn verify(&self, pyiceberg: bool) -> Verdict {
        let last = self.drain();
        let beyond = self.beyond_sql();
        let beyond_rows = self.beyond_rows();
        if beyond_rows > 0 {
            // The sweep tells an operator about every row it will never offload.
            assert!(
                last.stdout.contains(&format!(
                    "WARNING {beyond_rows} rows arrived older than late_horizon"
                )),
                "[{}] the sweep must report the {beyond_rows} rows beyond the horizon: {}",
                self.name,
                last.describe()
            );
        }
        let ice = self.ice_source().await;
        let expected = self.ch(&format!(
            "SELECT {FIGURES} FROM {}.trades WHERE NOT ({beyond}) FORMAT TSV",
            self.db
        ));
        let lost: u64 = self
            .ch(&format!(
                "SELECT count() FROM {}.trades WHERE seq NOT IN (SELECT seq FROM {ice}) AND NOT ({beyond})",
                self.db
            ))
            .parse()
            .unwrap();
        let beyond_held: u64 = self
            .ch(&format!(
                "SELECT count() FROM {}.trades WHERE seq IN (SELECT seq FROM {ice}) AND ({beyond})",
                self.db
            ))
            .parse()
            .unwrap();
        assert_eq!(
            beyond_held, 0,
            "[{}] rows that arrived older than the horizon cannot have been offloaded",
            self.name
        );
        let duplicates: u64 = self
            .ch(&format!("SELECT count() - uniqExact(seq) FROM {ice}"))
            .parse()
            .unwrap();
        let unknown: u64 = self
            .ch(&format!(
                "SELECT count() FROM {ice} WHERE seq NOT IN (SELECT seq FROM {}.trades)",
                self.db
            ))
            .parse()
            .unwrap();
        let rows: u64 = self
            .ch(&format!("SELECT count() FROM {}.trades", self.db))
            .parse()
            .unwrap();
        let source_dups: u64 = self
            .ch(&format!(
                "SELECT count() - uniqExact(seq) FROM {}.trades",
                self.db
            ))
            .parse()
            .unwrap();
        assert_eq!(
            source_dups, 0,
            "[{}] test bug: the source has duplicate seqs",
            self.name
        );
        assert_eq!(
            (lost, duplicates, unknown),
            (0, 0, 0),
            "[{}] per key: (lost, duplicated, not in source) of {rows} rows",
            self.name
        );
        let got = self.ch(&format!("SELECT {FIGURES} FROM {ice} FORMAT TSV"));
        assert_eq!(
            got,
            expected,
            "[{}] figures: {} vs ClickHouse",
            self.name,
            ice.split('(').next().unwrap_or_default()
        );
        if pyiceberg {
            assert_eq!(
                self.pyiceberg_figures(),
                expected,
                "[{}] figures: pyiceberg",
                self.name
            );
        }
        let windows = self.window_chain().await;
        let state = self.state().await;
        assert!(
            state.committed.is_some() || rows == 0,
            "[{}] nothing committed",
            self.name
        );
        assert_eq!(
            state.store, state.committed,
            "[{}] store vs the table's committed watermark",
            self.name
        );
        let report = self.reconcile().await;
        self.assert_reconciled(&report, rows, state.committed);
        Verdict {
            rows,
            windows,
            lost,
            duplicates,
        }
    }

    /// `(min(ts), max(ts))` of the source table in µs, and its row count.
    pub fn source_span(&self) -> (i64, i64, u64) {
        let out = self.ch(&format!(
            "SELECT toUnixTimestamp64Micro(min(ts)), toUnixTimestamp64Micro(max(ts)), count() FROM {}.trades FORMAT TSV",
            self.db
        ));
        let f: Vec<&str> = out.split('\t').collect();
        assert_eq!(f.len(), 3, "[{}] source span: {out:?}", self.name);
        (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        )
    }

    /// offload-reconcile over the scenario's table: ClickHouse `<db>.trades`
    /// (the front's URL, the scenario's database) against the Iceberg table
    /// `lake.trades` (the catalog of the program's own sink), minute buckets
    /// over `[min(ts), max(ts)]` of the source (widened to whole minutes), full
    /// depth (counts, distinct keys, key and content fingerprints, the exact
    /// sum of `price`), the committed watermark read from the table's metadata.
    pub async fn reconcile(&self) -> Report {
        let (lo, hi, rows) = self.source_span();
        assert!(rows > 0, "[{}] reconcile: the source table is empty", self.name);
        let range = TimeRange::new(lo, hi + 1, BucketSize::Minute).unwrap();
        let app = self.app().await;
        let clickhouse = ClickHouseLayer::from_url(front().url()).with_database(&self.db);
        let spec = TableSpec::from_table_config(&app.tables[0]).sum_columns(["price"]);
        assert_eq!(spec.iceberg(), Some("lake.trades"));
        Reconciler::new(clickhouse, range)
            .with_iceberg(IcebergLayer::new(app.iceberg.catalog().clone()))
            .with_depth(Depth::Full)
            .run(&[spec])
            .await
    }

    /// The judge's reading of a reconcile report of a drained table holding
    /// `rows` source rows, committed up to `committed`: the range covers every
    /// source row and Iceberg holds exactly as many; in every bucket
    /// ClickHouse, ClickHouse at or below the watermark, and Iceberg have equal
    /// figures (rows, distinct keys, key and content fingerprints, sums), there
    /// is no finding, and the verdict is `ok` — including the bucket holding the
    /// watermark, since after the drain nothing lies above it.
    pub fn assert_reconciled(&self, report: &Report, rows: u64, committed: Option<Watermark>) {
        if let Err(e) = self.check_reconciled(report, rows, committed) {
            panic!("{e}");
        }
    }

    /// [`Lake::assert_reconciled`]'s judgement: `Err` names the first problem,
    /// with the whole report.
    pub fn check_reconciled(
        &self,
        report: &Report,
        rows: u64,
        committed: Option<Watermark>,
    ) -> Result<(), String> {
        use offload_reconcile::Verdict as V;
        let name = &self.name;
        let text = report.render_table(true);
        macro_rules! ensure {
            ($cond:expr, $($msg:tt)+) => {
                if !$cond {
                    return Err(format!("[{name}] reconcile: {}\n{text}", format!($($msg)+)));
                }
            };
        }
        ensure!(report.tables.len() == 1, "{} tables", report.tables.len());
        let t = &report.tables[0];
        ensure!(t.error.is_none(), "failed: {:?}", t.error);
        ensure!(
            t.totals.clickhouse == Some(rows),
            "ClickHouse rows in the range {:?}, in the source {rows}: the range must cover every row",
            t.totals.clickhouse
        );
        let beyond = self.beyond_rows();
        ensure!(
            t.totals.iceberg == Some(rows - beyond),
            "Iceberg rows counted {:?}, source rows {rows} of which {beyond} arrived beyond the horizon",
            t.totals.iceberg
        );
        // The minute buckets holding rows that arrived beyond the horizon: `missing`.
        let beyond_buckets: std::collections::BTreeSet<i64> = if beyond == 0 {
            Default::default()
        } else {
            self.ch(&format!(
                "SELECT DISTINCT toUnixTimestamp64Micro(toDateTime64(toStartOfMinute(ts), 6)) FROM {}.trades WHERE {} FORMAT TSV",
                self.db,
                self.beyond_sql()
            ))
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
        };
        ensure!(
            t.content_columns.iter().any(|c| c.name == "price")
                && t.content_columns.iter().any(|c| c.name == "trade_id"),
            "content fingerprint columns {:?}",
            t.content_columns
        );
        let Some(committed) = committed else {
            return Err(format!("[{name}] reconcile: nothing committed"));
        };
        for b in &t.buckets {
            let at = &b.start_utc;
            ensure!(
                Watermark::new(b.start, 0) <= committed,
                "bucket {at} lies beyond the committed watermark {committed} after the drain"
            );
            if beyond_buckets.contains(&b.start) {
                ensure!(
                    b.verdict == V::Missing,
                    "bucket {at} holds rows that arrived beyond the horizon: expected missing, got {}",
                    b.verdict
                );
                continue;
            }
            let expected = V::Ok;
            ensure!(
                b.verdict == expected && b.findings.is_empty(),
                "bucket {at} is {} (expected {expected}) with findings {:?}",
                b.verdict,
                b.findings
            );
            let ice = b.iceberg.as_ref();
            ensure!(
                ice.is_some_and(|f| f.key_fingerprint.is_some() && f.content_fingerprint.is_some()),
                "bucket {at} not reconciled at full depth"
            );
            ensure!(
                b.clickhouse.as_ref() == ice && b.clickhouse_committed.as_ref() == ice,
                "bucket {at}: figures differ (ClickHouse {:?}, at or below the watermark {:?}, Iceberg {:?})",
                b.clickhouse,
                b.clickhouse_committed,
                b.iceberg
            );
        }
        let want = if beyond == 0 { V::Ok } else { V::Missing };
        ensure!(
            report.verdict == want,
            "overall verdict {} (expected {want})",
            report.verdict
        );
        ensure!(
            (report.exit_code() == 0) == (beyond == 0),
            "exit code {} with {beyond} rows beyond the horizon",
            report.exit_code()
        );
        Ok(())
    }

    /// Plants the bug exactly-once exists to prevent: the source rows at the
    /// oldest timestamp, committed to Iceberg a second time through the sink's
    /// staging/commit API, in a window just above the committed watermark (so
    /// the fence accepts it). Returns `(ts µs, seq)` of the rows committed twice.
    pub async fn commit_again(&self) -> Vec<(i64, u64)> {
        let (lo, _, _) = self.source_span();
        let app = self.app().await;
        let table = &app.tables[0];
        let source = ClickHouseSource::builder(front().url())
            .database(&self.db)
            .build()
            .unwrap();
        let source = source.open(table).await.unwrap();
        let schema = source.schema();
        let rows = Window::new(Watermark::new(lo - 1, u64::MAX), Watermark::new(lo, u64::MAX)).unwrap();
        let batches: Vec<_> = source.read(rows).await.unwrap().try_collect().await.unwrap();
        let run = RunId::new();
        let sink = app.iceberg.open(table).await.unwrap();
        let mut writer = sink.begin(run, schema).await.unwrap();
        for b in batches {
            writer.write(b).await.unwrap();
        }
        let staged = writer.finish().await.unwrap();
        let w = sink.committed().await.unwrap().unwrap().until;
        let meta = CommitMetadata {
            window: Window::new(w, Watermark::new(w.timestamp_micros(), w.sequence() + 1)).unwrap(),
            run_id: run,
            engine_id: "buggy-engine".into(),
            fencing_token: 1,
        };
        staged.commit(&meta).await.unwrap();
        self.ch(&format!(
            "SELECT toUnixTimestamp64Micro(ts), seq FROM {}.trades WHERE toUnixTimestamp64Micro(ts) = {lo} ORDER BY seq FORMAT TSV",
            self.db
        ))
        .lines()
        .map(|l| {
            let (ts, seq) = l.split_once('\t').unwrap();
            (ts.parse().unwrap(), seq.parse().unwrap())
        })
        .collect()
    }

    pub fn pyiceberg_figures(&self) -> String {
        let uri = match self.catalog {
            Catalog::Postgres => pg_url().replace("postgres://", "postgresql+psycopg2://"),
            Catalog::Sqlite => format!("sqlite:///{}/catalog.db", self.dir.display()),
        };
        let props = match &self.s3 {
            None => serde_json::json!({}),
            Some(s3) => serde_json::json!({
                "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
                "s3.endpoint": s3.server.endpoint(),
                "s3.access-key-id": s3.server.access_key(),
                "s3.secret-access-key": s3.server.secret_key(),
                "s3.region": s3.server.region(),
                "s3.force-virtual-addressing": "false",
            }),
        };
        lake_figures(&uri, &self.catalog_name, &self.warehouse(), &props)
    }
}

/// What one `offload maintain --json` did to the table (its `tables[0]`).
#[derive(Debug, Default, Clone)]
pub struct Maintained {
    pub partitions_compacted: u64,
    pub files_rewritten: u64,
    pub files_written: u64,
    pub rows_rewritten: u64,
    pub snapshots_expired: u64,
    pub files_deleted: u64,
    pub orphans_deleted: u64,
    pub commits: u64,
    pub conflicts_retried: u64,
    pub noop: bool,
}

impl Maintained {
    pub fn parse(r: &Run) -> Self {
        let doc: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("maintain --json: {e}: {}", r.describe()));
        let t = &doc["tables"][0];
        assert_eq!(t["ok"], true, "{}", r.describe());
        let n = |k: &str| {
            t[k].as_u64()
                .unwrap_or_else(|| panic!("maintain --json: no {k}: {}", r.describe()))
        };
        Maintained {
            partitions_compacted: n("partitions_compacted"),
            files_rewritten: n("files_rewritten"),
            files_written: n("files_written"),
            rows_rewritten: n("rows_rewritten"),
            snapshots_expired: n("snapshots_expired"),
            files_deleted: n("files_deleted"),
            orphans_deleted: n("orphans_deleted"),
            commits: n("commits"),
            conflicts_retried: n("conflicts_retried"),
            noop: t["noop"].as_bool().unwrap_or(false),
        }
    }
}

/// The files under the table's location against what its current metadata
/// references (read here with iceberg-rust, independently of the sink's
/// own reachability code): every snapshot's manifest list, its manifests and
/// their data files, the current metadata file and those in its log.
#[derive(Debug, Default)]
pub struct FileAudit {
    /// Files under `data/` and `metadata/`.
    pub on_disk: std::collections::BTreeSet<String>,
    /// Files some kept snapshot reads (data files alive in its manifests,
    /// its manifests and list) or the metadata names; data files of
    /// `DELETED` entries count too (still named by a kept manifest).
    pub referenced: std::collections::BTreeSet<String>,
    /// Referenced files that are not on disk: a reader of a kept snapshot
    /// would fail. Must always be empty.
    pub missing: Vec<String>,
    /// Files on disk nothing references (orphans).
    pub unreferenced: Vec<String>,
}

impl Lake {
    /// Audits the table's files ([`FileAudit`]).
    pub async fn file_audit(&self) -> FileAudit {
        fn strip(p: &str) -> String {
            p.trim_start_matches("file://").to_owned()
        }
        fn walk(p: &Path, out: &mut std::collections::BTreeSet<String>) {
            let Ok(rd) = std::fs::read_dir(p) else { return };
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.insert(path.to_string_lossy().into_owned());
                }
            }
        }
        let app = self.app().await;
        let t = app.iceberg.load_table(&app.tables[0]).await.unwrap();
        let meta = t.metadata();
        let root = strip(meta.location());
        let mut audit = FileAudit::default();
        match &self.s3 {
            None => {
                for sub in ["data", "metadata"] {
                    walk(&Path::new(&root).join(sub), &mut audit.on_disk);
                }
            }
            // What the server itself holds (its directory), not an S3 listing.
            Some(s3) => {
                let prefix = root
                    .strip_prefix(&format!("s3://{}/", s3.bucket))
                    .expect("the table lives in the scenario's bucket");
                for sub in ["data", "metadata"] {
                    let keys = s3.server.keys(&s3.bucket, &format!("{prefix}/{sub}/"));
                    audit
                        .on_disk
                        .extend(keys.into_iter().map(|k| format!("s3://{}/{k}", s3.bucket)));
                }
            }
        }
        let mut referenced = std::collections::BTreeSet::new();
        // Files that must exist: what kept snapshots read as live.
        let mut needed = std::collections::BTreeSet::new();
        needed.insert(strip(t.metadata_location().expect("a metadata location")));
        for log in meta.metadata_log() {
            referenced.insert(strip(&log.metadata_file));
        }
        for snap in meta.snapshots() {
            needed.insert(strip(snap.manifest_list()));
            let list = t.manifest_list_reader(snap).load().await.unwrap_or_else(|e| {
                panic!(
                    "[{}] the manifest list of kept snapshot {} cannot be read: {e}",
                    self.name,
                    snap.snapshot_id()
                )
            });
            for m in list.entries() {
                needed.insert(strip(&m.manifest_path));
                let manifest = m.load_manifest(t.file_io()).await.unwrap_or_else(|e| {
                    panic!(
                        "[{}] manifest {} of kept snapshot {} cannot be read: {e}",
                        self.name,
                        m.manifest_path,
                        snap.snapshot_id()
                    )
                });
                for e in manifest.entries() {
                    let path = strip(e.data_file().file_path());
                    if e.is_alive() {
                        needed.insert(path);
                    } else {
                        referenced.insert(path);
                    }
                }
            }
        }
        audit.missing = needed
            .iter()
            .filter(|p| !audit.on_disk.contains(*p))
            .cloned()
            .collect();
        referenced.extend(needed);
        audit.unreferenced = audit
            .on_disk
            .iter()
            .filter(|p| !referenced.contains(*p))
            .cloned()
            .collect();
        audit.referenced = referenced;
        audit
    }

    /// Live data files of the table's current snapshot whose path lies in
    /// a partition directory containing `part` (e.g. `ts_hour=2026-12-01-13`).
    pub async fn live_files_in(&self, part: &str) -> usize {
        self.live_paths_in(part).await.len()
    }

    /// The paths of the live data files in partition directory `part`.
    pub async fn live_paths_in(&self, part: &str) -> Vec<String> {
        let app = self.app().await;
        let t = app.iceberg.load_table(&app.tables[0]).await.unwrap();
        let Some(snap) = t.metadata().current_snapshot() else {
            return Vec::new();
        };
        let list = t.manifest_list_reader(snap).load().await.unwrap();
        let mut paths = Vec::new();
        for m in list.entries() {
            let manifest = m.load_manifest(t.file_io()).await.unwrap();
            paths.extend(
                manifest
                    .entries()
                    .iter()
                    .filter(|e| e.is_alive() && e.data_file().file_path().contains(&format!("/{part}/")))
                    .map(|e| e.data_file().file_path().to_owned()),
            );
        }
        paths
    }
}

/// Waits for the condition "`child` is stopped" (state T in /proc: a `:stop`
/// fault point froze it). Panics with its log if it ended instead.
pub fn wait_stopped(child: &mut Child, log: &Path) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "offload finished ({status:?}) before its fault point stopped it\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGCONT to a child stopped by a `:stop` fault point.
pub fn resume(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGCONT) }, 0);
}

/// `lake.trades` read by pyiceberg (`tests/lake_figures.py`) through the SQL
/// catalog at SQLAlchemy URI `uri`, named `catalog_name`, with its warehouse
/// under `dir`: the exact figures, tab-separated, in `lake_figures.py`'s order.
pub fn pyiceberg_figures(uri: &str, catalog_name: &str, dir: &Path) -> String {
    lake_figures(
        uri,
        catalog_name,
        &format!("{}/warehouse", dir.display()),
        &serde_json::json!({}),
    )
}

/// [`pyiceberg_figures`] for any `warehouse`, with extra catalog `props`
/// (pyiceberg's `s3.*` and `py-io-impl` for an S3 warehouse).
pub fn lake_figures(uri: &str, catalog_name: &str, warehouse: &str, props: &serde_json::Value) -> String {
    let out = Command::new(venv_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lake_figures.py"))
        .args([uri, catalog_name, "lake.trades", warehouse, &props.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyiceberg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Drop for Lake {
    fn drop(&mut self) {
        if self.store == Store::Postgres {
            let _ = Command::new("psql")
                .args([
                    &pg_url(),
                    "-qc",
                    &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.pg_schema),
                ])
                .output();
        }
        if std::thread::panicking() {
            eprintln!("[{}] kept for inspection: {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
            // Best effort: the shared engine holds many scenarios' databases.
            let _ =
                std::panic::catch_unwind(|| front().query(&format!("DROP DATABASE IF EXISTS {}", self.db)));
        }
    }
}

/// A small seeded generator (splitmix64): the same seed replays the same kills.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Spawns `offload`, lets it run `delay`, then SIGKILLs it. Returns whether the
/// kill landed (false: the run had already finished, with its status).
pub fn kill_after(mut child: Child, delay: Duration) -> (bool, ExitStatus) {
    let started = Instant::now();
    // The kill time is the experiment's random variable, not synchronisation:
    // poll so a run that ends early is seen as finished rather than killed.
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (false, status);
        }
        let elapsed = started.elapsed();
        if elapsed >= delay {
            break;
        }
        std::thread::sleep((delay - elapsed).min(Duration::from_millis(5)));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    (status.signal() == Some(SIGKILL), status)
}
