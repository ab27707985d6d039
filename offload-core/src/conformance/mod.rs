//! Conformance suites for [`Source`](crate::Source) and [`Sink`](crate::Sink)
//! implementations (feature `conformance`).

pub mod sink;
pub mod source;
