//! Programs and examples for offload.
