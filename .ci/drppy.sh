#!/usr/bin/env bash
# DRP wire compatibility: RackN's own Python SDK (drppy-client, generated
# from DRP's API) drives `fleetkv serve` through the seed's cluster flow
# (tests/drppy/seed_flow.py) and deserializes every answer into its models.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --bin fleetkv
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
"$WORK/venv/bin/pip" install -q drppy-client
"$WORK/venv/bin/pip" show drppy-client | grep -E '^(Name|Version):'

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
"$BIN" serve --data "$WORK/db" --listen "127.0.0.1:$PORT" 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 200); do
    if python3 -c "import urllib.request; urllib.request.urlopen('$URL/api/v3/info', timeout=1)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
    sleep 0.1
done

"$WORK/venv/bin/python" tests/drppy/seed_flow.py "$URL" "$(cat "$WORK/db/admin.key")" || {
    echo "== fleetkv serve log"
    cat "$WORK/serve.log"
    exit 1
}
kill -0 "$SERVE_PID" || { echo "fleetkv serve died"; cat "$WORK/serve.log"; exit 1; }
