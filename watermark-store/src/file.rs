//! [`FileStore`]: a crash-safe store in one local directory (feature `file`).
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | `t-<name>.json` | the table's state: a header line with a CRC32 and length, then JSON |
//! | `.t-<name>.json.tmp` | the next state while it is being written (at most one per table) |
//! | `t-<name>.lease` | empty; OS-locked by the process holding the table's lease |
//! | `.offload-store.lock` | empty; OS-locked around every read-modify-write |
//!
//! `<name>` is the table name with every byte outside `[a-z0-9_-]` written as
//! `%xx`, so any name maps to one safe file name (no `/`, `..`, NUL or
//! reserved device names; distinct names never collide, not even on
//! case-insensitive file systems, because upper-case letters are escaped too).
//! The table name is also stored inside the file and checked on every read.
//!
//! # Crash safety
//!
//! Every update writes the whole new state to the temp file, `fsync`s it,
//! renames it over the state file and `fsync`s the directory, all while
//! holding `.offload-store.lock`. `rename` is atomic, so a reader sees the old
//! state or the new one, never a mix; the update is acknowledged only after the
//! directory `fsync`, so an acknowledged update survives power loss. A crash
//! before the rename leaves the old state plus a stray temp file, which
//! readers ignore and the next update overwrites. Anything else (a torn write
//! the file system did not protect against, bit rot, a hand edit) fails the
//! length or CRC check and is reported as [`StoreError::Corrupt`] naming the
//! file: never read as "no watermark", never overwritten by a later update.
//!
//! # Leases
//!
//! A lease is the fencing token in the state file plus an exclusive OS lock on
//! `t-<name>.lease`, held by the [`FileStore`] (and its clones) that acquired
//! it until the lease is released or superseded. Each `FileStore` opens its
//! own lock files, so two stores on one directory, in one process or in two,
//! exclude each other like two machines would:
//!
//! * While a holder's lease is unexpired, others get
//!   [`Error::LeaseHeld`].
//! * When the holding process dies (or drops its store), the OS releases the
//!   lock and the lease is reclaimable **at once**, without waiting for its
//!   TTL; the fencing token still rejects anything the old holder might replay.
//! * When a live holder lets its lease expire, another store takes over per
//!   the contract even though it cannot get the OS lock yet; such a lease is
//!   marked as not lock-backed (so it is never reclaimed early), and its store
//!   picks the lock up on a later renewal once the old holder lets go.
//!
//! Times come from the host clock ([`SystemClock`] unless a test injects one),
//! at microsecond precision. The directory must be on a local file system:
//! `flock` over NFS and similar is not reliable.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use offload_core::{
    Clock, Error, Lease, RunEvent, RunId, RunStatus, SystemClock, TableState, Watermark, WatermarkStore,
    micros_to_system_time, system_time_to_micros,
};
use serde::{Deserialize, Serialize};

use crate::{StoreError, validate};

/// First bytes of every state file; the version is bumped if the format changes.
const MAGIC: &str = "offload-watermark-store v1";

/// Longest `t-<name>` stem: with `.` and `.json.tmp` around it the temp file's
/// name stays under the 255 bytes most file systems allow.
const MAX_STEM_LEN: usize = 240;

/// Headers are ~60 bytes; anything longer before a newline is not ours.
const MAX_HEADER_LEN: usize = 128;

/// The directory-wide lock taken around every read-modify-write.
const MUTATION_LOCK: &str = ".offload-store.lock";

/// A crash-safe watermark store in a local directory; see the [module docs](self)
/// for the file layout, the crash-safety argument and the lease rules.
///
/// Clones share their OS locks (they are one "process" as far as leases go);
/// separately opened stores do not.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use offload_core::{Error, Watermark, WatermarkStore};
/// use offload_watermark_store::FileStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = FileStore::open(dir.path()).unwrap();
/// let lease = store.acquire_lease("trades", "engine-1", Duration::from_secs(60)).await.unwrap();
/// store.compare_and_set(&lease, None, Watermark::new(1_000, 7)).await.unwrap();
///
/// // A second store on the same directory (think: a second process) is refused.
/// let other = FileStore::open(dir.path()).unwrap();
/// let refused = other.acquire_lease("trades", "engine-2", Duration::from_secs(60)).await;
/// assert!(matches!(refused, Err(Error::LeaseHeld { .. })));
/// assert_eq!(other.load("trades").await.unwrap().watermark, Some(Watermark::new(1_000, 7)));
///
/// // When the first "process" goes away, its OS lock goes with it.
/// drop(store);
/// assert!(other.acquire_lease("trades", "engine-2", Duration::from_secs(60)).await.is_ok());
/// # });
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// Lease locks this store holds, with the token it issued under each: when
    /// the table's current token differs, someone else superseded us and the
    /// lock is let go.
    held: Mutex<HashMap<String, Held>>,
}

struct Held {
    /// Kept open for its lock; closing it releases the lock.
    _lock: File,
    token: u64,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.dir)
            .field("leases_locked", &self.inner.held().len())
            .finish()
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`, on the system clock.
    ///
    /// Fails with [`StoreError::Io`] if the directory cannot be created or is
    /// not writable, so a misconfigured path shows up at startup.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = offload_watermark_store::FileStore::open(dir.path().join("state")).unwrap();
    /// assert!(store.dir().ends_with("state"));
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_clock(dir, SystemClock)
    }

    /// Opens the store in `dir` with lease and status times from `clock`.
    ///
    /// Every store on one directory must agree on time: use the system clock in
    /// production and a [`ManualClock`](offload_core::ManualClock) only in tests.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use offload_core::{ManualClock, WatermarkStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
    /// let store = offload_watermark_store::FileStore::open_with_clock(dir.path(), clock.clone()).unwrap();
    /// let lease = store.acquire_lease("t", "me", Duration::from_secs(60)).await.unwrap();
    /// assert_eq!(lease.expires_at, UNIX_EPOCH + Duration::from_secs(1_060));
    /// # });
    /// ```
    pub fn open_with_clock(dir: impl AsRef<Path>, clock: impl Clock + 'static) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        // Make the directory itself durable, then prove it is writable now
        // rather than at the first commit.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let inner = Inner {
            dir,
            clock: Arc::new(clock),
            held: Mutex::default(),
        };
        drop(inner.lock_mutations()?);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = offload_watermark_store::FileStore::open(dir.path()).unwrap();
    /// assert_eq!(store.dir(), dir.path());
    /// ```
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file holding `table`'s state (it may not exist yet).
    ///
    /// Fails with [`StoreError::InvalidTableName`] for names no store accepts
    /// and for names whose escaped form is too long for a file name (about 80
    /// bytes of non-ASCII or 238 bytes of lower-case ASCII).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = offload_watermark_store::FileStore::open(dir.path()).unwrap();
    /// let path = store.state_path("../Trades; --").unwrap();
    /// assert_eq!(path.parent(), Some(dir.path()));
    /// assert_eq!(path.file_name().unwrap(), "t-%2e%2e%2f%54rades%3b%20--.json");
    /// ```
    pub fn state_path(&self, table: &str) -> Result<PathBuf, StoreError> {
        Ok(self.inner.paths(table)?.state)
    }

    /// Runs `f` on the blocking pool: file I/O and `flock` block the thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[async_trait]
impl WatermarkStore for FileStore {
    async fn load(&self, table: &str) -> Result<TableState, Error> {
        let table = table.to_owned();
        self.blocking(move |inner| inner.load(&table)).await
    }

    async fn acquire_lease(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        let (table, holder) = (table.to_owned(), holder.to_owned());
        self.blocking(move |inner| inner.acquire(&table, &holder, ttl))
            .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        validate::duration("lease ttl", ttl)?;
        let lease = lease.clone();
        self.blocking(move |inner| {
            inner.with_current(&lease, |entry, now_us| {
                let renewed = Lease {
                    expires_at: micros_to_system_time(now_us.saturating_add(validate::micros(ttl))),
                    ..lease.clone()
                };
                entry.state.lease = Some(renewed.clone());
                Ok(renewed)
            })
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), Error> {
        let lease = lease.clone();
        self.blocking(move |inner| inner.release(&lease)).await
    }

    async fn compare_and_set(
        &self,
        lease: &Lease,
        expected: Option<Watermark>,
        new: Watermark,
    ) -> Result<(), Error> {
        let lease = lease.clone();
        self.blocking(move |inner| {
            inner.with_current(&lease, |entry, now_us| {
                if entry.state.watermark != expected {
                    return Err(Error::WatermarkMismatch {
                        table: lease.table.clone(),
                        expected,
                        found: entry.state.watermark,
                    });
                }
                entry.state.watermark = Some(new);
                entry.state.updated_at = Some(micros_to_system_time(now_us));
                Ok(())
            })
        })
        .await
    }

    async fn record_run(&self, lease: &Lease, event: RunEvent) -> Result<(), Error> {
        let lease = lease.clone();
        self.blocking(move |inner| {
            inner.with_current(&lease, |entry, now_us| {
                entry.state.apply(&event, micros_to_system_time(now_us));
                Ok(())
            })
        })
        .await
    }

    async fn recover_stale_runs(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        validate::duration("stale run age", older_than)?;
        self.blocking(move |inner| inner.recover(older_than)).await
    }
}

/// The files of one table.
struct Paths {
    state: PathBuf,
    temp: PathBuf,
    lease: PathBuf,
}

/// A table's decoded state plus what only the file store keeps.
struct Entry {
    state: TableState,
    /// Whether the current lease was issued (or renewed) by a store holding
    /// the OS lock; only then does a free lock prove the holder is gone.
    lease_locked: bool,
}

impl Entry {
    /// The latest token issued for the table; 0 before the first lease.
    fn token(&self) -> u64 {
        self.state.lease.as_ref().map_or(0, |l| l.token)
    }
}

impl Inner {
    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // A panic while holding this map cannot leave it inconsistent (every
        // update is a single insert or remove), so a poisoned lock is usable.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> i64 {
        // Microseconds, like PostgreSQL: what a lease reports is exactly what
        // a later load returns.
        system_time_to_micros(self.clock.now())
    }

    fn paths(&self, table: &str) -> Result<Paths, StoreError> {
        validate::table_name(table)?;
        let stem = file_stem(table);
        if stem.len() > MAX_STEM_LEN {
            return Err(StoreError::InvalidTableName {
                name: validate::preview(table),
                reason: format!(
                    "its file name would be {} bytes; the file store allows {MAX_STEM_LEN}",
                    stem.len()
                ),
            });
        }
        Ok(Paths {
            state: self.dir.join(format!("{stem}.json")),
            temp: self.dir.join(format!(".{stem}.json.tmp")),
            lease: self.dir.join(format!("{stem}.lease")),
        })
    }

    /// Blocks until this thread may read-modify-write; released when the file drops.
    fn lock_mutations(&self) -> Result<File, StoreError> {
        let path = self.dir.join(MUTATION_LOCK);
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(file)
    }

    /// Takes the table's lease lock if no other store holds it.
    fn try_lock_lease(&self, paths: &Paths) -> Result<Option<File>, StoreError> {
        let file = open_lock_file(&paths.lease)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(io_err("lock", &paths.lease)(e)),
        }
    }

    /// Lets go of a lease lock whose lease someone else has superseded, so that
    /// a free lock keeps meaning "the holder is gone".
    fn forget_superseded(&self, table: &str, current_token: u64) {
        let mut held = self.held();
        if held.get(table).is_some_and(|h| h.token != current_token) {
            held.remove(table);
        }
    }

    fn read(&self, paths: &Paths, table: &str) -> Result<Option<Entry>, StoreError> {
        read_entry(&paths.state, Some(table))
    }

    /// Replaces the table's state file; see the module docs for why this order.
    fn write(&self, paths: &Paths, entry: &Entry) -> Result<(), StoreError> {
        let bytes = encode(&Record::from_entry(entry));
        let mut tmp = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&paths.temp)
            .map_err(io_err("create", &paths.temp))?;
        tmp.write_all(&bytes).map_err(io_err("write", &paths.temp))?;
        tmp.sync_all().map_err(io_err("fsync", &paths.temp))?;
        drop(tmp);
        fs::rename(&paths.temp, &paths.state).map_err(io_err("rename into place", &paths.state))?;
        sync_dir(&self.dir)
    }

    fn load(&self, table: &str) -> Result<TableState, Error> {
        let paths = self.paths(table)?;
        // No lock needed: renames are atomic, so this sees a whole state.
        Ok(self
            .read(&paths, table)?
            .map_or_else(|| TableState::new(table), |e| e.state))
    }

    fn acquire(&self, table: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        let paths = self.paths(table)?;
        validate::holder(holder)?;
        validate::duration("lease ttl", ttl)?;
        let _guard = self.lock_mutations()?;
        let now_us = self.now();
        let now = micros_to_system_time(now_us);
        let mut entry = self.read(&paths, table)?.unwrap_or_else(|| {
            let mut state = TableState::new(table);
            state.created_at = Some(now);
            state.updated_at = Some(now);
            Entry {
                state,
                lease_locked: false,
            }
        });
        let current = entry.token();
        self.forget_superseded(table, current);

        let already_locked = self.held().contains_key(table);
        let fresh_lock = if already_locked {
            None
        } else {
            self.try_lock_lease(&paths)?
        };
        if let Some(l) = &entry.state.lease
            && l.holder != holder
            && l.expires_at > now
        {
            // A lock-backed lease whose lock is free belongs to a store that is
            // gone (process died, store dropped): reclaim it now instead of
            // waiting out its TTL. Its token is fenced all the same.
            let holder_gone = fresh_lock.is_some() && entry.lease_locked;
            if !holder_gone {
                return Err(Error::LeaseHeld {
                    table: table.to_owned(),
                    holder: l.holder.clone(),
                    expires_at: l.expires_at,
                });
            }
            tracing::info!(
                table,
                previous_holder = %l.holder,
                "reclaiming lease whose holder released its lock without releasing the lease"
            );
        }

        let token = current
            .checked_add(1)
            .ok_or_else(|| StoreError::InvalidStoredState {
                table: table.to_owned(),
                reason: "fencing token exhausted".into(),
            })?;
        let lease = Lease {
            table: table.to_owned(),
            holder: holder.to_owned(),
            token,
            expires_at: micros_to_system_time(now_us.saturating_add(validate::micros(ttl))),
        };
        entry.state.lease = Some(lease.clone());
        entry.state.updated_at = Some(now);
        entry.lease_locked = already_locked || fresh_lock.is_some();
        self.write(&paths, &entry)?;

        let mut held = self.held();
        match (fresh_lock, held.get_mut(table)) {
            (Some(lock), _) => {
                held.insert(table.to_owned(), Held { _lock: lock, token });
            }
            (None, Some(h)) => h.token = token,
            (None, None) => {}
        }
        Ok(lease)
    }

    /// Runs `f` on the table's state if `lease` is current and writes the
    /// result back; [`Error::LeaseLost`] otherwise.
    fn with_current<T>(
        &self,
        lease: &Lease,
        f: impl FnOnce(&mut Entry, i64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let paths = self.paths(&lease.table)?;
        let _guard = self.lock_mutations()?;
        let lost = || Error::LeaseLost {
            table: lease.table.clone(),
            token: lease.token,
        };
        let mut entry = self.read(&paths, &lease.table)?.ok_or_else(lost)?;
        self.forget_superseded(&lease.table, entry.token());
        if entry.token() != lease.token {
            return Err(lost());
        }
        let out = f(&mut entry, self.now())?;

        // A holder that took over an expired lease from a live store could not
        // lock it then; pick the lock up once that store has let go, so a crash
        // from here on frees the table at once.
        let fresh_lock = if self.held().contains_key(&lease.table) {
            None
        } else {
            self.try_lock_lease(&paths)?
        };
        entry.lease_locked = fresh_lock.is_some() || self.held().contains_key(&lease.table);
        self.write(&paths, &entry)?;
        if let Some(lock) = fresh_lock {
            self.held().insert(
                lease.table.clone(),
                Held {
                    _lock: lock,
                    token: lease.token,
                },
            );
        }
        Ok(out)
    }

    fn release(&self, lease: &Lease) -> Result<(), Error> {
        let paths = self.paths(&lease.table)?;
        let _guard = self.lock_mutations()?;
        let Some(mut entry) = self.read(&paths, &lease.table)? else {
            return Ok(());
        };
        self.forget_superseded(&lease.table, entry.token());
        if entry.token() != lease.token {
            return Ok(()); // stale: someone else's lease now, not ours to end
        }
        let now = micros_to_system_time(self.now());
        if let Some(l) = &mut entry.state.lease {
            l.expires_at = now;
        }
        entry.lease_locked = false;
        self.write(&paths, &entry)?;
        self.held().remove(&lease.table);
        Ok(())
    }

    fn recover(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        let _guard = self.lock_mutations()?;
        let now_us = self.now();
        let now = micros_to_system_time(now_us);
        let listing = fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        let mut recovered = Vec::new();
        // One corrupt file must not keep the others from being recovered: carry
        // on, then report the first problem.
        let mut first_error: Option<Error> = None;
        for dirent in listing {
            let dirent = match dirent {
                Ok(d) => d,
                Err(e) => {
                    first_error.get_or_insert(io_err("list", &self.dir)(e).into());
                    continue;
                }
            };
            let name = dirent.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with("t-") && name.ends_with(".json")) {
                continue; // temp files, lock files, anything else
            }
            match self.recover_one(&dirent.path(), older_than, now) {
                Ok(Some(table)) => recovered.push(table),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %dirent.path().display(), error = %e, "cannot check for a stale run");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        recovered.sort();
        Ok(recovered)
    }

    fn recover_one(
        &self,
        path: &Path,
        older_than: Duration,
        now: SystemTime,
    ) -> Result<Option<String>, Error> {
        let Some(mut entry) = read_entry(path, None)? else {
            return Ok(None); // vanished since the listing
        };
        let table = entry.state.table.clone();
        let paths = self.paths(&table)?;
        if paths.state != path {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                reason: format!("holds table {:?}, whose file is {}", table, paths.state.display()),
            }
            .into());
        }
        let s = &mut entry.state;
        let lease_expired = s.lease.as_ref().is_none_or(|l| l.expires_at <= now);
        let stale = s
            .updated_at
            .is_none_or(|u| u.checked_add(older_than).is_some_and(|t| t <= now));
        if !(s.status == RunStatus::Running && lease_expired && stale) {
            return Ok(None);
        }
        let run_id = s.last_run_id.unwrap_or_else(RunId::new);
        let duration = s
            .updated_at
            .and_then(|u| now.duration_since(u).ok())
            .unwrap_or_default();
        s.apply(
            &RunEvent::Failed {
                run_id,
                error: format!("run abandoned: still 'running' after {older_than:?} with an expired lease"),
                duration,
            },
            now,
        );
        self.write(&paths, &entry)?;
        tracing::warn!(table = %table, "recovered stale run as failed");
        Ok(Some(table))
    }
}

/// `t-` plus the name with every byte outside `[a-z0-9_-]` as `%xx`.
///
/// Injective (`%` is always escaped, escapes have a fixed width) and free of
/// path separators, dots and upper case, so no name can escape the directory,
/// collide with another, or hit a reserved device name.
fn file_stem(table: &str) -> String {
    let mut stem = String::with_capacity(2 + table.len());
    stem.push_str("t-");
    for b in table.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => stem.push(char::from(b)),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                stem.push('%');
                stem.push(char::from(HEX[usize::from(b >> 4)]));
                stem.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    stem
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open lock file", path))
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        operation,
        path,
        source,
    }
}

/// Makes renames and creations in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Windows cannot open a directory as a file; NTFS journals renames instead.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Reads and checks a state file; `None` if it does not exist.
fn read_entry(path: &Path, expected_table: Option<&str>) -> Result<Option<Entry>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let record = decode(&bytes).map_err(corrupt)?;
    if let Some(expected) = expected_table
        && record.table != expected
    {
        return Err(corrupt(format!(
            "holds table {:?}, expected {expected:?}",
            validate::preview(&record.table)
        )));
    }
    record.into_entry().map(Some).map_err(corrupt)
}

/// The on-disk form of a table's state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    table: String,
    watermark: Option<WatermarkRecord>,
    status: String,
    last_run_id: Option<String>,
    last_row_count: u64,
    last_success_at_micros: Option<i64>,
    last_run_duration_micros: Option<u64>,
    consecutive_failures: u32,
    last_error: Option<String>,
    lease: Option<LeaseRecord>,
    created_at_micros: Option<i64>,
    updated_at_micros: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatermarkRecord {
    timestamp_micros: i64,
    sequence: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRecord {
    holder: String,
    token: u64,
    expires_at_micros: i64,
    /// See [`Entry::lease_locked`].
    os_locked: bool,
}

impl Record {
    fn from_entry(entry: &Entry) -> Self {
        let s = &entry.state;
        let micros = |t: Option<SystemTime>| t.map(system_time_to_micros);
        Record {
            table: s.table.clone(),
            watermark: s.watermark.map(|w| WatermarkRecord {
                timestamp_micros: w.timestamp_micros(),
                sequence: w.sequence(),
            }),
            status: s.status.as_str().to_owned(),
            last_run_id: s.last_run_id.map(|r| r.to_string()),
            last_row_count: s.last_row_count,
            last_success_at_micros: micros(s.last_success_at),
            last_run_duration_micros: s
                .last_run_duration
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            consecutive_failures: s.consecutive_failures,
            last_error: s.last_error.clone(),
            lease: s.lease.as_ref().map(|l| LeaseRecord {
                holder: l.holder.clone(),
                token: l.token,
                expires_at_micros: system_time_to_micros(l.expires_at),
                os_locked: entry.lease_locked,
            }),
            created_at_micros: micros(s.created_at),
            updated_at_micros: micros(s.updated_at),
        }
    }

    /// Checks what JSON cannot: enums, ids and the invariants the store keeps.
    fn into_entry(self) -> Result<Entry, String> {
        let mut state = TableState::new(self.table.clone());
        state.watermark = self
            .watermark
            .map(|w| Watermark::new(w.timestamp_micros, w.sequence));
        state.status =
            RunStatus::parse(&self.status).ok_or_else(|| format!("unknown status {:?}", self.status))?;
        state.last_run_id = self
            .last_run_id
            .map(|r| r.parse::<RunId>().map_err(|e| e.to_string()))
            .transpose()?;
        state.last_row_count = self.last_row_count;
        state.last_success_at = self.last_success_at_micros.map(micros_to_system_time);
        state.last_run_duration = self.last_run_duration_micros.map(Duration::from_micros);
        state.consecutive_failures = self.consecutive_failures;
        if self
            .last_error
            .as_ref()
            .is_some_and(|e| e.len() > offload_core::MAX_ERROR_LEN)
        {
            return Err("last_error longer than the store ever writes".into());
        }
        state.last_error = self.last_error;
        let lease_locked = self.lease.as_ref().is_some_and(|l| l.os_locked);
        state.lease = self.lease.map(|l| Lease {
            table: self.table,
            holder: l.holder,
            token: l.token,
            expires_at: micros_to_system_time(l.expires_at_micros),
        });
        if state.lease.as_ref().is_some_and(|l| l.token == 0) {
            return Err("lease with fencing token 0".into());
        }
        state.created_at = self.created_at_micros.map(micros_to_system_time);
        state.updated_at = self.updated_at_micros.map(micros_to_system_time);
        Ok(Entry { state, lease_locked })
    }
}

/// Header line (magic, CRC32 and length of the payload), then the JSON payload.
fn encode(record: &Record) -> Vec<u8> {
    let payload = serde_json::to_vec(record).expect("a Record always serialises");
    let mut out = format!(
        "{MAGIC} crc32:{:08x} len:{}\n",
        crc32fast::hash(&payload),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(&payload);
    out
}

/// Strict inverse of [`encode`]: any deviation is an error, never a default.
fn decode(bytes: &[u8]) -> Result<Record, String> {
    let newline = bytes
        .iter()
        .take(MAX_HEADER_LEN)
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("no header line in its {} bytes (torn write?)", bytes.len()))?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not UTF-8".to_owned())?;
    let fields = header
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.strip_prefix(" crc32:"))
        .and_then(|rest| rest.split_once(" len:"))
        .ok_or_else(|| format!("unrecognised header {header:?}"))?;
    let (crc, len) = fields;
    let is_hex = |s: &str| {
        s.len() == 8
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let is_decimal = |s: &str| {
        !s.is_empty()
            && s.len() <= 10
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'))
    };
    if !is_hex(crc) || !is_decimal(len) {
        return Err(format!("malformed header {header:?}"));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|e| e.to_string())?;
    let len: usize = len.parse().map_err(|_| format!("malformed header {header:?}"))?;
    let payload = &bytes[newline + 1..];
    if payload.len() != len {
        return Err(format!(
            "header promises {len} bytes of state but {} follow (torn write?)",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("unreadable state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_injective_and_safe() {
        let names = [
            "a", "A", "%41", "%2541", "t-a", "..", ".", "a/b", "a\\b", "CON", "é", "e\u{301}", "a b",
        ];
        let stems: Vec<String> = names.iter().map(|n| file_stem(n)).collect();
        for (i, s) in stems.iter().enumerate() {
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-%".contains(&b)),
                "{s}"
            );
            for (j, t) in stems.iter().enumerate() {
                assert_eq!(
                    i == j,
                    s.eq_ignore_ascii_case(t),
                    "{:?} vs {:?}",
                    names[i],
                    names[j]
                );
            }
        }
        assert_eq!(file_stem("orders_2024-x"), "t-orders_2024-x");
    }

    #[test]
    fn decode_inverts_encode_and_rejects_everything_else() {
        let mut state = TableState::new("t");
        state.watermark = Some(Watermark::new(-5, u64::MAX));
        state.lease = Some(Lease {
            table: "t".into(),
            holder: "h".into(),
            token: 3,
            expires_at: micros_to_system_time(42),
        });
        let entry = Entry {
            state: state.clone(),
            lease_locked: true,
        };
        let bytes = encode(&Record::from_entry(&entry));
        let back = decode(&bytes).unwrap().into_entry().unwrap();
        assert_eq!(back.state, state);
        assert!(back.lease_locked);

        assert!(decode(b"").is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert!(decode(&longer).is_err(), "trailing bytes");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            decode(text.replace(" len:", " len:0").as_bytes()).is_err(),
            "leading zero"
        );
    }
}
