//! An estimate of an index's heap bytes, for the `fleetkv_index_memory_bytes`
//! gauge: sizes of what is held, not an allocator's count.
//!
//! Owns: the per-structure rules below. Must not: change or decode an index.
//!
//! Rules: a B-tree map entry is its key and value times 6/5 (nodes hold
//! up to 11 entries; the maps of a bulk build — open, import — are packed
//! full, and internal nodes and the last leaf add about a fifth; a map
//! grown one ascending insert at a time is about half full, so for its
//! entries this undercounts up to twofold); a string value counts its heap
//! buffer (strings up to 24 bytes are inline); a bitmap counts its struct
//! and its serialized size (roaring's containers are the serialized arrays,
//! bitmaps and runs plus a small header each); a packed key counts its
//! blocks' bytes as they are, and each block as a B-tree entry of its first
//! value and a shared pointer to the block (the block's struct and its two
//! reference counts).
//!
//! Measured against a counting allocator (the rebuilt state of the
//! benchmarks' fleet, release build), before keys were packed: 250
//! estimated vs 242–249 counted bytes per machine at 100,000 machines.

use std::mem::size_of;

use roaring::RoaringBitmap;

use super::{Posting, Postings, Text, ValueKey};

/// A B-tree entry's bytes over its key and value's: 6/5.
const BTREE_FACTOR_NUM: usize = 6;
const BTREE_FACTOR_DEN: usize = 5;
/// A hash map entry's bytes besides its key's heap and its value.
pub(super) const HASH_ENTRY: usize = size_of::<(String, RoaringBitmap)>() + 1;

/// A bitmap's heap bytes, its own struct included.
pub(super) fn bitmap(b: &RoaringBitmap) -> usize {
    size_of::<RoaringBitmap>() + b.serialized_size()
}

/// One key's postings: its values ([`Values::heap_bytes`](super::values::Values::heap_bytes)) and the `has`
/// bitmap.
pub(super) fn postings(p: &Postings) -> usize {
    p.values.heap_bytes() + bitmap(&p.has)
}

/// A B-tree map of `entries` entries of `entry` bytes each.
pub(super) fn btree(entries: usize, entry: usize) -> usize {
    entries * entry * BTREE_FACTOR_NUM / BTREE_FACTOR_DEN
}

/// A value key's heap bytes beside its own 24.
pub(super) fn value(v: &ValueKey) -> usize {
    match v {
        ValueKey::Str(Text::Compact(s)) if s.is_heap_allocated() => s.capacity(),
        ValueKey::Json(j) => j.len(),
        _ => 0,
    }
}

/// A posting's heap bytes beside its own 16 (a shared bitmap counts its
/// two reference counts).
pub(super) fn posting(p: &Posting) -> usize {
    match p {
        Posting::One(_) => 0,
        Posting::Many(b) => 2 * size_of::<usize>() + bitmap(b),
    }
}
