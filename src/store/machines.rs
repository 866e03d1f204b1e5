//! The [`Machines`] handle: machine reads, writes, bulk import and
//! multi-machine patches, each write planned against the current state and
//! handed to the pipeline.
//!
//! Owns: machine records (dense ids, Uuid immutability, name uniqueness
//! across a batch) and their index changes. Must not: touch profiles' or
//! definitions' records, or reach the engine except to read machines.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::backend::Batch;
use super::layout::{
    decode, encode, from_json, machine_key, show_key, to_json, MACHINE_PREFIX, NEXT_ID_KEY,
};
use super::leases::{Fence, Guards, LeaseId};
use super::list::{group_keys, shape, shape_raw, sort_key, window, ListOptions, Query};
use super::machine_doc::MachineDoc;
use super::open::Store;
use super::patch;
use super::state::{
    machine_diff, machine_entries, machine_entries_into, machine_entries_with, own_keys,
    param_diff, EntryDiff, Pending, State,
};
use super::write::{erase, record, stage, Apply, Prepare, Retired, Swap};
use crate::error::{Error, Result};
use crate::filter::{Field, Filter, Key, Subject};
use crate::index::GroupCount;
use crate::index::{Bulk, Defaults, Entries, FastMap, Gathered, Index, ValueKey};
use crate::model::{profile_layers, Kind, Machine, Profile};
use crate::telemetry::WriteKind;
use crate::timing;
use crate::watch::{Change, Previous};

/// Machines: addressed by Uuid, `Uuid:…`, `Key:…` or `Name:…` (a bare
/// non-UUID address is taken as a Name).
///
/// A handle can carry a lease ([`with_lease`](Self::with_lease)) and
/// preconditions ([`with_fence`](Self::with_fence),
/// [`when_count_below`](Self::when_count_below)) that its writes check
/// under the writer lock, so nothing changes between check and commit.
pub struct Machines<'a> {
    pub(super) store: &'a Store,
    pub(super) guards: Guards,
}

impl Store {
    pub(super) fn load_machine(&self, id: u32) -> Result<Machine> {
        Ok(self.load_machine_bytes(id)?.0)
    }

    /// Machine `id` and its record's bytes as stored.
    fn load_machine_bytes(&self, id: u32) -> Result<(Machine, Vec<u8>)> {
        let key = machine_key(id);
        let bytes = self.machine_record(&key)?;
        Ok((decode(&key, &bytes)?, bytes))
    }

    /// Machine `id`'s record and the revision of the write that wrote it
    /// (its `Revision`), if there is one.
    pub(crate) fn machine_record_of(&self, id: u32) -> Result<Option<(Vec<u8>, u64)>> {
        let key = machine_key(id);
        let Some(bytes) = self.backend().get(&key)? else {
            return Ok(None);
        };
        let revision = MachineDoc::scan(&key, &bytes)?.revision;
        Ok(Some((bytes, revision)))
    }

    /// The record of an indexed machine, under `key`.
    fn machine_record(&self, key: &[u8]) -> Result<Vec<u8>> {
        let got = self.backend().get(key)?;
        timing::mark("plan: engine get");
        got.ok_or_else(|| Error::Corrupt {
            key: show_key(key),
            reason: "indexed machine has no record".into(),
        })
    }
}

impl Machines<'_> {
    /// Writes through this handle are made under lease `id`: the params and
    /// Meta entries a write sets, or the machine a create makes, go away
    /// when the lease ends (see [`crate::Leases`]). A write of something a
    /// lease cannot hold (a delete, a multi-machine patch) is refused.
    pub fn with_lease(mut self, id: LeaseId) -> Self {
        self.guards.lease = Some(id);
        self
    }

    /// Writes through this handle are refused with [`Error::Conflict`]
    /// unless `fence` is still held (a leadership's fencing token).
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.guards.fence = Some(fence);
        self
    }

    /// Writes through this handle are refused with [`Error::Conflict`]
    /// unless fewer than `n` machines match `filter` when they commit.
    pub fn when_count_below(mut self, filter: Filter, n: u64) -> Self {
        self.guards.count_below = Some((filter, n));
        self
    }

    /// Creates a machine; assigns a v4 Uuid when it has none. Returns it as stored.
    pub fn create(&self, mut m: Machine) -> Result<Machine> {
        if m.uuid.is_nil() {
            m.uuid = Uuid::new_v4();
        }
        normalize_machine(&mut m);
        let mut given = self.store.replan(m);
        self.store.write_as(WriteKind::Machine, |st, rev, log| {
            let mut m = given.take()?;
            self.guards.check(self.store, st)?;
            st.check_machine(None, None, &m)?;
            if st
                .machines
                .lookup(
                    &Key::Field(Field::Uuid),
                    &ValueKey::str(&m.uuid.to_string()),
                )
                .is_some()
            {
                return Err(Error::AlreadyExists {
                    kind: Kind::Machine,
                    key: m.uuid.to_string(),
                });
            }
            let id = st.next_id;
            if id == u32::MAX {
                return Err(Error::invalid(
                    "machine",
                    "the store has run out of machine ids",
                ));
            }
            m.revision = rev;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &machine_key(id),
                &m.uuid.to_string(),
                &m,
                None,
            );
            batch.put(NEXT_ID_KEY, (id + 1).to_be_bytes());
            let leased = self.guards.hand_over(st, &mut batch, None, &m, None);
            let out = m.clone();
            let apply = Box::new(move |st: &mut State| {
                let e = machine_entries(&m, &st.profiles);
                st.machines.insert(id, &e, &own_keys(&m.params));
                st.next_id = id + 1;
                if let Some(l) = leased {
                    l(st);
                }
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Creates or replaces (by Uuid) many machines as one atomic write: all
    /// of them or, on the first invalid one, none. For bulk loads; callers
    /// chunk large sets (10,000 a call is a good size). Names are checked
    /// against the store as it was before the call, so two machines cannot
    /// swap names in one import. Returns how many were created and how many
    /// replaced.
    pub fn import(&self, machines: Vec<Machine>) -> Result<(usize, usize)> {
        self.guards.no_lease("an import")?;
        let mut given = self.store.replan(machines);
        self.store.write_as(WriteKind::Bulk, |st, rev, log| {
            let machines = given.take()?;
            self.guards.check(self.store, st)?;
            let mut batch = Batch::default();
            let plan = plan_machines(
                self.store,
                st,
                &Pending::default(),
                rev,
                Some((&mut batch, log)),
                machines,
                false,
                &mut 0,
            )?;
            let counts = (plan.created, plan.replaced);
            Ok((
                batch,
                Box::new(move |st: &State| plan.prepare(st)) as Prepare,
                counts,
            ))
        })
    }

    /// The machine at `addr`.
    pub fn get(&self, addr: &str) -> Result<Machine> {
        let id = self.store.state().machine_id(addr)?;
        self.store.load_machine(id)
    }

    /// Whether a machine exists at `addr`.
    pub fn exists(&self, addr: &str) -> Result<bool> {
        match self.store.state().machine_id(addr) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every machine, in creation order.
    pub fn list_all(&self) -> Result<Vec<Machine>> {
        let st = self.store.state();
        st.machines
            .universe()
            .iter()
            .map(|id| self.store.load_machine(id))
            .collect()
    }

    /// Replaces the machine at `addr` with `m` (same Uuid, or none given).
    pub fn replace(&self, addr: &str, m: Machine) -> Result<Machine> {
        let new = to_json(&m);
        self.modify(addr, move |doc| {
            let mut new = new.clone();
            if let (Value::Object(n), Some(u)) = (&mut new, doc.get("Uuid")) {
                if m.uuid.is_nil() {
                    n.insert("Uuid".into(), u.clone());
                }
            }
            *doc = new;
            Ok(())
        })
    }

    /// RFC 7396 merge patch (drpcli `update`).
    pub fn update(&self, addr: &str, merge: &Value) -> Result<Machine> {
        self.modify(addr, |doc| patch::apply_merge(doc, merge))
    }

    /// RFC 6902 patch, atomic: all of it or nothing.
    pub fn patch(&self, addr: &str, ops: &Value) -> Result<Machine> {
        let ops = patch::parse_patch(ops)?;
        self.modify(addr, |doc| patch::apply_patch(doc, &ops))
    }

    /// Reference update (drpcli `-r`): fails with a conflict, writing nothing,
    /// if any path that differs between `reference` and `desired` changed since.
    pub fn update_from(&self, addr: &str, reference: &Value, desired: &Value) -> Result<Machine> {
        self.modify(addr, |doc| patch::apply_reference(doc, reference, desired))
    }

    /// Sets own param `key`.
    pub fn set_param(&self, addr: &str, key: &str, value: Value) -> Result<Machine> {
        let written = self.put_param(addr, key, None, value, true)?;
        written.ok_or_else(not_read_back)
    }

    /// Compare-and-set of own param `key`: only if its own value (or, when it
    /// has none, its definition's default) equals `expected` (`None`: absent).
    pub fn set_param_if(
        &self,
        addr: &str,
        key: &str,
        expected: Option<&Value>,
        value: Value,
    ) -> Result<Machine> {
        let written = self.put_param(addr, key, Some(expected), value, true)?;
        written.ok_or_else(not_read_back)
    }

    /// [`set_param`](Self::set_param) or (with `expected`)
    /// [`set_param_if`](Self::set_param_if), answering the value written
    /// instead of the machine, as DRP's param API does: the machine is not
    /// decoded back (2–4 µs, done beside the engine's commit of about 3 µs).
    pub(super) fn set_param_value(
        &self,
        addr: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value> {
        self.put_param(addr, key, expected, value.clone(), false)?;
        Ok(value)
    }

    /// Own param `key` set to `value`, with `expected` only if it holds that
    /// (see [`set_param_if`](Self::set_param_if)); with `read_back`, the
    /// machine as written.
    fn put_param(
        &self,
        addr: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
        read_back: bool,
    ) -> Result<Option<Machine>> {
        let default = match expected {
            Some(_) => self.store.state_for_write().default_of(key).cloned(),
            None => None,
        };
        let mut value = self.store.replan(value);
        let written = self.write_param(addr, key, read_back, |actual| {
            if let Some(expected) = expected {
                patch::check_param_cas(key, actual, expected, default.as_ref())?;
            }
            Ok(Some(value.take()?))
        })?;
        Ok(written.0)
    }

    /// Removes own param `key`; returns the removed value (`None` if it had none).
    pub fn remove_param(&self, addr: &str, key: &str) -> Result<Option<Value>> {
        Ok(self.write_param(addr, key, false, |_| Ok(None))?.1)
    }

    /// Own params, or with `aggregate` the effective ones (own → profiles →
    /// global → default).
    pub fn params(&self, addr: &str, aggregate: bool) -> Result<Map<String, Value>> {
        let st = self.store.state();
        let m = self.store.load_machine(st.machine_id(addr)?)?;
        Ok(if aggregate {
            st.effective(&m)
        } else {
            m.params
        })
    }

    /// One param, own or (with `aggregate`) effective.
    pub fn get_param(&self, addr: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        Ok(self.params(addr, aggregate)?.get(key).cloned())
    }

    /// Deletes the machine; returns it as it was.
    pub fn delete(&self, addr: &str) -> Result<Machine> {
        self.guards.no_lease("a delete")?;
        self.store.write_as(WriteKind::Machine, |st, _, log| {
            self.guards.check(self.store, st)?;
            let id = st.machine_id(addr)?;
            let old = self.store.load_machine(id)?;
            let mut batch = Batch::default();
            erase(
                &mut batch,
                log,
                &machine_key(id),
                &old.uuid.to_string(),
                &old,
            );
            let out = old.clone();
            let apply = Box::new(move |st: &mut State| {
                let e = machine_entries(&old, &st.profiles);
                st.machines.remove(id, &e, &own_keys(&old.params));
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Binds `filter` for repeated [`count_query`](Self::count_query) / list calls.
    pub fn prepare(&self, filter: &Filter) -> Result<Query> {
        let st = self.store.state();
        Ok(Query {
            kind: Kind::Machine,
            bound: filter.bind(Kind::Machine, &*st)?,
        })
    }

    /// How many machines match; answered from the indexes alone.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        let q = self.prepare(filter)?;
        Ok(self.count_query(&q))
    }

    /// [`count`](Self::count) for a prepared query.
    pub fn count_query(&self, q: &Query) -> u64 {
        let st = self.store.state();
        st.machines.count(&q.bound, None, &*st)
    }

    /// How many matching machines hold each value of `by[0]` (a field,
    /// `Params.NAME` or `Meta.KEY`), each group split by the next key:
    /// DRP's `group-by` with `range-only`, answered from the indexes alone.
    ///
    /// ```
    /// # use fleetkv::{Filter, Machine, Store};
    /// let store = Store::in_memory()?;
    /// for (name, role) in [("a", "leader"), ("b", "worker"), ("c", "worker")] {
    ///     let mut m = Machine::new(name);
    ///     m.params.insert("cluster/role".into(), role.into());
    ///     store.machines().create(m)?;
    /// }
    /// let groups = store.machines().group_count(&Filter::all(), &["Params.cluster/role".into()])?;
    /// assert_eq!(groups[0].value, "leader");
    /// assert_eq!(groups[1].count, 2);
    /// # Ok::<(), fleetkv::Error>(())
    /// ```
    pub fn group_count(&self, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        let keys = group_keys(Kind::Machine, by)?;
        let q = self.prepare(filter)?;
        let st = self.store.state();
        let ids = self.store.eval(&st, &q);
        Ok(st.machines.group_counts(&ids, &keys, &*st))
    }

    /// Matching machines as JSON, shaped by `opts`.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        let q = self.prepare(filter)?;
        self.list_query(&q, opts)
    }

    /// [`list`](Self::list) for a prepared query.
    pub fn list_query(&self, q: &Query, opts: &ListOptions) -> Result<Vec<Value>> {
        let st = self.store.state();
        let ids = self.store.eval(&st, q);
        let page = match &opts.sort {
            Some(s) => window(
                st.machines.sorted(&ids, &sort_key(Kind::Machine, s)?, &*st),
                opts,
            ),
            // Id order needs no materialised list: take the page off the bitmap.
            None => {
                let take = opts.limit.unwrap_or(usize::MAX);
                if opts.reverse {
                    ids.iter().rev().skip(opts.offset).take(take).collect()
                } else {
                    ids.iter().skip(opts.offset).take(take).collect()
                }
            }
        };
        let keys: Vec<Vec<u8>> = page.iter().map(|id| machine_key(*id).to_vec()).collect();
        let records = self.store.backend().get_many(&keys)?;
        page.iter()
            .zip(&keys)
            .zip(records)
            .map(|((id, key), bytes)| {
                let bytes = bytes.ok_or_else(|| Error::Corrupt {
                    key: format!("m{id}"),
                    reason: "indexed machine has no record".into(),
                })?;
                if !opts.aggregate {
                    // Straight from stored JSON to the answer: no typed detour.
                    return shape_raw(key, &bytes, opts);
                }
                let m: Machine = decode(key, &bytes)?;
                let eff = st.effective(&m);
                Ok(shape(to_json(&m), Some(eff), opts))
            })
            .collect()
    }

    /// The reference path: decodes every machine and runs the reference
    /// evaluator. For tests and benchmarks; use [`list`](Self::list).
    pub fn scan(&self, filter: &Filter) -> Result<Vec<Machine>> {
        let st = self.store.state();
        let bound = filter.bind(Kind::Machine, &*st)?;
        let mut out = Vec::new();
        for item in self.store.backend().scan_prefix(MACHINE_PREFIX) {
            let (k, v) = item?;
            let m: Machine = decode(&k, &v)?;
            let params = st.effective(&m);
            let Value::Object(doc) = to_json(&m) else {
                continue;
            };
            if bound.matches(&Subject {
                doc: &doc,
                params: &params,
            }) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// RFC 6902 patches of several machines as one atomic write: every
    /// patch applies, or none does and the first failure is returned (a
    /// failed `test` as [`Error::Conflict`]). Each machine may appear once.
    pub fn patch_many(&self, patches: &[(String, Value)]) -> Result<Vec<Machine>> {
        let parsed: Vec<(&str, Vec<json_patch::PatchOperation>)> = patches
            .iter()
            .map(|(addr, ops)| Ok((addr.as_str(), patch::parse_patch(ops)?)))
            .collect::<Result<_>>()?;
        self.guards.no_lease("a patch of several machines")?;
        self.store.write_as(WriteKind::Machine, |st, rev, log| {
            self.guards.check(self.store, st)?;
            let mut batch = Batch::default();
            let mut changes = Vec::with_capacity(parsed.len());
            let mut seen = std::collections::HashSet::new();
            for (addr, ops) in &parsed {
                let id = st.machine_id(addr)?;
                if !seen.insert(id) {
                    return Err(Error::invalid(
                        "patch_many",
                        format!("machine {addr} is named twice"),
                    ));
                }
                let (new, diff) = self.change(
                    st,
                    rev,
                    id,
                    &mut batch,
                    log,
                    as_json(|doc| patch::apply_patch(doc, ops)),
                )?;
                if changes
                    .iter()
                    .any(|(_, m, _): &(u32, Machine, EntryDiff)| m.name == new.name)
                {
                    return Err(Error::AlreadyExists {
                        kind: Kind::Machine,
                        key: format!("Name:{}", new.name),
                    });
                }
                changes.push((id, new, diff));
            }
            let (diffs, out): (Vec<_>, Vec<_>) =
                changes.into_iter().map(|(id, m, d)| ((id, d), m)).unzip();
            let apply = Box::new(move |st: &mut State| {
                for (id, diff) in diffs {
                    diff.apply(&mut st.machines, id);
                }
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Changes machine `addr` with `f` in one atomic write: `f` gets the
    /// machine as stored and the revision the write will have (the write's
    /// own number, unique: a fencing token, a generation). Whatever `f`
    /// leaves is checked like any other write; an error from `f` writes
    /// nothing.
    ///
    /// ```
    /// # use fleetkv::{Machine, Store};
    /// let store = Store::in_memory()?;
    /// store.machines().create(Machine::new("a"))?;
    /// let m = store.machines().update_with("a", |m, rev| {
    ///     m.params.insert("generation".into(), rev.into());
    ///     Ok(())
    /// })?;
    /// assert_eq!(m.params["generation"], m.revision);
    /// # Ok::<(), fleetkv::Error>(())
    /// ```
    pub fn update_with(
        &self,
        addr: &str,
        f: impl FnMut(&mut Machine, u64) -> Result<()>,
    ) -> Result<Machine> {
        self.write_one(addr, None, f)
    }

    /// A write of one machine through its JSON document.
    fn modify(&self, addr: &str, f: impl FnMut(&mut Value) -> Result<()>) -> Result<Machine> {
        let mut f = as_json(f);
        self.write_one(addr, None, |m, _| f(m))
    }

    /// One machine's write, under this handle's guards and lease.
    fn write_one(
        &self,
        addr: &str,
        named: Option<&str>,
        mut f: impl FnMut(&mut Machine, u64) -> Result<()>,
    ) -> Result<Machine> {
        self.store.write_as(WriteKind::Machine, |st, rev, log| {
            self.guards.check(self.store, st)?;
            let id = st.machine_id(addr)?;
            let mut batch = Batch::default();
            let mut before = None;
            let (m, diff) = self.change(st, rev, id, &mut batch, log, |m| {
                if self.guards.lease.is_some() {
                    before = Some(m.clone());
                }
                f(m, rev)
            })?;
            let leased =
                before.and_then(|old| self.guards.hand_over(st, &mut batch, Some(&old), &m, named));
            let apply = Box::new(move |st: &mut State| {
                diff.apply(&mut st.machines, id);
                if let Some(l) = leased {
                    l(st);
                }
            });
            Ok((batch, apply as Apply, m))
        })
    }

    /// One own param's write: `f` gets the param's own value and returns
    /// its new one (`None`: removed). Returns the machine as written (with
    /// `read_back`) and the param's previous own value.
    ///
    /// Nothing else of the machine changes, so nothing else is checked
    /// again or compared: the record is not decoded but scanned, and the
    /// new one spliced from it ([`MachineDoc`]); only the new value is
    /// checked against its definition, and only the param's effective
    /// value is compared for the index. The machine returned is decoded
    /// from the new record while the engine commits. Under a lease the
    /// write takes the general path, which the lease's hand-over needs.
    fn write_param(
        &self,
        addr: &str,
        key_name: &str,
        read_back: bool,
        mut f: impl FnMut(Option<&Value>) -> Result<Option<Value>>,
    ) -> Result<(Option<Machine>, Option<Value>)> {
        if self.guards.lease.is_some() {
            let mut previous = None;
            let m = self.write_one(addr, Some(key_name), |m, _| {
                let new = f(m.params.get(key_name))?;
                previous = set_own(&mut m.params, key_name, new);
                Ok(())
            })?;
            return Ok((Some(m), previous));
        }
        // The machine as written, decoded beside the engine's commit.
        let written: Rc<RefCell<Option<Result<Machine>>>> = Rc::default();
        let previous = self.store.write_as(WriteKind::Machine, |st, rev, log| {
            self.guards.check(self.store, st)?;
            let id = st.machine_id(addr)?;
            let key = machine_key(id);
            let old_bytes = self.store.machine_record(&key)?;
            let doc = MachineDoc::scan(&key, &old_bytes)?;
            let old = doc.param(key_name)?;
            timing::mark("plan: decode");
            let new = f(old.as_ref())?;
            if let Some(v) = &new {
                if old.as_ref() != Some(v) {
                    st.check_param(key_name, v)?;
                }
            }
            timing::mark("plan: validate");
            let bytes = match doc.with_param(key_name, new.as_ref(), rev) {
                Some(bytes) => bytes,
                None => {
                    let mut m: Machine = decode(&key, &old_bytes)?;
                    set_own(&mut m.params, key_name, new.clone());
                    m.revision = rev;
                    encode(&m)
                }
            };
            timing::mark("encode");
            let undo = undo_param(key_name, old.as_ref(), new.is_some(), doc.revision);
            let inherited = profile_layers(doc.profiles.iter().map(|p| &**p), |n| {
                st.profiles.get(n).map(|p| &p.params)
            })
            .find_map(|l| l.get(key_name));
            let diff = param_diff(key_name, old.as_ref(), new.as_ref(), inherited);
            let mut batch = Batch::default();
            stage(
                &mut batch,
                log,
                &key,
                doc.uuid,
                bytes.clone(),
                Some(undo.unwrap_or_else(|| Previous::Doc(old_bytes.clone()))),
            );
            timing::mark("plan: index diff");
            // The new record decodes wherever the old one did (a JSON value
            // spliced into Params, a number into Revision), and every record
            // is the encoding of a machine: a failure here would be a bug,
            // reported after the write committed.
            let written = written.clone();
            let prepare = Box::new(move |_: &State| {
                if read_back {
                    *written.borrow_mut() = Some(decode::<Machine>(&key, &bytes));
                }
                Box::new(move |st: &mut State| {
                    diff.apply(&mut st.machines, id);
                    None
                }) as Swap
            });
            Ok((batch, prepare as Prepare, old))
        })?;
        let machine = written.take().transpose()?;
        Ok((machine, previous))
    }

    /// Loads machine `id`, lets `f` change it, checks the result against
    /// the data model and every other object, and stages its record and
    /// event. Returns the new machine and its index change.
    pub(super) fn change(
        &self,
        st: &State,
        rev: u64,
        id: u32,
        batch: &mut Batch,
        log: &mut Vec<Change>,
        mut f: impl FnMut(&mut Machine) -> Result<()>,
    ) -> Result<(Machine, EntryDiff)> {
        let (old, old_bytes) = self.store.load_machine_bytes(id)?;
        timing::mark("plan: decode");
        let mut m = old.clone();
        f(&mut m)?;
        timing::mark("plan: change");
        if m.uuid != old.uuid {
            return Err(Error::invalid(
                "machine Uuid",
                format!("Uuid is immutable ({} → {})", old.uuid, m.uuid),
            ));
        }
        normalize_machine(&mut m);
        st.check_machine(Some(id), Some(&old), &m)?;
        m.revision = rev;
        timing::mark("plan: validate");
        stage_update(batch, log, id, &m, Previous::Doc(old_bytes));
        let diff = machine_diff(&old, &m, &st.profiles);
        timing::mark("plan: index diff");
        Ok((m, diff))
    }
}

/// Stages machine `id`'s new record `m` and its update event, which keeps
/// the machine before the write as `previous`.
fn stage_update(
    batch: &mut Batch,
    log: &mut Vec<Change>,
    id: u32,
    m: &Machine,
    previous: Previous,
) {
    let key = machine_key(id);
    stage(
        batch,
        log,
        &key,
        &m.uuid.to_string(),
        encode(m),
        Some(previous),
    );
    timing::mark("encode");
}

/// The patch that undoes a write of own param `key` (its value before:
/// `before`; whether the machine has it after: `has_after`) and of the
/// machine's Revision (`revision` before), for the write's event. `None`
/// when the param was removed: adding it back would put it last, not where
/// it was, so the event keeps the whole machine instead.
fn undo_param(
    key: &str,
    before: Option<&Value>,
    has_after: bool,
    revision: u64,
) -> Option<Previous> {
    let mut out = Vec::with_capacity(160 + 2 * key.len());
    // The param's JSON Pointer (RFC 6901: `~` as `~0`, `/` as `~1`).
    let mut path = String::with_capacity(16 + 2 * key.len());
    path.push_str("/Params/");
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
    // Writing strings and JSON values into a Vec cannot fail.
    match (before, has_after) {
        (Some(v), true) => {
            out.extend_from_slice(br#"[{"op":"replace","path":"#);
            let _ = serde_json::to_writer(&mut out, &path);
            out.extend_from_slice(br#","value":"#);
            let _ = serde_json::to_writer(&mut out, v);
            out.extend_from_slice(b"},");
        }
        (None, true) => {
            out.extend_from_slice(br#"[{"op":"remove","path":"#);
            let _ = serde_json::to_writer(&mut out, &path);
            out.extend_from_slice(b"},");
        }
        (None, false) => out.push(b'['),
        (Some(_), false) => return None,
    }
    out.extend_from_slice(br#"{"op":"replace","path":"/Revision","value":"#);
    let _ = serde_json::to_writer(&mut out, &revision);
    out.extend_from_slice(b"}]");
    Some(Previous::Undo(out))
}

/// Sets (`Some`) or removes own param `key`, keeping the others' order;
/// returns its previous value.
fn set_own(params: &mut Map<String, Value>, key: &str, value: Option<Value>) -> Option<Value> {
    match value {
        Some(v) => params.insert(key.to_string(), v),
        None => params.shift_remove(key),
    }
}

/// A change of a machine's JSON document as a change of the machine.
fn as_json(mut f: impl FnMut(&mut Value) -> Result<()>) -> impl FnMut(&mut Machine) -> Result<()> {
    move |m| {
        let mut doc = to_json(&*m);
        f(&mut doc)?;
        *m = from_json(Kind::Machine, doc)?;
        Ok(())
    }
}

/// Canonical forms the filter language relies on (IP text).
fn normalize_machine(m: &mut Machine) {
    use std::io::Write;
    let Ok(ip) = m.address.parse::<std::net::IpAddr>() else {
        return;
    };
    // Most addresses come canonical: compared on the stack, they keep
    // their String (45 bytes hold the longest IPv6 text).
    let mut text = [0u8; 48];
    let mut rest = &mut text[..];
    if write!(rest, "{ip}").is_ok() {
        let len = 48 - rest.len();
        if text[..len] == *m.address.as_bytes() {
            return;
        }
    }
    m.address = ip.to_string();
}

/// How many indexed machines one planned machine repays the copy of (see
/// [`MachinePlan::prepare`]): copying the index costs about 35 ns per
/// indexed machine (its bitmaps and block maps), building one machine's
/// entries beside the commit saves 20–30 µs of the caller's time after it.
/// Measured break-even (one store, copy against in place, alternated):
/// between 100 and 300 machines at 100k, between 1,000 and 3,000 at 1M.
const COPY_REPAID_PER_MACHINE: u64 = 512;

/// A machine of a write: its id, the stored machine it replaces (boxed: an
/// import mostly creates, and each planned machine is moved into a vector
/// of these), the new.
type Planned = (u32, Option<Box<Machine>>, Machine);

/// A machine's index entries and own params, before (if it replaces one)
/// and after.
#[allow(clippy::type_complexity)]
type Indexed = (
    u32,
    Option<(Entries, Map<String, Value>)>,
    Entries,
    Map<String, Value>,
);

/// Machines planned for one write by [`plan_machines`], and the next free id.
pub(super) struct MachinePlan {
    planned: Plan,
    next: u32,
    pub(super) created: usize,
    pub(super) replaced: usize,
}

/// A param write asked to read its machine back answered without it.
fn not_read_back() -> Error {
    Error::Storage("internal: a param write answered without its machine".into())
}

/// Where a write's index entries are worked out.
enum Plan {
    /// At plan time, before the state's write lock; applied in place once
    /// the batch committed.
    Entries(Vec<Indexed>),
    /// Beside the engine's commit, into a copy of the machine index (see
    /// [`MachinePlan::prepare`]).
    Beside(Vec<Planned>),
    /// In place once the batch committed, on an engine that settles it
    /// later: the engine's work on the batch runs beside this one. The new
    /// machines' entries were gathered while they were planned (one part
    /// per planning thread, in id order); replaced ones are worked out
    /// then.
    After {
        planned: Vec<Planned>,
        gathered: Vec<Gathered>,
    },
}

/// The entries of `planned`, a replaced machine's old ones with today's
/// profiles too (by the time they are applied, the write's own profile
/// changes are in the index).
fn index_entries<'p>(
    planned: Vec<Planned>,
    profile: impl Fn(&str) -> Option<&'p Profile> + Copy,
) -> Vec<Indexed> {
    planned
        .into_iter()
        .map(|(id, old, m)| {
            let ne = machine_entries_with(&m, profile);
            let oe = old.map(|o| (machine_entries_with(&o, profile), o.params));
            (id, oe, ne, m.params)
        })
        .collect()
}

impl MachinePlan {
    /// The in-memory half as a [`Prepare`](super::write::Prepare): index
    /// entries in, the next id moved on. A write planned [`Plan::Beside`]
    /// (enough machines to repay the copy, with a commit in flight: see
    /// [`plan_machines`]) works its entries out and inserts them into a copy
    /// of the machine index (its keys are shared until written, so the copy
    /// costs the keys this write touches) while the engine commits; the
    /// returned apply puts the copy in place. Any other applies in place
    /// once committed, as a create does ([`Plan::After`]: adding the new
    /// machines' gathered entries and working the replaced ones' out), and
    /// hands the machines back to be freed outside the state's lock.
    pub(super) fn prepare(self, st: &State) -> Swap {
        let next = self.next;
        let planned = match self.planned {
            Plan::Entries(indexed) => {
                return Box::new(move |st: &mut State| {
                    index_into(indexed, &mut st.machines);
                    st.next_id = next;
                    None
                });
            }
            Plan::After { planned, gathered } => {
                return Box::new(move |st: &mut State| {
                    let State {
                        machines, profiles, ..
                    } = st;
                    index_replaced(&planned, |n| profiles.get(n), machines);
                    machines.insert_gathered(gathered);
                    timing::mark("index entries (after the commit)");
                    st.next_id = next;
                    Some(Box::new(planned) as Retired)
                });
            }
            Plan::Beside(planned) => planned,
        };
        let mut index = st.machines.clone();
        index_planned(&planned, |n| st.profiles.get(n), &mut index);
        timing::mark("index entries (beside the commit)");
        drop(planned);
        timing::mark("free the planned machines (beside the commit)");
        Box::new(move |st: &mut State| {
            st.next_id = next;
            Some(Box::new(std::mem::replace(&mut st.machines, index)) as Retired)
        })
    }
}

/// Replaced machines one by one, new ones together
/// ([`Index::insert_bulk`]); a write's ids are distinct.
fn index_into(indexed: Vec<Indexed>, index: &mut Index) {
    let mut created = Bulk::default();
    for (id, old, ne, params) in &indexed {
        match old {
            Some((oe, old_params)) => index.replace_entries(
                *id,
                Some((oe, own_keys(old_params))),
                Some((ne, own_keys(params))),
            ),
            None => created.object_with(*id, ne, params.keys().map(String::as_str)),
        }
    }
    index.insert_bulk(created);
}

/// The replaced machines of `planned`, one by one (the new ones were
/// gathered while planned: [`Plan::After`]).
fn index_replaced<'p>(
    planned: &'p [Planned],
    profile: impl Fn(&str) -> Option<&'p Profile> + Copy,
    index: &mut Index,
) {
    for (id, old, m) in planned {
        if let Some(o) = old {
            index.replace_entries(
                *id,
                Some((&machine_entries_with(o, profile), own_keys(&o.params))),
                Some((&machine_entries_with(m, profile), own_keys(&m.params))),
            );
        }
    }
}

/// A new machine `m` (`id`) and its entries, written to `bulk`, borrowing
/// its keys.
fn gather_new<'a>(
    bulk: &mut Bulk<'a>,
    id: u32,
    m: &'a Machine,
    profile: impl Fn(&str) -> Option<&'a Profile>,
) {
    bulk.object(id, m.params.keys().map(String::as_str));
    machine_entries_into(m, profile, bulk);
}

/// [`index_into`] straight from the planned machines: the replaced ones
/// one by one, the new ones gathered and inserted together.
fn index_planned<'p>(
    planned: &'p [Planned],
    profile: impl Fn(&str) -> Option<&'p Profile> + Copy,
    index: &mut Index,
) {
    index_replaced(planned, profile, index);
    let mut created = Bulk::default();
    for (id, _, m) in planned.iter().filter(|(_, old, _)| old.is_none()) {
        gather_new(&mut created, *id, m, profile);
    }
    index.insert_bulk(created);
}

/// Machines a write checks and encodes on one thread; more are split
/// between two (each machine costs 2–3 µs; starting and joining a scoped
/// thread 27–36 µs, measured on this project's 2-core machine kind).
const ONE_THREAD_MOST: usize = 1_024;

/// `f` of `planned` whole, on the caller's thread, or for a large write of
/// each half, the second on a thread of its own: the answers in order,
/// one for each part.
fn each_half<P: Sync, T: Send>(planned: &[P], f: impl Fn(&[P]) -> T + Sync) -> Vec<T> {
    let two = planned.len() > ONE_THREAD_MOST
        && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if !two {
        return vec![f(planned)];
    }
    let (first, second) = planned.split_at(planned.len() / 2);
    std::thread::scope(|scope| {
        let f = &f;
        let other = std::thread::Builder::new()
            .name("fleetkv-plan".into())
            .spawn_scoped(scope, move || f(second));
        let first = f(first);
        match other.map(|h| h.join()) {
            Ok(Ok(rest)) => vec![first, rest],
            // No thread to be had: this one does the rest.
            Err(_) => vec![first, f(second)],
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
        }
    })
}

/// What a write has assigned so far, as [`assign_machine`] goes through
/// its machines in order.
struct Assigned {
    /// The stored ids of the write's given Uuids, looked up together.
    stored: FastMap<Uuid, u32>,
    /// The write's Names and Uuids so far.
    names: FastMap<String, Uuid>,
    uuids: HashSet<Uuid, foldhash::fast::RandomState>,
    /// The next free machine id.
    next: u32,
}

/// A machine of a write given its Uuid (a new one, or with `by_name` the
/// stored machine's of its Name) and its id, with the stored machine it
/// replaces: refused if another of the write's machines has its Name or
/// Uuid, or if ids run out. A Uuid given is found in `a.stored`, one made
/// here in the index.
fn assign_machine(
    store: &Store,
    st: &State,
    by_name: bool,
    a: &mut Assigned,
    m: &mut Machine,
) -> Result<(u32, Option<Machine>)> {
    let given = !m.uuid.is_nil();
    if !given {
        m.uuid = match by_name {
            true => st
                .machines
                .lookup(&Key::Field(Field::Name), &ValueKey::str(&m.name))
                .and_then(|b| b.min())
                .map(|id| store.load_machine(id).map(|o| o.uuid))
                .transpose()?
                .unwrap_or_else(Uuid::new_v4),
            false => Uuid::new_v4(),
        };
    }
    normalize_machine(m);
    if a.names
        .insert(m.name.clone(), m.uuid)
        .is_some_and(|u| u != m.uuid)
    {
        return Err(Error::AlreadyExists {
            kind: Kind::Machine,
            key: format!("Name:{}", m.name),
        });
    }
    if !a.uuids.insert(m.uuid) {
        return Err(Error::invalid(
            format!("machine Uuid of {}", m.name),
            format!("Uuid {} is given twice in one write", m.uuid),
        ));
    }
    let existing = match given {
        true => a.stored.get(&m.uuid).copied(),
        false => st
            .machines
            .lookup(&Key::Field(Field::Uuid), &ValueKey::uuid(m.uuid))
            .and_then(|b| b.min()),
    };
    Ok(match existing {
        Some(id) => (id, Some(store.load_machine(id)?)),
        None => {
            let id = a.next;
            a.next = a
                .next
                .checked_add(1)
                .ok_or_else(|| Error::invalid("machine", "the store has run out of machine ids"))?;
            (id, None)
        }
    })
}

/// Plans creating or replacing (by Uuid) `machines` in one write, checked
/// against the store as it was before the write and against what `pending`
/// (the write's earlier definitions and profiles) lays over it: all of them
/// or, on the first invalid one, an error (`at` names its position). With
/// `by_name`, a machine without a Uuid replaces the stored machine of its
/// Name (and takes its Uuid); else it gets a new Uuid. With `out` (the
/// write's batch and change events) the records are staged and the index
/// entries worked out; without, the machines are only checked. Shared by
/// [`Machines::import`] and bulk imports.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_machines(
    store: &Store,
    st: &State,
    pending: &Pending,
    rev: u64,
    mut out: Option<(&mut Batch, &mut Vec<Change>)>,
    machines: Vec<Machine>,
    by_name: bool,
    at: &mut usize,
) -> Result<MachinePlan> {
    let mut planned: Vec<Planned> = Vec::with_capacity(machines.len());
    let (mut created, mut replaced) = (0, 0);
    // In order, what needs the write's earlier machines: Uuids, names
    // unique within the write, ids. The first machine refused here ends
    // the pass; an earlier one the checks below refuse comes first.
    let mut refused: Option<(usize, Error)> = None;
    // The Uuids given are looked up together: one walk of the Uuid key.
    let given: Vec<Uuid> = machines
        .iter()
        .map(|m| m.uuid)
        .filter(|u| !u.is_nil())
        .collect();
    let values: Vec<ValueKey> = given.iter().map(|u| ValueKey::uuid(*u)).collect();
    let mut a = Assigned {
        stored: given
            .into_iter()
            .zip(st.machines.lookup_each(&Key::Field(Field::Uuid), &values))
            .filter_map(|(u, found)| Some((u, found?.min()?)))
            .collect(),
        names: FastMap::default(),
        uuids: HashSet::default(),
        next: st.next_id,
    };
    a.names.reserve(machines.len());
    a.uuids.reserve(machines.len());
    for (i, mut m) in machines.into_iter().enumerate() {
        match assign_machine(store, st, by_name, &mut a, &mut m) {
            Ok((id, old)) => {
                match old {
                    Some(_) => replaced += 1,
                    None => created += 1,
                }
                m.revision = rev;
                planned.push((id, old.map(Box::new), m));
            }
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    timing::mark("plan: assign");
    // Then what each machine needs alone, on two threads for a large write:
    // the checks against the state and its record's encoding (the caller's
    // second core is otherwise idle until the commit starts). Where the
    // index is built after the commit (below), the new machines' entries
    // are gathered here too, while each machine is in its thread's cache:
    // the caller's thread, whose work after the commit an import waits on,
    // then only sorts and adds them.
    let staging = out.is_some();
    let own_profiles = !pending.profiles.is_empty();
    let after = !own_profiles && store.backend().settles_later();
    let gather = staging && after;
    let halves = each_half(&planned, |half| {
        // Their Names looked up together: one walk of the Name key.
        let names: Vec<ValueKey> = half
            .iter()
            .map(|(_, _, m)| ValueKey::str(&m.name))
            .collect();
        let holders = st.machines.lookup_each(&Key::Field(Field::Name), &names);
        let mut created = Bulk::default();
        let mut checked = Vec::with_capacity(half.len());
        for ((id, old, m), holders) in half.iter().zip(holders) {
            let check = st
                .check_machine_in(pending, Some(*id), old.as_deref(), m, holders.as_ref())
                .map_err(|e| match e {
                    Error::Invalid { what, reason } => {
                        Error::invalid(format!("{what} of {}", m.name), reason)
                    }
                    other => other,
                });
            if gather && old.is_none() && check.is_ok() {
                gather_new(&mut created, *id, m, |n| pending.profile(st, n));
            }
            // The half's first refusal ends it: nothing after it is used.
            let refused = check.is_err();
            checked.push(check.map(|()| staging.then(|| (encode(m), old.as_deref().map(encode)))));
            if refused {
                break;
            }
        }
        (checked, created.gathered())
    });
    timing::mark("plan: check and encode");
    let mut records = Vec::with_capacity(planned.len());
    let mut gathered = Vec::with_capacity(halves.len());
    for (checked, created) in halves {
        for c in checked {
            match c {
                Ok(r) => records.push(r),
                Err(e) => {
                    *at = records.len();
                    return Err(e);
                }
            }
        }
        gathered.push(created);
    }
    if let Some((i, e)) = refused {
        *at = i;
        return Err(e);
    }
    if let Some((batch, log)) = &mut out {
        for ((id, _, m), r) in planned.iter().zip(records) {
            if let Some((bytes, old)) = r {
                stage(
                    batch,
                    log,
                    &machine_key(*id),
                    &m.uuid.to_string(),
                    bytes,
                    old.map(Previous::Doc),
                );
            }
        }
    } else {
        // Only checked: nothing to index.
        planned.clear();
    }
    timing::mark("plan: stage");
    if let Some((batch, _)) = &mut out {
        batch.put(NEXT_ID_KEY, a.next.to_be_bytes());
    }
    // On an engine that settles the batch after the answer, the entries
    // (gathered above for new machines) go in place once it committed,
    // while the engine applies it. Else, with a commit in flight and
    // enough machines to repay a copy of the index, beside the commit.
    // Either only for a write without profiles of its own (those move
    // machines' postings first). Else now, outside the state's write lock
    // (profiles cannot change: the writer lock is held), with the write's
    // profiles laid over the state's.
    let beside = !own_profiles
        && !store.inner.guard.is_inline()
        && (planned.len() as u64) * COPY_REPAID_PER_MACHINE >= st.machines.universe().len();
    let planned = if after {
        Plan::After { planned, gathered }
    } else if beside {
        Plan::Beside(planned)
    } else {
        Plan::Entries(index_entries(planned, |n| pending.profile(st, n)))
    };
    timing::mark("plan: index entries");
    Ok(MachinePlan {
        planned,
        next: a.next,
        created,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_stored_in_its_canonical_text() {
        for (given, stored) in [
            ("10.0.0.1", "10.0.0.1"),
            ("2001:DB8:0:0::1", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:10.1.2.3", "::ffff:10.1.2.3"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:FFFF",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            ("not an address", "not an address"),
            ("", ""),
        ] {
            let mut m = Machine::new("m");
            m.address = given.into();
            normalize_machine(&mut m);
            assert_eq!(m.address, stored, "given {given:?}");
        }
    }
}
