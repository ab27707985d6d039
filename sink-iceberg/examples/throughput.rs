//! In-memory Arrow -> committed Iceberg throughput for a 10-column trades
//! table (SQLite catalog, local warehouse in a temp dir).
//!
//! ```text
//! cargo run --release -p offload-sink-iceberg --example throughput -- [rows] [writer_tasks] [zstd_level]
//! ```

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    BooleanArray, Decimal128Array, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, types::Int32Type,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use offload_core::{CommitMetadata, RunId, Sink, TableConfig, Watermark, Window};
use offload_sink_iceberg::{CatalogConfig, IcebergSink, IcebergSinkConfig};

const BATCH: usize = 131_072;

fn schema() -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seq", DataType::Int64, false),
        Field::new("symbol", dict.clone(), false),
        Field::new("exchange", dict, false),
        Field::new("side", DataType::Utf8, false),
        Field::new("price", DataType::Decimal128(18, 8), false),
        Field::new("qty", DataType::Decimal128(18, 8), false),
        Field::new("trade_id", DataType::Int64, false),
        Field::new("fee", DataType::Float64, true),
        Field::new("is_maker", DataType::Boolean, false),
    ]))
}

fn batch(schema: &SchemaRef, start: usize, n: usize) -> RecordBatch {
    const SYMBOLS: [&str; 8] = [
        "BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD", "DOT-USD", "AVAX-USD",
    ];
    let t0 = 1_709_251_200_000_000i64;
    let ids = start..start + n;
    let ts = TimestampMicrosecondArray::from_iter_values(ids.clone().map(|i| t0 + (i as i64) * 20))
        .with_timezone("UTC");
    let seq = Int64Array::from_iter_values(ids.clone().map(|i| i as i64));
    let symbol: DictionaryArray<Int32Type> = ids.clone().map(|i| SYMBOLS[(i * 7) % 8]).collect();
    let exchange: DictionaryArray<Int32Type> = ids.clone().map(|i| ["XNAS", "BATS"][i % 2]).collect();
    let side = StringArray::from_iter_values(ids.clone().map(|i| if i % 3 == 0 { "S" } else { "B" }));
    let price = Decimal128Array::from_iter_values(
        ids.clone()
            .map(|i| 6_500_000_000_000 + ((i * 7919) % 100_000) as i128),
    )
    .with_precision_and_scale(18, 8)
    .unwrap();
    let qty = Decimal128Array::from_iter_values(ids.clone().map(|i| ((i * 104_729) % 10_000_000) as i128))
        .with_precision_and_scale(18, 8)
        .unwrap();
    let trade_id = Int64Array::from_iter_values(ids.clone().map(|i| 10_000_000_000 + i as i64));
    let fee = Float64Array::from_iter(
        ids.clone()
            .map(|i| (i % 10 != 0).then_some((i % 1000) as f64 * 0.0001)),
    );
    let maker = BooleanArray::from_iter(ids.map(|i| Some(i % 2 == 0)));
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(ts),
            Arc::new(seq),
            Arc::new(symbol),
            Arc::new(exchange),
            Arc::new(side),
            Arc::new(price),
            Arc::new(qty),
            Arc::new(trade_id),
            Arc::new(fee),
            Arc::new(maker),
        ],
    )
    .unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(8_000_000), |a| a.parse())?;
    let tasks: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let level: i32 = args.next().map_or(Ok(3), |a| a.parse())?;

    let dir = tempfile::tempdir()?;
    let catalog = CatalogConfig::sqlite(
        dir.path().join("catalog.db"),
        dir.path().join("wh").to_str().unwrap(),
    );
    let sink = IcebergSink::connect(
        IcebergSinkConfig::new(catalog)
            .writer_tasks(tasks)
            .zstd_level(level),
    )
    .await?;
    let table = TableConfig::builder("trades")
        .sink_table("bench.trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()?;
    let schema = schema();
    let table = sink.open(&table).await?;
    table.prepare(schema.clone()).await?;
    let batches: Vec<RecordBatch> = (0..rows)
        .step_by(BATCH)
        .map(|s| batch(&schema, s, BATCH.min(rows - s)))
        .collect();

    let started = Instant::now();
    let run_id = RunId::new();
    let mut writer = table.begin(run_id, schema.clone()).await?;
    for b in batches {
        writer.write(b).await?;
    }
    let staged = writer.finish().await?;
    let encoded = started.elapsed();
    let until = Watermark::new(1_709_251_200_000_000 + (rows as i64 - 1) * 20, rows as u64 - 1);
    let meta = CommitMetadata {
        window: Window::new(Watermark::MIN, until)?,
        run_id,
        engine_id: "bench".into(),
        fencing_token: 1,
    };
    staged.commit(&meta).await?;
    let total = started.elapsed();
    println!(
        "{rows} rows, {} files, {:.1} MiB, tasks={tasks}, zstd={level}: staged in {:.2?}, committed in {:.2?} -> {:.2} M rows/s",
        staged.stats().files.len(),
        staged.stats().bytes as f64 / (1 << 20) as f64,
        encoded,
        total,
        rows as f64 / total.as_secs_f64() / 1e6
    );
    Ok(())
}
