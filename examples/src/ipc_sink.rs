//! A custom [`Sink`]: Arrow IPC files in a directory per table, each commit
//! one atomic, exclusive `rename(2)`. Used by `examples/custom_sink.rs`,
//! checked by offload-core's sink conformance suite (`tests/conformance.rs`),
//! racing commits included.
//!
//! Layout of a table `t` under the root:
//!
//! ```text
//! t/staging/<run id>/rows.arrow          a run being staged: invisible
//! t/data/<version>/rows.arrow + commit   commit number <version> (1, 2, ...): a window, or a repair
//! ```
//!
//! The table's version is its number of commits. A commit writes its metadata
//! into the staging directory, then renames the directory to
//! `data/<version + 1>`. The rename is the commit point: it is atomic (readers
//! see all of a commit or none), and exclusive, since renaming onto an
//! existing non-empty directory fails. Directories are never removed, so the
//! rename succeeds only if the table is still at the version the commit read:
//! a compare-and-set on the version, across processes too.
//!
//! * A **window** commit is fenced on the committed watermark: it is refused
//!   unless its window starts where the table ends. When it loses the rename
//!   to another commit it reads the table again and, if the fence still holds
//!   (the winner was a repair), takes the next number.
//! * A **repair** (late rows of the sweep, watermark unchanged) is fenced on
//!   the version itself: refused unless the table is still at `meta.base`,
//!   and a lost rename is a conflict, never retried onto a newer version.
//!
//! A crash anywhere leaves either a committed directory or a staging one,
//! which [`SinkTable::cleanup`] removes once it is older than the grace.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use offload_core::{
    CommitMetadata, CommittedWindow, Error, RepairMetadata, RunId, Sink, SinkTable, SinkVersion, Staged,
    StagedStats, StagingWriter, TableConfig, Watermark, Window, batch_positions,
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

    /// Every commit of `table` (windows and repairs), read from disk, in
    /// version order. Readers need nothing else: the table's rows are the
    /// rows of these files.
    pub fn commits(&self, table: &TableConfig) -> Result<Vec<Commit>, Error> {
        commits(&self.root.join(table.name()).join("data"))
    }
}

/// One commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The table version it created (1 for the first commit): its directory's name.
    pub version: u64,
    /// What it committed.
    pub kind: CommitKind,
    /// The run that committed it.
    pub run_id: RunId,
    /// The engine that ran it.
    pub engine_id: String,
    /// The store lease's fencing token it ran under.
    pub fencing_token: u64,
    /// Its rows.
    pub file: PathBuf,
}

/// A window, or a repair of late rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitKind {
    /// The rows of `(after, until]`; `until` became the committed watermark.
    Window {
        /// Where the window starts (exclusive).
        after: Watermark,
        /// Where it ends (inclusive).
        until: Watermark,
    },
    /// Late rows below the committed watermark, which the repair left at `watermark`.
    Repair {
        /// The version the repair was computed against (this commit's version minus one).
        base: SinkVersion,
        /// The committed watermark, unchanged: every row of the repair is at or below it.
        watermark: Watermark,
        /// From the first repaired bucket's start to the last one's end, when
        /// the repair named its buckets: every row of the repair is inside.
        span: Option<Window>,
    },
}

impl Commit {
    fn window_until(&self) -> Option<Watermark> {
        match self.kind {
            CommitKind::Window { until, .. } => Some(until),
            CommitKind::Repair { .. } => None,
        }
    }

    /// Whether the commit may hold rows of `w` (from its bounds alone).
    fn may_hold(&self, w: Window) -> bool {
        // (a, u] and (w.after, w.until] meet iff a < w.until and w.after < u.
        let meets = |a: Watermark, u: Watermark| a < w.until() && w.after() < u;
        match &self.kind {
            CommitKind::Window { after, until } => meets(*after, *until),
            CommitKind::Repair { watermark, span, .. } => {
                meets(Watermark::MIN, *watermark) && span.is_none_or(|s| meets(s.after(), s.until()))
            }
        }
    }
}

fn io(e: impl Into<offload_core::BoxError>) -> Error {
    Error::sink(e, false)
}

fn version_dir(data: &Path, version: u64) -> PathBuf {
    // Zero-padded, so a listing sorts in commit order.
    data.join(format!("{version:020}"))
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
        let version = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| io(format!("{}: not a commit directory", dir.display())))?;
        let text = std::fs::read_to_string(dir.join("commit")).map_err(io)?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|l| l.strip_prefix('=')))
                .ok_or_else(|| io(format!("{}: no {k}", dir.display())))
        };
        let kind = match field("kind")? {
            "window" => CommitKind::Window {
                after: field("after")?.parse()?,
                until: field("until")?.parse()?,
            },
            "repair" => CommitKind::Repair {
                base: SinkVersion::new(field("base")?),
                watermark: field("watermark")?.parse()?,
                span: match (field("first"), field("last")) {
                    (Ok(first), Ok(last)) => Some(Window::new(first.parse()?, last.parse()?)?),
                    _ => None,
                },
            },
            other => return Err(io(format!("{}: unknown kind {other:?}", dir.display()))),
        };
        out.push(Commit {
            version,
            kind,
            run_id: field("run")?.parse()?,
            engine_id: field("engine")?.to_owned(),
            fencing_token: field("token")?.parse().map_err(io)?,
            file: dir.join("rows.arrow"),
        });
    }
    out.sort_by_key(|c| c.version);
    Ok(out)
}

/// The table's version (its number of commits) and committed watermark.
fn state(commits: &[Commit]) -> (u64, Option<Watermark>) {
    let version = commits.last().map_or(0, |c| c.version);
    (version, commits.iter().filter_map(Commit::window_until).max())
}

fn sink_version(version: u64) -> SinkVersion {
    SinkVersion::new(version.to_string())
}

/// One line of a commit file: a line break in the text cannot add a field.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
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
    /// The positions of `file`'s rows in `window`, decoding only the key columns.
    fn positions(&self, file: &Path, window: Window, out: &mut Vec<Watermark>) -> Result<(), Error> {
        let (ts, seq) = (self.config.timestamp_column(), self.config.sequence_column());
        let open = || File::open(file).map_err(io);
        // The footer alone names the columns; the second reader decodes only the two keys.
        let schema = FileReader::try_new(open()?, None).map_err(io)?.schema();
        let keys = vec![
            schema.index_of(ts).map_err(io)?,
            schema.index_of(seq).map_err(io)?,
        ];
        for batch in FileReader::try_new(open()?, Some(keys)).map_err(io)? {
            let batch = batch.map_err(io)?;
            out.extend(
                batch_positions(&batch, ts, seq)?
                    .into_iter()
                    .filter(|p| window.contains(*p)),
            );
        }
        Ok(())
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

    // The watermark and its run come from the last window commit; the
    // version counts every commit, repairs included.
    async fn committed(&self) -> Result<Option<CommittedWindow>, Error> {
        let all = commits(&self.0.data)?;
        let (version, _) = state(&all);
        let last = all
            .iter()
            .filter(|c| c.window_until().is_some())
            .max_by_key(|c| c.window_until());
        Ok(last.map(|c| CommittedWindow {
            until: c.window_until().expect("a window commit"),
            version: sink_version(version),
            run_id: Some(c.run_id),
            engine_id: Some(c.engine_id.clone()),
            fencing_token: Some(c.fencing_token),
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

    // Only the files whose bounds meet the window are opened, and of those
    // only the key columns decoded. `bucket_counts` keeps the default (the
    // histogram of these positions over the grid's span).
    async fn positions(&self, window: Window) -> Result<Vec<Watermark>, Error> {
        let mut out = Vec::new();
        for c in commits(&self.0.data)?.iter().filter(|c| c.may_hold(window)) {
            self.0.positions(&c.file, window, &mut out)?;
        }
        Ok(out)
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

/// How the commit point went.
enum Publish {
    Done,
    /// Another commit took this version first.
    Taken,
    /// The staging directory is gone: an earlier attempt of this run committed it.
    Gone,
}

impl IpcStaged {
    /// Writes the commit file and renames the staging directory to
    /// `data/<version>`: the one commit point, exclusive.
    fn publish(&self, version: u64, meta: &str) -> Result<Publish, Error> {
        let marker = self.dir.join("commit");
        match std::fs::write(&marker, meta) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Publish::Gone),
            Err(e) => return Err(io(e)),
        }
        match std::fs::rename(&self.dir, version_dir(&self.table.data, version)) {
            Ok(()) => Ok(Publish::Done),
            Err(e) if matches!(e.kind(), ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists) => {
                std::fs::remove_file(&marker).map_err(io)?;
                Ok(Publish::Taken)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Publish::Gone),
            Err(e) => Err(io(e)),
        }
    }
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
        let meta = format!(
            "kind=window\nafter={}\nuntil={}\nrun={}\nengine={}\ntoken={}\n",
            m.window.after(),
            m.window.until(),
            m.run_id,
            one_line(&m.engine_id),
            m.fencing_token
        );
        loop {
            // The fence: the window must start where the table ends, at the
            // version the rename below claims the successor of.
            let (version, found) = state(&commits(&t.data)?);
            if found.unwrap_or(Watermark::MIN) != m.window.after() {
                return Err(conflict(found));
            }
            match self.publish(version + 1, &meta)? {
                Publish::Done => return Ok(()),
                // Someone committed first: if it was a repair the fence still
                // holds and the next number is tried; if a window, it fails.
                Publish::Taken => continue,
                // Already renamed by an earlier attempt of this very run: a retried commit.
                Publish::Gone => return Err(conflict(state(&commits(&t.data)?).1)),
            }
        }
    }

    async fn commit_repair(&self, m: &RepairMetadata) -> Result<(), Error> {
        let t = &self.table;
        let conflict = || -> Result<(), Error> {
            let (version, _) = state(&commits(&t.data)?);
            Err(Error::RepairConflict {
                table: t.config.name().into(),
                base: m.base.clone(),
                found: (version > 0).then(|| sink_version(version)),
            })
        };
        // The fence: the table must still be at the version the diff was computed against.
        let (version, _) = state(&commits(&t.data)?);
        if sink_version(version) != m.base {
            return conflict();
        }
        let mut meta = format!(
            "kind=repair\nbase={}\nwatermark={}\nrun={}\nengine={}\ntoken={}\nrows={}\nbuckets={}\n",
            one_line(m.base.as_str()),
            m.watermark,
            m.run_id,
            one_line(&m.engine_id),
            m.fencing_token,
            m.rows,
            m.buckets.len()
        );
        let first = m.buckets.iter().map(|b| b.after()).min();
        let last = m.buckets.iter().map(|b| b.until()).max();
        if let (Some(first), Some(last)) = (first, last) {
            meta.push_str(&format!("first={first}\nlast={last}\n"));
        }
        match self.publish(version + 1, &meta)? {
            Publish::Done => Ok(()),
            // Never onto a newer version: the diff may no longer hold there.
            Publish::Taken | Publish::Gone => conflict(),
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
