#!/usr/bin/env bash
# Installs and starts everything the tests and the demo need, on a fresh Debian 12
# machine that has only the Rust toolchain. Idempotent: a second run does nothing
# that is already done.
#
#   - PostgreSQL on 127.0.0.1:5432 with trust auth on loopback (the watermark store
#     and the Iceberg SQL catalog's production backend); installed from Debian if
#     missing, started if stopped;
#   - a Python venv with chdb (the real ClickHouse engine), lz4 and pyiceberg
#     (testing/setup-venv.sh);
#   - build tools the native dependencies need (gcc, make, pkg-config);
#   - s3s-fs (an S3-compatible server) in ~/.cache/offload/tools/bin.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; exit 1
    fi
}

apt_updated=
apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    if [[ -z "$apt_updated" ]]; then as_root apt-get update -qq; apt_updated=1; fi
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- native build tools ------------------------------------------------------------
if command -v dpkg >/dev/null; then
    apt_install build-essential pkg-config python3 python3-venv curl ca-certificates
fi

# --- PostgreSQL ------------------------------------------------------------------------
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql postgresql-client
    fi
    ver="$(ls /etc/postgresql | sort -V | tail -n1)"
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    # Test machines only: trust loopback connections, as on the team's machines.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        log "enabling trust auth on loopback in $hba"
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || as_root pg_ctlcluster "$ver" main start
    for _ in $(seq 1 60); do pg_up && break; sleep 1; done  # waiting for a daemon, bounded
    pg_up || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
fi

# --- S3 ------------------------------------------------------------------------------
# s3s-fs: a real S3 server over a directory; the S3 tests start their own
# (offload_testkit::S3Server). 0.14.1 is the newest that builds on our rustc.
tools="$HOME/.cache/offload/tools"
if [[ ! -x "$tools/bin/s3s-fs" ]]; then
    log "installing s3s-fs 0.14.1 into $tools"
    cargo install --locked --quiet --root "$tools" s3s-fs@0.14.1 --features binary
fi

# --- promtool -------------------------------------------------------------------------
# The alert rules' checks and unit tests (monitoring/alerts_test.yml). Only the
# promtool binary of Debian's `prometheus` package (2.42) is taken: installing
# the package itself would start a Prometheus daemon on :9090 that nothing here
# wants. A promtool already on PATH is used as it is.
tools="$HOME/.cache/offload/tools"
if ! command -v promtool >/dev/null && [[ ! -x "$tools/bin/promtool" ]]; then
    log "installing promtool (Debian's prometheus package, binary only) into $tools/bin"
    if [[ -z "$apt_updated" ]]; then as_root apt-get update -qq; apt_updated=1; fi
    deb="$(mktemp -d)"
    (cd "$deb" && apt-get download -qq prometheus && dpkg-deb -x prometheus_*.deb x)
    mkdir -p "$tools/bin"
    install -m 0755 "$deb/x/usr/bin/promtool" "$tools/bin/promtool"
    rm -rf "$deb"
fi

# --- systemd-analyze --------------------------------------------------------------------
# cli/tests/deploy.rs verifies the example unit (deploy/offload.service) with it;
# Debian's systemd package ships it (installing it starts nothing where no
# systemd runs, as in a container).
if command -v dpkg >/dev/null && ! command -v systemd-analyze >/dev/null; then
    apt_install systemd
fi

# --- Python tooling (chdb front, pyiceberg) -------------------------------------------------
bash "$repo/testing/setup-venv.sh" >/dev/null
log "ready"
