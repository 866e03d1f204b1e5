//! One client surface for an embedded store and a remote `fleetkv serve`:
//! the [`Client`] trait, implemented by [`Store`] (owner's rights),
//! [`Scoped`] (a token's claims) and, with the `client` feature, [`Http`]
//! (a server over TCP, TLS or its Unix socket).
//!
//! Owns: what a client can ask of a store — the collections as JSON
//! documents (see [`crate::Objects`]), params, the blocking waits, leases —
//! with the same arguments, results and [`Error`](crate::Error) variants
//! on both sides (`docs/architecture.md` §14). Must not: decide anything a
//! store decides; an implementation only carries the call to one.
//!
//! ```
//! use fleetkv::client::Client;
//! use fleetkv::{Filter, Kind, Store};
//! use serde_json::json;
//!
//! /// Works the same on `Store::open(dir)?` and on `Http::new(url)`.
//! fn report_in(c: &dyn Client, name: &str) -> fleetkv::Result<u64> {
//!     c.set_param(Kind::Machine, name, "agent/alive", None, json!(true))?;
//!     c.count(Kind::Machine, &Filter::parse("agent/alive Eq true")?)
//! }
//!
//! let store = Store::in_memory()?;
//! store.create(Kind::Machine, json!({"Name": "node-1"}))?;
//! assert_eq!(report_in(&store, "node-1")?, 1);
//! # Ok::<(), fleetkv::Error>(())
//! ```

#[cfg(feature = "client")]
mod http;
#[cfg(feature = "client")]
pub mod unix;

#[cfg(feature = "client")]
pub use http::{enc, error_answer, transport, unreachable, Answer, Http};

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cluster::{Cluster, Leadership, Role};
use crate::error::Result;
use crate::filter::Filter;
use crate::model::Kind;
use crate::store::{Lease, LeaseId, ListOptions};
use crate::watch::CountCondition;
use crate::{GroupCount, Scoped, Store};

/// What a client asks of a store, embedded or remote. Object calls take the
/// collection as data (`Kind::Machine`, `Kind::Profile`, `Kind::Param`) and
/// documents as JSON; errors are the crate's [`Error`](crate::Error).
pub trait Client {
    /// The object at `id` (a machine's Uuid or address, a name).
    fn get(&self, kind: Kind, id: &str) -> Result<Value>;
    /// Whether it exists.
    fn exists(&self, kind: Kind, id: &str) -> Result<bool>;
    /// Creates an object; returns it as stored.
    fn create(&self, kind: Kind, doc: Value) -> Result<Value>;
    /// Replaces the object at `id`.
    fn replace(&self, kind: Kind, id: &str, doc: Value) -> Result<Value>;
    /// RFC 7396 merge patch.
    fn merge(&self, kind: Kind, id: &str, merge: &Value) -> Result<Value>;
    /// RFC 6902 patch, atomic (`test` operations make it a compare-and-set).
    fn patch(&self, kind: Kind, id: &str, ops: &Value) -> Result<Value>;
    /// Reference update (drpcli's `-r`): refused with a conflict, writing
    /// nothing, if a path that differs between `reference` and `desired`
    /// changed since.
    fn update_from(
        &self,
        kind: Kind,
        id: &str,
        reference: &Value,
        desired: &Value,
    ) -> Result<Value>;
    /// Deletes the object; returns it as it was.
    fn delete(&self, kind: Kind, id: &str) -> Result<Value>;
    /// The objects matching `filter`, shaped by `opts`.
    fn list(&self, kind: Kind, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>>;
    /// How many match.
    fn count(&self, kind: Kind, filter: &Filter) -> Result<u64>;
    /// How many match per distinct value of `by[0]`, split by the next keys.
    fn group_count(&self, kind: Kind, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>>;
    /// Own params, or with `aggregate` the effective ones.
    fn params(&self, kind: Kind, id: &str, aggregate: bool) -> Result<Map<String, Value>>;
    /// One param (`None`: unset).
    fn get_param(&self, kind: Kind, id: &str, key: &str, aggregate: bool) -> Result<Option<Value>>;
    /// Sets own param `key` to `value`; with `expected`, only if its value
    /// (or its default) is that (`Some(None)`: absent). Returns the value.
    fn set_param(
        &self,
        kind: Kind,
        id: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value>;
    /// Removes own param `key`; returns its value (`None`: it had none).
    fn remove_param(&self, kind: Kind, id: &str, key: &str) -> Result<Option<Value>>;
    /// Blocks until machine `id` matches `filter` ([`Error::Timeout`](crate::Error::Timeout)).
    fn wait_machine(&self, id: &str, filter: &Filter, timeout: Duration) -> Result<()>;
    /// Blocks until the count of machines matching `filter` satisfies
    /// `until`; returns the count.
    fn count_wait(&self, filter: &Filter, until: CountCondition, timeout: Duration) -> Result<u64>;
    /// Grants a lease of `ttl` seconds.
    fn grant_lease(&self, ttl: u64) -> Result<Lease>;
    /// Renews lease `id` (not found once it ended).
    fn keep_alive(&self, id: LeaseId) -> Result<Lease>;
    /// Ends lease `id` and what it holds.
    fn revoke_lease(&self, id: LeaseId) -> Result<Lease>;
    /// Lease `id`.
    fn lease(&self, id: LeaseId) -> Result<Lease>;
    /// Every lease.
    fn leases(&self) -> Result<Vec<Lease>>;

    /// Creates or completes cluster profile `name` ([`Cluster::init`]);
    /// returns the profile.
    fn cluster_init(&self, name: &str, filter: Option<&str>) -> Result<Value>;
    /// Adds the cluster profile to `machine`; returns the machine.
    fn cluster_add(&self, name: &str, machine: &str) -> Result<Value>;
    /// Removes the cluster profile from `machine`; returns the machine.
    fn cluster_remove(&self, name: &str, machine: &str) -> Result<Value>;
    /// The members matching `extra` too, shaped by `opts`.
    fn cluster_members(&self, name: &str, extra: &Filter, opts: &ListOptions)
        -> Result<Vec<Value>>;
    /// How many members match `extra` too.
    fn cluster_count(&self, name: &str, extra: &Filter) -> Result<u64>;
    /// A member's role.
    fn cluster_role(&self, name: &str, machine: &str) -> Result<Role>;
    /// Sets a member's role; returns the machine.
    fn cluster_set_role(&self, name: &str, machine: &str, role: Role) -> Result<Value>;
    /// Makes sure `leaders` non-manager members lead ([`Cluster::elect`]).
    fn elect(&self, name: &str, leaders: usize) -> Result<Vec<Value>>;
    /// Blocks until `machine` holds one of `leaders` slots under `lease`
    /// ([`Cluster::campaign`]).
    fn campaign(
        &self,
        name: &str,
        machine: &str,
        lease: LeaseId,
        leaders: usize,
        timeout: Duration,
    ) -> Result<Leadership>;
    /// Gives up `machine`'s leadership; returns the machine.
    fn resign(&self, name: &str, machine: &str) -> Result<Value>;
}

/// An embedded handle: its store, and its claims check.
trait Embedded {
    fn store_of(&self) -> &Store;
    fn allow(&self, scope: &str, action: &str, id: &str) -> Result<()>;

    /// The store for a cluster verb: they write many machines, so they need
    /// `machines/update/*`.
    fn cluster_store(&self) -> Result<&Store> {
        self.allow("machines", "update", "*")?;
        Ok(self.store_of())
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Embedded for Store {
    fn store_of(&self) -> &Store {
        self
    }
    fn allow(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
}

impl Embedded for Scoped<'_> {
    fn store_of(&self) -> &Store {
        self.store()
    }
    fn allow(&self, scope: &str, action: &str, id: &str) -> Result<()> {
        self.check(scope, action, id)
    }
}

/// `Client` for a handle with `objects(kind)` and the store's waits and
/// leases: [`Store`] (everything allowed) and [`Scoped`] (a token's claims).
macro_rules! embedded_client {
    ($ty:ty) => {
        impl Client for $ty {
            fn get(&self, kind: Kind, id: &str) -> Result<Value> {
                self.objects(kind)?.get(id)
            }
            fn exists(&self, kind: Kind, id: &str) -> Result<bool> {
                self.objects(kind)?.exists(id)
            }
            fn create(&self, kind: Kind, doc: Value) -> Result<Value> {
                self.objects(kind)?.create(doc)
            }
            fn replace(&self, kind: Kind, id: &str, doc: Value) -> Result<Value> {
                self.objects(kind)?.replace(id, doc)
            }
            fn merge(&self, kind: Kind, id: &str, merge: &Value) -> Result<Value> {
                self.objects(kind)?.merge(id, merge)
            }
            fn patch(&self, kind: Kind, id: &str, ops: &Value) -> Result<Value> {
                self.objects(kind)?.patch(id, ops)
            }
            fn update_from(
                &self,
                kind: Kind,
                id: &str,
                reference: &Value,
                desired: &Value,
            ) -> Result<Value> {
                self.objects(kind)?.update_from(id, reference, desired)
            }
            fn delete(&self, kind: Kind, id: &str) -> Result<Value> {
                self.objects(kind)?.delete(id)
            }
            fn list(&self, kind: Kind, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
                self.objects(kind)?.list(filter, opts)
            }
            fn count(&self, kind: Kind, filter: &Filter) -> Result<u64> {
                self.objects(kind)?.count(filter)
            }
            fn group_count(
                &self,
                kind: Kind,
                filter: &Filter,
                by: &[String],
            ) -> Result<Vec<GroupCount>> {
                self.objects(kind)?.group_count(filter, by)
            }
            fn params(&self, kind: Kind, id: &str, aggregate: bool) -> Result<Map<String, Value>> {
                self.objects(kind)?.params(id, aggregate)
            }
            fn get_param(
                &self,
                kind: Kind,
                id: &str,
                key: &str,
                aggregate: bool,
            ) -> Result<Option<Value>> {
                self.objects(kind)?.get_param(id, key, aggregate)
            }
            fn set_param(
                &self,
                kind: Kind,
                id: &str,
                key: &str,
                expected: Option<Option<&Value>>,
                value: Value,
            ) -> Result<Value> {
                self.objects(kind)?
                    .set_param_value(id, key, expected, value)
            }
            fn remove_param(&self, kind: Kind, id: &str, key: &str) -> Result<Option<Value>> {
                self.objects(kind)?.remove_param(id, key)
            }
            fn wait_machine(&self, id: &str, filter: &Filter, timeout: Duration) -> Result<()> {
                self.allow("machines", "get", id)?;
                self.store_of().wait_machine(id, filter, timeout)
            }
            fn count_wait(
                &self,
                filter: &Filter,
                until: CountCondition,
                timeout: Duration,
            ) -> Result<u64> {
                self.allow("machines", "list", "*")?;
                self.store_of().count_wait(filter, until, timeout)
            }
            fn grant_lease(&self, ttl: u64) -> Result<Lease> {
                self.allow("leases", "create", "*")?;
                self.store_of().leases().grant(ttl)
            }
            fn keep_alive(&self, id: LeaseId) -> Result<Lease> {
                self.allow("leases", "update", "*")?;
                self.store_of().leases().keep_alive(id)
            }
            fn revoke_lease(&self, id: LeaseId) -> Result<Lease> {
                self.allow("leases", "delete", "*")?;
                self.store_of().leases().revoke(id)
            }
            fn lease(&self, id: LeaseId) -> Result<Lease> {
                self.allow("leases", "get", "*")?;
                self.store_of().leases().get(id)
            }
            fn leases(&self) -> Result<Vec<Lease>> {
                self.allow("leases", "list", "*")?;
                Ok(self.store_of().leases().list())
            }
            fn cluster_init(&self, name: &str, filter: Option<&str>) -> Result<Value> {
                let s = self.cluster_store()?;
                Cluster::init(s, name, filter)?;
                Ok(to_json(&s.profiles().get(name)?))
            }
            fn cluster_add(&self, name: &str, machine: &str) -> Result<Value> {
                let s = self.cluster_store()?;
                Ok(to_json(&Cluster::open(s, name)?.add(machine)?))
            }
            fn cluster_remove(&self, name: &str, machine: &str) -> Result<Value> {
                let s = self.cluster_store()?;
                Ok(to_json(&Cluster::open(s, name)?.remove(machine)?))
            }
            fn cluster_members(
                &self,
                name: &str,
                extra: &Filter,
                opts: &ListOptions,
            ) -> Result<Vec<Value>> {
                let s = self.cluster_store()?;
                Cluster::open(s, name)?.members(extra.clone(), opts)
            }
            fn cluster_count(&self, name: &str, extra: &Filter) -> Result<u64> {
                let s = self.cluster_store()?;
                Cluster::open(s, name)?.count(extra.clone())
            }
            fn cluster_role(&self, name: &str, machine: &str) -> Result<Role> {
                let s = self.cluster_store()?;
                Cluster::open(s, name)?.role(machine)
            }
            fn cluster_set_role(&self, name: &str, machine: &str, role: Role) -> Result<Value> {
                let s = self.cluster_store()?;
                Ok(to_json(&Cluster::open(s, name)?.set_role(machine, role)?))
            }
            fn elect(&self, name: &str, leaders: usize) -> Result<Vec<Value>> {
                let s = self.cluster_store()?;
                Ok(Cluster::open(s, name)?
                    .elect(leaders)?
                    .iter()
                    .map(to_json)
                    .collect())
            }
            fn campaign(
                &self,
                name: &str,
                machine: &str,
                lease: LeaseId,
                leaders: usize,
                timeout: Duration,
            ) -> Result<Leadership> {
                let s = self.cluster_store()?;
                Cluster::open(s, name)?.campaign(machine, lease, leaders, timeout)
            }
            fn resign(&self, name: &str, machine: &str) -> Result<Value> {
                let s = self.cluster_store()?;
                Ok(to_json(&Cluster::open(s, name)?.resign(machine)?))
            }
        }
    };
}

embedded_client!(Store);
embedded_client!(Scoped<'_>);
