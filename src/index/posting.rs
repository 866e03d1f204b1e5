//! One posting list: the ids holding one (key, value). Most values of
//! high-cardinality keys (Name, Uuid, Address, serial numbers) are held by a
//! single object, so that case is stored inline — no bitmap allocation, and
//! counting it never touches the heap.

use std::sync::Arc;

use roaring::RoaringBitmap;

/// The ids holding one value; never empty. 16 bytes: the bitmap is behind
/// a pointer so that the common single-id case keeps map entries small,
/// and shared, so that a copy of a key (a checkpoint's, taken while writes
/// go on) shares its bitmaps and a write copies only the one it changes.
#[derive(Debug, Clone)]
pub(crate) enum Posting {
    One(u32),
    Many(Arc<RoaringBitmap>),
}

impl PartialEq for Posting {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// Adds `ids` to `b`. Ids that ascend above its largest (an import's new
/// machines, in the order their ids were given) are appended without the
/// search of a container `insert` makes for each; otherwise each is
/// inserted (those appended before an id out of order, again: a no-op).
pub(crate) fn add_ids<I>(b: &mut RoaringBitmap, ids: I)
where
    I: IntoIterator<Item = u32>,
    I::IntoIter: Clone,
{
    let ids = ids.into_iter();
    if b.append(ids.clone()).is_err() {
        b.extend(ids);
    }
}

impl Posting {
    pub(crate) fn insert(&mut self, id: u32) {
        match self {
            Posting::One(x) if *x == id => {}
            Posting::One(x) => {
                let b: RoaringBitmap = [*x, id].into_iter().collect();
                *self = Posting::Many(Arc::new(b));
            }
            Posting::Many(b) => {
                Arc::make_mut(b).insert(id);
            }
        }
    }

    /// [`insert`](Self::insert)s each of `ids`: the bitmap is unshared
    /// once, and ids that ascend above its largest are appended
    /// ([`add_ids`]).
    pub(crate) fn extend<I>(&mut self, ids: I)
    where
        I: IntoIterator<Item = u32>,
        I::IntoIter: Clone,
    {
        let mut ids = ids.into_iter();
        loop {
            match self {
                Posting::One(x) => match ids.next() {
                    None => return,
                    Some(id) if id == *x => {}
                    Some(id) => {
                        let b: RoaringBitmap = [*x, id].into_iter().collect();
                        *self = Posting::Many(Arc::new(b));
                    }
                },
                Posting::Many(b) => {
                    add_ids(Arc::make_mut(b), ids);
                    return;
                }
            }
        }
    }

    /// Removes `id`; true when nothing is left.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        match self {
            Posting::One(x) => *x == id,
            Posting::Many(b) => {
                Arc::make_mut(b).remove(id);
                self.shrink()
            }
        }
    }

    /// Removes `ids`; true when nothing is left.
    pub(crate) fn remove_all(&mut self, ids: &RoaringBitmap) -> bool {
        match self {
            Posting::One(x) => ids.contains(*x),
            Posting::Many(b) => {
                *Arc::make_mut(b) -= ids;
                self.shrink()
            }
        }
    }

    pub(crate) fn insert_all(&mut self, ids: &RoaringBitmap) {
        let mut b = self.to_bitmap();
        b |= ids;
        *self = Posting::Many(Arc::new(b));
        self.shrink();
    }

    /// Back to the inline form when one id is left; true when empty.
    fn shrink(&mut self) -> bool {
        if let Posting::Many(b) = self {
            match (b.len(), b.min()) {
                (0, _) => return true,
                (1, Some(x)) => *self = Posting::One(x),
                _ => {}
            }
        }
        false
    }

    pub(crate) fn from_bitmap(b: RoaringBitmap) -> Option<Posting> {
        let mut p = Posting::Many(Arc::new(b));
        (!p.shrink()).then_some(p)
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Posting::One(_) => 1,
            Posting::Many(b) => b.len(),
        }
    }

    pub(crate) fn min(&self) -> Option<u32> {
        match self {
            Posting::One(x) => Some(*x),
            Posting::Many(b) => b.min(),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (one, many) = match self {
            Posting::One(x) => (Some(*x), None),
            Posting::Many(b) => (None, Some(b.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// `|self ∩ within|` (`|self|` when `within` is `None`).
    pub(crate) fn len_within(&self, within: Option<&RoaringBitmap>) -> u64 {
        match (self, within) {
            (_, None) => self.len(),
            (Posting::One(x), Some(w)) => u64::from(w.contains(*x)),
            (Posting::Many(b), Some(w)) => w.intersection_len(b),
        }
    }

    /// `out |= self ∩ within`.
    pub(crate) fn add_to(&self, out: &mut RoaringBitmap, within: Option<&RoaringBitmap>) {
        match (self, within) {
            (Posting::One(x), w) => {
                if w.is_none_or(|w| w.contains(*x)) {
                    out.insert(*x);
                }
            }
            (Posting::Many(b), None) => *out |= &**b,
            (Posting::Many(b), Some(w)) => *out |= w & &**b,
        }
    }

    /// `self ∩ other` as a bitmap.
    pub(crate) fn and(&self, other: &RoaringBitmap) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        self.add_to(&mut out, Some(other));
        out
    }

    pub(crate) fn to_bitmap(&self) -> RoaringBitmap {
        match self {
            Posting::One(x) => std::iter::once(*x).collect(),
            Posting::Many(b) => (**b).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn posting_is_two_words() {
        assert_eq!(std::mem::size_of::<super::Posting>(), 16);
    }

    use super::*;

    #[test]
    fn one_and_many_are_the_same_set() {
        let mut p = Posting::One(3);
        p.insert(5);
        assert!(matches!(p, Posting::Many(_)));
        assert!(!p.remove(3));
        assert!(matches!(p, Posting::One(5)));
        assert_eq!(p, Posting::Many(Arc::new([5].into_iter().collect())));
        assert!(p.remove(5));
        let w: RoaringBitmap = [1, 5].into_iter().collect();
        assert_eq!(Posting::One(5).len_within(Some(&w)), 1);
        assert_eq!(Posting::One(4).len_within(Some(&w)), 0);
        let mut q = Posting::One(1);
        q.insert_all(&w);
        assert_eq!(q.len(), 2);
        assert!(!q.remove_all(&[1].into_iter().collect()));
        assert_eq!(q, Posting::One(5));
    }

    /// Extending inserts each id as `insert` does, and leaves a bitmap a
    /// copy shares unchanged.
    #[test]
    fn extending_is_inserting_each() {
        // Ascending above the largest (appended), out of order after an
        // appended start, at or below the largest.
        let cases: [&[u32]; 8] = [
            &[],
            &[7],
            &[7, 7],
            &[2, 9, 70_000, 9, 1],
            &[7, 8],
            &[8, 9, 70_000, 200_000],
            &[8, 70_000, 9, 3],
            &[8, 8],
        ];
        for start in [
            Posting::One(7),
            Posting::Many(Arc::new([1, 7].into_iter().collect())),
        ] {
            for ids in cases {
                let mut each = start.clone();
                ids.iter().for_each(|id| each.insert(*id));
                let mut extended = start.clone();
                extended.extend(ids.iter().copied());
                assert_eq!(extended, each, "{start:?} + {ids:?}");
                assert_eq!(extended.len(), each.len());
                assert_eq!(matches!(extended, Posting::One(_)), each.len() == 1);
            }
        }
        let shared = Arc::new([1, 2].into_iter().collect::<RoaringBitmap>());
        let mut p = Posting::Many(shared.clone());
        p.extend([3]);
        assert_eq!(shared.len(), 2);
        assert_eq!(p.len(), 3);
    }
}
