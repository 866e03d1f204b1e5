//! Bulk transfer: everything out as one export object, an export object or
//! an array of one kind (drpcli's list output) back in
//! (`docs/architecture.md` §13 Bulk transfer).
//!
//! Owns: the export object's shape (`{"params":[…],"profiles":[…],
//! "machines":[…]}`), how an import document is read (kind detection, key
//! checks) and in what order it is written. The CLI (`fleetkv export` /
//! `import`) and the server (`GET /api/v3/export`, `POST /api/v3/import`)
//! both call these functions, so the two modes behave alike. Must not: print,
//! authorize or know about HTTP — callers check claims first
//! ([`crate::auth::SCOPES`], `list` to export, `create` and `update` to
//! import).
//!
//! # Import semantics
//! The document's shape is checked before anything is written: a wrong shape
//! is an [`ImportError::Shape`] and changes nothing. Objects are then
//! written one at a time, in the order params, profiles, machines (so
//! machines can name the profiles of the same document); an object whose key
//! exists already is replaced, so importing the same document twice is
//! idempotent. The first object the store refuses stops the import with
//! [`ImportError::Object`]: the objects before it stay written.

use serde_json::{json, Value};

use crate::error::Error;
use crate::model::{Kind, Machine, ParamDef, Profile};
use crate::store::Store;

/// Objects written between flushes (and progress reports).
pub const BATCH: usize = 500;

/// Everything, as one object of three arrays.
pub fn export(s: &Store) -> Result<Value, Error> {
    let machines = s.machines().list_all()?;
    Ok(json!({
        "params": s.params().list_all(),
        "profiles": s.profiles().list_all(),
        "machines": machines,
    }))
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The document is not an array or an export object, or the object's
    /// keys or values are wrong. Nothing was written.
    #[error("{0}")]
    Shape(String),
    /// Object `index` (counted within its kind) was refused; the objects
    /// before it were written.
    #[error("import {} #{index}: {source}", kind.plural())]
    Object {
        /// The refused object's kind.
        kind: Kind,
        /// Its position in that kind's array.
        index: usize,
        /// Why the store refused it.
        source: Error,
    },
    /// Flushing failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The kind of a plain array: `Uuid`/`Profiles`/`Address`/`Runnable` →
/// machines, `Schema` → params, else profiles.
pub fn detect(items: &[Value]) -> Kind {
    let has = |f: &str| items.iter().any(|v| v.get(f).is_some());
    if ["Uuid", "Profiles", "Address", "Runnable"]
        .iter()
        .any(|f| has(f))
    {
        Kind::Machine
    } else if has("Schema") {
        Kind::Param
    } else {
        Kind::Profile
    }
}

/// Splits an import document into its arrays, in writing order (params,
/// profiles, machines); `kind` names a plain array's kind (else
/// [`detect`]ed) and is refused with an export object.
pub fn groups(doc: Value, kind: Option<Kind>) -> Result<[(Kind, Vec<Value>); 3], ImportError> {
    let mut groups: [(Kind, Vec<Value>); 3] = [
        (Kind::Param, Vec::new()),
        (Kind::Profile, Vec::new()),
        (Kind::Machine, Vec::new()),
    ];
    match doc {
        Value::Array(items) => {
            let k = kind.unwrap_or_else(|| detect(&items));
            if k == Kind::Job {
                return Err(Error::invalid("import kind", "jobs cannot be imported").into());
            }
            for g in &mut groups {
                if g.0 == k {
                    g.1 = items;
                    break;
                }
            }
        }
        Value::Object(mut o) => {
            if kind.is_some() {
                return Err(ImportError::Shape(
                    "--kind applies to a plain array, not an export object".into(),
                ));
            }
            if let Some(k) = o
                .keys()
                .find(|k| !["params", "profiles", "machines"].contains(&k.as_str()))
            {
                return Err(ImportError::Shape(format!(
                    "import: unknown key {k:?} (expected params, profiles, machines)"
                )));
            }
            for g in &mut groups {
                match o.remove(g.0.plural()) {
                    Some(Value::Array(a)) => g.1 = a,
                    Some(other) => {
                        return Err(ImportError::Shape(format!(
                            "import: {} must be an array, found {other}",
                            g.0.plural()
                        )))
                    }
                    None => {}
                }
            }
        }
        other => {
            return Err(ImportError::Shape(format!(
                "import: expected a JSON array or an export object, found {}",
                short(&other)
            )))
        }
    }
    Ok(groups)
}

/// Loads an export object or an array of one kind (see the module doc);
/// returns how many objects were written.
pub fn import(s: &Store, doc: Value, kind: Option<Kind>) -> Result<usize, ImportError> {
    import_with(s, doc, kind, |_, _, _| {})
}

/// [`import`], calling `progress(kind, done, total)` after every
/// [`BATCH`] objects (each batch is flushed).
pub fn import_with(
    s: &Store,
    doc: Value,
    kind: Option<Kind>,
    mut progress: impl FnMut(Kind, usize, usize),
) -> Result<usize, ImportError> {
    let groups = groups(doc, kind)?;
    let total: usize = groups.iter().map(|g| g.1.len()).sum();
    let mut done = 0;
    for (kind, items) in groups {
        progress(kind, done, total);
        for (n, chunk) in items.chunks(BATCH).enumerate() {
            for (i, item) in chunk.iter().enumerate() {
                upsert(s, kind, item.clone()).map_err(|source| ImportError::Object {
                    kind,
                    index: n * BATCH + i,
                    source,
                })?;
            }
            s.flush()?;
            done += chunk.len();
            progress(kind, done, total);
        }
    }
    Ok(done)
}

/// A JSON object as a model type, the error naming the kind.
fn decode<T: serde::de::DeserializeOwned>(kind: Kind, doc: Value) -> Result<T, Error> {
    if !doc.is_object() {
        return Err(Error::invalid(
            format!("{kind}"),
            format!("expected a JSON object, found {}", short(&doc)),
        ));
    }
    serde_json::from_value(doc).map_err(|e| Error::invalid(format!("{kind} JSON"), e.to_string()))
}

fn upsert(s: &Store, kind: Kind, doc: Value) -> Result<(), Error> {
    let name = doc
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match kind {
        Kind::Param => {
            let d: ParamDef = decode(kind, doc)?;
            if s.params().exists(&name) {
                s.params().replace(&name, d)?;
            } else {
                s.params().create(d)?;
            }
        }
        Kind::Profile => {
            let p: Profile = decode(kind, doc)?;
            if s.profiles().exists(&name) {
                s.profiles().replace(&name, p)?;
            } else {
                s.profiles().create(p)?;
            }
        }
        Kind::Machine => {
            let m: Machine = decode(kind, doc)?;
            let addr = if m.uuid.is_nil() {
                format!("Name:{name}")
            } else {
                m.uuid.to_string()
            };
            if s.machines().exists(&addr)? {
                s.machines().replace(&addr, m)?;
            } else {
                s.machines().create(m)?;
            }
        }
        Kind::Job => return Err(Error::invalid("import kind", "jobs cannot be imported")),
    }
    Ok(())
}

/// A value's JSON, cut after 40 characters.
fn short(v: &Value) -> String {
    let t = v.to_string();
    match t.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked_before_writing() {
        let s = Store::temporary().unwrap();
        for doc in [json!(42), json!({"widgets": []}), json!({"machines": {}})] {
            assert!(matches!(import(&s, doc, None), Err(ImportError::Shape(_))));
        }
        assert!(matches!(
            import(&s, json!({}), Some(Kind::Machine)),
            Err(ImportError::Shape(_))
        ));
        let e = import(&s, json!([{"Name": "m", "Profiles": ["ghost"]}]), None).unwrap_err();
        assert!(e.to_string().starts_with("import machines #0: "), "{e}");
        assert_eq!(s.machines().list_all().unwrap().len(), 0);
    }

    #[test]
    fn detects_kinds() {
        assert_eq!(detect(&[json!({"Name": "a", "Uuid": "x"})]), Kind::Machine);
        assert_eq!(detect(&[json!({"Name": "a", "Schema": {}})]), Kind::Param);
        assert_eq!(detect(&[json!({"Name": "a"})]), Kind::Profile);
    }
}
