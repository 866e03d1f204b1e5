//! One key's distinct values in order, each with the ids holding it.
//!
//! Owns: how a key's values sit in memory, the ordered reads (a value,
//! a range, all of them) and writes (an id in, out, many out) that both
//! forms answer alike, and the bytes of a block, which a checkpoint
//! carries as they are ([`Values::blocks`], [`Values::from_blocks`], which
//! checks them). Must not: know keys or queries, or how a checkpoint
//! frames a key's section (`codec`).
//!
//! Two forms, chosen when a key is built in bulk (a rebuild, an import, a
//! key decoded from a checkpoint: [`Values::from_sorted`]):
//!
//! - **A B-tree** of value and posting, for keys whose values many objects
//!   share (Profiles, racks, booleans) and for small keys: a lookup is one
//!   tree search, and a posting is borrowed in place.
//! - **Packed blocks**, for a key of at least [`PACK_MIN`] values nearly all
//!   held by one object each: Name, Uuid, Address, serial numbers. A tree
//!   entry costs a 24-byte value key and a 16-byte posting in nodes about
//!   five sixths full, some 48 bytes per machine per key, which was most of
//!   the index. A block holds up to [`BLOCK_MAX`] values front-coded
//!   (bytes shared with the previous value's encoding, then the rest) each
//!   with a varint id: `node-0001234` costs about 6 bytes, a UUID about 20.
//!   A lookup finds the block in a small tree by its first value and
//!   decodes up to a block's values; a write decodes and re-encodes one
//!   block (a few µs), splitting it when it grows past [`BLOCK_MAX`].
//!
//! A key keeps its form until it is built again: a fleet created through
//! the API or imported is packed by the next checkpoint (from its copy:
//! [`Values::repacked`]), open or rebuild. Packing a growing tree as it
//! grows would make every later write of a bulk build a block re-encode
//! instead of a tree insert. One exception: a new key whose first bulk
//! add brings enough values held one each and ascending with their ids
//! (an import's names) is packed from the start, since its later values
//! append blocks. Both forms answer
//! every read and write the same, so the form is memory and speed only.
//! Equality is by content, never by form.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::ops::Bound as RangeBound;
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::value::{NumKey, Text, ValueRef};
use super::{Posting, ValueKey};

/// A key with fewer values stays a tree.
pub(crate) const PACK_MIN: usize = 1024;
/// Values per block as built; a block is split when it grows past
/// [`BLOCK_MAX`].
const BLOCK_FILL: usize = 48;
pub(crate) const BLOCK_MAX: usize = 2 * BLOCK_FILL;

/// A value and its posting as a read yields them: borrowed from a tree,
/// made on the spot from a block (a single id is two words; a shared
/// posting is borrowed from the block there too).
pub(crate) type Item<'a> = (Cow<'a, ValueKey>, Cow<'a, Posting>);

/// See the module doc.
#[derive(Clone)]
pub(crate) enum Values {
    Tree(BTreeMap<ValueKey, Posting>),
    Packed(Packed),
}

impl Default for Values {
    fn default() -> Values {
        Values::Tree(BTreeMap::new())
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Values) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Values {
    /// The form a key of these values (ascending, distinct) is best held
    /// in (see the module doc).
    pub(crate) fn from_sorted(values: Vec<(ValueKey, Posting)>) -> Values {
        let single = values
            .iter()
            .filter(|(_, p)| matches!(p, Posting::One(_)))
            .count();
        if packs(values.len(), single) {
            Values::Packed(Packed::from_sorted(values))
        } else {
            Values::Tree(values.into_iter().collect())
        }
    }

    /// A packed copy of a tree whose values call for packed blocks (see
    /// the module doc): one a bulk build that was not a rebuild (an
    /// import, writes through the API) left growing as a tree. `None` for
    /// any other key.
    pub(crate) fn repacked(&self) -> Option<Values> {
        let Values::Tree(t) = self else {
            return None;
        };
        if t.len() < PACK_MIN {
            return None;
        }
        let single = t.values().filter(|p| matches!(p, Posting::One(_))).count();
        packs(t.len(), single).then(|| {
            let entries = t.iter().map(|(v, p)| (v.clone(), p.clone())).collect();
            Values::Packed(Packed::from_sorted(entries))
        })
    }

    /// A packed key's blocks in order, as a checkpoint carries them (a
    /// tree has none: `None`).
    pub(crate) fn blocks(&self) -> Option<(usize, impl Iterator<Item = BlockParts<'_>>)> {
        let Values::Packed(p) = self else {
            return None;
        };
        let parts = p.blocks.values().map(|b| BlockParts {
            len: b.len,
            bytes: &b.bytes,
            many: &b.many,
        });
        Some((p.blocks.len(), parts))
    }

    /// A packed key from the blocks a checkpoint carried, each checked to
    /// be exactly as [`Block::build`] writes one (bytes that parse, values
    /// valid, ascending across blocks and front-coded as far as they share
    /// bytes): the lookups compare bytes and rely on it. `Err` says what
    /// is wrong.
    pub(crate) fn from_blocks(
        blocks: Vec<(u16, Box<[u8]>, Vec<Posting>)>,
    ) -> Result<Values, String> {
        let mut packed = Packed::default();
        let mut last: Vec<u8> = Vec::new();
        for (i, (len, bytes, many)) in blocks.into_iter().enumerate() {
            let mut first = None;
            let walked = walk_block(&bytes, many.len(), |value, _| {
                if first.is_some() {
                    return true; // the walk checks the order within a block
                }
                first = Some(decode_value(value));
                last.is_empty() || cmp_encoded(&last, value).is_lt()
            })
            .map_err(|why| format!("block {i}: {why}"))?;
            let Some((count, end)) = walked else {
                return Err(format!("block {i} is empty"));
            };
            if count != len || usize::from(len) > BLOCK_MAX {
                return Err(format!("block {i} holds {count} values, says {len}"));
            }
            last = end;
            let first = first.unwrap_or(ValueKey::Null);
            packed.len += usize::from(len);
            packed
                .blocks
                .insert(first, Arc::new(Block { bytes, many, len }));
        }
        Ok(Values::Packed(packed))
    }

    /// Held again in the form its values now call for, packed full.
    pub(crate) fn compact(&mut self) {
        let all: Vec<(ValueKey, Posting)> = match std::mem::take(self) {
            Values::Tree(t) => t.into_iter().collect(),
            Values::Packed(p) => p.into_entries(),
        };
        *self = Values::from_sorted(all);
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Values::Tree(t) => t.len(),
            Values::Packed(p) => p.len,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, v: &ValueKey) -> Option<Cow<'_, Posting>> {
        match self {
            Values::Tree(t) => t.get(v).map(Cow::Borrowed),
            Values::Packed(p) => p.get(v),
        }
    }

    /// [`get`](Self::get) of each of `values`, answered in their order. A
    /// packed key is walked in value order: each block the values land in
    /// is found and scanned once for all of them (an import's Names and
    /// Uuids: a tree search and a block scan apiece, one at a time).
    pub(crate) fn get_each(&self, values: &[ValueKey]) -> Vec<Option<Cow<'_, Posting>>> {
        let Values::Packed(p) = self else {
            return values.iter().map(|v| self.get(v)).collect();
        };
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_unstable_by(|&a, &b| values[a].cmp(&values[b]));
        let sorted: Vec<&ValueKey> = order.iter().map(|&i| &values[i]).collect();
        let mut out = vec![None; values.len()];
        for (i, found) in order.into_iter().zip(p.get_sorted(&sorted)) {
            out[i] = found;
        }
        out
    }

    /// Every value in order.
    pub(crate) fn iter(&self) -> Range<'_> {
        self.range(RangeBound::Unbounded, RangeBound::Unbounded)
    }

    /// Every value in order with its posting, as [`iter`](Self::iter)
    /// yields them, but borrowed: a packed value is read from its block's
    /// encoding in place, with no [`ValueKey`] built for it. Writing a
    /// checkpoint walks every value of every key: building each value took
    /// most of the time of encoding a packed key.
    pub(crate) fn for_each(&self, mut f: impl FnMut(ValueRef<'_>, &Posting)) {
        match self {
            Values::Tree(t) => t.iter().for_each(|(v, p)| f(v.view(), p)),
            Values::Packed(p) => p.blocks.values().for_each(|b| b.for_each(&mut f)),
        }
    }

    /// The values between `lo` and `hi`, in order.
    pub(crate) fn range(&self, lo: RangeBound<&ValueKey>, hi: RangeBound<&ValueKey>) -> Range<'_> {
        match self {
            Values::Tree(t) => Range::Tree(t.range::<ValueKey, _>((lo, hi))),
            Values::Packed(p) => Range::Packed(p.range(lo, hi)),
        }
    }

    /// `id` holds `v`.
    pub(crate) fn add(&mut self, v: &ValueKey, id: u32) {
        match self {
            Values::Tree(t) => match t.get_mut(v) {
                Some(post) => post.insert(id),
                None => {
                    t.insert(v.clone(), Posting::One(id));
                }
            },
            Values::Packed(p) => p.add(v, id),
        }
    }

    /// Each `(v, id)` of `items` (in order of value, then id): `id` holds
    /// `v`. On packed blocks, each block the items land in is decoded and
    /// built again once, where [`add`](Self::add) splices each value in
    /// alone (an import's names and UUIDs: a block scan apiece).
    pub(crate) fn add_sorted(&mut self, items: &[(&ValueKey, u32)]) {
        match self {
            Values::Tree(t) if t.is_empty() && arrive_in_order(items) => {
                *self = Values::Packed(Packed::from_sorted(
                    items
                        .iter()
                        .map(|(v, id)| ((*v).clone(), Posting::One(*id)))
                        .collect(),
                ));
            }
            Values::Tree(t) => {
                // One search a value: a value new to the key (every one of
                // an import's Names) is placed where the search ended.
                for run in items.chunk_by(|a, b| a.0 == b.0) {
                    match t.entry(run[0].0.clone()) {
                        Entry::Occupied(mut post) => {
                            post.get_mut().extend(run.iter().map(|(_, id)| *id))
                        }
                        Entry::Vacant(slot) => {
                            slot.insert(posting_of(run));
                        }
                    }
                }
            }
            Values::Packed(p) => p.add_sorted(items),
        }
    }

    /// `id` no longer holds `v`.
    pub(crate) fn sub(&mut self, v: &ValueKey, id: u32) {
        match self {
            Values::Tree(t) => {
                if t.get_mut(v).is_some_and(|post| post.remove(id)) {
                    t.remove(v);
                }
            }
            Values::Packed(p) => {
                if !p.sub_single(v, id) {
                    p.update(v, |post| {
                        if post.as_mut().is_some_and(|post| post.remove(id)) {
                            *post = None;
                        }
                    });
                }
            }
        }
    }

    /// Every one of `ids` holds `v` (which they held no other value of).
    pub(crate) fn add_all(&mut self, v: &ValueKey, ids: &RoaringBitmap) {
        match self {
            Values::Tree(t) => match t.get_mut(v) {
                Some(post) => post.insert_all(ids),
                None => {
                    if let Some(new) = Posting::from_bitmap(ids.clone()) {
                        t.insert(v.clone(), new);
                    }
                }
            },
            Values::Packed(p) => p.update(v, |post| match post {
                Some(post) => post.insert_all(ids),
                None => *post = Posting::from_bitmap(ids.clone()),
            }),
        }
    }

    /// None of `ids` holds any value.
    pub(crate) fn remove_ids(&mut self, ids: &RoaringBitmap) {
        match self {
            Values::Tree(t) => t.retain(|_, post| !post.remove_all(ids)),
            Values::Packed(p) => p.remove_ids(ids),
        }
    }

    /// Estimated heap bytes of the form itself and of its values (the
    /// rules are [`super::memory`]'s).
    pub(crate) fn heap_bytes(&self) -> usize {
        use super::memory::{btree, posting, value};
        use std::mem::size_of;
        match self {
            Values::Tree(t) => {
                btree(t.len(), size_of::<(ValueKey, Posting)>())
                    + t.iter().map(|(v, p)| value(v) + posting(p)).sum::<usize>()
            }
            Values::Packed(p) => {
                let blocks: usize = p
                    .blocks
                    .iter()
                    .map(|(first, b)| {
                        value(first)
                            + b.bytes.len()
                            + b.many.capacity() * size_of::<Posting>()
                            + b.many.iter().map(posting).sum::<usize>()
                    })
                    .sum();
                btree(p.blocks.len(), size_of::<(ValueKey, Arc<Block>)>())
                    + p.blocks.len() * (size_of::<Block>() + 2 * size_of::<usize>())
                    + blocks
            }
        }
    }
}

/// The posting of a run of one value's items.
fn posting_of(run: &[(&ValueKey, u32)]) -> Posting {
    let mut post = Posting::One(run[0].1);
    post.extend(run[1..].iter().map(|(_, id)| *id));
    post
}

/// Whether a key's first `items` call for packed blocks at once: enough
/// values, each held by one object, ascending as the objects' ids do
/// (names, serial numbers, sequential UUIDs as an import numbers its
/// machines). Later values of such a key likely ascend past these, and
/// appending them to blocks costs less than growing a tree, which would be
/// packed by the next checkpoint anyway. A key whose values come in
/// another order (random UUIDs, addresses) stays a tree until then: its
/// later values would land in every block.
fn arrive_in_order(items: &[(&ValueKey, u32)]) -> bool {
    items.len() >= PACK_MIN && items.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
}

/// At most this many items landing in one block are spliced in one by one
/// ([`Block::insert_single`]) rather than the block built again.
const SPLICE_MOST: usize = 4;

/// Whether `n` values, `single` of them held by one object, are packed.
fn packs(n: usize, single: usize) -> bool {
    n >= PACK_MIN && single * 10 >= n * 9
}

/// The values of a range, in order: [`Values::range`].
pub(crate) enum Range<'a> {
    Tree(std::collections::btree_map::Range<'a, ValueKey, Posting>),
    Packed(PackedRange<'a>),
}

impl<'a> Iterator for Range<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        match self {
            Range::Tree(r) => r.next().map(|(k, p)| (Cow::Borrowed(k), Cow::Borrowed(p))),
            Range::Packed(r) => r.next(),
        }
    }
}

/// A range of packed values: the blocks from the one `lo` is in, each
/// decoded entry by entry; values below `lo` skipped, the walk ended at the
/// first above `hi`.
pub(crate) struct PackedRange<'a> {
    blocks: std::collections::btree_map::Range<'a, ValueKey, Arc<Block>>,
    block: Option<BlockIter<'a>>,
    /// `Unbounded` once a value at or past it was seen.
    lo: RangeBound<ValueKey>,
    hi: RangeBound<ValueKey>,
}

impl<'a> Iterator for PackedRange<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        loop {
            let Some(block) = &mut self.block else {
                self.block = Some(self.blocks.next()?.1.iter());
                continue;
            };
            let Some((k, post)) = block.next() else {
                self.block = None;
                continue;
            };
            let below = match &self.lo {
                RangeBound::Included(l) => k < *l,
                RangeBound::Excluded(l) => k <= *l,
                RangeBound::Unbounded => false,
            };
            if below {
                continue;
            }
            self.lo = RangeBound::Unbounded;
            let above = match &self.hi {
                RangeBound::Included(h) => k > *h,
                RangeBound::Excluded(h) => k >= *h,
                RangeBound::Unbounded => false,
            };
            if above {
                self.block = None;
                self.blocks = Default::default();
                return None;
            }
            return Some((Cow::Owned(k), post));
        }
    }
}

/// Blocks of front-coded values by their first value; `len` values in all.
///
/// Each block sits behind an `Arc`, so a copy of the key (a checkpoint's,
/// taken while writes go on) shares every block, and a write then copies
/// only the block it changes, never the whole key.
#[derive(Clone, Default)]
pub(crate) struct Packed {
    blocks: BTreeMap<ValueKey, Arc<Block>>,
    len: usize,
}

/// Up to [`BLOCK_MAX`] values in order (never none). Each entry: how many
/// bytes its value's encoding shares with the previous one's (one byte),
/// the length of the rest (varint), the rest, then its posting as a
/// varint: `id << 1` for a single id, `i << 1 | 1` for `many[i]`.
#[derive(Clone)]
struct Block {
    bytes: Box<[u8]>,
    many: Vec<Posting>,
    len: u16,
}

impl Packed {
    fn from_sorted(values: Vec<(ValueKey, Posting)>) -> Packed {
        let mut packed = Packed {
            blocks: BTreeMap::new(),
            len: values.len(),
        };
        packed.put(values);
        packed
    }

    fn into_entries(self) -> Vec<(ValueKey, Posting)> {
        let mut all = Vec::with_capacity(self.len);
        for block in self.blocks.into_values() {
            all.extend(Block::unshared(block).into_entries());
        }
        all
    }

    /// The first value of the block `v` would be in.
    fn block_of(&self, v: &ValueKey) -> Option<&ValueKey> {
        self.blocks
            .range::<ValueKey, _>((RangeBound::Unbounded, RangeBound::Included(v)))
            .next_back()
            .or_else(|| self.blocks.iter().next())
            .map(|(first, _)| first)
    }

    /// Compares encodings, so that no value of the block is decoded.
    fn get(&self, v: &ValueKey) -> Option<Cow<'_, Posting>> {
        let (_, block) = self
            .blocks
            .range::<ValueKey, _>((RangeBound::Unbounded, RangeBound::Included(v)))
            .next_back()?;
        let mut value = Vec::new();
        encode_value(&mut value, v);
        if let Some(found) = find_encoded(&block.bytes, &value) {
            return found.map(|slot| block.posting(slot));
        }
        let mut scan = RawScan::new(&block.bytes);
        while let Some(e) = scan.next() {
            match cmp_encoded(&scan.cur, &value) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Some(block.posting(e.slot)),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    /// [`get`](Self::get) of each of `values` (ascending), in their order.
    fn get_sorted(&self, values: &[&ValueKey]) -> Vec<Option<Cow<'_, Posting>>> {
        let mut out = Vec::with_capacity(values.len());
        let mut rest = values;
        let mut value = Vec::new();
        while let Some(&v) = rest.first() {
            let mut blocks = self
                .blocks
                .range::<ValueKey, _>((RangeBound::Unbounded, RangeBound::Included(v)));
            let Some((_, block)) = blocks.next_back() else {
                // Below the first block's first value.
                out.push(None);
                rest = &rest[1..];
                continue;
            };
            // The values below the next block's first value are this one's.
            let here = self
                .blocks
                .range::<ValueKey, _>((RangeBound::Excluded(v), RangeBound::Unbounded))
                .next()
                .map_or(rest.len(), |(next, _)| rest.partition_point(|x| *x < next));
            let (run, later) = rest.split_at(here.max(1));
            rest = later;
            let mut scan = RawScan::new(&block.bytes);
            let mut entry = scan.next();
            for v in run {
                value.clear();
                encode_value(&mut value, v);
                out.push(loop {
                    let Some(e) = &entry else {
                        break None;
                    };
                    match cmp_encoded(&scan.cur, &value) {
                        std::cmp::Ordering::Less => entry = scan.next(),
                        std::cmp::Ordering::Equal => break Some(block.posting(e.slot)),
                        std::cmp::Ordering::Greater => break None,
                    }
                });
            }
        }
        out
    }

    fn range(&self, lo: RangeBound<&ValueKey>, hi: RangeBound<&ValueKey>) -> PackedRange<'_> {
        let blocks = match lo {
            RangeBound::Included(v) | RangeBound::Excluded(v) => match self.block_of(v) {
                Some(first) => self
                    .blocks
                    .range::<ValueKey, _>((RangeBound::Included(first), RangeBound::Unbounded)),
                None => self.blocks.range::<ValueKey, _>(..),
            },
            RangeBound::Unbounded => self.blocks.range::<ValueKey, _>(..),
        };
        PackedRange {
            blocks,
            block: None,
            lo: lo.map(ValueKey::clone),
            hi: hi.map(ValueKey::clone),
        }
    }

    /// The block whose first value is the last at or below `v` (none: `v`
    /// comes before every block), and `v`'s encoding.
    fn block_for(&mut self, v: &ValueKey) -> Option<(&mut Block, Vec<u8>)> {
        let (_, block) = self
            .blocks
            .range_mut::<ValueKey, _>((RangeBound::Unbounded, RangeBound::Included(v)))
            .next_back()?;
        let mut value = Vec::new();
        encode_value(&mut value, v);
        Some((Arc::make_mut(block), value))
    }

    fn add(&mut self, v: &ValueKey, id: u32) {
        if !self.add_single(v, id) {
            self.update(v, |post| match post {
                Some(post) => post.insert(id),
                None => *post = Some(Posting::One(id)),
            });
        }
    }

    /// See [`Values::add_sorted`].
    fn add_sorted(&mut self, items: &[(&ValueKey, u32)]) {
        let mut rest = items;
        while let Some(&(v, _)) = rest.first() {
            let first = self.block_of(v).cloned();
            // The items below the next block's first value land in this one.
            let here = match &first {
                Some(f) => self
                    .blocks
                    .range::<ValueKey, _>((RangeBound::Excluded(f), RangeBound::Unbounded))
                    .next()
                    .map_or(rest.len(), |(next, _)| {
                        rest.partition_point(|(x, _)| *x < next)
                    }),
                None => rest.len(),
            };
            let (here, later) = rest.split_at(here.max(1));
            rest = later;
            if here.len() <= SPLICE_MOST {
                for (v, id) in here {
                    self.add(v, *id);
                }
                continue;
            }
            let entries = match first.and_then(|f| self.blocks.remove(&f)) {
                Some(block) => Block::unshared(block).into_entries(),
                None => Vec::new(),
            };
            let mut merged = Vec::with_capacity(entries.len() + here.len());
            let mut entries = entries.into_iter().peekable();
            for run in here.chunk_by(|a, b| a.0 == b.0) {
                let v = run[0].0;
                merged.extend(std::iter::from_fn(|| entries.next_if(|(k, _)| k < v)));
                match entries.next_if(|(k, _)| k == v) {
                    Some((k, mut post)) => {
                        run.iter().for_each(|(_, id)| post.insert(*id));
                        merged.push((k, post));
                    }
                    None => {
                        self.len += 1;
                        merged.push((v.clone(), posting_of(run)));
                    }
                }
            }
            merged.extend(entries);
            self.put(merged);
        }
    }

    /// A new value held by `id` alone, spliced into its block's bytes;
    /// false (nothing done) where [`Block::insert_single`] declines.
    fn add_single(&mut self, v: &ValueKey, id: u32) -> bool {
        let Some((block, value)) = self.block_for(v) else {
            return false;
        };
        let done = block.insert_single(&value, id);
        self.len += usize::from(done);
        done
    }

    /// `id` off `v` where it holds it alone, spliced out of its block's
    /// bytes; false (nothing done) where [`Block::remove_single`] declines.
    fn sub_single(&mut self, v: &ValueKey, id: u32) -> bool {
        let Some((block, value)) = self.block_for(v) else {
            return true;
        };
        match block.remove_single(&value, id) {
            Some(removed) => {
                self.len -= usize::from(removed);
                true
            }
            None => false,
        }
    }

    /// Changes `v`'s posting in place (`None`: absent, or removed).
    fn update(&mut self, v: &ValueKey, change: impl FnOnce(&mut Option<Posting>)) {
        let Some(first) = self.block_of(v).cloned() else {
            let mut post = None;
            change(&mut post);
            if let Some(post) = post {
                self.put(vec![(v.clone(), post)]);
                self.len += 1;
            }
            return;
        };
        let Some(block) = self.blocks.remove(&first) else {
            return;
        };
        let mut entries = Block::unshared(block).into_entries();
        match entries.binary_search_by(|(k, _)| k.cmp(v)) {
            Ok(i) => {
                let mut post = Some(take(&mut entries[i].1));
                change(&mut post);
                match post {
                    Some(post) => entries[i].1 = post,
                    None => {
                        entries.remove(i);
                        self.len -= 1;
                    }
                }
            }
            Err(i) => {
                let mut post = None;
                change(&mut post);
                if let Some(post) = post {
                    entries.insert(i, (v.clone(), post));
                    self.len += 1;
                }
            }
        }
        self.put(entries);
    }

    /// Stores entries (in order) as one block, or as blocks of
    /// [`BLOCK_FILL`] when over [`BLOCK_MAX`]; nothing when empty.
    fn put(&mut self, entries: Vec<(ValueKey, Posting)>) {
        if entries.len() <= BLOCK_MAX {
            if !entries.is_empty() {
                let (first, block) = Block::build(entries);
                self.blocks.insert(first, Arc::new(block));
            }
            return;
        }
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let chunk: Vec<_> = entries.by_ref().take(BLOCK_FILL).collect();
            let (first, block) = Block::build(chunk);
            self.blocks.insert(first, Arc::new(block));
        }
    }

    fn remove_ids(&mut self, ids: &RoaringBitmap) {
        let hit: Vec<ValueKey> = self
            .blocks
            .iter()
            .filter(|(_, block)| {
                let mut scan = RawScan::new(&block.bytes);
                std::iter::from_fn(|| scan.next()).any(|e| match e.slot {
                    Slot::One(id) => ids.contains(id),
                    Slot::Many(i) => block.many[i].len_within(Some(ids)) > 0,
                })
            })
            .map(|(first, _)| first.clone())
            .collect();
        for first in hit {
            let Some(block) = self.blocks.remove(&first) else {
                continue;
            };
            let before = block.len();
            let mut entries = Block::unshared(block).into_entries();
            entries.retain_mut(|(_, post)| !post.remove_all(ids));
            self.len -= before - entries.len();
            self.put(entries);
        }
    }
}

/// The posting moved out of `slot`, in a block being rebuilt (the slot is
/// dropped with the block).
fn take(slot: &mut Posting) -> Posting {
    std::mem::replace(slot, Posting::One(0))
}

impl Block {
    /// The block itself, copied only if a copy of the key still holds it.
    fn unshared(block: Arc<Block>) -> Block {
        Arc::try_unwrap(block).unwrap_or_else(|shared| (*shared).clone())
    }

    /// A block of `entries` (ascending, not empty) and its first value.
    fn build(entries: Vec<(ValueKey, Posting)>) -> (ValueKey, Block) {
        let mut bytes = Vec::with_capacity(entries.len() * 8);
        let mut many = Vec::new();
        let mut prev = Vec::new();
        let mut cur = Vec::new();
        let mut first = None;
        let len = entries.len() as u16;
        for (v, post) in entries {
            cur.clear();
            encode_value(&mut cur, &v);
            let slot = match post {
                Posting::One(id) => u64::from(id) << 1,
                many_ids => {
                    many.push(many_ids);
                    ((many.len() - 1) as u64) << 1 | 1
                }
            };
            let (slot, n) = varint(slot);
            push_entry(&mut bytes, &prev, &cur, &slot[..n]);
            std::mem::swap(&mut prev, &mut cur);
            if first.is_none() {
                first = Some(v);
            }
        }
        let block = Block {
            bytes: bytes.into_boxed_slice(),
            many,
            len,
        };
        (first.unwrap_or(ValueKey::Null), block)
    }

    /// Each entry's value, read in place, and posting, in order.
    fn for_each(&self, f: &mut impl FnMut(ValueRef<'_>, &Posting)) {
        let mut entries = self.iter();
        while let Some((value, slot)) = entries.next_encoded() {
            match slot {
                Slot::One(id) => f(view_value(value), &Posting::One(id)),
                Slot::Many(i) => f(view_value(value), &self.many[i]),
            }
        }
    }

    fn iter(&self) -> BlockIter<'_> {
        BlockIter {
            block: self,
            pos: 0,
            value: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn posting(&self, slot: Slot) -> Cow<'_, Posting> {
        match slot {
            Slot::One(id) => Cow::Owned(Posting::One(id)),
            Slot::Many(i) => Cow::Borrowed(&self.many[i]),
        }
    }

    /// Inserts `value` (encoded), held by `id` alone, where it belongs,
    /// copying the other entries' bytes as they are: false (nothing done)
    /// when it is there already, would come first (the block's key would
    /// change) or the block is full.
    fn insert_single(&mut self, value: &[u8], id: u32) -> bool {
        if self.len() >= BLOCK_MAX {
            return false;
        }
        let mut scan = RawScan::new(&self.bytes);
        let mut next = None;
        while let Some(e) = scan.next() {
            match cmp_encoded(&scan.cur, value) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return false,
                std::cmp::Ordering::Greater if e.start == 0 => return false,
                std::cmp::Ordering::Greater => {
                    next = Some(e);
                    break;
                }
            }
        }
        let (slot, n) = varint(u64::from(id) << 1);
        let bytes = &self.bytes;
        let mut out = Vec::with_capacity(bytes.len() + value.len() + 8);
        match next {
            Some(e) => {
                out.extend_from_slice(&bytes[..e.start]);
                push_entry(&mut out, &scan.prev, value, &slot[..n]);
                push_entry(&mut out, value, &scan.cur, &bytes[e.post..e.end]);
                out.extend_from_slice(&bytes[e.end..]);
            }
            None => {
                out.extend_from_slice(bytes);
                push_entry(&mut out, &scan.prev, value, &slot[..n]);
            }
        }
        self.bytes = out.into_boxed_slice();
        self.len += 1;
        true
    }

    /// Takes `id` off `value` (encoded) where `id` holds it alone, copying
    /// the other entries' bytes as they are. `Some(removed)` when done
    /// (`removed`: the value went); `None` (nothing done) when the value
    /// is shared or is the block's first.
    fn remove_single(&mut self, value: &[u8], id: u32) -> Option<bool> {
        let mut scan = RawScan::new(&self.bytes);
        let found = loop {
            let Some(e) = scan.next() else {
                return Some(false);
            };
            match cmp_encoded(&scan.cur, value) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => break e,
                std::cmp::Ordering::Greater => return Some(false),
            }
        };
        match found.slot {
            Slot::One(x) if x != id => return Some(false),
            Slot::One(_) if found.start > 0 => {}
            _ => return None,
        }
        let bytes = &self.bytes;
        let mut out = Vec::with_capacity(bytes.len());
        out.extend_from_slice(&bytes[..found.start]);
        // The next entry is coded against the removed value: read it so,
        // and write it again against the value before.
        let before = std::mem::take(&mut scan.prev);
        if let Some(next) = scan.next() {
            push_entry(&mut out, &before, &scan.cur, &bytes[next.post..next.end]);
            out.extend_from_slice(&bytes[next.end..]);
        }
        self.bytes = out.into_boxed_slice();
        self.len -= 1;
        Some(true)
    }

    fn into_entries(self) -> Vec<(ValueKey, Posting)> {
        let mut many = self.many;
        let mut out = Vec::with_capacity(BLOCK_MAX);
        let mut it = BlockIter {
            block: &Block {
                bytes: self.bytes,
                many: Vec::new(),
                len: self.len,
            },
            pos: 0,
            value: Vec::new(),
        };
        while let Some((v, slot)) = it.next_raw() {
            let post = match slot {
                Slot::One(id) => Posting::One(id),
                Slot::Many(i) => take(&mut many[i]),
            };
            out.push((v, post));
        }
        out
    }
}

/// Where one entry of a block lies: its first byte, its posting's first
/// byte, the byte after it; and its posting.
struct RawEntry {
    start: usize,
    post: usize,
    end: usize,
    slot: Slot,
}

/// Walks a block's entries as bytes: after [`RawScan::next`], `cur` holds
/// the entry's value encoding and `prev` the one before (at the end, `prev`
/// is the last entry's).
struct RawScan<'a> {
    bytes: &'a [u8],
    pos: usize,
    prev: Vec<u8>,
    cur: Vec<u8>,
    started: bool,
}

impl<'a> RawScan<'a> {
    fn new(bytes: &'a [u8]) -> RawScan<'a> {
        RawScan {
            bytes,
            pos: 0,
            prev: Vec::new(),
            cur: Vec::new(),
            started: false,
        }
    }

    /// Reads the next entry into `cur`, the one before moving to `prev`.
    fn next(&mut self) -> Option<RawEntry> {
        if self.started {
            std::mem::swap(&mut self.prev, &mut self.cur);
        }
        self.started = true;
        let bytes = self.bytes;
        let start = self.pos;
        let shared = *bytes.get(start)? as usize;
        let mut pos = start + 1;
        let rest = get_varint(bytes, &mut pos) as usize;
        self.cur.clear();
        self.cur.extend_from_slice(&self.prev[..shared]);
        self.cur.extend_from_slice(&bytes[pos..pos + rest]);
        pos += rest;
        let post = pos;
        let n = get_varint(bytes, &mut pos);
        self.pos = pos;
        let slot = Slot::of(n);
        Some(RawEntry {
            start,
            post,
            end: pos,
            slot,
        })
    }
}

/// The posting slot of `target` (a value's encoding) among a block's
/// entries, found without building each entry's encoding: front coding
/// says how many leading bytes an entry shares with the one before, and
/// the entries ascend, so an entry sharing more of it than the one before
/// shares with `target` is still below `target`, and one sharing fewer is
/// above it; only an entry sharing exactly that many has its bytes
/// compared. `Some(None)`: not in the block. `None`: the block mixes text
/// and UUID values around a text target, whose order is not their bytes'
/// (see [`cmp_encoded`]), so the caller compares decoded values instead.
fn find_encoded(bytes: &[u8], target: &[u8]) -> Option<Option<Slot>> {
    let text = |tag: u8| tag == STR || tag == UUID;
    let target_tag = *target.first()?;
    // How many leading bytes of `target` the entry before matched.
    let mut matched = 0;
    let mut tag = target_tag;
    let mut pos = 0;
    while let Some(&shared) = bytes.get(pos) {
        let shared = shared as usize;
        pos += 1;
        let rest = get_varint(bytes, &mut pos) as usize;
        let suffix = &bytes[pos..pos + rest];
        pos += rest;
        let n = get_varint(bytes, &mut pos);
        if shared == 0 {
            tag = *suffix.first()?;
        }
        if tag != target_tag && text(tag) && text(target_tag) {
            return None;
        }
        // A shared count at its cap (u8::MAX) may understate what the
        // entry shares: compare its bytes from there.
        if shared < matched && shared < u8::MAX as usize {
            return Some(None);
        }
        if shared > matched {
            continue;
        }
        let from = shared;
        let want = &target[from..];
        let common = suffix.iter().zip(want).take_while(|(a, b)| a == b).count();
        match (suffix.get(common), want.get(common)) {
            (None, None) => return Some(Some(Slot::of(n))),
            (None, Some(_)) => matched = from + common,
            (Some(a), Some(b)) if a < b => matched = from + common,
            _ => return Some(None),
        }
    }
    Some(None)
}

/// A block's entry's posting before it is borrowed.
#[derive(Clone, Copy)]
enum Slot {
    One(u32),
    Many(usize),
}

impl Slot {
    /// The slot an entry's posting varint names: one id (even), or the
    /// index of a shared posting (odd).
    fn of(n: u64) -> Slot {
        if n & 1 == 0 {
            Slot::One((n >> 1) as u32)
        } else {
            Slot::Many((n >> 1) as usize)
        }
    }
}

struct BlockIter<'a> {
    block: &'a Block,
    pos: usize,
    /// The previous entry's value encoding, which the next shares bytes of.
    value: Vec<u8>,
}

impl BlockIter<'_> {
    /// Steps to the next entry: its value's encoding (borrowed until the
    /// next step) and its posting's slot.
    fn next_encoded(&mut self) -> Option<(&[u8], Slot)> {
        let bytes = &self.block.bytes;
        let shared = *bytes.get(self.pos)? as usize;
        self.pos += 1;
        let rest = get_varint(bytes, &mut self.pos) as usize;
        self.value.truncate(shared);
        self.value
            .extend_from_slice(&bytes[self.pos..self.pos + rest]);
        self.pos += rest;
        let slot = Slot::of(get_varint(bytes, &mut self.pos));
        Some((&self.value, slot))
    }

    fn next_raw(&mut self) -> Option<(ValueKey, Slot)> {
        self.next_encoded()
            .map(|(value, slot)| (decode_value(value), slot))
    }
}

impl<'a> Iterator for BlockIter<'a> {
    type Item = (ValueKey, Cow<'a, Posting>);

    fn next(&mut self) -> Option<Self::Item> {
        let (v, slot) = self.next_raw()?;
        Some((v, self.block.posting(slot)))
    }
}

// The encoding of a value inside a block: a tag, then what the tag needs
// (its length is the entry's). Only this module writes or reads it; a
// checkpoint carries it, and [`walk_block`] checks what one read back
// holds, so past that a malformed one is a bug here. Encodings order as their
// values do ([`cmp_encoded`]), so that a write finds its place in a block
// without decoding it.
const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NUM: u8 = 3;
const STR: u8 = 4;
const UUID: u8 = 5;
const JSON: u8 = 6;

fn encode_value(out: &mut Vec<u8>, v: &ValueKey) {
    match v {
        ValueKey::Null => out.push(NULL),
        ValueKey::Bool(false) => out.push(FALSE),
        ValueKey::Bool(true) => out.push(TRUE),
        ValueKey::Num(n) => {
            // Sign-flipped bits: their unsigned order is `total_cmp`'s.
            let bits = n.0 .0.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | 1 << 63
            };
            out.push(NUM);
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        ValueKey::Str(Text::Compact(s)) => {
            out.push(STR);
            out.extend_from_slice(s.as_bytes());
        }
        ValueKey::Str(Text::Uuid(u)) => {
            out.push(UUID);
            out.extend_from_slice(u.as_bytes());
        }
        ValueKey::Json(s) => {
            out.push(JSON);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn decode_value(bytes: &[u8]) -> ValueKey {
    match view_value(bytes) {
        ValueRef::Null => ValueKey::Null,
        ValueRef::Bool(b) => ValueKey::Bool(b),
        ValueRef::Num(f) => ValueKey::Num(NumKey::new(f)),
        ValueRef::Str(s) => ValueKey::Str(Text::Compact(s.into())),
        ValueRef::Uuid(u) => ValueKey::Str(Text::Uuid(u)),
        ValueRef::Json(s) => ValueKey::Json(s.into()),
    }
}

/// The value a block encoding holds, borrowed from it.
fn view_value(bytes: &[u8]) -> ValueRef<'_> {
    let (tag, rest) = bytes.split_first().expect("a block value has a tag");
    let text = || std::str::from_utf8(rest).expect("a block holds the text it was given");
    match *tag {
        NULL => ValueRef::Null,
        FALSE => ValueRef::Bool(false),
        TRUE => ValueRef::Bool(true),
        NUM => {
            let raw = rest.try_into().expect("a block number is 8 bytes");
            let ordered = u64::from_be_bytes(raw);
            let bits = if ordered >> 63 == 1 {
                ordered & !(1 << 63)
            } else {
                !ordered
            };
            ValueRef::Num(f64::from_bits(bits))
        }
        STR => ValueRef::Str(text()),
        UUID => {
            let raw = rest.try_into().expect("a block UUID is 16 bytes");
            ValueRef::Uuid(uuid::Uuid::from_bytes(raw))
        }
        JSON => ValueRef::Json(text()),
        t => unreachable!("block value tag {t}"),
    }
}

/// The order of the values two encodings stand for: their bytes' order,
/// but for a UUID against other text, which is compared as text.
fn cmp_encoded(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (a.first(), b.first()) {
        (Some(&x), Some(&y)) if matches!((x, y), (STR, UUID) | (UUID, STR)) => {
            decode_value(a).cmp(&decode_value(b))
        }
        _ => a.cmp(b),
    }
}

/// Appends one entry: `value`'s encoding front-coded against `prev`'s,
/// then the posting's varint bytes as they are.
fn push_entry(out: &mut Vec<u8>, prev: &[u8], value: &[u8], post: &[u8]) {
    let shared = prev
        .iter()
        .zip(value)
        .take(u8::MAX as usize)
        .take_while(|(a, b)| a == b)
        .count();
    out.push(shared as u8);
    put_varint(out, (value.len() - shared) as u64);
    out.extend_from_slice(&value[shared..]);
    out.extend_from_slice(post);
}

fn varint(n: u64) -> ([u8; 10], usize) {
    let mut v = Vec::with_capacity(10);
    put_varint(&mut v, n);
    let mut b = [0; 10];
    b[..v.len()].copy_from_slice(&v);
    (b, v.len())
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One block of a packed key as a checkpoint carries it: how many values,
/// the entries' bytes as held, and the postings its entries share.
pub(crate) struct BlockParts<'a> {
    pub(crate) len: u16,
    pub(crate) bytes: &'a [u8],
    pub(crate) many: &'a [Posting],
}

/// Where a block entry's posting is: one id, or one of the block's shared
/// postings (by index).
pub(crate) enum BlockSlot {
    One(u32),
    Many(usize),
}

/// Walks bytes that claim to be a block's entries (read from a file), with
/// every check the unchecked walks of this module leave out: each entry
/// parses within the bytes, shares with the one before exactly the bytes
/// they have in common (up to 255), holds a valid value encoding above the
/// one before, and names an id or one of the block's `many` shared
/// postings. `f` sees each value's encoding and slot, and says whether the
/// first value is in order after what came before the block. Returns how
/// many entries there were and the last value's encoding (`None`: none).
pub(crate) fn walk_block(
    bytes: &[u8],
    many: usize,
    mut f: impl FnMut(&[u8], BlockSlot) -> bool,
) -> Result<Option<(u16, Vec<u8>)>, String> {
    let mut pos = 0;
    let mut prev: Vec<u8> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    while let Some(&shared) = bytes.get(pos) {
        pos += 1;
        let shared = usize::from(shared);
        let rest = checked_varint(bytes, &mut pos)?;
        let end = usize::try_from(rest)
            .ok()
            .and_then(|r| pos.checked_add(r))
            .filter(|end| *end <= bytes.len())
            .ok_or("an entry runs past the block")?;
        if shared > prev.len() || (count == 0 && shared != 0) {
            return Err("an entry shares more than the value before it".into());
        }
        cur.clear();
        cur.extend_from_slice(&prev[..shared]);
        cur.extend_from_slice(&bytes[pos..end]);
        pos = end;
        check_value(&cur)?;
        if count > 0 {
            let common = prev
                .iter()
                .zip(&cur)
                .take(usize::from(u8::MAX))
                .take_while(|(a, b)| a == b)
                .count();
            if common != shared {
                return Err("an entry is not front-coded as a block is built".into());
            }
            if !cmp_encoded(&prev, &cur).is_lt() {
                return Err("values out of order or repeated".into());
            }
        }
        let slot = match checked_varint(bytes, &mut pos)? {
            n if n & 1 == 0 => BlockSlot::One(u32::try_from(n >> 1).map_err(|_| "an id past u32")?),
            n => match usize::try_from(n >> 1) {
                Ok(i) if i < many => BlockSlot::Many(i),
                _ => return Err("an entry names a shared posting the block lacks".into()),
            },
        };
        if !f(&cur, slot) {
            return Err("values out of order or repeated".into());
        }
        count = count.checked_add(1).ok_or("too many entries")?;
        std::mem::swap(&mut prev, &mut cur);
    }
    Ok((count > 0).then_some((count, prev)))
}

/// Checks that `bytes` are a value's encoding as [`encode_value`] writes
/// it: a known tag, and what it needs (a number's 8 bytes, a UUID's 16,
/// text in UTF-8).
fn check_value(bytes: &[u8]) -> Result<(), String> {
    let Some((&tag, rest)) = bytes.split_first() else {
        return Err("an empty value".into());
    };
    let ok = match tag {
        NULL | FALSE | TRUE => rest.is_empty(),
        NUM => rest.len() == 8,
        UUID => rest.len() == 16,
        STR | JSON => std::str::from_utf8(rest).is_ok(),
        _ => false,
    };
    match ok {
        true => Ok(()),
        false => Err(format!("a value of tag {tag} and {} bytes", rest.len())),
    }
}

/// The order of the values two block encodings stand for.
pub(crate) fn cmp_block_values(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    cmp_encoded(a, b)
}

/// A value's encoding in a block, for comparing with [`walk_block`]'s.
pub(crate) fn block_encoding(v: &ValueKey) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(&mut out, v);
    out
}

/// [`get_varint`] for bytes read from a file: `Err` past their end or past
/// 64 bits.
fn checked_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or("a number runs past the block")?;
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("a number of more than 64 bits".into())
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let mut n = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return n;
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u32) -> ValueKey {
        match i % 7 {
            0 => ValueKey::Num(NumKey::new(f64::from(i) - 50.0)),
            1 => ValueKey::str(&uuid::Uuid::from_u128(u128::from(i) * 7919).to_string()),
            2 => ValueKey::Json(format!("[{i}]").into()),
            3 => ValueKey::Bool(i.is_multiple_of(2)),
            4 => ValueKey::Null,
            // Names that are prefixes of others (`n1`, `n12`, `n123`).
            5 => ValueKey::str(&format!("n{i}")),
            _ => ValueKey::str(&format!("node-{i:07}")),
        }
    }

    /// Both forms built from the same values, so that every step below
    /// can be checked on each against a plain tree.
    fn forms(values: &BTreeMap<ValueKey, Posting>) -> [Values; 2] {
        let sorted: Vec<_> = values.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        [
            Values::Tree(sorted.iter().cloned().collect()),
            Values::Packed(Packed::from_sorted(sorted)),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u32, u32),
        Sub(u32, u32),
        AddAll(u32, Vec<u32>),
        RemoveIds(Vec<u32>),
        /// Pairs of value and id, each id new to its value (as an import's
        /// are), applied in sorted order.
        AddSorted(Vec<(u32, u32)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..400u32, 0..2000u32).prop_map(|(k, id)| Op::Add(k, id)),
            3 => (0..400u32, 0..2000u32).prop_map(|(k, id)| Op::Sub(k, id)),
            1 => (0..400u32, proptest::collection::vec(0..2000u32, 0..20))
                .prop_map(|(k, ids)| Op::AddAll(k, ids)),
            1 => proptest::collection::vec(0..2000u32, 0..200).prop_map(Op::RemoveIds),
            1 => proptest::collection::vec((0..400u32, 2000..4000u32), 0..300).prop_map(Op::AddSorted),
        ]
    }

    /// The plain map every form is held to, changed by `Posting`'s own
    /// rules.
    fn apply(truth: &mut BTreeMap<ValueKey, Posting>, op: &Op) {
        match op {
            Op::Add(k, id) => match truth.get_mut(&key(*k)) {
                Some(post) => post.insert(*id),
                None => {
                    truth.insert(key(*k), Posting::One(*id));
                }
            },
            Op::Sub(k, id) => {
                if truth.get_mut(&key(*k)).is_some_and(|post| post.remove(*id)) {
                    truth.remove(&key(*k));
                }
            }
            Op::AddAll(k, ids) => {
                let ids: RoaringBitmap = ids.iter().copied().collect();
                match truth.get_mut(&key(*k)) {
                    Some(post) => post.insert_all(&ids),
                    None => {
                        if let Some(post) = Posting::from_bitmap(ids) {
                            truth.insert(key(*k), post);
                        }
                    }
                }
            }
            Op::RemoveIds(ids) => {
                let ids: RoaringBitmap = ids.iter().copied().collect();
                truth.retain(|_, post| !post.remove_all(&ids));
            }
            Op::AddSorted(items) => {
                for (k, id) in items {
                    apply(truth, &Op::Add(*k, *id));
                }
            }
        }
    }

    fn apply_to(v: &mut Values, op: &Op) {
        match op {
            Op::Add(k, id) => v.add(&key(*k), *id),
            Op::Sub(k, id) => v.sub(&key(*k), *id),
            Op::AddAll(k, ids) => v.add_all(&key(*k), &ids.iter().copied().collect()),
            Op::RemoveIds(ids) => v.remove_ids(&ids.iter().copied().collect()),
            Op::AddSorted(items) => {
                let mut items: Vec<(ValueKey, u32)> =
                    items.iter().map(|(k, id)| (key(*k), *id)).collect();
                items.sort();
                items.dedup();
                let items: Vec<(&ValueKey, u32)> = items.iter().map(|(k, id)| (k, *id)).collect();
                v.add_sorted(&items);
            }
        }
    }

    fn check(truth: &BTreeMap<ValueKey, Posting>, v: &Values, probes: &[u32]) {
        let want: Vec<_> = truth.iter().collect();
        let got: Vec<_> = v.iter().collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(v.len(), truth.len());
        for ((gk, gp), (wk, wp)) in got.iter().zip(&want) {
            assert_eq!(&**gk, *wk);
            assert_eq!(&**gp, *wp);
        }
        // Together, as an import asks: in any order, with repeats.
        let keys: Vec<ValueKey> = probes.iter().map(|p| key(*p)).collect();
        for (k, got) in keys.iter().zip(v.get_each(&keys)) {
            assert_eq!(got.as_deref(), truth.get(k), "get_each {k:?}");
        }
        for p in probes {
            let k = key(*p);
            assert_eq!(v.get(&k).as_deref(), truth.get(&k), "get {k:?}");
            for (lo, hi) in [
                (RangeBound::Included(&k), RangeBound::Unbounded),
                (RangeBound::Excluded(&k), RangeBound::Unbounded),
                (RangeBound::Unbounded, RangeBound::Excluded(&k)),
                (RangeBound::Unbounded, RangeBound::Included(&k)),
            ] {
                let got: Vec<_> = v.range(lo, hi).map(|(k, _)| k.into_owned()).collect();
                let want: Vec<_> = truth
                    .range::<ValueKey, _>((lo, hi))
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(got, want, "range {lo:?}..{hi:?}");
            }
        }
    }

    proptest! {
        /// Blocks answer every read and write as the tree does, through
        /// splits, emptied blocks and shared postings.
        #[test]
        fn packed_blocks_answer_as_the_tree(
            start in proptest::collection::btree_map(0..400u32, 0..2000u32, 0..300),
            ops in proptest::collection::vec(op(), 0..300),
            probes in proptest::collection::vec(0..400u32, 8),
        ) {
            let mut truth: BTreeMap<ValueKey, Posting> = start
                .iter()
                .map(|(k, id)| (key(*k), Posting::One(*id)))
                .collect();
            let mut held = forms(&truth);
            for op in &ops {
                apply(&mut truth, op);
                for v in &mut held {
                    apply_to(v, op);
                }
            }
            for v in &held {
                check(&truth, v, &probes);
            }
            let mut again = held[1].clone();
            again.compact();
            check(&truth, &again, &probes);
        }
    }

    /// A new key's first bulk add of values held one each and ascending
    /// with their ids is packed at once; values appended after them, and
    /// values landing between them, read back as a tree built one by one
    /// holds them. Values whose ids come in another order stay a tree.
    #[test]
    fn a_new_keys_values_in_order_are_packed_as_they_come() {
        let names = |r: std::ops::Range<u32>, tail: &str| -> Vec<(ValueKey, u32)> {
            r.map(|i| (ValueKey::str(&format!("node-{i:07}{tail}")), i))
                .collect()
        };
        fn items(v: &[(ValueKey, u32)]) -> Vec<(&ValueKey, u32)> {
            v.iter().map(|(k, id)| (k, *id)).collect()
        }
        let first = names(0..2000, "");
        let mut packed = Values::Tree(BTreeMap::new());
        packed.add_sorted(&items(&first));
        assert!(matches!(packed, Values::Packed(_)), "not packed at once");
        let appended = names(2000..5000, "");
        packed.add_sorted(&items(&appended));
        let between = names(1000..1300, "x");
        packed.add_sorted(&items(&between));
        let truth: BTreeMap<ValueKey, Posting> = [first, appended, between]
            .concat()
            .into_iter()
            .map(|(k, id)| (k, Posting::One(id)))
            .collect();
        check(&truth, &packed, &[]);
        assert_eq!(
            packed.get(&ValueKey::str("node-0001100x")).as_deref(),
            Some(&Posting::One(1100))
        );

        let shuffled: Vec<(ValueKey, u32)> = (0..2000u32)
            .map(|i| (ValueKey::str(&format!("node-{i:07}")), (i * 389) % 2000))
            .collect();
        let mut tree = Values::Tree(BTreeMap::new());
        tree.add_sorted(&items(&shuffled));
        assert!(matches!(tree, Values::Tree(_)), "packed out of order");
    }

    /// Lookups that skip entries by their shared prefix find what a
    /// comparison of every entry finds: names that are prefixes of others,
    /// and names sharing more bytes than a shared count holds (255).
    #[test]
    fn a_lookup_finds_what_the_tree_finds_among_prefixes_and_long_names() {
        let long = "x".repeat(300);
        let mut names: Vec<String> = Vec::new();
        for i in 0..400u32 {
            names.push(format!("n{i}"));
            names.push(format!("{long}{i}"));
            names.push(format!("{long}{}{i}", "y".repeat(i as usize % 3)));
        }
        let truth: BTreeMap<ValueKey, Posting> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 != 0)
            .map(|(i, n)| (ValueKey::str(n), Posting::One(i as u32)))
            .collect();
        let packed =
            Packed::from_sorted(truth.iter().map(|(k, p)| (k.clone(), p.clone())).collect());
        assert!(packed.blocks.len() > 4);
        let probes = names
            .iter()
            .cloned()
            .chain(["".into(), "n".into(), long.clone(), "z".into()]);
        let probes: Vec<ValueKey> = probes.map(|n| ValueKey::str(&n)).collect();
        for v in &probes {
            assert_eq!(packed.get(v).as_deref(), truth.get(v), "{v:?}");
        }
        let packed = Values::Packed(packed);
        for (v, got) in probes.iter().zip(packed.get_each(&probes)) {
            assert_eq!(got.as_deref(), truth.get(v), "get_each {v:?}");
        }
    }

    /// Blocks read back are taken only as a block is built: an entry that
    /// shares fewer bytes with the one before than they have in common
    /// reads as the same value, but a lookup that skips by shared bytes
    /// would miss it.
    #[test]
    fn blocks_read_back_are_taken_only_as_built() {
        let entry = |shared: u8, rest: &[u8], id: u8| {
            let mut e = vec![shared, rest.len() as u8];
            e.extend_from_slice(rest);
            e.push(id << 1);
            e
        };
        let built = [entry(0, &[STR, b'a', b'a'], 1), entry(2, b"b", 2)].concat();
        let loose = [entry(0, &[STR, b'a', b'a'], 1), entry(1, b"ab", 2)].concat();
        let truth = Values::from_sorted(vec![
            (ValueKey::str("aa"), Posting::One(1)),
            (ValueKey::str("ab"), Posting::One(2)),
        ]);
        let back = Values::from_blocks(vec![(2, built.into(), Vec::new())]).unwrap();
        assert_eq!(back, truth);
        let refused = Values::from_blocks(vec![(2, loose.into(), Vec::new())]).unwrap_err();
        assert!(refused.contains("front-coded"), "{refused}");
        // Out of order across blocks, a count that differs, a shared
        // posting the block lacks.
        let a = || [entry(0, &[STR, b'a'], 1)].concat().into_boxed_slice();
        let b = || [entry(0, &[STR, b'b'], 2)].concat().into_boxed_slice();
        assert!(Values::from_blocks(vec![(1, b(), Vec::new()), (1, a(), Vec::new())]).is_err());
        assert!(Values::from_blocks(vec![(2, a(), Vec::new())]).is_err());
        let many = [entry(0, &[STR, b'a'], 0)].concat();
        let mut many = many;
        let last = many.len() - 1;
        many[last] = 1; // shared posting 0, of none
        assert!(Values::from_blocks(vec![(1, many.into(), Vec::new())]).is_err());
    }

    /// Blocks split as one grows past its bound, and go when emptied.
    #[test]
    fn blocks_split_and_go() {
        let mut v = Values::Packed(Packed::default());
        let mut truth = BTreeMap::new();
        for i in (0..2000u32).rev() {
            v.add(&key(i * 5), i);
            apply(&mut truth, &Op::Add(i * 5, i));
        }
        let Values::Packed(p) = &v else {
            unreachable!()
        };
        assert!(
            p.blocks.len() > 2000 / BLOCK_MAX,
            "{} blocks",
            p.blocks.len()
        );
        assert!(p.blocks.values().all(|b| b.len() <= BLOCK_MAX));
        check(&truth, &v, &[0, 5, 7, 9995, 10_000]);
        for i in 0..2000u32 {
            v.sub(&key(i * 5), i);
        }
        assert!(v.is_empty());
        let Values::Packed(p) = &v else {
            unreachable!()
        };
        assert!(p.blocks.is_empty());
    }

    #[test]
    fn a_key_of_single_holders_is_packed_and_small() {
        let n = 100_000u32;
        let values: Vec<_> = (0..n)
            .map(|i| (ValueKey::str(&format!("node-{i:07}")), Posting::One(i)))
            .collect();
        let v = Values::from_sorted(values);
        let Values::Packed(p) = &v else {
            panic!("not packed");
        };
        let bytes: usize = p.blocks.values().map(|b| b.bytes.len()).sum();
        // About 6 bytes a name, where a tree entry is 40 before its node.
        assert!(bytes < 8 * n as usize, "{bytes} bytes");
        assert_eq!(
            v.get(&ValueKey::str("node-0012345")).as_deref(),
            Some(&Posting::One(12345))
        );
        assert_eq!(v.get(&ValueKey::str("node-00123456")), None);
        // Values most objects share stay a tree.
        let shared: Vec<_> = (0..3u32)
            .map(|i| {
                (
                    ValueKey::Num(NumKey::new(f64::from(i))),
                    Posting::Many(std::sync::Arc::new((0..n).filter(|x| x % 3 == i).collect())),
                )
            })
            .collect();
        assert!(matches!(Values::from_sorted(shared), Values::Tree(_)));
    }
}
