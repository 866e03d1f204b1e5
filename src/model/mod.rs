//! The data model: machines, profiles and param definitions with DRP's field
//! names, and the rules every stored object obeys (`docs/architecture.md`
//! §2 The data model, §3 Effective params).
//!
//! Owns: the serde shapes (unknown fields kept in `extra` and written back
//! unchanged), per-object validation that needs no other object, and the
//! effective-param resolution order. Must not: touch storage or indexes; rules
//! that need other objects (Name uniqueness, profile existence, schemas) are
//! checked by the store, which sees them all.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The name of the profile that always exists and applies to every machine.
pub const GLOBAL_PROFILE: &str = "global";

/// The kinds of object fleetkv stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A machine, keyed by Uuid.
    #[serde(rename = "machines")]
    Machine,
    /// A profile, keyed by Name.
    #[serde(rename = "profiles")]
    Profile,
    /// A param definition, keyed by Name.
    #[serde(rename = "params")]
    Param,
    /// A job (a rendered template snapshot), keyed by Uuid. Jobs are written
    /// and watched like the other kinds but are neither listed nor filtered.
    #[serde(rename = "jobs")]
    Job,
    /// A lease ([`crate::Leases`]), keyed by its id. Leases are granted,
    /// renewed and revoked through their own calls, never listed as objects.
    #[serde(rename = "leases")]
    Lease,
}

impl Kind {
    /// DRP's plural prefix (`machines`, `profiles`, `params`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Machine => "machines",
            Kind::Profile => "profiles",
            Kind::Param => "params",
            Kind::Job => "jobs",
            Kind::Lease => "leases",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Machine => "machine",
            Kind::Profile => "profile",
            Kind::Param => "param",
            Kind::Job => "job",
            Kind::Lease => "lease",
        })
    }
}

fn yes() -> bool {
    true
}

fn is_nil(u: &Uuid) -> bool {
    u.is_nil()
}

/// A machine, as DRP shapes it. Fields fleetkv does not know live in `extra`
/// and are written back as they came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Immutable key; assigned (v4) on create when nil.
    #[serde(rename = "Uuid", default, skip_serializing_if = "is_nil")]
    pub uuid: Uuid,
    /// Required, unique among machines.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// An IP address, or empty.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// The workflow the machine runs.
    #[serde(rename = "Workflow", default)]
    pub workflow: String,
    /// Whether the machine may run jobs; true unless said otherwise.
    #[serde(rename = "Runnable", default = "yes")]
    pub runnable: bool,
    /// Profiles in priority order; each must exist.
    #[serde(rename = "Profiles", default)]
    pub profiles: Vec<String>,
    /// The machine's own params.
    #[serde(rename = "Params", default)]
    pub params: Map<String, Value>,
    /// String annotations (icon, color, ...).
    #[serde(rename = "Meta", default)]
    pub meta: BTreeMap<String, String>,
    /// The store revision of the write that last changed this object
    /// (read-only; set by the store).
    #[serde(rename = "Revision", default)]
    pub revision: u64,
    /// Fields fleetkv does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A profile: a named bundle of params that machines include.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The key.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// The profile's params.
    #[serde(rename = "Params", default)]
    pub params: Map<String, Value>,
    /// String annotations.
    #[serde(rename = "Meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Store revision of the last write (read-only).
    #[serde(rename = "Revision", default)]
    pub revision: u64,
    /// Fields fleetkv does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A param definition: a name, a JSON Schema its values must fit, and
/// optionally a default (`Schema.default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamDef {
    /// The key: the param's name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// JSON Schema for values; `type` and `default` matter most.
    #[serde(rename = "Schema", default = "empty_schema")]
    pub schema: Value,
    /// Whether values are secrets (kept for DRP compatibility).
    #[serde(rename = "Secure", default)]
    pub secure: bool,
    /// Store revision of the last write (read-only).
    #[serde(rename = "Revision", default)]
    pub revision: u64,
    /// Fields fleetkv does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn empty_schema() -> Value {
    Value::Object(Map::new())
}

impl ParamDef {
    /// The definition's default value, if its schema has one.
    pub fn default_value(&self) -> Option<&Value> {
        self.schema.get("default")
    }

    /// The schema's `type` when it names exactly one JSON type.
    pub fn schema_type(&self) -> Option<&str> {
        self.schema.get("type").and_then(Value::as_str)
    }
}

/// Common access to the parts of an object the filter language and the
/// store treat alike.
pub trait Object: Serialize + serde::de::DeserializeOwned + Clone {
    /// Which kind this is.
    const KIND: Kind;
    /// The object's own params.
    fn params(&self) -> &Map<String, Value>;
    /// Mutable own params.
    fn params_mut(&mut self) -> &mut Map<String, Value>;
    /// The object's Meta.
    fn meta_mut(&mut self) -> &mut BTreeMap<String, String>;
    /// The object's Name.
    fn name(&self) -> &str;
    /// Store revision of the last write.
    fn revision(&self) -> u64;
    /// Set by the store on write.
    fn set_revision(&mut self, rev: u64);
    /// Checks rules that need no other object.
    fn check(&self) -> Result<()>;
}

fn check_name(kind: Kind, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(
            format!("{kind} Name"),
            "Name is required and may not be empty",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            format!("{kind} Name"),
            format!("{name:?} contains control characters"),
        ));
    }
    Ok(())
}

impl Object for Machine {
    const KIND: Kind = Kind::Machine;
    fn params(&self) -> &Map<String, Value> {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.params
    }
    fn meta_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.meta
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, rev: u64) {
        self.revision = rev;
    }
    fn check(&self) -> Result<()> {
        check_name(Kind::Machine, &self.name)?;
        if !self.address.is_empty() && self.address.parse::<IpAddr>().is_err() {
            return Err(Error::invalid(
                "machine Address",
                format!("{:?} is not an IP address", self.address),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.profiles {
            if !seen.insert(p.as_str()) {
                return Err(Error::invalid(
                    "machine Profiles",
                    format!("profile {p:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

impl Object for Profile {
    const KIND: Kind = Kind::Profile;
    fn params(&self) -> &Map<String, Value> {
        &self.params
    }
    fn params_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.params
    }
    fn meta_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.meta
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, rev: u64) {
        self.revision = rev;
    }
    fn check(&self) -> Result<()> {
        check_name(Kind::Profile, &self.name)
    }
}

impl Machine {
    /// A machine with the given Name and defaults elsewhere.
    pub fn new(name: impl Into<String>) -> Self {
        Machine {
            uuid: Uuid::nil(),
            name: name.into(),
            description: String::new(),
            address: String::new(),
            workflow: String::new(),
            runnable: true,
            profiles: Vec::new(),
            params: Map::new(),
            meta: BTreeMap::new(),
            revision: 0,
            extra: Map::new(),
        }
    }
}

impl Profile {
    /// A profile with the given Name and no params.
    pub fn new(name: impl Into<String>) -> Self {
        Profile {
            name: name.into(),
            description: String::new(),
            params: Map::new(),
            meta: BTreeMap::new(),
            revision: 0,
            extra: Map::new(),
        }
    }
}

impl ParamDef {
    /// A definition with the given Name and schema.
    pub fn new(name: impl Into<String>, schema: Value) -> Self {
        ParamDef {
            name: name.into(),
            description: String::new(),
            schema,
            secure: false,
            revision: 0,
            extra: Map::new(),
        }
    }
}

/// Resolves one param for a machine (`docs/architecture.md` §3): own, then
/// each profile in order, then `global`, then the definition's default.
/// `profile` looks a profile's params up by name.
pub fn effective_param<'a, F, D>(
    machine: &'a Machine,
    key: &str,
    profile: F,
    default: D,
) -> Option<&'a Value>
where
    F: Fn(&str) -> Option<&'a Map<String, Value>>,
    D: Fn(&str) -> Option<&'a Value>,
{
    Effective::of_machine(machine, profile)
        .get(key)
        .or_else(|| default(key))
}

/// The params a machine with `profiles` inherits, in priority order: each
/// profile's (`profile` looks them up by name; a missing one contributes
/// nothing), then the global profile's. What its own params override.
pub(crate) fn profile_layers<'a>(
    profiles: impl IntoIterator<Item = &'a str>,
    profile: impl Fn(&str) -> Option<&'a Map<String, Value>>,
) -> impl Iterator<Item = &'a Map<String, Value>> {
    profiles
        .into_iter()
        .chain(std::iter::once(GLOBAL_PROFILE))
        .filter_map(profile)
}

/// The one definition of effective params (docs/architecture.md §3): the param maps an
/// object's values come from, in resolution order — a machine's own, each of
/// its profiles in order, then `global` — where the first map holding a name
/// gives its value and a definition's default fills a name none holds.
/// Borrows every value, so the index can walk them without copying.
pub(crate) struct Effective<'a> {
    /// Inline: a machine has its own map, a profile or two and `global`
    /// (a heap vector was one allocation per machine an import indexes).
    layers: smallvec::SmallVec<[&'a Map<String, Value>; 4]>,
}

impl<'a> Effective<'a> {
    /// A machine's sources; `profile` looks a profile's params up by name
    /// (a missing profile contributes nothing).
    pub(crate) fn of_machine(
        m: &'a Machine,
        profile: impl Fn(&str) -> Option<&'a Map<String, Value>>,
    ) -> Self {
        let profiles = profile_layers(m.profiles.iter().map(String::as_str), profile);
        Effective {
            layers: std::iter::once(&m.params).chain(profiles).collect(),
        }
    }

    /// An object whose only explicit params are its own (a profile).
    pub(crate) fn own(params: &'a Map<String, Value>) -> Self {
        Effective {
            layers: smallvec::smallvec![params],
        }
    }

    /// The explicit value of `key`, from its first holder.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.layers.iter().find_map(|l| l.get(key))
    }

    /// Each explicitly held name once, with its first holder's value: the
    /// layers in order, each in its own key order.
    pub(crate) fn explicit(&self) -> impl Iterator<Item = (&'a String, &'a Value)> + '_ {
        let layers = &self.layers;
        layers.iter().enumerate().flat_map(move |(i, l)| {
            l.iter()
                .filter(move |(k, _)| !layers[..i].iter().any(|e| e.contains_key(*k)))
        })
    }

    /// The effective params as a map: [`explicit`](Self::explicit), then
    /// each `(name, default)` for a name no layer holds.
    pub(crate) fn resolve(
        &self,
        defaults: impl IntoIterator<Item = (&'a String, &'a Value)>,
    ) -> Map<String, Value> {
        let mut out: Map<String, Value> = self
            .explicit()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in defaults {
            if !out.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}
