# Sourced by the CI scripts that test a running `fleetkv serve`: builds the
# debug binary, makes a scratch directory with a Python virtualenv holding
# the given PyPI packages, and starts the server on a free loopback port.
# The server is stopped and the scratch directory removed on exit.
#   source .ci/serve.sh PACKAGE... ; start_server [SERVE_FLAGS...]
# sets BIN, WORK, URL and SERVE_PID.

# The binary as the tests build it, with the features CI tests with
# (.ci/run): building a test target resolves dependency features the way
# `cargo test` does (dev-dependencies included), so after `cargo test` this
# is a no-op; `cargo build --bin` resolves them without the dev-dependencies
# and recompiled most of the tree (2 min 13 s in CI).
cargo build --test server ${FLEETKV_FEATURES:+--features "$FLEETKV_FEATURES"}
BIN="${CARGO_TARGET_DIR:-target}/debug/fleetkv"
WORK=$(mktemp -d)
SERVE_PID=""
cleanup() {
    if [ -n "$SERVE_PID" ]; then
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! python3 -m venv "$WORK/venv" >/dev/null 2>&1; then
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$WORK/venv"
fi
"$WORK/venv/bin/pip" install -q "$@"

start_server() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    URL="http://127.0.0.1:$port"
    "$BIN" serve --data "$WORK/db" --listen "127.0.0.1:$port" "$@" 2>"$WORK/serve.log" &
    SERVE_PID=$!
    for _ in $(seq 200); do
        if python3 -c "import urllib.request; urllib.request.urlopen('$URL/api/v3/info', timeout=1)" 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
        sleep 0.1
    done
}
