//! A bound on storage calls that can block: commits, flushes and opens run on
//! the store's storage thread while the caller waits at most the stall limit
//! ([`Options::stall_timeout`](super::Options::stall_timeout)).
//!
//! Owns: the storage thread, the stall limit, and the store's "stalled" mark.
//! Must not: know what a call does (the caller hands in a closure) or touch
//! the in-memory state.
//!
//! Why: sled 0.34.7 can deadlock inside a write (see `vendor/sled/PATCHES.md`
//! for the cycle we found and removed). Should the engine ever stop making
//! progress again, a caller gets [`Error::Stalled`] naming the operation
//! instead of blocking forever. The stuck call keeps the storage thread (and
//! its clone of the engine handle, so dropping the store does not run the
//! engine's own flush and hang on the same lock). From then on every write,
//! flush and job record fails fast with the same error, because the engine
//! is wedged; reads keep answering from the last committed state (a stuck
//! commit is applied to memory only after the engine returns). The process
//! stays able to exit: the storage thread is not joined.
//!
//! # The handoff
//! A write hands its commit over and waits for it, so a park and a wake on
//! each side would cost two thread wake-ups per write (15 µs to over 100 µs
//! each on a 2-core VM, depending on the host: `docs/write-path.md`). Both
//! sides therefore poll before they park: the storage thread for its next
//! call for [`SPIN`], a writer for its commit's answer for [`COMMIT_SPIN`],
//! which outlasts a wake-up of the storage thread, so that a thread that
//! parked between two writes costs the next write one wake-up, not two
//! for every write after it. Polling yields the CPU between looks, so
//! other threads still run; it changes nothing about the stall limit,
//! which counts from the hand-over as before.
//!
//! # Work after the answer
//! A call may leave work for the storage thread to do once its caller has
//! the answer ([`Guard::submit_then`]: sled inserting a small write's
//! records after its commit point). The next call waits behind it, under
//! the same limit; should it stall, the error names the work that is stuck
//! ("settle of the last commit (before the commit)"), not only the call
//! that waited.
//!
//! # Engines that cannot stall
//! The in-memory engine never waits on I/O, so its store gets an inline
//! guard ([`Guard::inline`]): calls run on the caller's thread, with no
//! thread to start or hand over to. Opening an in-memory store then costs
//! no thread spawns, which matters to tests and fuzzers that open one per
//! case. Injected stalls do not apply to it.
//!
//! Tests make a call stall with `FLEETKV_FAULT_STALL=OP` (every call of
//! that operation) or `OP:N` (the N-th and later), read in debug builds only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// How long the storage thread polls for its next call before it parks
/// (longer than the gap between two writes' commits), and a caller for
/// the answer to a call that is not a commit (a flush, an open).
pub(crate) const SPIN: Duration = Duration::from_micros(100);

/// How long a writer polls for its commit's answer before it parks
/// ([`Pending::wait_commit`]) on a local engine: longer than waking a
/// parked storage thread takes. A commit's answer is microseconds away
/// once the thread runs, but a thread that had parked first needs a
/// wake-up, 100 µs or more on a 2-core VM whose other vCPU halted. A
/// writer that parked after [`SPIN`] then needed a wake-up of its own,
/// came back after the storage thread had parked again, and every later
/// write paid both: 160–320 µs a param write instead of 17–30 µs, for the
/// rest of the run (`docs/write-path.md`, stop 45). An engine whose commit
/// is a network round trip (etcd: about a millisecond) answers after any
/// such poll, so its writer polls [`SPIN`] (`Guard::remote`).
pub(crate) const COMMIT_SPIN: Duration = Duration::from_millis(1);

/// Polls `ready` (yielding between looks) until it gives `Some`, or `spin`.
fn poll<T>(spin: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = ready() {
            return Some(t);
        }
        if start.elapsed() >= spin {
            return None;
        }
        std::thread::yield_now();
    }
}

/// The storage thread and the stall limit.
pub(crate) struct Guard {
    /// The storage thread's queue; `None` for an inline guard.
    jobs: Option<Mutex<Sender<Job>>>,
    limit: Duration,
    /// How long a writer polls for its commit's answer.
    commit_spin: Duration,
    /// What the storage thread runs (or ran last): a call stuck behind
    /// another's work is reported with the name of the work that is stuck.
    running: Arc<Mutex<&'static str>>,
    stalled: Arc<OnceLock<(String, Duration)>>,
    /// A flush or commit that failed: what the engine holds or has on disk
    /// is unknown, so writes stop until a reopen decides (and clears it:
    /// [`Store::recover`](super::Store::recover)).
    failed: Arc<Mutex<Option<Failure>>>,
    #[cfg(debug_assertions)]
    fault: Option<(String, Mutex<u64>)>,
    /// How long the last caller that parked had polled first.
    #[cfg(test)]
    parked_after: Mutex<Option<Duration>>,
}

/// Why the store refuses writes: the first failure, and whether it was a
/// full disk (answered as [`Error::StorageFull`], which a caller may retry
/// once space returns).
#[derive(Debug, Clone)]
struct Failure {
    why: String,
    full: bool,
}

/// A call handed to the storage thread, not yet waited for.
pub(crate) struct Pending<'g, R> {
    guard: &'g Guard,
    op: &'static str,
    started: Instant,
    slot: Arc<Slot<R>>,
}

/// Where the storage thread leaves a call's result.
struct Slot<R> {
    result: Mutex<Option<R>>,
    /// Set with `result`, so a polling caller need not take the lock.
    filled: AtomicBool,
    done: Condvar,
}

impl Guard {
    /// Starts the storage thread, for a local engine (a writer polls its
    /// commit for [`COMMIT_SPIN`]).
    pub(crate) fn new(limit: Duration) -> Result<Guard> {
        Guard::spawn(
            "fleetkv-storage",
            limit,
            COMMIT_SPIN,
            Arc::new(OnceLock::new()),
            Arc::new(Mutex::new(None)),
        )
    }

    /// Starts the storage thread, for an engine across the network (a
    /// writer polls its commit for [`SPIN`]).
    #[cfg(any(feature = "etcd", test))]
    pub(crate) fn remote(limit: Duration) -> Result<Guard> {
        Ok(Guard {
            commit_spin: SPIN,
            ..Guard::new(limit)?
        })
    }

    /// A guard that runs calls on the caller's thread: for an engine that
    /// cannot block (see the module doc).
    pub(crate) fn inline(limit: Duration) -> Guard {
        Guard {
            jobs: None,
            limit,
            commit_spin: SPIN,
            running: Arc::new(Mutex::new("")),
            stalled: Arc::new(OnceLock::new()),
            failed: Arc::new(Mutex::new(None)),
            #[cfg(debug_assertions)]
            fault: None,
            #[cfg(test)]
            parked_after: Mutex::new(None),
        }
    }

    /// A second thread under the same limit and marks: a stall or failure
    /// on either refuses calls on both. Flushes run on their own thread so
    /// that commits queued behind a flush do not wait for it (group commit).
    /// An inline guard's sibling is inline too.
    pub(crate) fn sibling(&self, name: &str) -> Result<Guard> {
        if self.jobs.is_none() {
            return Ok(Guard {
                stalled: self.stalled.clone(),
                failed: self.failed.clone(),
                ..Guard::inline(self.limit)
            });
        }
        Guard::spawn(
            name,
            self.limit,
            self.commit_spin,
            self.stalled.clone(),
            self.failed.clone(),
        )
    }

    fn spawn(
        name: &str,
        limit: Duration,
        commit_spin: Duration,
        stalled: Arc<OnceLock<(String, Duration)>>,
        failed: Arc<Mutex<Option<Failure>>>,
    ) -> Result<Guard> {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let job = match poll(SPIN, || match rx.try_recv() {
                    Ok(job) => Some(Some(job)),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(None),
                }) {
                    Some(job) => job,
                    None => rx.recv().ok(),
                };
                match job {
                    Some(job) => job(),
                    None => return, // the guard is gone
                }
            })
            .map_err(|e| Error::invalid("storage thread", e.to_string()))?;
        Ok(Guard {
            jobs: Some(Mutex::new(tx)),
            limit,
            commit_spin,
            running: Arc::new(Mutex::new("")),
            stalled,
            failed,
            #[cfg(debug_assertions)]
            fault: std::env::var("FLEETKV_FAULT_STALL").ok().map(|spec| {
                let (op, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
                (op.to_string(), Mutex::new(n.parse().unwrap_or(1)))
            }),
            #[cfg(test)]
            parked_after: Mutex::new(None),
        })
    }

    /// `Err(Stalled)` once any call has stalled; `Err(Storage)` once a
    /// flush has failed.
    pub(crate) fn check(&self) -> Result<()> {
        self.check_stalled()?;
        match &*self.failed.lock() {
            Some(f) => {
                let msg = format!("the store refuses writes until it is reopened: {}", f.why);
                Err(if f.full {
                    Error::StorageFull(msg)
                } else {
                    Error::Storage(msg)
                })
            }
            None => Ok(()),
        }
    }

    /// Marks the engine failed because of `cause`: what it buffered may not
    /// be on disk. The first failure is the one reported.
    pub(crate) fn fail(&self, why: String, cause: &Error) {
        let mut failed = self.failed.lock();
        if failed.is_none() {
            *failed = Some(Failure {
                why,
                full: matches!(cause, Error::StorageFull(_)),
            });
        }
    }

    /// Why the store refuses writes after a failed flush or commit (not a
    /// stall), if it does.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().as_ref().map(|f| f.why.clone())
    }

    /// Whether a call has stalled (a stall is not undone by a reopen in this
    /// process: the stuck call still holds the engine).
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled.get().is_some()
    }

    /// Accepts writes again: only once the engine has been reopened.
    pub(crate) fn clear_failure(&self) {
        *self.failed.lock() = None;
    }

    /// Whether calls run on the caller's thread (see [`Guard::inline`]).
    pub(crate) fn is_inline(&self) -> bool {
        self.jobs.is_none()
    }

    /// Hands `f` to the storage thread; wait for it with [`Pending::wait`].
    pub(crate) fn submit<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<Pending<'_, R>> {
        self.check()?;
        self.enqueue(op, f)
    }

    fn check_stalled(&self) -> Result<()> {
        match self.stalled.get() {
            Some((op, after)) => Err(Error::Stalled {
                op: op.clone(),
                after: *after,
            }),
            None => Ok(()),
        }
    }

    /// [`submit`](Self::submit), then `after` (named `after_op`) on the
    /// storage thread once the result is handed back: work the caller need
    /// not wait for, done before the thread takes its next call.
    pub(crate) fn submit_then<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
        after_op: &'static str,
        after: impl FnOnce() + Send + 'static,
    ) -> Result<Pending<'_, R>> {
        self.check()?;
        self.enqueue_then(op, f, after_op, after)
    }

    /// Hands `f` to the storage thread whether or not the store has failed
    /// (a stall still refuses it).
    fn enqueue<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<Pending<'_, R>> {
        self.enqueue_then(op, f, op, || ())
    }

    fn enqueue_then<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
        after_op: &'static str,
        after: impl FnOnce() + Send + 'static,
    ) -> Result<Pending<'_, R>> {
        self.check_stalled()?;
        let slot = Arc::new(Slot {
            result: Mutex::new(None),
            filled: AtomicBool::new(false),
            done: Condvar::new(),
        });
        let filled = slot.clone();
        let stall = self.injected_stall(op);
        let running = self.running.clone();
        let job: Job = Box::new(move || {
            *running.lock() = op;
            if stall {
                loop {
                    std::thread::park();
                }
            }
            let r = f();
            *filled.result.lock() = Some(r);
            filled.filled.store(true, Ordering::Release);
            filled.done.notify_one();
            *running.lock() = after_op;
            after();
        });
        match &self.jobs {
            Some(jobs) => jobs.lock().send(job).map_err(|_| Error::Stalled {
                op: op.into(),
                after: Duration::ZERO,
            })?,
            None => job(),
        }
        Ok(Pending {
            guard: self,
            op,
            started: Instant::now(),
            slot,
        })
    }

    #[cfg(debug_assertions)]
    fn injected_stall(&self, op: &str) -> bool {
        match &self.fault {
            Some((at, n)) if at == op => {
                let mut n = n.lock();
                *n = n.saturating_sub(1);
                *n == 0
            }
            _ => false,
        }
    }

    #[cfg(not(debug_assertions))]
    fn injected_stall(&self, _op: &str) -> bool {
        false
    }

    /// [`run`](Self::run) for the reopen of a failed store, which engine
    /// calls must reach while its failure stands.
    pub(crate) fn run_recovering<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        self.enqueue(op, f)?.wait()
    }

    /// Runs `f` on the storage thread and waits for it, at most the limit.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        self.submit(op, f)?.wait()
    }
}

impl<R> Pending<'_, R> {
    /// The call's result, or [`Error::Stalled`] once it has run for the limit.
    pub(crate) fn wait(self) -> Result<R> {
        self.wait_polling(SPIN)
    }

    /// [`wait`](Self::wait) for a commit: polls for [`COMMIT_SPIN`] (on an
    /// engine across the network, `Guard::remote`: [`SPIN`]) before it
    /// parks.
    pub(crate) fn wait_commit(self) -> Result<R> {
        let spin = self.guard.commit_spin;
        self.wait_polling(spin)
    }

    fn wait_polling(self, spin: Duration) -> Result<R> {
        let deadline = self.started + self.guard.limit;
        let slot = &*self.slot;
        #[cfg(test)]
        let polling = Instant::now();
        if let Some(r) = poll(spin, || {
            slot.filled
                .load(Ordering::Acquire)
                .then(|| slot.result.lock().take())
                .flatten()
        }) {
            return Ok(r);
        }
        #[cfg(test)]
        {
            *self.guard.parked_after.lock() = Some(polling.elapsed());
        }
        let mut done = slot.result.lock();
        loop {
            if let Some(r) = done.take() {
                return Ok(r);
            }
            if slot.done.wait_until(&mut done, deadline).timed_out() && done.is_none() {
                let after = self.started.elapsed();
                // This call, or the work it waits behind.
                let stuck = match *self.guard.running.lock() {
                    running if running.is_empty() || running == self.op => self.op.to_string(),
                    running => format!("{running} (before the {})", self.op),
                };
                let _ = self.guard.stalled.set((stuck.clone(), after));
                return Err(Error::Stalled { op: stuck, after });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_never_returns_is_reported_and_the_guard_stays_failed() {
        let g = Guard::new(Duration::from_millis(100)).unwrap();
        assert_eq!(g.run("quick", || 7).unwrap(), 7);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let started = Instant::now();
        let e = g
            .run("stuck commit", move || {
                let _ = rx.recv(); // never sent while the guard waits
            })
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(
            matches!(&e, Error::Stalled { op, .. } if op == "stuck commit"),
            "{e}"
        );
        // Every later call fails fast with the first stall.
        let started = Instant::now();
        assert!(
            matches!(g.run("next", || 1), Err(Error::Stalled { op, .. }) if op == "stuck commit")
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(tx);
    }

    /// Work left after a call's answer is done before the next call, and a
    /// stall in it is reported under its own name.
    #[test]
    fn a_stall_after_an_answer_is_named_for_the_work_that_is_stuck() {
        let g = Guard::new(Duration::from_millis(100)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let done = g
            .submit_then(
                "commit",
                || 7,
                "settle",
                move || {
                    let _ = rx.recv(); // never sent while the guard waits
                },
            )
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(done, 7, "the answer does not wait for the work after it");
        let e = g.run("commit", || 8).unwrap_err();
        assert!(
            matches!(&e, Error::Stalled { op, .. } if op == "settle (before the commit)"),
            "{e}"
        );
        drop(tx);
    }

    /// A writer whose commit is answered after the storage thread woke up
    /// must not park first, or it needs a wake-up of its own (see
    /// [`COMMIT_SPIN`]); other calls, and commits across the network, park
    /// sooner.
    #[test]
    fn a_commit_is_polled_for_longer_than_a_wake_up_takes_before_the_writer_parks() {
        let g = Guard::new(Duration::from_secs(60)).unwrap();
        let remote = Guard::remote(Duration::from_secs(60)).unwrap();
        for (g, spin, commit) in [
            (&g, SPIN, false),
            (&g, COMMIT_SPIN, true),
            (&remote, SPIN, true),
        ] {
            *g.parked_after.lock() = None;
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let pending = g.submit("commit", move || rx.recv().is_ok()).unwrap();
            let answer = std::thread::scope(|s| {
                // The answer comes only once the caller has parked.
                s.spawn(|| {
                    while g.parked_after.lock().is_none() {
                        std::thread::yield_now();
                    }
                    let _ = tx.send(());
                });
                match commit {
                    true => pending.wait_commit(),
                    false => pending.wait(),
                }
            });
            assert!(answer.unwrap());
            let polled = g.parked_after.lock().unwrap();
            assert!(polled >= spin, "polled {polled:?}, at least {spin:?}");
        }
        // A writer across the network parks after the short poll: its
        // answer takes a round trip anyway.
        assert_eq!(remote.commit_spin, SPIN);
    }

    #[test]
    fn an_inline_guard_runs_calls_on_the_caller_and_shares_its_marks() {
        let g = Guard::inline(Duration::from_millis(100));
        let me = std::thread::current().id();
        let on_caller = move || std::thread::current().id() == me;
        assert!(g.run("quick", on_caller).unwrap());
        let flusher = g.sibling("flush").unwrap();
        assert!(flusher.run("flush", on_caller).unwrap());
        flusher.fail("disk gone".into(), &Error::Storage("eio".into()));
        assert!(matches!(g.run("commit", || ()), Err(Error::Storage(_))));
    }
}
