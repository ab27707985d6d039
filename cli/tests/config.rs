//! The configuration parser: the example file parses, every bad file is a
//! typed error naming its key path, arbitrary input never panics, and
//! secrets are neither accepted inline nor printed.

use offload_cli::config::{Config, ConfigError, Dur};
use offload_sink_iceberg::{IcebergTableOptions, Transform};
use offload_source_clickhouse::ClickHouseTableOptions;
use proptest::prelude::*;

const GOOD: &str = r#"
[engine]
interval = "30s"
[clickhouse]
url = "http://127.0.0.1:8123"
password_env = "OFFLOAD_TEST_CH_PASSWORD"
[iceberg]
warehouse = "/tmp/wh"
[iceberg.catalog]
kind = "sqlite"
path = "/tmp/c.db"
[store]
kind = "file"
path = "/tmp/wm"
[[tables]]
name = "bronze_trades"
timestamp_column = "exchange_timestamp"
sequence_column = "sequence_number"
lag = "5m"
partition = [{ transform = "hour" }]
"#;

#[test]
fn the_example_file_parses_with_every_section() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("offload.example.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(cfg.engine.id.as_deref(), Some("worker-1"));
    assert_eq!(cfg.retry.attempts, 5);
    assert_eq!(cfg.timeouts.staging.0.as_secs(), 600);
    assert!(cfg.metrics.is_some());
    assert_eq!(cfg.clickhouse.settings["max_execution_time"].0, "600");
    assert_eq!(cfg.iceberg.writer.target_file_size_mib, Some(128));
    assert_eq!(cfg.reconcile.expired_after.unwrap().0.as_secs(), 7 * 86_400);
    let m = &cfg.maintenance;
    assert_eq!(m.interval.0.as_secs(), 3600);
    assert_eq!(m.target_file_size.unwrap().0, 256 << 20);
    assert_eq!(
        (m.min_input_files, m.keep_snapshots, m.keep_metadata_files),
        (Some(5), Some(10), Some(10))
    );
    assert_eq!(
        (m.manifest_entries, m.max_manifests, m.max_commit_attempts),
        (Some(10_000), Some(32), Some(5))
    );
    assert_eq!(m.compact_open, Some(false));
    assert_eq!(m.snapshot_retention.unwrap().0.as_secs(), 86_400);
    assert_eq!(m.delete_grace.unwrap().0.as_secs(), 3600);
    assert_eq!(cfg.orphan_grace().unwrap().0.as_secs(), 86_400);
    // The example spells out the defaults: the sink gets exactly its defaults.
    assert_eq!(
        format!("{:?}", offload_cli::app::maintenance_config(&cfg).unwrap()),
        format!("{:?}", offload_sink_iceberg::MaintenanceConfig::default())
    );
    let tables = cfg.table_configs().unwrap();
    assert_eq!(tables.len(), 2);
    let t = &tables[0];
    assert_eq!(
        (t.source_table(), t.sink_table()),
        ("market.bronze_trades", "market.bronze_trades")
    );
    let parts: Vec<_> = t
        .option::<IcebergTableOptions>()
        .expect("partitioning attached")
        .partitioning(t)
        .iter()
        .map(|f| (f.column().to_owned(), f.transform().clone()))
        .collect();
    assert_eq!(
        parts,
        [
            ("exchange_timestamp".to_owned(), Transform::Day),
            ("symbol".to_owned(), Transform::Bucket(16))
        ]
    );
    assert_eq!(
        t.option::<ClickHouseTableOptions>().and_then(|o| o.filter_sql()),
        Some("symbol != 'TEST'")
    );
    assert_eq!(cfg.tables[0].reconcile.sum_columns, ["price", "quantity"]);
    // The smallest entry: a bare sink table, resolved in the default namespace.
    assert_eq!(tables[1].sink_table(), "silver_trades");
    assert_eq!(cfg.namespace(), "offload");
}

#[test]
fn a_good_file_parses_into_table_configs() {
    let cfg = Config::parse(GOOD).unwrap();
    let t = &cfg.table_configs().unwrap()[0];
    assert_eq!(t.sink_table(), "bronze_trades");
    assert_eq!(cfg.namespace(), offload_sink_iceberg::DEFAULT_NAMESPACE);
    assert_eq!(t.lag().as_secs(), 300);
    assert_eq!(cfg.engine.interval.0.as_secs(), 30);
    let p = t.option::<IcebergTableOptions>().unwrap().partitioning(t);
    assert_eq!(p[0].transform(), &Transform::Hour);
    assert_eq!(p[0].column(), "exchange_timestamp");
}

#[test]
fn max_window_defaults_to_an_hour_and_zero_unbounds_it() {
    let window = |line: &str| {
        let cfg = Config::parse(&GOOD.replace("lag = \"5m\"", &format!("lag = \"5m\"\n{line}"))).unwrap();
        cfg.table_configs().unwrap()[0].max_window()
    };
    assert_eq!(window(""), Some(offload_core::DEFAULT_MAX_WINDOW));
    assert_eq!(
        window("max_window = \"6h\""),
        Some(std::time::Duration::from_secs(6 * 3600))
    );
    assert_eq!(window("max_window = \"0s\""), None);
}

#[test]
fn an_empty_partition_list_is_unpartitioned_and_none_is_the_default() {
    let cfg =
        Config::parse(&GOOD.replace("partition = [{ transform = \"hour\" }]", "partition = []")).unwrap();
    let t = &cfg.table_configs().unwrap()[0];
    assert!(
        t.option::<IcebergTableOptions>()
            .unwrap()
            .partitioning(t)
            .is_empty()
    );
    let cfg = Config::parse(&GOOD.replace("partition = [{ transform = \"hour\" }]", "")).unwrap();
    let t = &cfg.table_configs().unwrap()[0];
    assert!(
        t.option::<IcebergTableOptions>().is_none(),
        "the sink's default applies"
    );
}

#[test]
fn secrets_come_from_the_environment_only_and_never_print() {
    // An inline password is refused, wherever a URL is accepted.
    for (text, key) in [
        (
            GOOD.replace("http://127.0.0.1:8123", "http://u:hunter2@127.0.0.1:8123"),
            "clickhouse.url",
        ),
        (
            GOOD.replace(
                "kind = \"file\"\npath = \"/tmp/wm\"",
                "kind = \"postgres\"\nurl = \"postgres://u:hunter2@h/db\"",
            ),
            "store.url",
        ),
    ] {
        let err = Config::parse(&text).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(key), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    // An inline `password` key does not exist, and the error does not quote it.
    let text = GOOD.replace(
        "password_env = \"OFFLOAD_TEST_CH_PASSWORD\"",
        "password = \"hunter2\"",
    );
    let err = Config::parse(&text).unwrap_err();
    assert!(err.to_string().contains("clickhouse.password"), "{err}");
    assert!(err.to_string().contains("(line 6, column 1)"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    // Secret-looking pass-through properties are refused too.
    let text = GOOD.replace(
        "[store]",
        "[reconcile.kafka]\nbrokers = \"k:9092\"\nproperties = { \"sasl.password\" = \"hunter2\" }\n[store]",
    );
    let err = Config::parse(&text).unwrap_err();
    assert!(
        err.to_string()
            .contains("reconcile.kafka.properties.sasl.password"),
        "{err}"
    );
    // Resolved secrets print as ***.
    let secret = offload_cli::config::EnvVar("OFFLOAD_TEST_SECRET_VALUE".into());
    // SAFETY: this test binary's only writer of this variable.
    unsafe { std::env::set_var("OFFLOAD_TEST_SECRET_VALUE", "hunter2") };
    let s = secret.secret("k").unwrap();
    assert_eq!(s.expose(), "hunter2");
    assert_eq!(format!("{s:?}"), "***");
}

#[test]
fn bad_files_are_typed_errors_that_say_where() {
    let cases: &[(&str, &str)] = &[
        (
            &GOOD.replace("interval = \"30s\"", "interval = \"30 parsecs\""),
            "engine.interval",
        ),
        (&GOOD.replace("lag = \"5m\"", "lagg = \"5m\""), "lagg"),
        (
            &GOOD.replace("transform = \"hour\"", "transform = \"bucket[0]\""),
            "tables[0].partition[0].transform",
        ),
        (&GOOD.replace("kind = \"file\"", "kind = \"etcd\""), "etcd"),
        (
            &GOOD.replace("sequence_number", "exchange_timestamp"),
            "sequence_column",
        ),
        (
            &GOOD.replace("[engine]", "[engine]\nconcurrency = 0"),
            "engine.concurrency",
        ),
        (
            &GOOD.replace("[engine]", "[retry]\nattempts = 0\n[engine]"),
            "retry.attempts",
        ),
        (
            &GOOD.replace("[engine]", "[timeouts]\nstore = \"0s\"\n[engine]"),
            "timeouts.store",
        ),
        (
            &GOOD.replace("[store]", "[iceberg.writer]\nzstd_level = 99\n[store]"),
            "iceberg.writer.zstd_level",
        ),
        (
            &GOOD.replace("[store]", "[iceberg.s3]\nregion = \"x\"\n[store]"),
            "iceberg.s3",
        ),
        (
            &GOOD.replace(
                "kind = \"file\"\npath = \"/tmp/wm\"",
                "kind = \"postgres\"\nschema = \"s\"",
            ),
            "store.url",
        ),
        (&GOOD[..GOOD.len() / 2], ""),
        (
            &format!(
                "{GOOD}\n[[tables]]\nname = \"bronze_trades\"\ntimestamp_column = \"a\"\nsequence_column = \"b\"\n"
            ),
            "duplicate",
        ),
        (&GOOD.replace("[[tables]]", "[[tablez]]"), "tablez"),
    ];
    for (text, needle) in cases {
        let err = Config::parse(text).expect_err(needle);
        assert!(
            matches!(
                err,
                ConfigError::Parse { .. } | ConfigError::Invalid { .. } | ConfigError::Table { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        assert!(err.to_string().starts_with("invalid configuration"), "{err}");
    }
}

#[test]
fn a_missing_password_variable_names_the_key() {
    let cfg = Config::parse(&GOOD.replace("OFFLOAD_TEST_CH_PASSWORD", "OFFLOAD_TEST_SURELY_UNSET")).unwrap();
    let err = cfg
        .clickhouse
        .password_env
        .as_ref()
        .unwrap()
        .secret("clickhouse.password_env")
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::MissingEnv { var, key } if var == "OFFLOAD_TEST_SURELY_UNSET" && key == "clickhouse.password_env"),
        "{err:?}"
    );
}

#[test]
fn key_columns_derive_the_sequence_column() {
    let derived = GOOD.replace(
        "sequence_column = \"sequence_number\"",
        "key_columns = [\"symbol\", \"trade_id\"]",
    );
    let cfg = Config::parse(&derived).unwrap();
    let t = &cfg.table_configs().unwrap()[0];
    assert_eq!(t.sequence_column(), "_offload_key");
    let keys = t
        .option::<ClickHouseTableOptions>()
        .and_then(|o| o.key_columns_list());
    assert_eq!(keys.unwrap(), ["symbol", "trade_id"]);
    // A named derived column.
    let named = derived.replace("lag = \"5m\"", "sequence_column = \"row_key\"\nlag = \"5m\"");
    let t = &Config::parse(&named).unwrap().table_configs().unwrap()[0];
    assert_eq!(t.sequence_column(), "row_key");
    assert!(
        t.option::<ClickHouseTableOptions>()
            .unwrap()
            .sequence_sql()
            .is_some()
    );
    // Neither: a typed error naming the key path.
    let neither = GOOD.replace("sequence_column = \"sequence_number\"\n", "");
    let err = Config::parse(&neither)
        .and_then(|c| c.table_configs())
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "tables[0].sequence_column"),
        "{err:?}"
    );
    assert!(err.to_string().contains("key_columns"), "{err}");
    // An empty key list names its key too.
    let empty = GOOD.replace("sequence_column = \"sequence_number\"", "key_columns = []");
    let err = Config::parse(&empty).and_then(|c| c.table_configs()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "tables[0].key_columns"),
        "{err:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Fuzz: whatever the bytes, parsing returns (never panics).
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = Config::parse(&text);
    }

    /// Fuzz: a valid file cut or corrupted at any point is an error or a valid config, never a panic.
    #[test]
    fn corrupted_files_never_panic(cut in 0..GOOD.len(), junk in "\\PC{0,8}") {
        let mut text = GOOD.to_owned();
        if text.is_char_boundary(cut) {
            text.insert_str(cut, &junk);
        }
        let _ = Config::parse(&text);
    }

    #[test]
    fn durations_round_trip(n in 0u64..1_000_000, unit in prop::sample::select(vec![("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)])) {
        let d: Dur = format!("{n}{}", unit.0).parse().unwrap();
        prop_assert_eq!(d.0.as_millis() as u64, n * unit.1);
    }

    #[test]
    fn duration_parser_never_panics(s in "\\PC{0,24}") {
        let _ = s.parse::<Dur>();
    }
}

#[test]
fn maintenance_defaults_are_the_sinks_and_run_maintains_hourly() {
    use offload_sink_iceberg::MaintenanceConfig;
    let cfg = Config::parse(GOOD).unwrap();
    assert_eq!(cfg.maintenance.interval.0.as_secs(), 3600);
    assert_eq!(
        cfg.maintenance.run_interval(),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(cfg.orphan_grace(), None);
    assert_eq!(
        format!("{:?}", offload_cli::app::maintenance_config(&cfg).unwrap()),
        format!("{:?}", MaintenanceConfig::default())
    );
    let never = Config::parse(&format!("{GOOD}\n[maintenance]\ninterval = \"0s\"\n")).unwrap();
    assert_eq!(never.maintenance.run_interval(), None, "\"0s\": never inside run");
}

#[test]
fn every_maintenance_key_reaches_the_sink() {
    use std::time::Duration;

    use offload_sink_iceberg::MaintenanceConfig;
    let text = GOOD.replace(
        "[store]",
        "[maintenance]\ninterval = \"10m\"\ntarget_file_size = \"64MiB\"\nmin_input_files = 3\n\
         compact_open = true\nmanifest_entries = 500\nmax_manifests = 8\nsnapshot_retention = \"6h\"\n\
         keep_snapshots = 4\ndelete_grace = \"30m\"\norphan_grace = \"2h\"\nkeep_metadata_files = 7\n\
         max_commit_attempts = 9\n[store]",
    );
    let cfg = Config::parse(&text).unwrap();
    assert_eq!(cfg.maintenance.run_interval(), Some(Duration::from_secs(600)));
    let expected = MaintenanceConfig::default()
        .target_file_size(64 << 20)
        .min_input_files(3)
        .compact_open(true)
        .manifest_entries(500)
        .max_manifests(8)
        .snapshot_retention(Duration::from_secs(6 * 3600))
        .keep_snapshots(4)
        .delete_grace(Duration::from_secs(1800))
        .orphan_grace(Duration::from_secs(7200))
        .keep_metadata_files(7)
        .max_commit_attempts(9);
    let got = offload_cli::app::maintenance_config(&cfg).unwrap();
    assert_eq!(format!("{got:?}"), format!("{expected:?}"));
    assert_ne!(format!("{got:?}"), format!("{:?}", MaintenanceConfig::default()));
    // And it is the sink's maintenance configuration.
    let sink = offload_cli::app::sink_config(&cfg).unwrap();
    assert!(format!("{sink:?}").contains(&format!("{expected:?}")), "{sink:?}");
    // A byte size may also be a plain number of bytes.
    let bytes = Config::parse(&text.replace("\"64MiB\"", "1048576")).unwrap();
    assert_eq!(bytes.maintenance.target_file_size.unwrap().0, 1 << 20);
}

#[test]
fn maintenance_orphan_grace_wins_over_its_writer_alias() {
    let section = |writer: &str, maintenance: &str| {
        let text = GOOD.replace(
            "[store]",
            &format!("[iceberg.writer]\n{writer}\n[maintenance]\n{maintenance}\n[store]"),
        );
        let cfg = Config::parse(&text).unwrap();
        let sink = format!("{:?}", offload_cli::app::sink_config(&cfg).unwrap());
        (cfg.orphan_grace().map(|d| d.0.as_secs()), sink)
    };
    let (alias, sink) = section("orphan_grace = \"2h\"", "");
    assert_eq!(alias, Some(7200), "the writer key alone still counts");
    assert!(sink.contains("orphan_grace: 7200s"), "{sink}");
    let (both, sink) = section("orphan_grace = \"2h\"", "orphan_grace = \"3h\"");
    assert_eq!(both, Some(3 * 3600));
    assert!(
        sink.contains("orphan_grace: 10800s") && !sink.contains("7200s"),
        "{sink}"
    );
    let (only, _) = section("", "orphan_grace = \"5m\"");
    assert_eq!(only, Some(300));
}

#[test]
fn bad_maintenance_values_are_typed_errors_that_say_where() {
    let with = |keys: &str| GOOD.replace("[store]", &format!("[maintenance]\n{keys}\n[store]"));
    for (text, needle) in [
        (with("compaction = true"), "compaction"),
        (with("interval = \"soon\""), "maintenance.interval"),
        (
            with("target_file_size = \"256MB\""),
            "maintenance.target_file_size",
        ),
        (with("target_file_size = 0"), "maintenance.target_file_size"),
        (with("target_file_size = -5"), "maintenance.target_file_size"),
        (with("min_input_files = 1"), "maintenance.min_input_files"),
        (with("keep_snapshots = 0"), "maintenance.keep_snapshots"),
        (with("keep_metadata_files = 0"), "maintenance.keep_metadata_files"),
        (with("max_commit_attempts = 0"), "maintenance.max_commit_attempts"),
        (with("manifest_entries = 0"), "maintenance.manifest_entries"),
        (with("max_manifests = 0"), "maintenance.max_manifests"),
        (with("delete_grace = 5"), "maintenance.delete_grace"),
        (with("compact_open = \"yes\""), "maintenance.compact_open"),
    ] {
        let err = Config::parse(&text).expect_err(needle);
        assert!(
            matches!(err, ConfigError::Parse { .. } | ConfigError::Invalid { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
    }
}
