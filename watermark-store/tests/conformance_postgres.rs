//! The conformance suite against PostgreSQL (feature `postgres`), each check
//! in a fresh schema that is dropped afterwards. Fails if PostgreSQL is not
//! reachable at `OFFLOAD_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
#![cfg(feature = "postgres")]

mod common;

offload_watermark_store::conformance_tests!(common::pg::fresh_store);
