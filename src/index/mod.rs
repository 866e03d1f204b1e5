//! In-memory roaring-bitmap indexes and the planner that answers bound
//! filters with them (docs/architecture.md §4.3).
//!
//! Owns: postings from (key, type-canonical value) to bitmaps of dense object
//! ids, the ordered distinct values per key, bitmap evaluation of
//! [`Bound`] filters, counting without materialising the answer, and sorted
//! id walks for listing. Must not: read or write storage, decode documents,
//! or decide what a filter means — the reference evaluator in
//! [`crate::filter`] defines that, and property tests hold this module to it.
//!
//! Every bound predicate is answerable here (fields, `Profiles`, Meta and
//! effective params are all indexed), so the planner never falls back to
//! decoding documents.
//!
//! Defaults are virtual: a machine with no own, profile or `global` value
//! for param `k` is in no posting of `k`; a predicate that its definition's
//! default satisfies adds "every object without a value" (`U − has(k)`). So a
//! definition's default can change without touching any posting.

mod bulk;
mod codec;
mod keys;
mod memory;
mod posting;
mod value;
mod values;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Bound as RangeBound;

use roaring::RoaringBitmap;
use serde_json::Value;

use crate::filter::{Bound, BoundPred, Key, Ordinal, Test};
pub(crate) use bulk::{Bulk, EntrySink, Gathered, KeyRef};
pub(crate) use codec::{section_len, EncodeError, InFile, SectionWrite};
pub(crate) use keys::Repair;
pub(crate) use posting::Posting;
use value::NumKey;
pub(crate) use value::{Text, ValueKey};
use values::Values;

/// The index's hash maps: foldhash, seeded per map (keys are param names
/// and Meta keys from the store's own writers).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One indexed key: its distinct values in order, each with the objects that
/// hold it, and the objects that hold any value.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Postings {
    pub(crate) values: Values,
    pub(crate) has: RoaringBitmap,
}

/// What an object contributes to the index: `(key, value)` pairs.
pub(crate) type Entries = Vec<(Key, ValueKey)>;

/// Param defaults, as binding and evaluation need them.
pub(crate) trait Defaults {
    /// The definition's default for `name`.
    fn default_of(&self, name: &str) -> Option<&Value>;
    /// Every param name that has a default.
    fn with_defaults(&self) -> Vec<&str>;
}

/// The postings of one kind of object.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Index {
    universe: RoaringBitmap,
    keys: keys::Keys,
    /// Objects holding their own `Params[k]` (machines only): what makes a
    /// `global` change pure bitmap algebra.
    own: FastMap<String, RoaringBitmap>,
}

/// One key's postings, built from each object's entries: what a
/// [`Repair`] returns.
pub(crate) struct KeyBuilder {
    key: Key,
    set: bool,
    postings: Postings,
}

impl KeyBuilder {
    pub(crate) fn new(key: &Key) -> KeyBuilder {
        KeyBuilder {
            key: key.clone(),
            set: keys::is_set(key),
            postings: Postings::default(),
        }
    }

    /// Object `id`'s entries (those of other keys are passed over).
    pub(crate) fn add(&mut self, id: u32, entries: &Entries) {
        for (k, v) in entries {
            if *k == self.key {
                self.postings.add(v, id, self.set);
            }
        }
    }

    pub(crate) fn finish(mut self) -> Postings {
        self.postings.values.compact();
        self.postings
    }
}

impl Index {
    /// What a key whose checkpoint section fails its check is read as
    /// instead (see [`Repair`]).
    pub(crate) fn set_repair(&mut self, repair: Repair) {
        self.keys.set_repair(repair);
    }

    pub(crate) fn universe(&self) -> &RoaringBitmap {
        &self.universe
    }

    pub(crate) fn own(&self, param: &str) -> Option<&RoaringBitmap> {
        self.own.get(param)
    }

    /// Estimated heap bytes of the index (for the metrics: see
    /// [`memory`]): walks every distinct value once, decodes nothing.
    pub(crate) fn heap_bytes(&self) -> u64 {
        let own: usize = self
            .own
            .iter()
            .map(|(k, b)| memory::HASH_ENTRY + k.capacity() + memory::bitmap(b))
            .sum();
        (memory::bitmap(&self.universe) + self.keys.heap_bytes() + own) as u64
    }

    /// Packs the index's maps after a bulk build (see [`keys::Keys::compact`]).
    pub(crate) fn compact(&mut self) {
        self.keys.compact();
    }

    /// Objects whose `key` equals `value`; a key still encoded in a
    /// checkpoint is scanned, not decoded, by its first lookups
    /// ([`keys::Keys::find_each`]).
    pub(crate) fn lookup(&self, key: &Key, value: &ValueKey) -> Option<Cow<'_, Posting>> {
        self.keys.find(key, value)
    }

    /// [`lookup`](Self::lookup) of each of `values`, found together: in one
    /// scan of a key still encoded, in one walk of a packed one.
    pub(crate) fn lookup_each(&self, key: &Key, values: &[ValueKey]) -> Vec<Option<Posting>> {
        self.keys.find_each(key, values)
    }

    pub(crate) fn insert(&mut self, id: u32, entries: &[(Key, ValueKey)], own: &[&str]) {
        self.universe.insert(id);
        self.add_entries(id, entries, own);
    }

    /// A change of object `id`, which stays indexed: it no longer holds
    /// `gone` (and own params `gone_own`), and now holds `came` (`came_own`).
    pub(crate) fn update(
        &mut self,
        id: u32,
        (gone, gone_own): (&[(Key, ValueKey)], &[&str]),
        (came, came_own): (&[(Key, ValueKey)], &[&str]),
    ) {
        self.sub_entries(id, gone, gone_own);
        self.add_entries(id, came, came_own);
    }

    fn add_entries(&mut self, id: u32, entries: &[(Key, ValueKey)], own: &[&str]) {
        for (k, v) in entries {
            self.add(k, v, id);
        }
        for name in own {
            // Looked up first: a name's String is made once, not per object.
            match self.own.get_mut(*name) {
                Some(ids) => {
                    ids.insert(id);
                }
                None => {
                    self.own
                        .insert((*name).to_string(), RoaringBitmap::from_iter([id]));
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u32, entries: &[(Key, ValueKey)], own: &[&str]) {
        self.universe.remove(id);
        self.sub_entries(id, entries, own);
    }

    fn sub_entries(&mut self, id: u32, entries: &[(Key, ValueKey)], own: &[&str]) {
        for (k, v) in entries {
            self.sub(k, v, id);
        }
        for name in own {
            if let Some(b) = self.own.get_mut(*name) {
                b.remove(id);
                if b.is_empty() {
                    self.own.remove(*name);
                }
            }
        }
    }

    fn add(&mut self, k: &Key, v: &ValueKey, id: u32) {
        self.keys.add(k, v, id);
    }

    fn sub(&mut self, k: &Key, v: &ValueKey, id: u32) {
        self.keys.sub(k, v, id);
    }

    /// Moves `ids` from whatever value they hold for `key` to `new` (or to no
    /// value): bulk maintenance for profile param changes.
    pub(crate) fn reassign(&mut self, key: &Key, ids: &RoaringBitmap, new: Option<&ValueKey>) {
        if ids.is_empty() {
            return;
        }
        let p = self.keys.entry(key);
        if !p.has.is_disjoint(ids) {
            p.values.remove_ids(ids);
            p.has -= ids;
        }
        if let Some(v) = new {
            p.values.add_all(v, ids);
            p.has |= ids;
        }
        if p.values.is_empty() {
            self.keys.prune(key);
        }
    }

    /// Approximate number of objects `b` selects: the planner's ordering key.
    fn estimate(&self, b: &Bound, d: &dyn Defaults) -> u64 {
        let n = self.universe.len();
        match b {
            Bound::All => n,
            Bound::And(cs) => cs.iter().map(|c| self.estimate(c, d)).min().unwrap_or(n),
            Bound::Or(cs) => cs
                .iter()
                .map(|c| self.estimate(c, d))
                .fold(0u64, u64::saturating_add)
                .min(n),
            Bound::Not(c) => n.saturating_sub(self.estimate(c, d)),
            Bound::Pred(p) => self.estimate_pred(p, d),
        }
    }

    fn estimate_pred(&self, p: &BoundPred, d: &dyn Defaults) -> u64 {
        let n = self.universe.len();
        let post = self.keys.get(&p.key);
        let len = |v: &ValueKey| post.and_then(|p| p.values.get(v)).map_or(0, |b| b.len());
        match (&p.key, &p.test) {
            (Key::Profiles, Test::HasAll(names)) => names
                .iter()
                .map(|s| len(&ValueKey::str(s)))
                .min()
                .unwrap_or(n),
            (Key::Profiles, Test::HasAny(names)) => names
                .iter()
                .map(|s| len(&ValueKey::str(s)))
                .sum::<u64>()
                .min(n),
            (key, Test::Equals(alts)) => {
                let mut e: u64 = alts.iter().map(|v| len(&ValueKey::of(v))).sum();
                if let Key::Param(name) = key {
                    if d.default_of(name)
                        .is_some_and(|dv| p.test.matches_scalar(dv))
                    {
                        e += n - post.map_or(0, |p| p.has.len());
                    }
                }
                e.min(n)
            }
            _ => post.map_or(n, |p| p.has.len().max(n / 2)),
        }
    }

    /// The ids `b` selects within `within` (all objects when `None`).
    pub(crate) fn eval(
        &self,
        b: &Bound,
        within: Option<&RoaringBitmap>,
        d: &dyn Defaults,
    ) -> RoaringBitmap {
        match b {
            Bound::All => within.unwrap_or(&self.universe).clone(),
            Bound::And(cs) => {
                let mut acc: Option<RoaringBitmap> = None;
                for c in self.by_estimate(cs, d) {
                    let next = self.eval(c, acc.as_ref().or(within), d);
                    let empty = next.is_empty();
                    acc = Some(next);
                    if empty {
                        break;
                    }
                }
                acc.unwrap_or_else(|| within.unwrap_or(&self.universe).clone())
            }
            Bound::Or(cs) => {
                let mut acc = RoaringBitmap::new();
                for c in cs {
                    acc |= self.eval(c, within, d);
                }
                acc
            }
            Bound::Not(c) => {
                let base = within.unwrap_or(&self.universe);
                base - self.eval(c, Some(base), d)
            }
            Bound::Pred(p) => self.eval_pred(p, within, d),
        }
    }

    /// `|eval(b)|`, finishing with `intersection_len` arithmetic so that the
    /// last (largest) step is never materialised.
    pub(crate) fn count(&self, b: &Bound, within: Option<&RoaringBitmap>, d: &dyn Defaults) -> u64 {
        let base_len = || within.map_or(self.universe.len(), |w| w.len());
        match b {
            Bound::All => base_len(),
            Bound::And(cs) if !cs.is_empty() => {
                let ordered = self.by_estimate(cs, d);
                let (last, first) = ordered.split_last().expect("non-empty");
                if first.is_empty() {
                    return self.count(last, within, d);
                }
                let mut acc: Option<RoaringBitmap> = None;
                for c in first {
                    let next = self.eval(c, acc.as_ref().or(within), d);
                    if next.is_empty() {
                        return 0;
                    }
                    acc = Some(next);
                }
                self.count(last, acc.as_ref(), d)
            }
            Bound::Not(c) => base_len() - self.count(c, within, d),
            Bound::Pred(p) => self.count_pred(p, within, d),
            _ => self.eval(b, within, d).len(),
        }
    }

    fn by_estimate<'b>(&self, cs: &'b [Bound], d: &dyn Defaults) -> Vec<&'b Bound> {
        let mut v: Vec<(u64, &Bound)> = cs.iter().map(|c| (self.estimate(c, d), c)).collect();
        v.sort_by_key(|(e, _)| *e);
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// Count of one predicate by lengths alone for scalar keys: an object
    /// holds one value per scalar key, so the matching postings are disjoint
    /// and the count is the sum of their (clipped) lengths.
    fn count_pred(&self, p: &BoundPred, within: Option<&RoaringBitmap>, d: &dyn Defaults) -> u64 {
        if let (Key::Profiles, Test::HasAll(one) | Test::HasAny(one)) = (&p.key, &p.test) {
            // One profile: its member posting's length, nothing built.
            if let [name] = one.as_slice() {
                return self
                    .lookup(&Key::Profiles, &ValueKey::str(name))
                    .map_or(0, |m| m.len_within(within));
            }
        }
        if matches!(p.key, Key::Profiles | Key::ParamNames | Key::MetaKeys) {
            return self.eval_pred(p, within, d).len();
        }
        let post = self.keys.get(&p.key);
        let mut n = 0;
        if let Some(post) = post {
            for_each_matching(post, &p.test, |b| n += b.len_within(within));
        }
        if self.default_matches(p, d) {
            let base = within.map_or(self.universe.len(), |w| w.len());
            let has = post.map_or(0, |p| {
                within.map_or(p.has.len(), |w| w.intersection_len(&p.has))
            });
            n += base - has;
        }
        n
    }

    fn default_matches(&self, p: &BoundPred, d: &dyn Defaults) -> bool {
        match &p.key {
            Key::Param(name) => d.default_of(name).is_some_and(|v| p.test.matches_scalar(v)),
            _ => false,
        }
    }

    fn eval_pred(
        &self,
        p: &BoundPred,
        within: Option<&RoaringBitmap>,
        d: &dyn Defaults,
    ) -> RoaringBitmap {
        let base = within.unwrap_or(&self.universe);
        match &p.key {
            Key::Profiles => {
                let post = self.keys.get(&Key::Profiles);
                let members = |s: &str| -> RoaringBitmap {
                    post.and_then(|p| p.values.get(&ValueKey::str(s)))
                        .map(|m| m.and(base))
                        .unwrap_or_default()
                };
                set_test_owned(&p.test, base, members, || {
                    post.map(|p| {
                        p.values
                            .iter()
                            .filter_map(|(k, _)| match &*k {
                                ValueKey::Str(s) => Some(s.as_str().to_string()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default()
                })
            }
            Key::ParamNames => {
                let holders = |s: &str| -> RoaringBitmap {
                    if d.default_of(s).is_some() {
                        base.clone()
                    } else {
                        self.keys
                            .get(&Key::Param(s.to_string()))
                            .map(|p| &p.has & base)
                            .unwrap_or_default()
                    }
                };
                let names = || {
                    let mut n: Vec<String> = self
                        .keys
                        .names()
                        .filter_map(|k| match k {
                            Key::Param(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect();
                    n.extend(d.with_defaults().into_iter().map(str::to_string));
                    n.sort();
                    n.dedup();
                    n
                };
                set_test_owned(&p.test, base, holders, names)
            }
            Key::MetaKeys => {
                let holders = |s: &str| -> RoaringBitmap {
                    self.keys
                        .get(&Key::Meta(s.to_string()))
                        .map(|p| &p.has & base)
                        .unwrap_or_default()
                };
                let names = || {
                    self.keys
                        .names()
                        .filter_map(|k| match k {
                            Key::Meta(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect()
                };
                set_test_owned(&p.test, base, holders, names)
            }
            key => {
                let post = self.keys.get(key);
                let mut out = RoaringBitmap::new();
                if let Some(post) = post {
                    for_each_matching(post, &p.test, |b| b.add_to(&mut out, within));
                }
                if self.default_matches(p, d) {
                    match post {
                        Some(post) => out |= base - &post.has,
                        None => out |= base,
                    }
                }
                out
            }
        }
    }

    /// Calls `f(id, value)` for each of `ids` that holds a value of `key`
    /// (a scalar key: one value per object). Walks the key's values, never a
    /// document: how a membership stream names the machines it reports.
    pub(crate) fn each_value_within(
        &self,
        key: &Key,
        ids: &RoaringBitmap,
        mut f: impl FnMut(u32, &ValueKey),
    ) {
        let Some(post) = self.keys.get(key) else {
            return;
        };
        let mut left = ids.len();
        for (v, b) in post.values.iter() {
            if left == 0 {
                break;
            }
            for id in b.and(ids) {
                left = left.saturating_sub(1);
                f(id, &v);
            }
        }
    }

    /// `ids` in `key` order: by value, then objects without one.
    pub(crate) fn sorted(&self, ids: &RoaringBitmap, key: &Key, d: &dyn Defaults) -> Vec<u32> {
        let (groups, rest) = self.groups(ids, key, d);
        let mut out: Vec<u32> = Vec::with_capacity(ids.len() as usize);
        for (_, g) in groups {
            out.extend(g.iter());
        }
        out.extend(rest.iter());
        out
    }

    /// `ids` split by their value for `key`, in value order (a param's
    /// default counts as the value of the objects without one), and the
    /// objects left with no value.
    fn groups(
        &self,
        ids: &RoaringBitmap,
        key: &Key,
        d: &dyn Defaults,
    ) -> (Vec<(ValueKey, RoaringBitmap)>, RoaringBitmap) {
        let mut groups: Vec<(ValueKey, RoaringBitmap)> = Vec::new();
        let mut rest = ids.clone();
        if let Some(post) = self.keys.get(key) {
            for (v, b) in post.values.iter() {
                if rest.is_empty() {
                    break;
                }
                let g = b.and(&rest);
                if !g.is_empty() {
                    rest -= &g;
                    groups.push((v.into_owned(), g));
                }
            }
        }
        if let (Key::Param(name), false) = (key, rest.is_empty()) {
            if let Some(dv) = d.default_of(name) {
                let dk = ValueKey::of(dv);
                let g = std::mem::take(&mut rest);
                match groups.binary_search_by(|(v, _)| v.cmp(&dk)) {
                    Ok(i) => groups[i].1 |= g,
                    Err(i) => groups.insert(i, (dk, g)),
                }
            }
        }
        (groups, rest)
    }

    /// How many of `ids` hold each value of `keys[0]`, each group split
    /// again by the rest of `keys`: DRP's `group-by` with `range-only`.
    /// Objects with no value (and no default) count under `null`.
    pub(crate) fn group_counts(
        &self,
        ids: &RoaringBitmap,
        keys: &[Key],
        d: &dyn Defaults,
    ) -> Vec<GroupCount> {
        let Some((key, deeper)) = keys.split_first() else {
            return Vec::new();
        };
        let (groups, rest) = self.groups(ids, key, d);
        let mut out: Vec<GroupCount> = groups
            .into_iter()
            .map(|(v, g)| GroupCount {
                value: v.to_json(),
                count: g.len(),
                groups: self.group_counts(&g, deeper, d),
            })
            .collect();
        if !rest.is_empty() {
            let groups = self.group_counts(&rest, deeper, d);
            match out.first_mut() {
                // `null` sorts first: objects without a value join it.
                Some(first) if first.value.is_null() => {
                    first.count += rest.len();
                    first.groups = merge_groups(std::mem::take(&mut first.groups), groups);
                }
                _ => out.insert(
                    0,
                    GroupCount {
                        value: Value::Null,
                        count: rest.len(),
                        groups,
                    },
                ),
            }
        }
        out
    }
}

/// One value's count in a `group-by` answer, with its sub-groups when
/// grouped by more than one key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupCount {
    /// The value (`null` also stands for "no value").
    pub value: Value,
    /// How many objects hold it.
    pub count: u64,
    /// The same objects grouped by the next key, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupCount>,
}

/// Sums two value-ordered group lists (the `null` group of objects holding
/// null and of objects holding nothing).
fn merge_groups(a: Vec<GroupCount>, b: Vec<GroupCount>) -> Vec<GroupCount> {
    let mut out: Vec<GroupCount> = Vec::with_capacity(a.len() + b.len());
    let mut all: Vec<(ValueKey, GroupCount)> = a
        .into_iter()
        .chain(b)
        .map(|g| (ValueKey::of(&g.value), g))
        .collect();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    for (k, g) in all {
        match out.last_mut() {
            Some(last) if ValueKey::of(&last.value) == k => {
                last.count += g.count;
                last.groups = merge_groups(std::mem::take(&mut last.groups), g.groups);
            }
            _ => out.push(g),
        }
    }
    out
}

/// Set-key tests given "holders of element s, within base" and the list of
/// known elements.
fn set_test_owned<F, N>(test: &Test, base: &RoaringBitmap, holders: F, names: N) -> RoaringBitmap
where
    F: Fn(&str) -> RoaringBitmap,
    N: Fn() -> Vec<String>,
{
    match test {
        Test::HasAll(items) => {
            let mut acc: Option<RoaringBitmap> = None;
            for s in items {
                let h = holders(s);
                acc = Some(match acc {
                    Some(a) => a & h,
                    None => h,
                });
                if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                    break;
                }
            }
            acc.unwrap_or_else(|| base.clone())
        }
        Test::HasAny(items) => {
            let mut acc = RoaringBitmap::new();
            for s in items {
                acc |= holders(s);
            }
            acc
        }
        Test::AnyMatches(re) => {
            let mut acc = RoaringBitmap::new();
            for s in names().iter().filter(|s| re.is_match(s)) {
                acc |= holders(s);
            }
            acc
        }
        // Scalar tests on a set key do not bind.
        _ => RoaringBitmap::new(),
    }
}

/// Calls `f` with the posting of every distinct value of `post` that `test`
/// accepts, walking only the type segments and ranges that can match.
fn for_each_matching(post: &Postings, test: &Test, mut f: impl FnMut(&Posting)) {
    let vals = &post.values;
    match test {
        Test::Equals(alts) => {
            // `In a,a` or `3,3.0` name one posting twice; visit it once.
            let mut keys: Vec<ValueKey> = alts.iter().map(ValueKey::of).collect();
            keys.sort();
            keys.dedup();
            for k in &keys {
                if let Some(b) = vals.get(k) {
                    f(&b);
                }
            }
        }
        Test::Less(o, incl) => walk_ordinal(vals, o, None, Some((o, *incl)), &mut f),
        Test::Greater(o, incl) => walk_ordinal(vals, o, Some((o, *incl)), None, &mut f),
        Test::Between(lo, hi) => walk_ordinal(vals, lo, Some((lo, true)), Some((hi, true)), &mut f),
        Test::Matches(re) => {
            // Walk only the values that begin with one of the pattern's
            // prefixes; where the prefix alone decides the match, skip the
            // regex for the whole range.
            for MatchPrefix { prefix, decides } in match_prefixes(re.as_str()) {
                let start = ValueKey::str(&prefix);
                for (v, b) in vals.range(RangeBound::Included(&start), RangeBound::Unbounded) {
                    let ValueKey::Str(s) = &*v else { break };
                    let s = s.as_str();
                    if !s.starts_with(prefix.as_str()) {
                        break;
                    }
                    if decides || re.is_match(&s) {
                        f(&b);
                    }
                }
            }
        }
        // Set tests never reach scalar postings.
        _ => {}
    }
}

/// Walks the number segment with `num` bounds, the string segment with `text`
/// bounds, or (Address) every string parsed as an IP against `ip` bounds.
fn walk_ordinal(
    vals: &Values,
    shape: &Ordinal,
    lo: Option<(&Ordinal, bool)>,
    hi: Option<(&Ordinal, bool)>,
    f: &mut impl FnMut(&Posting),
) {
    if shape.ip.is_some() {
        let (first, past) = (ValueKey::str(""), ValueKey::Json("".into()));
        let strings = vals.range(RangeBound::Included(&first), RangeBound::Excluded(&past));
        for (v, b) in strings {
            let ValueKey::Str(s) = &*v else { continue };
            let Ok(ip) = s.as_str().parse::<std::net::IpAddr>() else {
                continue;
            };
            let ok_lo = lo.is_none_or(|(o, incl)| {
                o.ip.is_some_and(|l| same_family(l, ip) && if incl { ip >= l } else { ip > l })
            });
            let ok_hi = hi.is_none_or(|(o, incl)| {
                o.ip.is_some_and(|h| same_family(h, ip) && if incl { ip <= h } else { ip < h })
            });
            if ok_lo && ok_hi {
                f(&b);
            }
        }
        return;
    }
    let num = |o: &Ordinal| o.num.map(|n| ValueKey::Num(NumKey::new(n)));
    let text = |o: &Ordinal| o.text.as_deref().map(ValueKey::str);
    // Each type segment is walked only if every given bound has that type.
    for (conv, seg_lo, seg_hi) in [
        (
            &num as &dyn Fn(&Ordinal) -> Option<ValueKey>,
            ValueKey::Num(NumKey::new(f64::NEG_INFINITY)),
            ValueKey::Num(NumKey::new(f64::INFINITY)),
        ),
        (&text, ValueKey::str(""), ValueKey::Json("".into())),
    ] {
        let l = match lo {
            Some((o, incl)) => match conv(o) {
                Some(k) if incl => RangeBound::Included(k),
                Some(k) => RangeBound::Excluded(k),
                None => continue,
            },
            None => RangeBound::Included(seg_lo.clone()),
        };
        let h = match hi {
            Some((o, incl)) => match conv(o) {
                Some(k) if incl => RangeBound::Included(k),
                Some(k) => RangeBound::Excluded(k),
                None => continue,
            },
            None if matches!(seg_hi, ValueKey::Json(_)) => RangeBound::Excluded(seg_hi.clone()),
            None => RangeBound::Included(seg_hi.clone()),
        };
        if range_is_empty(&l, &h) {
            continue;
        }
        for (v, b) in vals.range(l.as_ref(), h.as_ref()) {
            // NaN-free JSON numbers only; strings in their own segment.
            if std::mem::discriminant(&*v) == std::mem::discriminant(&seg_lo) {
                f(&b);
            }
        }
    }
}

fn same_family(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn range_is_empty(l: &RangeBound<ValueKey>, h: &RangeBound<ValueKey>) -> bool {
    use RangeBound::*;
    match (l, h) {
        (Included(a), Included(b)) => a > b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

/// The literal text every match of an anchored pattern starts with (`^node-00`
/// gives `node-00`), or "" when there is none. Conservative: stops at the
/// first metacharacter and drops a literal that a quantifier follows.
/// A range of sorted string values (those beginning with `prefix`) that may
/// hold matches of a regex; `decides`: every value in it matches.
#[derive(Debug, PartialEq)]
struct MatchPrefix {
    prefix: String,
    decides: bool,
}

/// Most prefixes a pattern is split into (`^n[0-9][0-9]` gives 100).
const MAX_PREFIXES: u32 = 256;

/// The disjoint value ranges that can hold matches of `pattern`: one range
/// of every string (`""`, not deciding) unless the pattern is anchored at
/// the start and its literal prefixes are known (regex-syntax's extractor:
/// `^node-00[0-4]` → `node-000` … `node-004`). A prefix decides the match
/// when it is a whole match and the pattern asserts nothing else (no `$`,
/// no word boundary), as then every extension matches too.
fn match_prefixes(pattern: &str) -> Vec<MatchPrefix> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::Look;
    let everything = || {
        vec![MatchPrefix {
            prefix: String::new(),
            decides: false,
        }]
    };
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return everything();
    };
    let props = hir.properties();
    if !props.look_set_prefix().contains(Look::Start) {
        return everything();
    }
    let only_start = props.look_set().remove(Look::Start).is_empty();
    let mut extractor = Extractor::new();
    extractor
        .kind(ExtractKind::Prefix)
        .limit_total(MAX_PREFIXES as usize);
    let seq = extractor.extract(&hir);
    let Some(literals) = seq.literals() else {
        return everything();
    };
    let mut out: Vec<MatchPrefix> = Vec::with_capacity(literals.len());
    for lit in literals {
        let Ok(prefix) = std::str::from_utf8(lit.as_bytes()) else {
            return everything();
        };
        out.push(MatchPrefix {
            prefix: prefix.to_owned(),
            decides: lit.is_exact() && only_start,
        });
    }
    // Ranges must not overlap (counts add them up): a prefix inside an
    // earlier one's range is walked with it.
    out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    out.dedup_by(|later, kept| later.prefix.starts_with(kept.prefix.as_str()));
    if out.is_empty() {
        return everything();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(pattern: &str) -> Vec<(String, bool)> {
        match_prefixes(pattern)
            .into_iter()
            .map(|p| (p.prefix, p.decides))
            .collect()
    }

    #[test]
    fn prefixes() {
        let all = vec![(String::new(), false)];
        let node0 = |d| {
            (0..5)
                .map(|i| (format!("node-00{i}"), d))
                .collect::<Vec<_>>()
        };
        assert_eq!(ranges("^node-00[0-4]"), node0(true));
        // `$` or a word boundary: the prefix alone does not decide.
        assert_eq!(ranges("^node-00[0-4]$"), node0(false));
        assert_eq!(ranges("^node-00[0-4]\\b"), node0(false));
        assert_eq!(ranges("^node-00[0-9]+$").len(), 10);
        assert_eq!(ranges("node"), all);
        assert_eq!(ranges("(?m)^node"), all);
        // `c*` may match nothing: every value starting with "ab" matches.
        assert_eq!(ranges("^abc*"), vec![("ab".into(), true)]);
        assert_eq!(ranges("^abc+"), vec![("abc".into(), false)]);
        assert_eq!(ranges("^a.c"), vec![("a".into(), false)]);
        assert_eq!(ranges("^a|b"), all);
        assert_eq!(ranges("^ab\\.c"), vec![("ab.c".into(), true)]);
        // Overlapping prefixes collapse to the outer range.
        assert_eq!(ranges("^(ab|abc)"), vec![("ab".into(), true)]);
        assert_eq!(
            ranges("^(abc|ab)x"),
            vec![("abcx".into(), true), ("abx".into(), true)]
        );
        assert_eq!(ranges("^.*"), all);
    }
}
