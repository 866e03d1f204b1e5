//! Group commit: what is on disk, and how writers and readers wait for it.
//!
//! Owns: the committed and flushed revisions and the one flush under way.
//! Must not: commit (see [`super::write`]) or know what a flush does (the
//! caller hands it in).
//!
//! A durable write commits to the engine and applies to memory under the
//! writer lock, releases the lock, and then waits here until a flush covers
//! its revision. One caller at a time flushes; it first notes the highest
//! committed revision, so its flush covers every write committed before it
//! started, and the writers queued behind it find their revision covered
//! and return without a flush of their own. Durability costs each write
//! the latency of about one flush, not the throughput of one flush per
//! write — as far as the engine lets commits run during a flush (sled holds
//! a global lock through a flush that its `sled::Batch` commits need, so
//! large writes share few flushes: `vendor/sled/PATCHES.md`; small ones
//! commit through plain inserts, which run during a flush).
//!
//! Readers of a durable store wait here too, after they read: a read that
//! saw a write not yet on disk answers only once that write is durable, so
//! no one is told of a write that a crash could still take back.
//!
//! When that flush fails, the reader has its answer already. So a durable
//! store on an engine of its own keeps each committed batch here until a
//! flush covers it, and [`Store::recover`](super::Store::recover) commits
//! again, after reopening the engine, the kept batches the engine lost: the
//! store comes back at the revision readers were shown, not before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::backend::Batch;
use crate::error::Result;

/// Committed and flushed revisions, and the flush under way.
pub(super) struct GroupCommit {
    /// The highest revision the engine has committed.
    committed: AtomicU64,
    /// The highest revision known to be on disk.
    flushed: AtomicU64,
    /// Held while one flush runs; the queue of writers waiting to be covered.
    flushing: Mutex<()>,
    /// Committed batches no flush has covered yet, oldest first (only those
    /// handed to [`keep`](Self::keep)).
    unflushed: Mutex<VecDeque<Batch>>,
}

impl GroupCommit {
    /// For a store whose revision `rev` is on disk.
    pub(super) fn new(rev: u64) -> GroupCommit {
        GroupCommit {
            committed: AtomicU64::new(rev),
            flushed: AtomicU64::new(rev),
            flushing: Mutex::new(()),
            unflushed: Mutex::new(VecDeque::new()),
        }
    }

    /// After a reopen: the engine holds revision `rev`, all of it on disk
    /// (revisions may go back: a write whose flush failed may be gone).
    pub(super) fn reset(&self, rev: u64) {
        let _one = self.flushing.lock();
        self.committed.store(rev, Ordering::Release);
        self.flushed.store(rev, Ordering::Release);
        self.unflushed.lock().clear();
    }

    /// Keeps a committed batch until a flush covers it (call before
    /// [`committed`](Self::committed), in revision order).
    pub(super) fn keep(&self, batch: Batch) {
        self.unflushed.lock().push_back(batch);
    }

    /// Copies of the kept batches no flush has covered, oldest first.
    pub(super) fn unflushed(&self) -> Vec<Batch> {
        self.unflushed.lock().iter().map(Batch::copy).collect()
    }

    /// Notes that the engine committed `rev` (before memory shows it).
    pub(super) fn committed(&self, rev: u64) {
        self.committed.fetch_max(rev, Ordering::AcqRel);
    }

    /// The highest committed revision.
    pub(super) fn committed_rev(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether `rev` is on disk already.
    pub(super) fn is_flushed(&self, rev: u64) -> bool {
        self.flushed.load(Ordering::Acquire) >= rev
    }

    /// Returns once revision `rev` is on disk, flushing with `flush` unless
    /// a flush that started after `rev` committed covers it.
    pub(super) fn wait_for(&self, rev: u64, flush: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.is_flushed(rev) {
            return Ok(());
        }
        let _one = self.flushing.lock();
        if self.is_flushed(rev) {
            return Ok(()); // the flush we queued behind covered it
        }
        let upto = self.committed_rev();
        flush()?;
        self.flushed.fetch_max(upto, Ordering::AcqRel);
        let mut kept = self.unflushed.lock();
        while kept.front().is_some_and(|b| b.rev <= upto) {
            kept.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn one_flush_covers_every_write_committed_before_it_started() {
        let sync = GroupCommit::new(0);
        for rev in 1..=5 {
            sync.committed(rev);
        }
        let flushes = AtomicUsize::new(0);
        for rev in 1..=5 {
            sync.wait_for(rev, || {
                flushes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
        // A later commit needs a flush of its own.
        sync.committed(6);
        sync.wait_for(6, || {
            flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(flushes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn writers_queued_behind_a_flush_share_the_next_one() {
        let sync = Arc::new(GroupCommit::new(0));
        let flushes = Arc::new(AtomicUsize::new(0));
        for rev in 1..=16u64 {
            sync.committed(rev);
        }
        let writers: Vec<_> = (1..=16u64)
            .map(|rev| {
                let (sync, flushes) = (sync.clone(), flushes.clone());
                std::thread::spawn(move || {
                    sync.wait_for(rev, || {
                        flushes.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Ok(())
                    })
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        // Every revision was committed before any writer waited: the first
        // flush covers them all, whoever ran it.
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
        assert!(sync.is_flushed(16));
    }

    #[test]
    fn a_failed_flush_covers_nothing() {
        let sync = GroupCommit::new(0);
        sync.committed(1);
        let e = sync.wait_for(1, || Err(crate::Error::Storage("disk on fire".into())));
        assert!(e.is_err());
        assert!(!sync.is_flushed(1));
    }

    #[test]
    fn kept_batches_stay_until_a_flush_covers_them() {
        let sync = GroupCommit::new(0);
        for rev in 1..=3 {
            sync.keep(Batch {
                expect: rev - 1,
                rev,
                ops: vec![(vec![b'k'], Some(vec![rev as u8]))],
                prepared: None,
            });
            sync.committed(rev);
        }
        let failed = sync.wait_for(2, || Err(crate::Error::Storage("disk on fire".into())));
        assert!(failed.is_err());
        let revs = |s: &GroupCommit| s.unflushed().iter().map(|b| b.rev).collect::<Vec<_>>();
        assert_eq!(revs(&sync), [1, 2, 3]);
        assert_eq!(sync.unflushed()[2].ops, [(vec![b'k'], Some(vec![3]))]);
        sync.wait_for(3, || Ok(())).unwrap();
        assert!(revs(&sync).is_empty());
        sync.keep(Batch {
            expect: 3,
            rev: 4,
            ..Batch::default()
        });
        sync.reset(3);
        assert!(revs(&sync).is_empty());
    }
}
