//! RFC 6902 conformance: every enabled record of the public JSON Patch test
//! suite (`../shared/conformance/json-patch/tests.json`), applied through the
//! store's public patch API to a document kept under a machine's
//! `Params/doc`.

use std::path::PathBuf;

use fleetkv::{Machine, Store};
use serde_json::{json, Value};

fn suite() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/json-patch/tests.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("tests.json is a JSON array")
}

/// Prefixes `path` and `from` with the document's location.
fn relocate(patch: &Value) -> Value {
    let Value::Array(ops) = patch else {
        return patch.clone();
    };
    Value::Array(
        ops.iter()
            .map(|op| {
                let mut op = op.clone();
                if let Value::Object(o) = &mut op {
                    for field in ["path", "from"] {
                        // A pointer without its leading slash is invalid and
                        // must stay so.
                        if let Some(Value::String(p)) = o.get(field).filter(|p| {
                            p.as_str()
                                .is_none_or(|s| s.is_empty() || s.starts_with('/'))
                        }) {
                            let p = format!("/Params/doc{p}");
                            o.insert(field.into(), Value::String(p));
                        }
                    }
                }
                op
            })
            .collect(),
    )
}

#[test]
fn every_enabled_record_passes() {
    let store = Store::temporary().unwrap();
    let (mut passed, mut refused) = (0, 0);
    for (i, rec) in suite().iter().enumerate() {
        if rec.get("disabled") == Some(&json!(true)) || rec.get("patch").is_none() {
            continue;
        }
        let name = format!("case-{i}");
        let mut m = Machine::new(&name);
        m.params.insert("doc".into(), rec["doc"].clone());
        let created = store.machines().create(m).unwrap();
        let before = serde_json::to_vec(&store.machines().get(&name).unwrap()).unwrap();
        let result = store.machines().patch(&name, &relocate(&rec["patch"]));
        let comment = rec.get("comment").cloned().unwrap_or(Value::Null);
        if let Some(expected) = rec.get("expected") {
            let got = result.unwrap_or_else(|e| panic!("record {i} {comment}: {e}"));
            assert_eq!(got.params["doc"], *expected, "record {i} {comment}");
            assert_eq!(
                store.machines().get(&name).unwrap().params["doc"],
                *expected,
                "record {i} stored"
            );
            passed += 1;
        } else {
            assert!(rec.get("error").is_some(), "record {i} has neither");
            assert!(result.is_err(), "record {i} {comment}: should be refused");
            let after = serde_json::to_vec(&store.machines().get(&name).unwrap()).unwrap();
            assert_eq!(
                before, after,
                "record {i}: a refused patch changed the object"
            );
            assert_eq!(
                store.machines().get(&name).unwrap().revision,
                created.revision
            );
            refused += 1;
        }
    }
    assert!(passed > 40 && refused > 10, "ran {passed} + {refused}");
    store.verify_indexes().unwrap();
}
