//! The `offload` program: exactly-once ClickHouse -> Apache Iceberg offload,
//! configured by one TOML file ([`config`]; the fully commented reference is
//! `offload.example.toml`), with the subcommands `run`, `cleanup`, `status`
//! and `reconcile` ([`commands`]).
//!
//! The library is the program's inside, public so tests and embedding
//! programs can assemble the same parts: [`app`] connects the source, sink
//! and store the configuration names, wrapped in the layers of [`stack`].
#![warn(missing_docs)]

pub mod app;
pub mod commands;
pub mod config;
#[cfg(feature = "failpoints")]
pub mod faults;
pub mod http;
pub mod signal;
pub mod stack;
