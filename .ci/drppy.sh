#!/usr/bin/env bash
# DRP wire compatibility: RackN's own Python SDK (drppy-client, generated
# from DRP's API) drives `fleetkv serve` through the seed's cluster flow
# (tests/drppy/seed_flow.py) and deserializes every answer into its models.
set -euo pipefail
cd "$(dirname "$0")/.."

source .ci/serve.sh drppy-client
"$WORK/venv/bin/pip" show drppy-client | grep -E '^(Name|Version):'
start_server

"$WORK/venv/bin/python" tests/drppy/seed_flow.py "$URL" "$(cat "$WORK/db/admin.key")" || {
    echo "== fleetkv serve log"
    cat "$WORK/serve.log"
    exit 1
}
kill -0 "$SERVE_PID" || { echo "fleetkv serve died"; cat "$WORK/serve.log"; exit 1; }
