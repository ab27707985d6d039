//! Code to copy: a custom [`Source`](offload_core::Source)
//! ([`trade_buffer`]) and a custom [`Sink`](offload_core::Sink)
//! ([`ipc_sink`]), each checked by offload-core's conformance suite
//! (`tests/conformance.rs`), plus the runnable examples in `examples/`: the
//! demo, the engine embedded in a service, two workers sharing one store.
//!
//! The `offload` program itself is the `offload-cli` crate.
#![warn(missing_docs)]

pub mod ipc_sink;
pub mod trade_buffer;
