use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use super::{Row, from_batch};
use crate::{
    CommitMetadata, CommittedWindow, Error, MaintenanceSummary, RepairMetadata, RunId, Sink, SinkTable,
    SinkVersion, Staged, StagedStats, StagingWriter, TableConfig, Watermark, Window,
};

#[derive(Debug, Default)]
struct Table {
    /// Committed files and their rows.
    files: Vec<(String, Vec<Row>)>,
    commits: Vec<CommitMetadata>,
    repairs: Vec<RepairMetadata>,
    /// Bumped by every commit of either kind (not by maintenance: it never
    /// changes the rows).
    version: u64,
    /// Calls of [`SinkTable::maintain`].
    maintenance_runs: usize,
}

impl Table {
    fn version(&self) -> SinkVersion {
        SinkVersion::new(self.version.to_string())
    }
}

#[derive(Debug, Default)]
struct State {
    tables: HashMap<String, Table>,
    /// Staged "files" not yet committed or discarded: what a crash leaves behind.
    staged: HashSet<String>,
}

/// An in-memory sink with the full commit contract; see the [module docs](crate::memory).
///
/// ```
/// use offload_core::memory::MemorySink;
/// let sink = MemorySink::new();
/// assert!(sink.rows("t").is_empty());
/// assert_eq!(sink.orphans(), 0);
/// ```
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    state: Arc<Mutex<State>>,
    unfenced: bool,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink whose commit skips the fence: deliberately broken, so tests can
    /// show that the engine's property tests and the sink conformance suite
    /// catch a sink without one. Never use it for anything else.
    #[doc(hidden)]
    pub fn unfenced() -> Self {
        Self {
            unfenced: true,
            ..Self::default()
        }
    }

    /// Every committed row of `table` (sink table name), sorted; duplicates stay visible.
    pub fn rows(&self, table: &str) -> Vec<Row> {
        let state = self.state.lock().expect("sink lock");
        let mut rows: Vec<Row> = state
            .tables
            .get(table)
            .map(|t| t.files.iter().flat_map(|f| f.1.iter().copied()).collect())
            .unwrap_or_default();
        rows.sort_unstable();
        rows
    }

    /// Every commit of `table`, oldest first.
    pub fn commits(&self, table: &str) -> Vec<CommitMetadata> {
        let state = self.state.lock().expect("sink lock");
        state
            .tables
            .get(table)
            .map(|t| t.commits.clone())
            .unwrap_or_default()
    }

    /// Every repair commit of `table`, oldest first.
    pub fn repairs(&self, table: &str) -> Vec<RepairMetadata> {
        let state = self.state.lock().expect("sink lock");
        state
            .tables
            .get(table)
            .map(|t| t.repairs.clone())
            .unwrap_or_default()
    }

    /// Committed files of `table` (maintenance merges them into one).
    pub fn files(&self, table: &str) -> usize {
        let state = self.state.lock().expect("sink lock");
        state.tables.get(table).map_or(0, |t| t.files.len())
    }

    /// How often [`SinkTable::maintain`] was called on `table`.
    pub fn maintenance_runs(&self, table: &str) -> usize {
        let state = self.state.lock().expect("sink lock");
        state.tables.get(table).map_or(0, |t| t.maintenance_runs)
    }

    /// Staged files neither committed nor discarded.
    pub fn orphans(&self) -> usize {
        self.state.lock().expect("sink lock").staged.len()
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn open(&self, table: &TableConfig) -> Result<Arc<dyn SinkTable>, Error> {
        Ok(Arc::new(MemorySinkTable {
            config: table.clone(),
            name: table.sink_table().to_owned(),
            state: self.state.clone(),
            unfenced: self.unfenced,
        }))
    }
}

/// One opened table of a [`MemorySink`].
#[derive(Debug)]
struct MemorySinkTable {
    config: TableConfig,
    name: String,
    state: Arc<Mutex<State>>,
    unfenced: bool,
}

#[async_trait]
impl SinkTable for MemorySinkTable {
    fn config(&self) -> &TableConfig {
        &self.config
    }

    async fn prepare(&self, _schema: SchemaRef) -> Result<(), Error> {
        let mut state = self.state.lock().expect("sink lock");
        state.tables.entry(self.name.clone()).or_default();
        Ok(())
    }

    async fn begin(&self, run_id: RunId, _schema: SchemaRef) -> Result<Box<dyn StagingWriter>, Error> {
        Ok(Box::new(Writer {
            unfenced: self.unfenced,
            state: self.state.clone(),
            table: self.name.clone(),
            file: format!("mem://{}/{run_id}", self.name),
            run_id,
            rows: Vec::new(),
        }))
    }

    async fn committed(&self) -> Result<Option<CommittedWindow>, Error> {
        let state = self.state.lock().expect("sink lock");
        let Some(t) = state.tables.get(&self.name) else {
            return Ok(None);
        };
        Ok(t.commits.last().map(|c| CommittedWindow {
            until: c.window.until(),
            version: t.version(),
            run_id: Some(c.run_id),
            engine_id: Some(c.engine_id.clone()),
            fencing_token: Some(c.fencing_token),
        }))
    }

    async fn was_committed(&self, run_id: RunId) -> Result<bool, Error> {
        let state = self.state.lock().expect("sink lock");
        Ok(state.tables.get(&self.name).is_some_and(|t| {
            t.commits.iter().any(|c| c.run_id == run_id) || t.repairs.iter().any(|r| r.run_id == run_id)
        }))
    }

    async fn positions(&self, window: Window) -> Result<Vec<Watermark>, Error> {
        let state = self.state.lock().expect("sink lock");
        Ok(state
            .tables
            .get(&self.name)
            .map(|t| {
                t.files
                    .iter()
                    .flat_map(|f| f.1.iter())
                    .map(|r| Watermark::new(r.0, r.1))
                    .filter(|p| window.contains(*p))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Merges every committed file into one when there are two or more: the
    /// rows, the committed window and the version stay as they were.
    async fn maintain(&self) -> Result<MaintenanceSummary, Error> {
        let mut state = self.state.lock().expect("sink lock");
        let Some(t) = state.tables.get_mut(&self.name) else {
            return Ok(MaintenanceSummary::default());
        };
        t.maintenance_runs += 1;
        let mut summary = MaintenanceSummary::default();
        if t.files.len() >= 2 {
            summary.files_rewritten = t.files.len() as u64;
            let mut rows: Vec<Row> = t.files.drain(..).flat_map(|f| f.1).collect();
            rows.sort_unstable();
            summary.partitions_compacted = 1;
            summary.rows_rewritten = rows.len() as u64;
            summary.files_written = 1;
            summary.commits = 1;
            t.files.push((
                format!("mem://{}/compacted-{}", self.name, t.maintenance_runs),
                rows,
            ));
        }
        Ok(summary)
    }

    async fn cleanup(&self) -> Result<u64, Error> {
        let prefix = format!("mem://{}/", self.name);
        let mut state = self.state.lock().expect("sink lock");
        let before = state.staged.len();
        state.staged.retain(|f| !f.starts_with(&prefix));
        Ok((before - state.staged.len()) as u64)
    }
}

struct Writer {
    unfenced: bool,
    state: Arc<Mutex<State>>,
    table: String,
    file: String,
    run_id: RunId,
    rows: Vec<Row>,
}

#[async_trait]
impl StagingWriter for Writer {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        self.rows.extend(from_batch(&batch)?);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<Box<dyn Staged>, Error> {
        self.state
            .lock()
            .expect("sink lock")
            .staged
            .insert(self.file.clone());
        let bytes = (self.rows.len() * std::mem::size_of::<Row>()) as u64;
        Ok(Box::new(MemoryStaged {
            stats: StagedStats::new(self.run_id, self.rows.len() as u64, bytes, vec![self.file]),
            table: self.table,
            rows: self.rows,
            state: self.state,
            unfenced: self.unfenced,
        }))
    }

    async fn abort(self: Box<Self>) -> Result<(), Error> {
        Ok(())
    }
}

/// One run's staged rows, bound to the table they were staged for.
#[derive(Debug)]
struct MemoryStaged {
    stats: StagedStats,
    table: String,
    rows: Vec<Row>,
    state: Arc<Mutex<State>>,
    unfenced: bool,
}

#[async_trait]
impl Staged for MemoryStaged {
    fn stats(&self) -> &StagedStats {
        &self.stats
    }

    async fn commit(&self, meta: &CommitMetadata) -> Result<(), Error> {
        let mut state = self.state.lock().expect("sink lock");
        let t = state.tables.entry(self.table.clone()).or_default();
        let found = t.commits.last().map(|c| c.window.until());
        if found.unwrap_or(Watermark::MIN) != meta.window.after() && !self.unfenced {
            return Err(Error::CommitConflict {
                table: self.table.clone(),
                expected: meta.window.after(),
                found,
            });
        }
        let file = self.stats.files.first().cloned().unwrap_or_default();
        t.files.push((file, self.rows.clone()));
        t.commits.push(meta.clone());
        t.version += 1;
        for f in &self.stats.files {
            state.staged.remove(f);
        }
        Ok(())
    }

    async fn commit_repair(&self, meta: &RepairMetadata) -> Result<(), Error> {
        let mut state = self.state.lock().expect("sink lock");
        let t = state.tables.entry(self.table.clone()).or_default();
        if t.version() != meta.base && !self.unfenced {
            return Err(Error::RepairConflict {
                table: self.table.clone(),
                base: meta.base.clone(),
                found: Some(t.version()),
            });
        }
        let file = self.stats.files.first().cloned().unwrap_or_default();
        t.files.push((file, self.rows.clone()));
        t.repairs.push(meta.clone());
        t.version += 1;
        for f in &self.stats.files {
            state.staged.remove(f);
        }
        Ok(())
    }

    async fn discard(self: Box<Self>) -> Result<(), Error> {
        let mut state = self.state.lock().expect("sink lock");
        let committed = state.tables.get(&self.table).is_some_and(|t| {
            t.commits.iter().any(|c| c.run_id == self.stats.run_id)
                || t.repairs.iter().any(|r| r.run_id == self.stats.run_id)
        });
        if committed {
            return Err(Error::sink(
                std::io::Error::other(format!(
                    "refusing to discard run {}: its commit is part of table {}",
                    self.stats.run_id, self.table
                )),
                false,
            ));
        }
        for f in &self.stats.files {
            state.staged.remove(f);
        }
        Ok(())
    }
}
