//! The write pipeline: one write at a time, from a closure that plans it
//! against the current state to one committed batch and its index change.
//!
//! Owns: the writer lock, the revision a write gets, staging an object's
//! record and change event ([`record`], [`erase`]), the commit-then-apply
//! order, durable flushes, and waking watchers. Must not: decide what an
//! object kind's write changes (the handles' closures do) or encode the
//! change log's records (see [`super::changelog`]).
//!
//! The engine commits first and memory follows: a failed or stalled commit
//! leaves the indexes equal to what is stored. A write with a large index
//! change (an import) builds it while the engine commits, on a copy that
//! replaces the index only once the commit succeeded ([`Prepare`]); on an
//! engine that settles a batch after the answer (sled,
//! [`Backend::settles_later`](super::backend::Backend::settles_later)) the
//! commit returns at once and the change is built in place after it,
//! while the engine applies the batch.

use super::backend::Batch;
use super::changelog;
use super::checkpoint;
use super::layout::{encode, kind_of_key, machine_id_of};
use super::open::Store;
use super::rebuild::load_state;
use super::snapshot::Changed;
use super::state::State;
use crate::error::{Error, Result};
use crate::timing;
use crate::watch::{Action, Change, Object, Previous};

/// How many times a write on a shared engine is planned before a lost
/// revision race is returned ([`Error::RevisionMismatch`]).
pub(super) const PLAN_ATTEMPTS: u32 = 16;

/// The in-memory half of a write, applied after its batch commits.
pub(super) type Apply = Box<dyn FnOnce(&mut State)>;

/// The in-memory half of a write whose index change is large (an import),
/// worked out from the state as it was while the engine commits the batch
/// on the storage thread: the caller's core builds the change instead of
/// waiting. The plan decides whether that is worth a copy of the index
/// (else the [`Swap`] it returns may change the state in place). A copy is
/// applied only once the commit succeeded, so a failed or stalled commit
/// leaves memory as it was.
pub(super) type Prepare = Box<dyn FnOnce(&State) -> Swap>;

/// A prepared change's apply: returns what it replaced or used up (the
/// machine index a copy replaced, an import's machines), freed once the
/// state's lock is let go (at a million machines, tens of milliseconds
/// readers would otherwise wait).
pub(super) type Swap = Box<dyn FnOnce(&mut State) -> Option<Retired>>;

/// What a [`Swap`] hands back to be freed outside the state's lock.
pub(super) type Retired = Box<dyn std::any::Any>;

/// What a write's plan returns for memory: see [`Apply`] and [`Prepare`].
pub(super) enum Memory {
    Apply(Apply),
    Prepare(Prepare),
}

/// A write's in-memory half once its commit is under way: [`Memory`]
/// with the prepared change worked out.
enum Ready {
    Apply(Apply),
    Swap(Swap),
}

impl From<Apply> for Memory {
    fn from(a: Apply) -> Memory {
        Memory::Apply(a)
    }
}

impl From<Prepare> for Memory {
    fn from(p: Prepare) -> Memory {
        Memory::Prepare(p)
    }
}

/// A value a write's plan consumes, for a plan that may run again
/// ([`Store::write`] on a shared engine): the first plan takes the value
/// itself, a later one a copy of the spare kept for it — kept only on a
/// shared engine, so an embedded store's write copies nothing.
pub(crate) struct Replan<T> {
    first: Option<T>,
    spare: Option<T>,
}

impl<T: Clone> Replan<T> {
    /// The value for this plan.
    pub(crate) fn take(&mut self) -> Result<T> {
        if let Some(v) = self.first.take() {
            return Ok(v);
        }
        self.spare.clone().ok_or_else(|| {
            Error::Storage("internal: a write was planned twice on an embedded store".into())
        })
    }
}

impl Store {
    /// `v`, for a write's plan that may run more than once.
    pub(crate) fn replan<T: Clone>(&self, v: T) -> Replan<T> {
        Replan {
            spare: self.inner.shared.then(|| v.clone()),
            first: Some(v),
        }
    }
}

/// Stages an object's new record and its change event.
pub(super) fn record<T: serde::Serialize>(
    batch: &mut Batch,
    log: &mut Vec<Change>,
    key: &[u8],
    name: &str,
    new: &T,
    old: Option<&T>,
) {
    let bytes = encode(new);
    timing::mark("encode");
    let previous = old.map(|old| Previous::Doc(encode(old)));
    timing::mark("encode previous");
    stage(batch, log, key, name, bytes, previous);
}

/// Stages an object's new record (`bytes`) and its change event, given
/// what the event keeps of the previous object (`None`: a create): the
/// previous record's bytes as read, not a second encoding of the old
/// object, or the patch that undoes the write. A machine's create event
/// names its record instead of holding a copy of it (`watch::created`).
pub(super) fn stage(
    batch: &mut Batch,
    log: &mut Vec<Change>,
    key: &[u8],
    name: &str,
    bytes: Vec<u8>,
    previous: Option<Previous>,
) {
    let (action, object) = match (&previous, machine_id_of(key)) {
        (Some(_), _) => (Action::Update, Object::Bytes(bytes.clone())),
        (None, Some(id)) => (Action::Create, Object::Record(id)),
        (None, None) => (Action::Create, Object::Bytes(bytes.clone())),
    };
    log.push(Change {
        kind: kind_of_key(key),
        key: name.to_string(),
        action,
        object,
        previous,
    });
    batch.put(key, bytes);
}

/// Stages an object's removal and its change event.
pub(super) fn erase<T: serde::Serialize>(
    batch: &mut Batch,
    log: &mut Vec<Change>,
    key: &[u8],
    name: &str,
    old: &T,
) {
    batch.remove(key);
    log.push(Change {
        kind: kind_of_key(key),
        key: name.to_string(),
        action: Action::Delete,
        object: Object::Bytes(encode(old)),
        previous: None,
    });
}

impl Store {
    /// Writes one record that no index covers (a job) as a write of its own:
    /// a revision and a create event keyed `name`, under the writer lock.
    /// `make` builds the record for the write's revision. With `at`, the
    /// write is refused with [`Error::RevisionMismatch`] unless the store is
    /// still at revision `at` (what `make`'s input was read at).
    pub(crate) fn write_record<T: serde::Serialize>(
        &self,
        key: &[u8],
        name: &str,
        at: Option<u64>,
        mut make: impl FnMut(u64) -> Result<T>,
    ) -> Result<T> {
        self.write_as(crate::telemetry::WriteKind::Job, |st, rev, log| {
            if let Some(at) = at.filter(|at| *at != st.rev) {
                return Err(Error::RevisionMismatch {
                    expected: at,
                    actual: st.rev,
                });
            }
            let out = make(rev)?;
            let mut batch = Batch::default();
            record(&mut batch, log, key, name, &out, None);
            Ok((batch, Box::new(|_: &mut State| {}) as Apply, out))
        })
    }

    /// Runs one write: `f` builds the batch and index change from the current
    /// state; both are applied together under the state lock.
    ///
    /// On a shared engine (etcd) another server may commit first: the
    /// commit fails with [`Error::RevisionMismatch`], the store catches up
    /// ([`Store::catch_up`]) and `f` plans the write again against the new
    /// state, up to [`PLAN_ATTEMPTS`] times (a `test` or CAS that fails
    /// then is an ordinary conflict). A plan that fails is also planned
    /// again once the store caught up, when the engine was ahead: the
    /// caller may have read the newer state through another server. On an
    /// engine only this store writes, `f` runs once.
    pub(super) fn write<T, M: Into<Memory>>(
        &self,
        mut f: impl FnMut(&State, u64, &mut Vec<Change>) -> Result<(Batch, M, T)>,
    ) -> Result<T> {
        self.inner.guard.check()?;
        timing::start();
        let mut w = self.inner.writer.lock();
        self.inner.forget_snapshot()?;
        let shared = self.inner.shared;
        let mut attempt = 0;
        let (rev, out, replay_cost, retired) = loop {
            attempt += 1;
            let retry = shared && attempt < PLAN_ATTEMPTS;
            let mut changes = Vec::new();
            let planned = {
                let st = self.inner.state.read();
                timing::mark("locks");
                f(&st, st.rev + 1, &mut changes).map(|(mut batch, memory, out)| {
                    batch.expect = st.rev;
                    batch.rev = st.rev + 1;
                    (batch, memory.into(), out, st.log)
                })
            };
            let (mut batch, memory, out, log): (_, Memory, _, _) = match planned {
                Ok(p) => p,
                Err(e) if retry && !matches!(e, Error::Unavailable(_)) => {
                    if self.catch_up_locked(&mut w)? {
                        continue;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            timing::mark("plan: other");
            let rev = batch.rev;
            let staged = changelog::stage(
                &*self.backend(),
                &mut w,
                &mut batch,
                &changes,
                log,
                changelog::Retention {
                    retain: self.inner.options.log_retain,
                    pin: self.inner.log_pin(),
                    shared,
                },
            )?;
            // What a checkpoint no longer covers: the machines by their
            // records' keys (no lookup of each by Uuid after the apply).
            let written = self
                .inner
                .checkpoints
                .as_ref()
                .map(|_| Changed::written_machines(&batch));
            let backend = self.backend();
            // Until a flush covers it, for `Store::recover` to commit again.
            let kept = (self.inner.options.durable && !shared).then(|| batch.copy());
            // Off the storage thread, and before readers wait for the lock.
            backend.prepare(&mut batch);
            timing::mark("engine prepare");
            // The engine commits first, memory follows: a failed or stalled
            // commit leaves the indexes equal to what is stored.
            let mut st = self.inner.state.write();
            timing::mark("state write lock");
            let settling = backend.clone();
            let committing = self.inner.guard.submit_then(
                "commit",
                move || {
                    let t0 = timing::now();
                    let r = backend.commit(batch);
                    ((t0, timing::now()), r)
                },
                // An error leaves the batch unsettled; the next commit,
                // which settles first, reports it.
                "settle of the last commit",
                move || {
                    let _ = settling.settle();
                },
            )?;
            let ready = match memory {
                Memory::Apply(apply) => Ready::Apply(apply),
                Memory::Prepare(prepare) => {
                    let swap = prepare(&st);
                    timing::mark("index prepare (beside the commit)");
                    Ready::Swap(swap)
                }
            };
            let (ran, r) = committing.wait_commit()?;
            if let (Some(t0), Some(t1)) = ran {
                timing::mark_at("handoff to storage thread", t0);
                timing::mark_at("engine commit", t1);
                timing::mark("handoff back");
            }
            match r {
                Ok(()) => {}
                Err(Error::RevisionMismatch { .. }) if retry => {
                    drop(st);
                    self.catch_up_locked(&mut w)?;
                    continue;
                }
                // Nothing of a shared engine's state is held here: a write
                // whose outcome is unknown shows up, if it was applied, as
                // a revision the next catch-up reads like another server's.
                Err(e) if shared => return Err(e),
                Err(e) => {
                    if !matches!(e, Error::RevisionMismatch { .. }) {
                        // An engine may fail a batch after applying part of it
                        // (sled: an I/O error between inserts): what is stored
                        // is unknown, so no later write may build on memory.
                        self.inner
                            .guard
                            .fail(format!("a commit failed, its outcome unknown: {e}"), &e);
                        // Readers must not see documents the indexes disagree
                        // with: the indexes are rebuilt from what the engine now
                        // holds (once; the store takes no writes until a reopen,
                        // which decides whether the batch stands).
                        if let Ok(fresh) = load_state(&*self.backend()) {
                            *st = fresh;
                        }
                    }
                    return Err(e);
                }
            }
            if let Some(batch) = kept {
                self.inner.commits.keep(batch);
            }
            self.inner.commits.committed(rev);
            w.committed(&staged);
            timing::mark("index apply: log state");
            let retired = match ready {
                Ready::Apply(apply) => {
                    apply(&mut st);
                    None
                }
                Ready::Swap(swap) => swap(&mut st),
            };
            timing::mark("index apply: entries");
            if let Some(written) = &written {
                Changed::note(&mut st, written, &changes, rev);
            }
            timing::mark("index apply: changed since checkpoint");
            let replay_cost = checkpoint::replay_cost(&st, &changes);
            st.rev = rev;
            st.log = staged.log;
            timing::mark("index apply");
            break (rev, out, replay_cost, retired);
        };
        // The next writer may commit while this one waits for the disk: the
        // flush that covers this write may cover theirs too.
        drop(w);
        drop(retired);
        timing::mark("free what the apply replaced");
        let durable = if self.inner.options.durable {
            let r = self.sync_to(rev);
            timing::mark("flush");
            r
        } else {
            Ok(())
        };
        // Wake watchers and waiters (they re-check the revision under this
        // lock), also when the flush failed: the write is in memory.
        let _g = self.inner.written.lock();
        self.inner.wake.notify_all();
        drop(_g);
        timing::mark("wake");
        timing::finish();
        self.note_written(replay_cost);
        durable?;
        Ok(out)
    }

    /// Blocks until the store's revision passes `seen`, or `deadline`.
    pub(crate) fn wait_for_write(&self, seen: u64, deadline: std::time::Instant) -> Result<()> {
        let mut g = self.inner.written.lock();
        while self.revision() <= seen {
            if self.inner.wake.wait_until(&mut g, deadline).timed_out() && self.revision() <= seen {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::{Condvar, Mutex};

    use super::super::backend::{Backend, Batch, Scan};
    use super::super::memory_backend::MemoryBackend;
    use super::super::stall::Guard;
    use crate::error::{Error, Result};
    use crate::filter::Filter;
    use crate::model::Machine;
    use crate::store::{Options, Store};

    /// The in-memory engine, whose commits wait at a gate once it closes.
    #[derive(Default)]
    struct Gated {
        inner: MemoryBackend,
        closed: Mutex<bool>,
        opened: Condvar,
    }

    impl Gated {
        fn set(&self, closed: bool) {
            *self.closed.lock() = closed;
            self.opened.notify_all();
        }
    }

    impl Backend for Gated {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn scan(&self, prefix: &[u8], from: &[u8]) -> Scan<'_> {
            self.inner.scan(prefix, from)
        }
        fn revision(&self) -> Result<u64> {
            self.inner.revision()
        }
        fn commit(&self, batch: Batch) -> Result<()> {
            let mut closed = self.closed.lock();
            while *closed {
                self.opened.wait(&mut closed);
            }
            drop(closed);
            self.inner.commit(batch)
        }
        fn settle(&self) -> Result<()> {
            self.inner.settle()
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
    }

    fn machines(from: usize, to: usize) -> Vec<Machine> {
        (from..to).map(|i| Machine::new(format!("m{i}"))).collect()
    }

    /// A store whose commits run on a storage thread (as sled's do), over
    /// the gated in-memory engine.
    fn threaded(options: Options) -> (Arc<Gated>, Store) {
        let gated = Arc::new(Gated::default());
        let guard = Guard::new(options.stall_timeout).unwrap();
        let engine: Arc<dyn Backend> = gated.clone();
        let s = Store::start(engine, guard, options, None, None).unwrap();
        (gated, s)
    }

    /// An import whose entries are worked out beside its commit, or after
    /// it while sled settles the batch (new machines and replaced ones,
    /// under profiles), leaves the indexes a rebuild would build.
    #[test]
    fn an_import_beside_or_after_its_commit_indexes_as_a_rebuild_does() {
        let (_gated, beside) = threaded(Options::default());
        assert!(!beside.backend().settles_later());
        let after = Store::temporary().unwrap();
        assert!(after.backend().settles_later());
        for s in [beside, after] {
            imports_index_as_a_rebuild_does(s);
        }
    }

    fn imports_index_as_a_rebuild_does(s: Store) {
        let mut p = crate::model::Profile::new("p");
        p.params.insert("zone".into(), serde_json::json!("a"));
        s.profiles().create(p).unwrap();
        let fleet = |from: usize, to: usize, rack: usize| -> Vec<Machine> {
            (from..to)
                .map(|i| {
                    let mut m = Machine::new(format!("m{i}"));
                    if i % 2 == 0 {
                        m.profiles = vec!["p".into()];
                    }
                    m.params
                        .insert("rack".into(), serde_json::json!(i % 7 + rack));
                    m
                })
                .collect()
        };
        s.machines().import(fleet(0, 1000, 0)).unwrap();
        s.verify_indexes().unwrap();
        // 300 replaced (by Uuid) and 300 new: one write, beside its commit.
        let mut again = fleet(0, 300, 100);
        for m in &mut again {
            m.uuid = s.machines().get(&format!("Name:{}", m.name)).unwrap().uuid;
        }
        again.extend(fleet(1000, 1300, 0));
        assert_eq!(s.machines().import(again).unwrap(), (300, 300));
        s.verify_indexes().unwrap();
        let count = |f: &str| s.machines().count(&Filter::parse(f).unwrap()).unwrap();
        assert_eq!(count("Name Re ^m"), 1300);
        assert_eq!(count("rack Gte 100"), 300);
        assert_eq!(count("zone Eq a"), 650);
    }

    /// An import's index change is built while its batch commits (on a
    /// copy, for an import large enough to repay it; else in place once
    /// committed); a commit that stalls must leave what readers see as it
    /// was, either way.
    #[test]
    fn an_import_whose_commit_stalls_leaves_the_indexes_as_they_were() {
        for stalled_len in [300, 1] {
            let (gated, s) = threaded(Options {
                stall_timeout: Duration::from_millis(300),
                ..Options::default()
            });
            s.machines().import(machines(0, 1000)).unwrap();
            let all = Filter::parse("Name Re ^m").unwrap();
            assert_eq!(s.machines().count(&all).unwrap(), 1000);

            gated.set(true);
            let stalled = s.machines().import(machines(1000, 1000 + stalled_len));
            assert!(matches!(stalled, Err(Error::Stalled { .. })), "{stalled:?}");
            assert_eq!(s.machines().count(&all).unwrap(), 1000, "{stalled_len}");
            assert!(!s.machines().exists("m1000").unwrap());
            s.verify_indexes().unwrap();
            // The stuck commit ends (and lands in the engine, where a reopen
            // would find it); the stalled store keeps refusing writes.
            gated.set(false);
            assert!(s.machines().import(machines(2000, 2001)).is_err());
        }
    }
}
