//! The default engine: one sled tree in a directory (or a temporary one).
//!
//! Owns: every use of the `sled` crate — opening, the mapping of a [`Batch`]
//! onto one `sled::Batch`, the revision record, and turning sled's errors
//! into ours ([`Error::Busy`] for a store another process holds,
//! [`Error::StorageFull`] for a full disk or quota, [`Error::Storage`] with
//! sled's message otherwise). Must not: know what
//! the records mean, or decide when a call is bounded (the store runs open,
//! commit and flush on its storage thread).
//!
//! # The revision guard on sled
//! The store's revision is the larger of two records, each written in the
//! same atomic step as the write it numbers: `s:rev` (the layout it always
//! had), written inside a large batch's `sled::Batch`, and a small batch's
//! intent (below). The compare runs against a copy of the revision kept
//! under a mutex held across the check and the apply. That is sound
//! because sled locks its directory for one process: nobody else can move
//! the revision, so the copy is the stored value, and the mutex makes check
//! and apply one step for every writer in the process. sled's transactions
//! would do the same compare inside the engine, but they track a read and
//! write set per key — costly for a 10,000-machine import batch — and run
//! a second concurrency-control path through the engine whose locking we
//! had to patch once (`vendor/sled/PATCHES.md`); the store's writer lock
//! already serializes commits, so this mutex is never contended.
//!
//! # Small batches: one intent record, then plain inserts
//! A `sled::Batch` is atomic through a log "peg" that rolls sled's IO
//! buffer before and after the batch: two buffer writes handed to sled's
//! IO threads per batch, about 30 µs where one `insert` costs 1.6 µs (and
//! over 100 µs on two busy cores). A write of a few records — a param
//! change is a document, an event and the log length — is committed
//! instead as one `insert` of the whole batch, with the revisions it moves
//! from and to, under `s:intent` (the commit point), then its records as
//! plain inserts. sled recovers a prefix of its log (recovery stops at the
//! first torn message), so after a crash either the intent is gone and so
//! is every record after it, or the intent is there and
//! [`SledBackend::open`] applies it again (idempotently: puts and removes
//! of whole records). Each intent overwrites the last, whose records were
//! all inserted before it. A batch of more than [`INTENT_MOST_OPS`]
//! records or [`INTENT_MOST_BYTES`] bytes (an import chunk) goes through
//! `sled::Batch`, where the peg's cost is shared and writing the records
//! twice would not be.
//!
//! # Settling after the answer
//! The intent is the commit point, so a small batch's record inserts need
//! not delay its writer: [`Backend::commit`] stores the intent and keeps
//! the records as the *unsettled* batch, and [`Backend::settle`], which the
//! store's storage thread runs once the writer has its answer, inserts
//! them. Until then [`Backend::get`] answers a key of the unsettled batch
//! from it, and a scan settles first (on its own thread if need be: one
//! thread settles at a time, under `settling`). Every commit settles the
//! batch before it first, so an intent is only ever overwritten once its
//! records are all inserted, which is what recovery relies on. A settle
//! that fails keeps the batch unsettled (reads still see it, the intent
//! still holds it) and the next commit, which settles first, reports the
//! error.
//!
//! # Large batches settle whole, after the answer too
//! A large batch's commit stores it as the unsettled batch and nothing
//! else: its settle applies it as one `sled::Batch`, with `s:rev`. The
//! writer has its answer at once, and sled's work on an import chunk
//! (about as long as the chunk's planning and indexing) runs while the
//! writer indexes it and plans the next one, where the two used to take
//! turns. The writer builds the chunk's `sled::Batch` before it hands the
//! commit over ([`Backend::prepare`]), so the storage thread, whose work
//! the import's rate waits on, only applies it; reads see the batch as
//! they see a small one (a point read looks the key up in that batch,
//! which sled applies by reference: vendor patch 11), and a flush settles
//! it before flushing, so a durable write, a checkpoint's flush and a
//! close find it on disk. The engine holds none of it until the settle,
//! and all of it after (sled's batches are atomic across a crash): a
//! crash in between loses the batch whole, as it loses a buffered write
//! sled had not flushed.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::backend::{check_revision, Backend, Batch, Scan};
use super::layout::{show_key, INTENT_KEY, REV_KEY};
use crate::error::{Error, Result};

/// sled's message when another process holds the directory's lock.
const LOCKED: &str = "could not acquire lock";

/// The most records a batch committed through an intent holds.
pub(crate) const INTENT_MOST_OPS: usize = 16;
/// The most key and value bytes a batch committed through an intent holds.
pub(crate) const INTENT_MOST_BYTES: usize = 256 * 1024;

/// A batch's records: `(key, Some(value))` puts, `(key, None)` removes.
type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A committed batch whose records may not all be in the tree yet.
enum Unsettled {
    /// A small batch, whose intent holds it: its records go in one by one.
    Small(Ops),
    /// A large batch, with `s:rev`: nothing of it is in the tree until its
    /// settle applies it whole.
    Whole(sled::Batch),
}

impl Unsettled {
    /// The last op on `key`, if the batch has one.
    fn find(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        match self {
            Unsettled::Small(ops) => ops
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone()),
            Unsettled::Whole(b) => b.get(key).map(|v| v.map(|v| v.to_vec())),
        }
    }
}

/// A large batch's records as one `sled::Batch`, `s:rev` among them set to
/// the revision it moves the store to ([`Backend::prepare`]).
struct Prepared(sled::Batch);

/// The key and value bytes of `ops`.
fn ops_size(ops: &Ops) -> usize {
    ops.iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum()
}

/// Whether `ops` commit through an intent (see "Small batches").
fn is_small(ops: &Ops) -> bool {
    ops.len() <= INTENT_MOST_OPS && ops_size(ops) <= INTENT_MOST_BYTES
}

/// `ops`, then `s:rev` = `rev`, as one `sled::Batch` (a later op on a key
/// replaces an earlier one, as in the tree).
fn whole_batch(ops: Ops, rev: u64) -> sled::Batch {
    let mut b = sled::Batch::default();
    for (k, v) in ops {
        match v {
            Some(v) => b.insert(k.as_slice(), v.as_slice()),
            None => b.remove(k.as_slice()),
        }
    }
    b.insert(REV_KEY, &rev.to_be_bytes());
    b
}

/// A sled database.
pub(crate) struct SledBackend {
    db: sled::Db,
    /// The revision as committed; held across check and apply.
    rev: Mutex<u64>,
    /// The last batch when its records may not all be in the tree yet
    /// (see "Settling after the answer").
    unsettled: Mutex<Option<Arc<Unsettled>>>,
    /// Held while a thread inserts the unsettled batch's records.
    settling: Mutex<()>,
}

fn storage(e: sled::Error) -> Error {
    let msg = e.to_string();
    if let sled::Error::Io(io) = &e {
        // ENOSPC, EDQUOT: the caller may retry once space returns.
        if io.kind() == std::io::ErrorKind::StorageFull
            || matches!(io.raw_os_error(), Some(28 | 122))
        {
            return Error::StorageFull(msg);
        }
    }
    if msg.contains(LOCKED) {
        Error::Busy(msg)
    } else {
        Error::Storage(msg)
    }
}

impl SledBackend {
    /// Opens (or creates) the store in `path`; a temporary one when `None`,
    /// removed when the last handle drops.
    pub(crate) fn open(path: Option<PathBuf>) -> Result<SledBackend> {
        let config = match path {
            Some(p) => sled::Config::new().path(p),
            None => sled::Config::new().temporary(true),
        };
        let db = config.open().map_err(storage)?;
        let mut rev = match db.get(REV_KEY).map_err(storage)? {
            Some(b) => read_u64(REV_KEY, &b)?,
            None => 0,
        };
        // The last small write, finished again: a crash may have cut it
        // short. One from before the last large batch is already covered.
        if let Some(bytes) = db.get(INTENT_KEY).map_err(storage)? {
            let intent = Intent::decode(&bytes)?;
            if intent.rev > rev {
                if intent.expect < rev {
                    return Err(Error::Corrupt {
                        key: show_key(INTENT_KEY),
                        reason: format!(
                            "a write from revision {} to {} on a store at revision {rev}",
                            intent.expect, intent.rev
                        ),
                    });
                }
                apply_ops(&db, &intent.ops)?;
                rev = intent.rev;
            }
        }
        Ok(SledBackend {
            db,
            rev: Mutex::new(rev),
            unsettled: Mutex::new(None),
            settling: Mutex::new(()),
        })
    }
}

fn read_u64(key: &[u8], b: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
        Error::Corrupt {
            key: show_key(key),
            reason: "not 8 bytes".into(),
        }
    })?))
}

/// Applies a batch's records one by one (again, after a crash: puts and
/// removes of whole records are idempotent).
fn apply_ops(db: &sled::Db, ops: &Ops) -> Result<()> {
    for (k, v) in ops {
        match v {
            Some(v) => db.insert(k, v.as_slice()),
            None => db.remove(k),
        }
        .map_err(storage)?;
    }
    Ok(())
}

/// A small batch as its intent record: `expect`, `rev` (u64 big-endian
/// each), then per record its key's length (u32), the key, and either
/// `0` (a remove) or `1`, the value's length (u32) and the value. sled
/// checksums the record as a whole; its structure is checked on decode.
struct Intent {
    expect: u64,
    rev: u64,
    ops: Ops,
}

impl Intent {
    fn encode(batch: &Batch) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + ops_size(&batch.ops) + 9 * batch.ops.len());
        out.extend_from_slice(&batch.expect.to_be_bytes());
        out.extend_from_slice(&batch.rev.to_be_bytes());
        for (k, v) in &batch.ops {
            // Both lengths are under INTENT_MOST_BYTES.
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            match v {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Intent> {
        let mut r = Reader(bytes);
        let expect = r.u64()?;
        let rev = r.u64()?;
        if rev <= expect {
            return Err(corrupt_intent("its revision does not move forward"));
        }
        let mut ops = Vec::new();
        while !r.0.is_empty() {
            let n = r.len()?;
            let key = r.take(n)?.to_vec();
            let value = match r.take(1)? {
                [0] => None,
                [1] => {
                    let n = r.len()?;
                    Some(r.take(n)?.to_vec())
                }
                _ => return Err(corrupt_intent("a record is neither a put nor a remove")),
            };
            ops.push((key, value));
        }
        Ok(Intent { expect, rev, ops })
    }
}

fn corrupt_intent(reason: &str) -> Error {
    Error::Corrupt {
        key: show_key(INTENT_KEY),
        reason: reason.into(),
    }
}

/// The unread rest of an intent record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt_intent("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        read_u64(INTENT_KEY, self.take(8)?)
    }

    fn len(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let unsettled = self.unsettled.lock().clone();
        if let Some(v) = unsettled.as_ref().and_then(|u| u.find(key)) {
            return Ok(v);
        }
        Ok(self.db.get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8], from: &[u8]) -> Scan<'_> {
        if let Err(e) = self.settle() {
            return Box::new(std::iter::once(Err(e)));
        }
        let prefix = prefix.to_vec();
        Box::new(
            self.db
                .range(from.to_vec()..)
                .take_while(move |item| match item {
                    Ok((k, _)) => k.starts_with(&prefix),
                    Err(_) => true,
                })
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(storage)),
        )
    }

    fn revision(&self) -> Result<u64> {
        Ok(*self.rev.lock())
    }

    /// A large batch's `sled::Batch` is built here, by the writer: a copy
    /// of every record and a hash-map insert each, a tenth of the storage
    /// thread's work on an import chunk.
    fn prepare(&self, batch: &mut Batch) {
        if batch.prepared.is_none() && !is_small(&batch.ops) {
            let ops = std::mem::take(&mut batch.ops);
            batch.prepared = Some(super::backend::Prepared(Box::new(Prepared(whole_batch(
                ops, batch.rev,
            )))));
        }
    }

    fn commit(&self, mut batch: Batch) -> Result<()> {
        let mut rev = self.rev.lock();
        check_revision(*rev, &batch)?;
        // The intent below overwrites the last one, and a large batch's
        // revision covers it: its records must all be in first.
        self.settle()?;
        let prepared = match batch.prepared.take().map(|p| p.0.downcast::<Prepared>()) {
            None => None,
            Some(Ok(p)) => Some(p.0),
            Some(Err(_)) => {
                return Err(Error::Storage(
                    "internal: a batch prepared for another engine".into(),
                ))
            }
        };
        // A small batch's commit point is its intent; a large one has none
        // until its settle applies it whole.
        let unsettled = match prepared {
            Some(whole) => Unsettled::Whole(whole),
            None if is_small(&batch.ops) => {
                self.db
                    .insert(INTENT_KEY, Intent::encode(&batch))
                    .map_err(storage)?;
                Unsettled::Small(batch.ops)
            }
            None => Unsettled::Whole(whole_batch(batch.ops, batch.rev)),
        };
        *self.unsettled.lock() = Some(Arc::new(unsettled));
        *rev = batch.rev;
        Ok(())
    }

    fn settle(&self) -> Result<()> {
        let _one = self.settling.lock();
        let Some(unsettled) = self.unsettled.lock().clone() else {
            return Ok(());
        };
        match &*unsettled {
            Unsettled::Small(ops) => apply_ops(&self.db, ops)?,
            Unsettled::Whole(b) => self.db.apply_batch_ref(b).map_err(storage)?,
        }
        // Only a commit sets a new batch, and it settles this one first.
        *self.unsettled.lock() = None;
        Ok(())
    }

    fn settles_later(&self) -> bool {
        true
    }

    fn flush(&self) -> Result<()> {
        let whole = self
            .unsettled
            .lock()
            .as_ref()
            .is_some_and(|u| matches!(**u, Unsettled::Whole(_)));
        if whole {
            self.settle()?;
        }
        self.db.flush().map_err(storage)?;
        Ok(())
    }

    /// sled's background flusher also cleans segments: it relocates live
    /// pages out of sparse ones and truncates the file, after any flush of
    /// ours. Stopped first (vendor patch 9), nothing writes once this
    /// flush returns.
    fn close(&self) -> Result<()> {
        self.settle()?;
        self.db.stop_background_flusher();
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the directory a handle just dropped: sled's IO threads let
    /// go of it a moment later (a loaded machine: tens of milliseconds).
    fn reopen(dir: &std::path::Path) -> Result<SledBackend> {
        let wait = std::time::Duration::from_secs(10);
        super::super::open::open_waiting(wait, || SledBackend::open(Some(dir.into())))
    }

    fn batch(expect: u64, ops: &[(&[u8], Option<&[u8]>)]) -> Batch {
        Batch {
            expect,
            rev: expect + 1,
            ops: ops
                .iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect(),
            prepared: None,
        }
    }

    #[test]
    fn an_intent_decodes_to_the_batch_it_encodes_and_damage_is_an_error() {
        let b = batch(7, &[(b"k1", Some(b"v1")), (b"k2", None), (b"", Some(b""))]);
        let bytes = Intent::encode(&b);
        let back = Intent::decode(&bytes).unwrap();
        assert_eq!((back.expect, back.rev), (7, 8));
        assert_eq!(back.ops, b.ops);
        for cut in 0..bytes.len() {
            // Every cut that ends inside a record (or the header) is refused;
            // one that ends between records is a shorter, well-formed batch.
            let boundaries = [
                16,
                16 + 4 + 2 + 1 + 4 + 2,
                16 + 4 + 2 + 1 + 4 + 2 + 4 + 2 + 1,
            ];
            match Intent::decode(&bytes[..cut]) {
                Ok(i) => assert!(boundaries.contains(&cut), "cut at {cut}: {:?}", i.ops),
                Err(Error::Corrupt { .. }) => assert!(!boundaries.contains(&cut)),
                Err(e) => panic!("cut at {cut}: {e}"),
            }
        }
        let mut flipped = bytes.clone();
        flipped[16 + 4 + 2] = 9;
        assert!(matches!(
            Intent::decode(&flipped),
            Err(Error::Corrupt { .. })
        ));
    }

    /// A crash after the intent and part of its records: the open finishes
    /// the write. A stale intent (already applied) is left alone.
    #[test]
    fn an_open_finishes_a_write_its_intent_names() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = SledBackend::open(Some(dir.path().into())).unwrap();
            db.commit(batch(0, &[(b"a", Some(b"1")), (b"b", Some(b"1"))]))
                .unwrap();
            // Revision 2's intent and its first record only, as a crash
            // between the two inserts would leave them.
            let b = batch(1, &[(b"a", Some(b"2")), (b"b", None), (b"c", Some(b"2"))]);
            db.db.insert(INTENT_KEY, Intent::encode(&b)).unwrap();
            db.db.insert(b"a", b"2").unwrap();
            db.flush().unwrap();
        }
        let db = reopen(dir.path()).unwrap();
        assert_eq!(db.revision().unwrap(), 2);
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(b"b").unwrap(), None);
        assert_eq!(db.get(b"c").unwrap().as_deref(), Some(&b"2"[..]));
        db.commit(batch(2, &[(b"c", Some(b"3"))])).unwrap();
        // A large batch commits atomically through sled and leaves the last
        // small one's intent behind, stale.
        let big: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..=INTENT_MOST_OPS as u32)
            .map(|i| (i.to_be_bytes().to_vec(), Some(b"x".to_vec())))
            .collect();
        db.commit(Batch {
            expect: 3,
            rev: 4,
            ops: big,
            prepared: None,
        })
        .unwrap();
        db.db.insert(b"c", b"changed after").unwrap();
        db.flush().unwrap();
        drop(db);
        let db = reopen(dir.path()).unwrap();
        assert_eq!(db.revision().unwrap(), 4);
        assert_eq!(
            db.get(b"c").unwrap().as_deref(),
            Some(&b"changed after"[..])
        );
    }

    /// A small batch is read from the moment its commit returns, before its
    /// records are inserted; the next commit inserts them before it writes
    /// its own intent; and a crash before the last batch settles loses
    /// nothing of it or of the ones before.
    #[test]
    fn a_batch_is_read_before_it_settles_and_a_crash_before_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sled_has = |db: &SledBackend, k: &[u8]| db.db.get(k).unwrap().map(|v| v.to_vec());
        let scan = |db: &SledBackend| -> Vec<(Vec<u8>, Vec<u8>)> {
            db.scan(b"k", b"k").map(|r| r.unwrap()).collect()
        };
        {
            let db = SledBackend::open(Some(dir.path().into())).unwrap();
            db.commit(batch(
                0,
                &[
                    (b"ka", Some(b"1")),
                    (b"kb", Some(b"1")),
                    (b"ke", Some(b"1")),
                ],
            ))
            .unwrap();
            assert_eq!(sled_has(&db, b"ka"), None, "not inserted before a settle");
            assert_eq!(db.get(b"ka").unwrap().as_deref(), Some(&b"1"[..]));
            db.commit(batch(
                1,
                &[
                    (b"ka", Some(b"2")),
                    (b"kb", None),
                    (b"kb", Some(b"3")),
                    (b"kc", Some(b"2")),
                    (b"kc", None),
                ],
            ))
            .unwrap();
            assert_eq!(
                sled_has(&db, b"kb").as_deref(),
                Some(&b"1"[..]),
                "settled first"
            );
            // A later op on a key wins.
            assert_eq!(db.get(b"kb").unwrap().as_deref(), Some(&b"3"[..]));
            assert_eq!(db.get(b"kc").unwrap(), None);
            assert_eq!(db.get(b"ka").unwrap().as_deref(), Some(&b"2"[..]));
            let want = |pairs: &[(&[u8], &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect()
            };
            assert_eq!(
                scan(&db),
                want(&[(b"ka", b"2"), (b"kb", b"3"), (b"ke", b"1")]),
                "a scan settles"
            );
            db.commit(batch(2, &[(b"kd", Some(b"3")), (b"ka", None)]))
                .unwrap();
            assert_eq!(sled_has(&db, b"kd"), None);
            // A crash: durable, but never settled nor closed.
            db.flush().unwrap();
        }
        let db = reopen(dir.path()).unwrap();
        assert_eq!(db.revision().unwrap(), 3);
        assert_eq!(
            scan(&db),
            vec![
                (b"kb".to_vec(), b"3".to_vec()),
                (b"kd".to_vec(), b"3".to_vec()),
                (b"ke".to_vec(), b"1".to_vec())
            ]
        );
        db.commit(batch(3, &[(b"kf", Some(b"4"))])).unwrap();
        db.close().unwrap();
        assert_eq!(
            sled_has(&db, b"kf").as_deref(),
            Some(&b"4"[..]),
            "a close settles"
        );
    }

    /// `b` in the engine's own form, as the writer commits it.
    fn prepared(db: &SledBackend, mut b: Batch) -> Batch {
        db.prepare(&mut b);
        assert!(b.prepared.is_some() && b.ops.is_empty(), "not prepared");
        b
    }

    /// A large batch is read from the moment its commit returns, though
    /// nothing of it is in the tree until a settle applies it whole: the
    /// storage thread's, a scan's, a flush's or the next commit's. Dropped
    /// before any of those (a crash before sled saw it), none of it is
    /// there, and the batches before it all are.
    #[test]
    fn a_large_batch_is_read_before_it_settles_and_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let n = INTENT_MOST_OPS as u32 * 4;
        let key = |i: u32| [b"k".as_slice(), &i.to_be_bytes()].concat();
        let sled_has = |db: &SledBackend, k: &[u8]| db.db.get(k).unwrap().map(|v| v.to_vec());
        // Every key tagged, then the first removed and the second put again:
        // a later op on a key wins.
        let large = |expect: u64, tag: &[u8]| -> Batch {
            let mut ops: Ops = (0..n).map(|i| (key(i), Some(tag.to_vec()))).collect();
            ops.push((key(0), None));
            ops.push((key(1), Some(b"last".to_vec())));
            Batch {
                expect,
                rev: expect + 1,
                ops,
                prepared: None,
            }
        };
        let reads = |db: &SledBackend, tag: &[u8]| {
            assert_eq!(db.get(&key(0)).unwrap(), None, "{tag:?}");
            assert_eq!(db.get(&key(1)).unwrap().as_deref(), Some(&b"last"[..]));
            for i in 2..n {
                assert_eq!(db.get(&key(i)).unwrap().as_deref(), Some(tag), "{i}");
            }
            assert_eq!(db.get(&key(n)).unwrap(), None);
        };
        {
            let db = SledBackend::open(Some(dir.path().into())).unwrap();
            db.commit(batch(0, &[(b"small", Some(b"1"))])).unwrap();
            db.commit(large(1, b"a")).unwrap();
            assert_eq!(sled_has(&db, &key(5)), None, "in the tree before a settle");
            assert_eq!(db.revision().unwrap(), 2);
            reads(&db, b"a");
            assert_eq!(db.get(b"small").unwrap().as_deref(), Some(&b"1"[..]));
            db.settle().unwrap();
            assert_eq!(sled_has(&db, &key(5)).as_deref(), Some(&b"a"[..]));
            assert_eq!(sled_has(&db, &key(0)), None);
            assert_eq!(sled_has(&db, REV_KEY), Some(2u64.to_be_bytes().to_vec()));
            reads(&db, b"a");

            // Prepared by the writer, as the store does: read the same.
            db.commit(prepared(&db, large(2, b"b"))).unwrap();
            reads(&db, b"b");
            let scanned: Vec<_> = db.scan(b"k", b"k").map(|r| r.unwrap()).collect();
            assert_eq!(scanned.len(), n as usize - 1, "a scan settles first");
            assert_eq!(sled_has(&db, &key(5)).as_deref(), Some(&b"b"[..]));

            db.commit(large(3, b"c")).unwrap();
            db.flush().unwrap();
            assert_eq!(
                sled_has(&db, &key(5)).as_deref(),
                Some(&b"c"[..]),
                "flushed"
            );

            db.commit(prepared(&db, large(4, b"d"))).unwrap();
            db.commit(large(5, b"e")).unwrap();
            assert_eq!(
                sled_has(&db, &key(5)).as_deref(),
                Some(&b"d"[..]),
                "settled first"
            );
            reads(&db, b"e");
            assert_eq!(db.revision().unwrap(), 6);
            // A crash: what sled holds is on disk, the last batch never
            // reached it.
            db.db.flush().unwrap();
        }
        let db = reopen(dir.path()).unwrap();
        assert_eq!(db.revision().unwrap(), 5);
        reads(&db, b"d");
    }

    /// A clean close leaves the engine's files as its flush left them: a
    /// snapshot pins their identities, and sled's background segment
    /// cleaning used to move pages (and shrink the file) after the flush.
    #[test]
    fn after_a_close_the_engines_files_stay_as_its_flush_left_them() {
        use std::os::unix::fs::MetadataExt;
        fn files(dir: &std::path::Path) -> Vec<(std::ffi::OsString, u64, i64, i64)> {
            let mut v: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| {
                    let m = e.metadata().unwrap();
                    (e.file_name(), m.len(), m.mtime_nsec(), m.ctime_nsec())
                })
                .collect();
            v.sort();
            v
        }
        let dir = tempfile::tempdir().unwrap();
        let db = SledBackend::open(Some(dir.path().into())).unwrap();
        // Every round rewrites a tenth of the keys: the older segments are
        // left sparse, which is what the cleaner relocates (all of 20 runs
        // changed the file within 0.7 s of a plain flush).
        for round in 0..10u32 {
            let ops = (0..5000u32)
                .filter(|i| round == 0 || (i * 7 + round) % 10 == 0)
                .map(|i| (i.to_be_bytes().to_vec(), Some(vec![round as u8; 300])))
                .collect();
            let rev = u64::from(round);
            db.commit(Batch {
                expect: rev,
                rev: rev + 1,
                ops,
                prepared: None,
            })
            .unwrap();
        }
        db.close().unwrap();
        let closed = files(dir.path());
        // Longer than two of sled's 500 ms flush cycles.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        assert_eq!(files(dir.path()), closed, "after the close");
        drop(db);
        assert_eq!(files(dir.path()), closed, "after the drop");
    }

    #[test]
    fn an_intent_across_the_stored_revision_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = SledBackend::open(Some(dir.path().into())).unwrap();
            db.db.insert(REV_KEY, &3u64.to_be_bytes()).unwrap();
            let mut b = batch(1, &[(b"a", Some(b"1"))]);
            b.rev = 5;
            db.db.insert(INTENT_KEY, Intent::encode(&b)).unwrap();
            db.flush().unwrap();
        }
        match reopen(dir.path()) {
            Err(Error::Corrupt { key, reason }) => {
                assert_eq!(key, "s:intent");
                assert!(reason.contains("1 to 5"), "{reason}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened"),
        }
    }
}
