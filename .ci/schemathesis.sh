#!/usr/bin/env bash
# OpenAPI conformance of `fleetkv serve`: schemathesis fuzzes every operation
# of the generated /api/v3/openapi.json and runs its whole default set of
# checks (schemathesis 4: every check but max_response_time, which needs a
# limit): no 5xx, status codes, content types, headers and bodies as the
# document says, valid data accepted, invalid data refused, ... Pinned, so a
# new release cannot change what CI checks. Bounded: few examples, 3 minutes
# at most.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
source .ci/serve.sh "schemathesis==$SCHEMATHESIS_VERSION"
# A short request timeout: the long-poll waits (wait/count, wait/machines)
# are cut to it less 0.5 s, so a generated `timeout` never makes a case slow.
start_server --request-timeout 3
KEY=$(cat "$WORK/db/admin.key")
python3 - "$URL" "$KEY" "$WORK/openapi.json" <<'PY'
import json, sys, urllib.request
url, key, out = sys.argv[1:]
auth = {"Authorization": "Bearer " + key}
req = urllib.request.Request(url + "/api/v3/openapi.json", headers=auth)
open(out, "wb").write(urllib.request.urlopen(req, timeout=10).read())
# A small cluster for the fuzzed calls to find (see schemathesis.toml below):
# profile `c` with three members, so elect, render, token, the machine wait
# and workflow-all reach their real work, not only their 404s.
seed = [
    ("params", {"Name": "cluster/manager", "Schema": {"type": "boolean", "default": False}}),
    ("params", {"Name": "cluster/leader", "Schema": {"type": "boolean", "default": False}}),
    ("profiles", {"Name": "c", "Params": {"cluster/profile": "c", "cluster/filter": "Profiles Eq c"}}),
] + [("machines", {"Name": f"node-{i}", "Profiles": ["c"]}) for i in range(1, 4)]
for kind, body in seed:
    req = urllib.request.Request(url + "/api/v3/" + kind, data=json.dumps(body).encode(),
                                 headers={**auth, "Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
PY
# Known keys are mixed into the generated path parameters and workflow-all
# filters (the rest stay random), so most operations see existing objects.
cat >"$WORK/schemathesis.toml" <<'TOML'
[dictionaries.ids]
values = ["Name:node-1", "node-2", "c", "global", "cluster/leader"]

[dictionaries.filters]
values = ["Profiles Eq c", "Name Eq node-1", "cluster/leader Eq true Profiles Eq c"]

[parameters]
"path.id" = { dictionary = "ids", probability = 0.6 }
"path.name" = { dictionary = "ids", probability = 0.6 }
"body.Filter" = { dictionary = "filters", probability = 0.6 }

# Known mismatches between the document and the server, left to the API's
# owners (reported with this script's change), off for their operation only:
# POST /clusters/{name} accepts a missing body (it initializes the cluster
# with defaults) though the document requires one;
[[operations]]
include-name = "POST /api/v3/clusters/{name}"
checks.negative_data_rejection.enabled = false

# POST /import answers its count as application/json; the document says
# text/plain.
[[operations]]
include-name = "POST /api/v3/import"
checks.content_type_conformance.enabled = false
TOML

# Checks excluded everywhere, and why:
# - positive_data_acceptance: "schema-valid" is not "valid" here. A filter,
#   sort key or name is a string to the document but has a grammar and rules
#   of its own (a filter like `@8`, `sort=`, a name with control characters,
#   a `{kind}` of `params` for the params routes, an election with no
#   candidates, a timeout of 1e308 s): the server answers those 400 with a
#   typed error, as it must; the document cannot say so.
# - use_after_free: DRP answers GET of an absent param with 200 `null`, so
#   a deleted param reads as present. fleetkv keeps DRP's answer.
#
# GET /api/v3/events and GET /api/v3/watch/members are excluded: each is an
# endless text/event-stream (the server's request timeout does not end a
# stream once it has started), so every case would hang until schemathesis
# gave up on it as a network error after its own --request-timeout.
# tests/server.rs covers them (coordination_endpoints: events, resuming with
# Last-Event-ID, a bad `from`; membership_stream_over_sse_resumes_with_last_event_id).
timeout 180 "$WORK/venv/bin/schemathesis" --config-file "$WORK/schemathesis.toml" \
    run "$WORK/openapi.json" \
    --url "$URL" \
    --exclude-path /api/v3/events \
    --exclude-path /api/v3/watch/members \
    -H "Authorization: Bearer $KEY" \
    --exclude-checks positive_data_acceptance,use_after_free \
    --max-examples 15 \
    --request-timeout 10 \
    --generation-deterministic
kill -0 "$SERVE_PID" || { echo "fleetkv serve died"; cat "$WORK/serve.log"; exit 1; }
