//! The storage boundary: the one trait through which the crate reaches a
//! storage engine, and the batch it commits.
//!
//! Owns: what the store asks of an engine — point reads, ordered scans, one
//! atomic batch per write guarded by an expected revision, flush, and the
//! feed of committed changes. Must not: know the key layout beyond the
//! change-log prefix the feed reads, decode records, or touch the in-memory
//! indexes. Engines: [`SledBackend`](super::sled_backend::SledBackend) (the
//! default, embedded) and [`MemoryBackend`](super::memory_backend::MemoryBackend)
//! (tests). Calls that can block (open, commit, flush) are run by the store
//! on its storage thread ([`super::stall`]); reads are called directly.
//!
//! # The revision guard
//! Every [`Batch`] carries the revision it expects the store to be at and
//! the one it moves it to. An engine applies the batch only if its stored
//! revision equals the expected one, atomically with the check, and stores
//! the new revision in the same atomic step; otherwise it writes nothing and
//! returns [`Error::RevisionMismatch`]. The store's writer lock already
//! orders writes within a process; the guard is what a backend shared by
//! several writers (etcd's transaction compare) needs, and it makes an
//! in-process bug that loses a revision fail loudly instead of overwriting.

use crate::error::{Error, Result};

use super::layout::{log_key, LOG_PREFIX};

/// `(key, value)` pairs in ascending key order.
pub(crate) type Scan<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// A storage engine. `Send + Sync + 'static`: the store shares one between
/// its callers and its storage thread.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The values at `keys`, in order: one request where the engine is
    /// remote (a list page of 100 machines from etcd), point reads here.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Entries whose key starts with `prefix`, from `from` on (inclusive), in
    /// key order. A scan need not be a snapshot: it may or may not see a
    /// batch committed while it runs, but never part of one entry.
    fn scan(&self, prefix: &[u8], from: &[u8]) -> Scan<'_>;

    /// The revision of the last committed batch (0 for a new store).
    fn revision(&self) -> Result<u64>;

    /// Work on `batch` that needs no call into the engine (sled: building
    /// its own batch from the records), done by the writer before the
    /// commit is handed to the storage thread: that thread's work on an
    /// import chunk is what the import's rate waits on, and the writer
    /// would otherwise wait for it. A batch not prepared commits all the
    /// same.
    fn prepare(&self, batch: &mut Batch) {
        let _ = batch;
    }

    /// Applies `batch` atomically if the store is at `batch.expect`, moving
    /// it to `batch.rev`; otherwise writes nothing and returns
    /// [`Error::RevisionMismatch`]. Atomic as a reopen sees it: after a
    /// crash the engine holds all of the batch or none of it. A read of the
    /// engine while the commit runs may see part of it; the store's readers
    /// hold its state lock, which the writer holds across the commit.
    fn commit(&self, batch: Batch) -> Result<()>;

    /// Finishes work a commit may leave for after the writer's answer
    /// (sled: a small batch's record inserts after its intent, a large
    /// batch whole; see `super::sled_backend`), so that it need not delay
    /// the writer. Reads see a committed batch whether
    /// or not it is settled; the next commit settles first. The store
    /// calls this on its storage thread once the writer has its answer.
    fn settle(&self) -> Result<()> {
        Ok(())
    }

    /// Whether a commit leaves the engine's work on a large batch to
    /// [`settle`](Self::settle) (sled: see `super::sled_backend`), so that
    /// the writer has its answer at once and the engine's work runs beside
    /// whatever the writer and the next one do; else a commit returns once
    /// the engine holds the batch (the writer may work beside it).
    fn settles_later(&self) -> bool {
        false
    }

    /// Makes every committed batch durable (settling it first).
    fn flush(&self) -> Result<()>;

    /// The store's last flush before its handles drop: makes every
    /// committed batch durable and stops the engine's own background work,
    /// so its files stay as this flush left them (a clean-close snapshot
    /// pins their identities next). A later commit still works and is made
    /// durable by the next flush or the engine's drop.
    fn close(&self) -> Result<()> {
        self.flush()
    }

    /// Whether other processes (other servers) commit to this engine too:
    /// the store then follows their writes and plans a write again when it
    /// lost the revision race (see `super::follow`). An embedded engine is
    /// this process's alone.
    fn shared(&self) -> bool {
        false
    }

    /// Up to `limit` keys under `prefix` from `from` on, in key order,
    /// without their values (the change log's head: keys only, one request
    /// where the engine is remote).
    fn scan_keys(&self, prefix: &[u8], from: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        self.scan(prefix, from)
            .take(limit)
            .map(|item| item.map(|(k, _)| k))
            .collect()
    }

    /// Entries under `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Scan<'_> {
        self.scan(prefix, prefix)
    }

    /// The feed of committed changes: the change log's events (each keyed
    /// by its position, `log_key`) from `(rev, seq)` on, oldest first. The write path logs every write's
    /// events inside its own batch, so a reader of this feed — a watch in
    /// this process, or another process or server sharing the data — sees a
    /// write's events exactly when the write is committed. This default
    /// reads the log through [`scan`](Self::scan); an engine with a native
    /// change stream (etcd's watch) may serve it from that instead.
    fn changes(&self, rev: u64, seq: u32) -> Scan<'_> {
        // A record holding `(rev, seq)` may start earlier in the revision.
        super::changelog::events(self.scan(LOG_PREFIX, &log_key(rev, 0)), (rev, seq))
    }
}

/// One write: ordered puts and removes, applied all or none.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The revision the store must be at for the batch to apply.
    pub(crate) expect: u64,
    /// The revision the store is at once it has.
    pub(crate) rev: u64,
    /// `(key, Some(value))` puts, `(key, None)` removes; a later op on the
    /// same key wins.
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The engine's own form of `ops`, which [`Backend::prepare`] may build
    /// (taking `ops`); its commit then takes this instead.
    pub(crate) prepared: Option<Prepared>,
}

/// An engine's own form of a batch's records ([`Backend::prepare`]).
pub(crate) struct Prepared(pub(crate) Box<dyn std::any::Any + Send>);

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared(..)")
    }
}

impl Batch {
    /// Stages `value` at `key`.
    pub(crate) fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    /// Stages the removal of `key`.
    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    /// A copy of its records, to commit again (a batch is otherwise moved,
    /// never copied). Taken before [`Backend::prepare`], which may move
    /// them into the engine's form.
    pub(crate) fn copy(&self) -> Batch {
        debug_assert!(self.prepared.is_none(), "a prepared batch is copied");
        Batch {
            expect: self.expect,
            rev: self.rev,
            ops: self.ops.clone(),
            prepared: None,
        }
    }
}

/// The check every engine runs, atomically with its apply.
pub(crate) fn check_revision(stored: u64, batch: &Batch) -> Result<()> {
    if stored == batch.expect {
        Ok(())
    } else {
        Err(Error::RevisionMismatch {
            expected: batch.expect,
            actual: stored,
        })
    }
}

/// The checks every engine passes, for the engines' tests (the etcd
/// backend runs them against a real etcd).
#[cfg(test)]
pub(super) mod checks {
    use super::*;

    pub(in super::super) fn batch(expect: u64, rev: u64, key: &[u8], value: &[u8]) -> Batch {
        let mut b = Batch {
            expect,
            rev,
            ..Batch::default()
        };
        b.put(key, value);
        b
    }

    pub(in super::super) fn a_stale_expected_revision_is_refused(name: &str, db: &dyn Backend) {
        db.commit(batch(0, 1, b"k", b"one")).unwrap();
        assert_eq!(db.revision().unwrap(), 1, "{name}");
        // A writer that prepared against revision 0 lost the race.
        match db.commit(batch(0, 1, b"k", b"stale")) {
            Err(Error::RevisionMismatch {
                expected: 0,
                actual: 1,
            }) => {}
            other => panic!("{name}: stale commit gave {other:?}"),
        }
        assert_eq!(
            db.get(b"k").unwrap().as_deref(),
            Some(&b"one"[..]),
            "{name}"
        );
        assert_eq!(db.revision().unwrap(), 1, "{name}");
        let mut b = batch(1, 2, b"k2", b"two");
        b.remove(b"k".as_slice());
        db.commit(b).unwrap();
        assert_eq!(db.get(b"k").unwrap(), None, "{name}");
        assert_eq!(db.revision().unwrap(), 2, "{name}");
    }

    /// `ops_per_commit`: the engine's largest batch (etcd's transaction
    /// limit); the 602 records go in as many commits as that takes.
    pub(in super::super) fn scans_are_ordered_and_bounded(
        name: &str,
        db: &dyn Backend,
        ops_per_commit: usize,
    ) {
        let mut ops: Vec<(Vec<u8>, Vec<u8>)> = (0..600u32)
            .map(|i| {
                (
                    log_key(u64::from(i / 3), i % 3).to_vec(),
                    i.to_be_bytes().to_vec(),
                )
            })
            .collect();
        // More than one in-memory chunk, around another prefix.
        ops.push((b"b".to_vec(), b"before".to_vec()));
        ops.push((b"d".to_vec(), b"after".to_vec()));
        let first = db.revision().unwrap();
        for (rev, chunk) in (first..).zip(ops.chunks(ops_per_commit)) {
            let mut b = Batch {
                expect: rev,
                rev: rev + 1,
                ..Batch::default()
            };
            for (k, v) in chunk {
                b.put(k.clone(), v.clone());
            }
            db.commit(b).unwrap();
        }
        let keys = |scan: Scan<'_>| -> Vec<Vec<u8>> { scan.map(|item| item.unwrap().0).collect() };
        let all = keys(db.scan_prefix(LOG_PREFIX));
        assert_eq!(all.len(), 600, "{name}");
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{name}: order");
        let feed = keys(db.changes(150, 1));
        assert_eq!(feed.len(), 600 - 451, "{name}: feed from 150.1");
        assert_eq!(feed[0], log_key(150, 1), "{name}");
        assert!(keys(db.changes(200, 0)).is_empty(), "{name}");
        assert_eq!(keys(db.scan(b"b", b"b")), vec![b"b".to_vec()], "{name}");
        // Many point reads at once, in the order asked, absent keys `None`;
        // more keys than one etcd transaction takes.
        let mut asked: Vec<Vec<u8>> = all.iter().rev().take(300).cloned().collect();
        asked.insert(7, b"missing".to_vec());
        asked.push(b"d".to_vec());
        let got = db.get_many(&asked).unwrap();
        let one_by_one: Vec<_> = asked.iter().map(|k| db.get(k).unwrap()).collect();
        assert_eq!(got, one_by_one, "{name}: get_many");
        assert_eq!(got[7], None, "{name}");
        assert_eq!(
            got.last().unwrap().as_deref(),
            Some(&b"after"[..]),
            "{name}"
        );
        let head = db.scan_keys(LOG_PREFIX, &log_key(100, 2), 400).unwrap();
        assert_eq!(head, all[302..].to_vec(), "{name}: keys from 100.2 on");
        let first = db.scan_keys(LOG_PREFIX, LOG_PREFIX, 2).unwrap();
        assert_eq!(first, all[..2].to_vec(), "{name}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory_backend::MemoryBackend;
    use super::super::sled_backend::SledBackend;
    use super::checks;
    use super::*;

    fn engines() -> Vec<(&'static str, Box<dyn Backend>)> {
        vec![
            ("sled", Box::new(SledBackend::open(None).unwrap())),
            ("memory", Box::new(MemoryBackend::default())),
        ]
    }

    #[test]
    fn a_stale_expected_revision_is_refused_and_writes_nothing() {
        for (name, db) in engines() {
            checks::a_stale_expected_revision_is_refused(name, &*db);
        }
    }

    #[test]
    fn scans_are_ordered_bounded_by_prefix_and_start_where_asked() {
        for (name, db) in engines() {
            checks::scans_are_ordered_and_bounded(name, &*db, usize::MAX);
        }
    }
}
