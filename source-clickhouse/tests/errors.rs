//! Hostile identifiers are refused (or quoted exactly), and every failure —
//! server exceptions before or during a response, broken connections,
//! timeouts — is a typed, classified error carrying the ClickHouse code.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, everything, open, read_all};
use futures::StreamExt;
use offload_core::layer::{Elapsed, Layered, Op, Timeout};
use offload_core::{Source, SourceTable, TableConfig};
use offload_source_clickhouse::{ClickHouseError, ClickHouseSource, ClickHouseTableOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn trades(db: &TestDb, rows: u64) {
    db.query(&format!(
        "CREATE TABLE `{}`.bronze_trades (exchange_timestamp DateTime64(3, 'UTC'), sequence_number UInt64, \
         symbol LowCardinality(String), price Decimal(18, 8), trade_conditions Array(String)) \
         ENGINE = MergeTree ORDER BY (exchange_timestamp, sequence_number)",
        db.name
    ));
    db.query(&format!(
        "INSERT INTO `{}`.bronze_trades SELECT fromUnixTimestamp64Milli(toInt64(1767225600000 + intDiv(number, 10))), \
         number, 'BTC-USD', CAST(number AS Decimal(18, 8)), ['a', 'b'] FROM numbers({rows})",
        db.name
    ));
}

fn config() -> TableConfig {
    TableConfig::builder("bronze_trades")
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .batch_size(1000)
        .build()
        .unwrap()
}

/// [`config`] with an extra filter.
fn filtered(filter: impl Into<String>) -> TableConfig {
    TableConfig::builder("bronze_trades")
        .timestamp_column("exchange_timestamp")
        .sequence_column("sequence_number")
        .batch_size(1000)
        .option(ClickHouseTableOptions::new().filter(filter))
        .build()
        .unwrap()
}

/// The crate's error inside the engine error, with the engine's `retryable` flag.
fn inner(err: &offload_core::Error) -> (&ClickHouseError, bool) {
    let offload_core::Error::Source { source, retryable } = err else {
        panic!("not a source error: {err:?}")
    };
    let e = source
        .downcast_ref::<ClickHouseError>()
        .unwrap_or_else(|| panic!("not a ClickHouseError: {source:?}"));
    assert_eq!(e.is_retryable(), *retryable);
    (e, *retryable)
}

/// Reads the window and returns (batches before the error, the error).
async fn read_until_error(table: &(impl SourceTable + ?Sized)) -> (usize, offload_core::Error) {
    let mut stream = match table.read(everything()).await {
        Ok(s) => s,
        Err(e) => return (0, e),
    };
    let mut batches = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => batches += 1,
            Err(e) => {
                assert!(stream.next().await.is_none(), "the stream ends after its error");
                return (batches, e);
            }
        }
    }
    panic!("the read succeeded ({batches} batches) but must fail")
}

/// The operation whose deadline elapsed, from core's Timeout layer: a
/// retryable source error.
fn elapsed_op(err: &offload_core::Error) -> Op {
    let offload_core::Error::Source {
        source,
        retryable: true,
    } = err
    else {
        panic!("not a retryable source error: {err:?}")
    };
    source
        .downcast_ref::<Elapsed>()
        .unwrap_or_else(|| panic!("not a deadline: {source:?}"))
        .op
}

fn server_code(err: &offload_core::Error) -> (i32, bool) {
    let (e, retryable) = inner(err);
    match e {
        ClickHouseError::Server { code, .. } => (*code, retryable),
        other => panic!("not a server error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_refused() {
    let db = TestDb::new("hostile");
    trades(&db, 100);
    let source = db.source().build().unwrap();
    let count = || db.query(&format!("SELECT count() FROM `{}`.bronze_trades", db.name));

    let with_table = |t: &str| {
        TableConfig::builder("x")
            .source_table(t)
            .timestamp_column("exchange_timestamp")
            .sequence_column("sequence_number")
            .build()
            .unwrap()
    };
    // Malformed references never reach SQL.
    for t in [
        "bronze_trades`; DROP TABLE bronze_trades; --",
        "`x`; DROP DATABASE d; --",
        "a.b.c",
    ] {
        let err = source.open(&with_table(t)).await.unwrap_err();
        assert!(
            matches!(
                inner(&err),
                (ClickHouseError::InvalidIdentifier { what: "table", .. }, false)
            ),
            "{t}: {err:?}"
        );
    }
    // Well-formed but hostile names are looked up as bound values: no such table.
    for t in [
        "`bronze_trades\\`; DROP TABLE bronze_trades; --`",
        "bronze_trades' OR '1'='1",
        "`x'); DROP TABLE bronze_trades; --`.bronze_trades",
    ] {
        let err = source.open(&with_table(t)).await.unwrap_err();
        assert!(
            matches!(inner(&err), (ClickHouseError::TableNotFound { .. }, false)),
            "{t}: {err:?}"
        );
    }
    // A hostile default database travels as a URL parameter, never as SQL.
    let evil_db = ClickHouseSource::builder(db.url())
        .database("default`; DROP TABLE x; --")
        .build()
        .unwrap();
    let err = evil_db.open(&with_table("bronze_trades")).await.unwrap_err();
    assert_eq!(server_code(&err), (81, false), "UNKNOWN_DATABASE: {err}");

    // Column names must be columns of the table.
    for (ts, seq, cols) in [
        ("exchange_timestamp`, (SELECT 1) AS `x", "sequence_number", None),
        ("exchange_timestamp", "sequence_number) OR 1=1 --", None),
        (
            "exchange_timestamp",
            "sequence_number",
            Some("price` FROM system.one --"),
        ),
    ] {
        let mut b = TableConfig::builder("bronze_trades")
            .timestamp_column(ts)
            .sequence_column(seq);
        if let Some(c) = cols {
            b = b.columns([c]);
        }
        let err = source.open(&b.build().unwrap()).await.unwrap_err();
        assert!(
            matches!(inner(&err), (ClickHouseError::ColumnNotFound { .. }, false)),
            "{err:?}"
        );
    }
    // A filter cannot break out of its parentheses: refused by open, before any query.
    for filter in ["1) OR (1", "1 = 1; DROP TABLE bronze_trades", "1 -- comment"] {
        let err = source.open(&filtered(filter)).await.unwrap_err();
        assert!(
            matches!(
                inner(&err),
                (ClickHouseError::InvalidConfig { field: "filter", .. }, false)
            ),
            "{filter}: {err:?}"
        );
    }
    assert_eq!(count().trim(), "100", "nothing was dropped");

    // Odd but legal names are quoted exactly: backticks, backslashes, quotes, dots.
    let table = "we`ird\\na'me; DROP.t";
    let (ts, seq) = ("t`s", "s\\eq");
    let q = |s: &str| format!("`{}`", s.replace('\\', "\\\\").replace('`', "\\`"));
    db.query(&format!(
        "CREATE TABLE `{}`.{} ({} DateTime64(3, 'UTC'), {} UInt64, {} String) ENGINE = MergeTree ORDER BY ({}, {})",
        db.name,
        q(table),
        q(ts),
        q(seq),
        q("v'al"),
        q(ts),
        q(seq)
    ));
    db.query(&format!(
        "INSERT INTO `{}`.{} SELECT now64(3) - INTERVAL 1 HOUR, number, 'x' FROM numbers(5)",
        db.name,
        q(table)
    ));
    let odd = TableConfig::builder("odd")
        // ClickHouse quoting rules: `\` and `` \` `` (or ``` `` ```) inside backticks.
        .source_table(format!("{}.{}", db.name, q(table)))
        .timestamp_column(ts)
        .sequence_column(seq)
        .build()
        .unwrap();
    let odd = open(&source, &odd).await;
    assert_eq!(odd.schema().field(2).name(), "v'al");
    let rows: usize = read_all(&odd, everything())
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 5);
    assert!(odd.high_watermark().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_typed_and_classified() {
    let db = TestDb::new("server");
    trades(&db, 200_000);
    let table = config();
    let source = db.source().build().unwrap();

    // Filters that fail on the server: type mismatch, syntax, unknown identifier.
    for (filter, code) in [
        ("sequence_number = 'x'", 53),
        ("price >", 62),
        ("no_such_column = 1", 47),
    ] {
        let table = open(&source, &filtered(filter)).await;
        let (_, err) = read_until_error(&table).await;
        assert_eq!(server_code(&err), (code, false), "{filter}: {err}");
        assert_eq!(err.kind(), "source");
    }

    // Resource limits are transient: retryable. (Whether the small metadata
    // queries already trip the limit depends on the server; the window does.)
    for (setting, value, code) in [
        ("max_memory_usage", "1", 241),
        ("max_execution_time", "0.000001", 159),
    ] {
        let source = db.source().setting(setting, value).build().unwrap();
        let err = match source.open(&table).await {
            Err(e) => e,
            Ok(t) => match t.high_watermark().await {
                Err(e) => e,
                Ok(_) => read_until_error(&*t).await.1,
            },
        };
        assert_eq!(server_code(&err), (code, true), "{setting}: {err}");
    }

    // An exception in the middle of the response, after batches were delivered.
    let last = 199_999;
    let single = db
        .source()
        .setting("max_threads", "1")
        .setting("max_block_size", "10000")
        .build()
        .unwrap();
    let throwing = open(
        &single,
        &filtered(format!("throwIf(sequence_number = {last}) = 0")),
    )
    .await;
    let (batches, err) = read_until_error(&throwing).await;
    assert!(batches > 0, "the exception should come mid-stream");
    assert_eq!(server_code(&err), (395, false), "{err}");

    // The table disappears between open() and read(): UNKNOWN_TABLE.
    let opened = open(&source, &table).await;
    db.query(&format!("DROP TABLE `{}`.bronze_trades", db.name));
    let (_, err) = read_until_error(&opened).await;
    assert_eq!(server_code(&err), (60, false), "{err}");
    let err = opened.high_watermark().await.unwrap_err();
    assert_eq!(server_code(&err), (60, false), "{err}");
    let err = source.open(&table).await.unwrap_err();
    assert!(
        matches!(inner(&err), (ClickHouseError::TableNotFound { .. }, false)),
        "{err:?}"
    );
}

/// A TCP proxy to the front that closes each connection once `limit` bytes of
/// response have passed: a connection lost in the middle of a response.
async fn cutting_proxy(front: &str, limit: usize) -> String {
    let upstream = front.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let requests = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut sent = 0;
                let mut buf = vec![0; 16 * 1024];
                while sent < limit {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n.min(limit - sent),
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                requests.abort();
                // Dropping both halves closes the client's connection.
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lost_mid_stream_is_retryable() {
    let db = TestDb::new("reset");
    trades(&db, 300_000);
    let url = cutting_proxy(db.url(), 256 * 1024).await;
    let source = ClickHouseSource::builder(url).database(&db.name).build().unwrap();
    let table = open(&source, &config()).await;
    let (batches, err) = read_until_error(&table).await;
    let (e, retryable) = inner(&err);
    assert!(retryable, "{err}");
    assert!(
        matches!(
            e,
            ClickHouseError::Transport(_) | ClickHouseError::Truncated { .. }
        ),
        "{e:?}"
    );
    assert!(
        batches < 300,
        "only part of the window arrived ({batches} batches)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_refused_connections_are_retryable() {
    // A server that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let table = config();
    // Deadlines per operation are core's Timeout layer around the source
    // (the source itself has none for metadata calls).
    let silent = ClickHouseSource::builder(format!("http://{addr}"))
        .build()
        .unwrap();
    let bounded = Layered::new(Timeout::new(Duration::from_millis(200)), silent);
    let started = Instant::now();
    let err = bounded.open(&table).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline bounded open: {:?}",
        started.elapsed()
    );
    assert_eq!(elapsed_op(&err), Op::SourceOpen, "{err:?}");

    // The read's idle timeout: schema from the real server, data from nowhere.
    // (A source pointed at the silent server cannot learn the schema, so read
    // through a proxy that forwards metadata but swallows the window query.)
    let db = TestDb::new("idle");
    trades(&db, 10);
    let url = swallowing_proxy(db.url(), "ArrowStream").await;
    let source = ClickHouseSource::builder(url)
        .database(&db.name)
        .stream_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let opened = open(&source, &table).await;
    let (_, err) = read_until_error(&opened).await;
    assert!(
        matches!(inner(&err), (ClickHouseError::Timeout { .. }, true)),
        "{err:?}"
    );

    // The handles a layered source opens are bounded too: a high watermark
    // whose server-clock query is never answered.
    let url = swallowing_proxy(db.url(), "now64").await;
    let layered = Layered::new(
        Timeout::new(Duration::from_secs(60)).op(Op::HighWatermark, Duration::from_millis(300)),
        ClickHouseSource::builder(url).database(&db.name).build().unwrap(),
    );
    let handle = layered.open(&table).await.unwrap();
    assert_eq!(handle.schema(), opened.schema());
    let err = handle.high_watermark().await.unwrap_err();
    assert_eq!(elapsed_op(&err), Op::HighWatermark, "{err:?}");

    // Nothing listening at all.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = ClickHouseSource::builder(format!("http://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let err = refused.open(&table).await.unwrap_err();
    assert!(
        matches!(inner(&err), (ClickHouseError::Transport(_), true)),
        "{err:?}"
    );
}

/// A proxy that forwards connections to the front, except that it stops
/// forwarding a connection's requests once one mentions `needle`: that
/// request is never answered. (Connections are reused, so this looks at
/// every piece the client sends rather than at the first request only.)
async fn swallowing_proxy(front: &str, needle: &'static str) -> String {
    let upstream = front.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let responses = tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
                let mut buf = vec![0; 64 * 1024];
                let mut swallowing = false;
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    swallowing |= String::from_utf8_lossy(&buf[..n]).contains(needle);
                    if !swallowing && sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                responses.abort();
            });
        }
    });
    format!("http://{addr}")
}
