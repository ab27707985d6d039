//! Durable [`WatermarkStore`](offload_core::WatermarkStore)s for `offload-core`.
//!
//! Two implementations of the same contract, each behind a cargo feature:
//!
//! | store | feature | for |
//! |---|---|---|
//! | `FileStore` | `file` (default) | one machine, no server: a directory with one small, checksummed file per table |
//! | `PostgresStore` | `postgres` | production: many engine processes on many machines, one PostgreSQL |
//!
//! Both behave exactly like `offload_core::memory::MemoryStore`, the reference
//! implementation; the `conformance` feature exports the suite that checks it,
//! so a third-party store can run the same checks against itself.
//!
//! Errors are [`StoreError`] inside the crate and convert into
//! [`offload_core::Error::Store`] at the trait boundary (with their retryability),
//! except the contract's own outcomes, which are returned as the core's
//! [`LeaseHeld`](offload_core::Error::LeaseHeld),
//! [`LeaseLost`](offload_core::Error::LeaseLost) and
//! [`WatermarkMismatch`](offload_core::Error::WatermarkMismatch) so the engine
//! can react to them.
//!
//! ```
//! # #[cfg(feature = "file")]
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use offload_core::{Watermark, WatermarkStore};
//! use offload_watermark_store::FileStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = FileStore::open(dir.path()).unwrap();
//! let lease = store.acquire_lease("trades", "engine-1", Duration::from_secs(60)).await.unwrap();
//! store.compare_and_set(&lease, None, Watermark::new(1_000, 7)).await.unwrap();
//! assert_eq!(store.load("trades").await.unwrap().watermark, Some(Watermark::new(1_000, 7)));
//! # });
//! ```
#![warn(missing_docs)]

use std::time::Duration;

mod error;
// Only the stores validate input; without either feature nothing calls it.
#[cfg_attr(not(any(feature = "file", feature = "postgres")), allow(dead_code))]
mod validate;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
mod tls;

pub use error::StoreError;
#[cfg(feature = "file")]
pub use file::FileStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};

/// Longest table name a store accepts, in bytes.
///
/// Long enough for any real table name; short enough to fit a PostgreSQL index
/// entry. The file store has a tighter limit, see `FileStore::state_path`.
pub const MAX_TABLE_NAME_LEN: usize = 1024;

/// Longest lease holder id a store accepts, in bytes.
pub const MAX_HOLDER_LEN: usize = 1024;

/// Longest lease TTL or stale-run age a store accepts (100 years).
///
/// Anything longer is a bug in the caller, and timestamps that far out overflow
/// PostgreSQL's and `SystemTime`'s arithmetic; refusing it with a typed error
/// beats a panic or a database error in the middle of a run.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How long a run may stay `running` with an expired lease before
/// `PostgresStore::recover_stale` counts it as failed (30 minutes, like the
/// engine's default).
///
/// ```
/// assert_eq!(offload_watermark_store::DEFAULT_STALE_RUN_TIMEOUT.as_secs(), 1800);
/// ```
pub const DEFAULT_STALE_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
