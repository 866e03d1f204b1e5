//! Listing and matching: prepared queries, sort keys, paging, and shaping a
//! listed object (`slim`, `params`, effective params).
//!
//! Owns: [`ListOptions`], [`Query`], the reference evaluator's view of a
//! stored document ([`Store::matches_doc`]) and listing straight from stored
//! bytes. Must not: write, or evaluate filters on bitmaps itself (the index
//! does).

use roaring::RoaringBitmap;
use serde_json::{Map, Value};

use super::layout::{decode, show_key};
use super::open::Store;
use super::state::State;
use crate::error::{Error, Result};
use crate::filter::{Bound, Field, Key, Subject};
use crate::model::{Effective, Kind, Machine};

/// Listing options (drpcli's `sort`, `limit`, `offset`, `reverse`, `--slim`,
/// `--params`, `--aggregate`).
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Sort by this key (a field, `Params.NAME`, `Meta.KEY` or a bare param name).
    pub sort: Option<String>,
    /// Reverse the order.
    pub reverse: bool,
    /// Skip this many.
    pub offset: usize,
    /// Return at most this many.
    pub limit: Option<usize>,
    /// Leave these fields out (`Params`, `Meta`).
    pub slim: Vec<String>,
    /// Return only these params.
    pub params: Option<Vec<String>>,
    /// Return effective params (own → profiles → global → default).
    pub aggregate: bool,
}

/// A filter bound against the store's definitions, ready to run many times.
#[derive(Debug, Clone)]
pub struct Query {
    pub(super) kind: Kind,
    pub(super) bound: Bound,
}

impl Store {
    /// The reference evaluator on a stored object's JSON, with effective
    /// params as the store resolves them now.
    pub(crate) fn matches_doc(&self, kind: Kind, bound: &Bound, doc: &Value) -> bool {
        let st = self.state();
        let params = match kind {
            Kind::Machine => match serde_json::from_value::<Machine>(doc.clone()) {
                Ok(m) => st.effective(&m),
                Err(_) => return false,
            },
            _ => {
                let none = Map::new();
                let own = doc.get("Params").and_then(Value::as_object);
                let effective = Effective::own(own.unwrap_or(&none));
                effective.resolve(st.defaults())
            }
        };
        match doc.as_object() {
            Some(obj) => bound.matches(&Subject {
                doc: obj,
                params: &params,
            }),
            None => false,
        }
    }

    /// Machine ids for `filter`, under the given state.
    pub(super) fn eval(&self, st: &State, q: &Query) -> RoaringBitmap {
        match q.kind {
            Kind::Machine => st.machines.eval(&q.bound, None, st),
            _ => st.profile_index.eval(&q.bound, None, st),
        }
    }
}

/// Parses a listing sort key (a field, `Params.NAME`, `Meta.KEY` or a bare param).
pub(super) fn sort_key(kind: Kind, s: &str) -> Result<Key> {
    value_key(kind, s, "sort")
}

/// Parses `group-by` keys: the keys a listing can sort by.
pub(super) fn group_keys(kind: Kind, by: &[String]) -> Result<Vec<Key>> {
    if by.is_empty() {
        return Err(Error::invalid("group-by", "give at least one key"));
    }
    by.iter().map(|s| value_key(kind, s, "group-by")).collect()
}

/// A single-valued key (a field, `Params.NAME`, `Meta.KEY` or a bare param)
/// for `what` (`sort`, `group-by`).
fn value_key(kind: Kind, s: &str, what: &'static str) -> Result<Key> {
    let field = match s {
        "Name" => Some(Field::Name),
        "Description" => Some(Field::Description),
        "Uuid" if kind == Kind::Machine => Some(Field::Uuid),
        "Address" if kind == Kind::Machine => Some(Field::Address),
        "Workflow" if kind == Kind::Machine => Some(Field::Workflow),
        "Runnable" if kind == Kind::Machine => Some(Field::Runnable),
        _ => None,
    };
    if let Some(f) = field {
        return Ok(Key::Field(f));
    }
    match s {
        "" | "Profiles" | "Params" | "Meta" => Err(Error::invalid(
            what,
            format!(
                "cannot {} by {s:?}: give a field, a param or Meta.KEY",
                if what == "sort" { "sort" } else { "group" }
            ),
        )),
        _ => Ok(if let Some(m) = s.strip_prefix("Meta.") {
            Key::Meta(m.to_string())
        } else {
            Key::Param(s.strip_prefix("Params.").unwrap_or(s).to_string())
        }),
    }
}

/// Shapes one listed object: effective params, `params` selection, `slim`.
pub(super) fn shape(
    mut doc: Value,
    effective: Option<Map<String, Value>>,
    opts: &ListOptions,
) -> Value {
    if let Value::Object(obj) = &mut doc {
        if let Some(eff) = effective {
            obj.insert("Params".into(), Value::Object(eff));
        }
        if let Some(keep) = &opts.params {
            if let Some(Value::Object(p)) = obj.get_mut("Params") {
                p.retain(|k, _| keep.iter().any(|x| x == k));
            }
        }
        for s in &opts.slim {
            obj.remove(s.as_str());
        }
    }
    doc
}

/// [`shape`] straight from stored bytes: fields that `slim` drops are only
/// scanned, never built into values (they are most of a machine's bytes).
pub(super) fn shape_raw(key: &[u8], bytes: &[u8], opts: &ListOptions) -> Result<Value> {
    if opts.slim.is_empty() {
        return Ok(shape(decode(key, bytes)?, None, opts));
    }
    let raw: Map<String, Value> = {
        let fields: indexmap_like::RawFields<'_> =
            serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
                key: show_key(key),
                reason: e.to_string(),
            })?;
        let mut out = Map::with_capacity(fields.0.len());
        for (k, v) in fields.0 {
            if opts.slim.contains(&k) {
                continue;
            }
            out.insert(
                k,
                serde_json::from_str(v.get()).map_err(|e| Error::Corrupt {
                    key: show_key(key),
                    reason: e.to_string(),
                })?,
            );
        }
        out
    };
    Ok(shape(Value::Object(raw), None, opts))
}

mod indexmap_like {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    /// An object's fields in stored order, values left as raw JSON text
    /// borrowed from the record.
    pub(super) struct RawFields<'a>(pub(super) Vec<(String, &'a RawValue)>);

    impl<'de> Deserialize<'de> for RawFields<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = RawFields<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<RawFields<'de>, A::Error> {
                    let mut out = Vec::with_capacity(m.size_hint().unwrap_or(12));
                    while let Some(kv) = m.next_entry()? {
                        out.push(kv);
                    }
                    Ok(RawFields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

pub(super) fn window(ids: Vec<u32>, opts: &ListOptions) -> Vec<u32> {
    let mut ids = ids;
    if opts.reverse {
        ids.reverse();
    }
    ids.into_iter()
        .skip(opts.offset)
        .take(opts.limit.unwrap_or(usize::MAX))
        .collect()
}
