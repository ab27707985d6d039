//! A catalog wrapper that injects the failures a real network and database
//! produce at commit time, so the sink's in-doubt handling can be tested.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent,
};
use tokio::sync::oneshot;

/// What the next `update_table` does.
pub enum Fault {
    /// Pass through.
    None,
    /// Apply the commit, then report a connection reset (the reply was lost).
    LoseReply,
    /// Report a connection reset without applying anything.
    FailBeforeSend,
    /// Apply the commit, then never answer.
    HangAfterApply,
    /// Tell the test we arrived (`reached`), wait for `release`, then pass through.
    Gate {
        reached: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    },
}

#[derive(Debug)]
pub struct FaultyCatalog {
    inner: Arc<dyn Catalog>,
    fault: Mutex<Option<FaultSlot>>,
}

struct FaultSlot(Fault);

impl std::fmt::Debug for FaultSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultSlot")
    }
}

impl FaultyCatalog {
    pub fn new(inner: Arc<dyn Catalog>) -> Self {
        Self {
            inner,
            fault: Mutex::new(None),
        }
    }

    /// Arms a fault for the next `update_table` only.
    pub fn arm(&self, fault: Fault) {
        *self.fault.lock().unwrap() = Some(FaultSlot(fault));
    }
}

fn reset() -> Error {
    Error::new(ErrorKind::Unexpected, "connection reset by peer (injected)")
}

#[async_trait]
impl Catalog for FaultyCatalog {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        ns: &NamespaceIdent,
        props: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(ns, props).await
    }
    async fn get_namespace(&self, ns: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(ns).await
    }
    async fn namespace_exists(&self, ns: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(ns).await
    }
    async fn update_namespace(&self, ns: &NamespaceIdent, props: HashMap<String, String>) -> Result<()> {
        self.inner.update_namespace(ns, props).await
    }
    async fn drop_namespace(&self, ns: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(ns).await
    }
    async fn list_tables(&self, ns: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(ns).await
    }
    async fn create_table(&self, ns: &NamespaceIdent, creation: TableCreation) -> Result<Table> {
        self.inner.create_table(ns, creation).await
    }
    async fn load_table(&self, t: &TableIdent) -> Result<Table> {
        self.inner.load_table(t).await
    }
    async fn drop_table(&self, t: &TableIdent) -> Result<()> {
        self.inner.drop_table(t).await
    }
    async fn purge_table(&self, t: &TableIdent) -> Result<()> {
        self.inner.purge_table(t).await
    }
    async fn table_exists(&self, t: &TableIdent) -> Result<bool> {
        self.inner.table_exists(t).await
    }
    async fn rename_table(&self, a: &TableIdent, b: &TableIdent) -> Result<()> {
        self.inner.rename_table(a, b).await
    }
    async fn register_table(&self, t: &TableIdent, loc: String) -> Result<Table> {
        self.inner.register_table(t, loc).await
    }
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let fault = self.fault.lock().unwrap().take().map_or(Fault::None, |s| s.0);
        match fault {
            Fault::None => self.inner.update_table(commit).await,
            Fault::LoseReply => {
                self.inner.update_table(commit).await?;
                Err(reset())
            }
            Fault::FailBeforeSend => Err(reset()),
            Fault::HangAfterApply => {
                self.inner.update_table(commit).await?;
                std::future::pending().await
            }
            Fault::Gate { reached, release } => {
                let _ = reached.send(());
                let _ = release.await;
                self.inner.update_table(commit).await
            }
        }
    }
}
