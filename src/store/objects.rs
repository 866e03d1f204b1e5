//! [`Objects`]: the three collections (machines, profiles, param
//! definitions) behind one kind-generic surface on JSON documents, for
//! front ends that take the kind as data (the CLI's `machines|profiles|params`
//! word, the server's `/api/v3/{kind}`).
//!
//! Owns: the mapping from a kind and a JSON document to the typed handle's
//! call, and refusing what a kind does not have (params of a definition,
//! a filter on definitions). Must not: hold rules of its own — every call
//! is the typed handle's ([`Machines`], [`Profiles`], [`Params`]).

use serde_json::{Map, Value};

use super::layout::{from_json, to_json};
use super::leases::{Fence, LeaseId};
use super::list::ListOptions;
use super::machines::Machines;
use super::open::Store;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::index::GroupCount;
use crate::model::Kind;

/// One collection of a store, on JSON documents. Made by
/// [`Store::objects`].
///
/// ```
/// # use fleetkv::{Filter, Kind, Store};
/// # use serde_json::json;
/// let store = Store::in_memory()?;
/// let machines = store.objects(Kind::Machine)?;
/// machines.create(json!({"Name": "a"}))?;
/// machines.merge("a", &json!({"Workflow": "discover"}))?;
/// assert_eq!(machines.count(&Filter::parse("Workflow Eq discover")?)?, 1);
/// assert!(store.objects(Kind::Param)?.params("x", false).is_err());
/// # Ok::<(), fleetkv::Error>(())
/// ```
pub struct Objects<'a> {
    store: &'a Store,
    kind: Kind,
    machines: Machines<'a>,
}

impl Store {
    /// The collection of `kind` as JSON documents; jobs and leases are not
    /// collections ([`Error::Invalid`]).
    pub fn objects(&self, kind: Kind) -> Result<Objects<'_>> {
        match kind {
            Kind::Machine | Kind::Profile | Kind::Param => Ok(Objects {
                store: self,
                kind,
                machines: self.machines(),
            }),
            Kind::Job | Kind::Lease => Err(not_a_collection(kind)),
        }
    }
}

impl Store {
    /// [`Store::objects`] of one of the three collections (the crate's
    /// typed handles; `kind` is never a job or a lease there).
    pub(crate) fn objects_unchecked(&self, kind: Kind) -> Objects<'_> {
        Objects {
            store: self,
            kind,
            machines: self.machines(),
        }
    }
}

fn not_a_collection(kind: Kind) -> Error {
    Error::invalid(
        "kind",
        format!("{} are not a collection of objects", kind.plural()),
    )
}

impl Objects<'_> {
    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Machine writes are made under lease `id` (see
    /// [`Machines::with_lease`]); on another kind, a write is refused.
    pub fn with_lease(mut self, id: Option<LeaseId>) -> Self {
        if let Some(id) = id {
            self.machines = self.machines.with_lease(id);
        }
        self
    }

    /// Machine writes require `fence` (see [`Machines::with_fence`]).
    pub fn with_fence(mut self, fence: Option<Fence>) -> Self {
        if let Some(f) = fence {
            self.machines = self.machines.with_fence(f);
        }
        self
    }

    /// Refuses a lease or fence on a write of a kind they do not apply to.
    fn unguarded(&self) -> Result<()> {
        let g = &self.machines.guards;
        if self.kind != Kind::Machine && (g.lease.is_some() || g.fence.is_some()) {
            return Err(Error::invalid(
                "lease",
                format!(
                    "leases and fences apply to machine writes, not to {}",
                    self.kind.plural()
                ),
            ));
        }
        Ok(())
    }

    /// The object at `id`.
    pub fn get(&self, id: &str) -> Result<Value> {
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.get(id)?),
            Kind::Profile => to_json(&self.store.profiles().get(id)?),
            _ => to_json(&self.store.params().get(id)?),
        })
    }

    /// Whether it exists.
    pub fn exists(&self, id: &str) -> Result<bool> {
        match self.kind {
            Kind::Machine => self.machines.exists(id),
            Kind::Profile => Ok(self.store.profiles().exists(id)),
            _ => Ok(self.store.params().exists(id)),
        }
    }

    /// Creates an object from its document; returns it as stored.
    pub fn create(&self, doc: Value) -> Result<Value> {
        self.unguarded()?;
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.create(from_json(self.kind, doc)?)?),
            Kind::Profile => to_json(&self.store.profiles().create(from_json(self.kind, doc)?)?),
            _ => to_json(&self.store.params().create(from_json(self.kind, doc)?)?),
        })
    }

    /// Replaces the object at `id` with `doc`.
    pub fn replace(&self, id: &str, doc: Value) -> Result<Value> {
        self.unguarded()?;
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.replace(id, from_json(self.kind, doc)?)?),
            Kind::Profile => to_json(
                &self
                    .store
                    .profiles()
                    .replace(id, from_json(self.kind, doc)?)?,
            ),
            _ => to_json(
                &self
                    .store
                    .params()
                    .replace(id, from_json(self.kind, doc)?)?,
            ),
        })
    }

    /// RFC 7396 merge patch.
    pub fn merge(&self, id: &str, merge: &Value) -> Result<Value> {
        self.unguarded()?;
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.update(id, merge)?),
            Kind::Profile => to_json(&self.store.profiles().update(id, merge)?),
            _ => to_json(&self.store.params().update(id, merge)?),
        })
    }

    /// RFC 6902 patch, atomic.
    pub fn patch(&self, id: &str, ops: &Value) -> Result<Value> {
        self.unguarded()?;
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.patch(id, ops)?),
            Kind::Profile => to_json(&self.store.profiles().patch(id, ops)?),
            _ => to_json(&self.store.params().patch(id, ops)?),
        })
    }

    /// Reference update (drpcli's `-r`).
    pub fn update_from(&self, id: &str, reference: &Value, desired: &Value) -> Result<Value> {
        self.unguarded()?;
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.update_from(id, reference, desired)?),
            Kind::Profile => to_json(&self.store.profiles().update_from(id, reference, desired)?),
            _ => to_json(&self.store.params().update_from(id, reference, desired)?),
        })
    }

    /// RFC 6902 patches of several machines in one atomic write (see
    /// [`Machines::patch_many`]).
    pub fn patch_many(&self, patches: &[(String, Value)]) -> Result<Vec<crate::model::Machine>> {
        match self.kind {
            Kind::Machine => self.machines.patch_many(patches),
            _ => Err(Error::invalid(
                "patch_many",
                "a patch of several objects is for machines",
            )),
        }
    }

    /// Deletes the object; returns it as it was.
    pub fn delete(&self, id: &str) -> Result<Value> {
        self.unguarded()?;
        Ok(match self.kind {
            Kind::Machine => to_json(&self.machines.delete(id)?),
            Kind::Profile => to_json(&self.store.profiles().delete(id)?),
            _ => to_json(&self.store.params().delete(id)?),
        })
    }

    /// The objects matching `filter`, shaped by `opts`.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        match self.kind {
            Kind::Machine => self.machines.list(filter, opts),
            Kind::Profile => self.store.profiles().list(filter, opts),
            _ => self.store.params().list(filter, opts),
        }
    }

    /// The objects matching `filter` shaped by `opts`, and how many match
    /// before `offset`/`limit` (the filter is bound once for both).
    pub fn list_counted(&self, filter: &Filter, opts: &ListOptions) -> Result<(u64, Vec<Value>)> {
        match self.kind {
            Kind::Machine => {
                let q = self.machines.prepare(filter)?;
                Ok((
                    self.machines.count_query(&q),
                    self.machines.list_query(&q, opts)?,
                ))
            }
            _ => Ok((self.count(filter)?, self.list(filter, opts)?)),
        }
    }

    /// How many match (definitions take no filter).
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        match self.kind {
            Kind::Machine => self.machines.count(filter),
            Kind::Profile => self.store.profiles().count(filter),
            _ => Ok(self.list(filter, &ListOptions::default())?.len() as u64),
        }
    }

    /// Counts per distinct value (machines and profiles).
    pub fn group_count(&self, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        match self.kind {
            Kind::Machine => self.machines.group_count(filter, by),
            Kind::Profile => self.store.profiles().group_count(filter, by),
            _ => Err(Error::invalid(
                "group-by",
                "group counts are of machines and profiles",
            )),
        }
    }

    /// Own params, or with `aggregate` the effective ones (machines and
    /// profiles).
    pub fn params(&self, id: &str, aggregate: bool) -> Result<Map<String, Value>> {
        match self.kind {
            Kind::Machine => self.machines.params(id, aggregate),
            Kind::Profile => self.store.profiles().params(id, aggregate),
            _ => Err(self.no_params()),
        }
    }

    /// One param, own or effective.
    pub fn get_param(&self, id: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        Ok(self.params(id, aggregate)?.get(key).cloned())
    }

    /// Sets own param `key`; with `expected`, only if its value (or its
    /// default) equals it (`Some(None)`: absent). Returns the object.
    pub fn set_param(
        &self,
        id: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value> {
        self.unguarded()?;
        Ok(match (self.kind, expected) {
            (Kind::Machine, None) => to_json(&self.machines.set_param(id, key, value)?),
            (Kind::Machine, Some(e)) => to_json(&self.machines.set_param_if(id, key, e, value)?),
            (Kind::Profile, None) => to_json(&self.store.profiles().set_param(id, key, value)?),
            (Kind::Profile, Some(e)) => {
                to_json(&self.store.profiles().set_param_if(id, key, e, value)?)
            }
            _ => return Err(self.no_params()),
        })
    }

    /// [`set_param`](Self::set_param) answering the value written, as
    /// DRP's param API does, instead of the object: a machine is not read
    /// back (its decode, 2–4 µs, outlasts the engine's commit).
    pub fn set_param_value(
        &self,
        id: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value> {
        self.unguarded()?;
        match self.kind {
            Kind::Machine => self.machines.set_param_value(id, key, expected, value),
            Kind::Profile => {
                let written = value.clone();
                match expected {
                    None => self.store.profiles().set_param(id, key, value)?,
                    Some(e) => self.store.profiles().set_param_if(id, key, e, value)?,
                };
                Ok(written)
            }
            _ => Err(self.no_params()),
        }
    }

    /// Removes own param `key`; returns its value (`None`: it had none).
    pub fn remove_param(&self, id: &str, key: &str) -> Result<Option<Value>> {
        self.unguarded()?;
        match self.kind {
            Kind::Machine => self.machines.remove_param(id, key),
            Kind::Profile => self.store.profiles().remove_param(id, key),
            _ => Err(self.no_params()),
        }
    }

    fn no_params(&self) -> Error {
        Error::invalid(
            "params",
            "params (definitions) have no params: use machines or profiles",
        )
    }
}
