//! Imports never guess a kind and never half-apply (issue 18, deliverable 6):
//! through the embedded CLI, the remote CLI (`-E`) and `POST
//! /api/v3/import`, a refused document leaves the store as it was — the
//! same objects and the same revision — and a DRP content pack (profiles
//! that list profiles, definitions with schemas) round-trips field by field.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tempfile::TempDir;

mod common;

use common::{embedded, Server};

fn ok(db: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = embedded(db, args, stdin);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// The store's revision and its whole export (objects with their revisions).
fn state(db: &Path) -> (u64, String) {
    let export = ok(db, &["export"], None);
    let s = fleetkv::Store::open(db).unwrap();
    (s.revision(), export)
}

fn remote_state(server: &Server) -> (u64, String) {
    let (_, info, _) = server.call("GET", "/info", None, &[]);
    let (code, export, err) = server.cli(&["export"]);
    assert_eq!(code, 0, "{err}");
    (info["Revision"].as_u64().unwrap(), export)
}

fn seed() -> Value {
    json!({
        "params": [{"Name": "rack/slot", "Schema": {"type": "integer", "minimum": 0}}],
        "profiles": [{"Name": "rack", "Params": {"rack/slot": 0}}],
        "machines": (0..3).map(|i| json!({
            "Uuid": format!("00000000-0000-4000-8000-{i:012}"),
            "Name": format!("seed{i}"),
            "Profiles": ["rack"],
        })).collect::<Vec<_>>(),
    })
}

/// The issue's file: 41 plain profiles, then one that lists profiles.
fn issue_profiles() -> Value {
    let mut ps: Vec<Value> = (0..41)
        .map(|i| json!({"Name": format!("p{i}"), "Params": {"rack/slot": i}}))
        .collect();
    ps.push(json!({"Name": "bundle", "Profiles": ["p0", "p1"], "Params": {}}));
    Value::Array(ps)
}

/// Documents with one bad object in the middle, each with what the error
/// must say.
fn bad_documents() -> Vec<(Value, Vec<&'static str>, &'static str)> {
    let machines = |bad: &dyn Fn(&mut Value)| {
        let mut ms: Vec<Value> = (0..80)
            .map(|i| {
                json!({
                    "Uuid": format!("00000000-0000-4000-9000-{i:012}"),
                    "Name": format!("m{i}"),
                    "Profiles": ["rack"],
                    "Params": {"rack/slot": i},
                })
            })
            .collect();
        bad(&mut ms[41]);
        Value::Array(ms)
    };
    vec![
        (
            machines(&|m| m["Params"]["rack/slot"] = json!(-1)),
            vec![],
            "import machines #41: param rack/slot: value does not match its schema",
        ),
        (
            machines(&|m| m["Profiles"] = json!(["rack", "ghost"])),
            vec![],
            "import machines #41: invalid machine Profiles of m41: profile \"ghost\" does not exist",
        ),
        (
            machines(&|m| m["Name"] = json!("m3")),
            vec![],
            "import machines #41: invalid machine Name: \"m3\" is also the Name of machines #3",
        ),
        (
            machines(&|m| m["Name"] = json!("seed1")),
            vec![],
            "import machines #41: machine Name:seed1 already exists",
        ),
        (
            issue_profiles(),
            vec!["--kind", "profiles"],
            "",
        ),
        (
            {
                let mut ps = issue_profiles();
                ps[41]["Params"] = json!({"rack/slot": "x"});
                ps
            },
            vec!["--kind", "profiles"],
            "import profiles #41: param rack/slot: value does not match its schema",
        ),
        (
            json!({
                "params": [{"Name": "extra", "Schema": {"type": "string"}}],
                "profiles": [{"Name": "extra", "Params": {"extra": "yes"}}],
                "machines": [{"Name": "e0", "Profiles": ["extra"]}, {"Name": "e1", "Params": {"extra": 1}}],
            }),
            vec![],
            "import machines #1: param extra: value does not match its schema",
        ),
    ]
}

#[test]
fn ambiguous_arrays_are_refused_and_the_store_is_unchanged() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    ok(&db, &["import", "-"], Some(&seed().to_string()));
    let before = state(&db);
    for (doc, says) in [
        (issue_profiles(), "element #0: \"p0\" has no field only machines have"),
        (json!([{"Name": "n1"}]), "element #0"),
        (
            json!([{"Name": "a", "Uuid": "00000000-0000-4000-8000-00000000000a"}, {"Name": "d", "Schema": {}}]),
            "element #1: it is a param definition (it has Schema) but element #0 is a machine (it has Uuid)",
        ),
    ] {
        let (code, out, err) = embedded(&db, &["import", "-"], Some(&doc.to_string()));
        assert_eq!((code, out.as_str()), (2, ""), "{err}");
        assert!(err.contains(says) && err.contains("--kind"), "{err}");
        assert_eq!(state(&db), before);
    }
    // Said with --kind, the issue's file imports: 42 profiles, no machine.
    let f = write(dir.path(), "profiles.json", &issue_profiles());
    let f = f.to_str().unwrap();
    assert_eq!(ok(&db, &["import", f, "--kind", "profiles"], None), "42\n");
    assert_eq!(state(&db).0, before.0 + 1, "one write");
    assert_eq!(ok(&db, &["machines", "count"], None), "3\n");
}

#[test]
fn one_bad_object_in_the_middle_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    ok(&db, &["import", "-"], Some(&seed().to_string()));
    let before = state(&db);
    for (doc, args, says) in bad_documents() {
        if says.is_empty() {
            continue;
        }
        let mut a = vec!["import", "-"];
        a.extend(args);
        let (code, _, err) = embedded(&db, &a, Some(&doc.to_string()));
        assert_eq!(code, 2, "{err}");
        assert!(err.starts_with(&format!("Error: {says}")), "{says}: {err}");
        assert_eq!(state(&db), before, "{says}");
    }
}

#[test]
fn an_export_object_imports_in_one_write() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    ok(&a, &["import", "-"], Some(&seed().to_string()));
    let export = ok(&a, &["export"], None);
    let b = dir.path().join("b");
    ok(&b, &["export"], None);
    let (rev, _) = state(&b);
    // Three machines, one definition, two profiles (global's too).
    assert_eq!(ok(&b, &["import", "-"], Some(&export)), "6\n");
    let (after, text) = state(&b);
    assert_eq!(after, rev + 1);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["machines"].as_array().unwrap().len(), 3);
    // Every object of the write carries its one revision.
    for kind in ["params", "machines"] {
        for o in v[kind].as_array().unwrap() {
            assert_eq!(o["Revision"], json!(after), "{o}");
        }
    }
}

/// DRP's content-pack shape: definitions with varied schemas and extra
/// fields, profiles that list profiles (before the profiles they list, and
/// one that lists a profile the pack does not hold).
fn content_pack() -> (Value, Value) {
    let params = json!([
        {"Name": "ntp/servers", "Description": "NTP", "Documentation": "# NTP\nservers", "Schema": {"type": "array", "items": {"type": "string", "format": "hostname"}, "default": ["pool.ntp.org"]}, "Secure": false, "Meta": {"color": "blue", "icon": "clock"}, "ReadOnly": true, "Available": true, "Validated": true, "Errors": [], "Endpoint": "", "Bundle": "drp-community-content"},
        {"Name": "access-keys", "Schema": {"type": "object", "additionalProperties": {"type": "string"}}, "Secure": true},
        {"Name": "kernel-console", "Schema": {"type": "string", "default": "console=ttyS0,115200"}},
        {"Name": "bootstrap-tools", "Schema": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}},
        {"Name": "set-hostname", "Schema": {"type": "boolean"}, "Documentation": ""},
    ]);
    let profiles = json!([
        {"Name": "bootstrap-contexts", "Description": "Bootstrap", "Documentation": "lists others", "Profiles": ["bootstrap-tools", "not-in-this-pack"], "Params": {"bootstrap-tools": ["a", "b"]}, "Meta": {"icon": "cube"}, "Partial": false, "ReadOnly": true, "Available": true, "Validated": true, "Errors": [], "Bundle": "drp-community-content"},
        {"Name": "bootstrap-tools", "Params": {"set-hostname": true, "ntp/servers": ["a.example"]}, "Profiles": []},
        {"Name": "empty", "Profiles": null},
    ]);
    (params, profiles)
}

/// `got` holds every field of `want` with the same value (the store adds
/// only known fields' defaults and Revision).
fn holds(want: &Value, got: &Value) {
    let (Value::Object(w), Value::Object(g)) = (want, got) else {
        panic!("{want} vs {got}");
    };
    for (k, v) in w {
        assert_eq!(g.get(k), Some(v), "{k} of {}", w["Name"]);
    }
    let added: Map<String, Value> = g
        .iter()
        .filter(|(k, _)| !w.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &added {
        assert!(
            [
                "Revision",
                "Description",
                "Meta",
                "Params",
                "Secure",
                "Schema"
            ]
            .contains(&k.as_str()),
            "{k}: {v} added to {}",
            w["Name"]
        );
    }
}

#[test]
fn a_content_pack_round_trips_field_by_field() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    let (params, profiles) = content_pack();
    let pf = write(dir.path(), "params.json", &params);
    let rf = write(dir.path(), "profiles.json", &profiles);
    // Definitions are detected (Schema); profiles need their kind said.
    assert_eq!(ok(&db, &["import", pf.to_str().unwrap()], None), "5\n");
    let (code, _, err) = embedded(&db, &["import", rf.to_str().unwrap()], None);
    assert!(code == 2 && err.contains("--kind"), "{err}");
    assert_eq!(
        ok(
            &db,
            &["import", rf.to_str().unwrap(), "--kind", "profiles"],
            None
        ),
        "3\n"
    );
    let export: Value = serde_json::from_str(&ok(&db, &["export"], None)).unwrap();
    let by_name = |kind: &str, name: &Value| {
        export[kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| &o["Name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{kind} {name} missing"))
    };
    for p in params.as_array().unwrap() {
        holds(p, &by_name("params", &p["Name"]));
    }
    for p in profiles.as_array().unwrap() {
        holds(p, &by_name("profiles", &p["Name"]));
    }
    // A profile's Profiles are stored and exported as given; they do not
    // take part in effective params (DRP's own resolution is not modelled).
    let got = ok(
        &db,
        &["profiles", "params", "bootstrap-contexts", "--aggregate"],
        None,
    );
    let got: Value = serde_json::from_str(&got).unwrap();
    assert!(got.get("set-hostname").is_none(), "{got}");
    // The export imports back unchanged, into this store and a fresh one.
    let text = serde_json::to_string(&export).unwrap();
    ok(&db, &["import", "-"], Some(&text));
    let fresh = dir.path().join("fresh");
    ok(&fresh, &["import", "-"], Some(&text));
    let strip = |mut v: Value| {
        for kind in ["params", "profiles", "machines"] {
            for o in v[kind].as_array_mut().unwrap() {
                o.as_object_mut().unwrap().remove("Revision");
            }
        }
        v
    };
    let again: Value = serde_json::from_str(&ok(&fresh, &["export"], None)).unwrap();
    assert_eq!(strip(again), strip(export));
}

#[test]
fn remote_cli_and_http_import_behave_the_same() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    ok(&a, &["import", "-"], Some(&seed().to_string()));
    let server = Server::start_at(&dir.path().join("s"), &[]);
    assert_eq!(
        server
            .cli_with(&["import", "-"], Some(&seed().to_string()))
            .0,
        0
    );
    let before = remote_state(&server);
    let local_before = state(&a);
    for (doc, args, _) in bad_documents()
        .into_iter()
        .filter(|(_, _, says)| !says.is_empty())
        .chain([(issue_profiles(), vec![], "import: cannot tell the kind")])
    {
        let mut cmd = vec!["import", "-"];
        cmd.extend(args.iter().copied());
        let text = doc.to_string();
        let remote = server.cli_with(&cmd, Some(&text));
        let local = embedded(&a, &cmd, Some(&text));
        assert_eq!(remote, local, "{cmd:?}");
        // Over HTTP: the same message, as a 4xx.
        let q = args
            .last()
            .map(|k| format!("?kind={k}"))
            .unwrap_or_default();
        let (status, body, _) = server.call(
            "POST",
            &format!("/import{q}"),
            Some(("application/json", &text)),
            &[],
        );
        // 400, or DRP's 409 for a Name another machine holds.
        assert!(status == 400 || status == 409, "{status}: {body}");
        assert_eq!(
            format!("Error: {}\n", body["Messages"][0].as_str().unwrap()),
            local.2
        );
        assert_eq!(remote_state(&server), before);
        assert_eq!(state(&a), local_before);
    }
    // check=true checks and writes nothing.
    let (status, body, _) = server.call(
        "POST",
        "/import?check=true",
        Some(("application/json", &seed().to_string())),
        &[],
    );
    assert_eq!((status, body), (200, json!(5)));
}

#[test]
fn remote_imports_in_parts_are_checked_whole_first() {
    let dir = TempDir::new().unwrap();
    let server = Server::start_at(&dir.path().join("s"), &["--max-body-bytes", "4096"]);
    assert_eq!(
        server
            .cli_with(&["import", "-"], Some(&seed().to_string()))
            .0,
        0
    );
    let before = remote_state(&server);
    // Profiles and definitions of the document, then machines in parts that
    // name them: a bad machine in a late part refuses the whole document.
    let mut doc = json!({
        "params": [{"Name": "role", "Schema": {"type": "string", "enum": ["leader", "member"]}}],
        "profiles": [{"Name": "cluster", "Params": {"role": "member"}}],
        "machines": (0..60).map(|i| json!({
            "Uuid": format!("00000000-0000-4000-a000-{i:012}"),
            "Name": format!("c{i}"),
            "Profiles": ["cluster"],
            "Params": {"role": "member"},
        })).collect::<Vec<_>>(),
    });
    doc["machines"][50]["Params"]["role"] = json!("boss");
    let text = doc.to_string();
    let (code, _, err) = server.cli_with(&["import", "-"], Some(&text));
    assert_eq!(code, 2, "{err}");
    let local = dir.path().join("l");
    ok(&local, &["import", "-"], Some(&seed().to_string()));
    let (lcode, _, lerr) = embedded(&local, &["import", "-"], Some(&text));
    assert_eq!((code, &err), (lcode, &lerr));
    assert!(err.contains("import machines #50: param role"), "{err}");
    assert_eq!(remote_state(&server), before, "nothing of the good parts");
    // Fixed: it goes in parts and all of it is there.
    doc["machines"][50]["Params"]["role"] = json!("leader");
    let (code, out, err) = server.cli_with(&["import", "-"], Some(&doc.to_string()));
    assert_eq!((code, out.as_str()), (0, "62\n"), "{err}");
    assert_eq!(server.cli(&["machines", "count"]).1, "63\n");
}
