//! Shared pieces of offload's benchmarks (see the package README for how to
//! run them and the latest results): the benchmark tables and their content
//! hash ([`data`]), record batches in memory as a `Source` ([`memory`]), an
//! Arrow IPC row counter ([`ipc`]), process CPU/memory probes ([`procfs`]),
//! and a global allocator chosen per process ([`alloc`]).
//!
//! The benchmarks themselves are `benches/stages.rs` (criterion, one group per
//! stage) and `benches/harness.rs` (the side-by-side harness).
#![warn(missing_docs)]

pub mod alloc;
pub mod data;
pub mod ipc;
pub mod memory;
pub mod procfs;

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this package's directory). The chdb
/// front must run there: ClickHouse's `icebergLocal` only opens paths under
/// its working directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ lives inside the workspace")
        .to_path_buf()
}
