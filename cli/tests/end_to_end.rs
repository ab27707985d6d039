//! The whole path: real ClickHouse (chdb) -> engine -> Iceberg on the SQLite and
//! the PostgreSQL SQL catalog, read back by two independent implementations
//! (pyiceberg, ClickHouse's `icebergLocal`), while rows keep arriving: equal
//! timestamps, late rows inside the lag, late rows at the exact edge of the
//! committed watermark, restarts between runs. Every source row must be in
//! Iceberg exactly once and the store must agree with the table.

use std::path::PathBuf;
use std::process::Command;

use offload_cli::app::App;
use offload_cli::config::Config;
use offload_core::{CancellationToken, Sink, WatermarkStore};
use offload_testkit::{ClickHouseFront, repo_root};

mod support;

/// Exact figures, in the order `lake_figures.py` prints them.
const FIGURES: &str = "count(), uniqExact(ts, seq), sum(toInt128(toUnixTimestamp64Micro(toDateTime64(ts, 6)))), \
    sum(toInt128(seq)), sum(toInt128(toDecimal128(price, 8) * 100000000)), sum(length(conditions)), \
    sum(length(mapKeys(vendor))), countIf(trade_id IS NULL)";

struct Scenario {
    front: ClickHouseFront,
    dir: PathBuf,
    catalog_uri: String,
    catalog_name: String,
    pg_schema: Option<String>,
}

impl Scenario {
    fn new(catalog: &str) -> Self {
        let runs = repo_root().join(".run");
        std::fs::create_dir_all(&runs).unwrap();
        // Under the repository: chdb's icebergLocal only reads below its working directory.
        let dir = tempfile::tempdir_in(runs).unwrap().keep();
        let name = format!("e2e{}", std::process::id());
        let (catalog_uri, pg_schema) = match catalog {
            "sqlite" => (format!("sqlite://{}/catalog.db", dir.display()), None),
            _ => {
                let pg = std::env::var("OFFLOAD_PG_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                (pg, Some(format!("offload_e2e_{name}")))
            }
        };
        let front = ClickHouseFront::start();
        front.query("CREATE DATABASE e2e");
        front.query(
            "CREATE TABLE e2e.trades (ts DateTime64(3, 'UTC'), seq UInt64, symbol LowCardinality(String),
                price Decimal(18, 8), conditions Array(String), vendor Map(String, String),
                trade_id Nullable(String)) ENGINE = MergeTree ORDER BY (ts, seq)",
        );
        Scenario {
            front,
            dir,
            catalog_uri,
            catalog_name: name,
            pg_schema,
        }
    }

    fn config(&self, lag: &str) -> Config {
        let catalog = match &self.pg_schema {
            None => format!("kind = \"sqlite\"\npath = \"{}/catalog.db\"", self.dir.display()),
            Some(_) => format!("kind = \"postgres\"\nurl = \"{}\"", self.catalog_uri),
        };
        let store = match &self.pg_schema {
            None => format!("kind = \"file\"\npath = \"{}/watermarks\"", self.dir.display()),
            Some(schema) => format!(
                "kind = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"",
                self.catalog_uri
            ),
        };
        Config::parse(&format!(
            "[engine]\nid = \"e2e\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"e2e\"\n\
             [iceberg]\nwarehouse = \"{}/warehouse\"\n[iceberg.catalog]\n{catalog}\nname = \"{}\"\n\
             [store]\n{store}\n\
             [[tables]]\nname = \"trades\"\nsink_table = \"lake.trades\"\ntimestamp_column = \"ts\"\n\
             sequence_column = \"seq\"\nlag = \"{lag}\"\nbatch_size = 4096\n",
            self.front.url(),
            self.dir.display(),
            self.catalog_name
        ))
        .unwrap()
    }

    /// `n` rows, `per_ts` sharing each millisecond, the newest `newest_ms_ago` old.
    fn insert(&self, first_seq: u64, n: u64, per_ts: u64, newest_ms_ago: i64) {
        self.front.query(&format!(
            "INSERT INTO e2e.trades SELECT now64(3, 'UTC') - toIntervalMillisecond({newest_ms_ago} + intDiv({n} - 1 - number, {per_ts})),
                {first_seq} + number, ['BTC', 'ETH', 'SOL'][number % 3 + 1], toDecimal64(100 + number / 1000, 8),
                if(number % 4 = 0, ['late', 'odd'], []), map('venue', 'x', 'n', toString(number % 7)),
                if(number % 5 = 0, NULL, toString(number)) FROM numbers({n})"
        ));
    }

    fn clickhouse_figures(&self) -> String {
        self.front
            .query(&format!("SELECT {FIGURES} FROM e2e.trades FORMAT TSV"))
            .trim()
            .to_owned()
    }

    fn iceberg_local_figures(&self, location: &str) -> String {
        let path = location.trim_start_matches("file://");
        self.front
            .query(&format!(
                "SELECT {FIGURES} FROM icebergLocal('{path}') FORMAT TSV"
            ))
            .trim()
            .to_owned()
    }

    fn pyiceberg_figures(&self) -> String {
        let uri = if self.pg_schema.is_some() {
            self.catalog_uri.replace("postgres://", "postgresql+psycopg2://")
        } else {
            format!("sqlite:///{}/catalog.db", self.dir.display())
        };
        support::pyiceberg_figures(&uri, &self.catalog_name, &self.dir)
    }
}

async fn exactly_once_through(catalog: &str) {
    let s = Scenario::new(catalog);
    // History older than the lag: 5 rows per millisecond.
    s.insert(0, 40_000, 5, 10_000);
    let never = CancellationToken::new();
    let mut app = App::build(&s.config("2s")).await.unwrap();
    let mut next = 40_000;
    for round in 0..6 {
        // Rows that arrive late but inside the 2 s lag (oldest 1.7 s old at most:
        // the contract is that nothing arrives later than the lag), and a burst
        // sharing timestamps.
        s.insert(next, 1_000, 5, 1_500 - round * 200);
        s.insert(next + 1_000, 2_000, 50, 800);
        next += 3_000;
        if round == 3 {
            // A restart: a new process resumes from what the table holds.
            app = App::build(&s.config("2s")).await.unwrap();
        }
        for (table, result) in app.engine.run_all(&app.tables, &never).await {
            result.unwrap_or_else(|e| panic!("round {round}: {table}: {e}"));
        }
        if round == 4 {
            // Rows at the committed watermark's exact timestamp with larger
            // sequences: filtering on the timestamp alone would lose them.
            let committed = app
                .iceberg
                .open(&app.tables[0])
                .await
                .unwrap()
                .committed()
                .await
                .unwrap()
                .expect("something committed")
                .until;
            s.front.query(&format!(
                "INSERT INTO e2e.trades SELECT fromUnixTimestamp64Micro({}, 'UTC'), {next} + number, 'EDGE',
                    toDecimal64(1, 8), [], map(), NULL FROM numbers(7)",
                committed.timestamp_micros()
            ));
            next += 7;
        }
    }

    // Rows stop arriving; with no more to come, drain with no hold-back.
    let app = App::build(&s.config("0s")).await.unwrap();
    loop {
        let results = app.engine.run_all(&app.tables, &never).await;
        let summary = results.into_iter().next().unwrap().1.unwrap();
        if summary.window.is_none() {
            break;
        }
    }

    let expected = s.clickhouse_figures();
    assert!(
        expected.starts_with(&format!("{next}\t{next}\t")),
        "source holds {next} distinct rows: {expected}"
    );
    let table = app.iceberg.load_table(&app.tables[0]).await.unwrap();
    assert_eq!(
        s.iceberg_local_figures(table.metadata().location()),
        expected,
        "ClickHouse icebergLocal"
    );
    assert_eq!(s.pyiceberg_figures(), expected, "pyiceberg");

    // The store agrees with the table.
    let committed = app
        .iceberg
        .open(&app.tables[0])
        .await
        .unwrap()
        .committed()
        .await
        .unwrap()
        .map(|c| c.until);
    let stored = match &s.pg_schema {
        None => {
            offload_watermark_store::FileStore::open(s.dir.join("watermarks"))
                .unwrap()
                .load("trades")
                .await
                .unwrap()
                .watermark
        }
        Some(schema) => {
            let store = offload_watermark_store::PostgresStore::connect(&s.catalog_uri, schema)
                .await
                .unwrap();
            let w = store.load("trades").await.unwrap().watermark;
            store.close().await;
            let _ = Command::new("psql")
                .args([
                    &s.catalog_uri,
                    "-qc",
                    &format!("DROP SCHEMA \"{schema}\" CASCADE"),
                ])
                .status();
            w
        }
    };
    assert_eq!(stored, committed);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_the_sqlite_catalog() {
    exactly_once_through("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_the_postgres_catalog() {
    exactly_once_through("postgres").await;
}
