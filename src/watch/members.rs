//! Membership streams ("count-watch"): the machines a filter selects, as a
//! count and a set, and then one message per write that moves a machine in
//! or out of the set (issue #19; `docs/architecture.md` §9).
//!
//! Owns: [`MemberWatch`], its messages ([`Membership`], [`Member`]) and how
//! a stream resumes. Must not: evaluate a filter over the fleet's documents
//! — machines are judged on the index bitmaps, and a logged document is
//! judged only for the one machine it is; or write anything.
//!
//! # Messages
//! The first message is a snapshot: `{"Revision", "Count", "Joined": [],
//! "Left": [], "Snapshot": true}` and, when asked for
//! ([`MemberOptions::members`]), `"Members": [{"Uuid", "Name"}, …]`. Then one
//! message for each revision whose write moved at least one machine in or
//! out — `{"Revision", "Count", "Joined", "Left"}` — and none for revisions
//! that moved nothing. `Count` is the filter's count at `Revision`;
//! `Joined`/`Left` are exactly the difference from the previous message,
//! each entry the machine's Uuid and its Name at that revision (for a
//! delete, as it was), sorted by Name then Uuid.
//!
//! # How the set is kept
//! The stream keeps the member set as a bitmap of dense machine ids (with
//! each member's Uuid, which a delete's logged event names). A step reads
//! the change log from the stream's revision to the store's, then takes the
//! state's read lock ([`StateView`]): the index it reads is at the revision
//! the lock shows, and the log holds every event up to it (a write commits
//! its batch, log included, before it publishes its revision, under the
//! same lock), so the two agree.
//!
//! - Machine writes: only the machines a revision changed are judged. A
//!   machine's last change in the step is judged on the bitmaps (the filter
//!   evaluated within the changed ids); an earlier change of the same
//!   machine in the step, on its logged document with the reference
//!   evaluator (profiles and definitions cannot have changed in between:
//!   see the next point). One message per revision.
//! - Profile, param-definition (and `global`) writes can move many machines
//!   through effective params: the filter is bound again and evaluated on
//!   the bitmaps (no document is read), and the set at that revision is
//!   the answer, corrected for the machines changed later in the step (their
//!   documents as they were then, from the log). A step that holds such a
//!   write can tell the set at its last such revision `P`, not at the
//!   revisions before it: those revisions are reported as one message at
//!   `P`, marked `"Coalesced": true`, whose `Joined`/`Left` are the net
//!   difference since the previous message (sent even when that is empty:
//!   machines may have moved in and out in between). A stream that keeps up
//!   (a step per write) never coalesces.
//!
//! # Resuming
//! `from = Some(R)` is the `Revision` of the last message the subscriber
//! saw: it holds the set as of `R`, and the stream delivers the messages
//! for revisions after `R`, with no snapshot first. The set at `R` is
//! rebuilt from the bitmaps now and the log since `R`: every machine that
//! changed after `R` is judged on its document as it was at `R` (the
//! `Previous` of its first logged change, or absent for a create). That is
//! exact when only machines were written after `R`. When the log no longer
//! reaches back to `R` (compacted), or a profile or definition was written
//! after `R` (its effect at `R` cannot be rebuilt from today's bitmaps), the
//! stream starts with a fresh snapshot marked `"Reset": true` instead of a
//! diff that could be wrong. A stream that falls so far behind that the log
//! is trimmed past it resets the same way.
//!
//! A stream whose filter no longer binds after a definition change (a
//! literal of a type the definition now refuses) ends with the binding
//! error.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::Action;
use crate::error::{Error, Result};
use crate::filter::{Bound, Filter};
use crate::model::Kind;
use crate::store::{log_position, StateView, Store};

/// How a membership stream starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberOptions {
    /// Resume after this revision (the `Revision` of the last message seen)
    /// instead of starting with a snapshot.
    pub from: Option<u64>,
    /// Put the members in snapshot messages (`Members`).
    pub members: bool,
    /// When the log no longer reaches back to `from`: fail with
    /// [`Error::Compacted`] (as [`Store::watch`] does) instead of starting
    /// with a reset snapshot. For a caller that asked for `from` itself
    /// rather than reconnecting.
    pub compacted_is_error: bool,
}

/// A machine in a membership message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Uuid.
    #[serde(rename = "Uuid")]
    pub uuid: Uuid,
    /// Its Name at the message's revision.
    #[serde(rename = "Name")]
    pub name: String,
}

/// Messages list machines by Name, then Uuid.
fn sort_members(v: &mut [Member]) {
    v.sort_by(|a, b| (&a.name, a.uuid).cmp(&(&b.name, b.uuid)));
}

/// One message of a membership stream (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The revision the message describes the set at.
    #[serde(rename = "Revision")]
    pub revision: u64,
    /// How many machines match at that revision.
    #[serde(rename = "Count")]
    pub count: u64,
    /// Machines in the set now that were not in the previous message's.
    #[serde(rename = "Joined", default)]
    pub joined: Vec<Member>,
    /// Machines in the previous message's set that are not in it now.
    #[serde(rename = "Left", default)]
    pub left: Vec<Member>,
    /// The whole set is stated (the first message, and a reset), not a
    /// difference.
    #[serde(rename = "Snapshot", default, skip_serializing_if = "is_false")]
    pub snapshot: bool,
    /// A snapshot that replaces a resumed stream's set: the difference
    /// since the revision resumed from could not be told.
    #[serde(rename = "Reset", default, skip_serializing_if = "is_false")]
    pub reset: bool,
    /// The difference covers the revisions since the previous message, not
    /// only this one's write (a profile or definition write while the
    /// stream was behind).
    #[serde(rename = "Coalesced", default, skip_serializing_if = "is_false")]
    pub coalesced: bool,
    /// The members, in snapshots when asked for.
    #[serde(rename = "Members", default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A change from the log, as a membership stream needs it.
struct Logged {
    rev: u64,
    kind: Kind,
    /// Machines only.
    uuid: Uuid,
    action: Action,
    /// The machine after the write (for a delete: as it was).
    object: Box<RawValue>,
    /// The machine before the write (updates): whole, or the patch that
    /// turns `object` back into it.
    previous: Option<Box<RawValue>>,
    undo: Option<Box<RawValue>>,
}

impl Logged {
    /// The machine's document as it was before this change (`None`: it did
    /// not exist). An update logged with its undo patch gets it rebuilt.
    fn before(&self) -> Result<Option<Cow<'_, str>>> {
        Ok(match (self.action, &self.undo) {
            (Action::Create, _) => None,
            (Action::Update, Some(undo)) => {
                let corrupt = |reason: String| Error::Corrupt {
                    key: format!("change log, revision {}", self.rev),
                    reason,
                };
                let object =
                    serde_json::from_str(self.object.get()).map_err(|e| corrupt(e.to_string()))?;
                let undo = serde_json::from_str(undo.get()).map_err(|e| corrupt(e.to_string()))?;
                Some(Cow::Owned(
                    super::undone(object, &undo).map_err(corrupt)?.to_string(),
                ))
            }
            (Action::Update, None) => self.previous.as_deref().map(|p| Cow::Borrowed(p.get())),
            (Action::Delete, _) => Some(Cow::Borrowed(self.object.get())),
        })
    }
}

/// A logged event's head and documents, borrowed from its bytes.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "Kind")]
    kind: Kind,
    #[serde(rename = "Key")]
    key: std::borrow::Cow<'a, str>,
    #[serde(rename = "Action")]
    action: Action,
    #[serde(rename = "Object", borrow, default)]
    object: Option<&'a RawValue>,
    /// A machine's create logged by reference ([`super::created`]).
    #[serde(rename = "Record", default)]
    record: Option<u32>,
    #[serde(rename = "Previous", borrow, default)]
    previous: Option<&'a RawValue>,
    #[serde(rename = "Undo", borrow, default)]
    undo: Option<&'a RawValue>,
}

/// The Name in a machine document (nothing else is built).
fn name_of(doc: &str) -> String {
    #[derive(Deserialize)]
    struct Named {
        #[serde(rename = "Name", default)]
        name: String,
    }
    serde_json::from_str::<Named>(doc)
        .map(|n| n.name)
        .unwrap_or_default()
}

/// The machines a filter selects, as a stream of [`Membership`] messages
/// (see the module doc). Made by [`Store::watch_members`].
pub struct MemberWatch {
    /// `None` between [`MemberWatch::detach`] and [`MemberWatch::reattach`].
    store: Option<Store>,
    filter: Filter,
    bound: Bound,
    with_members: bool,
    /// The revision `set` is at (every message up to it is queued).
    at: u64,
    set: RoaringBitmap,
    /// Each member's Uuid, both ways.
    ids: HashMap<Uuid, u32>,
    uuids: HashMap<u32, Uuid>,
    queue: VecDeque<Membership>,
    /// The revision of the last message handed out (or resumed from).
    delivered: u64,
    /// Ids for machines that join within a step and no longer exist at its
    /// end (counting down; real ids count up from 0 and stop at 4 billion).
    next_pseudo: u32,
}

impl Store {
    /// A membership stream of `filter` without the members in its snapshot:
    /// [`watch_members_with`](Self::watch_members_with).
    pub fn watch_members(&self, filter: &Filter, from: Option<u64>) -> Result<MemberWatch> {
        self.watch_members_with(
            filter,
            MemberOptions {
                from,
                ..MemberOptions::default()
            },
        )
    }

    /// A membership stream of the machines `filter` selects: a snapshot (at
    /// the store's revision now), then a message per write that moves a
    /// machine in or out; or, with `from`, the messages after that revision
    /// (see the module doc for resuming). A filter that does not bind is an
    /// error now; a `from` beyond the store's revision is invalid.
    pub fn watch_members_with(&self, filter: &Filter, opts: MemberOptions) -> Result<MemberWatch> {
        let mut w = MemberWatch {
            store: Some(self.clone()),
            filter: filter.clone(),
            bound: Bound::All,
            with_members: opts.members,
            at: 0,
            set: RoaringBitmap::new(),
            ids: HashMap::new(),
            uuids: HashMap::new(),
            queue: VecDeque::new(),
            delivered: 0,
            next_pseudo: u32::MAX,
        };
        match opts.from {
            None => {
                let view = self.view();
                w.snapshot(&view, false)?;
            }
            Some(r) => {
                let current = self.revision();
                if r > current {
                    return Err(Error::invalid(
                        "watch revision",
                        format!("revision {r} is in the future (the store is at {current})"),
                    ));
                }
                w.resume(r, opts.compacted_is_error)?;
            }
        }
        Ok(w)
    }
}

impl MemberWatch {
    /// The next message, waiting up to `timeout` for one; `Ok(None)` on
    /// timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Membership>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.poll()? {
                return Ok(Some(m));
            }
            // Past the revision the poll reached, not the store's now: a
            // write between the poll and this line must wake us.
            match self.store()?.wait_for_write(self.at, deadline) {
                Ok(()) => {}
                Err(Error::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message from the writes already made, without waiting.
    pub fn poll(&mut self) -> Result<Option<Membership>> {
        if self.queue.is_empty() {
            self.advance()?;
        }
        let m = self.queue.pop_front();
        if let Some(m) = &m {
            self.delivered = m.revision;
        }
        Ok(m)
    }

    /// The revision the caller's view of the set is at: that of the last
    /// message handed out, or, once every message is handed out, the
    /// revision the stream has read up to (no write since the last message
    /// moved anything). Resuming from it loses nothing.
    pub fn revision(&self) -> u64 {
        if self.queue.is_empty() {
            self.at
        } else {
            self.delivered
        }
    }

    /// Moves the stream to another handle of the same store (the CLI opens
    /// the store afresh for each check, see [`detach`](Self::detach)). Dense ids are persisted, so the set
    /// carries over; a store behind the stream is refused.
    pub fn reattach(&mut self, store: &Store) -> Result<()> {
        let current = store.revision();
        if current < self.at {
            return Err(Error::invalid(
                "watch revision",
                format!(
                    "the stream is at revision {} and the store at {current}",
                    self.at
                ),
            ));
        }
        self.store = Some(store.clone());
        Ok(())
    }

    /// Lets go of the store (its files stay locked while a handle lives)
    /// until [`reattach`](Self::reattach); polling until then is an error.
    pub fn detach(&mut self) {
        self.store = None;
    }

    fn store(&self) -> Result<&Store> {
        self.store.as_ref().ok_or_else(|| {
            Error::invalid("membership stream", "detached from its store: reattach it")
        })
    }

    fn pseudo_id(&mut self) -> u32 {
        let id = self.next_pseudo;
        self.next_pseudo = self.next_pseudo.saturating_sub(1);
        id
    }

    /// The changes to machines, profiles and definitions in `(after, to]`,
    /// or `None` when the log no longer reaches back to `after + 1`.
    fn read_log(&self, after: u64, to: u64) -> Result<Option<Vec<Logged>>> {
        let mut out = Vec::new();
        if to <= after {
            return Ok(Some(out));
        }
        let start = (after + 1, 0);
        let store = self.store()?;
        let backend = store.backend();
        let mut later = super::created::Later::default();
        let mut first = true;
        for item in backend.changes(start.0, 0) {
            let (k, v) = item?;
            let Some((rev, seq)) = log_position(&k) else {
                continue;
            };
            if first && (rev, 0) != start && !self.reaches(start)? {
                return Ok(None);
            }
            first = false;
            if rev > to {
                break;
            }
            let head: Head<'_> = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                key: "change log".into(),
                reason: e.to_string(),
            })?;
            let uuid = match head.kind {
                Kind::Job | Kind::Lease => continue,
                Kind::Machine => Uuid::parse_str(&head.key).map_err(|e| Error::Corrupt {
                    key: "change log".into(),
                    reason: format!("machine key {:?}: {e}", head.key),
                })?,
                Kind::Profile | Kind::Param => Uuid::nil(),
            };
            let machine = head.kind == Kind::Machine;
            let corrupt = |reason: String| Error::Corrupt {
                key: format!("change log {rev}.{seq}"),
                reason,
            };
            let object = match (machine, head.object, head.record) {
                (false, _, _) => RawValue::NULL.to_owned(),
                (true, Some(object), None) => object.to_owned(),
                (true, None, Some(id)) => {
                    let object =
                        super::created::object(store, id, &head.key, (rev, seq), &mut later)?;
                    serde_json::value::to_raw_value(&object).map_err(|e| corrupt(e.to_string()))?
                }
                (true, _, _) => {
                    return Err(corrupt(
                        "an event needs exactly one of Object and Record".into(),
                    ))
                }
            };
            out.push(Logged {
                rev,
                kind: head.kind,
                uuid,
                action: head.action,
                object,
                previous: head.previous.filter(|_| machine).map(RawValue::to_owned),
                undo: head.undo.filter(|_| machine).map(RawValue::to_owned),
            });
        }
        // A trim removes the oldest events first: if the log still reaches
        // `start`, nothing read after it was trimmed under the scan.
        if !self.reaches(start)? {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Whether the log still holds every event from `start` on.
    fn reaches(&self, start: (u64, u32)) -> Result<bool> {
        let store = self.store()?;
        Ok(match store.oldest_event()? {
            Some(oldest) => oldest <= start,
            // An empty log: no write since `start` was logged, or all trimmed.
            None => start.0 > store.revision(),
        })
    }

    /// One step: the messages for every write since `at`, up to the
    /// store's revision.
    fn advance(&mut self) -> Result<()> {
        // The view borrows its own handle, so the stream can change under it.
        let store = self.store()?.clone();
        let target = store.revision();
        if target <= self.at {
            return Ok(());
        }
        // Most of the log is read before the lock, so writers wait less.
        let Some(mut changes) = self.read_log(self.at, target)? else {
            let view = store.view();
            return self.snapshot(&view, true);
        };
        let view = store.view();
        let now = view.revision();
        match self.read_log(target, now)? {
            Some(more) => changes.extend(more),
            None => return self.snapshot(&view, true),
        }
        let start = match changes
            .iter()
            .filter(|c| c.kind != Kind::Machine)
            .map(|c| c.rev)
            .max()
        {
            Some(p) => {
                self.coalesce(&view, &changes, p)?;
                p
            }
            None => self.at,
        };
        let tail: Vec<&Logged> = changes.iter().filter(|c| c.rev > start).collect();
        self.replay(&view, &tail)?;
        self.at = now;
        Ok(())
    }

    /// Replaces the set by the one at the view's revision and queues it as
    /// a snapshot (`reset`: marked as replacing a resumed stream's set).
    fn snapshot(&mut self, view: &StateView<'_>, reset: bool) -> Result<()> {
        self.bound = view.bind(&self.filter)?;
        self.set = view.eval(&self.bound, None);
        let who = view.identities(&self.set);
        self.ids = who.iter().map(|(id, (u, _))| (*u, *id)).collect();
        self.uuids = who.iter().map(|(id, (u, _))| (*id, *u)).collect();
        self.at = view.revision();
        let members = self.with_members.then(|| {
            let mut m: Vec<Member> = who
                .into_values()
                .map(|(uuid, name)| Member { name, uuid })
                .collect();
            sort_members(&mut m);
            m
        });
        self.queue.push_back(Membership {
            revision: self.at,
            count: self.set.len(),
            joined: Vec::new(),
            left: Vec::new(),
            snapshot: true,
            reset,
            coalesced: false,
            members,
        });
        Ok(())
    }

    /// Starts from revision `r`, the subscriber's: its set rebuilt when
    /// only machines changed since, else a reset snapshot.
    fn resume(&mut self, r: u64, compacted_is_error: bool) -> Result<()> {
        self.delivered = r;
        let store = self.store()?.clone();
        let target = store.revision();
        let Some(mut changes) = self.read_log(r, target)? else {
            if compacted_is_error {
                return Err(Error::Compacted {
                    requested: r,
                    oldest: store.oldest_logged()?.unwrap_or(target + 1),
                });
            }
            let view = store.view();
            return self.snapshot(&view, true);
        };
        let view = store.view();
        let now = view.revision();
        match self.read_log(target, now)? {
            Some(more) => changes.extend(more),
            None => return self.snapshot(&view, true),
        }
        if changes.iter().any(|c| c.kind != Kind::Machine) {
            return self.snapshot(&view, true);
        }
        self.bound = view.bind(&self.filter)?;
        let after: Vec<&Logged> = changes.iter().collect();
        let (set, known) = self.set_at(&view, &after)?;
        let rest = &set - &known.keys().copied().collect::<RoaringBitmap>();
        let mut who: HashMap<u32, Uuid> = view
            .identities(&rest)
            .into_iter()
            .map(|(id, (u, _))| (id, u))
            .collect();
        who.extend(known.into_iter().map(|(id, m)| (id, m.uuid)));
        self.ids = who.iter().map(|(id, u)| (*u, *id)).collect();
        self.uuids = who;
        self.set = set;
        self.at = r;
        self.replay(&view, &after)?;
        self.at = now;
        Ok(())
    }

    /// The set at the revision just before `after` (changes to machines
    /// only, up to the view's revision): the bitmaps now, with each machine
    /// changed in `after` judged on its document as it was before its first
    /// change there. Also the identities of those machines in the set.
    fn set_at(
        &mut self,
        view: &StateView<'_>,
        after: &[&Logged],
    ) -> Result<(RoaringBitmap, HashMap<u32, Member>)> {
        let mut set = view.eval(&self.bound, None);
        let mut known = HashMap::new();
        let mut seen: HashMap<Uuid, ()> = HashMap::new();
        for c in after {
            if seen.insert(c.uuid, ()).is_some() {
                continue;
            }
            let now_id = view.machine_id(&c.uuid);
            if let Some(id) = now_id {
                set.remove(id);
            }
            let Some(doc) = c.before()? else {
                continue;
            };
            if view.machine_matches(&self.bound, &doc)? {
                let id = match now_id.or_else(|| self.ids.get(&c.uuid).copied()) {
                    Some(id) => id,
                    None => self.pseudo_id(),
                };
                set.insert(id);
                known.insert(
                    id,
                    Member {
                        name: name_of(&doc),
                        uuid: c.uuid,
                    },
                );
            }
        }
        Ok((set, known))
    }

    /// The set at revision `p` (the last profile or definition write of the
    /// step `changes`), queued as one message against the set at `at`.
    fn coalesce(&mut self, view: &StateView<'_>, changes: &[Logged], p: u64) -> Result<()> {
        self.bound = view.bind(&self.filter)?;
        let after: Vec<&Logged> = changes.iter().filter(|c| c.rev > p).collect();
        let (set_p, known) = self.set_at(view, &after)?;
        let joined_ids = &set_p - &self.set;
        let left_ids = &self.set - &set_p;
        // Names at `p`: a document from the log when the machine changed
        // after `p`; else its last logged change up to `p`; else the
        // indexes (it has not changed since).
        let mut last_name: HashMap<Uuid, String> = HashMap::new();
        for c in changes
            .iter()
            .filter(|c| c.rev <= p && c.kind == Kind::Machine)
        {
            last_name.insert(c.uuid, name_of(c.object.get()));
        }
        for c in after.iter().rev() {
            if let Some(doc) = c.before()? {
                last_name.insert(c.uuid, name_of(&doc));
            }
        }
        let unnamed: RoaringBitmap = joined_ids
            .iter()
            .filter(|id| !known.contains_key(id))
            .chain(left_ids.iter())
            .collect();
        let indexed = view.identities(&unnamed);
        let mut joined: HashMap<Uuid, (u32, String)> = HashMap::new();
        for id in &joined_ids {
            let (uuid, name) = match (known.get(&id), indexed.get(&id)) {
                (Some(m), _) => (m.uuid, m.name.clone()),
                (None, Some((u, n))) => (*u, n.clone()),
                // A machine in the set at the view's revision is indexed.
                (None, None) => continue,
            };
            joined.insert(uuid, (id, name));
        }
        let mut left = Vec::new();
        for id in &left_ids {
            let Some(uuid) = self.uuids.get(&id).copied() else {
                continue;
            };
            self.uuids.remove(&id);
            self.ids.remove(&uuid);
            if let Some((new_id, _)) = joined.remove(&uuid) {
                // The same machine under a new id (deleted and created
                // again): it stayed in the set.
                self.ids.insert(uuid, new_id);
                self.uuids.insert(new_id, uuid);
                continue;
            }
            let name = last_name
                .get(&uuid)
                .cloned()
                .or_else(|| indexed.get(&id).map(|(_, n)| n.clone()))
                .unwrap_or_default();
            left.push(Member { name, uuid });
        }
        let mut joined: Vec<Member> = joined
            .into_iter()
            .map(|(uuid, (id, name))| {
                self.ids.insert(uuid, id);
                self.uuids.insert(id, uuid);
                Member { name, uuid }
            })
            .collect();
        self.set = set_p;
        // Revisions before `p` in this step may have moved machines in and
        // out again: a coalesced message says so even when the net
        // difference is empty, so no movement passes unannounced.
        let coalesced = changes.iter().any(|c| c.rev < p);
        if joined.is_empty() && left.is_empty() && !coalesced {
            return Ok(());
        }
        sort_members(&mut joined);
        sort_members(&mut left);
        self.queue.push_back(Membership {
            revision: p,
            count: self.set.len(),
            joined,
            left,
            snapshot: false,
            reset: false,
            coalesced,
            members: None,
        });
        Ok(())
    }

    /// Queues a message per revision of `tail` (machine changes only, after
    /// the set's revision, up to the view's) that moves a machine.
    fn replay(&mut self, view: &StateView<'_>, tail: &[&Logged]) -> Result<()> {
        if tail.is_empty() {
            return Ok(());
        }
        // Each machine's last change in the step is judged on the bitmaps,
        // all at once; its id now, for the ones that still exist.
        let mut last: HashMap<Uuid, usize> = HashMap::with_capacity(tail.len());
        for (i, c) in tail.iter().enumerate() {
            last.insert(c.uuid, i);
        }
        let mut now_ids: HashMap<Uuid, u32> = HashMap::with_capacity(last.len());
        let mut candidates = RoaringBitmap::new();
        for (u, i) in &last {
            if tail[*i].action != Action::Delete {
                if let Some(id) = view.machine_id(u) {
                    now_ids.insert(*u, id);
                    candidates.insert(id);
                }
            }
        }
        let in_now = view.eval(&self.bound, Some(&candidates));
        let mut i = 0;
        while i < tail.len() {
            let rev = tail[i].rev;
            let mut j = i;
            while j < tail.len() && tail[j].rev == rev {
                j += 1;
            }
            // A machine's state after this revision: its last change in it.
            // (A bulk write changes thousands of machines in one revision.)
            let mut slot: HashMap<Uuid, usize> = HashMap::new();
            let mut finals: Vec<usize> = Vec::new();
            for (k, c) in tail.iter().enumerate().take(j).skip(i) {
                match slot.get(&c.uuid) {
                    Some(&at) => finals[at] = k,
                    None => {
                        slot.insert(c.uuid, finals.len());
                        finals.push(k);
                    }
                }
            }
            let (mut joined, mut left) = (Vec::new(), Vec::new());
            for k in finals {
                let c = tail[k];
                let now_id = now_ids.get(&c.uuid).copied();
                let member = match c.action {
                    Action::Delete => false,
                    _ if last.get(&c.uuid) == Some(&k) => {
                        now_id.is_some_and(|id| in_now.contains(id))
                    }
                    _ => view.machine_matches(&self.bound, c.object.get())?,
                };
                match (self.ids.get(&c.uuid).copied(), member) {
                    (Some(old), false) => {
                        self.set.remove(old);
                        self.ids.remove(&c.uuid);
                        self.uuids.remove(&old);
                        left.push(Member {
                            name: name_of(c.object.get()),
                            uuid: c.uuid,
                        });
                    }
                    (None, true) => {
                        let id = match now_id {
                            Some(id) => id,
                            None => self.pseudo_id(),
                        };
                        self.set.insert(id);
                        self.ids.insert(c.uuid, id);
                        self.uuids.insert(id, c.uuid);
                        joined.push(Member {
                            name: name_of(c.object.get()),
                            uuid: c.uuid,
                        });
                    }
                    // Deleted and created again in one write: same member,
                    // new id.
                    (Some(old), true) => {
                        if let Some(new) = now_id.filter(|n| *n != old) {
                            self.set.remove(old);
                            self.uuids.remove(&old);
                            self.set.insert(new);
                            self.ids.insert(c.uuid, new);
                            self.uuids.insert(new, c.uuid);
                        }
                    }
                    (None, false) => {}
                }
            }
            if !joined.is_empty() || !left.is_empty() {
                sort_members(&mut joined);
                sort_members(&mut left);
                self.queue.push_back(Membership {
                    revision: rev,
                    count: self.set.len(),
                    joined,
                    left,
                    snapshot: false,
                    reset: false,
                    coalesced: false,
                    members: None,
                });
            }
            i = j;
        }
        Ok(())
    }
}

impl Iterator for MemberWatch {
    type Item = Result<Membership>;
    /// Blocks until the next message.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(m)) => return Some(Ok(m)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Machine, ParamDef, Profile};
    use crate::store::Options;
    use serde_json::json;

    fn filter(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    fn machine(s: &Store, name: &str, rack: i64) -> Machine {
        let mut m = Machine::new(name);
        m.params.insert("rack".into(), json!(rack));
        s.machines().create(m).unwrap()
    }

    fn names(v: &[Member]) -> Vec<&str> {
        v.iter().map(|m| m.name.as_str()).collect()
    }

    /// Everything queued now.
    fn drain(w: &mut MemberWatch) -> Vec<Membership> {
        std::iter::from_fn(|| w.poll().unwrap()).collect()
    }

    #[test]
    fn a_snapshot_then_one_message_per_write_that_moves_a_machine() {
        let s = Store::in_memory().unwrap();
        machine(&s, "a", 1);
        machine(&s, "b", 2);
        let opts = MemberOptions {
            members: true,
            ..MemberOptions::default()
        };
        let mut w = s.watch_members_with(&filter("rack Eq 1"), opts).unwrap();
        let first = w.poll().unwrap().unwrap();
        assert!(first.snapshot && !first.reset);
        assert_eq!((first.revision, first.count), (s.revision(), 1));
        assert_eq!(names(first.members.as_deref().unwrap()), ["a"]);
        assert_eq!(w.poll().unwrap(), None);

        s.machines().set_param("b", "rack", json!(1)).unwrap();
        let joined_at = s.revision();
        // A write that moves nothing says nothing.
        s.machines().set_param("a", "other", json!(1)).unwrap();
        s.machines().delete("a").unwrap();
        let got = drain(&mut w);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].revision, joined_at);
        assert_eq!((got[0].count, names(&got[0].joined)), (2, vec!["b"]));
        assert!(got[0].left.is_empty() && got[0].members.is_none());
        assert_eq!((got[1].count, names(&got[1].left)), (1, vec!["a"]));
        assert_eq!(got[1].revision, s.revision());
        assert_eq!(w.revision(), s.revision());
    }

    #[test]
    fn a_machine_changed_twice_in_one_step_is_reported_at_each_revision() {
        let s = Store::in_memory().unwrap();
        machine(&s, "a", 1);
        let mut w = s.watch_members(&filter("rack Eq 1"), None).unwrap();
        drain(&mut w);
        // All before the next poll: one step sees three revisions.
        s.machines().set_param("a", "rack", json!(2)).unwrap();
        s.machines().set_param("a", "rack", json!(1)).unwrap();
        machine(&s, "t", 1);
        s.machines().delete("t").unwrap();
        let got = drain(&mut w);
        let shape: Vec<(u64, Vec<&str>, Vec<&str>)> = got
            .iter()
            .map(|m| (m.count, names(&m.joined), names(&m.left)))
            .collect();
        assert_eq!(
            shape,
            [
                (0, vec![], vec!["a"]),
                (1, vec!["a"], vec![]),
                (2, vec!["t"], vec![]),
                (1, vec![], vec!["t"]),
            ]
        );
        let revs: Vec<u64> = got.iter().map(|m| m.revision).collect();
        let now = s.revision();
        assert_eq!(revs, [now - 3, now - 2, now - 1, now]);
    }

    #[test]
    fn a_profile_write_moves_its_members_through_effective_params() {
        let s = Store::in_memory().unwrap();
        s.profiles().create(Profile::new("p")).unwrap();
        for n in ["a", "b"] {
            let mut m = Machine::new(n);
            m.profiles.push("p".into());
            s.machines().create(m).unwrap();
        }
        machine(&s, "c", 1);
        let mut w = s.watch_members(&filter("rack Eq 1"), None).unwrap();
        assert_eq!(w.poll().unwrap().unwrap().count, 1);
        s.profiles().set_param("p", "rack", json!(1)).unwrap();
        let m = w.poll().unwrap().unwrap();
        assert_eq!((m.count, names(&m.joined)), (3, vec!["a", "b"]));
        assert!(!m.coalesced);
        s.profiles().set_param("global", "rack", json!(1)).unwrap();
        assert_eq!(w.poll().unwrap(), None, "every machine already matches");
        s.profiles().remove_param("p", "rack").unwrap();
        assert_eq!(w.poll().unwrap(), None, "global's rack 1 holds them now");
        s.profiles().set_param("global", "rack", json!(2)).unwrap();
        let m = w.poll().unwrap().unwrap();
        assert_eq!((m.count, names(&m.left)), (1, vec!["a", "b"]));
    }

    #[test]
    fn a_profile_write_behind_other_writes_is_one_coalesced_message() {
        let s = Store::in_memory().unwrap();
        s.profiles().create(Profile::new("p")).unwrap();
        let mut m = Machine::new("a");
        m.profiles.push("p".into());
        s.machines().create(m).unwrap();
        let mut w = s.watch_members(&filter("rack Eq 1"), None).unwrap();
        drain(&mut w);
        machine(&s, "b", 1);
        s.profiles().set_param("p", "rack", json!(1)).unwrap();
        let p = s.revision();
        machine(&s, "c", 1);
        let got = drain(&mut w);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].coalesced);
        assert_eq!((got[0].revision, got[0].count), (p, 2));
        assert_eq!(names(&got[0].joined), ["a", "b"]);
        assert_eq!((got[1].count, names(&got[1].joined)), (3, vec!["c"]));
        assert!(!got[1].coalesced);
    }

    #[test]
    fn resuming_after_machine_writes_continues_the_diff() {
        let s = Store::in_memory().unwrap();
        machine(&s, "a", 1);
        machine(&s, "b", 2);
        let mut w = s.watch_members(&filter("rack Eq 1"), None).unwrap();
        let seen = w.poll().unwrap().unwrap().revision;
        drop(w);
        s.machines().set_param("a", "rack", json!(2)).unwrap();
        s.machines().set_param("b", "rack", json!(1)).unwrap();
        s.machines().delete("b").unwrap();
        machine(&s, "c", 1);
        let mut w = s.watch_members(&filter("rack Eq 1"), Some(seen)).unwrap();
        let got = drain(&mut w);
        let shape: Vec<(u64, Vec<&str>, Vec<&str>)> = got
            .iter()
            .map(|m| (m.count, names(&m.joined), names(&m.left)))
            .collect();
        assert_eq!(
            shape,
            [
                (0, vec![], vec!["a"]),
                (1, vec!["b"], vec![]),
                (0, vec![], vec!["b"]),
                (1, vec!["c"], vec![]),
            ]
        );
        assert!(got.iter().all(|m| !m.snapshot));
        // Resuming at the store's revision: nothing to say.
        let mut w = s
            .watch_members(&filter("rack Eq 1"), Some(s.revision()))
            .unwrap();
        assert_eq!(w.poll().unwrap(), None);
    }

    #[test]
    fn resuming_past_a_profile_write_or_a_compacted_log_resets() {
        let s = Store::in_memory_with(Options {
            log_retain: 4,
            ..Options::default()
        })
        .unwrap();
        machine(&s, "a", 1);
        let seen = s.revision();
        s.profiles().create(Profile::new("p")).unwrap();
        let opts = MemberOptions {
            from: Some(seen),
            members: true,
            ..MemberOptions::default()
        };
        let mut w = s.watch_members_with(&filter("rack Eq 1"), opts).unwrap();
        let m = w.poll().unwrap().unwrap();
        assert!(m.reset && m.snapshot);
        assert_eq!((m.revision, m.count), (s.revision(), 1));
        assert_eq!(names(m.members.as_deref().unwrap()), ["a"]);
        for i in 0..6 {
            machine(&s, &format!("m{i}"), 2);
        }
        let mut w = s.watch_members(&filter("rack Eq 1"), Some(seen)).unwrap();
        let m = w.poll().unwrap().unwrap();
        assert!(m.reset, "the log no longer reaches {seen}: {m:?}");
        let strict = MemberOptions {
            from: Some(seen),
            compacted_is_error: true,
            ..MemberOptions::default()
        };
        assert!(matches!(
            s.watch_members_with(&filter("rack Eq 1"), strict),
            Err(Error::Compacted { .. })
        ));
        assert!(s
            .watch_members(&Filter::all(), Some(s.revision() + 1))
            .is_err());
    }

    #[test]
    fn a_definition_that_no_longer_fits_the_filter_ends_the_stream() {
        let s = Store::in_memory().unwrap();
        machine(&s, "a", 1);
        let mut w = s.watch_members(&filter("rack Eq abc"), None).unwrap();
        drain(&mut w);
        s.params()
            .create(ParamDef::new("rack", json!({"type": "integer"})))
            .unwrap();
        assert!(matches!(w.poll(), Err(Error::Filter(_))));
    }

    #[test]
    fn a_bulk_write_is_one_message() {
        let s = Store::in_memory().unwrap();
        let mut w = s.watch_members(&filter("rack Eq 1"), None).unwrap();
        drain(&mut w);
        let batch: Vec<Machine> = (0..5)
            .map(|i| {
                let mut m = Machine::new(format!("n{i}"));
                m.params.insert("rack".into(), json!(i % 2));
                m
            })
            .collect();
        s.machines().import(batch).unwrap();
        let got = drain(&mut w);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].count, names(&got[0].joined)), (2, vec!["n1", "n3"]));
        assert_eq!(got[0].revision, s.revision());
    }

    #[test]
    fn messages_serialize_with_capitalised_names() {
        let m = Membership {
            revision: 7,
            count: 1,
            joined: vec![Member {
                uuid: Uuid::nil(),
                name: "a".into(),
            }],
            left: vec![],
            snapshot: false,
            reset: false,
            coalesced: false,
            members: None,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"Revision":7,"Count":1,"Joined":[{"Uuid":"00000000-0000-0000-0000-000000000000","Name":"a"}],"Left":[]}"#
        );
        assert_eq!(serde_json::from_str::<Membership>(&text).unwrap(), m);
    }
}
