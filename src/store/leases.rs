//! Leases and the guards a write can carry: [`Leases`] (grant, renew,
//! revoke), what each lease holds, [`Fence`] and count guards.
//!
//! Owns: lease records (`l` + id: the TTL and what the lease holds), the
//! [`LeaseTable`] kept in the state, the write that ends a lease (revoke or
//! expiry: in one write, every param and Meta entry it holds that still has
//! the value it set is removed, every machine it holds is deleted, with
//! their change events), and [`Guards`]: the checks a machine write makes
//! under the writer lock before it commits. Must not: keep time (see
//! [`super::lease_clock`], or etcd's leases on a shared store: [`Timer`])
//! or decide what a write changes.
//!
//! # What a lease holds
//! A machine write made under a lease ([`Machines::with_lease`]) hands the
//! lease every own param and Meta entry the write added or changed (and the
//! param a `set_param` names, changed or not), with the value it set; a create under a lease hands it the whole machine. A
//! slot (machine and param, machine and Meta key, whole machine) is held by
//! one lease at a time: the newest write under a lease takes it. When the
//! lease ends, a held value is removed only if it is still the one the lease
//! set (a later write's value stays), so a param falls back to its profile,
//! global or default value.
//!
//! Leases hold machines only: a profile's param change moves every member's
//! effective value, which is not something a heartbeat should do.
//!
//! [`Machines::with_lease`]: super::Machines::with_lease

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::backend::Batch;
use super::layout::{decode, encode, lease_key, machine_key, LEASE_PREFIX};
use super::open::Store;
use super::state::{machine_entries, own_keys, State};
use super::write::{erase, Apply};
use crate::error::{Error, Result};
use crate::filter::{Field, Filter, Key};
use crate::index::ValueKey;
use crate::model::{Kind, Machine};
use crate::telemetry::WriteKind;

/// A lease's id: the revision of the write that granted it (never reused).
pub type LeaseId = u64;

/// One thing a lease holds: a machine's own param, Meta entry, or (neither
/// named) the whole machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The machine, by Uuid.
    #[serde(rename = "Machine")]
    pub machine: Uuid,
    /// An own param the lease set.
    #[serde(rename = "Param", default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// A Meta key the lease set.
    #[serde(rename = "Meta", default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
    /// The value it set (params and Meta entries).
    #[serde(rename = "Value", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl Held {
    fn slot(&self) -> Slot {
        match (&self.param, &self.meta) {
            (Some(p), _) => Slot::Param(self.machine, p.clone()),
            (None, Some(m)) => Slot::Meta(self.machine, m.clone()),
            (None, None) => Slot::Machine(self.machine),
        }
    }
}

/// What one lease holder at a time may hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Param(Uuid, String),
    Meta(Uuid, String),
    Machine(Uuid),
}

/// A lease as stored: its TTL and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LeaseRecord {
    #[serde(rename = "ID")]
    id: LeaseId,
    #[serde(rename = "TTL")]
    ttl: u64,
    #[serde(rename = "Holds", default)]
    holds: Vec<Held>,
    /// On a store shared through etcd: the etcd lease that keeps this
    /// lease's deadline for every server.
    #[serde(rename = "EtcdLease", default, skip_serializing_if = "Option::is_none")]
    etcd: Option<i64>,
}

impl LeaseRecord {
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }
}

/// Who keeps the deadlines of a store's leases.
pub(super) enum Timer<'a> {
    /// This process, on its monotonic clock ([`super::lease_clock`]).
    Local(&'a super::lease_clock::LeaseClock),
    /// etcd's leader, through one etcd lease per lease (a store shared
    /// through etcd): any server renews it, and every server sees it end.
    #[cfg(feature = "etcd")]
    Etcd(&'a super::etcd_backend::EtcdBackend),
}

impl Timer<'_> {
    /// What is left of `r`'s TTL (zero once it has ended).
    fn remaining(&self, r: &LeaseRecord) -> Duration {
        match self {
            Timer::Local(clock) => clock.remaining(r.id).unwrap_or_default(),
            #[cfg(feature = "etcd")]
            Timer::Etcd(etcd) => r
                .etcd
                .and_then(|e| etcd.lease_left(e).ok().flatten())
                .unwrap_or_default(),
        }
    }

    /// Renews `r` for its TTL; an ended lease is [`Error::NotFound`].
    fn renew(&self, r: &LeaseRecord) -> Result<()> {
        match self {
            Timer::Local(clock) => clock.renew(r.id, r.ttl()).map(drop),
            #[cfg(feature = "etcd")]
            Timer::Etcd(etcd) => {
                let ended = || Error::not_found(Kind::Lease, r.id.to_string());
                match r.etcd {
                    Some(e) if etcd.keep_lease(e)? => Ok(()),
                    _ => Err(ended()),
                }
            }
        }
    }

    /// Whether a write may still hand `r` what it sets. On etcd a lease
    /// whose etcd lease ended a moment ago is still live here until the
    /// end write (at most one expiry poll later) clears what it holds,
    /// including what such a write handed it.
    fn live(&self, r: &LeaseRecord) -> bool {
        match self {
            Timer::Local(clock) => clock.live(r.id),
            #[cfg(feature = "etcd")]
            Timer::Etcd(_) => true,
        }
    }

    /// Takes `r` off its clock before the write that ends it, so that no
    /// renewal succeeds from then on. `due`: only if it has expired (the
    /// expiry thread's call; `false` when it has not). Otherwise it ends
    /// now (a revoke).
    fn take(&self, r: &LeaseRecord, due: bool) -> Result<bool> {
        match self {
            Timer::Local(clock) => Ok(clock.take(r.id, due)),
            #[cfg(feature = "etcd")]
            Timer::Etcd(etcd) => match (r.etcd, due) {
                (None, _) => Ok(true),
                (Some(e), true) => Ok(etcd.lease_left(e)?.is_none()),
                (Some(e), false) => etcd.revoke_lease(e).map(|()| true),
            },
        }
    }

    /// The end write of lease `id` failed: it is tried again. Locally the
    /// lease goes back on the clock, due now; on etcd the expiry poll finds
    /// its etcd lease ended again.
    fn retry(&self, id: LeaseId) {
        match self {
            Timer::Local(clock) => clock.set(id, Instant::now()),
            #[cfg(feature = "etcd")]
            Timer::Etcd(_) => {}
        }
    }
}

/// A lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    #[serde(rename = "ID")]
    pub id: LeaseId,
    /// Its time to live in seconds: each renewal sets the deadline this far
    /// ahead.
    #[serde(rename = "TTL")]
    pub ttl: u64,
    /// Seconds left until it ends unless renewed (millisecond precision).
    #[serde(rename = "Remaining")]
    pub remaining: f64,
    /// What it holds.
    #[serde(rename = "Holds")]
    pub holds: Vec<Held>,
}

/// Every lease's record and which lease holds each slot. Part of the state.
#[derive(Default, Clone)]
pub(crate) struct LeaseTable {
    records: BTreeMap<LeaseId, LeaseRecord>,
    holders: HashMap<Slot, LeaseId>,
}

impl LeaseTable {
    /// Loads the lease records.
    pub(super) fn load(db: &dyn super::backend::Backend) -> Result<LeaseTable> {
        let mut t = LeaseTable::default();
        for item in db.scan_prefix(LEASE_PREFIX) {
            let (k, v) = item?;
            let r: LeaseRecord = decode(&k, &v)?;
            t.put(r);
        }
        Ok(t)
    }

    /// Whether no lease is live.
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// `(id, ttl)` of every lease.
    pub(super) fn ttls(&self) -> Vec<(LeaseId, Duration)> {
        self.records.values().map(|r| (r.id, r.ttl())).collect()
    }

    /// `(id, etcd lease)` of every lease whose deadline etcd keeps.
    #[cfg(feature = "etcd")]
    pub(super) fn etcd_leases(&self) -> Vec<(LeaseId, i64)> {
        self.records
            .values()
            .filter_map(|r| Some((r.id, r.etcd?)))
            .collect()
    }

    fn put(&mut self, r: LeaseRecord) {
        if let Some(old) = self.records.get(&r.id) {
            for h in &old.holds {
                self.holders.remove(&h.slot());
            }
        }
        for h in &r.holds {
            self.holders.insert(h.slot(), r.id);
        }
        self.records.insert(r.id, r);
    }

    fn remove(&mut self, id: LeaseId) {
        if let Some(old) = self.records.remove(&id) {
            for h in &old.holds {
                if self.holders.get(&h.slot()) == Some(&id) {
                    self.holders.remove(&h.slot());
                }
            }
        }
    }
}

/// A fencing token a write requires: refused unless some machine's
/// (effective) param `param` still equals `token`. Election hands one out
/// with every leadership ([`crate::Cluster::campaign`]): a leader that lost
/// its slot cannot write with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The param holding live tokens.
    pub param: String,
    /// The token.
    pub token: u64,
}

/// Preconditions of a machine write and the lease it writes under, checked
/// under the writer lock (so nothing changes between check and commit).
#[derive(Clone, Default)]
pub(super) struct Guards {
    pub(super) lease: Option<LeaseId>,
    pub(super) fence: Option<Fence>,
    pub(super) count_below: Option<(Filter, u64)>,
}

impl Guards {
    /// Fails the write unless every precondition holds now.
    pub(super) fn check(&self, store: &Store, st: &State) -> Result<()> {
        if let Some(id) = self.lease {
            let live = st
                .leases
                .records
                .get(&id)
                .is_some_and(|r| store.timer().live(r));
            if !live {
                return Err(Error::not_found(Kind::Lease, id.to_string()));
            }
        }
        if let Some(f) = &self.fence {
            let held = st
                .machines
                .lookup(&Key::Param(f.param.clone()), &ValueKey::of(&f.token.into()))
                .is_some_and(|p| p.len() > 0);
            if !held {
                return Err(Error::Conflict {
                    path: format!("fence {}", f.param),
                    expected: Some(Box::new(f.token.into())),
                    actual: None,
                });
            }
        }
        if let Some((filter, n)) = &self.count_below {
            let bound = filter.bind(Kind::Machine, st)?;
            let count = st.machines.count(&bound, None, st);
            if count >= *n {
                return Err(Error::Conflict {
                    path: format!("count of {filter}"),
                    expected: Some(Box::new(format!("fewer than {n}").into())),
                    actual: Some(Box::new(count.into())),
                });
            }
        }
        Ok(())
    }

    /// Refuses a lease on a write it cannot hold anything of.
    pub(super) fn no_lease(&self, what: &str) -> Result<()> {
        match self.lease {
            Some(_) => Err(Error::invalid(
                "lease",
                format!("{what} cannot be made under a lease: a lease holds params and Meta entries a write sets, or a machine it creates"),
            )),
            None => Ok(()),
        }
    }

    /// Stages the lease's record with what machine `new` (was `old`;
    /// `None`: created) now holds under it — what changed, and param
    /// `named` (a `set_param`'s) even if its value did not — taking each
    /// slot from any other lease. The in-memory half is returned.
    pub(super) fn hand_over(
        &self,
        st: &State,
        batch: &mut Batch,
        old: Option<&Machine>,
        new: &Machine,
        named: Option<&str>,
    ) -> Option<Apply> {
        let id = self.lease?;
        let record = st.leases.records.get(&id)?;
        let mut held: Vec<Held> = Vec::new();
        match old {
            None => held.push(Held {
                machine: new.uuid,
                param: None,
                meta: None,
                value: None,
            }),
            Some(old) => {
                for (k, v) in &new.params {
                    if old.params.get(k) != Some(v) || named == Some(k.as_str()) {
                        held.push(Held {
                            machine: new.uuid,
                            param: Some(k.clone()),
                            meta: None,
                            value: Some(v.clone()),
                        });
                    }
                }
                for (k, v) in &new.meta {
                    if old.meta.get(k) != Some(v) {
                        held.push(Held {
                            machine: new.uuid,
                            param: None,
                            meta: Some(k.clone()),
                            value: Some(v.clone().into()),
                        });
                    }
                }
            }
        }
        if held.is_empty() {
            return None;
        }
        let mut changed: BTreeMap<LeaseId, LeaseRecord> = BTreeMap::new();
        let mut mine = record.clone();
        for h in &held {
            let slot = h.slot();
            match st.leases.holders.get(&slot) {
                Some(other) if *other != id => {
                    let r = changed
                        .entry(*other)
                        .or_insert_with(|| st.leases.records[other].clone());
                    r.holds.retain(|x| x.slot() != slot);
                }
                _ => {}
            }
            mine.holds.retain(|x| x.slot() != slot);
            mine.holds.push(h.clone());
        }
        changed.insert(id, mine);
        for r in changed.values() {
            batch.put(&lease_key(r.id)[..], encode(r));
        }
        Some(Box::new(move |st: &mut State| {
            for (_, r) in changed {
                st.leases.put(r);
            }
        }))
    }
}

/// Leases: a TTL renewed by keep-alives, and what goes away when it ends.
///
/// ```
/// # use fleetkv::{Machine, Store};
/// let store = Store::in_memory()?;
/// store.machines().create(Machine::new("a"))?;
/// let lease = store.leases().grant(10)?;
/// store
///     .machines()
///     .with_lease(lease.id)
///     .set_param("a", "agent/alive", true.into())?;
/// store.leases().keep_alive(lease.id)?;
/// // Revoking (or letting it expire) removes what the lease set.
/// store.leases().revoke(lease.id)?;
/// assert_eq!(store.machines().get_param("a", "agent/alive", false)?, None);
/// # Ok::<(), fleetkv::Error>(())
/// ```
pub struct Leases<'a> {
    pub(super) store: &'a Store,
}

impl Leases<'_> {
    /// Grants a lease of `ttl` seconds (at least 1, at most
    /// [`Options::max_lease_ttl`](super::Options::max_lease_ttl)).
    ///
    /// On a store shared through etcd the deadline is an etcd lease,
    /// granted first: the record that names it is visible to other servers
    /// only once the etcd lease exists.
    pub fn grant(&self, ttl: u64) -> Result<Lease> {
        let max = self.store.inner.options.max_lease_ttl.as_secs();
        if ttl == 0 || ttl > max {
            return Err(Error::invalid(
                "lease TTL",
                format!("{ttl} s is out of range: a TTL is 1 to {max} seconds"),
            ));
        }
        let store = self.store;
        let timer = store.timer();
        let etcd: Option<i64> = match &timer {
            Timer::Local(_) => None,
            #[cfg(feature = "etcd")]
            Timer::Etcd(etcd) => Some(etcd.grant_lease(ttl)?),
        };
        let granted = store.write_as(WriteKind::Lease, |_, rev, _| {
            let r = LeaseRecord {
                id: rev,
                ttl,
                holds: Vec::new(),
                etcd,
            };
            let mut batch = Batch::default();
            batch.put(&lease_key(rev)[..], encode(&r));
            let apply = Box::new(move |st: &mut State| st.leases.put(r));
            Ok((batch, apply as Apply, rev))
        });
        let id = match (granted, &timer) {
            (Ok(id), Timer::Local(clock)) => {
                clock.set(id, Instant::now() + Duration::from_secs(ttl));
                store.inner.leases.start(store)?;
                id
            }
            #[cfg(feature = "etcd")]
            (Ok(id), Timer::Etcd(_)) => id,
            (Err(e), _) => {
                // Nothing names the etcd lease: let it go now rather than
                // at its TTL (an outcome-unknown write that did land ends
                // at the next expiry poll, the etcd lease being gone).
                #[cfg(feature = "etcd")]
                if let (Timer::Etcd(etcd), Some(lease)) = (&timer, etcd) {
                    let _ = etcd.revoke_lease(lease);
                }
                return Err(e);
            }
        };
        self.get(id)
    }

    /// Renews lease `id`: its deadline moves to a TTL from now. Not a
    /// store write. An unknown, ended or expired lease is
    /// [`Error::NotFound`], never revived.
    pub fn keep_alive(&self, id: LeaseId) -> Result<Lease> {
        let record = self
            .store
            .state_for_write()
            .leases
            .records
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(Kind::Lease, id.to_string()))?;
        self.store.timer().renew(&record)?;
        self.get(id)
    }

    /// Ends lease `id` now, in one write with what it held; returns it as
    /// it was.
    pub fn revoke(&self, id: LeaseId) -> Result<Lease> {
        self.store.end_lease(id, false)
    }

    /// Lease `id`.
    pub fn get(&self, id: LeaseId) -> Result<Lease> {
        let st = self.store.state_for_write();
        let r = st
            .leases
            .records
            .get(&id)
            .ok_or_else(|| Error::not_found(Kind::Lease, id.to_string()))?;
        Ok(self.show(r))
    }

    /// Every lease, by id.
    pub fn list(&self) -> Vec<Lease> {
        let st = self.store.state_for_write();
        st.leases.records.values().map(|r| self.show(r)).collect()
    }

    fn show(&self, r: &LeaseRecord) -> Lease {
        let left = self.store.timer().remaining(r);
        Lease {
            id: r.id,
            ttl: r.ttl,
            remaining: (left.as_millis() as f64) / 1000.0,
            holds: r.holds.clone(),
        }
    }
}

impl Store {
    /// Leases.
    pub fn leases(&self) -> Leases<'_> {
        Leases { store: self }
    }

    /// Who keeps this store's lease deadlines.
    pub(super) fn timer(&self) -> Timer<'_> {
        #[cfg(feature = "etcd")]
        if let Some(etcd) = self.inner.etcd.get() {
            return Timer::Etcd(etcd);
        }
        Timer::Local(&self.inner.leases)
    }

    /// Ends lease `id` (`due`: only if its deadline has passed, the expiry
    /// thread's call) in one write: what it held goes with it.
    pub(super) fn end_lease(&self, id: LeaseId, due: bool) -> Result<Lease> {
        let timer = self.timer();
        let shown = self.leases().get(id)?;
        let r = self.write_as(WriteKind::Lease, |st, rev, log| {
            let record = st
                .leases
                .records
                .get(&id)
                .ok_or_else(|| Error::not_found(Kind::Lease, id.to_string()))?;
            // Off the clock first: no renewal can succeed from here on.
            if !timer.take(record, due)? && due {
                return Err(Error::not_found(Kind::Lease, id.to_string()));
            }
            let mut batch = Batch::default();
            batch.remove(&lease_key(id)[..]);
            let mut by_machine: BTreeMap<Uuid, Vec<&Held>> = BTreeMap::new();
            for h in &record.holds {
                // A slot another lease took since is not this one's to clear.
                if st.leases.holders.get(&h.slot()) == Some(&id) {
                    by_machine.entry(h.machine).or_default().push(h);
                }
            }
            let mut applies: Vec<Apply> = Vec::new();
            for (uuid, holds) in by_machine {
                let Some(mid) = st
                    .machines
                    .lookup(&Key::Field(Field::Uuid), &ValueKey::str(&uuid.to_string()))
                    .and_then(|p| p.min())
                else {
                    continue; // deleted since
                };
                if holds.iter().any(|h| h.param.is_none() && h.meta.is_none()) {
                    let old = self.load_machine(mid)?;
                    erase(&mut batch, log, &machine_key(mid), &uuid.to_string(), &old);
                    applies.push(Box::new(move |st: &mut State| {
                        let e = machine_entries(&old, &st.profiles);
                        st.machines.remove(mid, &e, &own_keys(&old.params));
                    }));
                    continue;
                }
                let current = self.load_machine(mid)?;
                let still = |h: &&Held| match (&h.param, &h.meta) {
                    (Some(p), _) => current.params.get(p) == h.value.as_ref(),
                    (None, Some(k)) => {
                        current.meta.get(k).map(|s| Value::from(s.as_str())) == h.value
                    }
                    _ => false,
                };
                let clear: Vec<&Held> = holds.into_iter().filter(still).collect();
                if clear.is_empty() {
                    continue;
                }
                let (_, diff) = self.machines().change(st, rev, mid, &mut batch, log, |m| {
                    for h in &clear {
                        if let Some(p) = &h.param {
                            m.params.shift_remove(p);
                        } else if let Some(k) = &h.meta {
                            m.meta.remove(k);
                        }
                    }
                    Ok(())
                })?;
                applies.push(Box::new(move |st: &mut State| {
                    diff.apply(&mut st.machines, mid)
                }));
            }
            let apply = Box::new(move |st: &mut State| {
                for a in applies {
                    a(st);
                }
                st.leases.remove(id);
            });
            Ok((batch, apply as Apply, ()))
        });
        if let Err(e) = &r {
            // The write did not happen: a lease still stored stays on the
            // clock, due now (the expiry thread tries again).
            if self.state_for_write().leases.records.contains_key(&id)
                && !matches!(e, Error::NotFound { .. })
            {
                timer.retry(id);
            }
        }
        r.map(|()| Lease {
            remaining: 0.0,
            ..shown
        })
    }

    /// Restores the deadlines of the leases a store holds at open, ends
    /// those that cannot be proven live, and starts the expiry thread.
    pub(super) fn start_leases(&self) -> Result<()> {
        if self.inner.shared {
            // etcd keeps the deadlines (`Timer::Etcd`): nothing to restore,
            // and the store's opener starts the expiry poll.
            return Ok(());
        }
        let ttls = self.state_for_write().leases.ttls();
        if ttls.is_empty() {
            return Ok(());
        }
        if let Err(why) = self.inner.leases.restore(&ttls) {
            eprintln!(
                "fleetkv: {} lease(s) end at open: their deadlines cannot be proven ({why})",
                ttls.len()
            );
        }
        // Leases whose deadline passed while the store was closed end now,
        // before the open returns: no read sees what they held.
        for (id, _) in &ttls {
            if !self.inner.leases.live(*id) {
                match self.end_lease(*id, true) {
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.inner.leases.start(self)
    }
}
