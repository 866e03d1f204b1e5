"""The seed's cluster flow, driven through DRP's own Python SDK.

Usage: seed_flow.py URL ADMIN_KEY

Every call goes through drppy-client's API classes (MachinesApi,
ProfilesApi, ParamsApi) and every answer, errors included, is deserialized
into the SDK's own models; `conforms` then holds each answer's raw JSON to
the model's field names and types, so a field fleetkv names or types
differently from DRP fails here. Prints one line per check and closes with
`N passed, M failed`; exits 1 on any failure.
"""

import json
import sys
import threading
import traceback
import urllib.request

import drppy_client
from drppy_client import models
from drppy_client.rest import ApiException

URL, KEY = sys.argv[1], sys.argv[2]
# Fields fleetkv adds to DRP's objects (the store revision of the last
# write); every other field must be one DRP's model knows.
EXTENSIONS = {"Revision"}

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")
    return ok


def client(bearer=None, basic=None):
    cfg = drppy_client.Configuration()
    cfg.host = URL + "/api/v3"
    if bearer is not None:
        cfg.api_key["Authorization"] = bearer
        cfg.api_key_prefix["Authorization"] = "Bearer"
    if basic is not None:
        cfg.username, cfg.password = basic
    return drppy_client.ApiClient(cfg)


def type_ok(value, typ):
    """Does JSON `value` fit swagger type `typ` as the SDK declares it?"""
    if typ == "object":
        return True
    if typ == "str" or typ == "datetime":
        return isinstance(value, str)
    if typ == "bool":
        return isinstance(value, bool)
    if typ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ.startswith("list["):
        inner = typ[5:-1]
        return isinstance(value, list) and all(type_ok(v, inner) for v in value)
    if typ.startswith("dict("):
        inner = typ[typ.index(",") + 1 : -1].strip()
        return isinstance(value, dict) and all(type_ok(v, inner) for v in value.values())
    klass = getattr(models, typ)
    if not klass.swagger_types:
        # Free-form models (Meta: string annotations).
        return isinstance(value, dict)
    return isinstance(value, dict) and not mismatches(value, typ)


def mismatches(raw, model):
    klass = getattr(models, model)
    by_json = {j: a for a, j in klass.attribute_map.items()}
    out = []
    for field, value in raw.items():
        if field not in by_json:
            if field not in EXTENSIONS:
                out.append(f"{field} is not a field of DRP's {model}")
            continue
        typ = klass.swagger_types[by_json[field]]
        if not type_ok(value, typ):
            out.append(f"{field}={value!r} is not {typ}")
    if model == "Meta":
        out += [f"Meta.{k} is not a string" for k, v in raw.items() if not isinstance(v, str)]
    return out


def conforms(api, model, got, what):
    """`got` (the SDK's deserialized answer) came from the last response of
    `api`; its raw JSON must fit `model` field by field."""
    raw = json.loads(api.api_client.last_response.data)
    items = raw if isinstance(raw, list) else [raw]
    objs = got if isinstance(got, list) else [got]
    bad = [m for r in items for m in mismatches(r, model)]
    typed = all(isinstance(o, getattr(models, model)) for o in objs)
    return check(typed and not bad, f"{what}: {model} model ({'; '.join(bad) or 'fits'})")


class Answer:
    """An error's body in the shape `ApiClient.deserialize` reads."""

    def __init__(self, exc):
        self.data = exc.body


def error_model(api, exc):
    return api.api_client.deserialize(Answer(exc), "Error")


def drp_error(api, call, status, what):
    """`call` must fail with `status`; its body must be DRP's Error model."""
    try:
        call()
    except ApiException as e:
        err = error_model(api, e)
        raw = json.loads(e.body)
        bad = mismatches(raw, "Error")
        return check(
            e.status == status
            and isinstance(err, models.Error)
            and err.code == status
            and bool(err.messages)
            and not bad,
            f"{what}: {e.status} {err.type} {err.messages[:1] if err.messages else ''} {'; '.join(bad)}",
        )
    return check(False, f"{what}: expected {status}, got success")


admin = client(bearer=KEY)
machines = drppy_client.MachinesApi(admin)
profiles = drppy_client.ProfilesApi(admin)
params = drppy_client.ParamsApi(admin)
M = {}  # name -> Uuid


def step_param_definitions():
    for name, schema in [
        ("cluster/leader", {"type": "boolean", "default": False}),
        ("my/data", {"type": "string", "default": "none"}),
    ]:
        p = params.create_param(models.Param(name=name, schema=schema, secure=False))
        conforms(params, "Param", p, f"create_param {name}")
        check(p.name == name and p.schema == schema and p.secure is False, f"param {name} as sent")
    # GET /params/my%2Fdata: the SDK encodes the param name's slash.
    p = params.get_param("my/data")
    conforms(params, "Param", p, "get_param my/data")
    check(p.schema.get("default") == "none", "get_param answers the definition")
    all_params = params.list_params()
    conforms(params, "Param", all_params, "list_params")


def step_cluster_profile():
    p = profiles.create_profile(
        models.Profile(
            name="example",
            description="the seed's cluster",
            params={"cluster/profile": "example", "cluster/filter": "Profiles Eq example"},
        )
    )
    conforms(profiles, "Profile", p, "create_profile example")
    got = profiles.get_profile("example")
    conforms(profiles, "Profile", got, "get_profile example")
    check(got.params.get("cluster/filter") == "Profiles Eq example", "profile params as sent")


def step_members():
    for name in ["manager", "m1", "m2", "m3", "m4"]:
        m = machines.create_machine(models.Machine(name=name, profiles=["example"]))
        conforms(machines, "Machine", m, f"create_machine {name}")
        M[name] = m.uuid
    # A machine outside the cluster.
    m = machines.create_machine(models.Machine(name="other"))
    M["other"] = m.uuid
    check(len(set(M.values())) == 6, "six machines, six Uuids")


def step_lists_and_counts():
    # drpcli's words, as the SDK turns them into query keys.
    got = machines.filter("Profiles", "Eq", "example", "sort", "Name", "reverse")
    conforms(machines, "Machine", got, "filter Profiles Eq example sort Name reverse")
    check([m.name for m in got] == ["manager", "m4", "m3", "m2", "m1"], f"filter order {[m.name for m in got]}")
    got = machines.list_machines(profiles="Eq(example)", sort="Name", reverse=False, limit=2, offset=1)
    conforms(machines, "Machine", got, "list_machines with index keys")
    check([m.name for m in got] == ["m2", "m3"], f"limit/offset page {[m.name for m in got]}")
    got = machines.list_machines(name="Re(^m[0-9]$)", aggregate=True, slim="Meta")
    check(sorted(m.name for m in got) == ["m1", "m2", "m3", "m4"], "Re filter, aggregate=True")
    check(all(m.params.get("my/data") == "none" for m in got), "aggregated list shows defaults")
    stats = machines.list_stats_machines(profiles="Eq(example)")
    counts = {s.name: s.count for s in stats}
    check(
        all(isinstance(s, models.Stat) for s in stats) and counts.get("count") == 5,
        f"list_stats_machines (HEAD): X-DRP-List-Count {counts}",
    )
    stats = profiles.list_stats_profiles()
    check({s.name: s.count for s in stats}.get("count") == 2, "list_stats_profiles: example and global")
    stats = params.list_stats_params()
    check({s.name: s.count for s in stats}.get("count") == 2, "list_stats_params")


def step_params():
    uuid = M["m1"]
    # POST /machines/{uuid}/params/cluster%2Fleader (the SDK first reads the
    # definition, GET /params/cluster%2Fleader, to see whether it is secure).
    machines.post_machine_param(True, uuid, "cluster/leader")
    v = machines.get_machine_param(uuid, "cluster/leader")
    check(v is True, f"post_machine_param cluster/leader, read back {v!r}")
    own = machines.get_machine_params(uuid)
    check(own == {"cluster/leader": True}, f"get_machine_params own {own}")
    agg = machines.get_machine_params(uuid, aggregate=True)
    check(
        agg.get("cluster/leader") is True
        and agg.get("my/data") == "none"
        and agg.get("cluster/profile") == "example",
        f"get_machine_params(aggregate=True) {agg}",
    )
    m = machines.get_machine(uuid, aggregate=True)
    conforms(machines, "Machine", m, "get_machine(aggregate=True)")
    check(m.params.get("cluster/filter") == "Profiles Eq example", "get_machine aggregate has profile params")
    v = machines.get_machine_param(M["m2"], "cluster/leader", aggregate=True)
    check(v is False, f"get_machine_param(aggregate=True) default {v!r}")
    # Replace every param at once (DRP's POST …/params).
    new = machines.post_machine_params({"cluster/leader": False, "my/data": "set"}, M["m3"])
    check(new == {"cluster/leader": False, "my/data": "set"}, f"post_machine_params {new}")
    new = profiles.post_profile_params(
        {"cluster/profile": "example", "cluster/filter": "Profiles Eq example", "my/data": "p"}, "example"
    )
    check(new.get("my/data") == "p", "post_profile_params")
    v = profiles.get_profile_param("example", "my/data")
    check(v == "p", f"get_profile_param my/data {v!r}")
    old = machines.delete_machine_param(M["m3"], "my/data")
    check(old == "set", f"delete_machine_param answers the old value {old!r}")


def race(api_class, method, target, what, n=6):
    """`n` threads, each with its own client, send the same `test` op with a
    different new value: exactly one wins, the rest get 409 Conflict."""
    start = threading.Barrier(n)
    results = [None] * n

    def run(i):
        api = api_class(client(bearer=KEY))
        ops = [
            {"op": "test", "path": "/Params/my~1data", "value": "none"},
            {"op": "replace", "path": "/Params/my~1data", "value": f"winner-{i}"},
        ]
        start.wait()
        try:
            getattr(api, method)(ops, target)
            results[i] = 200
        except ApiException as e:
            results[i] = (e.status, error_model(api, e).type)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            results[i] = repr(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [i for i, r in enumerate(results) if r == 200]
    losses = [r for r in results if r != 200]
    check(len(wins) == 1 and all(r == (409, "Conflict") for r in losses), f"{what}: {results}")
    return wins


def step_races():
    uuid = M["m4"]
    machines.post_machine_param("none", uuid, "my/data")
    wins = race(drppy_client.MachinesApi, "patch_machine", uuid, "patch_machine race on my/data")
    if wins:
        v = machines.get_machine_param(uuid, "my/data")
        check(v == f"winner-{wins[0]}", f"the winner's value stayed: {v!r}")
    profiles.patch_profile([{"op": "replace", "path": "/Params/my~1data", "value": "none"}], "example")
    wins = race(drppy_client.ProfilesApi, "patch_profile", "example", "patch_profile race on my/data")
    got = profiles.get_profile("example")
    conforms(profiles, "Profile", got, "get_profile after the race")
    if wins:
        check(got.params.get("my/data") == f"winner-{wins[0]}", "the profile winner's value stayed")


def step_put():
    m = machines.get_machine(M["m2"])
    m.description = "replaced through put_machine"
    m.params = {"my/data": "put"}
    out = machines.put_machine(m, M["m2"])
    conforms(machines, "Machine", out, "put_machine")
    check(
        out.description == "replaced through put_machine" and out.params == {"my/data": "put"},
        "put_machine answer",
    )
    # By name, as drpcli addresses machines: `Name:m2` encoded as Name%3Am2.
    got = machines.get_machine("Name:m2")
    check(got.uuid == M["m2"] and got.params == {"my/data": "put"}, "get_machine Name:m2")
    p = profiles.get_profile("example")
    p.description = "put"
    out = profiles.put_profile(p, "example")
    conforms(profiles, "Profile", out, "put_profile")
    check(out.description == "put", "put_profile answer")


def step_errors():
    drp_error(machines, lambda: machines.get_machine("Name:nope"), 404, "get_machine unknown: 404")
    drp_error(params, lambda: params.get_param("no/such"), 404, "get_param unknown: 404")
    drp_error(
        machines,
        lambda: machines.create_machine(models.Machine(name="m1")),
        409,
        "create_machine duplicate Name: 409",
    )
    drp_error(
        machines,
        lambda: machines.post_machine_param("yes", M["m1"], "cluster/leader"),
        400,
        "post_machine_param against the schema: 400",
    )
    drp_error(
        machines,
        lambda: machines.get_machine_params(M["m1"], aggregate="maybe"),
        400,
        "aggregate=maybe: 400",
    )
    drp_error(
        machines,
        lambda: machines.get_machine("a/b"),
        400,
        "a machine name with '/': 400",
    )
    drp_error(
        machines,
        lambda: machines.patch_machine([{"op": "test", "path": "/Name", "value": "x"}], M["m1"]),
        409,
        "patch_machine failing test: 409",
    )
    nobody = drppy_client.MachinesApi(client(bearer="not-the-key"))
    drp_error(nobody, lambda: nobody.list_machines(), 401, "wrong bearer key: 401")
    wrong = drppy_client.MachinesApi(client(basic=("admin", "wrong")))
    drp_error(wrong, lambda: wrong.list_machines(), 401, "wrong basic password: 401")
    # Basic admin:KEY works like the bearer key.
    basic = drppy_client.MachinesApi(client(basic=("admin", KEY)))
    got = basic.list_machines()
    conforms(basic, "Machine", got, "basic auth admin:KEY")
    # A profile token (minted by fleetkv's own endpoint; the SDK has no call
    # for it) may use its profile, not list machines: 403.
    req = urllib.request.Request(
        URL + "/api/v3/profiles/example/token?ttl=60",
        method="POST",
        headers={"Authorization": "Bearer " + KEY},
    )
    token = json.loads(urllib.request.urlopen(req, timeout=10).read())["Token"]
    scoped = client(bearer=token)
    own = drppy_client.ProfilesApi(scoped)
    got = own.get_profile("example")
    conforms(own, "Profile", got, "profile token reads its profile")
    theirs = drppy_client.MachinesApi(scoped)
    drp_error(theirs, lambda: theirs.list_machines(), 403, "profile token lists machines: 403")


def step_deletes():
    m = machines.delete_machine(M["other"])
    conforms(machines, "Machine", m, "delete_machine")
    check(m.name == "other", "delete_machine answers the machine")
    drp_error(machines, lambda: machines.get_machine(M["other"]), 404, "deleted machine: 404")
    for name in ["manager", "m1", "m2", "m3", "m4"]:
        machines.delete_machine(M[name])
    p = profiles.delete_profile("example")
    conforms(profiles, "Profile", p, "delete_profile")
    d = params.delete_param("my/data")
    conforms(params, "Param", d, "delete_param my/data (DELETE /params/my%2Fdata)")
    stats = machines.list_stats_machines()
    check({s.name: s.count for s in stats}.get("count") == 0, "no machines left")


for step in [
    step_param_definitions,
    step_cluster_profile,
    step_members,
    step_lists_and_counts,
    step_params,
    step_races,
    step_put,
    step_errors,
    step_deletes,
]:
    try:
        step()
    except Exception:  # noqa: BLE001 - every failure is a failed check
        check(False, f"{step.__name__} raised:\n{traceback.format_exc()}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
