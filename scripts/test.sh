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
# Features off by default whose tests need nothing beyond the suite's own
# fixtures: the REST catalog tests (sink-iceberg/tests/rest.rs) start their
# server from the venv (testing/rest-catalog/server.py), the S3 tests
# (sink-iceberg/tests/s3.rs) their own s3s-fs (installed by setup.sh), the TLS
# tests (tests/tls.rs of the store, the source and the CLI) a TLS-only
# PostgreSQL (Debian's initdb + postgres) and the chdb front's HTTPS listener,
# with certificates they make.
# Linted and tested with the workspace.
extra_features=(--features offload-sink-iceberg/rest,offload-sink-iceberg/s3,offload-sink-iceberg/rustls,offload-watermark-store/rustls,offload-source-clickhouse/rustls)
step "alert rules (promtool check + unit tests)"
# setup.sh puts promtool in ~/.cache/offload/tools/bin when it is not on PATH.
promtool="$(command -v promtool || echo "$HOME/.cache/offload/tools/bin/promtool")"
"$promtool" check rules monitoring/alerts.yml
"$promtool" test rules monitoring/alerts_test.yml
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked "${extra_features[@]}" -- -D warnings
# The harness is `bench = false` (run by its own command), so --all-targets skips it.
cargo clippy -p offload-benches --bench harness --locked -- -D warnings
step "feature matrix (clippy per crate and feature set)"
bash scripts/features.sh
step "cargo test"
cargo test --workspace --locked "${extra_features[@]}"
step "cargo package --workspace"
# Packaging verifies each crate against a temporary local registry holding its
# siblings. Cargo never re-extracts a name and version it has unpacked before, so
# a sibling changed since an earlier run (still 0.1.0) would be verified stale.
# The same holds for what an earlier run left in the (shared) target dir: the
# tarballs, and our crates compiled from them (registry crates are never rebuilt
# for a changed source, since a published version cannot change).
target="${CARGO_TARGET_DIR:-target}"
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/offload-* "$target/package" \
    "$target"/debug/.fingerprint/offload-* "$target"/debug/deps/*offload_*
cargo package --workspace --locked --allow-dirty --quiet
