//! The store handle and how one is opened: [`Options`], [`Store`] on sled
//! (a directory or a temporary one) or in memory, the first write of a new
//! store, and the accessors the rest of the module builds on.
//!
//! Owns: the engine choice, the storage thread's guard of every blocking
//! open and flush, the `global` profile and signing secret a new store gets,
//! the reopen of a failed engine in place ([`Store::recover`]: the handle
//! stays, the engine behind it is closed and opened again from disk), and
//! the final flush on drop. Must not: read records into memory (see
//! [`super::rebuild`]) or write objects other than through the pipeline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};

use super::group_commit::GroupCommit;
use uuid::Uuid;

use super::backend::{Backend, Batch};
use super::changelog;
use super::checkpoint::{self, Recovery};
use super::layout::{named_key, PROFILE_PREFIX, SECRET_KEY};
use super::lease_clock::LeaseClock;
use super::machines::Machines;
use super::memory_backend::MemoryBackend;
use super::params::Params;
use super::profiles::Profiles;
use super::rebuild::load_state;
use super::sled_backend::SledBackend;
use super::snapshot;
use super::stall;
use super::state::State;
use super::write::{record, Apply};
use crate::error::{Error, Result};
use crate::index::EncodeError;
use crate::model::{Profile, GLOBAL_PROFILE};
use crate::watch::LOG_RETAIN;

/// How long a storage call may make no progress before it is given up.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Acknowledge a write only once it is on disk (the default), and answer
    /// a read that saw a write only once that write is on disk. Concurrent
    /// writers share flushes (group commit). `false` is unsafe: a crash
    /// loses the writes of up to the last half second (sled flushes on its
    /// own about every 500 ms, and on [`Store::flush`] / drop), including
    /// acknowledged ones, and an import chunk sled was still applying after
    /// its answer (whole: never part of one).
    pub durable: bool,
    /// How many change events the log keeps at least, for resuming
    /// watches (it trims whole records: fewer than this plus one record's
    /// events).
    pub log_retain: usize,
    /// How long an open, commit or flush may make no progress before the
    /// call returns [`Error::Stalled`] (and the store refuses further
    /// writes). A safety net: the engine is not expected to stall.
    pub stall_timeout: std::time::Duration,
    /// Write an index checkpoint when the store closes once the writes
    /// since the last one would make the next open index this many
    /// machines again (a machine write counts one, a profile change its
    /// members, a `global` change every machine). Stores in a directory
    /// only. The next open reads the checkpoint and replays the writes after
    /// it instead of reading every machine. `None`: never write one (an open
    /// still uses one that exists). A running store also writes one when
    /// the count reaches the change log's retention, and until it is in
    /// place the log keeps every record after the last one (until it holds
    /// four times its retention), so that the next open can always bridge
    /// from it.
    pub checkpoint_after: Option<u64>,
    /// The longest TTL a lease may be granted ([`crate::Leases::grant`]).
    pub max_lease_ttl: std::time::Duration,
    /// How long an open waits for a store directory another handle holds
    /// (another process, or a store in this process that is still closing:
    /// sled's IO threads let go of the directory a moment after the last
    /// handle drops) before it returns [`Error::Busy`]. Retried with
    /// jittered backoff up to 60 ms, so that several waiters do not collide.
    pub lock_timeout: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durable: true,
            log_retain: LOG_RETAIN,
            stall_timeout: STALL_TIMEOUT,
            checkpoint_after: Some(1_000),
            max_lease_ttl: std::time::Duration::from_secs(24 * 3600),
            lock_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// A fleetkv store. Cheap to clone (an `Arc`); `Send + Sync`.
///
/// The last clone to drop closes the store on its own thread: it files the
/// lease deadlines, writes a checkpoint when one is due and flushes. Never
/// on a background thread that happened to hold the store a moment longer:
/// a process returning from `main` does not wait for those.
pub struct Store {
    pub(super) inner: Arc<Inner>,
    /// Counted in [`Inner::handles`]; a background thread's handle is not.
    counted: bool,
}

impl Store {
    fn first(inner: Inner) -> Store {
        inner.handles.store(1, Ordering::Release);
        Store {
            inner: Arc::new(inner),
            counted: true,
        }
    }

    /// A background thread's handle: it never closes the store.
    pub(super) fn background(inner: Arc<Inner>) -> Store {
        Store {
            inner,
            counted: false,
        }
    }
}

impl Clone for Store {
    fn clone(&self) -> Store {
        self.inner.handles.fetch_add(1, Ordering::AcqRel);
        Store {
            inner: self.inner.clone(),
            counted: true,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.counted && self.inner.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.close();
        }
    }
}

pub(super) struct Inner {
    /// The engine; replaced only by [`Store::recover`] (under the writer
    /// lock and the state's write lock).
    pub(super) backend: RwLock<Arc<dyn Backend>>,
    /// Runs every engine call that can block (commit, open).
    pub(super) guard: stall::Guard,
    /// Runs flushes, beside commits, under the same stall limit.
    pub(super) flusher: stall::Guard,
    /// What is on disk; durable writers and readers wait here.
    pub(super) commits: GroupCommit,
    pub(super) options: Options,
    /// Serializes writers; holds what only writers use (the log's head).
    pub(super) writer: Mutex<changelog::Trim>,
    /// Shared with a background checkpoint while it encodes.
    pub(super) state: Arc<RwLock<State>>,
    /// Signalled after every write, for watches and waits.
    pub(super) written: Mutex<()>,
    pub(super) wake: Condvar,
    /// Where and how far behind the index checkpoint is (directory stores).
    pub(super) checkpoints: Option<Arc<Checkpoints>>,
    pub(super) recovery: Recovery,
    /// Lease deadlines and their expiry.
    pub(super) leases: Arc<LeaseClock>,
    /// Other servers write to the engine too (etcd): see `super::follow`.
    pub(super) shared: bool,
    /// The etcd engine itself (a store shared through etcd): its leases
    /// keep lease deadlines ([`super::leases::Timer`]).
    #[cfg(feature = "etcd")]
    pub(super) etcd: std::sync::OnceLock<Arc<super::etcd_backend::EtcdBackend>>,
    /// The users' [`Store`] handles alive.
    handles: AtomicUsize,
    /// A close left a snapshot ([`super::snapshot`]) that the next write
    /// must remove before it commits.
    clean_left: AtomicBool,
}

/// The checkpoint file's directory and what it lacks.
pub(super) struct Checkpoints {
    dir: PathBuf,
    /// What replaying the writes since the checkpoint on disk would cost,
    /// in machines to index again ([`checkpoint::replay_cost`]; a large
    /// number when there is no checkpoint this store can use).
    pending: AtomicU64,
    /// The revision of the checkpoint in place that the log must bridge
    /// from, [`NO_PIN`] when none: the log keeps every record after it
    /// ([`Inner::log_pin`]).
    pinned: AtomicU64,
    /// A background checkpoint is under way.
    running: AtomicBool,
    /// One checkpoint encoded and written at a time, in revision order.
    writing: Mutex<()>,
}

impl Checkpoints {
    /// Encodes `state`'s index into the temporary file, makes its revision
    /// durable with `flush`, then puts the file in place.
    ///
    /// The encoding works on a copy taken under the state's read lock that
    /// shares every key with the index ([`Index::for_checkpoint`]): writes
    /// go on while it runs (at 1M machines it takes about half a second,
    /// which writers, and the readers queued behind them, used to wait
    /// for). A write to a key the copy still holds copies that key's map
    /// of blocks or values first, which shares the packed blocks and the
    /// bitmaps (the write copies only those it changes); a key of unique
    /// values grown as a tree (by imports or API writes) is a map of one
    /// entry per machine, so copying it costs far more: hence `repack`.
    /// Only when a section of the last checkpoint no longer reads back is
    /// the index encoded (and its file written) under the lock, where the
    /// key is built from the records.
    ///
    /// With `repack`, keys grown as trees whose values call for packed
    /// blocks are packed from the copy after the encoding and adopted
    /// where no write changed them since ([`Index::repack`]): after an
    /// import, the first checkpoint brings the index to the form and size
    /// a reopen would.
    fn write(
        &self,
        digest: &[u8; 16],
        state: &RwLock<State>,
        flush: impl FnOnce() -> Result<()>,
        repack: bool,
    ) -> Result<()> {
        let _timed = crate::telemetry::Timed::start(crate::telemetry::record_checkpoint);
        let (copy, covered, mut rev, next_id) = {
            let st = state.read();
            (
                st.machines.for_checkpoint(),
                self.pending.load(Ordering::Acquire),
                st.rev,
                st.next_id,
            )
        };
        #[cfg(test)]
        tests::encoding(&self.dir);
        let mut written = checkpoint::write_file(&self.dir, digest, &copy, rev, next_id);
        // Keys an import or the API grew as trees are packed from the copy
        // here, and adopted below where no write changed them since.
        let repacked = (repack && written.is_ok()).then(|| copy.repack());
        drop(copy);
        if let Err(EncodeError::Key(_)) = written {
            // From the state's own index instead, under its read lock.
            let st = state.read();
            rev = st.rev;
            written = checkpoint::write_file(&self.dir, digest, &st.machines, st.rev, st.next_id);
        }
        let failed = |e: &dyn std::fmt::Display| {
            Error::Storage(format!(
                "writing the index checkpoint in {}: {e}",
                self.dir.display()
            ))
        };
        let written = written.map_err(|e| failed(&e))?;
        flush()?;
        written.install().map_err(|e| failed(&e))?;
        self.pinned.store(rev, Ordering::Release);
        self.pending.fetch_sub(
            covered.min(self.pending.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        let released = {
            let mut st = state.write();
            st.changed.covered(rev);
            repacked.map(|r| st.machines.adopt(r))
        };
        // The trees the packed keys replace are freed here, not under the
        // lock.
        drop(released);
        Ok(())
    }
}

/// `pending` when no usable checkpoint exists: due at the first chance.
const NO_CHECKPOINT: u64 = u64::MAX / 4;

/// `pinned` when the log need not bridge from any checkpoint.
const NO_PIN: u64 = u64::MAX;

/// What `pinned` starts as after an open's recovery.
fn pin_of(recovery: &Recovery) -> u64 {
    match recovery {
        Recovery::Checkpoint { revision, .. } => *revision,
        Recovery::Rebuilt { .. } => NO_PIN,
    }
}

impl Drop for Inner {
    /// Closed already when the users' last handle dropped; again here for
    /// what a background thread did after that (each step is cheap when
    /// there is nothing to do).
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    /// Files lease deadlines, writes a checkpoint when due, and flushes.
    /// sled flushes when its last handle drops; flushing here first, through
    /// the guard, bounds that too: should it stall, the storage thread keeps
    /// a handle and sled's own flush never runs.
    fn close(&self) {
        if let Err(e) = self.leases.file() {
            eprintln!("fleetkv: could not file lease deadlines: {e}");
        }
        if self.checkpoint_due(self.options.checkpoint_after) {
            if let Err(e) = self.checkpoint(false) {
                eprintln!("fleetkv: could not write the index checkpoint: {e}");
            }
        }
        let backend = self.backend.read().clone();
        if let Ok(Ok(())) = self.flusher.run("flush", move || backend.close()) {
            self.leave_snapshot();
        }
    }

    /// Leaves a snapshot for counting without the engine, when no lease is
    /// live (writers wait; [`snapshot::leave`] says when else it does not).
    fn leave_snapshot(&self) {
        let Some(c) = &self.checkpoints else {
            return;
        };
        if self.shared || self.guard.check().is_err() {
            return;
        }
        // A background checkpoint not yet written would replace the file
        // the snapshot names, and the snapshot would never be used: wait
        // for it (no write is in flight at a close to start another), at
        // most the stall limit, else leave none.
        let deadline = std::time::Instant::now() + self.options.stall_timeout;
        while c.running.load(Ordering::Acquire) {
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _writer = self.writer.lock();
        let st = self.state.read();
        // The next open may end a lease (a write) that a snapshot would
        // still count as live.
        if !st.leases.is_empty() {
            return;
        }
        let backend = self.backend.read().clone();
        match snapshot::leave(&c.dir, &*backend, &st) {
            Ok(left) => self.clean_left.store(left, Ordering::Release),
            Err(e) => eprintln!("fleetkv: {e}"),
        }
    }

    /// Before a write commits (the writer lock held): removes the snapshot
    /// a close left, which the write would make stale.
    pub(super) fn forget_snapshot(&self) -> Result<()> {
        if self.clean_left.load(Ordering::Acquire) {
            if let Some(c) = &self.checkpoints {
                snapshot::forget(&c.dir)?;
            }
            self.clean_left.store(false, Ordering::Release);
        }
        Ok(())
    }
}

impl Inner {
    /// The revision after which a write's trim keeps every log record: the
    /// checkpoint's in place, which the next open brings forward by
    /// replaying them. Only for a store that writes checkpoints and whose
    /// engine it does not share (each etcd transaction stays within its
    /// operation limit by trimming every write); [`NO_PIN`] otherwise.
    pub(super) fn log_pin(&self) -> u64 {
        match &self.checkpoints {
            Some(c) if !self.shared && self.options.checkpoint_after.is_some() => {
                c.pinned.load(Ordering::Acquire)
            }
            _ => NO_PIN,
        }
    }

    fn checkpoint_due(&self, after: Option<u64>) -> bool {
        match (&self.checkpoints, after) {
            (Some(c), Some(after)) => {
                c.pending.load(Ordering::Relaxed) >= after.max(1) && self.guard.check().is_ok()
            }
            _ => false,
        }
    }

    /// Writes a checkpoint now, after any under way (waiting at most the
    /// stall limit for it: a background one whose flush stalled is given up).
    /// Writes a checkpoint now; with `repack`, keys grown as trees are
    /// packed too (not worth it at a close).
    fn checkpoint(&self, repack: bool) -> Result<()> {
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        let Some(_one) = c.writing.try_lock_for(self.options.stall_timeout) else {
            return Err(Error::Stalled {
                op: "index checkpoint".into(),
                after: self.options.stall_timeout,
            });
        };
        let digest = checkpoint::store_digest(&self.secret()?);
        let backend = self.backend.read().clone();
        c.write(
            &digest,
            &self.state,
            || self.flusher.run("flush", move || backend.flush())?,
            repack,
        )
    }

    fn secret(&self) -> Result<Vec<u8>> {
        self.backend
            .read()
            .get(SECRET_KEY)?
            .ok_or_else(|| Error::Corrupt {
                key: "s:secret".into(),
                reason: "the store has no signing secret".into(),
            })
    }
}

/// The state from `dir`'s checkpoint brought forward, or rebuilt (with one
/// line on stderr when a checkpoint was there but could not serve).
fn open_indexes(
    db: &Arc<dyn Backend>,
    dir: &Path,
    secret: &[u8],
    prefetch: Option<checkpoint::Prefetch>,
) -> Result<(State, Recovery)> {
    let read = match prefetch {
        Some(p) => p.take(dir),
        None => checkpoint::read(dir),
    };
    let digest = checkpoint::store_digest(secret);
    let refused = match read.and_then(|ck| ck.map(|ck| ck.of_store(&digest)).transpose()) {
        Ok(None) => None,
        Ok(Some(mut ck)) => {
            ck.machines.set_repair(super::rebuild::repair_from(db));
            match checkpoint::bring_forward(&**db, ck)? {
                Ok(found) => return Ok(found),
                Err(why) => Some(why),
            }
        }
        Err(why) => Some(why),
    };
    if let Some(why) = &refused {
        eprintln!(
            "fleetkv: the index checkpoint {} {why}; rebuilding the indexes from the records",
            dir.join(checkpoint::FILE).display()
        );
    }
    Ok((load_state(&**db)?, Recovery::Rebuilt { refused }))
}

/// Runs `open` (sled's open of a directory), retrying while another handle
/// holds the directory, until `timeout` ([`Options::lock_timeout`]).
pub(super) fn open_waiting(
    timeout: std::time::Duration,
    mut open: impl FnMut() -> Result<SledBackend>,
) -> Result<SledBackend> {
    let start = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(4);
    loop {
        match open() {
            Err(Error::Busy(why)) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(Error::Busy(format!(
                        "{why}: another handle held the store for the whole {:.1}s lock timeout",
                        waited.as_secs_f64()
                    )));
                }
                // Full jitter in [backoff/2, backoff], capped at what is left.
                let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
                let nap = backoff / 2 + backoff / 2 * jitter / 1000;
                std::thread::sleep(nap.min(timeout - waited));
                backoff = (backoff * 2).min(std::time::Duration::from_millis(60));
            }
            r => return r,
        }
    }
}

/// How much a reopen wants free in the store's directory before it lets the
/// failed engine go: two of sled's 512 KiB log segments. While the disk is
/// fuller than this, [`Store::recover`] changes nothing and the old engine
/// keeps answering reads.
const RECOVER_HEADROOM: usize = 1 << 20;

/// The probe file [`Store::recover`] writes, syncs and removes.
const PROBE_FILE: &str = "fleetkv.space-probe";

/// Writes `RECOVER_HEADROOM` bytes to a file in `dir`, syncs and removes it:
/// whether the engine would have room to open and take writes again.
fn probe_space(dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = dir.join(PROBE_FILE);
    let r = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; RECOVER_HEADROOM])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    r
}

/// Stands in for the engine between closing a failed one and opening its
/// successor (and stays, should that open fail, until a later
/// [`Store::recover`] succeeds): every call fails, nothing is guessed.
struct Reopening;

impl Reopening {
    fn err() -> Error {
        Error::Storage("the store is being reopened after a storage failure".into())
    }
}

impl Backend for Reopening {
    fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(Reopening::err())
    }
    fn scan(&self, _: &[u8], _: &[u8]) -> super::backend::Scan<'_> {
        Box::new(std::iter::once(Err(Reopening::err())))
    }
    fn revision(&self) -> Result<u64> {
        Err(Reopening::err())
    }
    fn commit(&self, _: Batch) -> Result<()> {
        Err(Reopening::err())
    }
    fn flush(&self) -> Result<()> {
        Err(Reopening::err())
    }
}

/// A read of the in-memory state ([`Store::state`]).
pub(crate) struct ReadState<'a> {
    guard: Option<RwLockReadGuard<'a, State>>,
    store: &'a Store,
}

impl std::ops::Deref for ReadState<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        // Set at creation, taken only by drop.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for ReadState<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let rev = guard.rev;
        drop(guard);
        let store = self.store;
        if store.inner.options.durable && !store.inner.commits.is_flushed(rev) {
            // A failed flush has failed the store; the reader still answers
            // from memory, and `recover` commits what it saw again.
            let _ = store.sync_to(rev);
        }
    }
}

/// After a failed flush, on the reopened engine: commits again, in order,
/// the batches committed before the failure that no flush covered and the
/// engine lost (readers may have been shown them), then flushes them.
/// Returns the revisions committed again. Bounded like every engine call;
/// on an error nothing is dropped, and the next recover tries again.
fn redo_unflushed(inner: &Inner, backend: &Arc<dyn Backend>) -> Result<Option<(u64, u64)>> {
    let at = backend.revision()?;
    let redo: Vec<Batch> = inner
        .commits
        .unflushed()
        .into_iter()
        .filter(|b| b.rev > at)
        .collect();
    let Some((first, last)) = redo.first().zip(redo.last()).map(|(f, l)| (f.rev, l.rev)) else {
        return Ok(None);
    };
    if redo[0].expect != at {
        // Not a continuation of what the engine holds (it lost a batch a
        // flush had covered): nothing can be committed on top of it.
        return Err(Error::Corrupt {
            key: "s:rev".into(),
            reason: format!(
                "the reopened store is at revision {at}, but the first write not yet on disk \
                 was planned at {}",
                redo[0].expect
            ),
        });
    }
    let engine = Arc::clone(backend);
    inner.guard.run_recovering("commit again", move || {
        for batch in redo {
            engine.commit(batch)?;
        }
        engine.flush()
    })??;
    Ok(Some((first, last)))
}

impl Store {
    /// Opens (or creates) a store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, Options::default())
    }

    /// Opens with options.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        Store::on_sled(Some(path), options)
    }

    /// A store in a temporary directory, removed when the last clone drops
    /// (so [`Options::durable`] does not apply: nothing outlives the process).
    pub fn temporary() -> Result<Store> {
        Store::temporary_with(Options::default())
    }

    /// A temporary store with options.
    pub fn temporary_with(options: Options) -> Result<Store> {
        let options = Options {
            durable: false,
            ..options
        };
        Store::on_sled(None, options)
    }

    /// A store held in memory only (nothing is written to disk; everything
    /// is gone when the last clone drops). For tests and scratch work.
    pub fn in_memory() -> Result<Store> {
        Store::in_memory_with(Options::default())
    }

    /// An in-memory store with options (`durable` does not apply: there is
    /// no disk).
    pub fn in_memory_with(options: Options) -> Result<Store> {
        let options = Options {
            durable: false,
            ..options
        };
        let guard = stall::Guard::inline(options.stall_timeout);
        Store::start(
            Arc::new(MemoryBackend::default()),
            guard,
            options,
            None,
            None,
        )
    }

    /// A store on an etcd cluster shared with other fleetkv servers
    /// (feature `etcd`): `endpoints` are its members' client URLs
    /// (`http://host:2379`), `etcd` the prefix, deadlines and the cluster's
    /// limits. The store reads everything under the prefix, then follows
    /// the other servers' writes (see `super::follow`). etcd acknowledges a
    /// write once a quorum has it on disk, so `options.durable` does not
    /// apply, and no index checkpoint is kept (a store indexes every record
    /// at open). Leases are refused on such a store: their deadlines would
    /// live in one server's memory. Unreachable: [`Error::Unavailable`];
    /// a prefix holding keys fleetkv did not write: [`Error::Corrupt`].
    #[cfg(feature = "etcd")]
    pub fn open_etcd(
        endpoints: &[String],
        etcd: super::etcd_backend::EtcdOptions,
        options: Options,
    ) -> Result<Store> {
        let _timed = crate::telemetry::Timed::start(crate::telemetry::record_open);
        let options = Options {
            durable: false,
            checkpoint_after: None,
            ..options
        };
        let guard = stall::Guard::remote(options.stall_timeout)?;
        let eps = endpoints.to_vec();
        let backend = Arc::new(guard.run("open", move || {
            super::etcd_backend::EtcdBackend::connect(&eps, etcd)
        })??);
        // The watch starts before the records are read: a write between
        // the two rings the follower, whose catch-up finds it or not.
        let (from, _) = backend.revisions()?;
        let store = Store::start(backend.clone(), guard, options, None, None)?;
        let _ = store.inner.etcd.set(backend.clone());
        super::lease_clock::follow_etcd_leases(&store, backend.clone())?;
        super::follow::start_follower(&store, backend, from + 1)?;
        Ok(store)
    }

    fn on_sled(path: Option<PathBuf>, options: Options) -> Result<Store> {
        let _timed = crate::telemetry::Timed::start(crate::telemetry::record_open);
        let guard = stall::Guard::new(options.stall_timeout)?;
        let dir = path.clone();
        let prefetch = dir.as_deref().map(checkpoint::Prefetch::start);
        let backend = open_waiting(options.lock_timeout, || {
            let at = path.clone();
            guard.run("open", move || SledBackend::open(at))?
        })?;
        // The engine is ours now, and about to take writes.
        if let Some(dir) = &dir {
            snapshot::forget(dir)?;
            // A process killed between writing a checkpoint's or a
            // snapshot's temporary file and renaming it left it behind (as
            // large as a checkpoint); no one else writes here while we hold
            // the engine, and our own checkpoints have not started.
            for name in [checkpoint::FILE, snapshot::FILE] {
                let _ = std::fs::remove_file(dir.join(format!("{name}.tmp")));
            }
        }
        Store::start(Arc::new(backend), guard, options, dir, prefetch)
    }

    /// Builds the in-memory state from an opened engine; a new store gets
    /// its `global` profile and signing secret in its first write.
    /// From a checkpoint in `dir` when there is a usable one (see
    /// [`super::checkpoint`]; `prefetch` has begun reading it), else from
    /// every record. Crate tests open stores on other engines through it
    /// (`fault_backend`).
    pub(super) fn start(
        backend: Arc<dyn Backend>,
        guard: stall::Guard,
        options: Options,
        dir: Option<PathBuf>,
        prefetch: Option<checkpoint::Prefetch>,
    ) -> Result<Store> {
        let (state, recovery) = match (&dir, backend.get(SECRET_KEY)?) {
            (Some(dir), Some(secret)) => open_indexes(&backend, dir, &secret, prefetch)?,
            _ => (load_state(&*backend)?, Recovery::Rebuilt { refused: None }),
        };
        let pending = match recovery {
            Recovery::Checkpoint { events, .. } => events,
            Recovery::Rebuilt { .. } => NO_CHECKPOINT,
        };
        let pinned = pin_of(&recovery);
        let rev = state.rev;
        let shared = backend.shared();
        let flusher = guard.sibling("fleetkv-flush")?;
        let leases = Arc::new(LeaseClock::new(dir.as_deref()));
        let store = Store::first(Inner {
            backend: RwLock::new(backend),
            guard,
            flusher,
            commits: GroupCommit::new(rev),
            options,
            writer: Mutex::new(changelog::Trim::default()),
            state: Arc::new(RwLock::new(state)),
            written: Mutex::new(()),
            wake: Condvar::new(),
            checkpoints: dir.map(|dir| {
                Arc::new(Checkpoints {
                    dir,
                    pending: AtomicU64::new(pending),
                    pinned: AtomicU64::new(pinned),
                    running: AtomicBool::new(false),
                    writing: Mutex::new(()),
                })
            }),
            recovery,
            leases,
            shared,
            #[cfg(feature = "etcd")]
            etcd: std::sync::OnceLock::new(),
            handles: AtomicUsize::new(0),
            clean_left: AtomicBool::new(false),
        });
        store.start_leases()?;
        let has_secret = store.backend().get(SECRET_KEY)?.is_some();
        if has_secret
            && store
                .state_for_write()
                .profiles
                .contains_key(GLOBAL_PROFILE)
        {
            return Ok(store);
        }
        store.write(|st, rev, log| {
            let mut batch = Batch::default();
            // Read again at each plan: on a shared engine another server
            // may have created the store meanwhile (its secret stands).
            let has_secret = has_secret || store.backend().get(SECRET_KEY)?.is_some();
            if !has_secret {
                // 244 random bits from two v4 UUIDs (the OS generator,
                // through `getrandom`); created once with the store, never
                // exported.
                let mut secret = Uuid::new_v4().as_bytes().to_vec();
                secret.extend_from_slice(Uuid::new_v4().as_bytes());
                batch.put(SECRET_KEY, secret);
            }
            if st.profiles.contains_key(GLOBAL_PROFILE) {
                return Ok((batch, Box::new(|_: &mut State| {}) as Apply, ()));
            }
            let mut global = Profile::new(GLOBAL_PROFILE);
            global.revision = rev;
            let key = named_key(PROFILE_PREFIX, GLOBAL_PROFILE);
            record(&mut batch, log, &key, GLOBAL_PROFILE, &global, None);
            // A new profile with no params: no machine's params change.
            let apply = Box::new(move |st: &mut State| st.add_profile(global));
            Ok((batch, apply as Apply, ()))
        })?;
        Ok(store)
    }

    /// The store's signing secret (for tokens). Created with the store.
    pub(crate) fn secret(&self) -> Result<Vec<u8>> {
        self.inner.secret()
    }

    /// The in-memory state, for a read. On a durable store, dropping the
    /// guard waits until the revision it showed is on disk (see
    /// [`super::group_commit`]), so an answer never tells of a write a crash
    /// could still take back.
    pub(crate) fn state(&self) -> ReadState<'_> {
        ReadState {
            guard: Some(self.inner.state.read()),
            store: self,
        }
    }

    /// The in-memory state, for planning a write: no wait for the disk,
    /// since the write's own acknowledgment waits for it (waiting here would
    /// make each writer wait for the previous writer's flush, one flush per
    /// write).
    pub(super) fn state_for_write(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read()
    }

    /// Machines.
    pub fn machines(&self) -> Machines<'_> {
        Machines {
            store: self,
            guards: Default::default(),
        }
    }

    /// Profiles.
    pub fn profiles(&self) -> Profiles<'_> {
        Profiles { store: self }
    }

    /// Param definitions.
    pub fn params(&self) -> Params<'_> {
        Params { store: self }
    }

    /// The store revision: the number of the last write.
    pub fn revision(&self) -> u64 {
        self.state().rev
    }

    /// The revision the in-memory indexes are at, without waiting for it to
    /// be on disk (as [`revision`](Self::revision) does on a durable
    /// store): for a response header, or to decide whether to wait.
    pub fn revision_in_memory(&self) -> u64 {
        self.state_for_write().rev
    }

    /// Writes everything committed so far to disk (on a durable store,
    /// everything acknowledged is there already).
    pub fn flush(&self) -> Result<()> {
        self.sync_to(self.inner.commits.committed_rev())
    }

    /// Returns once revision `rev` is on disk, sharing a flush with every
    /// writer and reader waiting at the same time. A failed flush marks the
    /// store failed: later writes are refused until it is reopened, since
    /// what the engine had buffered may not be on disk.
    pub(super) fn sync_to(&self, rev: u64) -> Result<()> {
        let inner = &self.inner;
        inner.commits.wait_for(rev, || {
            inner.guard.check()?;
            let _timed = crate::telemetry::Timed::start(crate::telemetry::record_fsync);
            let backend = inner.backend.read().clone();
            inner
                .flusher
                .run("flush", move || backend.flush())?
                .inspect_err(|e| {
                    inner.guard.fail(format!("a flush to disk failed ({e})"), e);
                })
        })
    }

    /// Why the store refuses writes after a failed flush or commit (a full
    /// disk, an I/O error), or `None` while it accepts them. A stall
    /// ([`Error::Stalled`]) is not reported here: only a new process can
    /// undo it.
    pub fn failure(&self) -> Option<String> {
        self.inner.guard.failure()
    }

    /// After a failed flush or commit, reopens the engine from disk and
    /// accepts writes again; `Ok(false)` when the store had not failed.
    ///
    /// What the failed engine buffered is given up, not trusted (after an
    /// I/O error its state is unknown — the fsync lesson): the engine is
    /// closed and opened again from its directory, the indexes are read
    /// from the checkpoint or rebuilt from the records, exactly as a new
    /// process would. Every acknowledged write was on disk and is there.
    /// A write whose flush failed had been applied in memory, and readers
    /// may have been shown it: on a durable store each committed batch is
    /// kept until a flush covers it, and those the reopened engine lacks
    /// are committed to it again and flushed before anything is read, so
    /// the store comes back at the revision readers saw (a write whose
    /// commit itself failed was never shown, and may or may not be there).
    /// First `RECOVER_HEADROOM` bytes are written to
    /// a probe file in the directory and synced: while that fails (the disk
    /// is still full), nothing changes, the error is returned and reads go
    /// on from the failed engine. Writers and readers of the indexes wait
    /// for the reopen; a read that reaches the engine while it is closed
    /// fails with [`Error::Storage`]. Stores in a directory only (a
    /// temporary store's engine takes its files along when it closes); a
    /// stalled store cannot be recovered in-process.
    pub fn recover(&self) -> Result<bool> {
        let inner = &self.inner;
        if inner.guard.failure().is_none() {
            return Ok(false);
        }
        if inner.guard.is_stalled() {
            return Err(inner.guard.check().err().unwrap_or_else(Reopening::err));
        }
        let Some(dir) = inner.checkpoints.as_ref().map(|c| c.dir.clone()) else {
            return Err(Error::invalid(
                "recover",
                "only a store in a directory can be reopened",
            ));
        };
        probe_space(&dir).map_err(|e| {
            let msg = format!("{}: still cannot write: {e}", dir.display());
            if e.kind() == std::io::ErrorKind::StorageFull {
                Error::StorageFull(msg)
            } else {
                Error::Storage(msg)
            }
        })?;
        let lock_timeout = inner.options.lock_timeout;
        self.reopen(Some(&dir), || {
            let engine = open_waiting(lock_timeout, || SledBackend::open(Some(dir.clone())))?;
            Ok(Arc::new(engine))
        })?;
        Ok(true)
    }

    /// [`recover`](Self::recover)'s reopen, for any engine: `open` opens the
    /// engine again from what is durable once the failed one is closed.
    /// Crate tests reopen the fault-injecting engine through it.
    pub(super) fn reopen(
        &self,
        dir: Option<&Path>,
        open: impl FnOnce() -> Result<Arc<dyn Backend>>,
    ) -> Result<()> {
        let inner = &self.inner;
        let mut trim = inner.writer.lock();
        let mut st = inner.state.write();
        let old_rev = st.rev;
        // sled locks its directory per open file: the failed engine must be
        // closed (every handle dropped) before it can be opened again.
        let failed = std::mem::replace(&mut *inner.backend.write(), Arc::new(Reopening));
        // Closing runs sled's own flush, which returns at once on an engine
        // that recorded its error; bounded all the same, on a thread of its
        // own, since a close that hangs keeps the directory locked.
        let (closed, close) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fleetkv-close".into())
            .spawn(move || {
                drop(failed);
                let _ = closed.send(());
            })
            .map_err(|e| Error::Storage(format!("closing the failed engine: {e}")))?;
        if close.recv_timeout(inner.options.stall_timeout).is_err() {
            return Err(Error::Stalled {
                op: "close the failed engine".into(),
                after: inner.options.stall_timeout,
            });
        }
        let backend = open()?;
        let redone = redo_unflushed(inner, &backend)?;
        let secret = backend.get(SECRET_KEY)?.ok_or_else(|| Error::Corrupt {
            key: "s:secret".into(),
            reason: "the store has no signing secret".into(),
        })?;
        let (state, recovery) = match dir {
            Some(dir) => open_indexes(&backend, dir, &secret, None)?,
            None => (load_state(&*backend)?, Recovery::Rebuilt { refused: None }),
        };
        let rev = state.rev;
        if let Some(c) = &inner.checkpoints {
            let pending = match recovery {
                Recovery::Checkpoint { events, .. } => events,
                Recovery::Rebuilt { .. } => NO_CHECKPOINT,
            };
            c.pending.store(pending, Ordering::Release);
            c.pinned.store(pin_of(&recovery), Ordering::Release);
        }
        *st = state;
        *trim = changelog::Trim::default();
        inner.commits.reset(rev);
        *inner.backend.write() = backend;
        inner.guard.clear_failure();
        drop(st);
        drop(trim);
        eprintln!(
            "fleetkv: reopened the store{} after a storage failure: revision {rev}{}{}",
            dir.map(|d| format!(" in {}", d.display()))
                .unwrap_or_default(),
            match redone {
                Some((from, to)) =>
                    format!(" (revisions {from}..={to} committed again from memory)"),
                None => String::new(),
            },
            if rev < old_rev {
                format!(" (revisions {}..={old_rev} were not on disk)", rev + 1)
            } else {
                String::new()
            }
        );
        let _g = inner.written.lock();
        inner.wake.notify_all();
        Ok(())
    }

    /// How this open got its indexes: from a checkpoint (and how much of
    /// the log it replayed) or by reading every machine (and why no
    /// checkpoint served).
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Writes the index checkpoint now (a store in a directory; elsewhere a
    /// no-op), flushing the engine first. Closing writes one when due
    /// ([`Options::checkpoint_after`]).
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint(true)
    }

    /// Counts a write's replay cost toward the next checkpoint, and starts
    /// one in the background when the cost reaches the change log's
    /// retention: what the next open would replay stays bounded. The log
    /// bridges from the last checkpoint however long this one takes: it
    /// keeps the records after it ([`Inner::log_pin`]). The write that
    /// crosses the mark does not wait for it.
    pub(super) fn note_written(&self, cost: u64) {
        let inner = &self.inner;
        let Some(c) = &inner.checkpoints else {
            return;
        };
        c.pending.fetch_add(cost, Ordering::Relaxed);
        let mark =
            (inner.options.log_retain as u64).max(inner.options.checkpoint_after.unwrap_or(0));
        if inner.options.checkpoint_after.is_none()
            || !inner.checkpoint_due(Some(mark))
            || c.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(secret) = inner.secret() else {
            c.running.store(false, Ordering::Release);
            return;
        };
        let digest = checkpoint::store_digest(&secret);
        let (bg, state, backend) = (c.clone(), inner.state.clone(), inner.backend.read().clone());
        let spawned = std::thread::Builder::new()
            .name("fleetkv-checkpoint".into())
            .spawn(move || {
                // The thread holds the state and the engine, not the store:
                // closing the store still flushes and checkpoints at once.
                // Its flush is not bounded by the storage thread; nobody
                // waits for it, and a close waits for it at most the limit.
                // A failure only means a longer replay or a rebuild later.
                #[cfg(test)]
                tests::encoding(&bg.dir.join("background"));
                let _one = bg.writing.lock();
                if let Err(e) = bg.write(&digest, &state, || backend.flush(), true) {
                    eprintln!("fleetkv: could not write the index checkpoint: {e}");
                }
                bg.running.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            c.running.store(false, Ordering::Release);
        }
    }

    /// The engine, for reads (writes go through [`write`](Self::write)).
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        self.inner.backend.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::filter::Filter;
    use crate::model::Machine;

    type Hook = Arc<dyn Fn() + Send + Sync>;

    /// Called by a checkpoint's encoding of store directory `dir` once it
    /// holds its copy (and with `dir/background` as a background
    /// checkpoint starts): what a test set for that path runs there.
    static ENCODING: Mutex<Vec<(PathBuf, Hook)>> = Mutex::new(Vec::new());

    pub(super) fn encoding(dir: &Path) {
        let hook = ENCODING
            .lock()
            .iter()
            .find(|(d, _)| d == dir)
            .map(|(_, h)| h.clone());
        if let Some(hook) = hook {
            hook();
        }
    }

    /// A background checkpoint still under way when the store closes would
    /// replace the checkpoint file after the close named it in its
    /// snapshot, and the snapshot would never be used: the close waits.
    #[test]
    fn a_close_waits_for_a_background_checkpoint_before_its_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // The background checkpoint starts late, after the close's.
        ENCODING.lock().push((
            dir.join("background"),
            Arc::new(|| std::thread::sleep(Duration::from_millis(300))),
        ));
        let store = Store::open(&dir).unwrap();
        store.machines().create(Machine::new("m1")).unwrap();
        let background = store
            .inner
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.running.load(Ordering::Acquire));
        drop(store);
        let snap = (0..500).find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            crate::Snapshot::open(&dir).ok().flatten()
        });
        ENCODING
            .lock()
            .retain(|(d, _)| d != &dir.join("background"));
        assert!(
            background,
            "the new store's first writes start no checkpoint"
        );
        let snap = snap.expect("a snapshot after the close");
        assert_eq!(
            snap.count(&Filter::parse("Name Eq m1").unwrap()).unwrap(),
            1
        );
    }

    /// Also: keys the import grew as trees are packed by the checkpoint,
    /// except one a write changed while it encoded (Name, here), which
    /// keeps that write.
    #[test]
    fn writes_and_reads_go_on_while_a_checkpoint_is_encoded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let options = Options {
            durable: false,
            checkpoint_after: None,
            ..Options::default()
        };
        let store = Store::open_with(&dir, options.clone()).unwrap();
        store
            .machines()
            .import(
                // Past the size at which a key of unique values is packed.
                (0..1100)
                    .map(|i| {
                        let mut m = Machine::new(format!("node-{i:04}"));
                        m.params.insert("rack".into(), json!(i % 5));
                        m.params.insert("serial".into(), json!(format!("s-{i}")));
                        m
                    })
                    .collect(),
            )
            .unwrap();
        let at = store.revision();
        let index_bytes = || store.inner.state.read().machines.heap_bytes();
        let before = index_bytes();
        // The encoder waits at the hook until the test lets it go.
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let entered_tx = Mutex::new(entered_tx);
        ENCODING.lock().push((
            dir.clone(),
            Arc::new(move || {
                let _ = entered_tx.lock().send(());
                let _ = released.lock().recv_timeout(Duration::from_secs(60));
            }),
        ));
        let encoder = {
            let s = store.clone();
            std::thread::spawn(move || s.checkpoint())
        };
        entered.recv_timeout(Duration::from_secs(30)).unwrap();
        let (done_tx, done) = mpsc::channel();
        let writer = {
            let s = store.clone();
            std::thread::spawn(move || {
                let mut new = Machine::new("node-9999");
                new.params.insert("rack".into(), json!(9));
                let created = s.machines().create(new);
                let wrote = s.machines().set_param("node-0007", "rack", json!(9));
                let rack9 = Filter::parse("rack Eq 9").unwrap();
                let counted = s.machines().count(&rack9);
                let _ = done_tx.send((created.and(wrote).map(|m| m.revision), counted));
            })
        };
        // A write and a count while the encoder holds its copy: neither
        // waits for the encoding.
        let answer = done.recv_timeout(Duration::from_secs(20));
        release.send(()).unwrap();
        let (wrote, counted) = answer.expect("a write waited for the checkpoint's encoding");
        writer.join().unwrap();
        encoder.join().unwrap().unwrap();
        ENCODING.lock().retain(|(d, _)| d != &dir);
        assert_eq!(wrote.unwrap(), at + 2);
        assert_eq!(counted.unwrap(), 2);
        // The serial key, which no write touched, was packed.
        assert!(index_bytes() < before, "{} ≥ {before}", index_bytes());
        // The file holds the index as the copy had it: the write came after.
        let digest = checkpoint::store_digest(&store.inner.secret().unwrap());
        let file = dir.join(checkpoint::FILE);
        assert_eq!(checkpoint::revision_of(&file, &digest), Some(at));
        store.verify_indexes().unwrap();
        drop(store);
        let store = Store::open_with(&dir, options).unwrap();
        match store.recovery() {
            Recovery::Checkpoint { revision, .. } => assert!(*revision >= at),
            other => panic!("{other:?}"),
        }
        store.verify_indexes().unwrap();
        let rack9 = Filter::parse("rack Eq 9").unwrap();
        assert_eq!(store.machines().count(&rack9).unwrap(), 2);
    }
}
