#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod catalog;
mod commit;
mod config;
mod error;
mod keys;
mod maintain;
mod manifests;
mod markers;
mod naming;
mod options;
mod schema;
mod sink;
mod table;
mod writer;

pub use commit::IcebergStaged;
pub use config::{
    CatalogBackend, CatalogConfig, DEFAULT_CATALOG_NAME, DEFAULT_MAX_OPEN_PARTITIONS,
    DEFAULT_PARTITION_IDLE_BATCHES, DEFAULT_ROW_GROUP_ROWS, IcebergSinkConfig, MAX_DEFAULT_WRITER_TASKS,
    S3Config, StorageConfig, default_writer_tasks,
};
pub use error::IcebergSinkError;
pub use maintain::{MaintenanceConfig, SUMMARY_MAINTENANCE, Step, StepHook, expirable_snapshots};
pub use markers::{
    KEY_ENGINE_ID, KEY_FENCING_TOKEN, KEY_RUN_ID, PROPERTY_WATERMARK, SUMMARY_DATA_VERSION,
    SUMMARY_REPAIR_BASE, SUMMARY_REPAIR_BUCKETS, SUMMARY_REPAIR_FIRST, SUMMARY_REPAIR_LAST,
    SUMMARY_REPAIR_ROWS, SUMMARY_WINDOW_AFTER, SUMMARY_WINDOW_UNTIL, committed_window,
};
pub use naming::{DEFAULT_NAMESPACE, TableName};
pub use options::{IcebergTableOptions, PartitionField, Transform};
pub use sink::IcebergSink;
pub use table::IcebergTable;
