#!/usr/bin/env bash
# Runs offload-reconcile's Kafka tests against tansu, a real Kafka-compatible
# broker, instead of librdkafka's mock cluster (which cannot answer
# offsets_for_times). On tansu the tests also require the reconciler to count
# with offsets_for_times.
#
#   bash reconcile/tests/tansu.sh            # from the repo root
#
# - installs tansu 0.6.0 into ${OFFLOAD_TOOLS:-$HOME/.cache/offload/tools} when it
#   is not there yet (about 35 min on 2 cores, once; never rebuilt per run);
# - starts it on a free loopback port with a fresh SQLite storage file (its
#   memory:// engine reports wrong high watermarks on ListOffsets);
# - runs `cargo test -p offload-reconcile --features kafka --test kafka` with KAFKA_BOOTSTRAP set;
# - stops the broker and removes its files, also on failure or Ctrl-C.
# Extra arguments are passed to the test binary (e.g. a test name filter).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${OFFLOAD_TOOLS:-$HOME/.cache/offload/tools}"
tansu="$tools/bin/tansu"
log() { printf 'tansu.sh: %s\n' "$*" >&2; }

if [[ ! -x "$tansu" ]]; then
    log "installing tansu 0.6.0 into $tools (one time, ~35 min on 2 cores)"
    cargo install tansu@0.6.0 --locked --no-default-features --features dynostore,libsql --root "$tools"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/offload-tansu.XXXXXX")"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
broker_pid=
cleanup() {
    if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

log "starting tansu on 127.0.0.1:$port (storage $work/tansu.db, log $work/tansu.log)"
# tansu resolves sqlite://NAME against its working directory (even
# sqlite:///abs/path), so it runs in the scratch directory.
(
    cd "$work"
    exec "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db" \
        >"$work/tansu.log" 2>&1
) &
broker_pid=$!

# Wait (bounded) until the broker accepts connections, or fail with its log.
for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        log "tansu exited early:"; cat "$work/tansu.log" >&2; exit 1
    fi
    sleep 0.1
done
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "tansu did not listen on $port within 30 s:"; cat "$work/tansu.log" >&2; exit 1
fi

export KAFKA_BOOTSTRAP="127.0.0.1:$port"
log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
cd "$repo"
status=0
cargo test -p offload-reconcile --features kafka --test kafka -- --include-ignored "$@" || status=$?
if [[ $status -ne 0 ]]; then
    log "tests failed; the broker's log:"; tail -n 50 "$work/tansu.log" >&2 || true
fi
exit "$status"
