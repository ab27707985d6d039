use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Clock, Error, Lease, RunEvent, RunStatus, TableState, Watermark, WatermarkStore};

#[derive(Debug)]
struct Entry {
    state: TableState,
    last_token: u64,
}

/// An in-memory watermark store with the full lease and fencing contract.
/// Clones share state, so two "engines" can race on one store.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use offload_core::{ManualClock, Watermark, WatermarkStore, memory::MemoryStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new(ManualClock::new(UNIX_EPOCH));
/// let lease = store.acquire_lease("t", "me", Duration::from_secs(60)).await.unwrap();
/// store.compare_and_set(&lease, None, Watermark::new(5, 0)).await.unwrap();
/// assert_eq!(store.load("t").await.unwrap().watermark, Some(Watermark::new(5, 0)));
/// assert!(store.acquire_lease("t", "you", Duration::from_secs(60)).await.is_err());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    tables: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryStore {
    /// An empty store on `clock` (lease expiry uses it).
    pub fn new(clock: impl Clock + 'static) -> Self {
        Self {
            clock: Arc::new(clock),
            tables: Arc::default(),
        }
    }

    fn with_current<T>(
        &self,
        lease: &Lease,
        f: impl FnOnce(&mut Entry) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tables = self.tables.lock().expect("store lock");
        match tables.get_mut(&lease.table) {
            Some(e) if e.last_token == lease.token => f(e),
            _ => Err(Error::LeaseLost {
                table: lease.table.clone(),
                token: lease.token,
            }),
        }
    }
}

#[async_trait]
impl WatermarkStore for MemoryStore {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        let tables = self.tables.lock().expect("store lock");
        Ok(tables
            .get(table)
            .map(|e| e.state.clone())
            .unwrap_or_else(|| TableState::new(table)))
    }

    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        let now = self.clock.now();
        let mut tables = self.tables.lock().expect("store lock");
        let e = tables.entry(table.to_owned()).or_insert_with(|| {
            let mut state = TableState::new(table);
            state.created_at = Some(now);
            state.updated_at = Some(now);
            Entry { state, last_token: 0 }
        });
        if let Some(l) = &e.state.lease
            && l.expires_at > now
            && l.holder != holder
        {
            return Err(Error::LeaseHeld {
                table: table.to_owned(),
                holder: l.holder.clone(),
                expires_at: l.expires_at,
            });
        }
        e.last_token += 1;
        let lease = Lease {
            table: table.to_owned(),
            holder: holder.to_owned(),
            token: e.last_token,
            expires_at: now + ttl,
        };
        e.state.lease = Some(lease.clone());
        e.state.updated_at = Some(now);
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let now = self.clock.now();
        self.with_current(lease, |e| {
            let renewed = Lease {
                expires_at: now + ttl,
                ..lease.clone()
            };
            e.state.lease = Some(renewed.clone());
            Ok(renewed)
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        let now = self.clock.now();
        match self.with_current(lease, |e| {
            if let Some(l) = &mut e.state.lease {
                l.expires_at = now;
            }
            Ok(())
        }) {
            Err(Error::LeaseLost { .. }) => Ok(()),
            other => other,
        }
    }

    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        self.with_current(lease, |e| {
            if e.state.watermark != expected {
                return Err(Error::WatermarkMismatch {
                    table: lease.table.clone(),
                    expected,
                    found: e.state.watermark,
                });
            }
            e.state.watermark = Some(new);
            e.state.updated_at = Some(now);
            Ok(())
        })
    }

    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        let now = self.clock.now();
        self.with_current(lease, |e| {
            e.state.apply(&event, now);
            Ok(())
        })
    }

    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        let now = self.clock.now();
        let mut tables = self.tables.lock().expect("store lock");
        let mut recovered = Vec::new();
        for (name, e) in tables.iter_mut() {
            let s = &mut e.state;
            let lease_expired = s.lease.as_ref().is_none_or(|l| l.expires_at <= now);
            let stale = s.updated_at.is_none_or(|u| u + older_than <= now);
            if s.status == RunStatus::Running && lease_expired && stale {
                let run_id = s.last_run_id.unwrap_or_else(crate::RunId::new);
                s.apply(
                    &RunEvent::Failed {
                        run_id,
                        error: format!(
                            "run abandoned: still 'running' after {older_than:?} with an expired lease"
                        ),
                        duration: s
                            .updated_at
                            .and_then(|u| now.duration_since(u).ok())
                            .unwrap_or_default(),
                    },
                    now,
                );
                recovered.push(name.clone());
            }
        }
        recovered.sort();
        Ok(recovered)
    }
}
