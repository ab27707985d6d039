//! The defaults a user gets are the tuned configuration: window queries ask
//! ClickHouse for blocks of the batch size (unless the user sized blocks
//! themselves), and `Compression::Auto` sends nothing compressed to a
//! loopback server while LZ4 stays available.

mod common;

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use arrow_ipc::reader::StreamReader;
use common::{TestDb, everything, open, positions, read_all};
use offload_core::{SourceTable, TableConfig};
use offload_source_clickhouse::{ClickHouseSource, ClickHouseTable, Compression};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROWS: u64 = 200_000;
/// Two granules of the default `index_granularity` (8,192): MergeTree sends
/// whole granules, so `max_block_size` gives blocks of exactly the batch size
/// only for a multiple of the granule (the default 65,536 is eight).
const BATCH: usize = 16_384;

/// `rows` narrow rows in one part: with ClickHouse's byte-based default
/// (`preferred_block_size_bytes` = 1 MB) such rows come in blocks far larger
/// than `BATCH`, so the block settings are what makes blocks of `BATCH`.
fn narrow_table(db: &TestDb, rows: u64) {
    db.query(&format!(
        "CREATE TABLE `{}`.events (ts DateTime64(3, 'UTC'), seq UInt64, v Int32) \
         ENGINE = MergeTree ORDER BY (ts, seq)",
        db.name
    ));
    db.query(&format!(
        "INSERT INTO `{}`.events SELECT fromUnixTimestamp64Milli(toInt64(1767225600000 + number), 'UTC'), \
         number, toInt32(number % 1000) FROM numbers({rows})",
        db.name
    ));
    db.query(&format!("OPTIMIZE TABLE `{}`.events FINAL", db.name));
}

fn events(batch_size: usize) -> TableConfig {
    TableConfig::builder("events")
        .timestamp_column("ts")
        .sequence_column("seq")
        .batch_size(batch_size)
        .build()
        .unwrap()
}

/// The rows of each block ClickHouse sends for the whole-table window, with
/// exactly the settings the table's reads send (the source's own settings
/// ride on its client).
async fn block_rows(source: &ClickHouseSource, table: &ClickHouseTable) -> Vec<usize> {
    let mut query = source.client().query_raw(&table.window_sql(everything()));
    for (name, value) in table.window_settings() {
        query = query.with_setting(name, value);
    }
    let body = query.fetch_bytes("ArrowStream").unwrap().collect().await.unwrap();
    StreamReader::try_new(Cursor::new(body), None)
        .unwrap()
        .map(|batch| batch.unwrap().num_rows())
        .collect()
}

/// What one proxied connection carried, both ways.
#[derive(Default)]
struct Wire {
    requests: Vec<u8>,
    responses: Vec<u8>,
}

impl Wire {
    fn requests(&self) -> String {
        String::from_utf8_lossy(&self.requests).to_ascii_lowercase()
    }

    fn responses(&self) -> String {
        String::from_utf8_lossy(&self.responses).to_ascii_lowercase()
    }
}

/// A TCP proxy to the front on 127.0.0.1 that records every byte either way.
async fn recording_proxy(front: &str) -> (String, Arc<Mutex<Wire>>) {
    let upstream = front.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Arc::new(Mutex::new(Wire::default()));
    let recorded = wire.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, recorded.clone(), true));
            tokio::spawn(pipe(sr, cw, recorded.clone(), false));
        }
    });
    (format!("http://{addr}"), wire)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    wire: Arc<Mutex<Wire>>,
    requests: bool,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut wire = wire.lock().unwrap();
            let log = if requests {
                &mut wire.requests
            } else {
                &mut wire.responses
            };
            log.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_queries_ask_for_blocks_of_the_batch_size() {
    let db = TestDb::new("blocks");
    narrow_table(&db, ROWS);
    let source = db.source().build().unwrap();
    let table = open(&source, &events(BATCH)).await;
    let settings = table.window_settings();
    assert!(
        settings.contains(&("max_block_size", BATCH.to_string()))
            && settings.contains(&("preferred_block_size_bytes", "0".to_owned())),
        "{settings:?}"
    );

    // ClickHouse then sends blocks of exactly the batch size, which the
    // stream passes on as they are (the part's tail may come as one odd block).
    let blocks = block_rows(&source, &table).await;
    assert_eq!(blocks.iter().sum::<usize>(), ROWS as usize);
    let full = |blocks: &[usize]| blocks.iter().filter(|&&rows| rows == BATCH).sum::<usize>();
    assert!(
        full(&blocks) * 10 >= ROWS as usize * 8,
        "most rows in blocks of the batch size: {blocks:?}"
    );

    // Without the block settings the same query comes in other blocks: the
    // settings, not the table, make the blocks above.
    let mut query = source.client().query_raw(&table.window_sql(everything()));
    for (name, value) in offload_source_clickhouse::ArrowStreamDecoder::server_settings() {
        query = query.with_setting(*name, *value);
    }
    let body = query.fetch_bytes("ArrowStream").unwrap().collect().await.unwrap();
    let plain: Vec<usize> = StreamReader::try_new(Cursor::new(body), None)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .collect();
    assert_eq!(plain.iter().sum::<usize>(), ROWS as usize);
    assert!(
        full(&plain) * 10 < ROWS as usize * 8,
        "ClickHouse's own blocks: {plain:?}"
    );

    // read() itself sends them: what goes over the wire for a window.
    let (url, wire) = recording_proxy(db.url()).await;
    let proxied = ClickHouseSource::builder(url).database(&db.name).build().unwrap();
    let handle = open(&proxied, &events(BATCH)).await;
    let batches = read_all(&handle, everything()).await;
    assert_eq!(positions(handle.config(), &batches).len(), ROWS as usize);
    let requests = wire.lock().unwrap().requests();
    assert!(
        requests.contains(&format!("max_block_size={BATCH}")),
        "{requests}"
    );
    assert!(requests.contains("preferred_block_size_bytes=0"), "{requests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_setting_of_the_user_wins() {
    let db = TestDb::new("user_blocks");
    narrow_table(&db, 20_000);
    for (name, value) in [("max_block_size", "3000"), ("preferred_block_size_bytes", "4096")] {
        let (url, wire) = recording_proxy(db.url()).await;
        let source = ClickHouseSource::builder(url)
            .database(&db.name)
            .setting(name, value)
            .build()
            .unwrap();
        let table = open(&source, &events(BATCH)).await;
        let settings = table.window_settings();
        assert!(
            settings.iter().all(|(n, _)| !n.contains("block_size")),
            "{name}: the source adds no block setting of its own: {settings:?}"
        );
        let blocks = block_rows(&source, &table).await;
        assert_eq!(blocks.iter().sum::<usize>(), 20_000);
        assert!(blocks.iter().all(|&rows| rows < BATCH), "{name}: {blocks:?}");
        // The reads return batches of the batch size all the same (re-cut).
        let batches = read_all(&table, everything()).await;
        assert_eq!(batches[0].num_rows(), BATCH, "{name}");
        let requests = wire.lock().unwrap().requests();
        assert!(requests.contains(&format!("{name}={value}")), "{requests}");
        let other = if name == "max_block_size" {
            "preferred_block_size_bytes"
        } else {
            "max_block_size"
        };
        assert!(!requests.contains(other), "{name}: {requests}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compression_is_none_on_loopback_and_lz4_stays_available() {
    let db = TestDb::new("wire");
    narrow_table(&db, 20_000);
    let table = events(BATCH);
    let mut read = Vec::new();
    for (choice, want) in [
        (None, Compression::None),
        (Some(Compression::Auto), Compression::None),
        #[cfg(feature = "lz4")]
        (Some(Compression::Lz4), Compression::Lz4),
        (Some(Compression::None), Compression::None),
    ] {
        // The proxy listens on 127.0.0.1: a loopback URL like the front's.
        let (url, wire) = recording_proxy(db.url()).await;
        let mut builder = ClickHouseSource::builder(url).database(&db.name);
        if let Some(choice) = choice {
            builder = builder.compression(choice);
        }
        let source = builder.build().unwrap();
        assert_eq!(source.compression(), want, "{choice:?}");
        assert!(format!("{source:?}").contains(&format!("compression: {want:?}")));
        let handle = open(&source, &table).await;
        let rows = positions(&table, &read_all(&handle, everything()).await);
        assert_eq!(rows.len(), 20_000, "{choice:?}");
        read.push(rows);

        let wire = wire.lock().unwrap();
        let (requests, responses) = (wire.requests(), wire.responses());
        let asked = requests
            .lines()
            .any(|l| l.starts_with("accept-encoding:") && l.contains("lz4"));
        let compressed = responses.contains("content-encoding: lz4");
        let lz4 = want != Compression::None;
        assert_eq!((asked, compressed), (lz4, lz4), "{choice:?}: {requests}");
    }
    assert!(
        read.windows(2).all(|w| w[0] == w[1]),
        "the same rows whatever the wire"
    );
}
