#!/usr/bin/env bash
# Sets everything up, then runs the main job on embedded defaults: the real
# ClickHouse engine (chdb) with seed-like market data, offloaded into a local
# Iceberg warehouse (SQLite catalog, file watermark store) while new rows keep
# arriving, and prints a summary checked by an independent Iceberg reader.
#   bash scripts/demo.sh [--seconds 20] [--rows 1000000] [--dir .run/demo]
# The demo and the program are built in release, so the rates it prints are the
# engine's; OFFLOAD_DEMO_PROFILE=dev reuses the test suite's build instead (slower
# rates; figures in examples/README.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
cargo run --locked -q --profile "${OFFLOAD_DEMO_PROFILE:-release}" -p offload-examples --example demo -- "$@"
