//! Following other writers on a shared engine (etcd): the in-memory state
//! brought forward to what the engine holds, and the thread that does it
//! whenever another server writes.
//!
//! Owns: [`Store::catch_up`], the follower thread of an etcd store, and
//! [`Store::wait_for_revision`]. Must not: write, or talk to etcd other
//! than through the backend (its doorbell and reads).
//!
//! # Catching up
//! The same mechanism as bringing an index checkpoint forward
//! ([`super::checkpoint`]), with the live machine index as the checkpoint:
//! definitions, profiles and leases (few) are read whole; the change log
//! from the state's revision + 1 says which machines (by Uuid) and profiles
//! changed; those machines, the members of every changed profile, and every
//! machine created since (ids from the state's next id on) are indexed again
//! from their current records. The new state is swapped in under the state
//! lock, so a reader sees all of another server's write or none of it.
//!
//! The revision is read first, the records after: a write landing during
//! the catch-up may already show in the records, and is then indexed again
//! by the next catch-up (indexing a machine again from its record is
//! idempotent), so the state converges on what the engine holds. A state
//! is never replaced by one at or below its revision. When the log no
//! longer reaches the state's revision (trimmed), or `global` changed
//! (every machine changes), the state is rebuilt from every record instead.
//!
//! Catching up runs under the writer lock: a write that lost the revision
//! race ([`Error::RevisionMismatch`]) catches up and plans again
//! ([`super::write`]), and no write plans against a half-applied state.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(feature = "etcd")]
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;

use super::backend::Backend;
use super::changelog::{self, LogLen, Trim};
use super::layout::MACHINE_PREFIX;
use super::layout::{decode, machine_key};
use super::leases::LeaseTable;
#[cfg(feature = "etcd")]
use super::open::Inner;
use super::open::Store;
use super::rebuild::{load_counters, load_definitions, load_state};
use super::state::{machine_entries, own_keys, State};
use crate::error::{Error, Result};
use crate::filter::{Field, Key};
use crate::index::{Index, ValueKey};
use crate::model::{Kind, Machine, Profile, GLOBAL_PROFILE};
use crate::watch::event_subject;

/// What a catch-up read, to be swapped in under the state lock.
enum Forward {
    /// A new state built from every record.
    Rebuilt(State),
    /// Fresh definitions; machines to drop from the index and to index.
    Changes {
        fresh: State,
        touched: RoaringBitmap,
        machines: Vec<(u32, Machine)>,
    },
    /// Only machines and leases changed (the common case): the definitions
    /// stand, and the state moves in place.
    Machines {
        rev: u64,
        next_id: u32,
        log: LogLen,
        leases: LeaseTable,
        touched: RoaringBitmap,
        machines: Vec<(u32, Machine)>,
    },
}

/// Reads what brings `st` forward to the engine's revision; `None` when the
/// engine is not ahead of it.
fn read_forward(db: &dyn Backend, st: &State) -> Result<Option<Forward>> {
    // One read when nothing changed (the common case of a poll).
    let rev = db.revision()?;
    if rev <= st.rev {
        return Ok(None);
    }
    // Another server wrote machines only: read what the log names and the
    // few small records beside, never the definitions (a profile or param
    // change in the log takes the full path below, which reads them all).
    if changelog::logs_revision(db, st.rev + 1)? {
        let logged = logged_since(db, st)?;
        if logged.profiles.is_empty() && !logged.params {
            let (next_id, log) = load_counters(db, rev)?;
            let leases = LeaseTable::load(db)?;
            let machines = read_machines(db, &logged.machines, st.next_id)?;
            return Ok(Some(Forward::Machines {
                rev,
                next_id,
                log,
                leases,
                touched: logged.machines,
                machines,
            }));
        }
    }
    full_forward(db, st)
}

/// What the change log names after `st`'s revision.
struct Logged {
    /// Machines `st` indexes (by id).
    machines: RoaringBitmap,
    /// Profiles, by name.
    profiles: BTreeSet<String>,
    /// Whether a param definition changed.
    params: bool,
}

fn logged_since(db: &dyn Backend, st: &State) -> Result<Logged> {
    let mut logged = Logged {
        machines: RoaringBitmap::new(),
        profiles: BTreeSet::new(),
        params: false,
    };
    for item in db.changes(st.rev + 1, 0) {
        let (_, event) = item?;
        match event_subject(&event)? {
            (Kind::Machine, uuid) => {
                if let Some(id) = st
                    .machines
                    .lookup(&Key::Field(Field::Uuid), &ValueKey::str(&uuid))
                    .and_then(|p| p.min())
                {
                    logged.machines.insert(id);
                }
            }
            (Kind::Profile, name) => {
                logged.profiles.insert(name);
            }
            (Kind::Param, _) => logged.params = true,
            _ => {}
        }
    }
    Ok(logged)
}

/// Drops `touched` from `index` and indexes `machines` (under `profiles`);
/// the next free machine id past them and `next_id`.
fn reindex(
    index: &mut Index,
    profiles: &BTreeMap<String, Profile>,
    touched: &RoaringBitmap,
    machines: &[(u32, Machine)],
    next_id: u32,
) -> u32 {
    index.remove_everywhere(touched);
    let mut next_id = next_id;
    for (id, m) in machines {
        index.insert(*id, &machine_entries(m, profiles), &own_keys(&m.params));
        next_id = next_id.max(id + 1);
    }
    next_id
}

/// The records of machines `touched` (those still stored) and of every
/// machine created from id `next_id` on.
fn read_machines(
    db: &dyn Backend,
    touched: &RoaringBitmap,
    next_id: u32,
) -> Result<Vec<(u32, Machine)>> {
    let mut machines = Vec::new();
    for id in touched {
        let key = machine_key(id);
        if let Some(bytes) = db.get(&key)? {
            machines.push((id, decode(&key, &bytes)?));
        }
    }
    for item in db.scan(MACHINE_PREFIX, &machine_key(next_id)) {
        let (k, v) = item?;
        machines.push(super::rebuild::machine_record(&k, &v)?);
    }
    Ok(machines)
}

/// [`read_forward`] when definitions changed too: every definition is read
/// again (after the revision), then the log and the machines it names.
fn full_forward(db: &dyn Backend, st: &State) -> Result<Option<Forward>> {
    // The revision first (see the module doc): the records read after it
    // are at least as new.
    let fresh = load_definitions(db)?;
    if fresh.rev <= st.rev {
        return Ok(None);
    }
    match changelog::first_position(db)? {
        Some(first) if first <= (st.rev + 1, 0) => {}
        _ => return Ok(Some(Forward::Rebuilt(load_state(db)?))),
    }
    let Logged {
        machines: mut touched,
        profiles,
        ..
    } = logged_since(db, st)?;
    if profiles.contains(GLOBAL_PROFILE) {
        return Ok(Some(Forward::Rebuilt(load_state(db)?)));
    }
    for p in &profiles {
        if let Some(members) = st.machines.lookup(&Key::Profiles, &ValueKey::str(p)) {
            touched |= members.to_bitmap();
        }
    }
    let machines = read_machines(db, &touched, st.next_id)?;
    Ok(Some(Forward::Changes {
        fresh,
        touched,
        machines,
    }))
}

impl Store {
    /// Brings the in-memory state forward to what the engine holds (other
    /// servers' writes on a shared engine); `Ok(true)` when it moved. On
    /// an engine only this store writes, a no-op.
    pub fn catch_up(&self) -> Result<bool> {
        if !self.backend().shared() {
            return Ok(false);
        }
        let mut trim = self.inner.writer.lock();
        self.catch_up_locked(&mut trim)
    }

    /// [`catch_up`](Self::catch_up) for a caller holding the writer lock.
    pub(super) fn catch_up_locked(&self, trim: &mut Trim) -> Result<bool> {
        let backend = self.backend();
        let forward = {
            let st = self.state_for_write();
            match read_forward(&*backend, &st)? {
                Some(f) => f,
                None => return Ok(false),
            }
        };
        let rev = {
            let mut st = self.inner.state.write();
            let next = match forward {
                Forward::Machines {
                    rev,
                    next_id,
                    log,
                    leases,
                    touched,
                    machines,
                } => {
                    if rev <= st.rev {
                        return Ok(false);
                    }
                    let now = &mut *st;
                    let next_id = next_id.max(now.next_id);
                    now.next_id = reindex(
                        &mut now.machines,
                        &now.profiles,
                        &touched,
                        &machines,
                        next_id,
                    );
                    st.log = log;
                    st.leases = leases;
                    st.rev = rev;
                    drop(st);
                    return Ok(self.caught_up(trim, rev));
                }
                Forward::Rebuilt(fresh) => fresh,
                Forward::Changes {
                    mut fresh,
                    touched,
                    machines,
                } => {
                    let mut index = std::mem::take(&mut st.machines);
                    let next_id = fresh.next_id.max(st.next_id);
                    fresh.next_id =
                        reindex(&mut index, &fresh.profiles, &touched, &machines, next_id);
                    fresh.machines = index;
                    fresh
                }
            };
            // Never back, never the same revision twice.
            if next.rev <= st.rev {
                return Ok(false);
            }
            *st = next;
            st.rev
        };
        Ok(self.caught_up(trim, rev))
    }

    /// After the state moved to `rev`: the log's head follows the other
    /// servers' trims, and waiters wake.
    fn caught_up(&self, trim: &mut Trim, rev: u64) -> bool {
        if trim.after_others(&*self.backend()).is_err() {
            *trim = Trim::default();
        }
        self.inner.commits.committed(rev);
        let _g = self.inner.written.lock();
        self.inner.wake.notify_all();
        true
    }

    /// Blocks until the store's indexes have reached revision `rev`
    /// (`?min_revision=`), or `deadline` ([`Error::Timeout`]). On a shared
    /// engine it catches up rather than wait for the follower.
    pub fn wait_for_revision(&self, rev: u64, deadline: Instant) -> Result<u64> {
        loop {
            let now = self.revision();
            if now >= rev {
                return Ok(now);
            }
            if self.catch_up()? {
                continue;
            }
            let until = deadline.min(Instant::now() + Duration::from_millis(100));
            let _ = self.wait_for_write(now, until);
            if Instant::now() >= deadline && self.revision() < rev {
                return Err(Error::Timeout);
            }
        }
    }
}

/// Starts the thread that keeps `store` current with an etcd cluster:
/// rung by an etcd watch on the revision key (from etcd revision `from`),
/// and polling every [`POLL`] besides, so a lost or lagging watch delays a
/// catch-up by at most that. It holds the store weakly and ends with it.
#[cfg(feature = "etcd")]
pub(super) fn start_follower(
    store: &Store,
    backend: Arc<super::etcd_backend::EtcdBackend>,
    from: i64,
) -> Result<()> {
    let weak: Weak<Inner> = Arc::downgrade(&store.inner);
    std::thread::Builder::new()
        .name("fleetkv-etcd-follow".into())
        .spawn(move || follow(&weak, &backend, from))
        .map_err(|e| Error::Storage(format!("starting the etcd follower: {e}")))?;
    Ok(())
}

/// How often the follower reads the revision when the watch is quiet.
#[cfg(feature = "etcd")]
const POLL: Duration = Duration::from_secs(2);

#[cfg(feature = "etcd")]
fn follow(weak: &Weak<Inner>, backend: &super::etcd_backend::EtcdBackend, mut from: i64) {
    let last_poll = std::cell::Cell::new(Instant::now());
    let failing = std::cell::Cell::new(false);
    let catch_up = || {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        last_poll.set(Instant::now());
        match (Store::background(inner)).catch_up() {
            Ok(_) if failing.replace(false) => {
                eprintln!("fleetkv: etcd answers again; the indexes are current");
            }
            Ok(_) => {}
            Err(e) if !failing.replace(true) => {
                eprintln!("fleetkv: cannot follow etcd (retrying): {e}");
            }
            Err(_) => {}
        }
    };
    let ring = |rev: i64| {
        if rev > 0 || last_poll.get().elapsed() >= POLL {
            catch_up();
        }
    };
    let alive = || weak.strong_count() > 0;
    let mut backoff = Duration::from_millis(100);
    while alive() {
        let r = backend.doorbell(from, &ring, &alive);
        if !alive() {
            return;
        }
        if r.is_err() {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(POLL);
        } else {
            backoff = Duration::from_millis(100);
        }
        // The watch ended (cancelled, compacted, lost): catch up through
        // the change log, then watch again from the present.
        catch_up();
        from = match backend.revisions() {
            Ok((etcd_rev, _)) => etcd_rev + 1,
            Err(_) => 0,
        };
    }
}
