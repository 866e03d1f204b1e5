//! Document-level update operations: RFC 6902 patches applied op by op (so a
//! failed `test` reports what it found), RFC 7396 merges, reference updates
//! and param compare-and-set. Works on JSON values only; the store decides
//! what to do with the result.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Fields no patch may change: the key and the store's revision stamp.
const IMMUTABLE: &[&str] = &["/Uuid", "/Revision"];

/// The error for a patch document that is not an array (one wording for
/// the library, the CLI and the server).
pub(crate) fn not_a_patch(doc: &Value) -> Error {
    Error::invalid(
        "patch",
        format!(
            "expected a JSON array of operations, found {}",
            type_name(doc)
        ),
    )
}

/// Parses an RFC 6902 patch (a JSON array of operations).
pub(crate) fn parse_patch(patch: &Value) -> Result<Vec<PatchOperation>> {
    let Value::Array(ops) = patch else {
        return Err(not_a_patch(patch));
    };
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            serde_json::from_value(op.clone())
                .map_err(|e| Error::invalid(format!("patch operation {i}"), e.to_string()))
        })
        .collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn touches(path: &str, field: &str) -> bool {
    path == field || path.starts_with(&format!("{field}/")) || path.is_empty()
}

/// Applies `ops` to `doc`. A failed `test` is a [`Error::Conflict`] carrying
/// the path, the expected and the actual value; any other failure is
/// [`Error::Invalid`] naming the operation. On error `doc` may be partly
/// changed: callers apply to a copy.
pub(crate) fn apply_patch(doc: &mut Value, ops: &[PatchOperation]) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        let written = match op {
            PatchOperation::Test(_) => None,
            PatchOperation::Move(m) => Some(vec![m.path.to_string(), m.from.to_string()]),
            other => Some(vec![other.path().to_string()]),
        };
        for path in written.iter().flatten() {
            if let Some(field) = IMMUTABLE.iter().find(|f| touches(path, f)) {
                return Err(Error::invalid(
                    format!("patch operation {i} ({path})"),
                    format!("{} is read-only", &field[1..]),
                ));
            }
        }
        if let Err(e) = json_patch::patch(doc, std::slice::from_ref(op)) {
            return Err(match (&e.kind, op) {
                // A test of a path that is not there failed its expectation
                // too: it is a conflict (actual: absent), not bad input.
                (_, PatchOperation::Test(t))
                    if matches!(e.kind, PatchErrorKind::TestFailed)
                        || t.path.as_str().starts_with('/')
                            && doc.pointer(t.path.as_str()).is_none() =>
                {
                    Error::Conflict {
                        path: t.path.to_string(),
                        expected: Some(Box::new(t.value.clone())),
                        actual: doc.pointer(t.path.as_str()).cloned().map(Box::new),
                    }
                }
                _ => Error::invalid(
                    format!("patch operation {i} ({} {})", op_name(op), op.path()),
                    e.kind.to_string(),
                ),
            });
        }
    }
    Ok(())
}

fn op_name(op: &PatchOperation) -> &'static str {
    match op {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// RFC 7396 merge patch. The key and revision are not the caller's to change:
/// a merge that names them must repeat their current values.
pub(crate) fn apply_merge(doc: &mut Value, merge: &Value) -> Result<()> {
    if !merge.is_object() {
        return Err(Error::invalid(
            "update",
            format!(
                "a merge patch must be a JSON object, found {}",
                type_name(merge)
            ),
        ));
    }
    json_patch::merge(doc, &strip_readonly(merge, doc));
    Ok(())
}

/// Drops `Revision` (always the store's) from an incoming document; `Uuid` is
/// kept so that a change to it is refused rather than ignored.
fn strip_readonly(v: &Value, _current: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("Revision");
    }
    v
}

/// A reference update: every path that differs between `reference` (the
/// object as the caller last saw it) and `desired` must still hold the
/// reference's value (or still be absent) in `doc`; then the difference is
/// applied. `Revision` takes no part.
pub(crate) fn apply_reference(doc: &mut Value, reference: &Value, desired: &Value) -> Result<()> {
    let reference = strip_readonly(reference, doc);
    let desired = strip_readonly(desired, doc);
    let diff = json_patch::diff(&reference, &desired);
    for op in diff.iter() {
        let path = op.path().to_string();
        let expected = reference.pointer(&path);
        let actual = doc.pointer(&path);
        if !json_eq(expected, actual) {
            return Err(Error::Conflict {
                path,
                expected: expected.cloned().map(Box::new),
                actual: actual.cloned().map(Box::new),
            });
        }
    }
    apply_patch(doc, &diff)
}

fn json_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    a == b
}

/// Sets own param `key` to `value` only if the object's own value equals
/// `expected` (`None`: absent). When the object has no own value, `default`
/// (the definition's) is what it holds, so a caller who read the default and
/// expects it wins as if it were stored.
pub(crate) fn param_cas(
    doc: &mut Value,
    key: &str,
    expected: Option<&Value>,
    value: Value,
    default: Option<&Value>,
) -> Result<()> {
    param_cas_in(params_of(doc)?, key, expected, value, default)
}

/// [`param_cas`] on a params map.
pub(crate) fn param_cas_in(
    params: &mut Map<String, Value>,
    key: &str,
    expected: Option<&Value>,
    value: Value,
    default: Option<&Value>,
) -> Result<()> {
    check_param_cas(key, params.get(key), expected, default)?;
    params.insert(key.to_string(), value);
    Ok(())
}

/// The check of [`param_cas_in`]: [`Error::Conflict`] unless `actual` (own
/// value, `None`: absent) or, when absent, `default` equals `expected`.
pub(crate) fn check_param_cas(
    key: &str,
    actual: Option<&Value>,
    expected: Option<&Value>,
    default: Option<&Value>,
) -> Result<()> {
    let ok = match (actual, expected) {
        (Some(a), Some(e)) => a == e,
        (None, None) => true,
        (None, Some(e)) => default == Some(e),
        (Some(_), None) => false,
    };
    if !ok {
        return Err(Error::Conflict {
            path: format!("/Params/{}", escape_pointer(key)),
            expected: expected.cloned().map(Box::new),
            actual: actual.or(default).cloned().map(Box::new),
        });
    }
    Ok(())
}

/// The object's `Params` map, created when missing.
pub(crate) fn params_of(doc: &mut Value) -> Result<&mut Map<String, Value>> {
    let Value::Object(obj) = doc else {
        return Err(Error::invalid("object", "not a JSON object"));
    };
    let p = obj
        .entry("Params")
        .or_insert_with(|| Value::Object(Map::new()));
    if p.is_null() {
        *p = Value::Object(Map::new());
    }
    p.as_object_mut()
        .ok_or_else(|| Error::invalid("Params", "must be a JSON object"))
}

/// RFC 6901 escaping of one reference token.
pub(crate) fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failed_test_is_a_conflict_with_actual() {
        let mut doc = json!({"Params": {"a": 1}});
        let ops = parse_patch(&json!([
            {"op": "test", "path": "/Params/a", "value": 2},
            {"op": "replace", "path": "/Params/a", "value": 3}
        ]))
        .unwrap();
        match apply_patch(&mut doc, &ops) {
            Err(Error::Conflict {
                path,
                expected,
                actual,
            }) => {
                assert_eq!(path, "/Params/a");
                assert_eq!(expected.as_deref(), Some(&json!(2)));
                assert_eq!(actual.as_deref(), Some(&json!(1)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn immutable_fields_are_refused() {
        let mut doc = json!({"Uuid": "x", "Params": {}});
        for p in [
            json!([{"op": "replace", "path": "/Uuid", "value": "y"}]),
            json!([{"op": "remove", "path": "/Revision"}]),
            json!([{"op": "move", "from": "/Uuid", "path": "/Name"}]),
            json!([{"op": "replace", "path": "", "value": {}}]),
        ] {
            let ops = parse_patch(&p).unwrap();
            assert!(
                matches!(apply_patch(&mut doc, &ops), Err(Error::Invalid { .. })),
                "{p}"
            );
        }
        let ops = parse_patch(&json!([{"op": "test", "path": "/Uuid", "value": "x"}])).unwrap();
        apply_patch(&mut doc, &ops).unwrap();
    }

    #[test]
    fn malformed_patches_say_where() {
        let e = parse_patch(&json!({"op": "add"})).unwrap_err();
        assert!(e.to_string().contains("array"), "{e}");
        let e = parse_patch(&json!([{"op": "add", "value": 1}])).unwrap_err();
        assert!(e.to_string().contains("operation 0"), "{e}");
        assert!(e.to_string().contains("path"), "{e}");
    }

    #[test]
    fn reference_update_conflicts_on_touched_paths_only() {
        let reference = json!({"Name": "a", "Params": {"x": 1, "y": 1}});
        let desired = json!({"Name": "a", "Params": {"x": 2, "y": 1}});
        // Someone changed y (not touched): fine.
        let mut doc = json!({"Name": "a", "Params": {"x": 1, "y": 5}});
        apply_reference(&mut doc, &reference, &desired).unwrap();
        assert_eq!(doc, json!({"Name": "a", "Params": {"x": 2, "y": 5}}));
        // Someone changed x: conflict.
        let mut doc = json!({"Name": "a", "Params": {"x": 7, "y": 1}});
        assert!(matches!(
            apply_reference(&mut doc, &reference, &desired),
            Err(Error::Conflict { .. })
        ));
        // Someone added a key the caller adds: conflict (expected absent).
        let desired = json!({"Name": "a", "Params": {"x": 1, "y": 1, "z": 1}});
        let mut doc = json!({"Name": "a", "Params": {"x": 1, "y": 1, "z": 0}});
        match apply_reference(&mut doc, &reference, &desired) {
            Err(Error::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, None);
                assert_eq!(actual.as_deref(), Some(&json!(0)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cas_against_own_value_or_default() {
        let mut doc = json!({"Params": {}});
        assert!(param_cas(&mut doc, "k", Some(&json!("none")), json!("a"), None).is_err());
        param_cas(
            &mut doc,
            "k",
            Some(&json!("none")),
            json!("a"),
            Some(&json!("none")),
        )
        .unwrap();
        assert!(param_cas(
            &mut doc,
            "k",
            Some(&json!("none")),
            json!("b"),
            Some(&json!("none"))
        )
        .is_err());
        assert!(param_cas(&mut doc, "k", None, json!("b"), None).is_err());
        param_cas(&mut doc, "k", Some(&json!("a")), json!("b"), None).unwrap();
        assert_eq!(doc["Params"]["k"], json!("b"));
    }
}
