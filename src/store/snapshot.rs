//! Clean-close snapshots: what a process needs to count machines, read
//! without opening the storage engine.
//!
//! Owns: the `fleetkv.clean` file — left by a store's clean close while it
//! still holds the engine's directory lock ([`leave`]), removed by every
//! open of the engine before its first write ([`forget`]) and by the first
//! write after a close left it — and [`Snapshot`], which reads it back and
//! answers counts. Must not: open the engine, write anything but its own
//! file, or answer what needs a document (a listing reads records).
//!
//! # Why
//! A script calls `fleetkv machines count …` once per step. Opening sled is
//! most of such a process: 25–55 ms for a 100,000-machine directory on the
//! project's 2-core machine, where `sqlite3` answers the same count in
//! 4–6 ms. A count needs only the machine index, which the index checkpoint
//! holds, and the param definitions (defaults and types bind the filter).
//! What the writes since the checkpoint changed, the closing store knows:
//! its state keeps the machines and profiles changed after the checkpoint
//! on disk ([`Changed`], filled by the write path and by an open's replay,
//! emptied up to a checkpoint's revision when one is written, and never
//! holding more machines than a snapshot would index again).
//!
//! # What the file holds
//! The store's revision and the checkpoint's; the checkpoint file's
//! identity (inode, length, modification and change times); the same
//! identity for every file of the engine in the directory (everything not
//! named `fleetkv.*`); every machine id at the close; and records as
//! stored: the counters, every param definition and profile, and the
//! machines whose postings may differ from the checkpoint's — those changed
//! since it and the members of every profile changed since (at most
//! [`MOST_CHANGED`]; past that, or after a change of `global`, a close
//! leaves none). A CRC-32 covers it all.
//!
//! [`Snapshot::open`] brings the checkpoint forward as an open does from the
//! change log: those machines, and the ones gone since (in the checkpoint,
//! not at the close), are removed from every posting, and the ones with a
//! record are indexed again. The machine ids must then be the close's.
//!
//! # When a snapshot is trusted
//! [`Snapshot::open`] takes a shared lock on the engine's lock file (sled's
//! `db`, which sled's open locks exclusively): no engine is open on the
//! directory while the snapshot is checked and the checkpoint's file opened
//! (read after the lock is let go: the file is only ever replaced, never
//! written in place), and an open that comes meanwhile waits, as it would
//! for another handle.
//! Then the file must check, every engine file must have the identity it
//! had at the close, and so must the checkpoint, which is read as an open
//! reads it (its own CRC-32, then each key's section checked again when a
//! count first reads it). Anything else — no file, another process holding
//! the store, a changed file, a key whose section fails its check — is
//! "no snapshot": the caller opens the store, which sees and repairs what
//! changed. The file is a shortcut, never a source of truth: an engine
//! write after a close removes it first, and the identities catch a store
//! written by a build that does not know the file.
//!
//! The identities are pinned after the close's last flush, which first
//! stops the engine's own background work ([`Backend::close`]: sled's
//! flusher cleans segments, moving pages and shrinking its file, after any
//! flush of ours).
//!
//! A close leaves no snapshot while a lease is live: the next open may end
//! it, which is a write. A snapshot holds no leases and no documents: it
//! answers counts and group counts, nothing else.
//!
//! Tests: `tests/checkpoint.rs` (every write kind brought forward, every
//! change behind the snapshot's back, the CLI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::backend::{Backend, Batch};
use super::checkpoint;
use super::layout::{
    decode, machine_id_of, machine_key, LOG_LEN_KEY, MACHINE_PREFIX, NEXT_ID_KEY, PARAM_PREFIX,
    PROFILE_PREFIX, SECRET_KEY,
};
use super::list::group_keys;
use super::memory_backend::MemoryBackend;
use super::rebuild::load_definitions;
use super::state::State;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::index::GroupCount;
use crate::model::{Kind, GLOBAL_PROFILE};
use crate::watch::Change;

/// The file's name in the store's directory.
pub(super) const FILE: &str = "fleetkv.clean";
/// The engine's lock file (sled locks `db` for as long as it is open).
const ENGINE_LOCK: &str = "db";
const MAGIC: &[u8; 8] = b"FKVCLEAN";
const VERSION: u32 = 1;
/// magic, version, body length, body CRC.
const HEADER: usize = 8 + 4 + 8 + 4;

/// A file as a snapshot pins it: inode, length, modification and change
/// times (seconds, nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Every engine file under `dir` (not named `fleetkv.*`), by path relative
/// to `dir`, in path order.
fn engine_files(dir: &Path) -> std::io::Result<Vec<(String, Identity)>> {
    fn walk(dir: &Path, at: &str, out: &mut Vec<(String, Identity)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if at.is_empty() && name.starts_with("fleetkv.") {
                continue;
            }
            let path = format!("{at}{name}");
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), &format!("{path}/"), out)?;
            } else {
                out.push((path, Identity::of(&meta)));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What the file says.
#[derive(Debug, PartialEq)]
struct Clean {
    rev: u64,
    /// The checkpoint's revision, and its file.
    checkpoint_rev: u64,
    checkpoint: Identity,
    engine: Vec<(String, Identity)>,
    /// Every machine at `rev` (roaring's portable format).
    universe: Vec<u8>,
    /// Counters, definitions, profiles, and the records of the machines to
    /// index again, as stored.
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Clean {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.rev.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_rev.to_le_bytes());
        put_identity(&mut b, &self.checkpoint);
        b.extend_from_slice(&(self.engine.len() as u64).to_le_bytes());
        for (path, id) in &self.engine {
            put_bytes(&mut b, path.as_bytes());
            put_identity(&mut b, id);
        }
        put_bytes(&mut b, &self.universe);
        b.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        for (k, v) in &self.records {
            put_bytes(&mut b, k);
            put_bytes(&mut b, v);
        }
        let mut out = Vec::with_capacity(HEADER + b.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
        out.extend_from_slice(&b);
        out
    }

    /// `None` for anything but a whole file of this version.
    fn decode(bytes: &[u8]) -> Option<Clean> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC || r.u32()? != VERSION {
            return None;
        }
        let len = usize::try_from(r.u64()?).ok()?;
        let crc = r.u32()?;
        if r.0.len() != len || crc32fast::hash(r.0) != crc {
            return None;
        }
        let rev = r.u64()?;
        let checkpoint_rev = r.u64()?;
        let checkpoint = r.identity()?;
        let mut engine = Vec::new();
        for _ in 0..r.u64()? {
            let path = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            engine.push((path, r.identity()?));
        }
        let universe = r.bytes()?.to_vec();
        let mut records = Vec::new();
        for _ in 0..r.u64()? {
            records.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
        }
        r.0.is_empty().then_some(Clean {
            rev,
            checkpoint_rev,
            checkpoint,
            engine,
            universe,
            records,
        })
    }
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    b.extend_from_slice(bytes);
}

fn put_identity(b: &mut Vec<u8>, id: &Identity) {
    for n in [id.ino, id.len] {
        b.extend_from_slice(&n.to_le_bytes());
    }
    for n in [id.mtime.0, id.mtime.1, id.ctime.0, id.ctime.1] {
        b.extend_from_slice(&n.to_le_bytes());
    }
}

/// The unread rest of the file; every read is `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    fn identity(&mut self) -> Option<Identity> {
        Some(Identity {
            ino: self.u64()?,
            len: self.u64()?,
            mtime: (self.i64()?, self.i64()?),
            ctime: (self.i64()?, self.i64()?),
        })
    }
}

/// The machines (by id) and profiles changed after a revision, each with
/// the revision of its last change: what a close needs to bring the
/// checkpoint on disk forward in a snapshot. Kept in the state of a store
/// in a directory; a checkpoint at a revision forgets what it covers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Changed {
    /// Every write after this revision is here.
    since: u64,
    machines: HashMap<u32, u64>,
    profiles: HashMap<String, u64>,
    /// The last change of the `global` profile (every machine changed).
    global: u64,
    /// The last change of a machine left out of `machines`, which holds at
    /// most [`MOST_CHANGED`]: past that a close leaves no snapshot anyway,
    /// until a checkpoint covers this revision.
    overflow: u64,
}

impl Changed {
    /// Nothing changed after `rev` yet.
    pub(super) fn since(rev: u64) -> Changed {
        Changed {
            since: rev,
            ..Changed::default()
        }
    }

    pub(super) fn machine(&mut self, id: u32, rev: u64) {
        if self.machines.len() < MOST_CHANGED as usize || self.machines.contains_key(&id) {
            self.machines.insert(id, rev);
        } else {
            self.overflow = rev;
        }
    }

    pub(super) fn profile(&mut self, name: &str, rev: u64) {
        if name == GLOBAL_PROFILE {
            self.global = rev;
        } else {
            self.profiles.insert(name.to_string(), rev);
        }
    }

    /// The ids of the machines `batch` stores a record of: every machine a
    /// write creates or changes (a machine deleted has no id left: the
    /// snapshot finds it gone from the universe).
    pub(super) fn written_machines(batch: &Batch) -> Vec<u32> {
        batch
            .ops
            .iter()
            .filter(|(_, value)| value.is_some())
            .filter_map(|(key, _)| machine_id_of(key))
            .collect()
    }

    /// Notes a write at `rev`: the machines it wrote (see
    /// [`written_machines`](Self::written_machines)) and the profiles its
    /// `changes` name.
    pub(super) fn note(st: &mut State, machines: &[u32], changes: &[Change], rev: u64) {
        for &id in machines {
            st.changed.machine(id, rev);
        }
        for c in changes.iter().filter(|c| c.kind == Kind::Profile) {
            st.changed.profile(&c.key, rev);
        }
    }

    /// Forgets what a checkpoint at `rev` covers.
    pub(super) fn covered(&mut self, rev: u64) {
        self.machines.retain(|_, r| *r > rev);
        self.profiles.retain(|_, r| *r > rev);
        self.since = self.since.max(rev);
    }
}

/// The most machines a snapshot indexes again itself: past it, opening the
/// store costs less than decoding them in every count.
const MOST_CHANGED: u64 = 4096;

/// Leaves `dir`'s snapshot of a store whose state is `st` and whose engine
/// `db` is flushed and takes no more writes meanwhile (the caller holds the
/// writer lock), when the checkpoint there and what changed since it make
/// one: the checkpoint at or behind `st`'s revision, no `global` change
/// since, at most [`MOST_CHANGED`] machines to index again. Returns
/// whether it left one.
pub(super) fn leave(dir: &Path, db: &dyn Backend, st: &State) -> Result<bool> {
    let io =
        |e: std::io::Error| Error::Storage(format!("leaving {}: {e}", dir.join(FILE).display()));
    let ck_path = dir.join(checkpoint::FILE);
    let changed = &st.changed;
    // Only this store's own checkpoint: an open that refused another's (a
    // rebuild) and wrote none at its close leaves that file in place.
    let Some(secret) = db.get(SECRET_KEY)? else {
        return Ok(false);
    };
    let Some(at) = checkpoint::revision_of(&ck_path, &checkpoint::store_digest(&secret)) else {
        return Ok(false);
    };
    if db.revision()? != st.rev
        || at > st.rev
        || at < changed.since
        || changed.global > at
        || changed.overflow > at
    {
        return Ok(false);
    }
    // The machines whose postings may differ from the checkpoint's: those
    // changed since, and the members of every profile changed since (a
    // member that left or joined changed itself). Gone ones are not in the
    // universe the file holds.
    let profiles = changed.profiles.iter().filter(|(_, r)| **r > at);
    let mut ids: RoaringBitmap = changed
        .machines
        .iter()
        .filter(|(_, r)| **r > at)
        .map(|(id, _)| *id)
        .collect();
    ids |= checkpoint::members_of(&st.machines, profiles.map(|(p, _)| p));
    ids &= st.machines.universe();
    if ids.len() > MOST_CHANGED {
        return Ok(false);
    }
    let checkpoint = Identity::of(&std::fs::metadata(&ck_path).map_err(io)?);
    let mut records = Vec::new();
    for key in [NEXT_ID_KEY, LOG_LEN_KEY] {
        if let Some(v) = db.get(key)? {
            records.push((key.to_vec(), v));
        }
    }
    for prefix in [PARAM_PREFIX, PROFILE_PREFIX] {
        for item in db.scan_prefix(&[prefix]) {
            records.push(item?);
        }
    }
    for id in &ids {
        let key = machine_key(id);
        match db.get(&key)? {
            Some(v) => records.push((key.to_vec(), v)),
            None => return Ok(false), // the index and the records disagree: no shortcut
        }
    }
    let mut universe = Vec::new();
    st.machines
        .universe()
        .serialize_into(&mut universe)
        .map_err(io)?;
    let clean = Clean {
        rev: st.rev,
        checkpoint_rev: at,
        checkpoint,
        engine: engine_files(dir).map_err(io)?,
        universe,
        records,
    };
    // Written whole under another name, then renamed: a torn file is never
    // read as this one (nor trusted: the CRC would refuse it).
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, clean.encode()).map_err(io)?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io)?;
    Ok(true)
}

/// Removes `dir`'s snapshot: the engine is about to take writes.
pub(super) fn forget(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Storage(format!(
            "removing {}: {e}",
            dir.join(FILE).display()
        ))),
        _ => Ok(()),
    }
}

/// A cleanly closed store's machine index and definitions, read without
/// opening the store: [`count`](Self::count) and
/// [`group_count`](Self::group_count) answer as [`Machines`](super::Machines) would
/// have at the close.
///
/// ```
/// # use fleetkv::{Filter, Machine, Snapshot, Store};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// store.machines().create(Machine::new("m1"))?;
/// store.checkpoint()?;
/// drop(store); // a clean close at the checkpoint's revision leaves one
/// // sled's IO threads let go of the directory a moment after the drop:
/// // until then the store still counts as open (allow for a busy machine).
/// let snap = (0..3000)
///     .find_map(|_| {
///         std::thread::sleep(std::time::Duration::from_millis(10));
///         Snapshot::open(dir.path()).ok().flatten()
///     })
///     .expect("a snapshot");
/// assert_eq!(snap.count(&Filter::parse("Name Eq m1")?)?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Snapshot {
    state: State,
    /// A key's checkpoint section failed its check when read.
    damaged: Arc<AtomicBool>,
    dir: PathBuf,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("dir", &self.dir)
            .field("revision", &self.state.rev)
            .finish()
    }
}

impl Snapshot {
    /// The snapshot the last clean close left in `dir`, if it still
    /// describes the store there. `Ok(None)` when there is none, when the
    /// store is open (in this process or another; a store just dropped in
    /// this process holds the directory a moment longer, while sled's IO
    /// threads let go), or when any of its files changed since: open the
    /// store instead ([`crate::Store::open`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Option<Snapshot>> {
        let dir = dir.as_ref();
        let lock = match std::fs::File::open(dir.join(ENGINE_LOCK)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Storage(format!("{}: {e}", dir.display()))),
        };
        // fs2's, not std's (newer than our MSRV): the same flock(2).
        if fs2::FileExt::try_lock_shared(&lock).is_err() {
            return Ok(None);
        }
        let bytes = match std::fs::read(dir.join(FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Storage(format!("{}: {e}", dir.display()))),
        };
        let Some(clean) = Clean::decode(&bytes) else {
            return Ok(None);
        };
        // The checkpoint's file is opened under the lock and read after it:
        // it is only ever replaced (renamed over), never written in place,
        // so the open file stays what the identity check saw. Readers hold
        // the lock that briefly, and an open of the store waiting for it
        // is not held off by a stream of counts.
        let ck_file = match std::fs::File::open(dir.join(checkpoint::FILE)) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let unchanged = engine_files(dir).is_ok_and(|files| files == clean.engine)
            && ck_file
                .metadata()
                .is_ok_and(|m| Identity::of(&m) == clean.checkpoint);
        drop(lock);
        if !unchanged {
            return Ok(None);
        }
        let Ok(Some(mut ck)) = checkpoint::read_open(Arc::new(ck_file), clean.checkpoint.len)
        else {
            return Ok(None);
        };
        if ck.rev != clean.checkpoint_rev {
            return Ok(None);
        }
        let damaged = Arc::new(AtomicBool::new(false));
        let flag = damaged.clone();
        ck.machines.set_repair(Arc::new(move |_| {
            flag.store(true, Ordering::Release);
            Err("a snapshot holds no records; the store's open rebuilds it".into())
        }));
        let Ok(universe) = RoaringBitmap::deserialize_from(clean.universe.as_slice()) else {
            return Ok(None);
        };
        let db = MemoryBackend::holding(clean.rev, clean.records);
        let mut state = load_definitions(&db)?;
        // The checkpoint brought forward as an open would from the log: the
        // machines changed since, with the members of every profile changed
        // since (their records are here), and the machines gone since.
        let mut machines = ck.machines;
        let mut touched: RoaringBitmap = db
            .scan_prefix(MACHINE_PREFIX)
            .filter_map(|item| item.ok().and_then(|(k, _)| machine_id_of(&k)))
            .collect();
        touched |= machines.universe() - &universe;
        checkpoint::reindex(&mut machines, &touched, &state.profiles, |id| {
            let key = machine_key(id);
            db.get(&key)?.map(|bytes| decode(&key, &bytes)).transpose()
        })?;
        // A member indexed again needs its record: without one it would be
        // missing here, and the snapshot is not used.
        if machines.universe() != &universe {
            return Ok(None);
        }
        state.machines = machines;
        state.next_id = state.next_id.max(ck.next_id);
        Ok(Some(Snapshot {
            state,
            damaged,
            dir: dir.to_path_buf(),
        }))
    }

    /// The store's revision at the close.
    pub fn revision(&self) -> u64 {
        self.state.rev
    }

    /// How many machines match `filter`, as
    /// [`Machines::count`](super::Machines::count) answered at the close.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        let st = &self.state;
        let bound = filter.bind(Kind::Machine, st)?;
        let n = st.machines.count(&bound, None, st);
        self.undamaged().map(|()| n)
    }

    /// [`Machines::group_count`](super::Machines::group_count) at the close.
    pub fn group_count(&self, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        let keys = group_keys(Kind::Machine, by)?;
        let st = &self.state;
        let bound = filter.bind(Kind::Machine, st)?;
        let ids = st.machines.eval(&bound, None, st);
        let groups = st.machines.group_counts(&ids, &keys, st);
        self.undamaged().map(|()| groups)
    }

    /// An answer that read a damaged checkpoint section is no answer.
    fn undamaged(&self) -> Result<()> {
        if self.damaged.load(Ordering::Acquire) {
            return Err(Error::Corrupt {
                key: self.dir.join(checkpoint::FILE).display().to_string(),
                reason: "a section changed since the close; open the store to rebuild it".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: u64) -> Identity {
        Identity {
            ino: n,
            len: n * 10,
            mtime: (n as i64, 7),
            ctime: (n as i64 + 1, -1),
        }
    }

    /// The machines changed since the checkpoint stay within what a
    /// snapshot would index again; one left out holds snapshots back until
    /// a checkpoint covers its change.
    #[test]
    fn changed_machines_are_bounded_and_a_left_out_one_is_remembered() {
        let mut c = Changed::since(0);
        let most = MOST_CHANGED as u32;
        for id in 0..most + 10 {
            c.machine(id, u64::from(id) + 1);
        }
        assert_eq!(c.machines.len(), most as usize);
        assert_eq!(c.overflow, u64::from(most) + 10);
        // A machine already noted is noted again, not left out.
        c.machine(3, 9_999);
        assert_eq!((c.machines[&3], c.overflow), (9_999, u64::from(most) + 10));
        c.covered(u64::from(most));
        assert_eq!(c.machines.len(), 1);
        assert!(c.overflow > c.since, "not covered yet");
        c.covered(10_000);
        assert!(c.machines.is_empty() && c.overflow <= c.since);
    }

    #[test]
    fn the_file_reads_back_and_any_damage_is_no_snapshot() {
        let clean = Clean {
            rev: 42,
            checkpoint_rev: 40,
            checkpoint: identity(1),
            engine: vec![("blobs/1".into(), identity(2)), ("db".into(), identity(3))],
            universe: vec![1, 2, 3],
            records: vec![
                (b"s:next".to_vec(), vec![0, 0, 0, 9]),
                (b"pa".to_vec(), vec![]),
            ],
        };
        let bytes = clean.encode();
        assert_eq!(Clean::decode(&bytes), Some(clean));
        for cut in [0, HEADER - 1, HEADER, bytes.len() - 1] {
            assert_eq!(Clean::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for at in [0, 9, HEADER, bytes.len() / 2, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x04;
            assert_eq!(Clean::decode(&flipped), None, "flipped at {at}");
        }
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(Clean::decode(&newer), None);
    }
}
