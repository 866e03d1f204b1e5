//! Recovery: the in-memory state rebuilt from every stored record, and the
//! check that the live indexes equal such a rebuild.
//!
//! Owns: the order records are read in at open (definitions, profiles, then
//! machines decoded on a second thread while this one indexes) and
//! [`Store::verify_indexes`]. Must not: write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::backend::Backend;
use super::changelog::{events_from, stored_len, LogLen};
use super::layout::{
    decode, machine_id_of, show_key, LOG_LEN_KEY, LOG_PREFIX, MACHINE_PREFIX, NEXT_ID_KEY,
    PARAM_PREFIX, PROFILE_PREFIX,
};
use super::open::Store;
use super::state::{machine_entries, profile_entries, State};
use crate::error::{Error, Result};
use crate::filter::Key;
use crate::index::{Bulk, Entries, FastMap, Index, KeyBuilder, Repair};
use crate::model::{Machine, ParamDef, Profile};

/// How many times [`Store::verify_indexes`] reads a shared store before it
/// gives up on finding it still.
const VERIFY_TRIES: u32 = 20;

impl Store {
    /// Rebuilds every index from the stored documents and compares it with
    /// the live one, and checks the change log's length the writer trims
    /// by against the log's records. An operator's and the test suite's
    /// check.
    ///
    /// On an engine shared with other servers (etcd) the live state first
    /// catches up, and the documents are compared only when they were read
    /// at that same revision: should other servers keep writing through
    /// twenty attempts, the answer is [`Error::Unavailable`]
    /// (try again), never a false report of damage.
    pub fn verify_indexes(&self) -> Result<()> {
        let mut w = self.inner.writer.lock();
        let backend = self.backend();
        let mut tries = 0;
        let fresh = loop {
            if !backend.shared() {
                // The writer lock holds every writer off.
                break load_state(&*backend)?;
            }
            self.catch_up_locked(&mut w)?;
            let fresh = load_state(&*backend)?;
            if fresh.rev == self.state_for_write().rev && backend.revision()? == fresh.rev {
                break fresh;
            }
            tries += 1;
            if tries == VERIFY_TRIES {
                return Err(Error::Unavailable(format!(
                    "other servers kept writing through {VERIFY_TRIES} attempts to read the store at one revision; check again"
                )));
            }
        };
        let live = self.state();
        if fresh.machines != live.machines {
            return Err(Error::Corrupt {
                key: "index:machines".into(),
                reason: index_diff(&fresh.machines, &live.machines),
            });
        }
        // Profile ids are positional; compare through names.
        let by_name = |s: &State| -> Vec<(String, Entries)> {
            s.profiles
                .values()
                .map(|p| (p.name.clone(), profile_entries(p)))
                .collect()
        };
        if by_name(&fresh) != by_name(&live)
            || fresh.profile_index.universe().len() != live.profile_index.universe().len()
        {
            return Err(Error::Corrupt {
                key: "index:profiles".into(),
                reason: "profile index differs from stored profiles".into(),
            });
        }
        // The live profile index against one built from the live profiles
        // under their live ids: catches stale postings as well as missing ones.
        let mut rebuilt = Index::default();
        for p in live.profiles.values() {
            rebuilt.insert(live.profile_ids[&p.name], &profile_entries(p), &[]);
        }
        if rebuilt != live.profile_index {
            return Err(Error::Corrupt {
                key: "index:profiles".into(),
                reason: index_diff(&rebuilt, &live.profile_index),
            });
        }
        // The length the writer trims by, against the log's records.
        let counted = events_from(&*backend, LOG_PREFIX)?;
        if counted != live.log.events {
            return Err(Error::Corrupt {
                key: show_key(LOG_LEN_KEY),
                reason: format!(
                    "the change log holds {counted} events where its writer counts {}",
                    live.log.events
                ),
            });
        }
        Ok(())
    }

    /// Rebuilds the in-memory state from the engine and hands it back
    /// opaque, so a caller can measure what the indexes occupy. Not for
    /// production use.
    #[doc(hidden)]
    pub fn rebuild_probe(&self) -> Result<Box<dyn std::any::Any>> {
        Ok(Box::new(load_state(&*self.backend())?))
    }
}

fn index_diff(a: &Index, b: &Index) -> String {
    if a.universe() != b.universe() {
        return format!(
            "universe differs: rebuilt {} objects, live {}",
            a.universe().len(),
            b.universe().len()
        );
    }
    "postings differ from a rebuild".into()
}

/// Reads every record and builds the in-memory state.
pub(super) fn load_state(db: &dyn Backend) -> Result<State> {
    let mut st = load_definitions(db)?;
    index_machines(db, &mut st, MACHINE_PREFIX)?;
    // Only here: keys a checkpoint decodes are bulk-built already.
    st.machines.compact();
    Ok(st)
}

/// The state without machines: revision, counters, definitions and
/// profiles (with their index), read whole — they are few.
/// The next dense machine id, and the change log's length at revision
/// `rev` (the engine's).
pub(super) fn load_counters(db: &dyn Backend, rev: u64) -> Result<(u32, LogLen)> {
    let next_id = match db.get(NEXT_ID_KEY)? {
        Some(b) => u32::from_be_bytes(b.as_slice().try_into().map_err(|_| Error::Corrupt {
            key: "s:next".into(),
            reason: "not 4 bytes".into(),
        })?),
        None => 0,
    };
    Ok((next_id, stored_len(db, rev)?))
}

pub(super) fn load_definitions(db: &dyn Backend) -> Result<State> {
    let rev = db.revision()?;
    let (next_id, log) = load_counters(db, rev)?;
    let mut st = State {
        rev,
        next_id,
        machines: Index::default(),
        profiles: BTreeMap::new(),
        profile_ids: HashMap::new(),
        profile_names: HashMap::new(),
        next_profile_id: 0,
        profile_index: Index::default(),
        params: BTreeMap::new(),
        validators: FastMap::default(),
        log,
        leases: super::leases::LeaseTable::load(db)?,
        changed: super::snapshot::Changed::since(rev),
    };
    for item in db.scan_prefix(&[PARAM_PREFIX]) {
        let (k, v) = item?;
        let def: ParamDef = decode(&k, &v)?;
        if let Ok(v) = jsonschema::validator_for(&def.schema) {
            st.validators.insert(def.name.clone(), Arc::new(v));
        }
        st.params.insert(def.name.clone(), def);
    }
    for p in load_profiles(db)?.into_values() {
        st.add_profile(p);
    }
    Ok(st)
}

/// Every stored profile, by name (the order their records are stored in).
fn load_profiles(db: &dyn Backend) -> Result<BTreeMap<String, Profile>> {
    let mut profiles = BTreeMap::new();
    for item in db.scan_prefix(&[PROFILE_PREFIX]) {
        let (k, v) = item?;
        let p: Profile = decode(&k, &v)?;
        profiles.insert(p.name.clone(), p);
    }
    Ok(profiles)
}

/// A machine record's id (from its key) and machine.
pub(super) fn machine_record(k: &[u8], v: &[u8]) -> Result<(u32, Machine)> {
    let id = machine_id_of(k).ok_or_else(|| Error::Corrupt {
        key: show_key(k),
        reason: "bad machine key".into(),
    })?;
    Ok((id, decode(k, v)?))
}

/// The [`Repair`] of a machine index read from a checkpoint: one key's
/// postings from every machine record, with the profiles as the records
/// hold them. It holds the engine weakly, so that the state never keeps a
/// closed or replaced engine (and its directory lock) alive.
pub(super) fn repair_from(db: &Arc<dyn Backend>) -> Repair {
    let db = Arc::downgrade(db);
    Arc::new(move |key: &Key| {
        let db = db.upgrade().ok_or("the engine is closed")?;
        let build = || -> Result<_> {
            let profiles = load_profiles(&*db)?;
            let mut out = KeyBuilder::new(key);
            for item in db.scan_prefix(MACHINE_PREFIX) {
                let (k, v) = item?;
                let (id, m) = machine_record(&k, &v)?;
                out.add(id, &machine_entries(&m, &profiles));
            }
            Ok(out.finish())
        };
        build().map_err(|e| e.to_string())
    })
}

/// Indexes every machine record from key `from` on into `st.machines`
/// (the whole fleet from [`MACHINE_PREFIX`]; a checkpoint passes the first
/// id it does not hold), and moves `st.next_id` past them.
pub(super) fn index_machines(db: &dyn Backend, st: &mut State, from: &[u8]) -> Result<()> {
    if db.scan(MACHINE_PREFIX, from).next().is_none() {
        return Ok(()); // nothing to index: no decoding thread to start
    }
    let mut next_id = st.next_id;
    // Decoding runs on a second thread while this one fills the index: the
    // two halves of a rebuild take about as long as each other.
    type Decoded = (u32, Entries, Vec<String>);
    let mut machines = std::mem::take(&mut st.machines);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Decoded>>>(4);
    let profiles = &st.profiles;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            let mut chunk = Vec::with_capacity(1024);
            for item in db.scan(MACHINE_PREFIX, from) {
                let decoded = item.and_then(|(k, v)| {
                    let (id, m) = machine_record(&k, &v)?;
                    let own = m.params.keys().cloned().collect();
                    Ok((id, machine_entries(&m, profiles), own))
                });
                match decoded {
                    Ok(d) => chunk.push(d),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
                if chunk.len() == 1024 && tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(chunk));
        });
        // A chunk's machines are new to the index: each key takes their
        // values sorted, at once (one by one, the adds took most of the
        // replay of an import's events).
        for chunk in rx {
            let chunk = chunk?;
            let mut bulk = Bulk::default();
            for (id, entries, own) in &chunk {
                bulk.object_with(*id, entries, own.iter().map(String::as_str));
                next_id = next_id.max(id + 1);
            }
            machines.insert_bulk(bulk);
        }
        Ok(())
    })?;
    st.machines = machines;
    st.next_id = next_id;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Machines of several shapes: shared and unique values, own params
    /// and none, with and without an address, meta and profiles.
    fn machine(i: usize) -> Machine {
        let mut m = Machine::new(format!("m-{:05}", (i * 7919) % 10_007));
        if !i.is_multiple_of(3) {
            m.address = format!("10.0.{}.{}", i / 256, i % 256);
        }
        m.profiles.push(format!("p{}", i % 5));
        if i.is_multiple_of(4) {
            m.profiles.push("p-extra".into());
        }
        m.params.insert("rack".into(), json!(i % 11));
        if i.is_multiple_of(2) {
            m.params.insert(format!("own/{}", i % 3), json!(i));
        }
        if i.is_multiple_of(6) {
            m.meta.insert("color".into(), format!("c{}", i % 4));
        }
        m
    }

    #[test]
    fn a_rebuild_indexes_each_machine_as_inserting_it_alone_does() {
        let s = Store::temporary().unwrap();
        for p in 0..5 {
            s.profiles().create(Profile::new(format!("p{p}"))).unwrap();
        }
        s.profiles().create(Profile::new("p-extra")).unwrap();
        // More machines than one chunk of the rebuild's decoding thread.
        let machines: Vec<Machine> = (0..2_500).map(machine).collect();
        s.machines().import(machines).unwrap();
        let db = s.backend();
        let rebuilt = load_state(&*db).unwrap();
        let mut one_by_one = Index::default();
        for item in db.scan(MACHINE_PREFIX, MACHINE_PREFIX) {
            let (k, v) = item.unwrap();
            let (id, m) = machine_record(&k, &v).unwrap();
            let own: Vec<&str> = m.params.keys().map(String::as_str).collect();
            one_by_one.insert(id, &machine_entries(&m, &rebuilt.profiles), &own);
        }
        assert_eq!(one_by_one.universe().len(), 2_500);
        assert!(
            rebuilt.machines == one_by_one,
            "{}",
            index_diff(&rebuilt.machines, &one_by_one)
        );
    }
}
