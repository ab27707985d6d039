#!/usr/bin/env bash
# Compiles every publishable crate with each feature alone, none, and all, under
# clippy with warnings as errors. The whole test suite runs once, on the default
# features (scripts/test.sh); this only proves the other combinations build and
# lint clean, so a feature nobody's defaults turn on cannot rot.
#   bash scripts/features.sh            # the matrix
#   bash scripts/features.sh --list     # print it
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# crate: the feature sets to build besides the defaults (already covered by the
# workspace-wide clippy run): "-" is no features at all, "all" every feature.
matrix=(
    "offload-core: - testing conformance sqlx rustls all"
    "offload-source-clickhouse: - lz4 rustls all"
    "offload-sink-iceberg: - sqlite postgres rest s3 rustls all"
    "offload-watermark-store: - file postgres rustls conformance all"
    "offload-reconcile: - kafka all"
    # The program's features only pass through to the crates above (checked
    # there one by one); its defaults (rustls, s3) and failpoints (every test
    # build) are linted by the workspace run: none, rest alone and all remain.
    "offload-cli: - rest all"
)

run() {
    local crate=$1 set=$2 args=(-p "$1" --locked)
    case "$set" in
        -) args+=(--no-default-features) ;;
        all) args+=(--all-features) ;;
        *) args+=(--no-default-features --features "$set") ;;
    esac
    printf 'features: %-28s %s\n' "$crate" "$set"
    cargo clippy "${args[@]}" --quiet -- -D warnings
}

for row in "${matrix[@]}"; do
    crate="${row%%:*}"
    for set in ${row#*:}; do
        if [[ "${1:-}" == --list ]]; then printf '%-28s %s\n' "$crate" "$set"; else run "$crate" "$set"; fi
    done
done
