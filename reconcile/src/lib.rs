#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod bucket;
mod ch;
mod error;
pub mod fingerprint;
#[cfg(feature = "kafka")]
mod kafka;
mod lake;
mod reconciler;
pub mod report;
pub mod verdict;

pub use bucket::{Bucket, BucketSize, MAX_BUCKETS, TimeRange, parse_instant, parse_time};
pub use ch::ClickHouseLayer;
pub use error::Error;
pub use fingerprint::ContentKind;
#[cfg(feature = "kafka")]
pub use kafka::{KafkaCountMethod, KafkaLayer};
pub use lake::{IcebergLayer, PROPERTY_WATERMARK, SUMMARY_WINDOW_UNTIL};
pub use reconciler::{CommittedSource, Depth, KafkaColumns, Reconciler, RowHash, RowHashes, TableSpec};
pub use report::{
    BucketReport, ColumnInfo, ExactSum, Figures, Finding, Format, KafkaFigures, KeyDiff, KeyDiffKind, Layer,
    OffsetRange, PartitionSpan, Report, TableReport, Totals,
};
pub use verdict::{BucketInput, Thresholds, Verdict, judge};
