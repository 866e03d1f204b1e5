//! Machine creates logged by reference: reading such an event's object
//! back (`docs/architecture.md` §9).
//!
//! Owns: [`object`], the rule that finds the object, and [`Later`], the
//! positions of the log's machine events past some point that one reader
//! gathers in one scan instead of one scan per create. Must not: write
//! anything, or know how records are laid out (the store reads a machine's
//! record and its revision: [`Store::machine_record_of`]).
//!
//! A machine's create event names the machine's record (its id) instead of
//! holding a copy of it: an import's events would otherwise repeat every
//! record it writes, and the engine's work follows the bytes it is given
//! (an import of 1M machines spent a sixth of its time on those copies,
//! `docs/write-path.md`, stop 48). Every write of a machine's record sets
//! its `Revision` to the write's revision and logs an event, and ids are
//! never given again, so the record is the create's object exactly when
//! its revision is the create's. Otherwise the machine changed (or left)
//! after the create, and its first later event holds the object as it was
//! before that: an update's previous object (whole, or rebuilt from its
//! undo patch), a delete's object. That event is in the log whenever the
//! create is: a trim removes the oldest events first.

use serde_json::Value;

use super::{decode_event, event_subject, Action};
use crate::error::{Error, Result};
use crate::index::FastMap;
use crate::model::Kind;
use crate::store::{log_position, Store};

/// How many events past the one a lookup reads it keeps at hand: the
/// creates a reader resolves in order tend to find their machines' next
/// events in order too (an import, then a write that replaced the same
/// machines), and a read from the middle of a large revision first skips
/// its records before that point.
const READ_ON: usize = 256;

/// Positions of the log's machine events in a span of it, by machine key,
/// each machine's in order: what a reader that resolves many creates (a
/// watch behind an import whose machines changed since) reads the log for
/// once. Dropped once the reader has caught up.
#[derive(Default)]
pub(crate) struct Later {
    /// The events it holds are those after the first position (exclusive)
    /// up to the second (exclusive: where the next scan starts).
    span: Option<((u64, u32), (u64, u32))>,
    at: FastMap<String, Vec<(u64, u32)>>,
    /// The events last read, in order.
    read: Vec<Read>,
}

/// An event as read: its position, log key and bytes.
type Read = ((u64, u32), Vec<u8>, Vec<u8>);

impl Later {
    /// The position of machine `key`'s first event after `after`, if the
    /// span holds it.
    fn next_after(&self, key: &str, after: (u64, u32)) -> Option<(u64, u32)> {
        let (from, _) = self.span?;
        if from > after {
            return None;
        }
        let at = self.at.get(key)?;
        at.get(at.partition_point(|p| *p <= after)).copied()
    }

    /// Reads the log's machine events on from `after`: past the span when
    /// the span starts at or before it, else from `after` anew.
    fn scan(&mut self, store: &Store, after: (u64, u32)) -> Result<()> {
        let (from, start) = match self.span {
            Some((from, end)) if from <= after => (from, end),
            _ => {
                *self = Later::default();
                (after, (after.0, after.1 + 1))
            }
        };
        let mut end = start;
        for item in store.backend().changes(start.0, start.1) {
            let (k, v) = item?;
            let Some(pos) = log_position(&k) else {
                continue;
            };
            let (kind, key) = event_subject(&v)?;
            if kind == Kind::Machine {
                self.at.entry(key).or_default().push(pos);
            }
            end = (pos.0, pos.1 + 1);
        }
        self.span = Some((from, end));
        Ok(())
    }

    /// The event at position `at` as the log stores it (its log key and
    /// bytes), `None` if the log no longer holds it: from the events last
    /// read, else read with the [`READ_ON`] after it.
    fn event(&mut self, store: &Store, at: (u64, u32)) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let found = |read: &[Read]| {
            read.binary_search_by(|(p, _, _)| p.cmp(&at))
                .ok()
                .map(|i| (read[i].1.clone(), read[i].2.clone()))
        };
        if let Some(event) = found(&self.read) {
            return Ok(Some(event));
        }
        self.read.clear();
        for item in store.backend().changes(at.0, at.1).take(READ_ON + 1) {
            let (k, v) = item?;
            if let Some(pos) = log_position(&k) {
                self.read.push((pos, k, v));
            }
        }
        Ok(found(&self.read))
    }
}

/// The object of the create event at `at` of machine `key`, logged by
/// reference to record `id`: see the module doc.
pub(crate) fn object(
    store: &Store,
    id: u32,
    key: &str,
    at: (u64, u32),
    later: &mut Later,
) -> Result<Value> {
    let corrupt = |reason: String| Error::Corrupt {
        key: format!("change log {}.{}", at.0, at.1),
        reason,
    };
    if let Some((bytes, revision)) = store.machine_record_of(id)? {
        if revision == at.0 {
            return serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()));
        }
    }
    let next = match later.next_after(key, at) {
        Some(next) => Some(next),
        None => {
            later.scan(store, at)?;
            later.next_after(key, at)
        }
    };
    let Some(next) = next else {
        return Err(corrupt(format!(
            "machine {key}'s record changed after its create, and no later event says how"
        )));
    };
    let Some((k, v)) = later.event(store, next)? else {
        // Trimmed since the scan: so was the create, oldest first.
        return Err(Error::Compacted {
            requested: at.0,
            oldest: store.oldest_logged()?.unwrap_or(at.0 + 1),
        });
    };
    let (event, _) = decode_event(&k, &v)?;
    match (event.action, event.previous) {
        (Action::Update, Some(before)) => Ok(before),
        (Action::Delete, _) => Ok(event.object),
        _ => Err(corrupt(format!(
            "machine {key}'s next event, at {}.{}, is not an update or a delete",
            next.0, next.1
        ))),
    }
}
