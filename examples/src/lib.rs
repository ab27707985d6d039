//! The `offload` program and its configuration, the demo job, and examples to copy.
//!
//! See the crate README for the programs; [`config`] is the TOML schema.
#![warn(missing_docs)]

pub mod app;
pub mod config;
