//! Change events, watches, and waits built on them (`docs/architecture.md`
//! §9 Change log, watches and waits; the log's storage: §5).
//!
//! Owns: the change log's record format and retention, [`Event`], [`Watch`]
//! (ordered, gap-free, resumable delivery), and the blocking waits —
//! [`Store::wait_machine`] and [`Store::count_wait`] — that wake on the write
//! that satisfies them instead of sleeping. Must not: decide what is written;
//! the store's write pipeline hands every write's changes here
//! (`Change`) and they land in the same atomic batch as the write. Reads
//! the log only through the storage boundary's feed of committed changes.
//!
//! # The log
//! Every write appends one event per object it changed (the store's layout
//! keys it by revision and sequence), holding the object after the write and
//! (for updates and deletes) before it: whole, or for a machine's param
//! write as the patch that undoes it (`Undo`), which the log's
//! reader applies so an [`Event`] always carries it whole. A machine's
//! create names the machine's record instead of holding a copy, and the
//! reader reads the object back from the record or from the machine's
//! next event (`created`). Jobs
//! are logged too, as creates of
//! [`Kind::Job`]: a watch of every kind sees them; a filter cannot apply to
//! them. The log keeps at least the newest [`LOG_RETAIN`] events (it trims
//! whole records of several events once it holds a 64th more, see the
//! store's `changelog`); a watch from an
//! older revision fails with [`Error::Compacted`] naming the oldest revision
//! still kept, as etcd does.
//!
//! # Filters on watches
//! A watch with a filter delivers the events of objects that match the
//! filter before or after the write, so a subscriber sees members leave as
//! well as join. Both sides are judged with the param definitions and
//! profiles as they are when the event is delivered. A profile change that
//! moves machines in or out of a filter through their effective params is
//! one profile event, not one event per machine.

mod created;
mod members;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::filter::{Bound, Filter};
use crate::model::Kind;
use crate::store::{log_position, show_key, Store};

pub use members::{Member, MemberOptions, MemberWatch, Membership};

/// How many events the persisted change log keeps at least.
pub const LOG_RETAIN: usize = 100_000;

/// What a write did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The object was created.
    Create,
    /// The object was changed.
    Update,
    /// The object was deleted.
    Delete,
}

/// One change to one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The revision of the write.
    #[serde(rename = "Revision")]
    pub revision: u64,
    /// Position within the write (a bulk import changes many objects at one revision).
    #[serde(rename = "Seq")]
    pub seq: u32,
    /// The object's kind.
    #[serde(rename = "Kind")]
    pub kind: Kind,
    /// Its key: a machine's Uuid, a profile's or param's Name.
    #[serde(rename = "Key")]
    pub key: String,
    /// What happened.
    #[serde(rename = "Action")]
    pub action: Action,
    /// The object after the write (for a delete: as it was).
    #[serde(rename = "Object")]
    pub object: Value,
    /// The object before the write (updates and deletes).
    #[serde(rename = "Previous", default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Value>,
}

/// A change handed from the write pipeline: the encoded object bytes as
/// stored, so nothing is encoded twice.
pub(crate) struct Change {
    pub(crate) kind: Kind,
    pub(crate) key: String,
    pub(crate) action: Action,
    pub(crate) object: Object,
    pub(crate) previous: Option<Previous>,
}

/// What an event keeps of the object after the write.
pub(crate) enum Object {
    /// Its stored bytes.
    Bytes(Vec<u8>),
    /// A machine's create: the number of its record (its id), which the
    /// same batch writes; the log's reader reads the object from there, or
    /// from the machine's next event once it changed ([`created`]).
    Record(u32),
}

/// What an update's event keeps of the object before the write.
pub(crate) enum Previous {
    /// Its stored bytes.
    Doc(Vec<u8>),
    /// A JSON Patch (encoded) that turns the event's object back into it:
    /// a param write's event holds one changed param this way instead of a
    /// second copy of the whole object. Only for a change the patch undoes
    /// exactly, member order included.
    Undo(Vec<u8>),
}

/// The stored form of an event: [`Event`] with its previous object either
/// whole or as the patch that undoes the write ([`Previous::Undo`]).
#[derive(Deserialize)]
struct Stored {
    #[serde(rename = "Revision")]
    revision: u64,
    #[serde(rename = "Seq")]
    seq: u32,
    #[serde(rename = "Kind")]
    kind: Kind,
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Action")]
    action: Action,
    #[serde(rename = "Object", default)]
    object: Option<Value>,
    #[serde(rename = "Record", default)]
    record: Option<u32>,
    #[serde(rename = "Previous", default)]
    previous: Option<Value>,
    #[serde(rename = "Undo", default)]
    undo: Option<json_patch::Patch>,
}

/// An updated object's previous state: `object` with the event's undo
/// patch applied (the error says why it does not apply).
fn undone(mut object: Value, undo: &json_patch::Patch) -> std::result::Result<Value, String> {
    json_patch::patch(&mut object, undo)
        .map_err(|e| format!("its undo patch does not apply to its object: {e}"))?;
    Ok(object)
}

/// Reads an event as the change log stores it (`key`: its log key, named
/// in errors). An update stored with the patch that undoes it gets its
/// previous object back by applying the patch to a copy of its object. A
/// machine's create logged by reference comes back with a null object and
/// its record's number, for [`created::object`] to read.
pub(crate) fn decode_event(key: &[u8], bytes: &[u8]) -> Result<(Event, Option<u32>)> {
    let corrupt = |reason: String| Error::Corrupt {
        key: match log_position(key) {
            Some((rev, seq)) => format!("change log {rev}.{seq}"),
            None => show_key(key),
        },
        reason,
    };
    let s: Stored = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let (object, record) = match (s.object, s.record) {
        (Some(object), None) => (object, None),
        (None, Some(id)) if s.action == Action::Create && s.kind == Kind::Machine => {
            (Value::Null, Some(id))
        }
        (None, Some(_)) => return Err(corrupt("only a machine's create names its record".into())),
        (None, None) => return Err(corrupt("an event without its object".into())),
        (Some(_), Some(_)) => return Err(corrupt("an event holds both Object and Record".into())),
    };
    let previous = match (s.previous, s.undo) {
        (previous, None) => previous,
        (None, Some(undo)) => Some(undone(object.clone(), &undo).map_err(corrupt)?),
        (Some(_), Some(_)) => return Err(corrupt("an event holds both Previous and Undo".into())),
    };
    let event = Event {
        revision: s.revision,
        seq: s.seq,
        kind: s.kind,
        key: s.key,
        action: s.action,
        object,
        previous,
    };
    Ok((event, record))
}

/// The kind and key of an encoded event, reading nothing else (index
/// checkpoints learn from the log which objects changed).
pub(crate) fn event_subject(bytes: &[u8]) -> Result<(Kind, String)> {
    #[derive(Deserialize)]
    struct Subject {
        #[serde(rename = "Kind")]
        kind: Kind,
        #[serde(rename = "Key")]
        key: String,
    }
    let s: Subject = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: "change log".into(),
        reason: e.to_string(),
    })?;
    Ok((s.kind, s.key))
}

/// Encodes an event around the stored object bytes (already JSON).
#[cfg(test)]
pub(crate) fn encode_event(rev: u64, seq: u32, c: &Change) -> Vec<u8> {
    let mut out = Vec::new();
    encode_event_into(&mut out, rev, seq, c);
    out
}

/// Appends the encoding of an event (around the stored object bytes,
/// already JSON) to `out`; the change log frames several in one record.
pub(crate) fn encode_event_into(out: &mut Vec<u8>, rev: u64, seq: u32, c: &Change) {
    /// An event's fields before the object: serialized straight from
    /// borrowed values (no intermediate JSON map).
    #[derive(Serialize)]
    struct Head<'a> {
        #[serde(rename = "Revision")]
        revision: u64,
        #[serde(rename = "Seq")]
        seq: u32,
        #[serde(rename = "Kind")]
        kind: Kind,
        #[serde(rename = "Key")]
        key: &'a str,
        #[serde(rename = "Action")]
        action: Action,
    }
    let head = Head {
        revision: rev,
        seq,
        kind: c.kind,
        key: &c.key,
        action: c.action,
    };
    let previous = match &c.previous {
        Some(Previous::Doc(b) | Previous::Undo(b)) => b.len(),
        None => 0,
    };
    let object = match &c.object {
        Object::Bytes(b) => b.len(),
        Object::Record(_) => 0,
    };
    out.reserve(96 + c.key.len() + object + previous);
    // Writing a struct of numbers, strings and unit enums into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &head);
    out.pop(); // its closing brace
    match &c.object {
        Object::Bytes(b) => {
            out.extend_from_slice(b",\"Object\":");
            out.extend_from_slice(b);
        }
        Object::Record(id) => {
            out.extend_from_slice(b",\"Record\":");
            let _ = serde_json::to_writer(&mut *out, id);
        }
    }
    match &c.previous {
        Some(Previous::Doc(p)) => {
            out.extend_from_slice(b",\"Previous\":");
            out.extend_from_slice(p);
        }
        Some(Previous::Undo(p)) => {
            out.extend_from_slice(b",\"Undo\":");
            out.extend_from_slice(p);
        }
        None => {}
    }
    out.push(b'}');
}

/// When a count-wait is satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountCondition {
    /// `count >= n`
    AtLeast(u64),
    /// `count == n`
    Exactly(u64),
    /// `count <= n`
    AtMost(u64),
}

impl CountCondition {
    /// Whether `count` satisfies it.
    pub fn holds(self, count: u64) -> bool {
        match self {
            CountCondition::AtLeast(n) => count >= n,
            CountCondition::Exactly(n) => count == n,
            CountCondition::AtMost(n) => count <= n,
        }
    }
}

impl std::fmt::Display for CountCondition {
    /// The form [`FromStr`](std::str::FromStr) reads: `>= 12`, `== 3`, `<= 0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountCondition::AtLeast(n) => write!(f, ">= {n}"),
            CountCondition::Exactly(n) => write!(f, "== {n}"),
            CountCondition::AtMost(n) => write!(f, "<= {n}"),
        }
    }
}

impl std::str::FromStr for CountCondition {
    type Err = Error;
    /// `">= 12"`, `"== 3"`, `"<= 0"` (spaces optional; `=` alone means `==`).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let (op, rest) = if let Some(r) = t.strip_prefix(">=") {
            ("ge", r)
        } else if let Some(r) = t.strip_prefix("<=") {
            ("le", r)
        } else if let Some(r) = t.strip_prefix("==") {
            ("eq", r)
        } else if let Some(r) = t.strip_prefix('=') {
            ("eq", r)
        } else {
            return Err(Error::invalid(
                "--until",
                format!("{s:?}: expected \">= N\", \"== N\" or \"<= N\""),
            ));
        };
        let n: u64 = rest.trim().parse().map_err(|_| {
            Error::invalid(
                "--until",
                format!(
                    "{s:?}: expected a count after the operator, found {:?}",
                    rest.trim()
                ),
            )
        })?;
        Ok(match op {
            "ge" => CountCondition::AtLeast(n),
            "le" => CountCondition::AtMost(n),
            _ => CountCondition::Exactly(n),
        })
    }
}

/// An ordered, gap-free stream of events from a revision on.
pub struct Watch {
    store: Store,
    kind: Option<Kind>,
    filter: Option<(Filter, Bound)>,
    /// The next (revision, seq) to deliver.
    next: (u64, u32),
    /// Where the machine events after a create it delivers are, once one
    /// of those machines changed since its create ([`created`]).
    later: created::Later,
    /// Events read from the log and not yet looked at, from `next` on.
    ahead: VecDeque<(Vec<u8>, Vec<u8>)>,
}

/// How many events a watch reads from the log at a time.
const READ_AHEAD: usize = 256;

impl Store {
    /// Events of `kind` (all kinds when `None`) whose object matches `filter`
    /// before or after the write, from revision `from` on (inclusive;
    /// default: the next write). A `from` older than the log keeps is
    /// [`Error::Compacted`]; one beyond the next revision is invalid.
    pub fn watch(
        &self,
        kind: Option<Kind>,
        filter: Option<Filter>,
        from: Option<u64>,
    ) -> Result<Watch> {
        let current = self.revision();
        let from = from.unwrap_or(current + 1);
        if from > current + 1 {
            return Err(Error::invalid(
                "watch revision",
                format!("revision {from} is in the future (the store is at {current})"),
            ));
        }
        if from <= current {
            let oldest = self.oldest_logged()?;
            if oldest.is_none_or(|o| from < o) {
                return Err(Error::Compacted {
                    requested: from,
                    oldest: oldest.unwrap_or(current + 1),
                });
            }
        }
        let filter = match (filter, kind) {
            (Some(_), Some(Kind::Job)) => {
                return Err(Error::invalid("watch filter", "jobs take no filter"))
            }
            (Some(f), Some(k)) => {
                let bound = f.bind(k, &*self.state())?;
                Some((f, bound))
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "watch filter",
                    "a filter needs a kind (machines or profiles)",
                ))
            }
            _ => None,
        };
        Ok(Watch {
            store: self.clone(),
            kind,
            filter,
            next: (from, 0),
            later: created::Later::default(),
            ahead: VecDeque::new(),
        })
    }

    /// The oldest revision whose events the log still holds in full. A trim
    /// may have taken the first events of the oldest logged revision (it
    /// removes events, not revisions): that revision no longer counts.
    fn oldest_logged(&self) -> Result<Option<u64>> {
        Ok(self
            .oldest_event()?
            .map(|(rev, seq)| rev + u64::from(seq > 0)))
    }

    /// The position of the oldest event in the log.
    fn oldest_event(&self) -> Result<Option<(u64, u32)>> {
        match self.backend().changes(0, 0).next() {
            Some(item) => Ok(log_position(&item?.0)),
            None => Ok(None),
        }
    }

    /// Blocks until machine `addr` matches `filter` (checked now and after
    /// every write), or `timeout` passes ([`Error::Timeout`]).
    pub fn wait_machine(&self, addr: &str, filter: &Filter, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let uuid = self.machines().get(addr)?.uuid.to_string();
        let me = Filter::parse(&format!("Uuid Eq {uuid}"))?.and(filter.clone());
        loop {
            let seen = self.revision();
            let q = self.machines().prepare(&me)?;
            if self.machines().count_query(&q) == 1 {
                return Ok(());
            }
            if !self.machines().exists(&uuid)? {
                return Err(Error::not_found(Kind::Machine, addr));
            }
            self.wait_for_write(seen, deadline)?;
        }
    }

    /// Blocks until the number of machines matching `filter` satisfies
    /// `until`, re-counting on every write (counting never reads a document);
    /// returns the count, or [`Error::Timeout`].
    pub fn count_wait(
        &self,
        filter: &Filter,
        until: CountCondition,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.revision();
            let q = self.machines().prepare(filter)?;
            let n = self.machines().count_query(&q);
            if until.holds(n) {
                return Ok(n);
            }
            self.wait_for_write(seen, deadline)?;
        }
    }
}

impl Watch {
    /// The next event, waiting up to `timeout` for one; `Ok(None)` on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll()? {
                return Ok(Some(e));
            }
            // Wait for a revision past what the poll saw, not past the
            // store's revision now: a write landing between the poll and
            // this line must wake us, not be left for the next write.
            match self
                .store
                .wait_for_write(self.next.0.saturating_sub(1), deadline)
            {
                Ok(()) => {}
                Err(Error::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event already in the log, without waiting. A watch that
    /// fell so far behind that the log was trimmed past it fails with
    /// [`Error::Compacted`] rather than skip the events it never saw.
    pub fn poll(&mut self) -> Result<Option<Event>> {
        loop {
            // Read whole before the event leaves the queue: a failure
            // (reading a create's record, say) leaves it to the next poll.
            if self.ahead.is_empty() && !self.read_ahead()? {
                return Ok(None);
            }
            let Some((k, v)) = self.ahead.front() else {
                continue;
            };
            let (mut e, record) = decode_event(k, v)?;
            // Read only for a watch of machines' events.
            if let Some(id) = record.filter(|_| self.kind.is_none_or(|k| k == e.kind)) {
                let at = (e.revision, e.seq);
                e.object = created::object(&self.store, id, &e.key, at, &mut self.later)?;
            }
            self.ahead.pop_front();
            self.next = (e.revision, e.seq + 1);
            // Where the next poll starts: the next event's own position
            // when there is one (`self.next` is then always an event that
            // existed, or a revision not yet seen).
            match self.ahead.front().and_then(|(k, _)| log_position(k)) {
                Some(at) => self.next = at,
                None => {
                    self.read_ahead()?;
                }
            }
            if self.wanted(&e) {
                return Ok(Some(e));
            }
        }
    }

    /// Reads up to [`READ_AHEAD`] events from `next` on into `ahead`
    /// (empty before): a read of the log starts at the first record of
    /// its revision, so reading one event at a time through a revision of
    /// many records would skip its records again for each. `false` when
    /// there are none yet: then `next` moves past the revision the store
    /// was at before the read.
    fn read_ahead(&mut self) -> Result<bool> {
        // Read the revision before scanning: every event up to it is already
        // in the log (a write lands its batch before it publishes its
        // revision), so skipping ahead to it afterwards loses nothing.
        let current = self.store.revision();
        let backend = self.store.backend();
        for item in backend.changes(self.next.0, self.next.1).take(READ_AHEAD) {
            let (k, v) = item?;
            if self.ahead.is_empty() && log_position(&k) != Some(self.next) {
                self.check_not_trimmed()?;
            }
            self.ahead.push_back((k, v));
        }
        if let Some(at) = self.ahead.front().and_then(|(k, _)| log_position(k)) {
            self.next = at;
            return Ok(true);
        }
        self.next = self.next.max((current + 1, 0));
        // Caught up: later creates are read from their records.
        self.later = created::Later::default();
        Ok(false)
    }

    /// Fails with [`Error::Compacted`] when the log no longer reaches back
    /// to where this watch stands: the events from there were trimmed. A
    /// log starting past `next` only because the revisions in between wrote
    /// no events also fails (the watch cannot tell), which errs on the safe
    /// side: the caller re-reads instead of missing a change.
    fn check_not_trimmed(&self) -> Result<()> {
        match self.store.oldest_event()? {
            Some(oldest) if oldest > self.next => Err(Error::Compacted {
                requested: self.next.0,
                oldest: self.store.oldest_logged()?.unwrap_or(oldest.0),
            }),
            _ => Ok(()),
        }
    }

    /// The revision the watch will deliver next (for resuming).
    pub fn next_revision(&self) -> u64 {
        self.next.0
    }

    fn wanted(&self, e: &Event) -> bool {
        if self.kind.is_some_and(|k| k != e.kind) {
            return false;
        }
        let Some((_, bound)) = &self.filter else {
            return true;
        };
        [Some(&e.object), e.previous.as_ref()]
            .into_iter()
            .flatten()
            .any(|doc| self.store.matches_doc(e.kind, bound, doc))
    }
}

impl Iterator for Watch {
    type Item = Result<Event>;
    /// Blocks until the next event.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log_key;
    use serde_json::json;

    #[test]
    fn an_encoded_event_reads_back_with_its_object_and_previous() {
        let c = Change {
            kind: Kind::Machine,
            key: "k\"1".into(),
            action: Action::Update,
            object: Object::Bytes(br#"{"Name":"a","Params":{"x":2}}"#.to_vec()),
            previous: Some(Previous::Doc(br#"{"Name":"a","Params":{"x":1}}"#.to_vec())),
        };
        let (e, record) = decode_event(&log_key(7, 3), &encode_event(7, 3, &c)).unwrap();
        assert_eq!(record, None);
        assert_eq!(
            e,
            Event {
                revision: 7,
                seq: 3,
                kind: Kind::Machine,
                key: "k\"1".into(),
                action: Action::Update,
                object: json!({"Name": "a", "Params": {"x": 2}}),
                previous: Some(json!({"Name": "a", "Params": {"x": 1}})),
            }
        );
        let created = Change {
            previous: None,
            action: Action::Create,
            ..c
        };
        let (e, _) = decode_event(&log_key(8, 0), &encode_event(8, 0, &created)).unwrap();
        assert_eq!((e.action, e.previous), (Action::Create, None));
    }

    #[test]
    fn an_update_stored_with_its_undo_patch_reads_back_with_its_previous_object() {
        let undo = br#"[{"op":"replace","path":"/Params/x","value":1},{"op":"remove","path":"/Params/y"}]"#;
        let c = Change {
            kind: Kind::Machine,
            key: "k".into(),
            action: Action::Update,
            object: Object::Bytes(br#"{"Name":"a","Params":{"x":2,"y":3}}"#.to_vec()),
            previous: Some(Previous::Undo(undo.to_vec())),
        };
        let bytes = encode_event(9, 0, &c);
        let stored = String::from_utf8_lossy(&bytes);
        assert!(
            stored.contains("\"Undo\":") && !stored.contains("\"Previous\""),
            "{stored}"
        );
        let (e, _) = decode_event(&log_key(9, 0), &bytes).unwrap();
        assert_eq!(e.object, json!({"Name": "a", "Params": {"x": 2, "y": 3}}));
        assert_eq!(e.previous, Some(json!({"Name": "a", "Params": {"x": 1}})));
        // Serialized as before: the whole previous object, no patch.
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(wire["Previous"], json!({"Name": "a", "Params": {"x": 1}}));
        assert!(wire.get("Undo").is_none());
    }

    #[test]
    fn a_machine_create_names_its_record_and_nothing_else_may() {
        let c = Change {
            kind: Kind::Machine,
            key: "u".into(),
            action: Action::Create,
            object: Object::Record(42),
            previous: None,
        };
        let bytes = encode_event(3, 1, &c);
        assert!(!String::from_utf8_lossy(&bytes).contains("\"Object\""));
        let (e, record) = decode_event(&log_key(3, 1), &bytes).unwrap();
        assert_eq!(
            (e.action, e.object, record),
            (Action::Create, Value::Null, Some(42))
        );
        let head = r#"{"Revision":3,"Seq":1,"Kind":"machines","Key":"u","#;
        for (tail, why) in [
            (
                r#""Action":"update","Record":4}"#,
                "only a machine's create",
            ),
            (r#""Action":"create"}"#, "without its object"),
            (
                r#""Action":"create","Object":{},"Record":4}"#,
                "both Object and Record",
            ),
        ] {
            match decode_event(&log_key(3, 1), format!("{head}{tail}").as_bytes()) {
                Err(Error::Corrupt { reason, .. }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{tail}: {other:?}"),
            }
        }
        let profile =
            r#"{"Revision":3,"Seq":1,"Kind":"profiles","Key":"p","Action":"create","Record":4}"#;
        assert!(matches!(
            decode_event(&log_key(3, 1), profile.as_bytes()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn an_undo_patch_that_does_not_apply_is_reported_as_corrupt() {
        let c = Change {
            kind: Kind::Machine,
            key: "k".into(),
            action: Action::Update,
            object: Object::Bytes(br#"{"Name":"a","Params":{}}"#.to_vec()),
            previous: Some(Previous::Undo(
                br#"[{"op":"remove","path":"/Params/gone"}]"#.to_vec(),
            )),
        };
        match decode_event(&log_key(4, 2), &encode_event(4, 2, &c)) {
            Err(Error::Corrupt { key, reason }) => {
                assert_eq!(key, "change log 4.2");
                assert!(reason.contains("undo patch"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
