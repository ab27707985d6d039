//! The examples offered as code to copy pass the same conformance suites as
//! the shipped adapters: `trade_buffer::TradeBuffer` offload-core's source
//! suite, `ipc_sink::IpcDirSink` its sink suite (racing commits included).

use std::sync::Arc;
use std::time::SystemTime;

use arrow_ipc::reader::FileReader;
use async_trait::async_trait;
use offload_core::conformance::sink::SinkFixture;
use offload_core::conformance::source::{SourceFixture, TableSpec};
use offload_core::{Error, Sink, Source, TableConfig};
use offload_examples::ipc_sink::IpcDirSink;
use offload_examples::trade_buffer::TradeBuffer;

/// A fresh [`TradeBuffer`] per check.
struct BufferFixture(TradeBuffer);

#[async_trait]
impl SourceFixture for BufferFixture {
    fn source(&self) -> Arc<dyn Source> {
        Arc::new(self.0.clone())
    }

    async fn create_table(&self, spec: &TableSpec) -> Result<TableConfig, Error> {
        TableConfig::builder(&spec.name)
            .timestamp_column("ts")
            .sequence_column("seq")
            .lag(spec.lag)
            .batch_size(spec.batch_size)
            .build()
    }

    async fn insert(&self, _: &TableConfig, rows: &[(i64, u64)]) -> Result<(), Error> {
        self.0
            .extend(rows.iter().map(|&(ts, seq)| (ts, seq, seq as i64 * 100)));
        Ok(())
    }

    async fn now(&self) -> Result<SystemTime, Error> {
        Ok(SystemTime::now())
    }
}

async fn fresh_buffer() -> BufferFixture {
    BufferFixture(TradeBuffer::default())
}

offload_core::source_conformance_tests!(fresh_buffer);

/// A fresh directory per check; committed rows read back from the IPC files
/// the commits point at, independently of the sink.
struct DirFixture {
    dir: tempfile::TempDir,
}

#[async_trait]
impl SinkFixture for DirFixture {
    fn sink(&self) -> Arc<dyn Sink> {
        // "Reopening" is a new sink over the same directory.
        Arc::new(IpcDirSink::new(self.dir.path()))
    }

    async fn create_table(&self, name: &str) -> Result<TableConfig, Error> {
        TableConfig::builder(name)
            .timestamp_column("ts")
            .sequence_column("seq")
            .build()
    }

    async fn committed_rows(&self, table: &TableConfig) -> Result<Vec<(i64, u64)>, Error> {
        let mut rows = Vec::new();
        for commit in IpcDirSink::new(self.dir.path()).commits(table)? {
            let file = std::fs::File::open(&commit.file).map_err(|e| Error::sink(e, false))?;
            for batch in FileReader::try_new(file, None).map_err(|e| Error::sink(e, false))? {
                let batch = batch.map_err(|e| Error::sink(e, false))?;
                rows.extend(
                    offload_core::conformance::positions(table, &batch).map_err(|e| Error::sink(e, false))?,
                );
            }
        }
        Ok(rows)
    }
}

async fn fresh_dir() -> DirFixture {
    DirFixture {
        dir: tempfile::tempdir().expect("a temporary directory"),
    }
}

offload_core::sink_conformance_tests!(fresh_dir);
