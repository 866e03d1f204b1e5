//! The write path against a model (shared by the `write_path` fuzz target and
//! `tests/fuzz_write_path.rs`, which replays the seeds on stable).
//!
//! An input is a short sequence of writes — creates, RFC 6902 patches (with
//! `test` ops, also on `Revision`), RFC 7396 merges, reference updates, param
//! compare-and-set, deletes, profile and definition changes — and filter
//! queries. Each is applied to a fresh `Store::in_memory()` and to a plain
//! model (`BTreeMap`s of JSON documents, its own patch/merge/validation
//! rules). After every step: the same outcome (success, or the same kind of
//! error; a failed write leaves the store as it was, revision included),
//! and every stored document equal to the model's. A query step compares
//! the indexed count and listing with the filter's reference evaluator
//! (`Bound::matches`, as `Machines::scan` uses it) run on the model's
//! documents and effective params, then `verify_indexes()`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use fleetkv::filter::{ParamTypes, Subject};
use fleetkv::{Error, Filter, Kind, ListOptions, Machine, ParamDef, Profile, Store};
use serde_json::{json, Map, Value};

/// Most steps an input runs (more bytes are ignored): keeps an execution cheap.
const MAX_STEPS: usize = 12;
/// Most ops in one JSON Patch, profiles on a created machine, fields in a merge.
const MAX_OPS: usize = 4;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum MName {
    M0,
    M1,
    M2,
    M3,
}

impl MName {
    fn s(self) -> &'static str {
        ["m0", "m1", "m2", "m3"][self as usize]
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum PName {
    P0,
    P1,
    P2,
    Global,
}

impl PName {
    fn s(self) -> &'static str {
        ["p0", "p1", "p2", "global"][self as usize]
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum KName {
    Flag,
    Num,
    Str,
    Any,
    /// Needs `~1` in a JSON Pointer.
    Slash,
}

impl KName {
    fn s(self) -> &'static str {
        ["flag", "num", "str", "any", "c/x"][self as usize]
    }
    fn ptr(self) -> &'static str {
        ["flag", "num", "str", "any", "c~1x"][self as usize]
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum Val {
    True,
    False,
    StrTrue,
    One,
    Two,
    Half,
    X,
    Null,
    Arr,
    Obj,
    P0,
    P1,
    Global,
    M1,
    Ip,
    /// Parses as an address but is not in canonical form.
    Ip6Long,
    Empty,
}

impl Val {
    fn v(self) -> Value {
        match self {
            Val::True => json!(true),
            Val::False => json!(false),
            Val::StrTrue => json!("true"),
            Val::One => json!(1),
            Val::Two => json!(2),
            Val::Half => json!(2.5),
            Val::X => json!("x"),
            Val::Null => Value::Null,
            Val::Arr => json!([1]),
            Val::Obj => json!({"k": 1}),
            Val::P0 => json!("p0"),
            Val::P1 => json!("p1"),
            Val::Global => json!("global"),
            Val::M1 => json!("m1"),
            Val::Ip => json!("10.0.0.1"),
            Val::Ip6Long => json!("::0:1"),
            Val::Empty => json!(""),
        }
    }
}

/// Schema types a definition may get (`Bogus` does not compile).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum Ty {
    Boolean,
    Number,
    String,
    Untyped,
    Bogus,
}

impl Ty {
    fn schema(self, default: Option<Val>) -> Value {
        let mut s = match self {
            Ty::Boolean => json!({"type": "boolean"}),
            Ty::Number => json!({"type": "number"}),
            Ty::String => json!({"type": "string"}),
            Ty::Untyped => json!({}),
            Ty::Bogus => json!({"type": "bogus"}),
        };
        if let Some(d) = default {
            s["default"] = d.v();
        }
        s
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Target {
    Machine(MName),
    Profile(PName),
    Param(KName),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Obj {
    Machine(MName),
    Profile(PName),
}

impl Obj {
    fn target(self) -> Target {
        match self {
            Obj::Machine(m) => Target::Machine(m),
            Obj::Profile(p) => Target::Profile(p),
        }
    }
}

/// Where a patch op points (on a definition, the field-like ones map to
/// its `Schema`, see [`Path::pointer`]).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Path {
    Param(KName),
    MetaIcon,
    Description,
    Workflow,
    Address,
    Runnable,
    Profiles(u8),
    ProfilesEnd,
    Name,
    Uuid,
    Revision,
    Extra,
    Params,
    Meta,
}

impl Path {
    fn pointer(self, t: Target) -> String {
        if let Target::Param(_) = t {
            return match self {
                Path::Param(_) | Path::Workflow => "/Schema/type".into(),
                Path::MetaIcon | Path::Address => "/Schema/default".into(),
                Path::Runnable => "/Secure".into(),
                Path::Description => "/Description".into(),
                Path::Name => "/Name".into(),
                Path::Revision => "/Revision".into(),
                Path::Uuid => "/Uuid".into(),
                _ => "/Extra".into(),
            };
        }
        match self {
            Path::Param(k) => format!("/Params/{}", k.ptr()),
            Path::MetaIcon => "/Meta/icon".into(),
            Path::Description => "/Description".into(),
            Path::Workflow => "/Workflow".into(),
            Path::Address => "/Address".into(),
            Path::Runnable => "/Runnable".into(),
            Path::Profiles(i) => format!("/Profiles/{}", i % 4),
            Path::ProfilesEnd => "/Profiles/-".into(),
            Path::Name => "/Name".into(),
            Path::Uuid => "/Uuid".into(),
            Path::Revision => "/Revision".into(),
            Path::Extra => "/Extra".into(),
            Path::Params => "/Params".into(),
            Path::Meta => "/Meta".into(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum POp {
    Add(Path, Val),
    Remove(Path),
    Replace(Path, Val),
    Test(Path, Val),
    /// `test` of `/Revision`: the current one, or a stale one.
    TestRevision(bool),
    /// `test` of the current value (as the model holds it) at a path.
    TestCurrent(Path),
    Move(KName, KName),
    Copy(Path, Path),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MergeKey {
    Param(KName),
    MetaIcon,
    Description,
    Workflow,
    Address,
    Runnable,
    Profiles(PName, PName),
    Params,
    Name,
}

/// A leaf of a filter: key, operator and literals from small pools (so they
/// hit the stored values).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Leaf {
    key: u8,
    op: u8,
    a: u8,
    b: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Comb {
    One,
    And,
    Or,
    Not,
    AndNot,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    CreateMachine {
        name: MName,
        profiles: Vec<PName>,
        param: Option<(KName, Val)>,
        address: Option<Val>,
    },
    CreateProfile {
        name: PName,
        param: Option<(KName, Val)>,
    },
    CreateParam {
        name: KName,
        ty: Ty,
        default: Option<Val>,
    },
    ReplaceParam {
        name: KName,
        ty: Ty,
        default: Option<Val>,
    },
    Patch {
        target: Target,
        ops: Vec<POp>,
    },
    Merge {
        target: Target,
        fields: Vec<(MergeKey, Option<Val>)>,
    },
    SetParam {
        target: Obj,
        key: KName,
        val: Val,
    },
    SetParamIf {
        target: Obj,
        key: KName,
        expected: Option<Val>,
        val: Val,
    },
    RemoveParam {
        target: Obj,
        key: KName,
    },
    /// A reference update: `reference` is the current document, made stale
    /// at one place when `stale` says so; `desired` is it with one change.
    UpdateFrom {
        target: Obj,
        stale: Option<(Path, Option<Val>)>,
        change: (Path, Option<Val>),
    },
    Delete(Target),
    Query {
        a: Leaf,
        b: Leaf,
        comb: Comb,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub steps: Vec<Step>,
}

/// The kinds of error the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    Schema,
    InUse,
}

fn fail_of(e: &Error) -> Option<Fail> {
    Some(match e {
        Error::NotFound { .. } => Fail::NotFound,
        Error::AlreadyExists { .. } => Fail::AlreadyExists,
        Error::Conflict { .. } => Fail::Conflict,
        Error::Invalid { .. } => Fail::Invalid,
        Error::Schema { .. } => Fail::Schema,
        Error::InUse { .. } => Fail::InUse,
        _ => return None,
    })
}

type MResult<T = ()> = Result<T, Fail>;

/// The model: documents as JSON, keyed by name.
#[derive(Debug, Clone, Default)]
struct Model {
    /// Name → (creation sequence, document).
    machines: BTreeMap<String, (u64, Value)>,
    profiles: BTreeMap<String, Value>,
    params: BTreeMap<String, Value>,
    next_seq: u64,
}

impl ParamTypes for Model {
    fn schema_type(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .and_then(|d| d.get("Schema"))
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
    }
}

const SCHEMA_TYPES: [&str; 7] = [
    "boolean", "number", "string", "null", "array", "object", "integer",
];

fn fits(ty: Option<&Value>, v: &Value) -> bool {
    match ty.and_then(Value::as_str) {
        None => true,
        Some("boolean") => v.is_boolean(),
        Some("number") => v.is_number(),
        Some("string") => v.is_string(),
        Some("null") => v.is_null(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some(_) => false,
    }
}

fn unescape(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> (&str, String) {
    let i = path.rfind('/').unwrap_or(0);
    (&path[..i], unescape(&path[i + 1..]))
}

fn index(tok: &str, len: usize, end_ok: bool) -> MResult<usize> {
    if end_ok && tok == "-" {
        return Ok(len);
    }
    if tok.is_empty() || (tok.len() > 1 && tok.starts_with('0')) {
        return Err(Fail::Invalid);
    }
    let i: usize = tok.parse().map_err(|_| Fail::Invalid)?;
    let max = if end_ok { len } else { len.saturating_sub(1) };
    if i > max || (!end_ok && len == 0) {
        return Err(Fail::Invalid);
    }
    Ok(i)
}

/// RFC 6902 `add`.
fn add(doc: &mut Value, path: &str, v: Value) -> MResult {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split(path);
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = index(&last, a.len(), true)?;
            a.insert(i, v);
            Ok(())
        }
        _ => Err(Fail::Invalid),
    }
}

/// RFC 6902 `remove`: the removed value.
fn remove(doc: &mut Value, path: &str) -> MResult<Value> {
    let (parent, last) = split(path);
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.shift_remove(&last).ok_or(Fail::Invalid),
        Some(Value::Array(a)) => {
            let i = index(&last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(Fail::Invalid),
    }
}

fn touches(path: &str, field: &str) -> bool {
    path == field || path.starts_with(&format!("{field}/")) || path.is_empty()
}

enum Op {
    Add(String, Value),
    Remove(String),
    Replace(String, Value),
    Test(String, Value),
    Move(String, String),
    Copy(String, String),
}

impl Op {
    fn json(&self) -> Value {
        match self {
            Op::Add(p, v) => json!({"op": "add", "path": p, "value": v}),
            Op::Remove(p) => json!({"op": "remove", "path": p}),
            Op::Replace(p, v) => json!({"op": "replace", "path": p, "value": v}),
            Op::Test(p, v) => json!({"op": "test", "path": p, "value": v}),
            Op::Move(f, p) => json!({"op": "move", "from": f, "path": p}),
            Op::Copy(f, p) => json!({"op": "copy", "from": f, "path": p}),
        }
    }
}

/// The model's JSON Patch: op by op; the first failure ends it (the caller
/// throws the half-changed copy away).
fn model_patch(doc: &mut Value, ops: &[Op]) -> MResult {
    for op in ops {
        let written: Vec<&str> = match op {
            Op::Test(..) => vec![],
            Op::Move(f, p) => vec![p, f],
            Op::Add(p, _) | Op::Remove(p) | Op::Replace(p, _) | Op::Copy(_, p) => vec![p],
        };
        if written
            .iter()
            .any(|p| touches(p, "/Uuid") || touches(p, "/Revision"))
        {
            return Err(Fail::Invalid);
        }
        match op {
            Op::Test(p, v) => {
                if doc.pointer(p) != Some(v) {
                    return Err(Fail::Conflict);
                }
            }
            Op::Add(p, v) => add(doc, p, v.clone())?,
            Op::Remove(p) => {
                remove(doc, p)?;
            }
            Op::Replace(p, v) => match doc.pointer_mut(p) {
                Some(slot) => *slot = v.clone(),
                None => return Err(Fail::Invalid),
            },
            Op::Move(f, p) => {
                if p.starts_with(&format!("{f}/")) {
                    return Err(Fail::Invalid);
                }
                let v = remove(doc, f)?;
                add(doc, p, v)?;
            }
            Op::Copy(f, p) => {
                let v = doc.pointer(f).cloned().ok_or(Fail::Invalid)?;
                add(doc, p, v)?;
            }
        }
    }
    Ok(())
}

/// RFC 7396.
fn merge(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    if let Value::Object(d) = doc {
        for (k, v) in p {
            if v.is_null() {
                d.shift_remove(k);
            } else {
                merge(d.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Takes string field `k` (default `""`) of a decoded object.
fn string_field(o: &Map<String, Value>, k: &str) -> MResult<String> {
    match o.get(k) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Fail::Invalid),
    }
}

fn map_field(o: &Map<String, Value>, k: &str) -> MResult<Map<String, Value>> {
    match o.get(k) {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(Fail::Invalid),
    }
}

fn meta_field(o: &Map<String, Value>) -> MResult<Value> {
    let m = map_field(o, "Meta")?;
    if m.values().any(|v| !v.is_string()) {
        return Err(Fail::Invalid);
    }
    // Meta is a BTreeMap: keys come back sorted (equality ignores order).
    Ok(Value::Object(m))
}

fn check_name(n: &str) -> MResult {
    if n.is_empty() || n.chars().any(char::is_control) {
        return Err(Fail::Invalid);
    }
    Ok(())
}

impl Model {
    /// Own params changed from `old` must fit their definitions.
    fn check_params(&self, old: Option<&Value>, new: &Map<String, Value>) -> MResult {
        for (k, v) in new {
            if old.and_then(|o| o.get(k)) == Some(v) {
                continue;
            }
            if let Some(d) = self.params.get(k) {
                if !fits(d["Schema"].get("type"), v) {
                    return Err(Fail::Schema);
                }
            }
        }
        Ok(())
    }

    /// Decodes and checks a machine document as the store would, returning
    /// it in the store's form (every field present, Address canonical).
    fn machine(&self, doc: Value, old: Option<&Value>, me: Option<&str>) -> MResult<Value> {
        let Value::Object(mut o) = doc else {
            return Err(Fail::Invalid);
        };
        let name = string_field(&o, "Name")?;
        let description = string_field(&o, "Description")?;
        let mut address = string_field(&o, "Address")?;
        let workflow = string_field(&o, "Workflow")?;
        let runnable = match o.get("Runnable") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Fail::Invalid),
        };
        let profiles: Vec<String> = match o.get("Profiles") {
            None => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|p| p.as_str().map(String::from).ok_or(Fail::Invalid))
                .collect::<MResult<_>>()?,
            Some(_) => return Err(Fail::Invalid),
        };
        let params = map_field(&o, "Params")?;
        let meta = meta_field(&o)?;
        if let Ok(ip) = address.parse::<std::net::IpAddr>() {
            address = ip.to_string();
        }
        check_name(&name)?;
        if !address.is_empty() && address.parse::<std::net::IpAddr>().is_err() {
            return Err(Fail::Invalid);
        }
        for (i, p) in profiles.iter().enumerate() {
            if profiles[..i].contains(p) {
                return Err(Fail::Invalid);
            }
        }
        if self.machines.contains_key(&name) && Some(name.as_str()) != me {
            return Err(Fail::AlreadyExists);
        }
        if profiles.iter().any(|p| !self.profiles.contains_key(p)) {
            return Err(Fail::Invalid);
        }
        self.check_params(old.and_then(|o| o.get("Params")), &params)?;
        o.insert("Name".into(), json!(name));
        o.insert("Description".into(), json!(description));
        o.insert("Address".into(), json!(address));
        o.insert("Workflow".into(), json!(workflow));
        o.insert("Runnable".into(), json!(runnable));
        o.insert("Profiles".into(), json!(profiles));
        o.insert("Params".into(), Value::Object(params));
        o.insert("Meta".into(), meta);
        Ok(Value::Object(o))
    }

    fn profile(&self, doc: Value, old: Option<&Value>) -> MResult<Value> {
        let Value::Object(mut o) = doc else {
            return Err(Fail::Invalid);
        };
        let name = string_field(&o, "Name")?;
        let description = string_field(&o, "Description")?;
        let params = map_field(&o, "Params")?;
        let meta = meta_field(&o)?;
        check_name(&name)?;
        if old.is_some_and(|o| o["Name"] != json!(name)) {
            return Err(Fail::Invalid);
        }
        self.check_params(old.and_then(|o| o.get("Params")), &params)?;
        o.insert("Name".into(), json!(name));
        o.insert("Description".into(), json!(description));
        o.insert("Params".into(), Value::Object(params));
        o.insert("Meta".into(), meta);
        Ok(Value::Object(o))
    }

    fn param_def(&self, doc: Value, old: Option<&Value>) -> MResult<Value> {
        let Value::Object(mut o) = doc else {
            return Err(Fail::Invalid);
        };
        let name = string_field(&o, "Name")?;
        let description = string_field(&o, "Description")?;
        let secure = match o.get("Secure") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Fail::Invalid),
        };
        let schema = o.get("Schema").cloned().unwrap_or_else(|| json!({}));
        if name.is_empty() {
            return Err(Fail::Invalid);
        }
        if old.is_some_and(|o| o["Name"] != json!(name)) {
            return Err(Fail::Invalid);
        }
        let Value::Object(s) = &schema else {
            return Err(Fail::Invalid);
        };
        let ty = s.get("type");
        if ty.is_some_and(|t| !t.as_str().is_some_and(|t| SCHEMA_TYPES.contains(&t))) {
            return Err(Fail::Invalid);
        }
        if let Some(d) = s.get("default") {
            if !fits(ty, d) {
                return Err(Fail::Schema);
            }
        }
        o.insert("Name".into(), json!(name));
        o.insert("Description".into(), json!(description));
        o.insert("Secure".into(), json!(secure));
        o.insert("Schema".into(), schema);
        Ok(Value::Object(o))
    }

    fn doc(&self, t: Target) -> Option<&Value> {
        match t {
            Target::Machine(m) => self.machines.get(m.s()).map(|(_, d)| d),
            Target::Profile(p) => self.profiles.get(p.s()),
            Target::Param(k) => self.params.get(k.s()),
        }
    }

    /// Checks `new` (the whole changed document) for target `t` holding `old`.
    fn checked(&self, t: Target, old: &Value, new: Value) -> MResult<Value> {
        match t {
            Target::Machine(m) => self.machine(new, Some(old), Some(m.s())),
            Target::Profile(_) => self.profile(new, Some(old)),
            Target::Param(_) => self.param_def(new, Some(old)),
        }
    }

    /// Stores `doc` (revision `rev`) for `t`, which may have been renamed.
    fn put(&mut self, t: Target, mut doc: Value, rev: u64) {
        doc["Revision"] = json!(rev);
        match t {
            Target::Machine(m) => {
                let (seq, _) = self.machines.remove(m.s()).expect("model machine");
                let name = doc["Name"].as_str().unwrap_or_default().to_string();
                self.machines.insert(name, (seq, doc));
            }
            Target::Profile(p) => {
                self.profiles.insert(p.s().into(), doc);
            }
            Target::Param(k) => {
                self.params.insert(k.s().into(), doc);
            }
        }
    }

    fn default_of(&self, key: &str) -> Option<Value> {
        self.params
            .get(key)
            .and_then(|d| d["Schema"].get("default"))
            .cloned()
    }

    /// §3: own, each profile in order, `global`, then definitions' defaults.
    fn effective(&self, own: &Value, profiles: &[&str]) -> Map<String, Value> {
        let mut layers = vec![own.get("Params")];
        for p in profiles.iter().chain(["global"].iter()) {
            layers.push(self.profiles.get(*p).and_then(|d| d.get("Params")));
        }
        let mut eff = Map::new();
        for l in layers.into_iter().flatten() {
            if let Value::Object(m) = l {
                for (k, v) in m {
                    eff.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        for (k, d) in &self.params {
            if let Some(v) = d["Schema"].get("default") {
                eff.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        eff
    }

    fn machine_effective(&self, doc: &Value) -> Map<String, Value> {
        let profiles: Vec<&str> = doc["Profiles"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        self.effective(doc, &profiles)
    }
}

fn object(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("serializes")
}

/// The key pool of filters (machine keys, profile-only gaps, params).
const KEYS: [&str; 14] = [
    "Name",
    "Workflow",
    "Runnable",
    "Address",
    "Description",
    "Profiles",
    "Params",
    "Meta",
    "Meta.icon",
    "flag",
    "num",
    "str",
    "any",
    "c/x",
];
const OPS: [&str; 11] = [
    "Eq", "Ne", "Lt", "Lte", "Gt", "Gte", "In", "Nin", "Re", "Between", "Except",
];
const LITS: [&str; 16] = [
    "true", "false", "\"true\"", "1", "2", "2.5", "x", "null", "p0", "p1", "m1", "10.0.0.1", "::1",
    "icon", "flag", "\"\"",
];
const RES: [&str; 6] = ["^m", "1", "^p[01]$", "x|y", ".*", "(?i)^M1"];

impl Leaf {
    fn text(self) -> String {
        let k = KEYS[self.key as usize % KEYS.len()];
        let op = OPS[self.op as usize % OPS.len()];
        let a = LITS[self.a as usize % LITS.len()];
        let b = LITS[self.b as usize % LITS.len()];
        match op {
            "Between" | "Except" => format!("{k} {op} {a} {b}"),
            "In" | "Nin" => format!("{k} {op} {a},{b}"),
            "Re" => format!("{k} Re \"{}\"", RES[self.a as usize % RES.len()]),
            _ => format!("{k} {op} {a}"),
        }
    }
}

fn filter_text(a: Leaf, b: Leaf, comb: Comb) -> String {
    match comb {
        Comb::One => a.text(),
        Comb::And => format!("({}) And ({})", a.text(), b.text()),
        Comb::Or => format!("({}) Or ({})", a.text(), b.text()),
        Comb::Not => format!("Not ({})", a.text()),
        Comb::AndNot => format!("({}) And Not ({})", a.text(), b.text()),
    }
}

/// The outcome of a step on the store: the written object as JSON.
type SResult = Result<Value, Error>;

struct Run {
    store: Store,
    model: Model,
}

impl Run {
    fn new() -> Run {
        let store = Store::in_memory().expect("in-memory store");
        let mut model = Model::default();
        // The starting state (not under test): the `global` profile.
        for p in store.profiles().list_all() {
            model.profiles.insert(p.name.clone(), object(&p));
        }
        for d in store.params().list_all() {
            model.params.insert(d.name.clone(), object(&d));
        }
        Run { store, model }
    }

    /// Compares the store's answer with the model's: on success the model
    /// takes the new document (with the store's new revision), on failure
    /// the kinds agree.
    fn settle(&mut self, what: &str, t: Target, want: MResult<Value>, got: SResult, rev0: u64) {
        static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *TRACE.get_or_init(|| std::env::var_os("FLEETKV_FUZZ_TRACE").is_some()) {
            let kind = what.split([' ', '{', '(']).next().unwrap_or_default();
            eprintln!("trace {kind} {:?}", want.as_ref().map(drop));
        }
        match (want, got) {
            (Ok(doc), Ok(out)) => {
                let rev = self.store.revision();
                assert!(rev > rev0, "{what}: revision {rev0} → {rev}");
                assert_eq!(out["Revision"], json!(rev), "{what}: revision of {out}");
                let mut doc = doc;
                if let Target::Machine(_) = t {
                    if doc.get("Uuid").is_none() {
                        doc["Uuid"] = out["Uuid"].clone();
                    }
                }
                doc["Revision"] = json!(rev);
                assert_eq!(out, doc, "{what}: the store wrote what the model did not");
                if let (Target::Machine(_), None) = (t, self.model.doc(t)) {
                    // A create: next in listing order.
                    let seq = self.model.next_seq;
                    self.model.next_seq += 1;
                    let name = doc["Name"].as_str().unwrap_or_default().to_string();
                    self.model.machines.insert(name, (seq, doc));
                } else {
                    self.model.put(t, doc, rev);
                }
            }
            (Err(w), Err(e)) => {
                assert_eq!(
                    Some(w),
                    fail_of(&e),
                    "{what}: model says {w:?}, store said {e}"
                );
                assert_eq!(
                    self.store.revision(),
                    rev0,
                    "{what}: a failed write moved the revision"
                );
            }
            (Ok(doc), Err(e)) => panic!("{what}: the model wrote {doc}, the store failed: {e}"),
            (Err(w), Ok(out)) => panic!("{what}: the model says {w:?}, the store wrote {out}"),
        }
    }

    fn step(&mut self, step: &Step) {
        let rev0 = self.store.revision();
        let what = format!("{step:?}");
        let s = &self.store;
        let m = &self.model;
        match step {
            Step::CreateMachine {
                name,
                profiles,
                param,
                address,
            } => {
                let mut x = Machine::new(name.s());
                x.profiles = profiles
                    .iter()
                    .take(MAX_OPS)
                    .map(|p| p.s().to_string())
                    .collect();
                if let Some((k, v)) = param {
                    x.params.insert(k.s().into(), v.v());
                }
                if let Some(a) = address {
                    x.address = a.v().as_str().unwrap_or("nope").into();
                }
                let doc = object(&x);
                let want = m.machine(doc, None, None).map(|mut d| {
                    d.as_object_mut().map(|o| o.shift_remove("Uuid"));
                    d
                });
                let got = s.machines().create(x).map(object);
                self.settle(&what, Target::Machine(*name), want, got, rev0);
            }
            Step::CreateProfile { name, param } => {
                let mut p = Profile::new(name.s());
                if let Some((k, v)) = param {
                    p.params.insert(k.s().into(), v.v());
                }
                let doc = object(&p);
                let want = if m.profiles.contains_key(name.s()) {
                    Err(Fail::AlreadyExists)
                } else {
                    m.profile(doc, None)
                };
                let got = s.profiles().create(p).map(object);
                self.settle(&what, Target::Profile(*name), want, got, rev0);
            }
            Step::CreateParam { name, ty, default } | Step::ReplaceParam { name, ty, default } => {
                let d = ParamDef::new(name.s(), ty.schema(*default));
                let doc = object(&d);
                let create = matches!(step, Step::CreateParam { .. });
                let old = m.params.get(name.s());
                let want = match (create, old) {
                    (true, Some(_)) => Err(Fail::AlreadyExists),
                    (false, None) => Err(Fail::NotFound),
                    _ => m.param_def(doc, old),
                };
                let got = if create {
                    s.params().create(d)
                } else {
                    s.params().replace(name.s(), d)
                }
                .map(object);
                self.settle(&what, Target::Param(*name), want, got, rev0);
            }
            Step::Patch { target, ops } => {
                let t = *target;
                let cur = m.doc(t).cloned();
                let ops: Vec<Op> = ops
                    .iter()
                    .take(MAX_OPS)
                    .map(|o| match *o {
                        POp::Add(p, v) => Op::Add(p.pointer(t), v.v()),
                        POp::Remove(p) => Op::Remove(p.pointer(t)),
                        POp::Replace(p, v) => Op::Replace(p.pointer(t), v.v()),
                        POp::Test(p, v) => Op::Test(p.pointer(t), v.v()),
                        POp::TestRevision(current) => {
                            let r = cur
                                .as_ref()
                                .map_or(0, |d| d["Revision"].as_u64().unwrap_or(0));
                            Op::Test("/Revision".into(), json!(if current { r } else { r + 1 }))
                        }
                        POp::TestCurrent(p) => {
                            let ptr = p.pointer(t);
                            let v = cur
                                .as_ref()
                                .and_then(|d| d.pointer(&ptr))
                                .cloned()
                                .unwrap_or(Value::Null);
                            Op::Test(ptr, v)
                        }
                        POp::Move(a, b) => {
                            Op::Move(Path::Param(a).pointer(t), Path::Param(b).pointer(t))
                        }
                        POp::Copy(a, b) => Op::Copy(a.pointer(t), b.pointer(t)),
                    })
                    .collect();
                let body = Value::Array(ops.iter().map(Op::json).collect());
                let want = match &cur {
                    None => Err(Fail::NotFound),
                    Some(old) => {
                        let mut doc = old.clone();
                        model_patch(&mut doc, &ops).and_then(|()| m.checked(t, old, doc))
                    }
                };
                let got = match t {
                    Target::Machine(n) => s.machines().patch(n.s(), &body).map(object),
                    Target::Profile(n) => s.profiles().patch(n.s(), &body).map(object),
                    Target::Param(n) => s.params().patch(n.s(), &body).map(object),
                };
                self.settle(&format!("{what} = {body}"), t, want, got, rev0);
            }
            Step::Merge { target, fields } => {
                let t = *target;
                let mut patch = json!({});
                for (k, v) in fields.iter().take(MAX_OPS) {
                    let v = v.map_or(Value::Null, Val::v);
                    let one = match (t, *k) {
                        (Target::Param(_), MergeKey::Param(_)) => json!({"Schema": {"type": v}}),
                        (Target::Param(_), MergeKey::MetaIcon) => json!({"Schema": {"default": v}}),
                        (_, MergeKey::Param(k)) => json!({"Params": {k.s(): v}}),
                        (_, MergeKey::MetaIcon) => json!({"Meta": {"icon": v}}),
                        (_, MergeKey::Description) => json!({"Description": v}),
                        (_, MergeKey::Workflow) => json!({"Workflow": v}),
                        (_, MergeKey::Address) => json!({"Address": v}),
                        (_, MergeKey::Runnable) => json!({"Runnable": v}),
                        (_, MergeKey::Profiles(a, b)) => json!({"Profiles": [a.s(), b.s()]}),
                        (_, MergeKey::Params) => json!({"Params": v}),
                        (_, MergeKey::Name) => json!({"Name": v}),
                    };
                    merge(&mut patch, &one);
                }
                let want = match m.doc(t) {
                    None => Err(Fail::NotFound),
                    Some(old) => {
                        let mut doc = old.clone();
                        merge(&mut doc, &patch);
                        m.checked(t, old, doc)
                    }
                };
                let got = match t {
                    Target::Machine(n) => s.machines().update(n.s(), &patch).map(object),
                    Target::Profile(n) => s.profiles().update(n.s(), &patch).map(object),
                    Target::Param(n) => s.params().update(n.s(), &patch).map(object),
                };
                self.settle(&format!("{what} = {patch}"), t, want, got, rev0);
            }
            Step::SetParam { target, key, val }
            | Step::SetParamIf {
                target, key, val, ..
            } => {
                let t = target.target();
                let expected = match step {
                    Step::SetParamIf { expected, .. } => Some(expected.map(Val::v)),
                    _ => None,
                };
                let want = match m.doc(t) {
                    None => Err(Fail::NotFound),
                    Some(old) => {
                        let own = old["Params"].get(key.s());
                        let cas = match &expected {
                            None => true,
                            Some(e) => match (own, e) {
                                (Some(a), Some(e)) => a == e,
                                (None, None) => true,
                                (None, Some(e)) => m.default_of(key.s()).as_ref() == Some(e),
                                (Some(_), None) => false,
                            },
                        };
                        if cas {
                            let mut doc = old.clone();
                            doc["Params"][key.s()] = val.v();
                            m.checked(t, old, doc)
                        } else {
                            Err(Fail::Conflict)
                        }
                    }
                };
                let got = match (target, &expected) {
                    (Obj::Machine(n), None) => {
                        s.machines().set_param(n.s(), key.s(), val.v()).map(object)
                    }
                    (Obj::Profile(n), None) => {
                        s.profiles().set_param(n.s(), key.s(), val.v()).map(object)
                    }
                    (Obj::Machine(n), Some(e)) => s
                        .machines()
                        .set_param_if(n.s(), key.s(), e.as_ref(), val.v())
                        .map(object),
                    (Obj::Profile(n), Some(e)) => s
                        .profiles()
                        .set_param_if(n.s(), key.s(), e.as_ref(), val.v())
                        .map(object),
                };
                self.settle(&what, t, want, got, rev0);
            }
            Step::RemoveParam { target, key } => {
                let t = target.target();
                let (want, removed) = match m.doc(t) {
                    None => (Err(Fail::NotFound), None),
                    Some(old) => {
                        let mut doc = old.clone();
                        let removed = doc["Params"]
                            .as_object_mut()
                            .and_then(|p| p.shift_remove(key.s()));
                        (m.checked(t, old, doc), removed)
                    }
                };
                let got = match target {
                    Obj::Machine(n) => s.machines().remove_param(n.s(), key.s()),
                    Obj::Profile(n) => s.profiles().remove_param(n.s(), key.s()),
                };
                if let Ok(r) = &got {
                    assert_eq!(*r, removed, "{what}: removed value");
                }
                // The call answers with the removed value: read the document.
                let got = got.and_then(|_| match target {
                    Obj::Machine(n) => s.machines().get(n.s()).map(object),
                    Obj::Profile(n) => s.profiles().get(n.s()).map(object),
                });
                self.settle(&what, t, want, got, rev0);
            }
            Step::UpdateFrom {
                target,
                stale,
                change,
            } => {
                let t = target.target();
                let Some(cur) = m.doc(t).cloned() else {
                    let got = match target {
                        Obj::Machine(n) => s
                            .machines()
                            .update_from(n.s(), &json!({}), &json!({}))
                            .map(object),
                        Obj::Profile(n) => s
                            .profiles()
                            .update_from(n.s(), &json!({}), &json!({}))
                            .map(object),
                    };
                    self.settle(&what, t, Err(Fail::NotFound), got, rev0);
                    return;
                };
                // Only object members change (array diffs are json-patch's
                // business): params, Meta.icon, Description.
                let leafy = |p: Path| match p {
                    Path::Param(_) | Path::MetaIcon => p,
                    _ => Path::Description,
                };
                let set = |d: &mut Value, p: Path, v: Option<Val>| {
                    let ptr = leafy(p).pointer(t);
                    match v {
                        Some(v) => {
                            let _ = add(d, &ptr, v.v());
                        }
                        None => {
                            let _ = remove(d, &ptr);
                        }
                    }
                };
                let mut reference = cur.clone();
                if let Some((p, v)) = stale {
                    set(&mut reference, *p, *v);
                }
                let mut desired = reference.clone();
                set(&mut desired, change.0, change.1);
                let ptr = leafy(change.0).pointer(t);
                let want = if reference.pointer(&ptr) == desired.pointer(&ptr) {
                    Ok(cur.clone())
                } else if reference.pointer(&ptr) != cur.pointer(&ptr) {
                    Err(Fail::Conflict)
                } else {
                    let mut doc = cur.clone();
                    set(&mut doc, change.0, change.1);
                    m.checked(t, &cur, doc)
                };
                let got = match target {
                    Obj::Machine(n) => s
                        .machines()
                        .update_from(n.s(), &reference, &desired)
                        .map(object),
                    Obj::Profile(n) => s
                        .profiles()
                        .update_from(n.s(), &reference, &desired)
                        .map(object),
                };
                self.settle(&what, t, want, got, rev0);
            }
            Step::Delete(t) => {
                let t = *t;
                let want = match (t, m.doc(t)) {
                    (Target::Profile(PName::Global), _) => Err(Fail::Invalid),
                    (_, None) => Err(Fail::NotFound),
                    (Target::Profile(p), Some(_))
                        if m.machines.values().any(|(_, d)| {
                            d["Profiles"]
                                .as_array()
                                .is_some_and(|a| a.contains(&json!(p.s())))
                        }) =>
                    {
                        Err(Fail::InUse)
                    }
                    (_, Some(d)) => Ok(d.clone()),
                };
                let got = match t {
                    Target::Machine(n) => s.machines().delete(n.s()).map(object),
                    Target::Profile(n) => s.profiles().delete(n.s()).map(object),
                    Target::Param(n) => s.params().delete(n.s()).map(object),
                };
                match (want, got) {
                    (Ok(d), Ok(out)) => {
                        assert_eq!(out, d, "{what}: deleted document");
                        assert!(s.revision() > rev0, "{what}: revision did not move");
                        match t {
                            Target::Machine(n) => {
                                self.model.machines.remove(n.s());
                            }
                            Target::Profile(n) => {
                                self.model.profiles.remove(n.s());
                            }
                            Target::Param(n) => {
                                self.model.params.remove(n.s());
                            }
                        }
                    }
                    (w, g) => self.settle(&what, t, w, g, rev0),
                }
            }
            Step::Query { a, b, comb } => {
                let text = filter_text(*a, *b, *comb);
                self.query(&text);
                self.effective_params();
                s.verify_indexes()
                    .unwrap_or_else(|e| panic!("after {what}: indexes: {e}"));
            }
        }
        self.compare(&what);
    }

    /// Every stored document equals the model's.
    fn compare(&self, after: &str) {
        let s = &self.store;
        let machines: BTreeMap<String, Value> = s
            .machines()
            .list_all()
            .expect("list machines")
            .into_iter()
            .map(|m| (m.name.clone(), object(&m)))
            .collect();
        let want: BTreeMap<String, Value> = self
            .model
            .machines
            .iter()
            .map(|(k, (_, d))| (k.clone(), d.clone()))
            .collect();
        assert_eq!(machines, want, "machines after {after}");
        let profiles: BTreeMap<String, Value> = s
            .profiles()
            .list_all()
            .into_iter()
            .map(|p| (p.name.clone(), object(&p)))
            .collect();
        assert_eq!(profiles, self.model.profiles, "profiles after {after}");
        let params: BTreeMap<String, Value> = s
            .params()
            .list_all()
            .into_iter()
            .map(|d| (d.name.clone(), object(&d)))
            .collect();
        assert_eq!(params, self.model.params, "definitions after {after}");
    }

    /// Effective params per machine and profile, against the model's.
    fn effective_params(&self) {
        for (name, (_, d)) in &self.model.machines {
            let got = self.store.machines().params(name, true).expect("params");
            assert_eq!(
                got,
                self.model.machine_effective(d),
                "effective params of {name}"
            );
        }
        for (name, d) in &self.model.profiles {
            let got = self.store.profiles().params(name, true).expect("params");
            assert_eq!(
                got,
                self.model.effective_profile(d),
                "params of profile {name}"
            );
        }
    }

    /// Count and listing of `text` on both kinds against the reference
    /// evaluator on the model's documents.
    fn query(&self, text: &str) {
        let Ok(f) = Filter::parse(text) else {
            return;
        };
        let names = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|o| o["Name"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        for kind in [Kind::Machine, Kind::Profile] {
            let (count, list) = match kind {
                Kind::Machine => (
                    self.store.machines().count(&f),
                    self.store.machines().list(&f, &ListOptions::default()),
                ),
                _ => (
                    self.store.profiles().count(&f),
                    self.store.profiles().list(&f, &ListOptions::default()),
                ),
            };
            match f.bind(kind, &self.model) {
                Err(e) => {
                    for got in [count.map(drop), list.map(drop)] {
                        match got {
                            Err(Error::Filter(g)) if g.kind == e.kind => {}
                            other => panic!("{kind} `{text}`: refused ({:?}) by the reference, the store: {other:?}", e.kind),
                        }
                    }
                }
                Ok(bound) => {
                    let want: Vec<String> = match kind {
                        Kind::Machine => {
                            let mut docs: Vec<&(u64, Value)> =
                                self.model.machines.values().collect();
                            docs.sort_by_key(|(seq, _)| *seq);
                            docs.into_iter()
                                .filter(|(_, d)| {
                                    let params = self.model.machine_effective(d);
                                    bound.matches(&Subject {
                                        doc: d.as_object().expect("object"),
                                        params: &params,
                                    })
                                })
                                .map(|(_, d)| d["Name"].as_str().unwrap_or_default().to_string())
                                .collect()
                        }
                        _ => self
                            .model
                            .profiles
                            .iter()
                            .filter(|(_, d)| {
                                let params = self.model.effective_profile(d);
                                bound.matches(&Subject {
                                    doc: d.as_object().expect("object"),
                                    params: &params,
                                })
                            })
                            .map(|(n, _)| n.clone())
                            .collect(),
                    };
                    let count = count.unwrap_or_else(|e| panic!("{kind} count `{text}`: {e}"));
                    let list = list.unwrap_or_else(|e| panic!("{kind} list `{text}`: {e}"));
                    assert_eq!(
                        count,
                        want.len() as u64,
                        "{kind} count of `{text}`: want {want:?}"
                    );
                    assert_eq!(names(list), want, "{kind} list of `{text}`");
                }
            }
        }
    }
}

impl Model {
    fn effective_profile(&self, doc: &Value) -> Map<String, Value> {
        let mut eff = doc["Params"].as_object().cloned().unwrap_or_default();
        for (k, d) in &self.params {
            if let Some(v) = d["Schema"].get("default") {
                eff.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        eff
    }
}

/// Runs one input: every step on the store and the model, compared after
/// each; the indexes verified at the end.
pub fn run(input: &Input) {
    let mut r = Run::new();
    for step in input.steps.iter().take(MAX_STEPS) {
        r.step(step);
    }
    r.store
        .verify_indexes()
        .unwrap_or_else(|e| panic!("indexes at the end: {e}"));
}
