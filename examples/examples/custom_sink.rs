//! A custom `Sink` in under 80 lines: Arrow IPC files in a directory, committed
//! by one atomic `rename` whose target name carries the window. Crash anywhere:
//! a file is either fully in `data/` (committed, with its watermark) or not.
//!
//! Run: `cargo run -p offload-examples --example custom_sink`

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ipc::writer::FileWriter;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use offload_core::memory::{MemorySource, MemoryStore};
use offload_core::{
    CommitMetadata, CommittedWindow, Error, Offloader, RunId, Sink, Staged, StagingWriter, SystemClock,
    TableConfig, Watermark,
};

#[derive(Debug)]
struct IpcDirSink(PathBuf);

struct IpcWriter(FileWriter<std::fs::File>, PathBuf, RunId, u64);

fn io(e: impl Into<offload_core::BoxError>) -> Error {
    Error::sink(e, false)
}

impl IpcDirSink {
    /// Committed files are named `<until>~<run id>.arrow`; the largest `until` is the watermark.
    fn committed_files(&self) -> Result<Vec<(Watermark, RunId)>, Error> {
        let data = self.0.join("data");
        std::fs::create_dir_all(&data).map_err(io)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(data).map_err(io)? {
            let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
            if let Some((w, r)) = name.trim_end_matches(".arrow").split_once('~') {
                out.push((w.parse()?, r.parse()?));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl StagingWriter for IpcWriter {
    async fn write(&mut self, b: RecordBatch) -> Result<(), Error> {
        self.3 += b.num_rows() as u64;
        self.0.write(&b).map_err(io)
    }
    async fn finish(mut self: Box<Self>) -> Result<Staged, Error> {
        self.0.finish().map_err(io)?;
        Ok(Staged::new(
            self.2,
            self.3,
            0,
            vec![self.1.display().to_string()],
            self.1.clone(),
        ))
    }
    async fn abort(self: Box<Self>) -> Result<(), Error> {
        std::fs::remove_file(&self.1).map_err(io)
    }
}

#[async_trait]
impl Sink for IpcDirSink {
    async fn prepare(&self, _: &TableConfig, _: SchemaRef) -> Result<(), Error> {
        std::fs::create_dir_all(self.0.join("staging")).map_err(io)
    }
    async fn begin(
        &self,
        _: &TableConfig,
        run: RunId,
        s: SchemaRef,
    ) -> Result<Box<dyn StagingWriter>, Error> {
        let path = self.0.join("staging").join(format!("{run}.arrow"));
        let file = std::fs::File::create(&path).map_err(io)?;
        Ok(Box::new(IpcWriter(
            FileWriter::try_new(file, &s).map_err(io)?,
            path,
            run,
            0,
        )))
    }
    // Single writer per directory: the check and the rename are not one atomic step across processes.
    async fn commit(&self, t: &TableConfig, s: &Staged, m: &CommitMetadata) -> Result<(), Error> {
        let found = self.committed(t).await?.map(|c| c.until);
        if found.unwrap_or(Watermark::MIN) != m.window.after() {
            return Err(Error::CommitConflict {
                table: t.name().into(),
                expected: m.window.after(),
                found,
            });
        }
        let target = self
            .0
            .join("data")
            .join(format!("{}~{}.arrow", m.window.until(), m.run_id));
        std::fs::rename(s.payload::<PathBuf>().expect("our payload"), target).map_err(io)
    }
    async fn abort(&self, _: &TableConfig, s: Staged) -> Result<(), Error> {
        std::fs::remove_file(s.payload::<PathBuf>().expect("our payload")).map_err(io)
    }
    async fn committed(&self, _: &TableConfig) -> Result<Option<CommittedWindow>, Error> {
        let last = self.committed_files()?.into_iter().max();
        Ok(last.map(|(until, r)| CommittedWindow {
            until,
            run_id: Some(r),
            engine_id: None,
            fencing_token: None,
        }))
    }
    async fn was_committed(&self, _: &TableConfig, run: RunId) -> Result<bool, Error> {
        Ok(self.committed_files()?.iter().any(|(_, r)| *r == run))
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("offload-ipc-{}", RunId::new()));
    let source = Arc::new(MemorySource::new(SystemClock));
    source.insert("trades", &[(1_000, 1, 10), (1_000, 2, 11), (2_000, 1, 12)]);
    let sink = Arc::new(IpcDirSink(dir.clone()));
    let engine = Offloader::builder(source, sink, Arc::new(MemoryStore::new(SystemClock))).build()?;
    let table = TableConfig::builder("trades")
        .timestamp_column("ts")
        .sequence_column("seq")
        .build()?;
    let run = engine.run_once(&table).await?;
    println!("committed {} rows to {}", run.rows, dir.join("data").display());
    assert_eq!(run.rows, 3);
    assert_eq!(engine.run_once(&table).await?.rows, 0, "nothing twice");
    Ok(())
}
