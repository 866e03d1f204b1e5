//! Type-canonical value keys: one key per distinct stored scalar, ordered by
//! type and then by value, so that equality is a map lookup and ranges and
//! regexes walk one type's distinct values.

use std::cmp::Ordering;

use serde_json::Value;

/// A JSON number as a totally ordered key (JSON has no NaN; -0 is folded into 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Num(pub f64);

impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Num {}
impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Num {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A stored value's index key. Variant order is the sort order across types
/// (null, booleans, numbers, strings, arrays/objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ValueKey {
    Null,
    Bool(bool),
    Num(NumKey),
    Str(compact_str::CompactString),
    /// Arrays and objects, as canonical JSON text (object keys sorted).
    Json(Box<str>),
}

/// `Num` with `Hash` (by bits, after canonicalisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NumKey(pub Num);

impl std::hash::Hash for NumKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0 .0.to_bits().hash(state)
    }
}

impl NumKey {
    pub(crate) fn new(f: f64) -> NumKey {
        // Fold -0.0 into 0.0 so that equal numbers share one key.
        NumKey(Num(if f == 0.0 { 0.0 } else { f }))
    }
}

impl ValueKey {
    pub(crate) fn of(v: &Value) -> ValueKey {
        match v {
            Value::Null => ValueKey::Null,
            Value::Bool(b) => ValueKey::Bool(*b),
            Value::Number(n) => ValueKey::Num(NumKey::new(n.as_f64().unwrap_or(f64::NAN))),
            Value::String(s) => ValueKey::Str(s.as_str().into()),
            other => ValueKey::Json(canonical_json(other).into()),
        }
    }

    pub(crate) fn str(s: &str) -> ValueKey {
        ValueKey::Str(s.into())
    }

    /// The value as JSON: an integral number within `i64` comes back as an
    /// integer, as it was stored.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            ValueKey::Null => Value::Null,
            ValueKey::Bool(b) => Value::Bool(*b),
            ValueKey::Num(NumKey(Num(f))) => {
                let f = *f;
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    Value::from(f as i64)
                } else {
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }
            }
            ValueKey::Str(s) => Value::String(s.to_string()),
            // Written by `canonical_json`, so it parses back.
            ValueKey::Json(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }
}

/// JSON text with object keys sorted, so that equal documents share a key
/// whatever order their keys came in.
fn canonical_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_share_keys_by_value() {
        assert_eq!(ValueKey::of(&json!(3)), ValueKey::of(&json!(3.0)));
        assert_eq!(ValueKey::of(&json!(-0.0)), ValueKey::of(&json!(0)));
        assert!(ValueKey::of(&json!(2)) < ValueKey::of(&json!(10)));
        assert!(ValueKey::of(&json!(10)) < ValueKey::of(&json!("1")));
    }

    #[test]
    fn objects_are_canonical() {
        assert_eq!(
            ValueKey::of(&json!({"a":1,"b":[1,{"d":1,"c":2}]})),
            ValueKey::of(&json!({"b":[1,{"c":2,"d":1}],"a":1}))
        );
    }
}
