#!/usr/bin/env bash
# Sets everything up, then runs the main job on embedded defaults: the real
# ClickHouse engine (chdb) with seed-like market data, offloaded into a local
# Iceberg warehouse (SQLite catalog, file watermark store) while new rows keep
# arriving, and prints a summary checked by an independent Iceberg reader.
#   bash scripts/demo.sh [--seconds 20] [--rows 1000000] [--dir .run/demo]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
cargo run --locked -q -p offload-examples --example demo -- "$@"
