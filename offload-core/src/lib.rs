#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod clock;
mod config;
mod engine;
mod error;
pub mod failpoint;
pub mod metrics;
mod retry;
mod run;
mod sink;
mod source;
mod store;
mod watermark;

#[cfg(feature = "testing")]
pub mod memory;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{PartitionField, TableConfig, TableConfigBuilder, Transform};
pub use engine::{Offloader, OffloaderBuilder, RunSummary, TableResult};
pub use error::{BoxError, Error};
pub use retry::RetryPolicy;
pub use run::RunId;
pub use sink::{CommitMetadata, CommittedWindow, Sink, Staged, StagingWriter};
pub use source::{BatchStream, Source};
pub use store::{Lease, MAX_ERROR_LEN, RunEvent, RunStatus, TableState, WatermarkStore, truncate_error};
pub use watermark::{Watermark, Window, micros_to_system_time, rfc3339_micros, system_time_to_micros};

/// Re-exported so adapters and users name one cancellation type.
pub use tokio_util::sync::CancellationToken;
