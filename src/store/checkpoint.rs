//! Index checkpoints: the machine index written to a file with the revision
//! it is current at, so that an open reads it and the writes since instead
//! of decoding every machine.
//!
//! Owns: the checkpoint file (`fleetkv.index` beside the engine's files),
//! its header and checksum, writing it atomically, reading and validating
//! it, and bringing it forward to the store's revision. Must not: decide
//! when a checkpoint is due (the store's open and write path do, see
//! [`super::open`]) or encode the index itself ([`crate::index`] owns that).
//!
//! # Why a file and a replay
//! A rebuild decodes every machine document (about 20 µs each: 20–30 s for
//! a million). Everything else the state holds — definitions, profiles and
//! the profile index — is small and is read whole at every open. So only
//! the machine index is checkpointed.
//!
//! # Reading it
//! The open reads the whole file once, on a thread of its own while the
//! engine opens ([`Prefetch`]), and checks its CRC-32; the index's small
//! parts (universe, own-param bitmaps) are decoded, while each key's section
//! stays in the file, where it was found, with its own CRC-32 taken on the
//! way ([`crate::index`] reads and checks it again when a query first needs
//! that key). So a process that answers one count holds only the keys it
//! read, and the file's read costs no time beyond the engine's own open.
//! A checkpoint replaced while the open waited for the directory's lock is
//! read again.
//!
//! The checkpoint is brought forward with the change log, without needing
//! the machines' old documents: the log says which machines (by Uuid) and
//! profiles changed after the checkpoint's revision; those machines, the
//! members (as the checkpoint has them) of every changed profile, and every
//! machine created since (ids from the checkpoint's next id on) are removed
//! from every posting and indexed again from their current records. The
//! changed machines' ids are found in one scan of the checkpoint's Uuid
//! section, which stays encoded ([`Index::lookup_each`]).
//! Definitions do not shape postings (defaults are virtual), and a change
//! of the `global` profile touches every machine, so it means a rebuild.
//!
//! # When a checkpoint is refused
//! Missing: a silent rebuild. Torn, bit-flipped (CRC-32 of the body),
//! another format version, another store (the header holds a digest of the
//! store's signing secret), ahead of the store (written from state the
//! engine lost in a crash), or behind the oldest event of the log: a rebuild
//! and one line on stderr saying why. It is never trusted partly.
//!
//! # Durability order
//! A checkpoint is encoded from a copy of the index taken under the state's
//! read lock, straight into a file of a temporary name ([`write_file`]);
//! the engine is then flushed — so the checkpoint's revision is on disk
//! before the file names it: a crash can then never take the store back
//! below it and redo those revisions differently — and the file is synced,
//! renamed over the old one, and the directory synced ([`Written::install`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;
use sha2::{Digest, Sha256};

use super::backend::Backend;
use super::changelog;
use super::layout::{decode, machine_key};
use super::rebuild::{index_machines, load_definitions};
use super::snapshot::Changed;
use super::state::{machine_entries, own_keys, State};
use crate::error::Result;
use crate::filter::{Field, Key};
use crate::index::{section_len, EncodeError, Index, SectionWrite, ValueKey};
use crate::model::{Kind, Machine, Profile, GLOBAL_PROFILE};
use crate::watch::{event_subject, Change};

/// The checkpoint's file name in the store's directory.
pub(super) const FILE: &str = "fleetkv.index";

const MAGIC: &[u8; 8] = b"FKVINDEX";
/// Bumped whenever the header or the index encoding changes (2: a UUID
/// value as its 16 bytes, no longer its text; 3: a packed key as its
/// blocks).
pub(super) const VERSION: u32 = 3;
/// magic, version, store digest, revision, next id, body length, body CRC.
const HEADER: usize = 8 + 4 + 16 + 8 + 4 + 8 + 4;

/// How an open got its indexes; [`Store::recovery`](super::Store::recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Every machine record was read (a new store, a store without a
    /// checkpoint file, or one the checkpoint could not serve).
    Rebuilt {
        /// Why no checkpoint was used (`None`: there was none to use).
        refused: Option<String>,
    },
    /// Read from a checkpoint and brought forward.
    Checkpoint {
        /// The revision the checkpoint was current at.
        revision: u64,
        /// Change events read from the log past it.
        events: u64,
        /// Machines indexed again from their records.
        reindexed: u64,
    },
}

/// A checkpoint as read from its file.
pub(super) struct Checkpoint {
    /// Whose it is: [`store_digest`] of the store that wrote it.
    digest: [u8; 16],
    pub(super) rev: u64,
    pub(super) next_id: u32,
    pub(super) machines: Index,
}

impl Checkpoint {
    /// The checkpoint, if the store with `digest` wrote it.
    pub(super) fn of_store(self, digest: &[u8; 16]) -> std::result::Result<Checkpoint, String> {
        if &self.digest == digest {
            Ok(self)
        } else {
            Err("belongs to another store".into())
        }
    }
}

/// What reading the checkpoint found: the file's identity when it was
/// opened (`None`: there was none), and the checkpoint or why not.
type Found = (
    Option<(u64, u64)>,
    std::result::Result<Option<Checkpoint>, String>,
);

/// The checkpoint read on a thread of its own, begun before the engine
/// opens (the file read and checked while the engine reads its own).
pub(super) struct Prefetch(Option<std::thread::JoinHandle<Found>>);

impl Prefetch {
    /// Starts reading `dir`'s checkpoint (if a thread can be had; else
    /// [`take`](Self::take) reads it).
    pub(super) fn start(dir: &Path) -> Prefetch {
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("fleetkv-checkpoint".into())
            .spawn(move || read_found(&dir));
        Prefetch(thread.ok())
    }

    /// What [`read`] returns for `dir` now: the prefetched result if the
    /// file is still the one it read, else read again.
    pub(super) fn take(self, dir: &Path) -> std::result::Result<Option<Checkpoint>, String> {
        match self.0.map(std::thread::JoinHandle::join) {
            Some(Ok((identity, found))) if identity == file_identity(&dir.join(FILE)) => found,
            _ => read(dir),
        }
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The 16 bytes that tie a checkpoint to one store: a digest of its signing
/// secret (which never leaves the store itself).
pub(super) fn store_digest(secret: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"fleetkv index checkpoint\0");
    h.update(secret);
    let d = h.finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// A checkpoint written to its temporary file and not yet in place: see
/// [`Written::install`].
pub(super) struct Written {
    file: std::fs::File,
    tmp: PathBuf,
    dir: PathBuf,
}

impl Written {
    /// Syncs the file, renames it over `dir`'s checkpoint and syncs the
    /// directory. The caller makes the revision the file names durable
    /// first.
    pub(super) fn install(self) -> std::io::Result<()> {
        self.file.sync_all()?;
        drop(self.file);
        std::fs::rename(&self.tmp, self.dir.join(FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// Bytes on their way to a file, their CRC-32 and count taken on the way.
/// A section's length is written as zeros ahead of the section and filled
/// in place at the end (`lengths`), its CRC-32 combined in where it lies.
struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
    /// Where the next byte lands in the file.
    at: u64,
    /// Lengths to write at their place in the file, once it is written.
    lengths: Vec<(u64, [u8; 4])>,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
            at: 0,
            lengths: Vec::new(),
        }
    }

    /// The CRC-32 and length of what was written since the last call.
    fn take(&mut self) -> (crc32fast::Hasher, u64) {
        (
            std::mem::take(&mut self.crc),
            std::mem::replace(&mut self.len, 0),
        )
    }

    /// Writes `bytes` outside the checksum: the header and the key count,
    /// both written again in place at the end.
    fn unhashed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> SectionWrite for Hashing<W> {
    fn length_then(
        &mut self,
        body: impl FnOnce(&mut Self) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let (mut crc, before) = self.take();
        let at = self.at;
        self.unhashed(&[0; 4])?;
        body(self)?;
        let (section, len) = self.take();
        let length = section_len(len)?;
        let mut length_crc = crc32fast::Hasher::new();
        length_crc.update(&length);
        crc.combine(&length_crc);
        crc.combine(&section);
        self.crc = crc;
        self.len = before + 4 + len;
        self.lengths.push((at, length));
        Ok(())
    }
}

/// Writes the checkpoint of a machine index at revision `rev` (`next_id`
/// the next free machine id then) to `dir`'s temporary checkpoint file.
/// The encoding goes straight to the file through a buffer: holding all of
/// it in memory first (120 MB at a million machines) cost its fresh pages
/// and a copy, about as much as the encoding itself; so does each key's
/// section. The body's length and CRC-32 are known only at the end, and so
/// are the key count near its start and each section's length before it:
/// those are written in place last, their CRC-32s combined with those of
/// the bytes around them. `Err` when a key
/// still in the last checkpoint file cannot be read again, or the file
/// cannot be written.
pub(super) fn write_file(
    dir: &Path,
    digest: &[u8; 16],
    index: &Index,
    rev: u64,
    next_id: u32,
) -> std::result::Result<Written, EncodeError> {
    use std::os::unix::fs::FileExt;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let file = std::fs::File::create(&tmp)?;
    let mut out = Hashing::new(std::io::BufWriter::with_capacity(1 << 20, file));
    out.unhashed(&[0; HEADER])?;
    index.encode_head(&mut out)?;
    let (mut crc, head_len) = out.take();
    out.unhashed(&[0; 4])?;
    let count = index.encode_keys(&mut out)?.to_le_bytes();
    let (keys_crc, keys_len) = out.take();
    let mut count_crc = crc32fast::Hasher::new();
    count_crc.update(&count);
    crc.combine(&count_crc);
    crc.combine(&keys_crc);
    let body_len = head_len + 4 + keys_len;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    for (at, length) in &out.lengths {
        file.write_all_at(length, *at)?;
    }
    file.write_all_at(&count, (HEADER as u64) + head_len)?;
    let mut header = Vec::with_capacity(HEADER);
    for part in [
        &MAGIC[..],
        &VERSION.to_le_bytes(),
        digest,
        &rev.to_le_bytes(),
        &next_id.to_le_bytes(),
        &body_len.to_le_bytes(),
        &crc.finalize().to_le_bytes(),
    ] {
        header.extend_from_slice(part);
    }
    file.write_all_at(&header, 0)?;
    Ok(Written {
        file,
        tmp,
        dir: dir.to_path_buf(),
    })
}

/// The revision in the header of the checkpoint at `path`, if it is one of
/// this format written by the store with `digest` (its body unchecked).
pub(super) fn revision_of(path: &Path, digest: &[u8; 16]) -> Option<u64> {
    let mut header = [0u8; HEADER];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    let version = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let rev = u64::from_le_bytes(header[28..36].try_into().ok()?);
    (&header[..8] == MAGIC && version == VERSION && &header[12..28] == digest).then_some(rev)
}

/// Reads `dir`'s checkpoint: `Ok(None)` when there is none, `Err(why)` when
/// it cannot be used. The caller checks whose it is
/// ([`Checkpoint::of_store`]).
pub(super) fn read(dir: &Path) -> std::result::Result<Option<Checkpoint>, String> {
    read_found(dir).1
}

fn read_found(dir: &Path) -> Found {
    use std::os::unix::fs::MetadataExt;
    let path: PathBuf = dir.join(FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => std::sync::Arc::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, Ok(None)),
        Err(e) => return (None, Err(format!("cannot be read: {e}"))),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return (None, Err(format!("cannot be read: {e}"))),
    };
    let identity = Some((meta.dev(), meta.ino()));
    (identity, read_open(file, meta.len()))
}

/// Reads the checkpoint in `file` (open, `len` bytes long), as [`read`] does.
pub(super) fn read_open(
    file: std::sync::Arc<std::fs::File>,
    len: u64,
) -> std::result::Result<Option<Checkpoint>, String> {
    let r = std::io::BufReader::with_capacity(1 << 20, &*file);
    let in_file = (file.clone(), HEADER as u64);
    parse(r, len, Some(in_file)).map(Some)
}

/// A reader that checksums what passes through it.
struct Summed<R> {
    r: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Summed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a checkpoint of `len` bytes from `r`: the header is checked, then
/// the body is decoded as it streams past its checksum (so no second copy of
/// the file is held) and the checksum is compared at the end. With
/// `in_file` (`r` is that file), the keys' sections stay in the file.
fn parse(
    mut r: impl Read,
    len: u64,
    in_file: Option<crate::index::InFile>,
) -> std::result::Result<Checkpoint, String> {
    let mut header = [0u8; HEADER];
    if len < HEADER as u64 || r.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return Err("is not a fleetkv index checkpoint (torn or foreign)".into());
    }
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!(
            "has format version {version}; this build reads version {VERSION}"
        ));
    }
    let mut digest = [0; 16];
    digest.copy_from_slice(&header[12..28]);
    let (rev, next_id, body_len, crc) = (u64_at(28), u32_at(36), u64_at(40), u32_at(48));
    if len - HEADER as u64 != body_len {
        return Err(format!(
            "is torn: {} of {body_len} body bytes",
            len - HEADER as u64
        ));
    }
    let mut body = Summed {
        r: r.take(body_len),
        crc: crc32fast::Hasher::new(),
    };
    let decoded = Index::decode(&mut body, in_file);
    // Checksum all of it whether or not it decoded: damage reads as damage.
    let _ = std::io::copy(&mut body, &mut std::io::sink());
    if body.crc.finalize() != crc {
        return Err("fails its checksum".into());
    }
    let machines = decoded.map_err(|e| format!("does not decode: {e}"))?;
    Ok(Checkpoint {
        digest,
        rev,
        next_id,
        machines,
    })
}

/// How many machines an open must index again to replay `changes` (after
/// they are applied to `st`): one per machine changed, every member of a
/// changed profile — so that a close writes a checkpoint when replaying
/// would cost more than reading one, not only after many writes.
pub(super) fn replay_cost(st: &State, changes: &[Change]) -> u64 {
    changes
        .iter()
        .map(|c| match c.kind {
            Kind::Profile if c.key == GLOBAL_PROFILE => st.machines.universe().len(),
            Kind::Profile => st
                .machines
                .lookup(&Key::Profiles, &ValueKey::str(&c.key))
                .map_or(0, |p| p.len()),
            _ => 1,
        })
        .sum()
}

/// The state at the store's revision from `ckpt` and the log past it;
/// `Ok(Err(why))` when the log cannot bridge the gap.
pub(super) fn bring_forward(
    db: &dyn Backend,
    ckpt: Checkpoint,
) -> Result<std::result::Result<(State, Recovery), String>> {
    let mut st = load_definitions(db)?;
    if ckpt.rev > st.rev {
        return Ok(Err(format!(
            "is at revision {} but the store is at {} (written from state lost in a crash)",
            ckpt.rev, st.rev
        )));
    }
    let mut machines = ckpt.machines;
    let mut touched = RoaringBitmap::new();
    let mut profiles = BTreeSet::new();
    let mut events = 0u64;
    if ckpt.rev < st.rev {
        // The log must still hold every event after the checkpoint: trimming
        // removes the oldest first, so its first key says.
        match changelog::first_position(db)? {
            Some(first) if first <= (ckpt.rev + 1, 0) => {}
            _ => {
                return Ok(Err(format!(
                    "is at revision {}, older than the change log reaches",
                    ckpt.rev
                )))
            }
        }
        let mut uuids = BTreeSet::new();
        for item in db.changes(ckpt.rev + 1, 0) {
            let (_, event) = item?;
            events += 1;
            match event_subject(&event)? {
                (Kind::Machine, uuid) => {
                    uuids.insert(uuid);
                }
                (Kind::Profile, name) => {
                    profiles.insert(name);
                }
                _ => {}
            }
        }
        // Looked up together: one scan of the Uuid key, which stays encoded.
        let uuids: Vec<ValueKey> = uuids.iter().map(|u| ValueKey::str(u)).collect();
        for posting in machines.lookup_each(&Key::Field(Field::Uuid), &uuids) {
            touched.extend(posting.and_then(|p| p.min()));
        }
        if profiles.contains(GLOBAL_PROFILE) {
            return Ok(Err(format!(
                "is at revision {}, before a change of the {GLOBAL_PROFILE} profile (every machine changed)",
                ckpt.rev
            )));
        }
    }
    touched |= members_of(&machines, &profiles);
    let mut reindexed = reindex(&mut machines, &touched, &st.profiles, |id| {
        let key = machine_key(id);
        db.get(&key)?.map(|bytes| decode(&key, &bytes)).transpose()
    })?;
    st.machines = machines;
    st.next_id = st.next_id.max(ckpt.next_id);
    let before = st.machines.universe().len();
    index_machines(db, &mut st, &machine_key(ckpt.next_id))?;
    reindexed += st.machines.universe().len() - before;
    // What a snapshot at the close needs to bring this checkpoint forward.
    let mut changed = Changed::since(ckpt.rev);
    let created = st
        .machines
        .universe()
        .iter()
        .skip_while(|id| *id < ckpt.next_id);
    for id in touched.iter().chain(created) {
        changed.machine(id, st.rev);
    }
    for p in &profiles {
        changed.profile(p, st.rev);
    }
    st.changed = changed;
    Ok(Ok((
        st,
        Recovery::Checkpoint {
            revision: ckpt.rev,
            events,
            reindexed,
        },
    )))
}

/// The members of `profiles` as `machines` has them.
pub(super) fn members_of<'a>(
    machines: &Index,
    profiles: impl IntoIterator<Item = &'a String>,
) -> RoaringBitmap {
    let mut out = RoaringBitmap::new();
    for p in profiles {
        if let Some(members) = machines.lookup(&Key::Profiles, &ValueKey::str(p)) {
            out |= members.to_bitmap();
        }
    }
    out
}

/// Removes `touched` from every posting of `machines`, then indexes again
/// each of them `record` still finds (against `profiles`). Returns how many.
pub(super) fn reindex(
    machines: &mut Index,
    touched: &RoaringBitmap,
    profiles: &BTreeMap<String, Profile>,
    mut record: impl FnMut(u32) -> Result<Option<Machine>>,
) -> Result<u64> {
    machines.remove_everywhere(touched);
    let mut reindexed = 0;
    for id in touched {
        if let Some(m) = record(id)? {
            machines.insert(id, &machine_entries(&m, profiles), &own_keys(&m.params));
            reindexed += 1;
        }
    }
    Ok(reindexed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(n: u32) -> State {
        let db = super::super::memory_backend::MemoryBackend::default();
        let mut st = load_definitions(&db).unwrap();
        for id in 0..n {
            st.machines.insert(
                id,
                &[(Key::Field(Field::Name), ValueKey::str(&format!("m{id}")))],
                &[],
            );
        }
        st.rev = 42;
        st.next_id = n;
        st
    }

    #[test]
    fn a_checkpoint_reads_back_and_every_damage_is_refused() {
        let digest = store_digest(b"secret");
        let st = state_with(500);
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), &digest, &st.machines, st.rev, st.next_id)
            .unwrap()
            .install()
            .unwrap();
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        let parse = |b: &[u8], d: &[u8; 16]| parse(b, b.len() as u64, None)?.of_store(d);
        let ck = parse(&bytes, &digest).unwrap();
        assert_eq!((ck.rev, ck.next_id), (42, 500));
        assert_eq!(ck.machines, st.machines);

        let refused = |b: &[u8], d: &[u8; 16]| parse(b, d).err().unwrap_or_default();
        assert!(refused(&bytes, &store_digest(b"other")).contains("another store"));
        assert!(refused(&bytes[..bytes.len() - 1], &digest).contains("torn"));
        assert!(refused(&bytes[..10], &digest).contains("torn"));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(refused(&newer, &digest).contains("version"));
        // Every byte of the body, the key count (written last, in place)
        // among them.
        for at in HEADER..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(refused(&flipped, &digest).contains("checksum"), "at {at}");
        }
    }
}
