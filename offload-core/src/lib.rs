#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod clock;
mod config;
pub mod duration;
mod engine;
mod error;
pub mod layer;
mod maintenance;
pub mod metrics;
pub mod redact;
mod retry;
mod run;
mod sink;
mod source;
#[cfg(feature = "sqlx")]
pub mod sql;
mod store;
mod sweep;
mod watermark;

#[cfg(feature = "testing")]
pub mod memory;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    DEFAULT_LATE_HORIZON, DEFAULT_MAX_WINDOW, DEFAULT_SWEEP_BUCKET, TableConfig, TableConfigBuilder,
};
pub use engine::{MaintenanceFailure, Offloader, OffloaderBuilder, RunSummary, TableResult};
pub use error::{BoxError, Error};
pub use maintenance::MaintenanceSummary;
pub use retry::RetryPolicy;
pub use run::RunId;
pub use sink::{CommitMetadata, CommittedWindow, Sink, SinkTable, Staged, StagedStats, StagingWriter};
pub use source::{BatchStream, Source, SourceTable};
pub use store::{Lease, MAX_ERROR_LEN, RunEvent, RunStatus, TableState, WatermarkStore, truncate_error};
pub use sweep::{
    BucketGrid, RepairMetadata, SinkVersion, SweepSummary, batch_positions, repair_edge, sequences_u64,
    timestamps_micros,
};
pub use watermark::{Watermark, Window, micros_to_system_time, rfc3339_micros, system_time_to_micros};

/// Re-exported so adapters and users name one cancellation type.
pub use tokio_util::sync::CancellationToken;
