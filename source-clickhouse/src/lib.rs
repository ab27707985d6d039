#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod columns;
mod compression;
mod convert;
mod decode;
pub mod derived;
mod error;
pub mod ident;
mod source;
mod sql;
mod stream;
mod table;
#[cfg(feature = "rustls")]
mod tls;
pub mod types;

pub use compression::Compression;
pub use decode::ArrowStreamDecoder;
pub use error::ClickHouseError;
pub use source::{
    ClickHouseSource, ClickHouseSourceBuilder, ClickHouseTableOptions, DEFAULT_STREAM_IDLE_TIMEOUT,
    client_for,
};
pub use table::ClickHouseTable;
pub use types::{SubMicrosecond, UInt64Mapping};
