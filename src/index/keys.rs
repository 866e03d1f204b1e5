//! The postings of one index by key, each key decoded from a checkpoint's
//! bytes only when something reads it.
//!
//! Owns: whether a key's postings are in memory or still encoded, the
//! changes made to a key before it is decoded (kept in order and applied
//! when it is), and the per-key add/remove rules every path shares. Must
//! not: know the file around the bytes (the store's checkpoint module
//! checks header and checksum before any key is read) or plan queries.
//!
//! Why lazy: a count reads a handful of keys, while most of a checkpoint's
//! bytes are the keys nearly every machine holds a value of its own for
//! (Name, Uuid, Address, serial numbers). A process that opens the store to
//! answer one count decodes only what the count reads. Writes to a key that
//! is still encoded are queued beside its bytes (up to [`MAX_QUEUED`], then
//! it is decoded), so that replaying writes at open does not decode Name and
//! Uuid either. An encoded key with nothing queued is copied into the next
//! checkpoint as it is. Its first [`SCANS_BEFORE_DECODE`] lookups (a
//! machine by Name or Uuid, the replay's Uuids) scan its section with the
//! queued writes laid over ([`Keys::find_each`]) instead of decoding it.
//!
//! A section stays where the checkpoint reader found it: in its file, at
//! an offset, with the CRC-32 the reader took of it while it checked the
//! whole file at open ([`Bytes::InFile`]; tests hold sections in memory). A
//! process that reads one key reads only that key's bytes into memory. The
//! file is never written in place (a new checkpoint is a new file renamed
//! over it, and the open file keeps the old one), so a read that finds other
//! bytes than the open checked means the file was changed behind the
//! store's back, or the disk failed. Such a key, like one that fails to
//! decode (a bug), is reported on stderr and built again from the records
//! themselves by the store's [`Repair`] (every machine record read, for that
//! one key); only without one (tests) is it read as empty.
//!
//! [`Store::verify_indexes`]: crate::Store::verify_indexes

use std::borrow::Cow;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use roaring::RoaringBitmap;

use super::posting::add_ids;
use super::{FastMap, Posting, Postings, ValueKey};
use crate::filter::Key;

/// Builds one key's postings from the records themselves, as they stand
/// when it is called (the store holds the state's lock, so they match the
/// index); set by the store on an index read from a checkpoint.
pub(crate) type Repair = Arc<dyn Fn(&Key) -> Result<Postings, String> + Send + Sync>;

/// Writes queued on one encoded key before it is decoded instead.
const MAX_QUEUED: usize = 4096;

/// Lookups of an encoded key answered by scanning its section before the
/// next decodes it. A scan costs about a twelfth of a decode (the Uuid key
/// of 1M machines: 15–18 against 180–230 ms), so four scans and then the
/// decode cost at most about 1.3× what decoding at the first lookup would
/// have, while a process that looks up once or twice (a CLI write, an
/// open's replay) pays a twelfth.
pub(super) const SCANS_BEFORE_DECODE: u32 = 4;

/// A change to one key's postings.
#[derive(Debug, Clone)]
enum Op {
    Add(ValueKey, u32),
    Sub(ValueKey, u32),
    RemoveAll(Arc<RoaringBitmap>),
}

/// One key: decoded, or its encoded section and what changed since.
#[derive(Debug, Clone)]
enum Slot {
    Decoded(Postings),
    Encoded {
        /// Filled by the first read through `&self`.
        lazy: OnceLock<Postings>,
        enc: Encoded,
    },
}

/// Where an encoded key's section is.
#[derive(Clone)]
pub(crate) enum Bytes {
    /// In memory.
    Held(Box<[u8]>),
    /// In a checkpoint file, as its reader checked it.
    InFile(FileSection),
}

/// A section's place in a checkpoint file and its CRC-32 as read at open.
#[derive(Clone)]
pub(crate) struct FileSection {
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) crc: u32,
}

impl Bytes {
    /// The section's bytes, read again (and checked) if they are in a file.
    pub(super) fn read(&self) -> Result<Cow<'_, [u8]>, String> {
        match self {
            Bytes::Held(b) => Ok(Cow::Borrowed(b)),
            Bytes::InFile(s) => {
                let mut buf = vec![0; s.len as usize];
                std::os::unix::fs::FileExt::read_exact_at(&*s.file, &mut buf, s.offset)
                    .map_err(|e| format!("cannot be read again ({e})"))?;
                if crc32fast::hash(&buf) != s.crc {
                    return Err("holds other bytes than the open checked".into());
                }
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// Streams the section's bytes to `scan` (from its file in pieces, never
    /// the whole section in memory), then checks that they were the bytes
    /// the open checked: a scan's answer is only trusted after that.
    pub(super) fn scan<T>(
        &self,
        scan: impl FnOnce(&mut dyn Read) -> Result<T, String>,
    ) -> Result<T, String> {
        match self {
            Bytes::Held(b) => scan(&mut &b[..]),
            Bytes::InFile(s) => {
                let mut r = SectionReader {
                    file: &s.file,
                    at: s.offset,
                    left: s.len,
                    crc: crc32fast::Hasher::new(),
                };
                let found = scan(&mut r)?;
                if r.left != 0 || r.crc.finalize() != s.crc {
                    return Err("holds other bytes than the open checked".into());
                }
                Ok(found)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Bytes::Held(b) => b.len(),
            Bytes::InFile(s) => s.len as usize,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Bytes::Held(b) => b.len(),
            Bytes::InFile(_) => 0,
        }
    }
}

/// A section in its file as a stream, with the CRC-32 of what was read.
struct SectionReader<'a> {
    file: &'a std::fs::File,
    at: u64,
    left: u32,
    crc: crc32fast::Hasher,
}

impl Read for SectionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        let got = std::os::unix::fs::FileExt::read_at(self.file, &mut buf[..n], self.at)?;
        self.crc.update(&buf[..got]);
        self.at += got as u64;
        // At most `left`: `n` is.
        self.left -= got as u32;
        Ok(got)
    }
}

struct Encoded {
    /// The key's section: dropped when the key is decoded, so a store that
    /// has read every key holds no checkpoint bytes.
    section: Bytes,
    /// The key is a set (`Profiles`): no `has` bitmap.
    set: bool,
    queued: Vec<Op>,
    /// Lookups answered by scanning the section ([`Keys::find_each`]).
    scans: AtomicU32,
}

impl Clone for Encoded {
    fn clone(&self) -> Self {
        Encoded {
            section: self.section.clone(),
            set: self.set,
            queued: self.queued.clone(),
            scans: AtomicU32::new(self.scans.load(Ordering::Relaxed)),
        }
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encoded({} bytes, {} queued)",
            self.section.len(),
            self.queued.len()
        )
    }
}

impl Slot {
    fn get(&self, k: &Key, repair: Option<&Repair>) -> &Postings {
        match self {
            Slot::Decoded(p) => p,
            Slot::Encoded { lazy, enc } => lazy.get_or_init(|| enc.decode(k, repair)),
        }
    }

    fn get_mut(&mut self, k: &Key, repair: Option<&Repair>) -> &mut Postings {
        if let Slot::Encoded { lazy, enc } = self {
            let p = lazy.take().unwrap_or_else(|| enc.decode(k, repair));
            *self = Slot::Decoded(p);
        }
        match self {
            Slot::Decoded(p) => p,
            Slot::Encoded { .. } => unreachable!("decoded just above"),
        }
    }

    /// An encoded key nothing has read yet, and what is queued on it.
    fn pending(&self) -> Option<&Encoded> {
        match self {
            Slot::Encoded { lazy, enc } if lazy.get().is_none() => Some(enc),
            _ => None,
        }
    }

    /// Queues `op()` if the key is still encoded and has room (and returns
    /// true); else makes no op at all, since building one clones a value.
    fn queue(&mut self, op: impl FnOnce() -> Op) -> bool {
        match self {
            Slot::Encoded { lazy, enc }
                if lazy.get().is_none() && enc.queued.len() < MAX_QUEUED =>
            {
                enc.queued.push(op());
                true
            }
            _ => false,
        }
    }
}

impl Encoded {
    /// The section decoded with its queued writes; a section that cannot
    /// be read or decoded is built from the records instead (`repair`),
    /// which already hold every queued write.
    fn decode(&self, k: &Key, repair: Option<&Repair>) -> Postings {
        let decoded = self.section.read().and_then(|bytes| {
            super::codec::decode_section(&bytes).map_err(|e| format!("does not decode ({e})"))
        });
        let mut p = match decoded {
            Ok(p) => p,
            Err(e) => {
                let Some(repair) = repair else {
                    eprintln!("fleetkv: index checkpoint key {k:?} {e}; read as empty");
                    return Postings::default();
                };
                eprintln!("fleetkv: index checkpoint key {k:?} {e}; built from the records");
                return repair(k).unwrap_or_else(|why| {
                    eprintln!("fleetkv: index key {k:?} could not be built from the records ({why}); read as empty");
                    Postings::default()
                });
            }
        };
        for op in &self.queued {
            match op {
                Op::Add(v, id) => p.add(v, *id, self.set),
                Op::Sub(v, id) => p.sub(v, *id),
                Op::RemoveAll(ids) => p.remove_ids(ids),
            }
        }
        p
    }
}

impl Postings {
    /// `id` holds `v`. `has` is kept for scalar keys, not for a `set`.
    pub(super) fn add(&mut self, v: &ValueKey, id: u32, set: bool) {
        self.values.add(v, id);
        if !set {
            self.has.insert(id);
        }
    }

    /// [`add`](Self::add) for each of `items` (in order of value, then id).
    fn add_sorted(&mut self, items: &[(&ValueKey, u32)], set: bool) {
        self.values.add_sorted(items);
        if !set {
            add_ids(&mut self.has, items.iter().map(|(_, id)| *id));
        }
    }

    /// `id` no longer holds `v`.
    pub(super) fn sub(&mut self, v: &ValueKey, id: u32) {
        self.values.sub(v, id);
        self.has.remove(id);
    }

    /// None of `ids` holds anything.
    pub(super) fn remove_ids(&mut self, ids: &RoaringBitmap) {
        self.values.remove_ids(ids);
        self.has -= ids;
    }
}

/// `values`' postings from `slot`'s section, if it is still encoded, within
/// its scans, and reads back.
fn scanned(slot: &Slot, values: &[ValueKey]) -> Option<Vec<Option<Posting>>> {
    let enc = slot.pending()?;
    if enc.scans.fetch_add(1, Ordering::Relaxed) >= SCANS_BEFORE_DECODE {
        return None;
    }
    let mut found = enc
        .section
        .scan(|bytes| super::codec::find_in_section(bytes, values))
        .ok()?;
    // Where each asked value is: an open's replay asks for many at once.
    let mut at: FastMap<&ValueKey, Vec<usize>> = FastMap::default();
    if !enc.queued.is_empty() {
        for (i, v) in values.iter().enumerate() {
            at.entry(v).or_default().push(i);
        }
    }
    let asked = |v: &ValueKey| at.get(v).map_or(&[][..], Vec::as_slice);
    for op in &enc.queued {
        match op {
            Op::Add(v, id) => {
                for &i in asked(v) {
                    match &mut found[i] {
                        Some(p) => p.insert(*id),
                        f @ None => *f = Some(Posting::One(*id)),
                    }
                }
            }
            Op::Sub(v, id) => {
                for &i in asked(v) {
                    if found[i].as_mut().is_some_and(|p| p.remove(*id)) {
                        found[i] = None;
                    }
                }
            }
            Op::RemoveAll(ids) => {
                for f in found.iter_mut() {
                    if f.as_mut().is_some_and(|p| p.remove_all(ids)) {
                        *f = None;
                    }
                }
            }
        }
    }
    Some(found)
}

pub(super) fn is_set(k: &Key) -> bool {
    matches!(k, Key::Profiles)
}

/// The slot to write, copied first if another copy of the index holds it
/// (a checkpoint's, or an import's prepared copy: `Arc::make_mut`). A tree
/// whose values call for packing is copied into its packed form instead: it
/// costs about what the copy would, and makes every later copy cheap (the
/// block map, not a node per value).
fn unshare(slot: &mut Arc<Slot>) -> &mut Slot {
    if Arc::get_mut(slot).is_none() {
        if let Slot::Decoded(p) = &**slot {
            if let Some(values) = p.values.repacked() {
                let has = p.has.clone();
                *slot = Arc::new(Slot::Decoded(Postings { values, has }));
            }
        }
    }
    Arc::make_mut(slot)
}

/// An index's keys. A key with no values is absent.
#[derive(Clone, Default)]
pub(crate) struct Keys {
    /// Shared with the copies [`for_checkpoint`](Keys::for_checkpoint)
    /// hands out: a write to a key another copy holds copies that key first.
    map: FastMap<Key, Arc<Slot>>,
    repair: Option<Repair>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        self.names().count() == other.names().count()
            && self.names().all(|k| self.get(k) == other.get(k))
    }
}

impl Keys {
    /// Keys from their encoded sections, decoded when first read.
    pub(super) fn encoded(sections: Vec<(Key, Bytes)>) -> Keys {
        let map = sections
            .into_iter()
            .map(|(k, section)| {
                let enc = Encoded {
                    section,
                    set: is_set(&k),
                    queued: Vec::new(),
                    scans: AtomicU32::new(0),
                };
                let slot = Slot::Encoded {
                    lazy: OnceLock::new(),
                    enc,
                };
                (k, Arc::new(slot))
            })
            .collect();
        Keys { map, repair: None }
    }

    /// What a key whose section fails its check is read as instead.
    pub(super) fn set_repair(&mut self, repair: Repair) {
        self.repair = Some(repair);
    }

    pub(crate) fn get(&self, k: &Key) -> Option<&Postings> {
        self.map
            .get(k)
            .map(|slot| slot.get(k, self.repair.as_ref()))
            .filter(|p| !p.values.is_empty())
    }

    /// The posting of each of `values` under `k`. A key still encoded is
    /// scanned in its section, with what is queued on it laid over, for its
    /// first [`SCANS_BEFORE_DECODE`] lookups, and decoded by the next: a
    /// process that looks one machine up by Name, or an open that replays a
    /// few machines' events and looks their Uuids up, reads the key's bytes
    /// once instead of building every value (the Uuid key at 1M: 15–18 ms
    /// against 180–230 ms), while a server that keeps looking up soon holds
    /// the key decoded. A section that cannot be read or scanned is left to the
    /// decode, which reports and repairs it.
    pub(crate) fn find_each(&self, k: &Key, values: &[ValueKey]) -> Vec<Option<Posting>> {
        let Some(slot) = self.map.get(k) else {
            return vec![None; values.len()];
        };
        if let Some(found) = scanned(slot, values) {
            return found;
        }
        let postings = slot.get(k, self.repair.as_ref());
        postings
            .values
            .get_each(values)
            .into_iter()
            .map(|p| p.map(Cow::into_owned))
            .collect()
    }

    /// [`find_each`](Self::find_each) of one value.
    pub(crate) fn find(&self, k: &Key, v: &ValueKey) -> Option<Cow<'_, Posting>> {
        let slot = self.map.get(k)?;
        match scanned(slot, std::slice::from_ref(v)) {
            Some(found) => found.into_iter().next().flatten().map(Cow::Owned),
            None => slot.get(k, self.repair.as_ref()).values.get(v),
        }
    }

    /// Every key that holds a value; decodes only encoded keys with queued
    /// writes (to learn whether those emptied them).
    pub(crate) fn names(&self) -> impl Iterator<Item = &Key> {
        self.map.iter().filter_map(|(k, slot)| {
            let untouched = slot.pending().is_some_and(|e| e.queued.is_empty());
            (untouched || !slot.get(k, self.repair.as_ref()).values.is_empty()).then_some(k)
        })
    }

    /// The decoded postings of `k`, created empty if absent.
    pub(super) fn entry(&mut self, k: &Key) -> &mut Postings {
        // Look up before inserting: cloning keys on every add is the bulk of
        // rebuild and import time otherwise.
        if !self.map.contains_key(k) {
            self.map
                .insert(k.clone(), Arc::new(Slot::Decoded(Postings::default())));
        }
        match self.map.get_mut(k) {
            Some(slot) => unshare(slot).get_mut(k, self.repair.as_ref()),
            None => unreachable!("inserted above"),
        }
    }

    /// Drops `k` if it holds nothing (only decoded keys are looked at).
    pub(super) fn prune(&mut self, k: &Key) {
        if matches!(self.map.get(k).map(|s| &**s), Some(Slot::Decoded(p)) if p.values.is_empty()) {
            self.map.remove(k);
        }
    }

    pub(super) fn add(&mut self, k: &Key, v: &ValueKey, id: u32) {
        match self.map.get_mut(k) {
            Some(slot) => {
                let slot = unshare(slot);
                if !slot.queue(|| Op::Add(v.clone(), id)) {
                    slot.get_mut(k, self.repair.as_ref()).add(v, id, is_set(k));
                }
            }
            None => self.entry(k).add(v, id, is_set(k)),
        }
    }

    /// [`add`](Self::add) for each of `items` (in order of value, then
    /// id), the key looked up and copied once.
    pub(super) fn add_sorted(&mut self, k: &Key, items: &[(&ValueKey, u32)]) {
        let set = is_set(k);
        let Some(slot) = self.map.get_mut(k) else {
            self.entry(k).add_sorted(items, set);
            return;
        };
        let slot = unshare(slot);
        let queued = items
            .iter()
            .take_while(|(v, id)| slot.queue(|| Op::Add((*v).clone(), *id)))
            .count();
        if queued < items.len() {
            slot.get_mut(k, self.repair.as_ref())
                .add_sorted(&items[queued..], set);
        }
    }

    pub(super) fn sub(&mut self, k: &Key, v: &ValueKey, id: u32) {
        let Some(slot) = self.map.get_mut(k) else {
            return;
        };
        let slot = unshare(slot);
        if !slot.queue(|| Op::Sub(v.clone(), id)) {
            slot.get_mut(k, self.repair.as_ref()).sub(v, id);
            self.prune(k);
        }
    }

    /// Removes `ids` from every key (queued on encoded keys).
    pub(super) fn remove_ids(&mut self, ids: &RoaringBitmap) {
        let shared = Arc::new(ids.clone());
        let repair = self.repair.as_ref();
        self.map.retain(|k, slot| {
            let slot = unshare(slot);
            if slot.queue(|| Op::RemoveAll(shared.clone())) {
                return true;
            }
            let p = slot.get_mut(k, repair);
            p.remove_ids(ids);
            !p.values.is_empty()
        });
    }

    /// Rebuilds every decoded key's value map from its sorted entries.
    /// Inserting values in ascending order (ids are assigned in name order
    /// at import, so Name, Uuid and serial numbers mostly arrive ascending)
    /// leaves B-tree nodes half full; a bulk build fills them, which
    /// roughly halves the memory of the keys whose values are unique.
    pub(super) fn compact(&mut self) {
        for slot in self.map.values_mut() {
            if matches!(**slot, Slot::Decoded(_)) {
                if let Slot::Decoded(p) = Arc::make_mut(slot) {
                    p.values.compact();
                }
            }
        }
    }

    /// Estimated heap bytes: the map, each key's name, and each key's
    /// postings (decoded) or bytes and queued writes (still encoded).
    pub(super) fn heap_bytes(&self) -> usize {
        let map = self.map.capacity() * (std::mem::size_of::<(Key, Arc<Slot>)>() + 1)
            + self.map.len() * (std::mem::size_of::<Slot>() + 2 * std::mem::size_of::<usize>());
        let slots: usize = self
            .map
            .iter()
            .map(|(k, slot)| {
                let name = match k {
                    Key::Param(n) | Key::Meta(n) => n.capacity(),
                    _ => 0,
                };
                name + match &**slot {
                    Slot::Decoded(p) => super::memory::postings(p),
                    Slot::Encoded { lazy, enc } => {
                        enc.section.heap_bytes()
                            + enc.queued.capacity() * std::mem::size_of::<Op>()
                            + lazy.get().map_or(0, super::memory::postings)
                    }
                }
            })
            .sum();
        map + slots
    }

    /// `(key, section)` for a checkpoint: an encoded key nothing changed is
    /// copied as it is.
    /// `k`'s postings read through its repair, when the index has one
    /// (after its raw section failed to read back).
    pub(super) fn repaired(&self, k: &Key) -> Option<&Postings> {
        let repair = self.repair.as_ref()?;
        self.map.get(k).map(|slot| slot.get(k, Some(repair)))
    }

    /// A copy to encode a checkpoint from while writes go on: it shares
    /// every key (a write copies a key before it changes it) and has no
    /// repair, since a repair reads the records as they stand, which is
    /// only the copy's state under the lock this is called with. So every
    /// key with queued writes is decoded here first; encoding the copy
    /// reads only untouched sections, and fails on one that no longer reads
    /// back (encode under the lock then, where the repair applies).
    pub(super) fn for_checkpoint(&self) -> Keys {
        for (k, slot) in &self.map {
            if slot.pending().is_some_and(|e| !e.queued.is_empty()) {
                slot.get(k, self.repair.as_ref());
            }
        }
        Keys {
            map: self.map.clone(),
            repair: None,
        }
    }

    /// Packed forms of this copy's keys that are held as trees but call
    /// for packing ([`Values::repacked`](super::values::Values::repacked)),
    /// built off the state's lock for [`adopt`](Keys::adopt). Each
    /// remembers the slot it was built from.
    pub(super) fn repack(&self) -> Repacked {
        let forms = self
            .map
            .iter()
            .filter_map(|(k, slot)| {
                let Slot::Decoded(p) = &**slot else {
                    return None;
                };
                let packed = Postings {
                    values: p.values.repacked()?,
                    has: p.has.clone(),
                };
                Some((k.clone(), slot.clone(), Arc::new(Slot::Decoded(packed))))
            })
            .collect();
        Repacked(forms)
    }

    /// Takes the packed form of each key still held in the very slot it
    /// was built from (nothing changed it since).
    pub(super) fn adopt(&mut self, repacked: Repacked) -> Released {
        let mut released = Released {
            slots: Vec::with_capacity(2 * repacked.0.len()),
            adopted: 0,
        };
        for (k, from, packed) in repacked.0 {
            match self.map.get_mut(&k) {
                Some(slot) if Arc::ptr_eq(slot, &from) => {
                    released.slots.push(std::mem::replace(slot, packed));
                    released.adopted += 1;
                }
                _ => released.slots.push(packed),
            }
            released.slots.push(from);
        }
        released
    }

    pub(super) fn for_encoding(&self) -> impl Iterator<Item = (&Key, Section<'_>)> {
        self.map.iter().filter_map(|(k, slot)| {
            if let Some(e) = slot.pending().filter(|e| e.queued.is_empty()) {
                return Some((k, Section::Raw(&e.section)));
            }
            let p = slot.get(k, self.repair.as_ref());
            (!p.values.is_empty()).then_some((k, Section::Decoded(p)))
        })
    }
}

/// Packed forms of keys a checkpoint's copy held as trees: see
/// [`Keys::repack`].
pub(crate) struct Repacked(Vec<(Key, Arc<Slot>, Arc<Slot>)>);

/// What [`Keys::adopt`] let go of: the trees the packed keys replaced, and
/// the packed forms it did not take. Dropping it frees them, up to a
/// million tree entries (and a heap string each for Uuid) per key: not
/// under the state's lock.
pub(crate) struct Released {
    slots: Vec<Arc<Slot>>,
    /// How many keys were packed.
    pub(crate) adopted: usize,
}

/// One key's section for a checkpoint.
pub(super) enum Section<'a> {
    Raw(&'a Bytes),
    Decoded(&'a Postings),
}
