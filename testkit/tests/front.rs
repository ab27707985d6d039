//! The ClickHouse fixture works end to end (std only; needs the test venv).

use offload_testkit::ClickHouseFront;

#[test]
fn select_one() {
    let ch = ClickHouseFront::start();
    assert!(ch.url().starts_with("http://"), "{}", ch.url());
    assert_eq!(ch.query("SELECT 1"), "1\n");
}

#[test]
fn merge_tree_round_trip() {
    let ch = ClickHouseFront::start();
    ch.query("DROP TABLE IF EXISTS rt"); // CLICKHOUSE_URL servers are shared and reused
    ch.query("CREATE TABLE rt (id UInt64, s String) ENGINE = MergeTree ORDER BY id");
    ch.query("INSERT INTO rt SELECT number, toString(number) FROM numbers(1000)");
    assert_eq!(
        ch.query("SELECT count(), sum(id), max(s) FROM rt"),
        "1000\t499500\t999\n"
    );
    if let Some(dir) = ch.data_dir() {
        assert!(dir.is_dir(), "{}", dir.display());
    }
}

#[test]
fn streamed_result_and_format_clause() {
    let ch = ClickHouseFront::start();
    // big enough to come back in several chdb chunks
    let body = ch.query("SELECT number FROM numbers(300000)");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 300_000);
    assert_eq!(lines[299_999], "299999");
    assert_eq!(ch.query("SELECT 1 AS x FORMAT JSONEachRow"), "{\"x\":1}\n");
}

#[test]
fn errors_panic_with_the_server_message() {
    let ch = ClickHouseFront::start();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ch.query("SELECT * FROM no_such_table")
    }))
    .expect_err("query on a missing table must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("Code: 60."), "{msg}");
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ch.query("SELECT throwIf(number = 250000) FROM numbers(300000) SETTINGS max_block_size = 10000")
    }))
    .expect_err("mid-stream exception must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("Code: 395."), "{msg}");
}

#[test]
fn drop_stops_the_front_and_removes_data() {
    if std::env::var_os("CLICKHOUSE_URL").is_some() {
        return; // nothing of ours to stop
    }
    let ch = ClickHouseFront::start();
    let addr = ch.url().trim_start_matches("http://").to_owned();
    let dir = ch.data_dir().expect("local front").to_path_buf();
    drop(ch);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "front still listening on {addr}"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}
