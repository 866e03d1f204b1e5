//! Everything the store keeps in memory: definitions, profiles, the machine
//! and profile indexes, and what each object contributes to an index.
//!
//! Owns: [`State`], object addressing (`Uuid:`, `Name:`…), the checks that
//! need other objects (unique names, profile existence, schemas), and the
//! index entries of machines and profiles. Must not: read or write the
//! engine; changes arrive as closures from the write pipeline, applied under
//! the state's write lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use roaring::RoaringBitmap;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filter::{Field, Key, ParamTypes};
use crate::index::{Defaults, Entries, EntrySink, FastMap, Index, KeyRef, Posting, ValueKey};
use crate::model::{Effective, Kind, Machine, Object, ParamDef, Profile};

/// Everything kept in memory, replaced only under the state's write lock.
pub(crate) struct State {
    pub(super) rev: u64,
    pub(super) next_id: u32,
    pub(super) machines: Index,
    pub(super) profiles: BTreeMap<String, Profile>,
    pub(super) profile_ids: HashMap<String, u32>,
    pub(super) profile_names: HashMap<u32, String>,
    pub(super) next_profile_id: u32,
    pub(super) profile_index: Index,
    pub(super) params: BTreeMap<String, ParamDef>,
    pub(super) validators: FastMap<String, Arc<jsonschema::Validator>>,
    /// The persisted change log's length.
    pub(super) log: super::changelog::LogLen,
    /// Leases and what they hold.
    pub(super) leases: super::leases::LeaseTable,
    /// What changed since the checkpoint on disk (a store in a directory).
    pub(super) changed: super::snapshot::Changed,
}

impl Defaults for State {
    fn default_of(&self, name: &str) -> Option<&Value> {
        self.params.get(name).and_then(ParamDef::default_value)
    }
    fn with_defaults(&self) -> Vec<&str> {
        self.params
            .values()
            .filter(|d| d.default_value().is_some())
            .map(|d| d.name.as_str())
            .collect()
    }
}

impl ParamTypes for State {
    fn schema_type(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(ParamDef::schema_type)
    }
}

impl State {
    /// Definition defaults as `(name, default)`, by name.
    pub(super) fn defaults(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.params
            .values()
            .filter_map(|d| d.default_value().map(|v| (&d.name, v)))
    }

    /// A machine's effective params (own → profiles in order → global →
    /// default), as they resolve now.
    pub(super) fn effective(&self, m: &Machine) -> Map<String, Value> {
        Effective::of_machine(m, |n| self.profiles.get(n).map(|p| &p.params))
            .resolve(self.defaults())
    }

    pub(super) fn add_profile(&mut self, p: Profile) {
        let id = self.next_profile_id;
        self.next_profile_id += 1;
        self.profile_index.insert(id, &profile_entries(&p), &[]);
        self.profile_ids.insert(p.name.clone(), id);
        self.profile_names.insert(id, p.name.clone());
        self.profiles.insert(p.name.clone(), p);
    }

    pub(super) fn machine_id(&self, addr: &str) -> Result<u32> {
        let (field, value) = match MachineAddr::parse(addr)? {
            MachineAddr::Uuid(u) => (Field::Uuid, u),
            MachineAddr::Name(n) => (Field::Name, n),
        };
        self.machines
            .lookup(&Key::Field(field), &ValueKey::str(&value))
            .and_then(|b| b.min())
            .ok_or_else(|| Error::not_found(Kind::Machine, addr))
    }

    pub(super) fn members(&self, profile: &str) -> RoaringBitmap {
        self.machines
            .lookup(&Key::Profiles, &ValueKey::str(profile))
            .map(|p| p.to_bitmap())
            .unwrap_or_default()
    }

    /// Checks own params that changed against their definitions' schemas,
    /// as `pending` sees them (a bulk write's own laid over the state's).
    pub(super) fn check_params_in(
        &self,
        pending: &Pending,
        old: Option<&Map<String, Value>>,
        new: &Map<String, Value>,
    ) -> Result<()> {
        for (k, v) in new {
            if old.and_then(|o| o.get(k)) == Some(v) {
                continue;
            }
            check_schema(pending.validator(self, k), k, v)?;
        }
        Ok(())
    }

    /// Checks `v` against param `k`'s definition, if it has one.
    pub(super) fn check_param(&self, k: &str, v: &Value) -> Result<()> {
        check_schema(self.validators.get(k).map(|v| &**v), k, v)
    }

    pub(super) fn check_machine(
        &self,
        id: Option<u32>,
        old: Option<&Machine>,
        m: &Machine,
    ) -> Result<()> {
        let holders = self
            .machines
            .lookup(&Key::Field(Field::Name), &ValueKey::str(&m.name));
        self.check_machine_in(&Pending::default(), id, old, m, holders.as_deref())
    }

    /// [`check_machine`](Self::check_machine) against the profiles and
    /// definitions as a bulk write sees them; `name_holders` are the stored
    /// machines of `m`'s Name (a bulk write looks its Names up together).
    pub(super) fn check_machine_in(
        &self,
        pending: &Pending,
        id: Option<u32>,
        old: Option<&Machine>,
        m: &Machine,
        name_holders: Option<&Posting>,
    ) -> Result<()> {
        m.check()?;
        if let Some(b) = name_holders {
            if b.iter().any(|other| Some(other) != id) {
                return Err(Error::AlreadyExists {
                    kind: Kind::Machine,
                    key: format!("Name:{}", m.name),
                });
            }
        }
        for p in &m.profiles {
            if pending.profile(self, p).is_none() {
                return Err(Error::invalid(
                    "machine Profiles",
                    format!("profile {p:?} does not exist"),
                ));
            }
        }
        self.check_params_in(pending, old.map(|o| &o.params), &m.params)
    }
}

fn check_schema(validator: Option<&jsonschema::Validator>, k: &str, v: &Value) -> Result<()> {
    match validator {
        Some(val) => val.validate(v).map_err(|e| Error::Schema {
            param: k.to_string(),
            reason: e.to_string(),
        }),
        None => Ok(()),
    }
}

/// What a bulk write has planned so far, laid over the state: the
/// definitions (compiled) and profiles it writes. Later objects of the same
/// write are checked and indexed against these, as if the earlier ones were
/// stored already. Empty for a single-object write.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) validators: FastMap<String, Arc<jsonschema::Validator>>,
    pub(super) profiles: BTreeMap<String, Profile>,
}

impl Pending {
    /// The validator of param `k`: the write's, else the state's.
    pub(super) fn validator<'a>(
        &'a self,
        st: &'a State,
        k: &str,
    ) -> Option<&'a jsonschema::Validator> {
        self.validators
            .get(k)
            .or_else(|| st.validators.get(k))
            .map(|v| &**v)
    }

    /// Profile `name`: the write's, else the state's.
    pub(super) fn profile<'a>(&'a self, st: &'a State, name: &str) -> Option<&'a Profile> {
        self.profiles.get(name).or_else(|| st.profiles.get(name))
    }

    /// Every profile, the write's replacing the state's of the same name.
    pub(super) fn all_profiles<'a>(&'a self, st: &'a State) -> impl Iterator<Item = &'a Profile> {
        st.profiles
            .values()
            .filter(|p| !self.profiles.contains_key(&p.name))
            .chain(self.profiles.values())
    }
}

/// What a machine address names, as the store reads it: `Uuid:`/`Key:` and
/// a UUID, `Name:` and a name, a bare UUID (any form `Uuid::parse_str`
/// takes), else a bare name. UUIDs come out canonical (lower-case,
/// hyphenated), as machines store them. The auth module judges a token
/// against this same reading, so a claim is checked on the identity the
/// store will touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MachineAddr {
    /// The machine whose Uuid is this (canonical).
    Uuid(String),
    /// The machine whose Name is this.
    Name(String),
}

impl MachineAddr {
    /// [`Error::Invalid`] for `Uuid:`/`Key:` without a UUID.
    pub(crate) fn parse(addr: &str) -> Result<MachineAddr> {
        Ok(
            if let Some(u) = addr
                .strip_prefix("Uuid:")
                .or_else(|| addr.strip_prefix("Key:"))
            {
                MachineAddr::Uuid(canonical_uuid(u)?)
            } else if let Some(n) = addr.strip_prefix("Name:") {
                MachineAddr::Name(n.to_string())
            } else if let Ok(u) = Uuid::parse_str(addr) {
                MachineAddr::Uuid(u.to_string())
            } else {
                MachineAddr::Name(addr.to_string())
            },
        )
    }
}

fn canonical_uuid(s: &str) -> Result<String> {
    Uuid::parse_str(s)
        .map(|u| u.to_string())
        .map_err(|e| Error::invalid("Uuid", format!("{s:?}: {e}")))
}

fn common_entries<'a>(
    e: &mut impl EntrySink<'a>,
    name: &str,
    description: &str,
    params: impl IntoIterator<Item = (&'a String, &'a Value)>,
    meta: &'a BTreeMap<String, String>,
) {
    e.entry(KeyRef::Field(Field::Name), ValueKey::str(name));
    e.entry(
        KeyRef::Field(Field::Description),
        ValueKey::str(description),
    );
    for (k, v) in params {
        e.entry(KeyRef::Param(k), ValueKey::of(v));
    }
    for (k, v) in meta {
        e.entry(KeyRef::Meta(k), ValueKey::str(v));
    }
}

pub(super) fn machine_entries(m: &Machine, profiles: &BTreeMap<String, Profile>) -> Entries {
    machine_entries_with(m, |n| profiles.get(n))
}

/// [`machine_entries`], profiles looked up by `profile` (a bulk write's
/// [`Pending`] over the state).
pub(super) fn machine_entries_with<'p>(
    m: &Machine,
    profile: impl Fn(&str) -> Option<&'p Profile>,
) -> Entries {
    let mut e = Entries::with_capacity(16 + m.params.len());
    machine_entries_into(m, |n| profile(n), &mut e);
    e
}

/// A machine's index entries, written to `e`: its explicit effective
/// params by reference (the index applies definition defaults itself,
/// through `Defaults`), its fields and its profiles.
pub(super) fn machine_entries_into<'a>(
    m: &'a Machine,
    profile: impl Fn(&str) -> Option<&'a Profile>,
    e: &mut impl EntrySink<'a>,
) {
    let effective = Effective::of_machine(m, |n| profile(n).map(|p| &p.params));
    common_entries(e, &m.name, &m.description, effective.explicit(), &m.meta);
    e.entry(KeyRef::Field(Field::Uuid), ValueKey::uuid(m.uuid));
    if !m.address.is_empty() {
        e.entry(KeyRef::Field(Field::Address), ValueKey::str(&m.address));
    }
    e.entry(KeyRef::Field(Field::Workflow), ValueKey::str(&m.workflow));
    e.entry(KeyRef::Field(Field::Runnable), ValueKey::Bool(m.runnable));
    for p in &m.profiles {
        e.entry(KeyRef::Profiles, ValueKey::str(p));
    }
}

pub(super) fn profile_entries(p: &Profile) -> Entries {
    let mut e = Entries::with_capacity(4 + p.params.len());
    common_entries(&mut e, &p.name, &p.description, &p.params, &p.meta);
    e
}

/// What one object's write changes in an index: entries and own param
/// names that go and that come. Worked out while a write is planned, so the
/// state's write lock is held only to apply it.
#[derive(Default)]
pub(super) struct EntryDiff {
    gone: Entries,
    came: Entries,
    gone_own: Vec<String>,
    came_own: Vec<String>,
}

impl EntryDiff {
    pub(super) fn apply(&self, index: &mut Index, id: u32) {
        fn names(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        index.update(
            id,
            (&self.gone, &names(&self.gone_own)),
            (&self.came, &names(&self.came_own)),
        );
    }
}

/// The index change from machine `old` to `new`. When only own params
/// differ (a param write), only the names whose effective value changed are
/// looked at, instead of building and comparing both machines' entries.
pub(super) fn machine_diff(
    old: &Machine,
    new: &Machine,
    profiles: &BTreeMap<String, Profile>,
) -> EntryDiff {
    let same_fields = old.name == new.name
        && old.description == new.description
        && old.uuid == new.uuid
        && old.address == new.address
        && old.workflow == new.workflow
        && old.runnable == new.runnable
        && old.profiles == new.profiles
        && old.meta == new.meta;
    let mut d = EntryDiff::default();
    if !same_fields {
        let oe = machine_entries(old, profiles);
        let ne = machine_entries(new, profiles);
        d.gone = oe.iter().filter(|x| !ne.contains(x)).cloned().collect();
        d.came = ne.iter().filter(|x| !oe.contains(x)).cloned().collect();
    }
    let layers = |m| Effective::of_machine(m, |n| profiles.get(n).map(|p| &p.params));
    let (eo, en) = (layers(old), layers(new));
    let changed = old
        .params
        .iter()
        .filter(|(k, v)| new.params.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(new.params.keys().filter(|k| !old.params.contains_key(*k)));
    for k in changed {
        let effective = same_fields.then(|| (eo.get(k), en.get(k)));
        d.param_changed(
            k,
            effective,
            old.params.contains_key(k),
            new.params.contains_key(k),
        );
    }
    d
}

/// The index change of a write that changed only own param `key` of
/// machine `new` (`old_own`: its own value before): [`machine_diff`] of
/// that write, without the old machine.
/// What a write of own param `key` alone changes in the index: its own
/// value went from `old_own` to `new_own`, and `inherited` is what the
/// machine's profiles (then `global`) give it.
pub(super) fn param_diff(
    key: &str,
    old_own: Option<&Value>,
    new_own: Option<&Value>,
    inherited: Option<&Value>,
) -> EntryDiff {
    let mut d = EntryDiff::default();
    if old_own != new_own {
        let effective = (old_own.or(inherited), new_own.or(inherited));
        d.param_changed(key, Some(effective), old_own.is_some(), new_own.is_some());
    }
    d
}

impl EntryDiff {
    /// Param `k` changed: its effective value went from `.0` to `.1` (when
    /// given: `None` if the rest of the entries are compared whole) and
    /// the object held it as its own before and after as said.
    fn param_changed(
        &mut self,
        k: &str,
        effective: Option<(Option<&Value>, Option<&Value>)>,
        own_before: bool,
        own_after: bool,
    ) {
        if let Some((ov, nv)) = effective.filter(|(ov, nv)| ov != nv) {
            let key = Key::Param(k.to_string());
            self.gone.extend(ov.map(|v| (key.clone(), ValueKey::of(v))));
            self.came.extend(nv.map(|v| (key, ValueKey::of(v))));
        }
        match (own_before, own_after) {
            (true, false) => self.gone_own.push(k.to_string()),
            (false, true) => self.came_own.push(k.to_string()),
            _ => {}
        }
    }
}

pub(super) fn own_keys(params: &Map<String, Value>) -> Vec<&str> {
    params.keys().map(String::as_str).collect()
}

impl Index {
    /// Applies the difference between an object's old and new entries.
    pub(super) fn replace_entries(
        &mut self,
        id: u32,
        old: Option<(&Entries, Vec<&str>)>,
        new: Option<(&Entries, Vec<&str>)>,
    ) {
        let empty = Entries::new();
        let (oe, oo) = old.unwrap_or((&empty, Vec::new()));
        let (ne, no) = new
            .as_ref()
            .map(|(e, o)| (*e, o.clone()))
            .unwrap_or((&empty, Vec::new()));
        let gone: Entries = oe.iter().filter(|x| !ne.contains(x)).cloned().collect();
        let came: Entries = ne.iter().filter(|x| !oe.contains(x)).cloned().collect();
        let gone_own: Vec<&str> = oo.iter().filter(|x| !no.contains(x)).copied().collect();
        let came_own: Vec<&str> = no.iter().filter(|x| !oo.contains(x)).copied().collect();
        self.remove(id, &gone, &gone_own);
        if new.is_some() {
            self.insert(id, &came, &came_own);
        }
    }
}
