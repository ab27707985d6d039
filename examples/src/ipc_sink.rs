//! A custom [`Sink`]: Arrow IPC files in a directory per table, each commit
//! one atomic, exclusive `rename(2)`. Used by `examples/custom_sink.rs`,
//! checked by offload-core's sink conformance suite (`tests/conformance.rs`),
//! racing commits included.
//!
//! Layout of a table `t` under the root:
//!
//! ```text
//! t/staging/<run id>/rows.arrow        a run being staged: invisible
//! t/data/<after>/rows.arrow + commit   a committed window, keyed by where it starts
//! ```
//!
//! The commit writes the window's metadata into the staging directory, then
//! renames the directory to `data/<after>`. The rename is the commit point:
//! it is atomic (readers see all of the window or none), and exclusive, since
//! renaming onto an existing non-empty directory fails: of two runs staged
//! after the same watermark, one wins, across processes too. A run whose
//! window does not start at the committed watermark is refused first (the
//! fence); a crash anywhere leaves either a committed directory or a staging
//! one, which [`SinkTable::cleanup`] removes once it is older than the grace.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_ipc::writer::FileWriter;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use offload_core::{
    CommitMetadata, CommittedWindow, Error, RunId, Sink, SinkTable, Staged, StagedStats, StagingWriter,
    TableConfig, Watermark,
};

/// Arrow IPC tables under a root directory.
#[derive(Clone, Debug)]
pub struct IpcDirSink {
    root: PathBuf,
    grace: Duration,
}

impl IpcDirSink {
    /// Tables under `root`; cleanup spares staging younger than an hour.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            grace: Duration::from_secs(3600),
        }
    }

    /// Cleanup spares staging younger than `grace` (it may belong to a live run).
    pub fn orphan_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Every committed window of `table`, read from disk: `(after, until, run,
    /// data file)`, in no particular order. Readers need nothing else.
    pub fn commits(&self, table: &TableConfig) -> Result<Vec<Commit>, Error> {
        commits(&self.root.join(table.name()).join("data"))
    }
}

/// One committed window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Where the window starts (exclusive).
    pub after: Watermark,
    /// Where it ends (inclusive).
    pub until: Watermark,
    /// The run that committed it.
    pub run_id: RunId,
    /// Its rows.
    pub file: PathBuf,
}

fn io(e: impl Into<offload_core::BoxError>) -> Error {
    Error::sink(e, false)
}

fn commits(data: &Path) -> Result<Vec<Commit>, Error> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(data) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let dir = entry.map_err(io)?.path();
        let text = std::fs::read_to_string(dir.join("commit")).map_err(io)?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .ok_or_else(|| io(format!("{}: no {k}", dir.display())))
        };
        out.push(Commit {
            after: field("after=")?.parse()?,
            until: field("until=")?.parse()?,
            run_id: field("run=")?.parse()?,
            file: dir.join("rows.arrow"),
        });
    }
    Ok(out)
}

#[async_trait]
impl Sink for IpcDirSink {
    // Resolving a table costs nothing here: its directory is its name.
    async fn open(&self, t: &TableConfig) -> Result<Arc<dyn SinkTable>, Error> {
        let dir = self.root.join(t.name());
        Ok(Arc::new(IpcTable(Arc::new(TableDir {
            staging: dir.join("staging"),
            data: dir.join("data"),
            config: t.clone(),
            grace: self.grace,
        }))))
    }
}

#[derive(Debug)]
struct TableDir {
    staging: PathBuf,
    data: PathBuf,
    config: TableConfig,
    grace: Duration,
}

impl TableDir {
    fn committed(&self) -> Result<Option<Watermark>, Error> {
        Ok(commits(&self.data)?.into_iter().map(|c| c.until).max())
    }
}

/// One opened table.
#[derive(Debug)]
struct IpcTable(Arc<TableDir>);

#[async_trait]
impl SinkTable for IpcTable {
    fn config(&self) -> &TableConfig {
        &self.0.config
    }

    async fn prepare(&self, _: SchemaRef) -> Result<(), Error> {
        std::fs::create_dir_all(&self.0.staging).map_err(io)?;
        std::fs::create_dir_all(&self.0.data).map_err(io)
    }

    async fn begin(&self, run: RunId, schema: SchemaRef) -> Result<Box<dyn StagingWriter>, Error> {
        let dir = self.0.staging.join(run.to_string());
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = File::create(dir.join("rows.arrow")).map_err(io)?;
        Ok(Box::new(IpcWriter {
            writer: FileWriter::try_new(file, &schema).map_err(io)?,
            dir,
            run,
            rows: 0,
            table: self.0.clone(),
        }))
    }

    async fn committed(&self) -> Result<Option<CommittedWindow>, Error> {
        let last = commits(&self.0.data)?.into_iter().max_by_key(|c| c.until);
        Ok(last.map(|c| CommittedWindow {
            until: c.until,
            run_id: Some(c.run_id),
            engine_id: None,
            fencing_token: None,
        }))
    }

    async fn was_committed(&self, run: RunId) -> Result<bool, Error> {
        Ok(commits(&self.0.data)?.iter().any(|c| c.run_id == run))
    }

    // Staging older than the grace period belongs to no live run.
    async fn cleanup(&self) -> Result<u64, Error> {
        let Ok(entries) = std::fs::read_dir(&self.0.staging) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
            if age.is_ok_and(|a| a >= self.0.grace) {
                std::fs::remove_dir_all(entry.path()).map_err(io)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

struct IpcWriter {
    writer: FileWriter<File>,
    dir: PathBuf,
    run: RunId,
    rows: u64,
    table: Arc<TableDir>,
}

#[async_trait]
impl StagingWriter for IpcWriter {
    async fn write(&mut self, b: RecordBatch) -> Result<(), Error> {
        self.rows += b.num_rows() as u64;
        self.writer.write(&b).map_err(io)
    }

    async fn finish(mut self: Box<Self>) -> Result<Box<dyn Staged>, Error> {
        self.writer.finish().map_err(io)?;
        self.writer.get_ref().sync_all().map_err(io)?;
        let file = self.dir.join("rows.arrow");
        let bytes = std::fs::metadata(&file).map_err(io)?.len();
        Ok(Box::new(IpcStaged {
            stats: StagedStats::new(self.run, self.rows, bytes, vec![file.display().to_string()]),
            dir: self.dir,
            table: self.table,
        }))
    }

    async fn abort(self: Box<Self>) -> Result<(), Error> {
        std::fs::remove_dir_all(&self.dir).map_err(io)
    }
}

/// A staged run: its directory, bound to the table it was staged for.
#[derive(Debug)]
struct IpcStaged {
    stats: StagedStats,
    dir: PathBuf,
    table: Arc<TableDir>,
}

#[async_trait]
impl Staged for IpcStaged {
    fn stats(&self) -> &StagedStats {
        &self.stats
    }

    async fn commit(&self, m: &CommitMetadata) -> Result<(), Error> {
        let t = &self.table;
        let conflict = |found| Error::CommitConflict {
            table: t.config.name().into(),
            expected: m.window.after(),
            found,
        };
        // The fence: the window must start where the table ends.
        let found = t.committed()?;
        if found.unwrap_or(Watermark::MIN) != m.window.after() {
            return Err(conflict(found));
        }
        let meta = format!(
            "after={}\nuntil={}\nrun={}\nengine={}\ntoken={}\n",
            m.window.after(),
            m.window.until(),
            m.run_id,
            m.engine_id,
            m.fencing_token
        );
        std::fs::write(self.dir.join("commit"), meta).map_err(io)?;
        // The commit point: exclusive, so of two runs after the same watermark one wins.
        match std::fs::rename(&self.dir, t.data.join(m.window.after().to_string())) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists) => {
                std::fs::remove_file(self.dir.join("commit")).map_err(io)?;
                Err(conflict(t.committed()?))
            }
            // Already renamed by an earlier attempt of this very run: a retried commit.
            Err(e) if e.kind() == ErrorKind::NotFound => Err(conflict(t.committed()?)),
            Err(e) => Err(io(e)),
        }
    }

    async fn discard(self: Box<Self>) -> Result<(), Error> {
        if commits(&self.table.data)?
            .iter()
            .any(|c| c.run_id == self.stats.run_id)
        {
            return Err(io(format!(
                "refusing to discard run {}: it is committed to table {}",
                self.stats.run_id,
                self.table.config.name()
            )));
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }
}
