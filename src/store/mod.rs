//! The store: machines, profiles and param definitions kept durably in a
//! storage engine (sled by default), written atomically, and indexed in
//! memory.
//!
//! Owns: revisions, the write pipeline (resolve → modify a copy → validate
//! against every other object → one atomic batch and the matching index
//! change, under one lock), object addressing, effective params, listing and
//! counting. Must not: parse filters (see [`crate::filter`]) or evaluate them
//! on bitmaps (see `crate::index`), or reach an engine other than through
//! [`backend::Backend`] (key layout: [`layout`]).
//!
//! # Dense ids
//! Machines get a dense `u32` id on create, persisted as their record key, and
//! never reused: ids are the default listing order (creation order), and a
//! reused id would let a stale id from a caller name a different machine.
//! 4 billion creates are the limit. Profiles are few and all in memory; their
//! ids are assigned at open in name order and are not persisted.
//!
//! # Concurrency
//! Writers are serialized by one mutex; each holds the state's write lock only
//! for the engine's commit and the index change, so readers see either all of a
//! write or none of it, and a writer reads its own write when it returns.

mod backend;
mod layout;
mod memory_backend;
mod patch;
mod sled_backend;
mod stall;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};
use roaring::RoaringBitmap;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filter::{Bound, Field, Filter, Key, ParamTypes, Subject};
use crate::index::{Defaults, Entries, Index, Posting, ValueKey};
use crate::model::{Kind, Machine, Object, ParamDef, Profile, GLOBAL_PROFILE};
use crate::watch::{encode_event, Action, Change, LOG_RETAIN};

pub(crate) use backend::Backend;
use backend::Batch;
use layout::{
    decode, encode, from_json, kind_of_key, log_key, machine_id_of, machine_key, named_key,
    show_key, to_json, LOG_LEN_KEY, LOG_PREFIX, MACHINE_PREFIX, NEXT_ID_KEY, PARAM_PREFIX,
    PROFILE_PREFIX, SECRET_KEY,
};
pub(crate) use layout::{job_key, log_rev_of};
use memory_backend::MemoryBackend;
use sled_backend::SledBackend;

/// The in-memory half of a write, applied after its batch commits.
type Apply = Box<dyn FnOnce(&mut State)>;

/// How long a storage call may make no progress before it is given up.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Stages an object's new record and its change event.
fn record<T: serde::Serialize>(
    batch: &mut Batch,
    log: &mut Vec<Change>,
    key: &[u8],
    name: &str,
    new: &T,
    old: Option<&T>,
) {
    let bytes = encode(new);
    batch.put(key, bytes.clone());
    log.push(Change {
        kind: kind_of_key(key),
        key: name.to_string(),
        action: if old.is_some() {
            Action::Update
        } else {
            Action::Create
        },
        object: bytes,
        previous: old.map(encode),
    });
}

/// Stages an object's removal and its change event.
fn erase<T: serde::Serialize>(
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
        object: encode(old),
        previous: None,
    });
}

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
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    /// Runs every engine call that can block (commit, flush, open).
    guard: stall::Guard,
    options: Options,
    writer: Mutex<()>,
    state: RwLock<State>,
    /// Signalled after every write, for watches and waits.
    written: Mutex<()>,
    wake: Condvar,
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

/// Everything kept in memory, replaced only under the state's write lock.
pub(crate) struct State {
    rev: u64,
    next_id: u32,
    machines: Index,
    profiles: BTreeMap<String, Profile>,
    profile_ids: HashMap<String, u32>,
    profile_names: HashMap<u32, String>,
    next_profile_id: u32,
    profile_index: Index,
    params: BTreeMap<String, ParamDef>,
    validators: HashMap<String, Arc<jsonschema::Validator>>,
    /// Events in the persisted change log.
    log_len: usize,
}

impl Defaults for State {
    fn default_of(&self, name: &str) -> Option<&Value> {
        self.params.get(name).and_then(ParamDef::default_value)
    }
    fn with_defaults(&self) -> Vec<&str> {
        self.params
            .values()
            .filter(|d| d.default_value().is_some())
            .map(|d| d.name.as_str())
            .collect()
    }
}

impl ParamTypes for State {
    fn schema_type(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(ParamDef::schema_type)
    }
}

/// The effective params of a machine without definition defaults: own, then
/// each profile in order, then `global` (DESIGN.md §1).
fn effective_explicit(m: &Machine, profiles: &BTreeMap<String, Profile>) -> Map<String, Value> {
    let mut out = m.params.clone();
    for name in m
        .profiles
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(GLOBAL_PROFILE))
    {
        if let Some(p) = profiles.get(name) {
            for (k, v) in &p.params {
                if !out.contains_key(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    out
}

fn with_defaults(
    mut params: Map<String, Value>,
    defs: &BTreeMap<String, ParamDef>,
) -> Map<String, Value> {
    for d in defs.values() {
        if let Some(v) = d.default_value() {
            if !params.contains_key(&d.name) {
                params.insert(d.name.clone(), v.clone());
            }
        }
    }
    params
}

fn common_entries<'a>(
    e: &mut Entries,
    name: &str,
    description: &str,
    params: impl IntoIterator<Item = (&'a String, &'a Value)>,
    meta: &BTreeMap<String, String>,
) {
    e.push((Key::Field(Field::Name), ValueKey::str(name)));
    e.push((Key::Field(Field::Description), ValueKey::str(description)));
    for (k, v) in params {
        e.push((Key::Param(k.clone()), ValueKey::of(v)));
    }
    for (k, v) in meta {
        e.push((Key::Meta(k.clone()), ValueKey::str(v)));
    }
}

fn machine_entries(m: &Machine, profiles: &BTreeMap<String, Profile>) -> Entries {
    let mut e = Entries::with_capacity(16 + m.params.len());
    // Effective params by reference (own, profiles in order, global): the
    // first holder of each name wins. Profile lists are short.
    let chain: Vec<&Map<String, Value>> = m
        .profiles
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(GLOBAL_PROFILE))
        .filter_map(|p| profiles.get(p).map(|p| &p.params))
        .collect();
    let chain = &chain;
    let inherited = chain.iter().enumerate().flat_map(|(i, params)| {
        params.iter().filter(move |(k, _)| {
            !m.params.contains_key(*k) && !chain[..i].iter().any(|earlier| earlier.contains_key(*k))
        })
    });
    common_entries(
        &mut e,
        &m.name,
        &m.description,
        m.params.iter().chain(inherited),
        &m.meta,
    );
    e.push((Key::Field(Field::Uuid), ValueKey::str(&m.uuid.to_string())));
    if !m.address.is_empty() {
        e.push((Key::Field(Field::Address), ValueKey::str(&m.address)));
    }
    e.push((Key::Field(Field::Workflow), ValueKey::str(&m.workflow)));
    e.push((Key::Field(Field::Runnable), ValueKey::Bool(m.runnable)));
    for p in &m.profiles {
        e.push((Key::Profiles, ValueKey::str(p)));
    }
    e
}

fn profile_entries(p: &Profile) -> Entries {
    let mut e = Entries::with_capacity(4 + p.params.len());
    common_entries(&mut e, &p.name, &p.description, &p.params, &p.meta);
    e
}

fn own_keys(params: &Map<String, Value>) -> Vec<&str> {
    params.keys().map(String::as_str).collect()
}

impl Index {
    /// Applies the difference between an object's old and new entries.
    fn replace_entries(
        &mut self,
        id: u32,
        old: Option<(&Entries, Vec<&str>)>,
        new: Option<(&Entries, Vec<&str>)>,
    ) {
        let empty = Entries::new();
        let (oe, oo) = old.unwrap_or((&empty, Vec::new()));
        let (ne, no) = new
            .as_ref()
            .map(|(e, o)| (*e, o.clone()))
            .unwrap_or((&empty, Vec::new()));
        let gone: Entries = oe.iter().filter(|x| !ne.contains(x)).cloned().collect();
        let came: Entries = ne.iter().filter(|x| !oe.contains(x)).cloned().collect();
        let gone_own: Vec<&str> = oo.iter().filter(|x| !no.contains(x)).copied().collect();
        let came_own: Vec<&str> = no.iter().filter(|x| !oo.contains(x)).copied().collect();
        self.remove(id, &gone, &gone_own);
        if new.is_some() {
            self.insert(id, &came, &came_own);
        }
    }
}

/// Listing options (drpcli's `sort`, `limit`, `offset`, `reverse`, `--slim`,
/// `--params`, `--aggregate`).
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Sort by this key (a field, `Params.NAME`, `Meta.KEY` or a bare param name).
    pub sort: Option<String>,
    /// Reverse the order.
    pub reverse: bool,
    /// Skip this many.
    pub offset: usize,
    /// Return at most this many.
    pub limit: Option<usize>,
    /// Leave these fields out (`Params`, `Meta`).
    pub slim: Vec<String>,
    /// Return only these params.
    pub params: Option<Vec<String>>,
    /// Return effective params (own → profiles → global → default).
    pub aggregate: bool,
}

/// A filter bound against the store's definitions, ready to run many times.
#[derive(Debug, Clone)]
pub struct Query {
    kind: Kind,
    bound: Bound,
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

    fn on_sled(path: Option<std::path::PathBuf>, options: Options) -> Result<Store> {
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
                writer: Mutex::new(()),
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

    /// Writes one record that no index covers (a job) as a write of its own:
    /// a revision and a `kind` create event keyed `name`, under the writer
    /// lock. `make` builds the record for the write's revision. With `at`,
    /// the write is refused with [`Error::RevisionMismatch`] unless the store
    /// is still at revision `at` (what `make`'s input was read at).
    pub(crate) fn write_record<T: serde::Serialize>(
        &self,
        kind: Kind,
        key: Vec<u8>,
        name: &str,
        at: Option<u64>,
        make: impl FnOnce(u64) -> T,
    ) -> Result<T> {
        self.write(|st, rev, log| {
            if let Some(at) = at.filter(|at| *at != st.rev) {
                return Err(Error::RevisionMismatch {
                    expected: at,
                    actual: st.rev,
                });
            }
            let out = make(rev);
            let bytes = encode(&out);
            let mut batch = Batch::default();
            batch.put(key, bytes.clone());
            log.push(Change {
                kind,
                key: name.to_string(),
                action: Action::Create,
                object: bytes,
                previous: None,
            });
            Ok((batch, Box::new(|_: &mut State| {}) as Apply, out))
        })
    }

    /// Rebuilds every index from the stored documents and compares it with
    /// the live one. An operator's and the test suite's check.
    pub fn verify_indexes(&self) -> Result<()> {
        let _w = self.inner.writer.lock();
        let fresh = load_state(&*self.inner.backend)?;
        let live = self.state();
        if fresh.machines != live.machines {
            return Err(Error::Corrupt {
                key: "index:machines".into(),
                reason: index_diff(&fresh.machines, &live.machines),
            });
        }
        // Profile ids are positional; compare through names.
        let by_name = |s: &State| -> Vec<(String, Entries)> {
            s.profiles
                .values()
                .map(|p| (p.name.clone(), profile_entries(p)))
                .collect()
        };
        if by_name(&fresh) != by_name(&live)
            || fresh.profile_index.universe().len() != live.profile_index.universe().len()
        {
            return Err(Error::Corrupt {
                key: "index:profiles".into(),
                reason: "profile index differs from stored profiles".into(),
            });
        }
        for p in live.profiles.values() {
            let id = live.profile_ids[&p.name];
            let rebuilt = Index::default();
            let _ = rebuilt;
            for (k, v) in profile_entries(p) {
                if !live
                    .profile_index
                    .lookup(&k, &v)
                    .is_some_and(|b| b.contains(id))
                {
                    return Err(Error::Corrupt {
                        key: format!("index:profiles:{}", p.name),
                        reason: format!("missing {k:?} = {v:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the in-memory state from the engine and hands it back
    /// opaque, so a caller can measure what the indexes occupy. Not for
    /// production use.
    #[doc(hidden)]
    pub fn rebuild_probe(&self) -> Result<Box<dyn std::any::Any>> {
        Ok(Box::new(load_state(&*self.inner.backend)?))
    }

    /// Runs one write: `f` builds the batch and index change from the current
    /// state; both are applied together under the state lock.
    fn write<T>(
        &self,
        f: impl FnOnce(&State, u64, &mut Vec<Change>) -> Result<(Batch, Apply, T)>,
    ) -> Result<T> {
        self.inner.guard.check()?;
        let _w = self.inner.writer.lock();
        let mut changes = Vec::new();
        let (mut batch, apply, out, log_len) = {
            let st = self.inner.state.read();
            let (mut batch, apply, out) = f(&st, st.rev + 1, &mut changes)?;
            batch.expect = st.rev;
            batch.rev = st.rev + 1;
            (batch, apply, out, st.log_len)
        };
        let rev = batch.rev;
        // The change log rides in the same batch; the oldest events go.
        for (seq, c) in changes.iter().enumerate() {
            let seq = u32::try_from(seq)
                .map_err(|_| Error::invalid("write", "too many objects in one write"))?;
            batch.put(log_key(rev, seq), encode_event(rev, seq, c));
        }
        let excess = (log_len + changes.len()).saturating_sub(self.inner.options.log_retain);
        for item in self.inner.backend.scan_prefix(LOG_PREFIX).take(excess) {
            batch.remove(item?.0);
        }
        let log_len = log_len + changes.len() - excess;
        batch.put(LOG_LEN_KEY, (log_len as u64).to_be_bytes());
        {
            // The engine commits first, memory follows: a failed or stalled
            // commit leaves the indexes equal to what is stored.
            let mut st = self.inner.state.write();
            let backend = self.inner.backend.clone();
            self.inner
                .guard
                .run("commit", move || backend.commit(batch))??;
            apply(&mut st);
            st.rev = rev;
            st.log_len = log_len;
        }
        if self.inner.options.durable {
            self.flush()?;
        }
        // Wake watchers and waiters (they re-check the revision under this lock).
        let _g = self.inner.written.lock();
        self.inner.wake.notify_all();
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

    /// The reference evaluator on a stored object's JSON, with effective
    /// params as the store resolves them now.
    pub(crate) fn matches_doc(&self, kind: Kind, bound: &Bound, doc: &Value) -> bool {
        let st = self.state();
        let params = match kind {
            Kind::Machine => match serde_json::from_value::<Machine>(doc.clone()) {
                Ok(m) => with_defaults(effective_explicit(&m, &st.profiles), &st.params),
                Err(_) => return false,
            },
            _ => with_defaults(
                doc.get("Params")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                &st.params,
            ),
        };
        match doc.as_object() {
            Some(obj) => bound.matches(&Subject {
                doc: obj,
                params: &params,
            }),
            None => false,
        }
    }

    fn load_machine(&self, id: u32) -> Result<Machine> {
        let key = machine_key(id);
        match self.inner.backend.get(&key)? {
            Some(bytes) => decode(&key, &bytes),
            None => Err(Error::Corrupt {
                key: format!("m{id}"),
                reason: "indexed machine has no record".into(),
            }),
        }
    }

    /// Machine ids for `filter`, under the given state.
    fn eval(&self, st: &State, q: &Query) -> RoaringBitmap {
        match q.kind {
            Kind::Machine => st.machines.eval(&q.bound, None, st),
            _ => st.profile_index.eval(&q.bound, None, st),
        }
    }
}

fn index_diff(a: &Index, b: &Index) -> String {
    if a.universe() != b.universe() {
        return format!(
            "universe differs: rebuilt {} objects, live {}",
            a.universe().len(),
            b.universe().len()
        );
    }
    "postings differ from a rebuild".into()
}

/// Reads every record and builds the in-memory state.
fn load_state(db: &dyn Backend) -> Result<State> {
    let rev = db.revision()?;
    let mut next_id = match db.get(NEXT_ID_KEY)? {
        Some(b) => u32::from_be_bytes(b.as_slice().try_into().map_err(|_| Error::Corrupt {
            key: "s:next".into(),
            reason: "not 4 bytes".into(),
        })?),
        None => 0,
    };
    let mut st = State {
        rev,
        next_id: 0,
        machines: Index::default(),
        profiles: BTreeMap::new(),
        profile_ids: HashMap::new(),
        profile_names: HashMap::new(),
        next_profile_id: 0,
        profile_index: Index::default(),
        params: BTreeMap::new(),
        validators: HashMap::new(),
        log_len: match db.get(LOG_LEN_KEY)? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| Error::Corrupt {
                key: "s:logn".into(),
                reason: "not 8 bytes".into(),
            })?) as usize,
            None => 0,
        },
    };
    for item in db.scan_prefix(&[PARAM_PREFIX]) {
        let (k, v) = item?;
        let def: ParamDef = decode(&k, &v)?;
        if let Ok(v) = jsonschema::validator_for(&def.schema) {
            st.validators.insert(def.name.clone(), Arc::new(v));
        }
        st.params.insert(def.name.clone(), def);
    }
    for item in db.scan_prefix(&[PROFILE_PREFIX]) {
        let (k, v) = item?;
        let p: Profile = decode(&k, &v)?;
        st.add_profile(p);
    }
    // Decoding runs on a second thread while this one fills the index: the
    // two halves of a rebuild take about as long as each other.
    type Decoded = (u32, Entries, Vec<String>);
    let mut machines = Index::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Decoded>>>(4);
    let profiles = &st.profiles;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            let mut chunk = Vec::with_capacity(1024);
            for item in db.scan_prefix(MACHINE_PREFIX) {
                let decoded = item.and_then(|(k, v)| {
                    let id = machine_id_of(&k).ok_or_else(|| Error::Corrupt {
                        key: show_key(&k),
                        reason: "bad machine key".into(),
                    })?;
                    let m: Machine = decode(&k, &v)?;
                    let own = m.params.keys().cloned().collect();
                    Ok((id, machine_entries(&m, profiles), own))
                });
                match decoded {
                    Ok(d) => chunk.push(d),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
                if chunk.len() == 1024 && tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(chunk));
        });
        for chunk in rx {
            for (id, entries, own) in chunk? {
                let own: Vec<&str> = own.iter().map(String::as_str).collect();
                machines.insert(id, &entries, &own);
                next_id = next_id.max(id + 1);
            }
        }
        Ok(())
    })?;
    st.machines = machines;
    st.next_id = next_id;
    Ok(st)
}

impl State {
    fn add_profile(&mut self, p: Profile) {
        let id = self.next_profile_id;
        self.next_profile_id += 1;
        self.profile_index.insert(id, &profile_entries(&p), &[]);
        self.profile_ids.insert(p.name.clone(), id);
        self.profile_names.insert(id, p.name.clone());
        self.profiles.insert(p.name.clone(), p);
    }

    fn machine_id(&self, addr: &str) -> Result<u32> {
        let (field, value) = if let Some(u) = addr
            .strip_prefix("Uuid:")
            .or_else(|| addr.strip_prefix("Key:"))
        {
            (Field::Uuid, canonical_uuid(u)?)
        } else if let Some(n) = addr.strip_prefix("Name:") {
            (Field::Name, n.to_string())
        } else if let Ok(u) = Uuid::parse_str(addr) {
            (Field::Uuid, u.to_string())
        } else {
            (Field::Name, addr.to_string())
        };
        self.machines
            .lookup(&Key::Field(field), &ValueKey::str(&value))
            .and_then(|b| b.min())
            .ok_or_else(|| Error::not_found(Kind::Machine, addr))
    }

    fn members(&self, profile: &str) -> RoaringBitmap {
        self.machines
            .lookup(&Key::Profiles, &ValueKey::str(profile))
            .map(Posting::to_bitmap)
            .unwrap_or_default()
    }

    /// Checks own params that changed against their definitions' schemas.
    fn check_params(
        &self,
        old: Option<&Map<String, Value>>,
        new: &Map<String, Value>,
    ) -> Result<()> {
        for (k, v) in new {
            if old.and_then(|o| o.get(k)) == Some(v) {
                continue;
            }
            if let Some(val) = self.validators.get(k) {
                if let Err(e) = val.validate(v) {
                    return Err(Error::Schema {
                        param: k.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_machine(&self, id: Option<u32>, old: Option<&Machine>, m: &Machine) -> Result<()> {
        m.check()?;
        if let Some(b) = self
            .machines
            .lookup(&Key::Field(Field::Name), &ValueKey::str(&m.name))
        {
            if b.iter().any(|other| Some(other) != id) {
                return Err(Error::AlreadyExists {
                    kind: Kind::Machine,
                    key: format!("Name:{}", m.name),
                });
            }
        }
        for p in &m.profiles {
            if !self.profiles.contains_key(p) {
                return Err(Error::invalid(
                    "machine Profiles",
                    format!("profile {p:?} does not exist"),
                ));
            }
        }
        self.check_params(old.map(|o| &o.params), &m.params)
    }
}

fn canonical_uuid(s: &str) -> Result<String> {
    Uuid::parse_str(s)
        .map(|u| u.to_string())
        .map_err(|e| Error::invalid("Uuid", format!("{s:?}: {e}")))
}

/// Parses a listing sort key (a field, `Params.NAME`, `Meta.KEY` or a bare param).
fn sort_key(kind: Kind, s: &str) -> Result<Key> {
    let field = match s {
        "Name" => Some(Field::Name),
        "Description" => Some(Field::Description),
        "Uuid" if kind == Kind::Machine => Some(Field::Uuid),
        "Address" if kind == Kind::Machine => Some(Field::Address),
        "Workflow" if kind == Kind::Machine => Some(Field::Workflow),
        "Runnable" if kind == Kind::Machine => Some(Field::Runnable),
        _ => None,
    };
    if let Some(f) = field {
        return Ok(Key::Field(f));
    }
    match s {
        "" | "Profiles" | "Params" | "Meta" => Err(Error::invalid(
            "sort",
            format!("cannot sort by {s:?}: give a field, a param or Meta.KEY"),
        )),
        _ => Ok(if let Some(m) = s.strip_prefix("Meta.") {
            Key::Meta(m.to_string())
        } else {
            Key::Param(s.strip_prefix("Params.").unwrap_or(s).to_string())
        }),
    }
}

/// Shapes one listed object: effective params, `params` selection, `slim`.
fn shape(mut doc: Value, effective: Option<Map<String, Value>>, opts: &ListOptions) -> Value {
    if let Value::Object(obj) = &mut doc {
        if let Some(eff) = effective {
            obj.insert("Params".into(), Value::Object(eff));
        }
        if let Some(keep) = &opts.params {
            if let Some(Value::Object(p)) = obj.get_mut("Params") {
                p.retain(|k, _| keep.iter().any(|x| x == k));
            }
        }
        for s in &opts.slim {
            obj.remove(s.as_str());
        }
    }
    doc
}

/// [`shape`] straight from stored bytes: fields that `slim` drops are only
/// scanned, never built into values (they are most of a machine's bytes).
fn shape_raw(key: &[u8], bytes: &[u8], opts: &ListOptions) -> Result<Value> {
    if opts.slim.is_empty() {
        return Ok(shape(decode(key, bytes)?, None, opts));
    }
    let raw: Map<String, Value> = {
        let fields: indexmap_like::RawFields<'_> =
            serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
                key: show_key(key),
                reason: e.to_string(),
            })?;
        let mut out = Map::with_capacity(fields.0.len());
        for (k, v) in fields.0 {
            if opts.slim.contains(&k) {
                continue;
            }
            out.insert(
                k,
                serde_json::from_str(v.get()).map_err(|e| Error::Corrupt {
                    key: show_key(key),
                    reason: e.to_string(),
                })?,
            );
        }
        out
    };
    Ok(shape(Value::Object(raw), None, opts))
}

mod indexmap_like {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    /// An object's fields in stored order, values left as raw JSON text
    /// borrowed from the record.
    pub(super) struct RawFields<'a>(pub(super) Vec<(String, &'a RawValue)>);

    impl<'de> Deserialize<'de> for RawFields<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = RawFields<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<RawFields<'de>, A::Error> {
                    let mut out = Vec::with_capacity(m.size_hint().unwrap_or(12));
                    while let Some(kv) = m.next_entry()? {
                        out.push(kv);
                    }
                    Ok(RawFields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

fn window(ids: Vec<u32>, opts: &ListOptions) -> Vec<u32> {
    let mut ids = ids;
    if opts.reverse {
        ids.reverse();
    }
    ids.into_iter()
        .skip(opts.offset)
        .take(opts.limit.unwrap_or(usize::MAX))
        .collect()
}

/// Machines: addressed by Uuid, `Uuid:…`, `Key:…` or `Name:…` (a bare
/// non-UUID address is taken as a Name).
pub struct Machines<'a> {
    store: &'a Store,
}

/// Profiles, addressed by name.
pub struct Profiles<'a> {
    store: &'a Store,
}

/// Param definitions, addressed by name.
pub struct Params<'a> {
    store: &'a Store,
}

impl Machines<'_> {
    /// Creates a machine; assigns a v4 Uuid when it has none. Returns it as stored.
    pub fn create(&self, mut m: Machine) -> Result<Machine> {
        if m.uuid.is_nil() {
            m.uuid = Uuid::new_v4();
        }
        normalize_machine(&mut m);
        self.store.write(|st, rev, log| {
            st.check_machine(None, None, &m)?;
            if st
                .machines
                .lookup(
                    &Key::Field(Field::Uuid),
                    &ValueKey::str(&m.uuid.to_string()),
                )
                .is_some()
            {
                return Err(Error::AlreadyExists {
                    kind: Kind::Machine,
                    key: m.uuid.to_string(),
                });
            }
            let id = st.next_id;
            if id == u32::MAX {
                return Err(Error::invalid(
                    "machine",
                    "the store has run out of machine ids",
                ));
            }
            m.revision = rev;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &machine_key(id),
                &m.uuid.to_string(),
                &m,
                None,
            );
            batch.put(NEXT_ID_KEY, (id + 1).to_be_bytes());
            let out = m.clone();
            let apply = Box::new(move |st: &mut State| {
                let e = machine_entries(&m, &st.profiles);
                st.machines.insert(id, &e, &own_keys(&m.params));
                st.next_id = id + 1;
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Creates or replaces (by Uuid) many machines as one atomic write: all
    /// of them or, on the first invalid one, none. For bulk loads; callers
    /// chunk large sets (10,000 a call is a good size). Names are checked
    /// against the store as it was before the call, so two machines cannot
    /// swap names in one import. Returns how many were created and how many
    /// replaced.
    pub fn import(&self, machines: Vec<Machine>) -> Result<(usize, usize)> {
        self.store.write(|st, rev, log| {
            let mut batch = Batch::default();
            let mut names: HashMap<String, Uuid> = HashMap::with_capacity(machines.len());
            let mut next = st.next_id;
            let mut planned: Vec<(u32, Option<Machine>, Machine)> =
                Vec::with_capacity(machines.len());
            let (mut created, mut replaced) = (0, 0);
            for mut m in machines {
                if m.uuid.is_nil() {
                    m.uuid = Uuid::new_v4();
                }
                normalize_machine(&mut m);
                if names
                    .insert(m.name.clone(), m.uuid)
                    .is_some_and(|u| u != m.uuid)
                {
                    return Err(Error::AlreadyExists {
                        kind: Kind::Machine,
                        key: format!("Name:{}", m.name),
                    });
                }
                let existing = st
                    .machines
                    .lookup(
                        &Key::Field(Field::Uuid),
                        &ValueKey::str(&m.uuid.to_string()),
                    )
                    .and_then(|b| b.min());
                let (id, old) = match existing {
                    Some(id) => {
                        replaced += 1;
                        (id, Some(self.store.load_machine(id)?))
                    }
                    None => {
                        created += 1;
                        next = next.checked_add(1).ok_or_else(|| {
                            Error::invalid("machine", "the store has run out of machine ids")
                        })?;
                        (next - 1, None)
                    }
                };
                st.check_machine(Some(id), old.as_ref(), &m)
                    .map_err(|e| match e {
                        Error::Invalid { what, reason } => {
                            Error::invalid(format!("{what} of {}", m.name), reason)
                        }
                        other => other,
                    })?;
                m.revision = rev;
                record(
                    &mut batch,
                    log,
                    &machine_key(id),
                    &m.uuid.to_string(),
                    &m,
                    old.as_ref(),
                );
                planned.push((id, old, m));
            }
            batch.put(NEXT_ID_KEY, next.to_be_bytes());
            // Index entries are worked out now, outside the state's write
            // lock (profiles cannot change: the writer lock is held).
            let planned: Vec<_> = planned
                .into_iter()
                .map(|(id, old, m)| {
                    let ne = machine_entries(&m, &st.profiles);
                    let oe = old.map(|o| (machine_entries(&o, &st.profiles), o.params));
                    (id, oe, ne, m.params)
                })
                .collect();
            let apply = Box::new(move |st: &mut State| {
                for (id, old, ne, params) in planned {
                    match old {
                        Some((oe, old_params)) => st.machines.replace_entries(
                            id,
                            Some((&oe, own_keys(&old_params))),
                            Some((&ne, own_keys(&params))),
                        ),
                        None => st.machines.insert(id, &ne, &own_keys(&params)),
                    }
                }
                st.next_id = next;
            });
            Ok((batch, apply as Apply, (created, replaced)))
        })
    }

    /// The machine at `addr`.
    pub fn get(&self, addr: &str) -> Result<Machine> {
        let id = self.store.state().machine_id(addr)?;
        self.store.load_machine(id)
    }

    /// Whether a machine exists at `addr`.
    pub fn exists(&self, addr: &str) -> Result<bool> {
        match self.store.state().machine_id(addr) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every machine, in creation order.
    pub fn list_all(&self) -> Result<Vec<Machine>> {
        let st = self.store.state();
        st.machines
            .universe()
            .iter()
            .map(|id| self.store.load_machine(id))
            .collect()
    }

    /// Replaces the machine at `addr` with `m` (same Uuid, or none given).
    pub fn replace(&self, addr: &str, m: Machine) -> Result<Machine> {
        let new = to_json(&m);
        self.modify(addr, move |doc| {
            let mut new = new;
            if let (Value::Object(n), Some(u)) = (&mut new, doc.get("Uuid")) {
                if m.uuid.is_nil() {
                    n.insert("Uuid".into(), u.clone());
                }
            }
            *doc = new;
            Ok(())
        })
    }

    /// RFC 7396 merge patch (drpcli `update`).
    pub fn update(&self, addr: &str, merge: &Value) -> Result<Machine> {
        self.modify(addr, |doc| patch::apply_merge(doc, merge))
    }

    /// RFC 6902 patch, atomic: all of it or nothing.
    pub fn patch(&self, addr: &str, ops: &Value) -> Result<Machine> {
        let ops = patch::parse_patch(ops)?;
        self.modify(addr, |doc| patch::apply_patch(doc, &ops))
    }

    /// Reference update (drpcli `-r`): fails with a conflict, writing nothing,
    /// if any path that differs between `reference` and `desired` changed since.
    pub fn update_from(&self, addr: &str, reference: &Value, desired: &Value) -> Result<Machine> {
        self.modify(addr, |doc| patch::apply_reference(doc, reference, desired))
    }

    /// Sets own param `key`.
    pub fn set_param(&self, addr: &str, key: &str, value: Value) -> Result<Machine> {
        self.modify(addr, |doc| {
            patch::params_of(doc)?.insert(key.to_string(), value);
            Ok(())
        })
    }

    /// Compare-and-set of own param `key`: only if its own value (or, when it
    /// has none, its definition's default) equals `expected` (`None`: absent).
    pub fn set_param_if(
        &self,
        addr: &str,
        key: &str,
        expected: Option<&Value>,
        value: Value,
    ) -> Result<Machine> {
        let default = self.store.state().default_of(key).cloned();
        self.modify(addr, |doc| {
            patch::param_cas(doc, key, expected, value, default.as_ref())
        })
    }

    /// Removes own param `key`; returns the removed value (`None` if it had none).
    pub fn remove_param(&self, addr: &str, key: &str) -> Result<Option<Value>> {
        let mut removed = None;
        self.modify(addr, |doc| {
            removed = patch::params_of(doc)?.shift_remove(key);
            Ok(())
        })?;
        Ok(removed)
    }

    /// Own params, or with `aggregate` the effective ones (own → profiles →
    /// global → default).
    pub fn params(&self, addr: &str, aggregate: bool) -> Result<Map<String, Value>> {
        let st = self.store.state();
        let m = self.store.load_machine(st.machine_id(addr)?)?;
        Ok(if aggregate {
            with_defaults(effective_explicit(&m, &st.profiles), &st.params)
        } else {
            m.params
        })
    }

    /// One param, own or (with `aggregate`) effective.
    pub fn get_param(&self, addr: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        Ok(self.params(addr, aggregate)?.get(key).cloned())
    }

    /// Deletes the machine; returns it as it was.
    pub fn delete(&self, addr: &str) -> Result<Machine> {
        self.store.write(|st, _, log| {
            let id = st.machine_id(addr)?;
            let old = self.store.load_machine(id)?;
            let mut batch = Batch::default();
            erase(
                &mut batch,
                log,
                &machine_key(id),
                &old.uuid.to_string(),
                &old,
            );
            let out = old.clone();
            let apply = Box::new(move |st: &mut State| {
                let e = machine_entries(&old, &st.profiles);
                st.machines.remove(id, &e, &own_keys(&old.params));
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Binds `filter` for repeated [`count_query`](Self::count_query) / list calls.
    pub fn prepare(&self, filter: &Filter) -> Result<Query> {
        let st = self.store.state();
        Ok(Query {
            kind: Kind::Machine,
            bound: filter.bind(Kind::Machine, &*st)?,
        })
    }

    /// How many machines match; answered from the indexes alone.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        let q = self.prepare(filter)?;
        Ok(self.count_query(&q))
    }

    /// [`count`](Self::count) for a prepared query.
    pub fn count_query(&self, q: &Query) -> u64 {
        let st = self.store.state();
        st.machines.count(&q.bound, None, &*st)
    }

    /// Matching machines as JSON, shaped by `opts`.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        let q = self.prepare(filter)?;
        self.list_query(&q, opts)
    }

    /// [`list`](Self::list) for a prepared query.
    pub fn list_query(&self, q: &Query, opts: &ListOptions) -> Result<Vec<Value>> {
        let st = self.store.state();
        let ids = self.store.eval(&st, q);
        let page = match &opts.sort {
            Some(s) => window(
                st.machines.sorted(&ids, &sort_key(Kind::Machine, s)?, &*st),
                opts,
            ),
            // Id order needs no materialised list: take the page off the bitmap.
            None => {
                let take = opts.limit.unwrap_or(usize::MAX);
                if opts.reverse {
                    ids.iter().rev().skip(opts.offset).take(take).collect()
                } else {
                    ids.iter().skip(opts.offset).take(take).collect()
                }
            }
        };
        page.into_iter()
            .map(|id| {
                if !opts.aggregate {
                    // Straight from stored JSON to the answer: no typed detour.
                    let key = machine_key(id);
                    let bytes =
                        self.store
                            .inner
                            .backend
                            .get(&key)?
                            .ok_or_else(|| Error::Corrupt {
                                key: format!("m{id}"),
                                reason: "indexed machine has no record".into(),
                            })?;
                    return shape_raw(&key, &bytes, opts);
                }
                let m = self.store.load_machine(id)?;
                let eff = with_defaults(effective_explicit(&m, &st.profiles), &st.params);
                Ok(shape(to_json(&m), Some(eff), opts))
            })
            .collect()
    }

    /// The reference path: decodes every machine and runs the reference
    /// evaluator. For tests and benchmarks; use [`list`](Self::list).
    pub fn scan(&self, filter: &Filter) -> Result<Vec<Machine>> {
        let st = self.store.state();
        let bound = filter.bind(Kind::Machine, &*st)?;
        let mut out = Vec::new();
        for item in self.store.inner.backend.scan_prefix(MACHINE_PREFIX) {
            let (k, v) = item?;
            let m: Machine = decode(&k, &v)?;
            let params = with_defaults(effective_explicit(&m, &st.profiles), &st.params);
            let Value::Object(doc) = to_json(&m) else {
                continue;
            };
            if bound.matches(&Subject {
                doc: &doc,
                params: &params,
            }) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// RFC 6902 patches of several machines as one atomic write: every
    /// patch applies, or none does and the first failure is returned (a
    /// failed `test` as [`Error::Conflict`]). Each machine may appear once.
    pub fn patch_many(&self, patches: &[(String, Value)]) -> Result<Vec<Machine>> {
        let parsed: Vec<(&str, Vec<json_patch::PatchOperation>)> = patches
            .iter()
            .map(|(addr, ops)| Ok((addr.as_str(), patch::parse_patch(ops)?)))
            .collect::<Result<_>>()?;
        self.store.write(|st, rev, log| {
            let mut batch = Batch::default();
            let mut changes = Vec::with_capacity(parsed.len());
            let mut seen = std::collections::HashSet::new();
            for (addr, ops) in &parsed {
                let id = st.machine_id(addr)?;
                if !seen.insert(id) {
                    return Err(Error::invalid(
                        "patch_many",
                        format!("machine {addr} is named twice"),
                    ));
                }
                let (old, new) = self.change(st, rev, id, |doc| patch::apply_patch(doc, ops))?;
                if changes
                    .iter()
                    .any(|(_, _, m): &(u32, Machine, Machine)| m.name == new.name)
                {
                    return Err(Error::AlreadyExists {
                        kind: Kind::Machine,
                        key: format!("Name:{}", new.name),
                    });
                }
                record(
                    &mut batch,
                    log,
                    &machine_key(id),
                    &new.uuid.to_string(),
                    &new,
                    Some(&old),
                );
                changes.push((id, old, new));
            }
            let out = changes.iter().map(|(_, _, m)| m.clone()).collect();
            let apply = Box::new(move |st: &mut State| {
                for (id, old, new) in changes {
                    reindex_machine(st, id, &old, &new);
                }
            });
            Ok((batch, apply as Apply, out))
        })
    }

    fn modify(&self, addr: &str, f: impl FnOnce(&mut Value) -> Result<()>) -> Result<Machine> {
        self.store.write(|st, rev, log| {
            let id = st.machine_id(addr)?;
            let (old, m) = self.change(st, rev, id, f)?;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &machine_key(id),
                &m.uuid.to_string(),
                &m,
                Some(&old),
            );
            let out = m.clone();
            let apply = Box::new(move |st: &mut State| reindex_machine(st, id, &old, &m));
            Ok((batch, apply as Apply, out))
        })
    }

    /// Loads machine `id`, lets `f` change its JSON, and checks the result
    /// against the data model and every other object. Writes nothing.
    fn change(
        &self,
        st: &State,
        rev: u64,
        id: u32,
        f: impl FnOnce(&mut Value) -> Result<()>,
    ) -> Result<(Machine, Machine)> {
        let old = self.store.load_machine(id)?;
        let mut doc = to_json(&old);
        f(&mut doc)?;
        let mut m: Machine = from_json(Kind::Machine, doc)?;
        if m.uuid != old.uuid {
            return Err(Error::invalid(
                "machine Uuid",
                format!("Uuid is immutable ({} → {})", old.uuid, m.uuid),
            ));
        }
        normalize_machine(&mut m);
        st.check_machine(Some(id), Some(&old), &m)?;
        m.revision = rev;
        Ok((old, m))
    }
}

fn reindex_machine(st: &mut State, id: u32, old: &Machine, new: &Machine) {
    let oe = machine_entries(old, &st.profiles);
    let ne = machine_entries(new, &st.profiles);
    st.machines.replace_entries(
        id,
        Some((&oe, own_keys(&old.params))),
        Some((&ne, own_keys(&new.params))),
    );
}

/// Canonical forms the filter language relies on (IP text).
fn normalize_machine(m: &mut Machine) {
    if let Ok(ip) = m.address.parse::<std::net::IpAddr>() {
        m.address = ip.to_string();
    }
}

impl Profiles<'_> {
    /// Creates a profile.
    pub fn create(&self, p: Profile) -> Result<Profile> {
        self.write_profile(None, move |_| Ok(to_json(&p)))
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str) -> Result<Profile> {
        self.store
            .state()
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(Kind::Profile, name))
    }

    /// Whether it exists.
    pub fn exists(&self, name: &str) -> bool {
        self.store.state().profiles.contains_key(name)
    }

    /// Every profile, by name.
    pub fn list_all(&self) -> Vec<Profile> {
        self.store.state().profiles.values().cloned().collect()
    }

    /// Replaces a profile (same Name).
    pub fn replace(&self, name: &str, p: Profile) -> Result<Profile> {
        let new = to_json(&p);
        self.write_profile(Some(name), move |_| Ok(new))
    }

    /// RFC 7396 merge patch.
    pub fn update(&self, name: &str, merge: &Value) -> Result<Profile> {
        self.modify(name, |doc| patch::apply_merge(doc, merge))
    }

    /// RFC 6902 patch, atomic.
    pub fn patch(&self, name: &str, ops: &Value) -> Result<Profile> {
        let ops = patch::parse_patch(ops)?;
        self.modify(name, |doc| patch::apply_patch(doc, &ops))
    }

    /// Reference update (drpcli `-r`).
    pub fn update_from(&self, name: &str, reference: &Value, desired: &Value) -> Result<Profile> {
        self.modify(name, |doc| patch::apply_reference(doc, reference, desired))
    }

    /// Sets param `key`.
    pub fn set_param(&self, name: &str, key: &str, value: Value) -> Result<Profile> {
        self.modify(name, |doc| {
            patch::params_of(doc)?.insert(key.to_string(), value);
            Ok(())
        })
    }

    /// Compare-and-set of param `key` (see [`Machines::set_param_if`]).
    pub fn set_param_if(
        &self,
        name: &str,
        key: &str,
        expected: Option<&Value>,
        value: Value,
    ) -> Result<Profile> {
        let default = self.store.state().default_of(key).cloned();
        self.modify(name, |doc| {
            patch::param_cas(doc, key, expected, value, default.as_ref())
        })
    }

    /// Removes param `key`; returns the removed value.
    pub fn remove_param(&self, name: &str, key: &str) -> Result<Option<Value>> {
        let mut removed = None;
        self.modify(name, |doc| {
            removed = patch::params_of(doc)?.shift_remove(key);
            Ok(())
        })?;
        Ok(removed)
    }

    /// Own params, or with `aggregate` with definition defaults filled in.
    pub fn params(&self, name: &str, aggregate: bool) -> Result<Map<String, Value>> {
        let st = self.store.state();
        let p = st
            .profiles
            .get(name)
            .ok_or_else(|| Error::not_found(Kind::Profile, name))?;
        Ok(if aggregate {
            with_defaults(p.params.clone(), &st.params)
        } else {
            p.params.clone()
        })
    }

    /// One param.
    pub fn get_param(&self, name: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        Ok(self.params(name, aggregate)?.get(key).cloned())
    }

    /// Deletes a profile no machine names (never `global`).
    pub fn delete(&self, name: &str) -> Result<Profile> {
        if name == GLOBAL_PROFILE {
            return Err(Error::invalid(
                "profile global",
                "the global profile cannot be deleted",
            ));
        }
        self.store.write(|st, _, log| {
            let old = st
                .profiles
                .get(name)
                .cloned()
                .ok_or_else(|| Error::not_found(Kind::Profile, name))?;
            let members = st.members(name);
            if !members.is_empty() {
                let shown: Vec<String> = members
                    .iter()
                    .take(5)
                    .map(|id| self.store.load_machine(id).map(|m| m.name))
                    .collect::<Result<_>>()?;
                return Err(Error::InUse {
                    profile: name.to_string(),
                    more: members.len() - shown.len() as u64,
                    machines: shown,
                });
            }
            let mut batch = Batch::default();
            erase(
                &mut batch,
                log,
                &named_key(PROFILE_PREFIX, name),
                name,
                &old,
            );
            let out = old.clone();
            let apply = Box::new(move |st: &mut State| {
                if let Some(id) = st.profile_ids.remove(&old.name) {
                    st.profile_names.remove(&id);
                    st.profile_index.remove(id, &profile_entries(&old), &[]);
                }
                st.profiles.remove(&old.name);
            });
            Ok((batch, apply as Apply, out))
        })
    }

    /// Binds `filter` for profiles.
    pub fn prepare(&self, filter: &Filter) -> Result<Query> {
        let st = self.store.state();
        Ok(Query {
            kind: Kind::Profile,
            bound: filter.bind(Kind::Profile, &*st)?,
        })
    }

    /// How many profiles match.
    pub fn count(&self, filter: &Filter) -> Result<u64> {
        let q = self.prepare(filter)?;
        let st = self.store.state();
        Ok(st.profile_index.count(&q.bound, None, &*st))
    }

    /// Matching profiles as JSON; by Name unless sorted otherwise.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        let q = self.prepare(filter)?;
        let st = self.store.state();
        let ids = self.store.eval(&st, &q);
        let key = sort_key(Kind::Profile, opts.sort.as_deref().unwrap_or("Name"))?;
        let ordered = st.profile_index.sorted(&ids, &key, &*st);
        Ok(window(ordered, opts)
            .into_iter()
            .filter_map(|id| st.profile_names.get(&id).and_then(|n| st.profiles.get(n)))
            .map(|p| {
                let eff = opts
                    .aggregate
                    .then(|| with_defaults(p.params.clone(), &st.params));
                shape(to_json(p), eff, opts)
            })
            .collect())
    }

    fn modify(&self, name: &str, f: impl FnOnce(&mut Value) -> Result<()>) -> Result<Profile> {
        self.write_profile(Some(name), |old| {
            let mut doc = to_json(old.ok_or_else(|| Error::not_found(Kind::Profile, name))?);
            f(&mut doc)?;
            Ok(doc)
        })
    }

    /// Creates (`name` None) or changes a profile, recomputing the effective
    /// params of the machines it reaches.
    fn write_profile(
        &self,
        name: Option<&str>,
        f: impl FnOnce(Option<&Profile>) -> Result<Value>,
    ) -> Result<Profile> {
        self.store.write(|st, rev, log| {
            let old = match name {
                Some(n) => Some(
                    st.profiles
                        .get(n)
                        .cloned()
                        .ok_or_else(|| Error::not_found(Kind::Profile, n))?,
                ),
                None => None,
            };
            let mut p: Profile = from_json(Kind::Profile, f(old.as_ref())?)?;
            p.check()?;
            match &old {
                Some(o) if o.name != p.name => {
                    return Err(Error::invalid(
                        "profile Name",
                        format!(
                            "Name is the key and cannot change ({} → {})",
                            o.name, p.name
                        ),
                    ))
                }
                None if st.profiles.contains_key(&p.name) => {
                    return Err(Error::AlreadyExists {
                        kind: Kind::Profile,
                        key: p.name.clone(),
                    })
                }
                _ => {}
            }
            st.check_params(old.as_ref().map(|o| &o.params), &p.params)?;
            p.revision = rev;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &named_key(PROFILE_PREFIX, &p.name),
                &p.name,
                &p,
                old.as_ref(),
            );
            // Machines whose effective params may change, decoded now (before
            // the state lock) for the rare ones that need their profile order.
            let changed = changed_keys(old.as_ref().map(|o| &o.params), &p.params);
            let plan = plan_profile_change(self.store, st, &p, &changed)?;
            let out = p.clone();
            let apply = Box::new(move |st: &mut State| {
                match old {
                    Some(o) => {
                        let id = st.profile_ids[&o.name];
                        let oe = profile_entries(&o);
                        let ne = profile_entries(&p);
                        st.profile_index.replace_entries(
                            id,
                            Some((&oe, Vec::new())),
                            Some((&ne, Vec::new())),
                        );
                        st.profiles.insert(p.name.clone(), p);
                    }
                    None => st.add_profile(p),
                }
                plan.apply(st);
            });
            Ok((batch, apply as Apply, out))
        })
    }
}

fn changed_keys(old: Option<&Map<String, Value>>, new: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.and_then(|o| o.get(*k)) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    if let Some(o) = old {
        keys.extend(o.keys().filter(|k| !new.contains_key(*k)).cloned());
    }
    keys
}

/// The index changes a profile's param change causes, worked out as bitmap
/// algebra: for param `k` of profile `p`, the machines that take `k` from `p`
/// (or from what `p` falls back to) are `members(p) − own(k)`, less those
/// where another profile with `k` comes first. Only machines that hold `p`
/// and another profile with `k` need their profile order read.
struct ProfilePlan {
    moves: Vec<(String, RoaringBitmap, Option<ValueKey>)>,
    singles: Vec<(String, u32, Option<ValueKey>)>,
}

fn plan_profile_change(
    store: &Store,
    st: &State,
    p: &Profile,
    changed: &[String],
) -> Result<ProfilePlan> {
    let mut plan = ProfilePlan {
        moves: Vec::new(),
        singles: Vec::new(),
    };
    let is_global = p.name == GLOBAL_PROFILE;
    let global = if is_global {
        Some(p)
    } else {
        st.profiles.get(GLOBAL_PROFILE)
    };
    for k in changed {
        let mut reach = if is_global {
            st.machines.universe().clone()
        } else {
            st.members(&p.name)
        };
        if let Some(own) = st.machines.own(k) {
            reach -= own;
        }
        if reach.is_empty() {
            continue;
        }
        let mut overlap = RoaringBitmap::new();
        for q in st.profiles.values() {
            if q.name != p.name && q.name != GLOBAL_PROFILE && q.params.contains_key(k) {
                overlap |= &reach & &st.members(&q.name);
            }
        }
        reach -= &overlap;
        let fallback = global.and_then(|g| g.params.get(k));
        let new = if is_global {
            p.params.get(k)
        } else {
            p.params.get(k).or(fallback)
        };
        plan.moves.push((k.clone(), reach, new.map(ValueKey::of)));
        if is_global {
            // Every other profile outranks global: the overlap keeps its value.
            continue;
        }
        for id in &overlap {
            let m = store.load_machine(id)?;
            let mut profiles = st.profiles.clone();
            profiles.insert(p.name.clone(), p.clone());
            let v = effective_explicit(&m, &profiles).get(k).map(ValueKey::of);
            plan.singles.push((k.clone(), id, v));
        }
    }
    Ok(plan)
}

impl ProfilePlan {
    fn apply(self, st: &mut State) {
        for (k, ids, v) in self.moves {
            st.machines.reassign(&Key::Param(k), &ids, v.as_ref());
        }
        for (k, id, v) in self.singles {
            let mut one = RoaringBitmap::new();
            one.insert(id);
            st.machines.reassign(&Key::Param(k), &one, v.as_ref());
        }
    }
}

impl Params<'_> {
    /// Creates a param definition; its schema must compile, and its default
    /// (if any) must fit it.
    pub fn create(&self, d: ParamDef) -> Result<ParamDef> {
        self.write_def(None, move |_| Ok(to_json(&d)))
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Result<ParamDef> {
        self.store
            .state()
            .params
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(Kind::Param, name))
    }

    /// Whether it exists.
    pub fn exists(&self, name: &str) -> bool {
        self.store.state().params.contains_key(name)
    }

    /// Every definition, by name.
    pub fn list_all(&self) -> Vec<ParamDef> {
        self.store.state().params.values().cloned().collect()
    }

    /// Definitions as JSON, shaped by `opts` (by Name; `sort` orders by a
    /// field's JSON text). Definitions take no filter: `filter` must be empty.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        if !filter.is_all() {
            return Err(Error::invalid(
                "params filter",
                "definitions take no filter: the list has every definition",
            ));
        }
        let mut all: Vec<Value> = self.list_all().iter().map(to_json).collect();
        if let Some(key) = &opts.sort {
            all.sort_by_key(|v| v.get(key).map(|k| k.to_string()).unwrap_or_default());
        }
        let page = window((0..all.len() as u32).collect(), opts);
        Ok(page
            .into_iter()
            .map(|i| shape(all[i as usize].clone(), None, opts))
            .collect())
    }

    /// Replaces a definition.
    pub fn replace(&self, name: &str, d: ParamDef) -> Result<ParamDef> {
        let new = to_json(&d);
        self.write_def(Some(name), move |_| Ok(new))
    }

    /// RFC 7396 merge patch.
    pub fn update(&self, name: &str, merge: &Value) -> Result<ParamDef> {
        self.modify(name, |doc| patch::apply_merge(doc, merge))
    }

    /// RFC 6902 patch, atomic.
    pub fn patch(&self, name: &str, ops: &Value) -> Result<ParamDef> {
        let ops = patch::parse_patch(ops)?;
        self.modify(name, |doc| patch::apply_patch(doc, &ops))
    }

    /// Reference update.
    pub fn update_from(&self, name: &str, reference: &Value, desired: &Value) -> Result<ParamDef> {
        self.modify(name, |doc| patch::apply_reference(doc, reference, desired))
    }

    /// Deletes a definition. Values already stored stay as they are.
    pub fn delete(&self, name: &str) -> Result<ParamDef> {
        self.store.write(|st, _, log| {
            let old = st
                .params
                .get(name)
                .cloned()
                .ok_or_else(|| Error::not_found(Kind::Param, name))?;
            let mut batch = Batch::default();
            erase(&mut batch, log, &named_key(PARAM_PREFIX, name), name, &old);
            let out = old.clone();
            let apply = Box::new(move |st: &mut State| {
                st.params.remove(&old.name);
                st.validators.remove(&old.name);
            });
            Ok((batch, apply as Apply, out))
        })
    }

    fn modify(&self, name: &str, f: impl FnOnce(&mut Value) -> Result<()>) -> Result<ParamDef> {
        self.write_def(Some(name), |old| {
            let mut doc = to_json(old.ok_or_else(|| Error::not_found(Kind::Param, name))?);
            f(&mut doc)?;
            Ok(doc)
        })
    }

    fn write_def(
        &self,
        name: Option<&str>,
        f: impl FnOnce(Option<&ParamDef>) -> Result<Value>,
    ) -> Result<ParamDef> {
        self.store.write(|st, rev, log| {
            let old = match name {
                Some(n) => Some(
                    st.params
                        .get(n)
                        .cloned()
                        .ok_or_else(|| Error::not_found(Kind::Param, n))?,
                ),
                None => None,
            };
            let mut d: ParamDef = from_json(Kind::Param, f(old.as_ref())?)?;
            if d.name.is_empty() {
                return Err(Error::invalid(
                    "param Name",
                    "Name is required and may not be empty",
                ));
            }
            match &old {
                Some(o) if o.name != d.name => {
                    return Err(Error::invalid(
                        "param Name",
                        format!(
                            "Name is the key and cannot change ({} → {})",
                            o.name, d.name
                        ),
                    ))
                }
                None if st.params.contains_key(&d.name) => {
                    return Err(Error::AlreadyExists {
                        kind: Kind::Param,
                        key: d.name.clone(),
                    })
                }
                _ => {}
            }
            let validator = jsonschema::validator_for(&d.schema)
                .map_err(|e| Error::invalid(format!("param {} Schema", d.name), e.to_string()))?;
            if let Some(def) = d.default_value() {
                if let Err(e) = validator.validate(def) {
                    return Err(Error::Schema {
                        param: d.name.clone(),
                        reason: format!("default: {e}"),
                    });
                }
            }
            d.revision = rev;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &named_key(PARAM_PREFIX, &d.name),
                &d.name,
                &d,
                old.as_ref(),
            );
            let out = d.clone();
            let apply = Box::new(move |st: &mut State| {
                st.validators.insert(d.name.clone(), Arc::new(validator));
                st.params.insert(d.name.clone(), d);
            });
            Ok((batch, apply as Apply, out))
        })
    }
}
