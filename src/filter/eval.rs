//! The reference evaluator: one object in, true or false out. Kept as plain
//! as possible: it is the oracle the bitmap index is tested against.

use std::cmp::Ordering;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{Bound, BoundPred, Field, Key, Ordinal, Subject, Test};

/// Equality of a stored value and a bound alternative: same JSON type;
/// numbers by f64 value; everything else by JSON equality.
pub(crate) fn json_equal(stored: &Value, alt: &Value) -> bool {
    match (stored, alt) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Value::Number(_), _) | (_, Value::Number(_)) => false,
        _ => stored == alt,
    }
}

/// How `stored` compares with the bound, when they are comparable.
fn compare(stored: &Value, bound: &Ordinal) -> Option<Ordering> {
    if let Some(ip) = bound.ip {
        let s: IpAddr = stored.as_str()?.trim().parse().ok()?;
        return match (s, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => Some(a.cmp(&b)),
            (IpAddr::V6(a), IpAddr::V6(b)) => Some(a.cmp(&b)),
            _ => None,
        };
    }
    match stored {
        Value::Number(n) => n.as_f64()?.partial_cmp(&bound.num?),
        Value::String(s) => Some(s.as_bytes().cmp(bound.text.as_ref()?.as_bytes())),
        _ => None,
    }
}

pub(crate) fn matches_scalar(t: &Test, v: &Value) -> bool {
    match t {
        Test::Equals(alts) => alts.iter().any(|a| json_equal(v, a)),
        Test::Less(b, inclusive) => match compare(v, b) {
            Some(Ordering::Less) => true,
            Some(Ordering::Equal) => *inclusive,
            _ => false,
        },
        Test::Greater(b, inclusive) => match compare(v, b) {
            Some(Ordering::Greater) => true,
            Some(Ordering::Equal) => *inclusive,
            _ => false,
        },
        Test::Between(lo, hi) => {
            matches!(compare(v, lo), Some(Ordering::Greater | Ordering::Equal))
                && matches!(compare(v, hi), Some(Ordering::Less | Ordering::Equal))
        }
        Test::Matches(re) => v.as_str().is_some_and(|s| re.is_match(s)),
        Test::HasAll(_) | Test::HasAny(_) | Test::AnyMatches(_) => false,
    }
}

pub(crate) fn matches_set<'s>(t: &Test, set: impl IntoIterator<Item = &'s str> + Clone) -> bool {
    match t {
        Test::HasAll(want) => want.iter().all(|w| set.clone().into_iter().any(|s| s == w)),
        Test::HasAny(want) => want.iter().any(|w| set.clone().into_iter().any(|s| s == w)),
        Test::AnyMatches(re) => set.into_iter().any(|s| re.is_match(s)),
        _ => false,
    }
}

fn meta(doc: &Map<String, Value>) -> Option<&Map<String, Value>> {
    doc.get("Meta").and_then(Value::as_object)
}

fn pred_matches(p: &BoundPred, s: &Subject<'_>) -> bool {
    let scalar = |v: Option<&Value>| v.is_some_and(|v| p.test.matches_scalar(v));
    match &p.key {
        Key::Field(f) => {
            let v = s.doc.get(f.name());
            // An empty Address is no address.
            let v = match (f, v) {
                (Field::Address, Some(Value::String(a))) if a.is_empty() => None,
                _ => v,
            };
            scalar(v)
        }
        Key::Param(name) => scalar(s.params.get(name)),
        Key::Meta(k) => scalar(meta(s.doc).and_then(|m| m.get(k))),
        Key::Profiles => {
            let empty = Vec::new();
            let list = s
                .doc
                .get("Profiles")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            p.test.matches_set(list.iter().filter_map(Value::as_str))
        }
        Key::ParamNames => p.test.matches_set(s.params.keys().map(String::as_str)),
        Key::MetaKeys => {
            let empty = Map::new();
            let m = meta(s.doc).unwrap_or(&empty);
            p.test.matches_set(m.keys().map(String::as_str))
        }
    }
}

pub(crate) fn matches(b: &Bound, s: &Subject<'_>) -> bool {
    match b {
        Bound::All => true,
        Bound::And(v) => v.iter().all(|x| matches(x, s)),
        Bound::Or(v) => v.iter().any(|x| matches(x, s)),
        Bound::Not(x) => !matches(x, s),
        Bound::Pred(p) => pred_matches(p, s),
    }
}
