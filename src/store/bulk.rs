//! Bulk writes: param definitions, profiles and machines upserted together
//! in ONE pipeline write — one revision, one batch, an event per object —
//! or, on the first object refused, nothing (`docs/architecture.md` §13).
//!
//! Owns: the order of a bulk write (definitions, then profiles, then
//! machines, each checked against the store with the write's earlier objects
//! laid over it: [`Pending`]) and the matching index change. Must not: plan
//! an object kind's write itself — it calls the planning the single-object
//! writes use ([`plan_def`], [`plan_profile`], [`plan_machines`]) — or read
//! import documents (see [`crate::transfer`]).

use std::sync::Arc;

use super::backend::Batch;
use super::layout::{named_key, PARAM_PREFIX, PROFILE_PREFIX};
use super::machines::{plan_machines, MachinePlan};
use super::open::Store;
use super::params::plan_def;
use super::profiles::{apply_profile, plan_profile, ProfilePlan};
use super::state::{Pending, State};
use super::write::{record, Prepare, Swap};
use crate::error::Error;
use crate::model::{Kind, Machine, ParamDef, Profile};
use crate::telemetry::WriteKind;
use crate::watch::Change;

/// Machines checked under one read of the state by [`Store::check_bulk`]
/// (writers wait for the read between chunks, not for the whole check).
const CHECK_CHUNK: usize = 10_000;

/// What one bulk write upserts, in writing order. An object whose key
/// (a definition's or profile's Name, a machine's Uuid) is stored already is
/// replaced; a machine without a Uuid replaces the machine of its Name, if
/// any, and is created with a new Uuid otherwise.
#[derive(Debug, Clone, Default)]
pub struct Bulk {
    /// Param definitions, written first.
    pub params: Vec<ParamDef>,
    /// Profiles, checked against the definitions above and the store's.
    pub profiles: Vec<Profile>,
    /// Machines, checked against the profiles and definitions above and the
    /// store's.
    pub machines: Vec<Machine>,
}

impl Bulk {
    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.params.len() + self.profiles.len() + self.machines.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a bulk write wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// Object `index` of the `kind` array was refused.
    #[error("{} #{index}: {source}", kind.plural())]
    Refused {
        /// The refused object's kind.
        kind: Kind,
        /// Its position in [`Bulk`]'s array of that kind.
        index: usize,
        /// Why.
        source: Error,
    },
    /// The store failed (storage error, stall, closed).
    #[error(transparent)]
    Store(#[from] Error),
}

/// A bulk write's in-memory half.
struct BulkPlan {
    params: Vec<(ParamDef, Arc<jsonschema::Validator>)>,
    profiles: Vec<(Option<Profile>, Profile, ProfilePlan)>,
    machines: Option<MachinePlan>,
}

impl BulkPlan {
    /// Definitions and profiles apply in place once committed, then the
    /// machines as their plan prepared them: beside the commit, on a copy
    /// of the machine index, only for a write without profiles (profile
    /// changes move machines' postings first; [`super::machines::plan_machines`]
    /// decides).
    fn prepare(self, st: &State) -> Swap {
        let machines = self.machines.map(|m| m.prepare(st));
        let (params, profiles) = (self.params, self.profiles);
        Box::new(move |st: &mut State| {
            for (d, v) in params {
                st.validators.insert(d.name.clone(), v);
                st.params.insert(d.name.clone(), d);
            }
            // In order: each profile's plan was made with the earlier ones
            // laid over the state, so applying them in turn keeps the index
            // exact.
            for (old, p, plan) in profiles {
                apply_profile(st, old, p, plan);
            }
            machines.and_then(|m| m(st))
        })
    }
}

impl Store {
    /// Upserts `bulk`'s definitions, profiles and machines as one atomic
    /// write (one revision, one batch, one change event per object): all of
    /// them or, on the first refused object, none ([`BulkError::Refused`]
    /// names it). Later objects are checked against earlier ones, so
    /// machines may name the write's profiles and values are checked
    /// against the write's definitions. Returns how many objects were
    /// written. Memory grows with the write: callers split very large sets
    /// ([`crate::transfer`] writes at most
    /// [`WRITE_OBJECTS`](crate::transfer::WRITE_OBJECTS) objects at a time).
    pub fn write_bulk(&self, bulk: Bulk) -> Result<usize, BulkError> {
        let n = bulk.len();
        if n == 0 {
            return Ok(0);
        }
        // `Kind::Job` until planning starts and once it has ended: an error
        // then is the store's, not an object's.
        let mut at = (Kind::Job, 0);
        let mut given = self.replan(bulk);
        let planned = self.write_as(WriteKind::Bulk, |st, rev, log| {
            let bulk = given.take()?;
            let mut batch = Batch::default();
            let plan = self.plan_bulk(st, rev, Some((&mut batch, log)), bulk, &mut at)?;
            Ok((
                batch,
                Box::new(move |st: &State| plan.prepare(st)) as Prepare,
                (),
            ))
        });
        match planned {
            Ok(()) => Ok(n),
            Err(source) if at.0 != Kind::Job => Err(BulkError::Refused {
                kind: at.0,
                index: at.1,
                source,
            }),
            Err(e) => Err(BulkError::Store(e)),
        }
    }

    /// Checks `bulk` as [`write_bulk`](Self::write_bulk) would, against the
    /// store as it is now, and writes nothing. Machines are checked in
    /// chunks, each under its own read of the state, so a check of a
    /// million machines does not hold writers back for its whole length;
    /// unlike a write, it does not check that machines' Names and Uuids are
    /// unique across chunks (the caller checks its document).
    pub fn check_bulk(&self, bulk: &Bulk) -> Result<(), BulkError> {
        let mut at = (Kind::Param, 0);
        let refused = |at: (Kind, usize), source| BulkError::Refused {
            kind: at.0,
            index: at.1,
            source,
        };
        let head = Bulk {
            params: bulk.params.clone(),
            profiles: bulk.profiles.clone(),
            machines: Vec::new(),
        };
        let st = self.state();
        let pending = self
            .plan_head(&st, st.rev + 1, None, head, &mut at)
            .map(|(pending, _, _)| pending)
            .map_err(|e| refused(at, e))?;
        drop(st);
        for (c, chunk) in bulk.machines.chunks(CHECK_CHUNK).enumerate() {
            let st = self.state();
            let mut i = 0;
            plan_machines(
                self,
                &st,
                &pending,
                st.rev + 1,
                None,
                chunk.to_vec(),
                true,
                &mut i,
            )
            .map_err(|e| refused((Kind::Machine, c * CHECK_CHUNK + i), e))?;
        }
        Ok(())
    }

    /// Plans a bulk write against `st`; `at` follows the object being
    /// planned (its kind and index), and is left at `Kind::Job` once all are.
    fn plan_bulk(
        &self,
        st: &State,
        rev: u64,
        mut out: Option<(&mut Batch, &mut Vec<Change>)>,
        mut bulk: Bulk,
        at: &mut (Kind, usize),
    ) -> crate::Result<BulkPlan> {
        let machines = std::mem::take(&mut bulk.machines);
        let (pending, params, profiles) = self.plan_head(
            st,
            rev,
            out.as_mut().map(|(b, l)| (&mut **b, &mut **l)),
            bulk,
            at,
        )?;
        let machines = if machines.is_empty() {
            None
        } else {
            *at = (Kind::Machine, 0);
            Some(plan_machines(
                self, st, &pending, rev, out, machines, true, &mut at.1,
            )?)
        };
        *at = (Kind::Job, 0);
        Ok(BulkPlan {
            params,
            profiles,
            machines,
        })
    }

    /// Plans a bulk write's definitions and profiles; returns them with the
    /// [`Pending`] they make for the machines that follow.
    #[allow(clippy::type_complexity)]
    fn plan_head(
        &self,
        st: &State,
        rev: u64,
        mut out: Option<(&mut Batch, &mut Vec<Change>)>,
        bulk: Bulk,
        at: &mut (Kind, usize),
    ) -> crate::Result<(
        Pending,
        Vec<(ParamDef, Arc<jsonschema::Validator>)>,
        Vec<(Option<Profile>, Profile, ProfilePlan)>,
    )> {
        let mut pending = Pending::default();
        let mut params = Vec::with_capacity(bulk.params.len());
        for (i, d) in bulk.params.into_iter().enumerate() {
            *at = (Kind::Param, i);
            if pending.validators.contains_key(&d.name) {
                return Err(twice(Kind::Param, &d.name));
            }
            let old = st.params.get(&d.name);
            let (mut d, validator) = plan_def(old, d)?;
            d.revision = rev;
            if let Some((batch, log)) = &mut out {
                record(
                    batch,
                    log,
                    &named_key(PARAM_PREFIX, &d.name),
                    &d.name,
                    &d,
                    old,
                );
            }
            let validator = Arc::new(validator);
            pending.validators.insert(d.name.clone(), validator.clone());
            params.push((d, validator));
        }
        let mut profiles = Vec::with_capacity(bulk.profiles.len());
        for (i, p) in bulk.profiles.into_iter().enumerate() {
            *at = (Kind::Profile, i);
            if pending.profiles.contains_key(&p.name) {
                return Err(twice(Kind::Profile, &p.name));
            }
            let old = st.profiles.get(&p.name).cloned();
            let (p, plan) = plan_profile(self, st, &pending, old.as_ref(), p, rev, out.is_some())?;
            if let Some((batch, log)) = &mut out {
                let key = named_key(PROFILE_PREFIX, &p.name);
                record(batch, log, &key, &p.name, &p, old.as_ref());
            }
            pending.profiles.insert(p.name.clone(), p.clone());
            profiles.push((old, p, plan));
        }
        Ok((pending, params, profiles))
    }
}

fn twice(kind: Kind, name: &str) -> Error {
    Error::invalid(
        format!("{kind} Name"),
        format!("{name:?} is given twice in one write"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::filter::Filter;

    fn machine(name: &str, profiles: &[&str]) -> Machine {
        let mut m = Machine::new(name);
        m.profiles = profiles.iter().map(|p| p.to_string()).collect();
        m
    }

    fn profile(name: &str, k: i64) -> Profile {
        let mut p = Profile::new(name);
        p.params.insert("k".into(), json!(k));
        p
    }

    #[test]
    fn one_write_one_revision_an_event_per_object_and_exact_indexes() {
        let s = Store::temporary().unwrap();
        s.params()
            .create(ParamDef::new("k", json!({"type": "integer", "default": 0})))
            .unwrap();
        s.profiles().create(profile("a", 1)).unwrap();
        s.profiles().create(profile("b", 2)).unwrap();
        let m1 = s.machines().create(machine("m1", &["a", "b"])).unwrap();
        s.machines().create(machine("m2", &["b"])).unwrap();
        let mut m3 = machine("m3", &[]);
        m3.params.insert("k".into(), json!(3));
        s.machines().create(m3).unwrap();
        let rev = s.revision();
        let mut w = s.watch(None, None, None).unwrap();

        // Profiles that overlap on `k` change together, and machines move
        // between them in the same write.
        let mut m1b = machine("m1", &["b"]);
        m1b.uuid = m1.uuid;
        let bulk = Bulk {
            params: vec![ParamDef::new("j", json!({"type": "string"}))],
            profiles: vec![profile("a", 10), profile("b", 20), profile("c", 30)],
            machines: vec![m1b, machine("m4", &["a", "c"]), machine("m5", &["c", "b"])],
        };
        assert_eq!(s.write_bulk(bulk).unwrap(), 7);
        assert_eq!(s.revision(), rev + 1);
        let events: Vec<_> = std::iter::from_fn(|| w.poll().unwrap()).collect();
        assert_eq!(events.len(), 7);
        assert!(events.iter().all(|e| e.revision == rev + 1));
        s.verify_indexes().unwrap();
        let count = |f: &str| s.machines().count(&Filter::parse(f).unwrap()).unwrap();
        assert_eq!(count("k Eq 20"), 2, "m1 and m2 by b");
        assert_eq!(count("k Eq 10"), 1, "m4 by a");
        assert_eq!(count("k Eq 30"), 1, "m5 by c");
        assert_eq!(count("k Eq 3"), 1, "m3's own");
    }

    #[test]
    fn later_objects_see_earlier_ones_and_a_refusal_writes_nothing() {
        let s = Store::temporary().unwrap();
        let rev = s.revision();
        let mut bad = profile("p", 1);
        bad.params.insert("j".into(), json!(7));
        let bulk = Bulk {
            params: vec![ParamDef::new("j", json!({"type": "string"}))],
            profiles: vec![profile("q", 1), bad],
            machines: vec![machine("m", &["p"])],
        };
        match s.write_bulk(bulk.clone()) {
            Err(BulkError::Refused {
                kind: Kind::Profile,
                index: 1,
                source: Error::Schema { param, .. },
            }) => assert_eq!(param, "j"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.check_bulk(&bulk),
            Err(BulkError::Refused {
                kind: Kind::Profile,
                index: 1,
                ..
            })
        ));
        assert_eq!(s.revision(), rev);
        assert!(!s.profiles().exists("q"));
        let mut good = bulk;
        good.profiles[1].params.insert("j".into(), json!("seven"));
        s.check_bulk(&good).unwrap();
        assert_eq!(s.revision(), rev, "a check writes nothing");
        s.write_bulk(good).unwrap();
        assert_eq!(s.machines().get("Name:m").unwrap().profiles, ["p"]);
        s.verify_indexes().unwrap();
    }
}
