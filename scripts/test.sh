#!/usr/bin/env bash
# The whole test suite: what README.md tells you to run and what CI runs.
#   formatting and lints (warnings are errors), every crate's tests against real
#   PostgreSQL, the real ClickHouse engine (chdb) and real Iceberg readers, the
#   rustdoc examples, and a packaging dry run of every publishable crate.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh

step() { printf '\n=== %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
step "cargo package --workspace"
cargo package --workspace --locked --allow-dirty --quiet
