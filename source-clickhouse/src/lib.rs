#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod convert;
mod decode;
mod error;
pub mod ident;
mod source;
mod sql;
mod stream;
mod types;

pub use decode::ArrowStreamDecoder;
pub use error::ClickHouseError;
pub use source::{ClickHouseSource, ClickHouseSourceBuilder, Compression};
pub use types::{SubMicrosecond, UInt64Mapping};
