//! `import` / `export`: drpcli list output in, a lossless export out.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

use common::embedded as run;

fn ok(db: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(db, args, None);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

fn export(db: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&ok(db, &["export"])).unwrap();
    strip_revisions(&mut v);
    v
}

fn strip_revisions(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("Revision");
            o.values_mut().for_each(strip_revisions);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_revisions),
        _ => {}
    }
}

fn write(dir: &TempDir, name: &str, v: &Value) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

#[test]
fn import_arrays_by_kind_and_round_trip() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("a");
    let params = json!([
        {"Name": "cluster/leader", "Schema": {"type": "boolean", "default": false}},
        {"Name": "my/data", "Description": "shared", "Schema": {"type": "string", "default": "none"}, "Secure": false, "Documentation": "kept"}
    ]);
    let profiles = json!([
        {"Name": "example", "Params": {"cluster/profile": "example"}, "Meta": {"icon": "cube"}, "Partial": false},
        {"Name": "global", "Params": {"site": "ams"}}
    ]);
    let machines: Vec<Value> = (0..30)
        .map(|i| {
            json!({
                "Uuid": format!("00000000-0000-4000-8000-{i:012}"),
                "Name": format!("m{i:02}"),
                "Address": format!("10.0.0.{i}"),
                "Profiles": ["example"],
                "Params": {"cluster/leader": i == 3},
                "Meta": {"color": "black"},
                "Stage": "discover",
                "Arch": "amd64"
            })
        })
        .collect();
    let machines = Value::Array(machines);
    // Detected kinds (definitions: Schema; machines: Uuid), in dependency
    // order given file by file; profiles, which no field identifies, with
    // their kind said, via stdin.
    let pp = write(&dir, "params.json", &params);
    assert_eq!(ok(&db, &["import", pp.to_str().unwrap()]).trim(), "2");
    let (code, out, err) = run(
        &db,
        &["import", "-", "--kind", "profiles"],
        Some(&profiles.to_string()),
    );
    assert_eq!((code, out.trim()), (0, "2"), "{err}");
    let mp = write(&dir, "machines.json", &machines);
    assert_eq!(ok(&db, &["import", mp.to_str().unwrap()]).trim(), "30");
    // Idempotent: importing again replaces, never duplicates.
    ok(&db, &["import", mp.to_str().unwrap()]);
    ok(&db, &["import", pp.to_str().unwrap()]);
    let first = export(&db);
    assert_eq!(first["machines"].as_array().unwrap().len(), 30);
    // Unknown fields kept; missing known ones filled with their defaults.
    assert_eq!(first["params"][1], params[1]);
    assert_eq!(first["params"][0]["Schema"], params[0]["Schema"]);
    assert_eq!(first["machines"][5]["Stage"], "discover");
    assert_eq!(first["profiles"][0]["Partial"], false);
    assert_eq!(first["profiles"][1]["Params"]["site"], "ams");

    // Round trip: export → import into a fresh store → the same export.
    let whole = write(
        &dir,
        "all.json",
        &serde_json::from_str::<Value>(&ok(&db, &["export"])).unwrap(),
    );
    let fresh = dir.path().join("b");
    assert_eq!(
        ok(&fresh, &["import", whole.to_str().unwrap()]).trim(),
        "34"
    );
    assert_eq!(export(&fresh), first);
    ok(&fresh, &["import", whole.to_str().unwrap()]);
    assert_eq!(export(&fresh), first);
}

#[test]
fn import_kind_flag_and_name_keyed_machines() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    // A bare-Name array could be machines or profiles: --kind says which.
    let named = json!([{"Name": "n1"}, {"Name": "n2"}]);
    let f = write(&dir, "n.json", &named);
    ok(&db, &["import", f.to_str().unwrap(), "--kind", "machines"]);
    ok(&db, &["import", f.to_str().unwrap(), "--kind", "machines"]);
    let all = export(&db);
    assert_eq!(all["machines"].as_array().unwrap().len(), 2);
    assert_eq!(all["profiles"].as_array().unwrap().len(), 1, "only global");
    let (code, _, err) = run(&db, &["import", f.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot tell the kind of element #0: \"n1\" has no field only")
            && err.contains("--kind"),
        "{err}"
    );
    assert_eq!(export(&db), all, "refused: nothing written");
    ok(&db, &["import", f.to_str().unwrap(), "--kind", "profiles"]);
    assert_eq!(export(&db)["profiles"].as_array().unwrap().len(), 3);
}

#[test]
fn import_bad_input_exits_2() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    for (input, says) in [
        ("{\"machines\": [", "not valid JSON"),
        ("42", "expected a JSON array or an export object"),
        (r#"{"machines": {}}"#, "machines must be an array"),
        (r#"{"widgets": []}"#, "unknown key \"widgets\""),
        (
            r#"[{"Name": "m", "Profiles": ["ghost"]}]"#,
            "cannot tell the kind of element #0",
        ),
        (
            r#"[{"Name": "m", "Uuid": "00000000-0000-4000-8000-000000000001", "Profiles": ["ghost"]}]"#,
            "import machines #0",
        ),
        (
            r#"[{"Name": "p", "Schema": {"type": 7}}]"#,
            "import params #0",
        ),
    ] {
        let (code, out, err) = run(&db, &["import", "-"], Some(input));
        assert_eq!(code, 2, "{input}: {err}");
        assert!(out.is_empty());
        assert!(
            err.starts_with("Error: ") && err.contains(says),
            "{input}: {err}"
        );
    }
    let (code, _, err) = run(&db, &["import", "/nonexistent/file.json"], None);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/file.json"), "{err}");
}
