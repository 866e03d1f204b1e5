//! Bulk transfer: everything out as one export object, an export object or
//! an array of one kind (drpcli's list output) back in
//! (`docs/architecture.md` §13 Bulk transfer).
//!
//! Owns: the export object's shape (`{"params":[…],"profiles":[…],
//! "machines":[…]}`), how an import document is read (kind detection, key
//! checks, decoding) and how it is committed. The CLI (`fleetkv export` /
//! `import`) and the server (`GET /api/v3/export`, `POST /api/v3/import`)
//! both call these functions, so the two modes behave alike. Must not: print,
//! authorize or know about HTTP — callers check claims first
//! ([`crate::auth::SCOPES`], `list` to export, `create` and `update` to
//! import).
//!
//! # Import semantics
//! **Detection never guesses.** A plain array without a kind is classified
//! only when every element certainly is of one kind: a machine has a field
//! only DRP machines have ([`MACHINE_ONLY`]: `Uuid`, `Address`, `Workflow`,
//! …), a param definition one only definitions have ([`PARAM_ONLY`]:
//! `Schema`, `Secure`). Profiles have no field of their own (`Params` and
//! `Profiles` are machines' fields too), so an array of profiles needs its
//! kind said. Anything else is an [`ImportError::Undetected`] naming the
//! first element that could not be classified and why. An export object
//! needs no detection.
//!
//! **All or nothing.** The whole document is read and checked before
//! anything is written: its shape, every object decoded, Names (and machine
//! Uuids) unique within the document ([`read`]), then every object against
//! the store with the document's earlier objects laid over it — profiles a
//! machine names exist in the store or the document, param values fit the
//! schemas of the store's or the document's definitions, machine Names are
//! not another stored machine's ([`crate::Store::check_bulk`]). The first
//! problem is an error naming the kind, the index in its array, what and
//! where; nothing is written. The document is then committed in writing
//! order (params, profiles, machines) as ONE atomic store write
//! ([`crate::Store::write_bulk`]) when it holds at most [`WRITE_OBJECTS`]
//! objects. A larger document is committed in writes of at most
//! [`WRITE_OBJECTS`] objects each; if one fails (a storage error, a stall, a
//! concurrent writer taking a Name) the import stops with
//! [`ImportError::Partial`], which says how many objects — the first ones in
//! writing order — are in the store. Every object is an upsert (an object
//! whose key exists is replaced), so running the same import again resumes
//! it, and importing the same document twice is idempotent.

use serde_json::{json, Value};

use crate::error::Error;
use crate::model::{Kind, Machine, ParamDef, Profile};
use crate::store::{Bulk, BulkError, Store};

/// The most objects one atomic store write of an import holds. A document
/// with more is committed in writes of this many (see the module doc).
/// 10,000 machines make a batch of about 10 MB with their change events.
pub const WRITE_OBJECTS: usize = 10_000;

/// Fields only DRP machines have: an element with one is a machine.
pub const MACHINE_ONLY: &[&str] = &[
    "Uuid",
    "Address",
    "Workflow",
    "Runnable",
    "BootEnv",
    "Stage",
    "CurrentTask",
    "CurrentJob",
    "Tasks",
    "Arch",
    "OS",
    "HardwareAddrs",
    "Secret",
    "Context",
    "Pool",
    "PoolAllocated",
    "PoolStatus",
    "WorkflowComplete",
    "Fingerprint",
    "TaskErrorStacks",
    "JobState",
    "JobExitState",
    "JobResultErrors",
];

/// Fields only DRP param definitions have: an element with one is a definition.
pub const PARAM_ONLY: &[&str] = &["Schema", "Secure"];

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
    /// A plain array without a kind whose element `index` is not certainly
    /// of the kind of the others. Nothing was written.
    #[error("import: cannot tell the kind of element #{index}: {reason}; say which with --kind machines|profiles|params (kind= over HTTP)")]
    Undetected {
        /// The first element that could not be classified.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Object `index` (counted within its kind's array) was refused.
    /// Nothing was written.
    #[error("import {} #{index}: {source}", kind.plural())]
    Object {
        /// The refused object's kind.
        kind: Kind,
        /// Its position in that kind's array.
        index: usize,
        /// Why it was refused.
        source: Error,
    },
    /// A document too large for one write stopped after `committed` of its
    /// `total` objects were written (the first ones in writing order:
    /// params, profiles, machines). Running the same import again resumes it.
    #[error("{}", partial(*committed, *total, source))]
    Partial {
        /// Objects in the store.
        committed: usize,
        /// Objects in the document.
        total: usize,
        /// Why the next write failed.
        source: Box<ImportError>,
    },
    /// The store failed. Nothing was written.
    #[error(transparent)]
    Store(#[from] Error),
}

impl ImportError {
    /// The library error behind it, if any (its exit code or HTTP status
    /// is the import's).
    pub fn cause(&self) -> Option<&Error> {
        match self {
            ImportError::Object { source, .. } | ImportError::Store(source) => Some(source),
            ImportError::Partial { source, .. } => source.cause(),
            ImportError::Shape(_) | ImportError::Undetected { .. } => None,
        }
    }
}

/// The message of an import stopped part-way (the CLI's remote mode, which
/// commits in requests, says the same).
pub fn partial(committed: usize, total: usize, cause: impl std::fmt::Display) -> String {
    format!(
        "{cause}; import stopped: committed {committed} of {total} objects; the first \
         {committed} (in the order params, profiles, machines) are in the store. Run the \
         same import again to resume: every object is an upsert"
    )
}

/// The kind of a plain array, when every element certainly is of one kind
/// (see the module doc); an empty array has none.
pub fn detect(items: &[Value]) -> Result<Option<Kind>, ImportError> {
    let mut first: Option<(Kind, usize, &str)> = None;
    for (index, item) in items.iter().enumerate() {
        let undetected = |reason: String| ImportError::Undetected { index, reason };
        let Some(o) = item.as_object() else {
            return Err(undetected(format!(
                "it is {}, not a JSON object",
                short(item)
            )));
        };
        let machine = MACHINE_ONLY.iter().find(|f| o.contains_key(**f));
        let param = PARAM_ONLY.iter().find(|f| o.contains_key(**f));
        let (kind, field) = match (machine, param) {
            (Some(m), None) => (Kind::Machine, *m),
            (None, Some(p)) => (Kind::Param, *p),
            (Some(m), Some(p)) => {
                return Err(undetected(format!(
                    "it has {m}, which only machines have, and {p}, which only param \
                     definitions have"
                )))
            }
            (None, None) => {
                return Err(undetected(format!(
                    "{} has no field only machines have ({}, …) or only param \
                     definitions have ({}); profiles have no field of their own",
                    o.get("Name").map_or("it".to_string(), short),
                    MACHINE_ONLY[..6].join(", "),
                    PARAM_ONLY.join(", ")
                )))
            }
        };
        match first {
            None => first = Some((kind, index, field)),
            Some((k, i, f)) if k != kind => {
                return Err(undetected(format!(
                    "it is a {} (it has {field}) but element #{i} is a {} (it has {f})",
                    describe(kind),
                    describe(k)
                )))
            }
            Some(_) => {}
        }
    }
    Ok(first.map(|(k, _, _)| k))
}

fn describe(k: Kind) -> &'static str {
    match k {
        Kind::Param => "param definition",
        Kind::Machine => "machine",
        Kind::Profile => "profile",
        Kind::Job => "job",
        Kind::Lease => "lease",
    }
}

/// Splits an import document into its arrays, in writing order (params,
/// profiles, machines); `kind` names a plain array's kind (else
/// [`detect`]ed, or refused) and is refused with an export object.
pub fn groups(doc: Value, kind: Option<Kind>) -> Result<[(Kind, Vec<Value>); 3], ImportError> {
    let mut groups: [(Kind, Vec<Value>); 3] = [
        (Kind::Param, Vec::new()),
        (Kind::Profile, Vec::new()),
        (Kind::Machine, Vec::new()),
    ];
    match doc {
        Value::Array(items) => {
            let k = match kind {
                Some(k) => k,
                None => match detect(&items)? {
                    Some(k) => k,
                    // An empty array: nothing to import, whatever its kind.
                    None => return Ok(groups),
                },
            };
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

/// [`import`], calling `progress(kind, done, total)` before the first
/// write and after every write (`kind`: the last kind written).
pub fn import_with(
    s: &Store,
    doc: Value,
    kind: Option<Kind>,
    progress: impl FnMut(Kind, usize, usize),
) -> Result<usize, ImportError> {
    let bulk = read(doc, kind)?;
    commit(s, bulk, progress)
}

/// Checks an import document against the store as [`import`] would, and
/// writes nothing; returns how many objects it holds.
pub fn check(s: &Store, doc: Value, kind: Option<Kind>) -> Result<usize, ImportError> {
    let bulk = read(doc, kind)?;
    s.check_bulk(&bulk).map_err(|e| refused(e, [0; 3]))?;
    Ok(bulk.len())
}

/// Reads an import document: its shape, the kind of a plain array, every
/// object decoded, and Names (and machine Uuids) unique within it. Needs no
/// store: the CLI's remote mode checks a document this way before sending
/// it in parts.
pub fn read(doc: Value, kind: Option<Kind>) -> Result<Bulk, ImportError> {
    let [(_, params), (_, profiles), (_, machines)] = groups(doc, kind)?;
    let mut bulk = Bulk {
        params: decode_all(Kind::Param, params, |d: &ParamDef| &d.name)?,
        profiles: decode_all(Kind::Profile, profiles, |p: &Profile| &p.name)?,
        machines: decode_all(Kind::Machine, machines, |m: &Machine| &m.name)?,
    };
    let mut uuids = std::collections::HashMap::with_capacity(bulk.machines.len());
    for (index, m) in bulk.machines.iter().enumerate() {
        if m.uuid.is_nil() {
            continue;
        }
        if let Some(first) = uuids.insert(m.uuid, index) {
            return Err(ImportError::Object {
                kind: Kind::Machine,
                index,
                source: Error::invalid(
                    "machine Uuid",
                    format!("{} is also the Uuid of machines #{first}", m.uuid),
                ),
            });
        }
    }
    bulk.machines.shrink_to_fit();
    Ok(bulk)
}

/// Decodes `items` of `kind`, each Name (`key`) once.
fn decode_all<T: serde::de::DeserializeOwned>(
    kind: Kind,
    items: Vec<Value>,
    name: impl Fn(&T) -> &String,
) -> Result<Vec<T>, ImportError> {
    let mut seen = std::collections::HashMap::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let obj: T = decode(kind, item).map_err(|source| ImportError::Object {
            kind,
            index,
            source,
        })?;
        // An empty Name is the store's to refuse, as it would alone.
        let name = name(&obj);
        if !name.is_empty() {
            if let Some(first) = seen.insert(name.clone(), index) {
                return Err(ImportError::Object {
                    kind,
                    index,
                    source: Error::invalid(
                        format!("{kind} Name"),
                        format!("{name:?} is also the Name of {} #{first}", kind.plural()),
                    ),
                });
            }
        }
        out.push(obj);
    }
    Ok(out)
}

/// Commits a read document (see the module doc): one write when it holds
/// at most [`WRITE_OBJECTS`] objects, else a check of all of it and then
/// writes of [`WRITE_OBJECTS`].
pub fn commit(
    s: &Store,
    mut bulk: Bulk,
    mut progress: impl FnMut(Kind, usize, usize),
) -> Result<usize, ImportError> {
    let total = bulk.len();
    let first = [
        (Kind::Param, bulk.params.is_empty()),
        (Kind::Profile, bulk.profiles.is_empty()),
        (Kind::Machine, bulk.machines.is_empty()),
    ]
    .into_iter()
    .find(|(_, empty)| !empty)
    .map_or(Kind::Machine, |(k, _)| k);
    progress(first, 0, total);
    if total <= WRITE_OBJECTS {
        let last = last_kind(&bulk);
        s.write_bulk(bulk).map_err(|e| refused(e, [0; 3]))?;
        progress(last, total, total);
        return Ok(total);
    }
    s.check_bulk(&bulk).map_err(|e| refused(e, [0; 3]))?;
    let mut done = 0;
    // Objects of each kind taken into earlier writes: a refused object's
    // index within its kind's array is its index in its write plus these.
    let mut bases = [0; 3];
    while !bulk.is_empty() {
        let mut room = WRITE_OBJECTS;
        let chunk = Bulk {
            params: take(&mut bulk.params, &mut room),
            profiles: take(&mut bulk.profiles, &mut room),
            machines: take(&mut bulk.machines, &mut room),
        };
        let sizes = [
            chunk.params.len(),
            chunk.profiles.len(),
            chunk.machines.len(),
        ];
        let last = last_kind(&chunk);
        match s.write_bulk(chunk) {
            Ok(n) => {
                done += n;
                for (b, n) in bases.iter_mut().zip(sizes) {
                    *b += n;
                }
                progress(last, done, total);
            }
            Err(e) if done == 0 => return Err(refused(e, bases)),
            Err(e) => {
                return Err(ImportError::Partial {
                    committed: done,
                    total,
                    source: Box::new(refused(e, bases)),
                })
            }
        }
    }
    Ok(done)
}

/// The first objects of `from`, as many as there is `room` for.
fn take<T>(from: &mut Vec<T>, room: &mut usize) -> Vec<T> {
    let n = from.len().min(*room);
    *room -= n;
    from.drain(..n).collect()
}

fn last_kind(b: &Bulk) -> Kind {
    if !b.machines.is_empty() {
        Kind::Machine
    } else if !b.profiles.is_empty() {
        Kind::Profile
    } else {
        Kind::Param
    }
}

/// A bulk write's refusal as an import's, its index moved on by the objects
/// of its kind in earlier writes (`bases`: params, profiles, machines).
fn refused(e: BulkError, bases: [usize; 3]) -> ImportError {
    match e {
        BulkError::Refused {
            kind,
            index,
            source,
        } => {
            let base = match kind {
                Kind::Param => bases[0],
                Kind::Profile => bases[1],
                _ => bases[2],
            };
            ImportError::Object {
                kind,
                index: base + index,
                source,
            }
        }
        BulkError::Store(e) => ImportError::Store(e),
    }
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
        let e = import(
            &s,
            json!([{"Name": "m", "Profiles": ["ghost"]}]),
            Some(Kind::Machine),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("import machines #0: "), "{e}");
        assert_eq!(s.machines().list_all().unwrap().len(), 0);
    }

    #[test]
    fn detects_only_what_is_certain() {
        let d = |v: Value| detect(v.as_array().unwrap());
        assert_eq!(
            d(json!([{"Name": "a", "Uuid": "x"}])).unwrap(),
            Some(Kind::Machine)
        );
        assert_eq!(
            d(json!([{"Name": "a", "Stage": "s"}, {"Name": "b", "BootEnv": "x"}])).unwrap(),
            Some(Kind::Machine)
        );
        assert_eq!(
            d(json!([{"Name": "a", "Schema": {}}])).unwrap(),
            Some(Kind::Param)
        );
        assert_eq!(
            d(json!([{"Name": "a", "Secure": true}])).unwrap(),
            Some(Kind::Param)
        );
        assert_eq!(d(json!([])).unwrap(), None);
        for (doc, index, says) in [
            // Profiles share every field with machines: never guessed.
            (json!([{"Name": "a"}]), 0, "no field only machines have"),
            (
                json!([{"Name": "a", "Uuid": "x"}, {"Name": "p", "Profiles": ["q"]}]),
                1,
                "no field only",
            ),
            (
                json!([{"Name": "a", "Uuid": "x"}, {"Name": "d", "Schema": {}}]),
                1,
                "is a param definition (it has Schema) but element #0 is a machine (it has Uuid)",
            ),
            (
                json!([{"Name": "a", "Uuid": "x", "Schema": {}}]),
                0,
                "only machines have",
            ),
            (json!([{"Uuid": "x"}, 17]), 1, "not a JSON object"),
        ] {
            match d(doc.clone()) {
                Err(e @ ImportError::Undetected { index: i, .. }) => {
                    assert_eq!(i, index, "{doc}");
                    let msg = e.to_string();
                    assert!(msg.contains(says) && msg.contains("--kind"), "{msg}");
                    assert!(msg.contains(&format!("element #{index}")), "{msg}");
                }
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_issue_profiles_are_refused_without_kind_and_nothing_is_written() {
        // 41 plain profiles, then one that lists profiles: once taken for
        // machines, 41 of them stored before the 42nd failed.
        let s = Store::temporary().unwrap();
        let rev = s.revision();
        let mut profiles: Vec<Value> = (0..41)
            .map(|i| json!({"Name": format!("p{i}"), "Params": {}}))
            .collect();
        profiles.push(json!({"Name": "bundle", "Profiles": ["p0", "p1"]}));
        let e = import(&s, Value::Array(profiles.clone()), None).unwrap_err();
        assert!(matches!(e, ImportError::Undetected { index: 0, .. }), "{e}");
        assert_eq!(
            (s.revision(), s.machines().list_all().unwrap().len()),
            (rev, 0)
        );
        // With the kind: one write, and the profile's own Profiles kept.
        assert_eq!(
            import(&s, Value::Array(profiles), Some(Kind::Profile)).unwrap(),
            42
        );
        assert_eq!(s.revision(), rev + 1);
        let bundle = s.profiles().get("bundle").unwrap();
        assert_eq!(bundle.extra["Profiles"], json!(["p0", "p1"]));
    }

    #[test]
    fn duplicates_within_a_document_are_refused_by_index() {
        let s = Store::temporary().unwrap();
        let e = import(
            &s,
            json!({"profiles": [{"Name": "a"}, {"Name": "b"}, {"Name": "a"}]}),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "import profiles #2: invalid profile Name: \"a\" is also the Name of profiles #0"
        );
        let u = "00000000-0000-4000-8000-000000000001";
        let e = import(
            &s,
            json!([{"Name": "a", "Uuid": u}, {"Name": "b", "Uuid": u}]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("import machines #1: invalid machine Uuid"),
            "{e}"
        );
        assert_eq!(s.profiles().list_all().len(), 1, "only global");
    }

    #[test]
    fn a_bad_object_anywhere_writes_nothing() {
        let s = Store::temporary().unwrap();
        let machines: Vec<Value> = (0..60)
            .map(|i| json!({"Name": format!("m{i}"), "Profiles": ["rack"], "Params": {"n": i}}))
            .collect();
        let mut doc = json!({
            "params": [{"Name": "n", "Schema": {"type": "integer"}}],
            "profiles": [{"Name": "rack", "Params": {"n": 0}}],
            "machines": machines,
        });
        let rev = s.revision();
        doc["machines"][41]["Params"]["n"] = json!("forty-one");
        let e = import(&s, doc.clone(), None).unwrap_err();
        assert!(
            e.to_string().starts_with("import machines #41: param n"),
            "{e}"
        );
        doc["machines"][41]["Params"]["n"] = json!(41);
        doc["machines"][42]["Profiles"] = json!(["ghost"]);
        let e = import(&s, doc.clone(), None).unwrap_err();
        assert!(
            e.to_string().contains(
                "import machines #42: invalid machine Profiles of m42: profile \"ghost\""
            ),
            "{e}"
        );
        assert_eq!(s.revision(), rev);
        assert!(s.params().list_all().is_empty());
        doc["machines"][42]["Profiles"] = json!(["rack"]);
        assert_eq!(import(&s, doc.clone(), None).unwrap(), 62);
        assert_eq!(s.revision(), rev + 1, "one write");
        s.verify_indexes().unwrap();
        // Idempotent, and a name-keyed machine keeps its Uuid.
        let before = s.machines().get("Name:m7").unwrap().uuid;
        assert_eq!(import(&s, doc, None).unwrap(), 62);
        assert_eq!(s.machines().list_all().unwrap().len(), 60);
        assert_eq!(s.machines().get("Name:m7").unwrap().uuid, before);
        s.verify_indexes().unwrap();
    }

    #[test]
    fn large_documents_are_checked_whole_then_written_in_parts() {
        let s = Store::temporary().unwrap();
        let n = WRITE_OBJECTS + 5;
        let mut machines: Vec<Value> = (0..n)
            .map(|i| json!({"Name": format!("m{i}"), "Uuid": uuid::Uuid::new_v4()}))
            .collect();
        machines[WRITE_OBJECTS + 2]["Profiles"] = json!(["ghost"]);
        let rev = s.revision();
        let e = import(&s, Value::Array(machines.clone()), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("import machines #{}: ", WRITE_OBJECTS + 2)),
            "{e}"
        );
        assert_eq!(s.revision(), rev, "checked before the first write");
        machines[WRITE_OBJECTS + 2]["Profiles"] = json!([]);
        let mut seen = Vec::new();
        let done = import_with(&s, Value::Array(machines), None, |_, d, t| {
            seen.push((d, t))
        })
        .unwrap();
        assert_eq!(done, n);
        assert_eq!(seen, [(0, n), (WRITE_OBJECTS, n), (n, n)]);
        assert_eq!(s.revision(), rev + 2);
    }

    #[test]
    fn partial_imports_say_what_is_in_the_store() {
        let e = ImportError::Partial {
            committed: 10_000,
            total: 25_000,
            source: Box::new(ImportError::Store(Error::Timeout)),
        };
        assert_eq!(
            e.to_string(),
            "timeout; import stopped: committed 10000 of 25000 objects; the first 10000 (in the \
             order params, profiles, machines) are in the store. Run the same import again to \
             resume: every object is an upsert"
        );
        assert!(matches!(e.cause(), Some(Error::Timeout)));
    }
}
