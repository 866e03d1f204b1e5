//! The [`Profiles`] handle, and how a profile's param change reaches the
//! machines that inherit from it (bitmap algebra, not a scan).
//!
//! Owns: profile records, the `global` profile's protection, and the index
//! change a profile write causes on machines. Must not: write machine
//! records (a profile change never rewrites a machine).

use roaring::RoaringBitmap;
use serde_json::{Map, Value};

use super::backend::Batch;
use super::layout::{from_json, named_key, to_json, PROFILE_PREFIX};
use super::list::{group_keys, shape, sort_key, window, ListOptions, Query};
use super::open::Store;
use super::patch;
use super::state::{profile_entries, Pending, State};
use super::write::{erase, record, Apply};
use crate::error::{Error, Result};
use crate::filter::{Filter, Key};
use crate::index::GroupCount;
use crate::index::{Defaults, ValueKey};
use crate::model::{Effective, Kind, Object, Profile, GLOBAL_PROFILE};
use crate::telemetry::WriteKind;

/// Profiles, addressed by name.
pub struct Profiles<'a> {
    pub(super) store: &'a Store,
}

impl Profiles<'_> {
    /// Creates a profile.
    pub fn create(&self, p: Profile) -> Result<Profile> {
        self.write_profile(None, move |_| Ok(to_json(&p)))
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str) -> Result<Profile> {
        self.store
            .state()
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(Kind::Profile, name))
    }

    /// Whether it exists.
    pub fn exists(&self, name: &str) -> bool {
        self.store.state().profiles.contains_key(name)
    }

    /// Every profile, by name.
    pub fn list_all(&self) -> Vec<Profile> {
        self.store.state().profiles.values().cloned().collect()
    }

    /// Replaces a profile (same Name).
    pub fn replace(&self, name: &str, p: Profile) -> Result<Profile> {
        let new = to_json(&p);
        let mut new = self.store.replan(new);
        self.write_profile(Some(name), move |_| new.take())
    }

    /// RFC 7396 merge patch.
    pub fn update(&self, name: &str, merge: &Value) -> Result<Profile> {
        self.modify(name, |doc| patch::apply_merge(doc, merge))
    }

    /// RFC 6902 patch, atomic.
    pub fn patch(&self, name: &str, ops: &Value) -> Result<Profile> {
        let ops = patch::parse_patch(ops)?;
        self.modify(name, |doc| patch::apply_patch(doc, &ops))
    }

    /// Reference update (drpcli `-r`).
    pub fn update_from(&self, name: &str, reference: &Value, desired: &Value) -> Result<Profile> {
        self.modify(name, |doc| patch::apply_reference(doc, reference, desired))
    }

    /// Sets param `key`.
    pub fn set_param(&self, name: &str, key: &str, value: Value) -> Result<Profile> {
        let mut value = self.store.replan(value);
        self.modify(name, |doc| {
            patch::params_of(doc)?.insert(key.to_string(), value.take()?);
            Ok(())
        })
    }

    /// Compare-and-set of param `key` (see
    /// [`Machines::set_param_if`](super::Machines::set_param_if)).
    pub fn set_param_if(
        &self,
        name: &str,
        key: &str,
        expected: Option<&Value>,
        value: Value,
    ) -> Result<Profile> {
        let default = self.store.state_for_write().default_of(key).cloned();
        let mut value = self.store.replan(value);
        self.modify(name, |doc| {
            patch::param_cas(doc, key, expected, value.take()?, default.as_ref())
        })
    }

    /// Removes param `key`; returns the removed value.
    pub fn remove_param(&self, name: &str, key: &str) -> Result<Option<Value>> {
        let mut removed = None;
        self.modify(name, |doc| {
            removed = patch::params_of(doc)?.shift_remove(key);
            Ok(())
        })?;
        Ok(removed)
    }

    /// Own params, or with `aggregate` with definition defaults filled in.
    pub fn params(&self, name: &str, aggregate: bool) -> Result<Map<String, Value>> {
        let st = self.store.state();
        let p = st
            .profiles
            .get(name)
            .ok_or_else(|| Error::not_found(Kind::Profile, name))?;
        Ok(if aggregate {
            Effective::own(&p.params).resolve(st.defaults())
        } else {
            p.params.clone()
        })
    }

    /// One param.
    pub fn get_param(&self, name: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        Ok(self.params(name, aggregate)?.get(key).cloned())
    }

    /// Deletes a profile no machine names (never `global`).
    pub fn delete(&self, name: &str) -> Result<Profile> {
        if name == GLOBAL_PROFILE {
            return Err(Error::invalid(
                "profile global",
                "the global profile cannot be deleted",
            ));
        }
        self.store.write_as(WriteKind::Profile, |st, _, log| {
            let old = st
                .profiles
                .get(name)
                .cloned()
                .ok_or_else(|| Error::not_found(Kind::Profile, name))?;
            let members = st.members(name);
            if !members.is_empty() {
                let shown: Vec<String> = members
                    .iter()
                    .take(5)
                    .map(|id| self.store.load_machine(id).map(|m| m.name))
                    .collect::<Result<_>>()?;
                return Err(Error::InUse {
                    profile: name.to_string(),
                    more: members.len() - shown.len() as u64,
                    machines: shown,
                });
            }
            let mut batch = Batch::default();
            erase(
                &mut batch,
                log,
                &named_key(PROFILE_PREFIX, name),
                name,
                &old,
            );
            let out = old.clone();
            let apply = Box::new(move |st: &mut State| {
                if let Some(id) = st.profile_ids.remove(&old.name) {
                    st.profile_names.remove(&id);
                    st.profile_index.remove(id, &profile_entries(&old), &[]);
                }
                st.profiles.remove(&old.name);
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Binds `filter` for profiles.
    pub fn prepare(&self, filter: &Filter) -> Result<Query> {
        let st = self.store.state();
        Ok(Query {
            kind: Kind::Profile,
            bound: filter.bind(Kind::Profile, &*st)?,
        })
    }

    /// How many profiles match.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        let q = self.prepare(filter)?;
        let st = self.store.state();
        Ok(st.profile_index.count(&q.bound, None, &*st))
    }

    /// How many matching profiles hold each value of `by[0]`, each group
    /// split by the next key (see [`Machines::group_count`](super::Machines::group_count)).
    pub fn group_count(&self, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        let keys = group_keys(Kind::Profile, by)?;
        let q = self.prepare(filter)?;
        let st = self.store.state();
        let ids = self.store.eval(&st, &q);
        Ok(st.profile_index.group_counts(&ids, &keys, &*st))
    }

    /// Matching profiles as JSON; by Name unless sorted otherwise.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        let q = self.prepare(filter)?;
        let st = self.store.state();
        let ids = self.store.eval(&st, &q);
        let key = sort_key(Kind::Profile, opts.sort.as_deref().unwrap_or("Name"))?;
        let ordered = st.profile_index.sorted(&ids, &key, &*st);
        Ok(window(ordered, opts)
            .into_iter()
            .filter_map(|id| st.profile_names.get(&id).and_then(|n| st.profiles.get(n)))
            .map(|p| {
                let eff = opts
                    .aggregate
                    .then(|| Effective::own(&p.params).resolve(st.defaults()));
                shape(to_json(p), eff, opts)
            })
            .collect())
    }

    fn modify(&self, name: &str, mut f: impl FnMut(&mut Value) -> Result<()>) -> Result<Profile> {
        self.write_profile(Some(name), |old| {
            let mut doc = to_json(old.ok_or_else(|| Error::not_found(Kind::Profile, name))?);
            f(&mut doc)?;
            Ok(doc)
        })
    }

    /// Creates (`name` None) or changes a profile, recomputing the effective
    /// params of the machines it reaches.
    fn write_profile(
        &self,
        name: Option<&str>,
        mut f: impl FnMut(Option<&Profile>) -> Result<Value>,
    ) -> Result<Profile> {
        self.store.write_as(WriteKind::Profile, |st, rev, log| {
            let old = match name {
                Some(n) => Some(
                    st.profiles
                        .get(n)
                        .cloned()
                        .ok_or_else(|| Error::not_found(Kind::Profile, n))?,
                ),
                None => None,
            };
            let p: Profile = from_json(Kind::Profile, f(old.as_ref())?)?;
            if old.is_none() && st.profiles.contains_key(&p.name) {
                p.check()?;
                return Err(Error::AlreadyExists {
                    kind: Kind::Profile,
                    key: p.name.clone(),
                });
            }
            let (p, plan) = plan_profile(
                self.store,
                st,
                &Pending::default(),
                old.as_ref(),
                p,
                rev,
                true,
            )?;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &named_key(PROFILE_PREFIX, &p.name),
                &p.name,
                &p,
                old.as_ref(),
            );
            let out = p.clone();
            let apply = Box::new(move |st: &mut State| apply_profile(st, old, p, plan));
            Ok((batch, apply as Apply, out))
        })
    }
}

/// Checks profile `p` (replacing `old`, if any) against the data model and
/// the definitions `pending` sees, sets its revision, and (with `index`)
/// plans the index change it causes on the machines it reaches. Shared by
/// single writes and bulk imports (where `pending` holds the write's earlier
/// definitions and profiles).
pub(super) fn plan_profile(
    store: &Store,
    st: &State,
    pending: &Pending,
    old: Option<&Profile>,
    mut p: Profile,
    rev: u64,
    index: bool,
) -> Result<(Profile, ProfilePlan)> {
    p.check()?;
    if let Some(o) = old.filter(|o| o.name != p.name) {
        return Err(Error::invalid(
            "profile Name",
            format!(
                "Name is the key and cannot change ({} → {})",
                o.name, p.name
            ),
        ));
    }
    st.check_params_in(pending, old.map(|o| &o.params), &p.params)?;
    p.revision = rev;
    // Machines whose effective params may change, decoded now (before
    // the state lock) for the rare ones that need their profile order.
    let plan = if index {
        let changed = changed_keys(old.map(|o| &o.params), &p.params);
        plan_profile_change(store, st, pending, &p, &changed)?
    } else {
        ProfilePlan::default()
    };
    Ok((p, plan))
}

/// The in-memory half of a profile write planned by [`plan_profile`].
pub(super) fn apply_profile(st: &mut State, old: Option<Profile>, p: Profile, plan: ProfilePlan) {
    match old {
        Some(o) => {
            let id = st.profile_ids[&o.name];
            let oe = profile_entries(&o);
            let ne = profile_entries(&p);
            st.profile_index
                .replace_entries(id, Some((&oe, Vec::new())), Some((&ne, Vec::new())));
            st.profiles.insert(p.name.clone(), p);
        }
        None => st.add_profile(p),
    }
    plan.apply(st);
}

fn changed_keys(old: Option<&Map<String, Value>>, new: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.and_then(|o| o.get(*k)) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    if let Some(o) = old {
        keys.extend(o.keys().filter(|k| !new.contains_key(*k)).cloned());
    }
    keys
}

/// The index changes a profile's param change causes, worked out as bitmap
/// algebra: for param `k` of profile `p`, the machines that take `k` from `p`
/// (or from what `p` falls back to) are `members(p) − own(k)`, less those
/// where another profile with `k` comes first. Only machines that hold `p`
/// and another profile with `k` need their profile order read.
#[derive(Default)]
pub(super) struct ProfilePlan {
    moves: Vec<(String, RoaringBitmap, Option<ValueKey>)>,
    singles: Vec<(String, u32, Option<ValueKey>)>,
}

fn plan_profile_change(
    store: &Store,
    st: &State,
    pending: &Pending,
    p: &Profile,
    changed: &[String],
) -> Result<ProfilePlan> {
    let mut plan = ProfilePlan {
        moves: Vec::new(),
        singles: Vec::new(),
    };
    let is_global = p.name == GLOBAL_PROFILE;
    let global = if is_global {
        Some(p)
    } else {
        pending.profile(st, GLOBAL_PROFILE)
    };
    for k in changed {
        let mut reach = if is_global {
            st.machines.universe().clone()
        } else {
            st.members(&p.name)
        };
        if let Some(own) = st.machines.own(k) {
            reach -= own;
        }
        if reach.is_empty() {
            continue;
        }
        // Machines another holder of `k` may outrank `p` on. `global` counts
        // as one for the machines that list it in their Profiles: there it
        // ranks at its place in the list, not last (docs/architecture §3).
        let mut overlap = RoaringBitmap::new();
        for q in pending.all_profiles(st) {
            if q.name != p.name && q.params.contains_key(k) {
                overlap |= &reach & &st.members(&q.name);
            }
        }
        reach -= &overlap;
        let fallback = global.and_then(|g| g.params.get(k));
        let new = if is_global {
            p.params.get(k)
        } else {
            p.params.get(k).or(fallback)
        };
        plan.moves.push((k.clone(), reach, new.map(ValueKey::of)));
        if is_global {
            // Every other profile outranks an implicit global, so the overlap
            // keeps its value, except where global is listed, maybe first.
            overlap &= st.members(GLOBAL_PROFILE);
        }
        for id in &overlap {
            let m = store.load_machine(id)?;
            // As the machine will resolve `k` once `p` is written.
            let with_p = |n: &str| {
                if n == p.name {
                    Some(&p.params)
                } else {
                    pending.profile(st, n).map(|q| &q.params)
                }
            };
            let v = Effective::of_machine(&m, with_p).get(k).map(ValueKey::of);
            plan.singles.push((k.clone(), id, v));
        }
    }
    Ok(plan)
}

impl ProfilePlan {
    fn apply(self, st: &mut State) {
        for (k, ids, v) in self.moves {
            st.machines.reassign(&Key::Param(k), &ids, v.as_ref());
        }
        for (k, id, v) in self.singles {
            let mut one = RoaringBitmap::new();
            one.insert(id);
            st.machines.reassign(&Key::Param(k), &one, v.as_ref());
        }
    }
}
