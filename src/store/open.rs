//! The store handle and how one is opened: [`Options`], [`Store`] on sled
//! (a directory or a temporary one) or in memory, the first write of a new
//! store, and the accessors the rest of the module builds on.
//!
//! Owns: the engine choice, the storage thread's guard of every blocking
//! open and flush, the `global` profile and signing secret a new store gets,
//! and the final flush on drop. Must not: read records into memory (see
//! [`super::rebuild`]) or write objects other than through the pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};
use uuid::Uuid;

use super::backend::{Backend, Batch};
use super::changelog;
use super::layout::{named_key, PROFILE_PREFIX, SECRET_KEY};
use super::machines::Machines;
use super::memory_backend::MemoryBackend;
use super::params::Params;
use super::profiles::Profiles;
use super::rebuild::load_state;
use super::sled_backend::SledBackend;
use super::stall;
use super::state::State;
use super::write::{record, Apply};
use crate::error::{Error, Result};
use crate::model::{Profile, GLOBAL_PROFILE};
use crate::watch::LOG_RETAIN;

/// How long a storage call may make no progress before it is given up.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Flush every acknowledged write to disk before the call returns.
    /// Without it the engine flushes on its own (sled: every 500 ms) and on
    /// [`Store::flush`] / drop.
    pub durable: bool,
    /// How many change events the log keeps for resuming watches.
    pub log_retain: usize,
    /// How long an open, commit or flush may make no progress before the
    /// call returns [`Error::Stalled`] (and the store refuses further
    /// writes). A safety net: the engine is not expected to stall.
    pub stall_timeout: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durable: false,
            log_retain: LOG_RETAIN,
            stall_timeout: STALL_TIMEOUT,
        }
    }
}

/// A fleetkv store. Cheap to clone (an `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) backend: Arc<dyn Backend>,
    /// Runs every engine call that can block (commit, flush, open).
    pub(super) guard: stall::Guard,
    pub(super) options: Options,
    /// Serializes writers; holds what only writers use (the log's head).
    pub(super) writer: Mutex<changelog::Trim>,
    pub(super) state: RwLock<State>,
    /// Signalled after every write, for watches and waits.
    pub(super) written: Mutex<()>,
    pub(super) wake: Condvar,
}

impl Drop for Inner {
    /// sled flushes when its last handle drops; flushing here first, through
    /// the guard, bounds that too: should it stall, the storage thread keeps
    /// a handle and sled's own flush never runs.
    fn drop(&mut self) {
        let backend = self.backend.clone();
        let _ = self.guard.run("flush", move || backend.flush());
    }
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

    /// A store in a temporary directory, removed when the last clone drops.
    pub fn temporary() -> Result<Store> {
        Store::temporary_with(Options::default())
    }

    /// A temporary store with options.
    pub fn temporary_with(options: Options) -> Result<Store> {
        Store::on_sled(None, options)
    }

    /// A store held in memory only (nothing is written to disk; everything
    /// is gone when the last clone drops). For tests and scratch work.
    pub fn in_memory() -> Result<Store> {
        Store::in_memory_with(Options::default())
    }

    /// An in-memory store with options (`durable` has nothing to flush).
    pub fn in_memory_with(options: Options) -> Result<Store> {
        let guard = stall::Guard::new(options.stall_timeout)?;
        Store::start(Arc::new(MemoryBackend::default()), guard, options)
    }

    fn on_sled(path: Option<PathBuf>, options: Options) -> Result<Store> {
        let guard = stall::Guard::new(options.stall_timeout)?;
        let backend = guard.run("open", move || SledBackend::open(path))??;
        Store::start(Arc::new(backend), guard, options)
    }

    /// Builds the in-memory state from an opened engine; a new store gets
    /// its `global` profile and signing secret in its first write.
    fn start(backend: Arc<dyn Backend>, guard: stall::Guard, options: Options) -> Result<Store> {
        let state = load_state(&*backend)?;
        let store = Store {
            inner: Arc::new(Inner {
                backend,
                guard,
                options,
                writer: Mutex::new(changelog::Trim::default()),
                state: RwLock::new(state),
                written: Mutex::new(()),
                wake: Condvar::new(),
            }),
        };
        let has_secret = store.inner.backend.get(SECRET_KEY)?.is_some();
        if has_secret && store.state().profiles.contains_key(GLOBAL_PROFILE) {
            return Ok(store);
        }
        store.write(|st, rev, log| {
            let mut batch = Batch::default();
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
        match self.inner.backend.get(SECRET_KEY)? {
            Some(s) => Ok(s),
            None => Err(Error::Corrupt {
                key: "s:secret".into(),
                reason: "the store has no signing secret".into(),
            }),
        }
    }

    pub(crate) fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read()
    }

    /// Machines.
    pub fn machines(&self) -> Machines<'_> {
        Machines { store: self }
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

    /// Writes everything acknowledged so far to disk.
    pub fn flush(&self) -> Result<()> {
        let backend = self.inner.backend.clone();
        self.inner.guard.run("flush", move || backend.flush())?
    }

    /// The engine, for reads (writes go through [`write`](Self::write)).
    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }
}
