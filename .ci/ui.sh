#!/usr/bin/env bash
# The UI in a real browser: Debian's chromium and its chromedriver (never a
# downloaded browser; SE_OFFLINE keeps selenium from fetching one), driven
# headless by selenium (PyPI, pinned) through tests/ui/browser.py against a
# fresh `fleetkv serve`. Screenshots stay in the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
chromium --version
SELENIUM_VERSION=4.51.0
source .ci/serve.sh "selenium==$SELENIUM_VERSION"
start_server

# Chromium leaves its singleton socket's directory in TMPDIR when it is
# stopped: keep it in the scratch directory, which the cleanup removes.
mkdir -p "$WORK/tmp"
TMPDIR="$WORK/tmp" SE_OFFLINE=true "$WORK/venv/bin/python" tests/ui/browser.py "$URL" "$(cat "$WORK/db/admin.key")" "$BIN" "$WORK" "$@" || {
    echo "== fleetkv serve log"
    cat "$WORK/serve.log"
    exit 1
}
kill -0 "$SERVE_PID" || { echo "fleetkv serve died"; cat "$WORK/serve.log"; exit 1; }
