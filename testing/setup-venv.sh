#!/usr/bin/env bash
# Create (or refresh) the Python venv that backs our test tooling:
#   * chdb (embedded ClickHouse) behind testing/chdb-front/server.py
#   * pyiceberg for cross-checking Iceberg output
#
# Usage: bash testing/setup-venv.sh
#   OFFLOAD_VENV=/path/to/venv  overrides the location (default: <repo>/.venv)
#
# Idempotent: pip only runs when testing/requirements.txt changed since the
# last successful install (tracked by a sha256 stamp inside the venv).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
venv="${OFFLOAD_VENV:-$repo/.venv}"
req="$script_dir/requirements.txt"
stamp="$venv/.offload-requirements.sha256"
python="${PYTHON:-python3}"

log() { printf 'setup-venv: %s\n' "$*" >&2; }

make_venv() {
    "$python" -m venv "$venv"
}

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv at $venv"
    if ! make_venv; then
        # Debian ships venv/ensurepip in a separate package.
        rm -rf "$venv"
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            log "venv creation failed; installing python3-venv via apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update
            apt-get install -y python3-venv
            make_venv
        else
            log "venv creation failed; install python3-venv (apt-get install python3-venv) and rerun"
            exit 1
        fi
    fi
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    log "installing $req"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$venv/bin/python" -m pip install --disable-pip-version-check -r "$req"
    # Written last: an interrupted install is retried next time.
    printf '%s\n' "$want" >"$stamp"
else
    log "requirements unchanged, nothing to install"
fi

echo "$venv"
