//! Hostile input against the REAL `offload` program: broken configuration,
//! schema changes between runs, awkward identifiers and values, a catalog that
//! is not one. Each case either works with exact figures or fails with a clear
//! message, and never corrupts the table or the watermark.

mod support;

use std::path::Path;

use support::{Catalog, Lake, Run, Store, front};

fn run(lake: &Lake, config: &Path) -> Run {
    lake.run_with_config(config)
}

#[test]
fn a_broken_config_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("warehouse");
    let wm = dir.path().join("watermarks");
    let good = format!(
        "[clickhouse]\nurl = \"http://127.0.0.1:9\"\n[iceberg]\nwarehouse = \"{1}\"\n\
         [iceberg.catalog]\nkind = \"sqlite\"\npath = \"{0}/c.db\"\n\
         [store]\nkind = \"file\"\npath = \"{2}\"\n[[tables]]\nname = \"t\"\ntimestamp_column = \"ts\"\n\
         sequence_column = \"seq\"\n",
        dir.path().display(),
        wh.display(),
        wm.display()
    );
    let cases = [
        (good[..good.len() / 2].to_owned(), "invalid configuration"),
        (good.replace("[[tables]]", "[[tables"), "invalid configuration"),
        (
            good.replace("sequence_column", "sequence_colum"),
            "sequence_colum",
        ),
        (good.replace("kind = \"file\"", "kind = \"etcd\""), "etcd"),
        ("\u{0}\u{1}garbage = = =".to_owned(), "invalid configuration"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_offload"))
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--once")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert!(stderr.contains(needle), "case {i}: {needle:?} not in {stderr}");
        assert!(!wh.exists() && !wm.exists(), "case {i} wrote something");
        assert!(!dir.path().join("c.db").exists(), "case {i} created the catalog");
    }
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(["run", "--config", "/nonexistent/offload.toml", "--once"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

/// A Nullable column added between runs: the next run evolves the Iceberg
/// schema, old rows read back as NULL, figures stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_between_runs_evolves_the_table() {
    let s = Lake::new("add_column", Catalog::Sqlite, Store::File);
    s.insert(0, 2_000, 5, 10_000);
    s.run_ok();
    front().query(&format!(
        "ALTER TABLE {}.trades ADD COLUMN note Nullable(String)",
        s.db
    ));
    front().query(&format!(
        "INSERT INTO {0}.trades SELECT ts + toIntervalSecond(1), seq + 2000, symbol, price, conditions, vendor,
            trade_id, if(seq % 3 = 0, NULL, concat('n', toString(seq))) FROM {0}.trades",
        s.db
    ));
    s.run_ok();
    let v = s.verify(false).await;
    assert_eq!(v.rows, 4_000);
    let path = s.table_path().await;
    let q = "SELECT count(note), sum(length(note)) FROM";
    assert_eq!(
        front().query(&format!("{q} icebergLocal('{path}') FORMAT TSV")),
        front().query(&format!("{q} {}.trades FORMAT TSV", s.db)),
        "the added column's values"
    );
}

/// A column dropped between runs: handled (NULLs for the dropped column) or a
/// clear error; either way the table and the watermark are not corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_between_runs_is_handled_or_refused_cleanly() {
    let s = Lake::new("drop_column", Catalog::Sqlite, Store::File);
    s.insert(0, 2_000, 5, 10_000);
    s.run_ok();
    let before = s.state().await;
    front().query(&format!("ALTER TABLE {}.trades DROP COLUMN trade_id", s.db));
    front().query(&format!(
        "INSERT INTO {0}.trades SELECT ts + toIntervalSecond(1), seq + 2000, symbol, price, conditions, vendor
            FROM {0}.trades",
        s.db
    ));
    let r = s.run(None);
    let after = s.state().await;
    eprintln!("[drop_column] {}", r.describe());
    if r.status.success() {
        assert!(after.committed > before.committed);
        assert_eq!(after.store, after.committed);
        let path = s.table_path().await;
        let q = "SELECT count(), sum(seq) FROM";
        assert_eq!(
            front().query(&format!("{q} icebergLocal('{path}') FORMAT TSV")),
            front().query(&format!("{q} {}.trades FORMAT TSV", s.db))
        );
    } else {
        assert_eq!(r.status.code(), Some(1), "{}", r.describe());
        assert!(
            r.stderr.contains("trade_id"),
            "the error should name the column: {}",
            r.describe()
        );
        assert_eq!(after, before, "a refused run changed the table or store");
    }
}

/// Values at the edges: NaN and ±inf, timestamps before 1970, a 10 MB string,
/// a table name with quotes, a semicolon and non-ASCII letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_values_and_identifiers_round_trip() {
    let s = Lake::new("values", Catalog::Sqlite, Store::File);
    let source = "tr`a\"d;ës 📈";
    front().query(&format!(
        "CREATE TABLE {}.`tr\\`a\"d;ës 📈` (ts DateTime64(3, 'UTC'), seq UInt64, f Float64, s String)
            ENGINE = MergeTree ORDER BY (ts, seq)",
        s.db
    ));
    front().query(&format!(
        "INSERT INTO {}.`tr\\`a\"d;ës 📈` SELECT
            toDateTime64('1950-06-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 1000000), number,
            [nan, inf, -inf, -0., 1.5e308, 5e-324][number % 6 + 1],
            if(number = 7, repeat('0123456789', 1000000), concat('é;`\"', toString(number)))
          FROM numbers(200)",
        s.db
    ));
    let config = |source_table: &str| {
        let toml_name = source_table.replace('\\', "\\\\").replace('"', "\\\"");
        let text = s.config_text("2s", Some("hostile")).replace(
            "name = \"trades\"\n",
            // 55 h of rows in one window: no max_window.
            &format!("name = \"trades\"\nsource_table = \"{toml_name}\"\nmax_window = \"0s\"\n"),
        );
        let cfg = s.dir.join("values.toml");
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    // Unquoted, the backtick is ambiguous: a clear error naming the table, nothing written.
    let r = run(&s, &config(source));
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(r.stderr.contains("quote the whole part"), "{}", r.describe());
    assert_eq!(s.state().await.committed, None);
    // Quoted in ClickHouse syntax, it works.
    let r = run(&s, &config(&format!("`{}`", source.replace('`', "``"))));
    assert!(r.status.success(), "{}", r.describe());
    assert!(r.stdout.contains("200 rows in"), "{}", r.describe());

    let path = s.table_path().await;
    let figures = "count(), sum(seq), countIf(isNaN(f)), countIf(f = inf), countIf(f = -inf), \
        sum(reinterpretAsUInt64(f)), sum(length(s)), sum(cityHash64(s)), toDateTime64(min(ts), 3), toDateTime64(max(ts), 3), \
        sum(toInt128(toUnixTimestamp64Micro(toDateTime64(ts, 6))))";
    let lake = front().query(&format!(
        "SELECT {figures} FROM icebergLocal('{path}') FORMAT TSV"
    ));
    let src = front().query(&format!(
        "SELECT {figures} FROM {}.`tr\\`a\"d;ës 📈` FORMAT TSV",
        s.db
    ));
    assert_eq!(lake, src, "awkward values");
    assert!(src.contains("1950-"), "{src}");
}

/// A catalog URI naming a file that is not a catalog database: exit 2, clear
/// message, the file untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_is_not_one_is_a_clear_error() {
    let s = Lake::new("bad_catalog", Catalog::Sqlite, Store::File);
    s.insert(0, 100, 5, 10_000);
    let bogus = s.dir.join("catalog.db");
    std::fs::write(&bogus, b"this is not a database\n").unwrap();
    let r = s.run(None);
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
    assert!(r.stderr.contains("iceberg"), "{}", r.describe());
    eprintln!("[bad_catalog] {}", r.stderr.trim());
    assert_eq!(std::fs::read(&bogus).unwrap(), b"this is not a database\n");
}
