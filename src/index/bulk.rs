//! Many new objects indexed in one go: an import's machines, a bulk write.
//!
//! Owns: the borrowed form of an index key ([`KeyRef`]), the sink an
//! object's entries are written to ([`EntrySink`]), and [`Bulk`], which
//! gathers new objects' entries by key so that each key is sorted and added
//! once ([`Index::insert_bulk`]). Must not: decide what an object's entries
//! are (the store does) or how a key stores its values (`keys`, `values`).
//!
//! An entry written to a [`Bulk`] copies neither its key's name nor the
//! object: the gathering borrows both, and a key is made once per key of
//! the write. Building owned [`Entries`] for each of 100,000 machines and
//! freeing them took about a third of an import's index work.

use super::posting::add_ids;
use super::{Entries, FastMap, Index, ValueKey};
use crate::filter::{Field, Key};

/// An index key, its name borrowed from the object it describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyRef<'a> {
    Field(Field),
    Profiles,
    ParamNames,
    Param(&'a str),
    MetaKeys,
    Meta(&'a str),
}

impl KeyRef<'_> {
    pub(crate) fn to_key(self) -> Key {
        match self {
            KeyRef::Field(f) => Key::Field(f),
            KeyRef::Profiles => Key::Profiles,
            KeyRef::ParamNames => Key::ParamNames,
            KeyRef::Param(p) => Key::Param(p.to_string()),
            KeyRef::MetaKeys => Key::MetaKeys,
            KeyRef::Meta(m) => Key::Meta(m.to_string()),
        }
    }
}

impl<'a> From<&'a Key> for KeyRef<'a> {
    fn from(k: &'a Key) -> KeyRef<'a> {
        match k {
            Key::Field(f) => KeyRef::Field(*f),
            Key::Profiles => KeyRef::Profiles,
            Key::ParamNames => KeyRef::ParamNames,
            Key::Param(p) => KeyRef::Param(p),
            Key::MetaKeys => KeyRef::MetaKeys,
            Key::Meta(m) => KeyRef::Meta(m),
        }
    }
}

/// Where an object's index entries are written.
pub(crate) trait EntrySink<'a> {
    fn entry(&mut self, key: KeyRef<'a>, value: ValueKey);
}

impl<'a> EntrySink<'a> for Entries {
    fn entry(&mut self, key: KeyRef<'a>, value: ValueKey) {
        self.push((key.to_key(), value));
    }
}

/// New objects' entries and own param names, gathered by key for
/// [`Index::insert_bulk`]: start each object with [`object`](Bulk::object),
/// then write its entries to the bulk.
#[derive(Default)]
pub(crate) struct Bulk<'a> {
    keys: Grouped<KeyRef<'a>, (ValueKey, u32)>,
    own: Grouped<&'a str, u32>,
    ids: Vec<u32>,
    /// The position of the object's next entry.
    at: usize,
}

impl<'a> Bulk<'a> {
    /// Starts new object `id`, which holds own params `own`; its entries
    /// follow. A bulk's ids are distinct.
    pub(crate) fn object(&mut self, id: u32, own: impl IntoIterator<Item = &'a str>) {
        self.ids.push(id);
        self.at = 0;
        for (at, name) in own.into_iter().enumerate() {
            self.own.push(at, name, id);
        }
    }

    /// New object `id` with its entries already worked out (`entries`,
    /// own params `own`): [`object`](Self::object), then each entry.
    pub(crate) fn object_with(
        &mut self,
        id: u32,
        entries: &'a [(Key, ValueKey)],
        own: impl IntoIterator<Item = &'a str>,
    ) {
        self.object(id, own);
        for (k, v) in entries {
            self.entry(KeyRef::from(k), v.clone());
        }
    }
}

impl<'a> EntrySink<'a> for Bulk<'a> {
    fn entry(&mut self, key: KeyRef<'a>, value: ValueKey) {
        // An entry before any object is a caller's bug: it goes to id 0,
        // which `object` never gave out.
        let id = self.ids.last().copied().unwrap_or(0);
        self.keys.push(self.at, key, (value, id));
        self.at += 1;
    }
}

impl<'a> Bulk<'a> {
    /// The objects gathered so far, owning their keys' names: what a
    /// write's planning threads gather is indexed after the commit, once
    /// the objects it borrowed from have moved on.
    pub(crate) fn gathered(self) -> Gathered {
        Gathered {
            keys: self
                .keys
                .groups
                .into_iter()
                .map(|(k, items)| (k.to_key(), items))
                .collect(),
            own: self
                .own
                .groups
                .into_iter()
                .map(|(name, ids)| (name.to_string(), ids))
                .collect(),
            ids: self.ids,
        }
    }
}

/// A [`Bulk`]'s objects by key, the keys owned ([`Bulk::gathered`]).
#[derive(Default)]
pub(crate) struct Gathered {
    keys: Vec<(Key, Vec<(ValueKey, u32)>)>,
    own: Vec<(String, Vec<u32>)>,
    ids: Vec<u32>,
}

impl Gathered {
    /// `self`, then `later`'s objects (whose ids are all larger).
    fn append(&mut self, later: Gathered) {
        fn merge<K: Eq + std::hash::Hash + Clone, T>(
            into: &mut Vec<(K, Vec<T>)>,
            from: Vec<(K, Vec<T>)>,
        ) {
            let mut at: FastMap<K, usize> = into
                .iter()
                .zip(0..)
                .map(|((k, _), i)| (k.clone(), i))
                .collect();
            for (k, mut items) in from {
                match at.get(&k) {
                    Some(&i) => into[i].1.append(&mut items),
                    None => {
                        at.insert(k.clone(), into.len());
                        into.push((k, items));
                    }
                }
            }
        }
        merge(&mut self.keys, later.keys);
        merge(&mut self.own, later.own);
        self.ids.extend(later.ids);
    }
}

impl Index {
    /// Indexes the objects of `bulk` ([`insert`](Self::insert) for many
    /// new objects): see [`insert_gathered`](Self::insert_gathered).
    pub(crate) fn insert_bulk(&mut self, bulk: Bulk<'_>) {
        self.insert_gathered(vec![bulk.gathered()]);
    }

    /// Indexes the objects of `parts`, each part's ids all larger than the
    /// one's before: each key's items are sorted and added at once, so a
    /// packed key's blocks are built again once per write rather than
    /// spliced per object (see [`super::values::Values::add_sorted`]).
    pub(crate) fn insert_gathered(&mut self, parts: Vec<Gathered>) {
        let mut parts = parts.into_iter();
        let mut all = parts.next().unwrap_or_default();
        for later in parts {
            all.append(later);
        }
        add_ids(&mut self.universe, all.ids.iter().copied());
        for (k, items) in all.keys {
            let mut items: Vec<(&ValueKey, u32)> = items.iter().map(|(v, id)| (v, *id)).collect();
            sort_by_value(&mut items);
            self.keys.add_sorted(&k, &items);
        }
        for (name, ids) in all.own {
            match self.own.get_mut(&name) {
                Some(b) => add_ids(b, ids.iter().copied()),
                None => {
                    self.own.insert(name, ids.into_iter().collect());
                }
            }
        }
    }
}

/// Sorts `items` by value, each value's ids in the order given or
/// ascending (a posting is a set: their order does not matter to it). A
/// key's values often come sorted (names and serial numbers given in
/// order) or are few (a rack, an OS): those cost a check, or a grouping by
/// hash and a sort of the distinct values; any other takes a sort of every
/// item (unstable, by value then id: the faster sort, and still the same
/// order every time).
fn sort_by_value(items: &mut Vec<(&ValueKey, u32)>) {
    if items.is_sorted_by(|a, b| a.0 <= b.0) {
        return;
    }
    let few = items.len() / 16 + 1;
    let mut of: FastMap<&ValueKey, usize> = FastMap::default();
    let mut groups: Vec<(&ValueKey, Vec<u32>)> = Vec::new();
    for &(v, id) in items.iter() {
        let g = *of.entry(v).or_insert_with(|| {
            groups.push((v, Vec::new()));
            groups.len() - 1
        });
        if groups.len() > few {
            sort_each(items);
            return;
        }
        groups[g].1.push(id);
    }
    groups.sort_unstable_by(|a, b| a.0.cmp(b.0));
    items.clear();
    for (v, ids) in groups {
        items.extend(ids.into_iter().map(|id| (v, id)));
    }
}

/// Sorts `items` by value then id, as `sort_unstable` would, comparing
/// mostly integers: each value's type, then its number's bits or 16 bytes
/// of its text past what every text of the key shares, decide wherever
/// they differ (a key's addresses, profile names or random UUIDs: a
/// comparison of two values through their enum and text took about three
/// times as long).
fn sort_each(items: &mut Vec<(&ValueKey, u32)>) {
    let shared = shared_text_len(items.iter().map(|(v, _)| *v));
    let mut keyed: Vec<(u8, u128, u32)> = items
        .iter()
        .zip(0u32..)
        .map(|((v, _), at)| {
            let (rank, prefix) = order_key(v, shared);
            (rank, prefix, at)
        })
        .collect();
    keyed.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| items[a.2 as usize].cmp(&items[b.2 as usize]))
    });
    *items = keyed.iter().map(|k| items[k.2 as usize]).collect();
}

/// How many leading bytes every text among `values` shares.
fn shared_text_len<'v>(values: impl Iterator<Item = &'v ValueKey>) -> usize {
    let mut first: Option<crate::index::value::TextRef<'v>> = None;
    let mut shared = usize::MAX;
    for v in values {
        let ValueKey::Str(t) = v else { continue };
        let text = t.as_str();
        match &first {
            None => {
                shared = text.len();
                first = Some(text);
            }
            Some(f) => {
                let same = f
                    .bytes()
                    .zip(text.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                shared = shared.min(same);
            }
        }
    }
    first.map_or(0, |_| shared)
}

/// Orders values as [`ValueKey`]'s `Ord` does wherever it differs: the
/// variant's rank (the enum's order), then a number's bits mapped so that
/// unsigned order is `f64::total_cmp`'s, or 16 bytes of a text after the
/// `shared` bytes every text begins with (padded with zeros, so a shorter
/// text that is a prefix of a longer one never sorts after it), or a JSON
/// text's first 16. Equal keys leave the order to the values.
fn order_key(v: &ValueKey, shared: usize) -> (u8, u128) {
    fn prefix(b: &[u8]) -> u128 {
        let mut head = [0u8; 16];
        let n = b.len().min(16);
        head[..n].copy_from_slice(&b[..n]);
        u128::from_be_bytes(head)
    }
    match v {
        ValueKey::Null => (0, 0),
        ValueKey::Bool(b) => (1, u128::from(*b)),
        ValueKey::Num(n) => {
            let bits = n.0 .0.to_bits();
            let ordered = match bits >> 63 {
                1 => !bits,
                _ => bits | 1 << 63,
            };
            (2, u128::from(ordered))
        }
        ValueKey::Str(t) => (
            3,
            prefix(t.as_str().as_bytes().get(shared..).unwrap_or(&[])),
        ),
        ValueKey::Json(j) => (4, prefix(j.as_bytes())),
    }
}

/// Items grouped by key, in the order keys first appear. The objects of one
/// write mostly list the same keys in the same order, so each position
/// remembers the group its last key went to: an entry costs a comparison,
/// and a hash only where the keys differ.
struct Grouped<K, T> {
    groups: Vec<(K, Vec<T>)>,
    of: FastMap<K, usize>,
    hint: Vec<usize>,
}

impl<K, T> Default for Grouped<K, T> {
    fn default() -> Self {
        Grouped {
            groups: Vec::new(),
            of: FastMap::default(),
            hint: Vec::new(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash, T> Grouped<K, T> {
    /// Adds `item` under `k`, the key at position `at` of its object
    /// (positions come in order from 0).
    fn push(&mut self, at: usize, k: K, item: T) {
        let g = match self.hint.get(at) {
            Some(&g) if self.groups[g].0 == k => g,
            _ => {
                let groups = &mut self.groups;
                let g = *self.of.entry(k).or_insert_with(|| {
                    groups.push((k, Vec::new()));
                    groups.len() - 1
                });
                match self.hint.get_mut(at) {
                    Some(h) => *h = g,
                    None => self.hint.push(g),
                }
                g
            }
        };
        self.groups[g].1.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sorted(values: &[ValueKey]) -> Vec<(ValueKey, u32)> {
        let mut items: Vec<(&ValueKey, u32)> = values.iter().zip(0..).collect();
        sort_by_value(&mut items);
        items.into_iter().map(|(v, id)| (v.clone(), id)).collect()
    }

    /// A stable sort by value: each value's ids as given (ascending).
    fn expected(values: &[ValueKey]) -> Vec<(ValueKey, u32)> {
        let mut items: Vec<(ValueKey, u32)> = values.iter().cloned().zip(0..).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }

    #[test]
    fn sorted_few_and_many_values_sort_like_a_full_sort() {
        let n = 1000u32;
        // In order already; few values (racks); mostly distinct (names out
        // of order); few values, then a run of distinct ones past the cut.
        let in_order: Vec<ValueKey> = (0..n).map(|i| ValueKey::str(&format!("n{i:05}"))).collect();
        let racks: Vec<ValueKey> = (0..n)
            .map(|i| ValueKey::of(&((i * 7) % 13).into()))
            .collect();
        let shuffled: Vec<ValueKey> = (0..n)
            .map(|i| ValueKey::str(&format!("n{:05}", (i * 389) % n)))
            .collect();
        let mixed: Vec<ValueKey> = (0..n)
            .map(|i| match i < n / 2 {
                true => ValueKey::of(&(i % 3).into()),
                false => ValueKey::str(&format!("v{}", n - i)),
            })
            .collect();
        for values in [in_order, racks, shuffled, mixed] {
            assert_eq!(sorted(&values), expected(&values));
        }
    }

    /// The full sort's integer keys order every type as `ValueKey` does:
    /// texts alike in their first 16 bytes, one a prefix of another, a
    /// zero byte, UUIDs beside plain text, numbers of both signs.
    #[test]
    fn the_full_sort_orders_values_as_their_keys_do() {
        let mut values: Vec<ValueKey> = vec![
            ValueKey::Null,
            ValueKey::Bool(true),
            ValueKey::Bool(false),
            ValueKey::str("ab"),
            ValueKey::str("ab\0"),
            ValueKey::str("a"),
            ValueKey::str(""),
            ValueKey::str("0123456789abcdef-zz"),
            ValueKey::str("0123456789abcdef-aa"),
            ValueKey::str("0123456789abcdef"),
            ValueKey::uuid(uuid::Uuid::from_u128(7)),
            ValueKey::uuid(uuid::Uuid::from_u128(u128::MAX - 7)),
            ValueKey::str("00000000-0000-0000-0000-000000000007x"),
            ValueKey::str("00000000-0000-0000-0000-00000000000"),
            ValueKey::of(&json!([1, 2])),
            ValueKey::of(&json!({"b": 1})),
        ];
        for f in [
            -1e300,
            -2.5,
            -0.0,
            0.0,
            1e-300,
            3.0,
            1e300,
            f64::MIN,
            f64::MAX,
        ] {
            values.push(ValueKey::of(&json!(f)));
        }
        for i in -3i64..3 {
            values.push(ValueKey::of(&json!(i)));
        }
        // Each value several times, scattered, past the few-values cut.
        let many: Vec<ValueKey> = (0..values.len() * 40)
            .map(|i| values[(i * 7) % values.len()].clone())
            .chain((0..2000).map(|i| ValueKey::str(&format!("10.0.{}.{}", i % 7, (i * 13) % 255))))
            .collect();
        assert_eq!(sorted(&many), expected(&many));
        // Texts that share their first 20 bytes, one ending there.
        let profiles: Vec<ValueKey> = (0..3000)
            .map(|i| match i % 500 {
                0 => ValueKey::str("Profiles Eq cluster-"),
                _ => ValueKey::str(&format!("Profiles Eq cluster-{}", (i * 389) % 1000)),
            })
            .collect();
        assert_eq!(sorted(&profiles), expected(&profiles));
    }

    #[test]
    fn a_bulk_indexes_like_inserting_each_object() {
        let objects: Vec<(u32, Entries, Vec<&str>)> = (0..300u32)
            .map(|id| {
                let mut e = Entries::new();
                e.push((
                    Key::Field(Field::Name),
                    ValueKey::str(&format!("m{}", 299 - id)),
                ));
                e.push((Key::Param("rack".into()), ValueKey::of(&(id % 7).into())));
                if id % 2 == 0 {
                    // Keys that differ by position between objects.
                    e.push((Key::Meta("icon".into()), ValueKey::str("x")));
                }
                e.push((Key::Profiles, ValueKey::str(&format!("p{}", id % 3))));
                let own = if id % 5 == 0 { vec!["rack"] } else { vec![] };
                (id * 3 + 1, e, own)
            })
            .collect();
        let mut one_by_one = Index::default();
        let mut bulk_index = Index::default();
        let mut bulk = Bulk::default();
        for (id, e, own) in &objects {
            one_by_one.insert(*id, e, own);
            bulk.object(*id, own.iter().copied());
            for (k, v) in e {
                bulk.entry(KeyRef::from(k), v.clone());
            }
        }
        bulk_index.insert_bulk(bulk);
        assert_eq!(bulk_index, one_by_one);
        // Objects in another order index the same.
        let mut reversed = Index::default();
        let mut bulk = Bulk::default();
        for (id, e, own) in objects.iter().rev() {
            bulk.object(*id, own.iter().copied());
            for (k, v) in e {
                bulk.entry(KeyRef::from(k), v.clone());
            }
        }
        reversed.insert_bulk(bulk);
        assert_eq!(reversed, one_by_one);
    }
}
