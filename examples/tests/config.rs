//! The configuration parser: every bad file is a typed error naming what is
//! wrong, arbitrary input never panics, and secrets never print.

use offload_examples::config::{Config, ConfigError, HumanDuration};
use proptest::prelude::*;

const GOOD: &str = r#"
interval = "30s"
[clickhouse]
url = "http://127.0.0.1:8123"
password = "hunter2"
[catalog]
uri = "sqlite:///tmp/c.db"
warehouse = "/tmp/wh"
[store]
kind = "file"
path = "/tmp/wm"
[[tables]]
name = "bronze_trades"
timestamp_column = "exchange_timestamp"
sequence_column = "sequence_number"
lag = "5m"
partition = "hour"
"#;

#[test]
fn a_good_file_parses_into_table_configs() {
    let cfg = Config::parse(GOOD).unwrap();
    let t = &cfg.table_configs().unwrap()[0];
    assert_eq!(t.sink_table(), "offload.bronze_trades");
    assert_eq!(t.lag().as_secs(), 300);
    assert_eq!(cfg.interval.0.as_secs(), 30);
}

#[test]
fn secrets_do_not_print() {
    let cfg = Config::parse(GOOD).unwrap();
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("***"));
}

#[test]
fn bad_files_are_typed_errors_that_say_where() {
    let cases: &[(&str, &str)] = &[
        (
            &GOOD.replace("interval = \"30s\"", "interval = \"30 parsecs\""),
            "interval",
        ),
        (&GOOD.replace("lag = \"5m\"", "lagg = \"5m\""), "lagg"),
        (
            &GOOD.replace("partition = \"hour\"", "partition = \"bucket:symbol:0\""),
            "partition",
        ),
        (&GOOD.replace("kind = \"file\"", "kind = \"etcd\""), "etcd"),
        (
            &GOOD.replace("sequence_number", "exchange_timestamp"),
            "sequence_column",
        ),
        (&GOOD[..GOOD.len() / 2], ""),
        (
            &format!(
                "{GOOD}\n[[tables]]\nname = \"bronze_trades\"\ntimestamp_column = \"a\"\nsequence_column = \"b\"\n"
            ),
            "duplicate",
        ),
    ];
    for (text, needle) in cases {
        let err = Config::parse(text).expect_err(needle);
        assert!(
            matches!(
                err,
                ConfigError::Parse(_) | ConfigError::Invalid { .. } | ConfigError::Table { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn password_env_must_be_set() {
    let text = GOOD.replace(
        "password = \"hunter2\"",
        "password_env = \"OFFLOAD_TEST_SURELY_UNSET\"",
    );
    let cfg = Config::parse(&text).unwrap();
    assert!(
        matches!(cfg.clickhouse.password(), Err(ConfigError::MissingEnv(v)) if v == "OFFLOAD_TEST_SURELY_UNSET")
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
        let d: HumanDuration = format!("{n}{}", unit.0).parse().unwrap();
        prop_assert_eq!(d.0.as_millis() as u64, n * unit.1);
    }

    #[test]
    fn duration_parser_never_panics(s in "\\PC{0,24}") {
        let _ = s.parse::<HumanDuration>();
    }
}
