use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use super::{Row, from_batch};
use crate::{
    CommitMetadata, CommittedWindow, Error, RunId, Sink, Staged, StagingWriter, TableConfig, Watermark,
};

#[derive(Debug, Default)]
struct Table {
    /// Committed files and their rows. Deleting a committed file loses its rows,
    /// as it would on real storage; that is what makes careless aborts visible.
    files: Vec<(String, Vec<Row>)>,
    commits: Vec<CommitMetadata>,
}

#[derive(Debug, Default)]
struct State {
    tables: HashMap<String, Table>,
    /// Staged "files" not yet committed or aborted: what a crash leaves behind.
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
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
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

    /// Staged files neither committed nor aborted.
    pub fn orphans(&self) -> usize {
        self.state.lock().expect("sink lock").staged.len()
    }
}

struct Writer {
    state: Arc<Mutex<State>>,
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

    async fn finish(self: Box<Self>) -> Result<Staged, Error> {
        self.state
            .lock()
            .expect("sink lock")
            .staged
            .insert(self.file.clone());
        let bytes = (self.rows.len() * std::mem::size_of::<Row>()) as u64;
        Ok(Staged::new(
            self.run_id,
            self.rows.len() as u64,
            bytes,
            vec![self.file],
            self.rows,
        ))
    }

    async fn abort(self: Box<Self>) -> Result<(), Error> {
        Ok(())
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn prepare(&self, _table: &TableConfig, _schema: SchemaRef) -> Result<(), Error> {
        Ok(())
    }

    async fn begin(
        &self,
        table: &TableConfig,
        run_id: RunId,
        _schema: SchemaRef,
    ) -> Result<Box<dyn StagingWriter>, Error> {
        Ok(Box::new(Writer {
            state: self.state.clone(),
            file: format!("mem://{}/{run_id}", table.sink_table()),
            run_id,
            rows: Vec::new(),
        }))
    }

    async fn commit(&self, table: &TableConfig, staged: &Staged, meta: &CommitMetadata) -> Result<(), Error> {
        let rows: &Vec<Row> = staged
            .payload()
            .ok_or_else(|| Error::sink(std::io::Error::other("not a memory-sink staging"), false))?;
        let mut state = self.state.lock().expect("sink lock");
        let t = state.tables.entry(table.sink_table().to_owned()).or_default();
        let found = t.commits.last().map(|c| c.window.until());
        if found.unwrap_or(Watermark::MIN) != meta.window.after() {
            return Err(Error::CommitConflict {
                table: table.sink_table().to_owned(),
                expected: meta.window.after(),
                found,
            });
        }
        let file = staged.files().first().cloned().unwrap_or_default();
        t.files.push((file, rows.clone()));
        t.commits.push(meta.clone());
        for f in staged.files() {
            state.staged.remove(f);
        }
        Ok(())
    }

    async fn abort(&self, table: &TableConfig, staged: Staged) -> Result<(), Error> {
        let mut state = self.state.lock().expect("sink lock");
        for f in staged.files() {
            state.staged.remove(f);
            // Deleting is deleting: if the file was committed after all, its rows are gone.
            if let Some(t) = state.tables.get_mut(table.sink_table()) {
                t.files.retain(|(name, _)| name != f);
            }
        }
        Ok(())
    }

    async fn committed(&self, table: &TableConfig) -> Result<Option<CommittedWindow>, Error> {
        let state = self.state.lock().expect("sink lock");
        Ok(state
            .tables
            .get(table.sink_table())
            .and_then(|t| t.commits.last())
            .map(|c| CommittedWindow {
                until: c.window.until(),
                run_id: Some(c.run_id),
                engine_id: Some(c.engine_id.clone()),
                fencing_token: Some(c.fencing_token),
            }))
    }

    async fn was_committed(&self, table: &TableConfig, run_id: RunId) -> Result<bool, Error> {
        let state = self.state.lock().expect("sink lock");
        Ok(state
            .tables
            .get(table.sink_table())
            .is_some_and(|t| t.commits.iter().any(|c| c.run_id == run_id)))
    }

    async fn cleanup(&self, table: &TableConfig) -> Result<u64, Error> {
        let prefix = format!("mem://{}/", table.sink_table());
        let mut state = self.state.lock().expect("sink lock");
        let before = state.staged.len();
        state.staged.retain(|f| !f.starts_with(&prefix));
        Ok((before - state.staged.len()) as u64)
    }
}
