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
    Str(Text),
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
            Value::String(s) => ValueKey::str(s),
            other => ValueKey::Json(canonical_json(other).into()),
        }
    }

    pub(crate) fn str(s: &str) -> ValueKey {
        ValueKey::Str(Text::new(s))
    }

    /// `ValueKey::str(&u.to_string())`, without the text.
    pub(crate) fn uuid(u: uuid::Uuid) -> ValueKey {
        ValueKey::Str(Text::Uuid(u))
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
            ValueKey::Str(s) => Value::String(s.as_str().to_string()),
            // Written by `canonical_json`, so it parses back.
            ValueKey::Json(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }
}

/// A value read where it is stored, without building a [`ValueKey`]: from
/// a key of a tree, or from a packed block's encoding in place (see
/// `values::Values::for_each`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ValueRef<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    /// A string in a UUID's canonical form, as its 16 bytes.
    Uuid(uuid::Uuid),
    Json(&'a str),
}

impl ValueKey {
    /// This key, borrowed as a [`ValueRef`].
    pub(crate) fn view(&self) -> ValueRef<'_> {
        match self {
            ValueKey::Null => ValueRef::Null,
            ValueKey::Bool(b) => ValueRef::Bool(*b),
            ValueKey::Num(NumKey(Num(f))) => ValueRef::Num(*f),
            ValueKey::Str(Text::Compact(s)) => ValueRef::Str(s.as_str()),
            ValueKey::Str(Text::Uuid(u)) => ValueRef::Uuid(*u),
            ValueKey::Json(s) => ValueRef::Json(s),
        }
    }
}

/// A string value's text, kept off the heap where it can be: up to 24
/// bytes inline (compact_str), and a UUID in its canonical form (36
/// characters, lowercase, hyphenated: every machine's `Uuid`) as its 16
/// bytes. A text always takes the same form ([`Text::new`]), so the derived
/// equality and hash are by text; the order is by text too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Text {
    Compact(compact_str::CompactString),
    Uuid(uuid::Uuid),
}

// A value key is a map key in every posting: the UUID form must not make
// it larger than the inline string it replaces.
const _: () = assert!(std::mem::size_of::<ValueKey>() == 24);

impl Text {
    pub(crate) fn new(s: &str) -> Text {
        if s.len() == uuid::fmt::Hyphenated::LENGTH {
            if let Ok(u) = uuid::Uuid::try_parse(s) {
                let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
                if u.hyphenated().encode_lower(&mut buf) == s {
                    return Text::Uuid(u);
                }
            }
        }
        Text::Compact(s.into())
    }

    /// The text, borrowed or (a UUID) written out on the stack.
    pub(crate) fn as_str(&self) -> TextRef<'_> {
        match self {
            Text::Compact(c) => TextRef::Borrowed(c.as_str()),
            Text::Uuid(u) => {
                let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
                u.hyphenated().encode_lower(&mut buf);
                TextRef::Uuid(buf)
            }
        }
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Text::Compact(a), Text::Compact(b)) => a.cmp(b),
            // Lowercase hex keeps the bytes' order; the hyphens stand at
            // the same places in both.
            (Text::Uuid(a), Text::Uuid(b)) => a.as_bytes().cmp(b.as_bytes()),
            _ => (*self.as_str()).cmp(&*other.as_str()),
        }
    }
}

/// [`Text::as_str`]'s answer: derefs to the text.
pub(crate) enum TextRef<'a> {
    Borrowed(&'a str),
    Uuid([u8; uuid::fmt::Hyphenated::LENGTH]),
}

impl std::ops::Deref for TextRef<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            TextRef::Borrowed(s) => s,
            // Written by `encode_lower`: ASCII hex digits and hyphens.
            TextRef::Uuid(b) => std::str::from_utf8(b).unwrap_or_default(),
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
    fn a_uuid_key_is_the_key_of_its_text() {
        for u in [
            uuid::Uuid::nil(),
            uuid::Uuid::max(),
            uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0042),
        ] {
            assert_eq!(ValueKey::uuid(u), ValueKey::str(&u.to_string()));
        }
    }

    #[test]
    fn numbers_share_keys_by_value() {
        assert_eq!(ValueKey::of(&json!(3)), ValueKey::of(&json!(3.0)));
        assert_eq!(ValueKey::of(&json!(-0.0)), ValueKey::of(&json!(0)));
        assert!(ValueKey::of(&json!(2)) < ValueKey::of(&json!(10)));
        assert!(ValueKey::of(&json!(10)) < ValueKey::of(&json!("1")));
    }

    #[test]
    fn uuids_are_kept_as_bytes_and_still_compare_as_text() {
        let u = "5eed0000-0000-4000-8000-00000000002a";
        let k = ValueKey::str(u);
        assert!(matches!(k, ValueKey::Str(Text::Uuid(_))));
        assert_eq!(
            &*match &k {
                ValueKey::Str(t) => t.as_str(),
                _ => unreachable!(),
            },
            u
        );
        assert_eq!(k.to_json(), json!(u));
        // Not canonical: kept as text, and a different value.
        for other in [
            "5EED0000-0000-4000-8000-00000000002A",
            "5eed0000000040008000000000000000002a",
        ] {
            assert!(matches!(
                ValueKey::str(other),
                ValueKey::Str(Text::Compact(_))
            ));
            assert_ne!(ValueKey::str(other), k);
        }
        // Ordered as the texts are, whatever their forms.
        let mut texts = vec![
            "5eed0000-0000-4000-8000-00000000002a",
            "5eed0000-0000-4000-8000-0000000000ff",
            "5eed0000-0000-4000-8000-000000000100",
            "5eed0000-0000-4000-8000",
            "5eed0000-0000-4000-8000-00000000002a-and-more",
            "5eed",
            "6",
            "node-01",
            "5EED",
            "",
        ];
        let mut keys: Vec<ValueKey> = texts.iter().map(|t| ValueKey::str(t)).collect();
        texts.sort();
        keys.sort();
        let back: Vec<String> = keys
            .iter()
            .map(|k| k.to_json().as_str().unwrap().to_string())
            .collect();
        assert_eq!(back, texts);
    }

    #[test]
    fn objects_are_canonical() {
        assert_eq!(
            ValueKey::of(&json!({"a":1,"b":[1,{"d":1,"c":2}]})),
            ValueKey::of(&json!({"b":[1,{"c":2,"d":1}],"a":1}))
        );
    }
}
