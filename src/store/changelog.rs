//! The change log's place in a write: every write's events go into its own
//! batch, grouped into records, and the oldest records beyond the retention
//! leave in that batch.
//!
//! Owns: the log's records (which events share one, their keys and their
//! framing), its length record, trimming, and reading the records back as
//! events ([`events`], behind [`Backend::changes`]). Must not: encode or
//! decode an event's own fields (the watch module owns that format) or
//! read the log for watchers (they read the engine's feed of committed
//! changes, [`Backend::changes`]).
//!
//! # Records
//! A write's events are stored in records of consecutive events of its
//! revision, each at most [`RECORD_BYTES`] unless one event alone is larger:
//! a param write is one record of one event, an import of 10,000 new
//! machines about 200 (a machine's create names its record, about 125
//! bytes an event: `crate::watch`), of 10,000 replaced ones more (each
//! update holds the machine after and before). The
//! engine's cost of a write follows its records, not its events (a 100k
//! import committed in 0.9–1.4 s more than its index build took with one
//! record per event, 0.06–0.11 s more with records; `docs/write-path.md`,
//! stop 35). A record's key names its revision, first sequence and count
//! (`super::layout`); its value is a five-byte header (a mark and the
//! record's format, [`HEADER`]), then each event's encoding after its
//! length (u32, big-endian). A store written before records had one event per key,
//! without a count; both are read, and the old ones leave as they are
//! trimmed. A record of 2 KiB of events or more is stored compressed, as
//! one LZ4 block ([`packed`]): an import's events repeated its machines'
//! records before creates named them, and compressed they added about a
//! fifth to the bytes the import writes instead of doubling them (a 100k
//! import in raw sled batches: documents 0.86–1.13 s, with plain records
//! 1.29–1.40 s, with compressed ones 1.12–1.23 s); a replacing import's
//! updates still do. LZ4 because it compresses at memory speed (lz4_flex,
//! in safe Rust); what a better ratio would save is smaller than what the
//! slower compressor would cost on the writer's critical path.
//!
//! # Trimming
//! A write that takes the log more than a [`TRIM_SLACK`]th past its
//! retention removes whole records, oldest first, as long as at least
//! `retain` events stay: the log keeps between `retain` and `retain` plus
//! a 64th of it plus one record's events. Trimming in bursts (about 1,560
//! one-event records at once for the default 100,000) spares the writes
//! between a remove each and the length record (`s:logn`), which only a
//! trimming write rewrites: each is one more sled insert for the storage
//! thread, and a param write at 1M is bound by that thread's inserts and
//! the bytes sled writes for them (`docs/write-path.md`, stop 42). The
//! length record holds the log's events as of the revision that wrote it;
//! an open adds the events of the records after that revision
//! ([`stored_len`]): a write that logs more than the slack since the
//! record was written writes it too, so an open reads at most the slack's
//! worth of keys (the log's length in a young store, which has never
//! trimmed, is read the same way). A writer on an engine shared with
//! other servers (etcd) trims every write and writes the length record
//! every time: a burst of removes could exceed the operations one etcd
//! transaction takes (128 by default), and the others' catch-ups read no
//! log. The
//! keys a trim removes come from [`Trim`], a queue of the log's oldest records, so a
//! write's trim is a remove with no read of its own. The records this
//! writer appends join the queue as they commit (their keys are known);
//! the part of the log written before this process opened it is read from
//! the engine [`READ_AHEAD`] keys at a time, until the reads reach the
//! first record this writer appended: from then on the log is never read
//! again. Only writers touch the log, under the writer lock, and new
//! records sort after every queued key, so the queue stays the log's head.
//!
//! A store that writes index checkpoints also keeps every record after the
//! revision of the checkpoint in place (its pin, [`Retention::pin`]): the
//! next open brings that checkpoint forward by replaying them, so the log
//! must bridge from it until the next one is in place, however long that
//! one takes. Before the pin, a running store had to checkpoint at half
//! the retention to leave the log room; now it checkpoints at the whole
//! retention, half as often (an import of 1M machines wrote 20, each
//! encoding the whole index, and 13–15% of its CPU time went to them). A
//! log [`PIN_LIMIT`] times its retention lets go of the pin: checkpoints
//! that keep failing must not grow it without bound, and the next open
//! then rebuilds.

use std::collections::VecDeque;

use super::backend::{Backend, Batch, Scan};
use super::layout::{log_key, log_record, log_record_key, show_key, LOG_LEN_KEY, LOG_PREFIX};
use crate::error::{Error, Result};
use crate::timing;
use crate::watch::{encode_event_into, Change};

/// How many of the oldest log keys one read fetches.
pub(super) const READ_AHEAD: usize = 1024;

/// The most bytes a record's events take, unless one event alone is larger.
/// sled keeps about 17 records in a leaf and writes a leaf over 128 KiB (a
/// quarter of its segment) to a blob file of its own, which costs a file
/// and a directory fsync of its own (`vendor/sled/PATCHES.md` §10): 17
/// records of this size stay under that.
pub(super) const RECORD_BYTES: usize = 6 * 1024;

/// What a record's value starts with: a mark, then its format. A build
/// from before the mark reads it as an event's length that runs past the
/// record's end and reports the record as `Corrupt`, so an older build
/// never reads events it does not understand (format 1: an update's event
/// may hold the patch that undoes it instead of the previous object). A
/// record without the mark is from before it (format 0), and still read.
const HEADER: [u8; 5] = [0xFF, 0xFF, 0xFF, 0xFF, PLAIN];
/// The format of a record whose events follow its header as they are.
const PLAIN: u8 = 1;
/// The format of a compressed record ([`packed`]): after the header, the
/// length of its events' bytes (u32, big-endian), then those bytes as one
/// LZ4 block. A build that reads format 1 only reports it as newer.
const LZ4: u8 = 2;
/// The newest record format this build reads.
const RECORD_FORMAT: u8 = LZ4;
/// Records with fewer bytes of events are stored as they are: a one-event
/// record (a param write's, about 600 bytes) would pay the compression's
/// time (about a microsecond) for a few hundred bytes.
const PACK_FROM: usize = 2048;

/// `record` (a plain record) as it is stored: compressed when its events
/// take [`PACK_FROM`] bytes or more and that saves an eighth of them. An
/// import's events repeat each machine's record; the same keys in each of
/// about a dozen machines make a record compress about 4.8× (the report's
/// fleet), so the log no longer doubles the bytes an import writes.
fn packed(record: Vec<u8>) -> Vec<u8> {
    let events = &record[HEADER.len()..];
    if events.len() < PACK_FROM {
        return record;
    }
    let Ok(len) = u32::try_from(events.len()) else {
        return record;
    };
    let at = HEADER.len() + 4;
    let mut out = vec![0; at + lz4_flex::block::get_maximum_output_size(events.len())];
    let Ok(size) = lz4_flex::block::compress_into(events, &mut out[at..]) else {
        return record;
    };
    if at + size > record.len() - record.len() / 8 {
        return record;
    }
    out.truncate(at + size);
    out[..4].copy_from_slice(&HEADER[..4]);
    out[4] = LZ4;
    out[5..at].copy_from_slice(&len.to_be_bytes());
    out
}

/// A record's events (`value`: the record as stored) and the offset of
/// the first, or why this build cannot read them.
fn record_events(value: Vec<u8>) -> std::result::Result<(Vec<u8>, usize), String> {
    match value.get(..4) {
        Some(mark) if mark == &HEADER[..4] => match value.get(4) {
            Some(&f) if f <= PLAIN => Ok((value, HEADER.len())),
            Some(&LZ4) => unpacked(&value).map(|events| (events, 0)),
            Some(f) => Err(format!(
                "a change-log record in format {f}, newer than this build reads ({RECORD_FORMAT})"
            )),
            None => Err("a change-log record's header is cut short".into()),
        },
        _ => Ok((value, 0)),
    }
}

/// The events of a compressed record, checked to be as long as it says.
fn unpacked(value: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let at = HEADER.len() + 4;
    let (Some(len), Some(block)) = (value.get(HEADER.len()..at), value.get(at..)) else {
        return Err("a compressed change-log record's header is cut short".into());
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    // LZ4 expands a block at most about 255 times: a larger length is
    // damage, and must not size an allocation.
    if len > block.len().saturating_mul(255) {
        return Err(format!(
            "a compressed change-log record says {len} bytes, more than its {} can hold",
            block.len()
        ));
    }
    let mut events = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut events) {
        Ok(n) if n == len => Ok(events),
        Ok(n) => Err(format!(
            "a compressed change-log record holds {n} bytes, not the {len} it says"
        )),
        Err(e) => Err(format!(
            "a compressed change-log record does not decompress: {e}"
        )),
    }
}

/// One record of the log: events `first .. first + count` of `rev`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Record {
    rev: u64,
    first: u32,
    count: u32,
    /// One event under its own 13-byte key (the layout before records).
    single_key: bool,
}

impl Record {
    fn from_key(key: &[u8]) -> Result<Record> {
        match log_record(key) {
            Some((rev, first, count)) => Ok(Record {
                rev,
                first,
                count,
                single_key: key.len() == 13,
            }),
            None => Err(Error::Corrupt {
                key: show_key(key),
                reason: "not a change-log key".into(),
            }),
        }
    }

    fn key(self) -> Vec<u8> {
        if self.single_key {
            log_key(self.rev, self.first).to_vec()
        } else {
            log_record_key(self.rev, self.first, self.count).to_vec()
        }
    }
}

/// The log's oldest records, oldest first (a prefix of the log's keys), and
/// the records this writer appended beyond them.
#[derive(Default)]
pub(crate) struct Trim {
    head: VecDeque<Record>,
    /// Events in `head`.
    queued: usize,
    /// This writer's records that `head` has not reached yet (read from
    /// the engine, the log between them would be); empty once `whole`.
    tail: VecDeque<Record>,
    /// The queue holds every record in the log: new records join `head` as
    /// they commit, so it is never read again.
    whole: bool,
    /// Reads of the log's head so far (for tests).
    pub(super) reads: usize,
}

impl Trim {
    /// Makes sure the queue holds at least the `n` oldest events, or every
    /// record there is.
    fn fill(&mut self, backend: &dyn Backend, n: usize) -> Result<()> {
        while self.queued < n && !self.whole {
            // The last queued key plus a zero byte sorts right after it and
            // before every later key (no two records share a revision and
            // first sequence).
            let from = match self.head.back() {
                Some(r) => [&r.key()[..], &[0]].concat(),
                None => LOG_PREFIX.to_vec(),
            };
            let want = (n - self.queued).max(READ_AHEAD);
            self.reads += 1;
            let keys = backend.scan_keys(LOG_PREFIX, &from, want)?;
            let got = keys.len();
            let first_appended = self.tail.front().map(|r| (r.rev, r.first));
            for key in keys {
                let r = Record::from_key(&key)?;
                if first_appended.is_some_and(|first| (r.rev, r.first) >= first) {
                    // The rest of the log is what this writer appended.
                    self.join_tail();
                    return Ok(());
                }
                self.queued += r.count as usize;
                self.head.push_back(r);
            }
            if got < want {
                self.join_tail();
            }
        }
        Ok(())
    }

    /// The queue has reached the first record this writer appended.
    fn join_tail(&mut self) {
        for r in self.tail.drain(..) {
            self.queued += r.count as usize;
            self.head.push_back(r);
        }
        self.whole = true;
    }

    /// The oldest queued records holding at most `events` events in all.
    fn oldest(&self, events: usize) -> impl Iterator<Item = Record> + '_ {
        let mut left = events;
        self.head.iter().copied().take_while(move |r| {
            let fits = r.count as usize <= left;
            left = left.saturating_sub(r.count as usize);
            fits
        })
    }

    /// Forgets the `n` oldest queued records.
    fn drop_oldest(&mut self, n: usize) {
        for _ in 0..n {
            match self.head.pop_front() {
                Some(r) => self.queued -= r.count as usize,
                None => break,
            }
        }
    }

    /// Once a batch committed: forgets the records it removed and takes in
    /// the ones it added.
    pub(super) fn committed(&mut self, staged: &Staged) {
        self.drop_oldest(staged.trimmed);
        for &r in &staged.added {
            if self.whole {
                self.head.push_back(r);
                self.queued += r.count as usize;
            } else {
                self.tail.push_back(r);
            }
        }
    }
}

impl Trim {
    /// Brings the queue in line with the log after other servers' writes
    /// came in (a catch-up on a shared engine). They trim from the same
    /// head, so what they removed is a prefix of this queue: queued records
    /// are dropped from the front while they are gone (a point read each,
    /// usually one or two), instead of reading the head again — on etcd 3.4
    /// a range read costs as much as the whole log. Their new records sit
    /// between this writer's, so the records this writer appended are no
    /// longer the log's end, and a queue that held the whole log is no
    /// longer its head: those start over, read again when next needed. A
    /// long run of gone records means the queue is far behind: it starts
    /// over.
    pub(super) fn after_others(&mut self, backend: &dyn Backend) -> Result<()> {
        const MOST_CHECKS: usize = 64;
        self.tail.clear();
        if std::mem::take(&mut self.whole) {
            self.head.clear();
            self.queued = 0;
            return Ok(());
        }
        for _ in 0..MOST_CHECKS {
            match self.head.front() {
                Some(r) if backend.get(&r.key())?.is_none() => self.drop_oldest(1),
                _ => return Ok(()),
            }
        }
        self.head.clear();
        self.queued = 0;
        Ok(())
    }
}

/// The log's length in events, as the writer keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LogLen {
    /// Events in the log.
    pub(crate) events: usize,
    /// Events logged after the length record was written, which an open
    /// counts from their records' keys; `usize::MAX` for a record in the
    /// form before stop 42 (exact as of the last write, written by every
    /// write), which the next write must write again in today's form, or
    /// a later open would count the records after it twice.
    unsaved: usize,
}

/// The length record's value: the log's events as of revision `rev`.
fn len_record(events: usize, rev: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&(events as u64).to_be_bytes());
    v[8..].copy_from_slice(&rev.to_be_bytes());
    v
}

/// The log's length at revision `rev`: the length record, plus the events
/// of the records written after it (a write that does not trim leaves the
/// record as it was; see "Trimming"). An absent record is an empty log at
/// revision 0, so every record counts.
pub(super) fn stored_len(backend: &dyn Backend, rev: u64) -> Result<LogLen> {
    let corrupt = |reason: &str| Error::Corrupt {
        key: show_key(LOG_LEN_KEY),
        reason: reason.into(),
    };
    let word = |b: &[u8]| b.try_into().map(u64::from_be_bytes);
    let (events, as_of) = match backend.get(LOG_LEN_KEY)? {
        None => (0, 0),
        Some(b) if b.len() == 8 => {
            let events = word(&b).map_err(|_| corrupt("not 8 bytes"))?;
            let events = usize::try_from(events).map_err(|_| corrupt("too large"))?;
            return Ok(LogLen {
                events,
                unsaved: usize::MAX,
            });
        }
        Some(b) if b.len() == 16 => match (word(&b[..8]), word(&b[8..])) {
            (Ok(events), Ok(as_of)) => (events, as_of),
            _ => return Err(corrupt("not 16 bytes")),
        },
        Some(b) => {
            return Err(corrupt(&format!(
                "{} bytes, where a length record has 8 or 16",
                b.len()
            )))
        }
    };
    let events = usize::try_from(events).map_err(|_| corrupt("too large"))?;
    let unsaved = if as_of < rev {
        events_from(backend, &log_key(as_of + 1, 0))?
    } else {
        0
    };
    Ok(LogLen {
        events: events + unsaved,
        unsaved,
    })
}

/// The events of the log's records from key `from` on, counted from
/// their keys.
pub(super) fn events_from(backend: &dyn Backend, from: &[u8]) -> Result<usize> {
    let mut events = 0;
    for key in backend.scan_keys(LOG_PREFIX, from, usize::MAX)? {
        events += Record::from_key(&key)?.count as usize;
    }
    Ok(events)
}

/// What [`stage`] put in a batch, for [`Trim::committed`] once it commits.
pub(crate) struct Staged {
    /// The log after the write.
    pub(super) log: LogLen,
    /// Queued records the batch removes.
    trimmed: usize,
    /// Records the batch adds.
    added: Vec<Record>,
}

/// A write trims the log once it holds more than `retain` plus this
/// fraction of `retain` events, and writes the length record once that
/// many were logged since it was (see "Trimming").
const TRIM_SLACK: usize = 64;

/// The log keeps the records after the checkpoint in place only while it
/// holds at most this many times its retention: a store whose checkpoints
/// keep failing must not grow its log without bound (its next open
/// rebuilds the indexes instead).
const PIN_LIMIT: usize = 4;

/// What a write's trim leaves in the log.
pub(super) struct Retention {
    /// Events kept at least.
    pub(super) retain: usize,
    /// Every record after this revision stays: the checkpoint's in place,
    /// which the next open brings forward by replaying them.
    pub(super) pin: u64,
    /// The engine is shared with other servers (etcd): every write trims
    /// and writes the length record, as a burst could exceed what one etcd
    /// transaction takes, and the others' catch-ups would read the log.
    pub(super) shared: bool,
}

/// Stages `changes` as the events of `batch`'s revision and, once the log
/// holds more than [`TRIM_SLACK`] beyond the retention, trims it to no
/// fewer than that many events (the oldest records first: keys sort by
/// revision), keeping the records after the pin (see "Trimming"). `log` is
/// the log before the write.
pub(super) fn stage(
    backend: &dyn Backend,
    trim: &mut Trim,
    batch: &mut Batch,
    changes: &[Change],
    log: LogLen,
    keep: Retention,
) -> Result<Staged> {
    let Retention {
        retain,
        pin,
        shared,
    } = keep;
    let rev = batch.rev;
    let too_many = || Error::invalid("write", "too many objects in one write");
    let mut added = Vec::new();
    let mut close = |batch: &mut Batch, first: u32, end: u32, value: Vec<u8>| {
        let count = end - first;
        batch.put(log_record_key(rev, first, count), packed(value));
        added.push(Record {
            rev,
            first,
            count,
            single_key: false,
        });
    };
    let mut value = HEADER.to_vec();
    let mut first = 0u32;
    let mut end = 0u32;
    for c in changes {
        let seq = end;
        end = seq.checked_add(1).ok_or_else(too_many)?;
        let at = value.len();
        value.extend_from_slice(&[0; 4]);
        encode_event_into(&mut value, rev, seq, c);
        let len = u32::try_from(value.len() - at - 4).map_err(|_| too_many())?;
        value[at..at + 4].copy_from_slice(&len.to_be_bytes());
        if value.len() > RECORD_BYTES && at > HEADER.len() {
            // This event starts the next record.
            let next = [&HEADER[..], &value[at..]].concat();
            value.truncate(at);
            close(batch, first, seq, std::mem::replace(&mut value, next));
            first = seq;
        }
    }
    if value.len() > HEADER.len() {
        close(batch, first, end, value);
    }
    timing::mark("log: event encode");
    let slack = if shared { 0 } else { retain / TRIM_SLACK };
    let excess = (log.events + changes.len()).saturating_sub(retain);
    let mut trimmed = 0;
    let mut removed = 0;
    let pin = match log.events > retain.saturating_mul(PIN_LIMIT) {
        true => u64::MAX,
        false => pin,
    };
    if excess > slack {
        trim.fill(backend, excess)?;
        for r in trim.oldest(excess).take_while(|r| r.rev <= pin) {
            batch.remove(r.key());
            trimmed += 1;
            removed += r.count as usize;
        }
    }
    let events = log.events + changes.len() - removed;
    let unsaved = log.unsaved.saturating_add(changes.len());
    let save = trimmed > 0 || unsaved > slack;
    if save {
        batch.put(LOG_LEN_KEY, len_record(events, rev));
    }
    timing::mark("log: trim");
    Ok(Staged {
        log: LogLen {
            events,
            unsaved: if save { 0 } else { unsaved },
        },
        trimmed,
        added,
    })
}

/// The position of the log's first record, if it holds any.
pub(super) fn first_position(backend: &dyn Backend) -> Result<Option<(u64, u32)>> {
    match backend.scan_keys(LOG_PREFIX, LOG_PREFIX, 1)?.first() {
        Some(key) => Record::from_key(key).map(|r| Some((r.rev, r.first))),
        None => Ok(None),
    }
}

/// Whether the log holds the first event of revision `rev`.
pub(super) fn logs_revision(backend: &dyn Backend, rev: u64) -> Result<bool> {
    match backend.scan_keys(LOG_PREFIX, &log_key(rev, 0), 1)?.first() {
        Some(key) => Record::from_key(key).map(|r| (r.rev, r.first) == (rev, 0)),
        None => Ok(false),
    }
}

/// The events in the log `records` (a scan of its records in key order
/// that starts at or before the record holding `from`), from position
/// `from` on: one item per event, keyed by its position (`log_key`).
pub(crate) fn events(records: Scan<'_>, from: (u64, u32)) -> Scan<'_> {
    Box::new(Events {
        records,
        from,
        open: None,
    })
}

/// A record being read: its key, revision, next sequence, last sequence
/// plus one, value, and the offset of its next event.
struct Open {
    key: Vec<u8>,
    rev: u64,
    seq: u32,
    end: u32,
    value: Vec<u8>,
    at: usize,
}

struct Events<'a> {
    records: Scan<'a>,
    from: (u64, u32),
    open: Option<Open>,
}

impl Events<'_> {
    /// The next event of the open record, `None` once it is read whole.
    fn next_framed(&mut self) -> Option<Result<(Vec<u8>, Vec<u8>)>> {
        let o = self.open.as_mut()?;
        let corrupt = |o: &Open, reason: &str| Error::Corrupt {
            key: show_key(&o.key),
            reason: reason.into(),
        };
        while o.at < o.value.len() {
            let body = o.at + 4;
            let Some(len) = o
                .value
                .get(o.at..body)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_be_bytes(b) as usize)
                .filter(|len| body + len <= o.value.len())
            else {
                let e = corrupt(o, "a change-log record's framing runs past its end");
                self.open = None;
                return Some(Err(e));
            };
            if o.seq >= o.end {
                let e = corrupt(o, "a change-log record holds more events than its key says");
                self.open = None;
                return Some(Err(e));
            }
            let at = (o.rev, o.seq);
            o.seq += 1;
            o.at = body + len;
            if at >= self.from {
                let event = o.value[body..body + len].to_vec();
                return Some(Ok((log_key(at.0, at.1).to_vec(), event)));
            }
        }
        let short = o.seq != o.end;
        let e = short.then(|| {
            corrupt(
                o,
                "a change-log record holds fewer events than its key says",
            )
        });
        self.open = None;
        e.map(Err)
    }
}

impl Iterator for Events<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.next_framed() {
                return Some(item);
            }
            let (key, value) = match self.records.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            let r = match Record::from_key(&key) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            let end = r.first.saturating_add(r.count);
            if (r.rev, end) <= self.from {
                continue;
            }
            if r.single_key {
                return Some(Ok((key, value)));
            }
            let (value, at) = match record_events(value) {
                Ok(events) => events,
                Err(reason) => {
                    return Some(Err(Error::Corrupt {
                        key: show_key(&key),
                        reason,
                    }))
                }
            };
            self.open = Some(Open {
                key,
                rev: r.rev,
                seq: r.first,
                end,
                value,
                at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::sync::Arc;

    use super::*;
    use crate::model::Machine;
    use crate::store::layout::log_position;
    use crate::store::memory_backend::MemoryBackend;
    use crate::store::stall;
    use crate::store::{Options, Store};

    fn stores(retain: usize) -> Vec<(&'static str, Store)> {
        let options = Options {
            log_retain: retain,
            ..Options::default()
        };
        vec![
            ("sled", Store::temporary_with(options.clone()).unwrap()),
            ("memory", Store::in_memory_with(options).unwrap()),
        ]
    }

    /// The log's events' positions, as keys.
    fn logged(s: &Store) -> Vec<Vec<u8>> {
        s.backend()
            .changes(0, 0)
            .map(|item| item.unwrap().0)
            .collect()
    }

    /// The log's records' keys.
    fn records(s: &Store) -> Vec<Vec<u8>> {
        s.backend()
            .scan_prefix(LOG_PREFIX)
            .map(|item| item.unwrap().0)
            .collect()
    }

    #[test]
    fn another_writers_trims_drop_from_the_front_of_the_queue() {
        let db = MemoryBackend::default();
        let keys: Vec<Vec<u8>> = (0..2000u64).map(|r| log_key(r, 0).to_vec()).collect();
        let mut rev = 0;
        let mut commit = |f: &dyn Fn(&mut Batch)| {
            let mut b = Batch {
                expect: rev,
                rev: rev + 1,
                ..Batch::default()
            };
            f(&mut b);
            db.commit(b).unwrap();
            rev += 1;
        };
        commit(&|b| keys.iter().for_each(|k| b.put(k.clone(), b"e".to_vec())));
        let mut t = Trim::default();
        t.fill(&db, 10).unwrap();
        assert_eq!((t.queued, t.whole), (READ_AHEAD, false));
        // Another server trimmed the three oldest: one read each, then the
        // first key still there.
        commit(&|b| keys[..3].iter().for_each(|k| b.remove(k.clone())));
        t.after_others(&db).unwrap();
        assert_eq!(t.oldest(1).next().map(Record::key), Some(keys[3].clone()));
        assert_eq!(t.queued, READ_AHEAD - 3);
        assert_eq!(t.reads, 1);
        // Far behind: the queue starts over, read again when next needed.
        commit(&|b| keys[3..200].iter().for_each(|k| b.remove(k.clone())));
        t.after_others(&db).unwrap();
        assert_eq!(t.queued, 0);
        t.fill(&db, 1).unwrap();
        assert_eq!(t.oldest(1).next().map(Record::key), Some(keys[200].clone()));
    }

    #[test]
    fn trimming_keeps_retain_events_at_most_a_64th_more_and_reads_only_the_log_this_writer_did_not_write(
    ) {
        let retain = READ_AHEAD + 10;
        let most = retain + retain / TRIM_SLACK;
        for (name, s) in stores(retain) {
            let m = s.machines().create(Machine::new("m")).unwrap();
            for i in 0..retain {
                s.machines().set_param(&m.name, "old", json!(i)).unwrap();
            }
            // A writer that did not write that log, as after a reopen.
            *s.inner.writer.lock() = Trim::default();
            let writes = 3 * READ_AHEAD;
            for i in 0..writes {
                s.machines().set_param(&m.name, "n", json!(i)).unwrap();
                let n = logged(&s).len();
                assert!((retain..=most).contains(&n), "{name}: {n} after write {i}");
                assert_eq!(s.state().log.events, n, "{name}");
            }
            // The newest writes' events, nothing older.
            let rev = s.revision();
            let n = logged(&s).len() as u64;
            let want: Vec<Vec<u8>> = (rev + 1 - n..=rev)
                .map(|r| log_key(r, 0).to_vec())
                .collect();
            assert_eq!(logged(&s), want, "{name}");
            // The older records were read, 1,024 and then the rest up to the
            // first one this writer appended; its own, never.
            assert_eq!(s.inner.writer.lock().reads, 2, "{name}");
            // A watch from the oldest kept revision replays them.
            let mut w = s.watch(None, None, Some(rev - 4)).unwrap();
            for r in rev - 4..=rev {
                let e = w.poll().unwrap().unwrap();
                assert_eq!(e.revision, r, "{name}");
            }
            s.verify_indexes().unwrap();
        }
    }

    /// `(revision, sequence)` of each key.
    fn positions(keys: &[Vec<u8>]) -> Vec<(u64, u32)> {
        keys.iter().map(|k| log_position(k).unwrap()).collect()
    }

    #[test]
    fn an_import_is_logged_in_records_and_trimmed_a_whole_record_at_a_time() {
        let retain = READ_AHEAD + 10;
        for (name, s) in stores(retain) {
            // The store's first write logs the global profile.
            let mut written = 1;
            for round in 0..4 {
                let batch: Vec<Machine> = (0..700)
                    .map(|i| Machine::new(format!("m{round}-{i}")))
                    .collect();
                s.machines().import(batch).unwrap();
                written += 700;
                let events = positions(&logged(&s));
                let n = events.len();
                assert_eq!(n, s.state().log.events, "{name}: round {round}");
                // A few records per import, each within its size bound.
                let records: Vec<(u64, u32, u32)> =
                    records(&s).iter().map(|k| log_record(k).unwrap()).collect();
                assert!(records.len() * 10 < n, "{name}: {} records", records.len());
                let largest = records.iter().map(|r| r.2 as usize).max().unwrap();
                if written < retain {
                    assert_eq!(n, written, "{name}: round {round}");
                } else {
                    let most = retain + retain / TRIM_SLACK + largest;
                    assert!(n >= retain && n < most, "{name}: {n} kept");
                }
                // The newest events, without a gap, the last import whole.
                let rev = s.revision();
                assert_eq!(events.last(), Some(&(rev, 699)), "{name}");
                // A read from inside a record starts at its event.
                let from: Vec<_> = s.backend().changes(rev, 350).take(2).collect();
                let from: Vec<_> = from.into_iter().map(|e| e.unwrap().0).collect();
                assert_eq!(positions(&from), [(rev, 350), (rev, 351)], "{name}");
                for pair in events.windows(2) {
                    let [(r0, q0), (r1, q1)] = [pair[0], pair[1]];
                    // Revision 1 is the global profile's one event.
                    let last = if r0 == 1 { 0 } else { 699 };
                    assert!(
                        (r1, q1) == (r0, q0 + 1) || (r1, q1, q0) == (r0 + 1, 0, last),
                        "{name}: {pair:?}"
                    );
                }
            }
            s.verify_indexes().unwrap();
        }
    }

    /// Options of a store in memory that keeps `retain` events.
    fn memory_options(retain: usize) -> Options {
        Options {
            log_retain: retain,
            durable: false,
            ..Options::default()
        }
    }

    /// A store started on the engine `db`, as an open starts one.
    fn start_on(db: &Arc<MemoryBackend>, options: &Options) -> Result<Store> {
        let guard = stall::Guard::inline(options.stall_timeout);
        Store::start(db.clone(), guard, options.clone(), None, None)
    }

    /// Rewrites the log of the store on `db` as the layout before records
    /// kept it: one event per 13-byte key.
    fn to_single_keys(db: &dyn Backend) {
        let rev = db.revision().unwrap();
        let mut b = Batch {
            expect: rev,
            rev,
            ..Batch::default()
        };
        for item in db.scan_prefix(LOG_PREFIX) {
            b.remove(item.unwrap().0);
        }
        for item in db.changes(0, 0) {
            let (k, v) = item.unwrap();
            b.put(k, v);
        }
        db.commit(b).unwrap();
    }

    #[test]
    fn a_log_of_one_event_per_key_is_read_and_trimmed_beside_records() {
        let options = memory_options(40);
        let start = |db: &Arc<MemoryBackend>| start_on(db, &options).unwrap();
        let db = Arc::new(MemoryBackend::default());
        let s = start(&db);
        for round in 0..3 {
            let batch = (0..10).map(|i| Machine::new(format!("m{round}-{i}")));
            s.machines().import(batch.collect()).unwrap();
        }
        let before = logged(&s);
        drop(s);
        to_single_keys(&*db);
        // The first write's event (the global profile) and the imports'.
        assert_eq!(records(&start(&db)).len(), 31);
        let s = start(&db);
        assert_eq!(logged(&s), before);
        // A watch from the middle of a revision, across both layouts.
        let m = s.machines().create(Machine::new("n")).unwrap();
        let mut w = s.watch(None, None, Some(2)).unwrap();
        let first = w.poll().unwrap().unwrap();
        assert_eq!((first.revision, first.seq, first.key.len()), (2, 0, 36));
        for _ in 0..29 {
            w.poll().unwrap().unwrap();
        }
        assert_eq!(w.poll().unwrap().unwrap().key, m.uuid.to_string());
        // Writes trim the single keys first, one event each, then records.
        for i in 0..40 {
            s.machines().set_param(&m.name, "n", json!(i)).unwrap();
            let want = (33 + i).min(40);
            assert_eq!(logged(&s).len(), want, "after write {i}");
            assert_eq!(s.state().log.events, want);
        }
        assert!(records(&s).iter().all(|k| k.len() == 17));
        s.verify_indexes().unwrap();
    }

    /// The length record's value, if there is one.
    fn length_record(db: &dyn Backend) -> Option<Vec<u8>> {
        db.get(LOG_LEN_KEY).unwrap()
    }

    #[test]
    fn the_log_length_is_written_with_trims_and_every_64th_and_counted_again_at_open() {
        let retain = 640;
        let options = memory_options(retain);
        let start = |db: &Arc<MemoryBackend>| start_on(db, &options).unwrap();
        let db = Arc::new(MemoryBackend::default());
        let s = start(&db);
        let m = s.machines().create(Machine::new("m")).unwrap();
        let slack = retain / TRIM_SLACK;
        // Below the retention, one event a revision: the record is written
        // once `slack` more events were logged, not by every write.
        let mut written = Vec::new();
        for i in 0..retain {
            s.machines().set_param(&m.name, "n", json!(i)).unwrap();
            let rev = s.revision();
            // None yet: an absent record counts every record.
            let Some(saved) = length_record(&*db) else {
                assert!(rev <= slack as u64, "none at {rev}");
                continue;
            };
            let (events, at) = saved.split_at(8);
            let at = u64::from_be_bytes(at.try_into().unwrap());
            assert_eq!(events, at.to_be_bytes(), "{i}");
            assert!(rev - at <= slack as u64, "written at {at}, now {rev}");
            if written.last() != Some(&at) {
                written.push(at);
            }
        }
        assert_eq!(written.len(), retain / (slack + 1));
        assert_eq!(s.state().log.events, retain + 2);
        // The write that takes the log past the slack trims it and writes
        // the length record, as of its revision.
        for i in 0..slack - 1 {
            s.machines().set_param(&m.name, "n", json!(i)).unwrap();
        }
        let mut want = len_record(retain, s.revision()).to_vec();
        assert_eq!(length_record(&*db), Some(want.clone()));
        s.machines().set_param(&m.name, "n", json!(-1)).unwrap();
        assert_eq!(length_record(&*db), Some(want.clone()));
        // A reopen counts the records after it (a crash is a drop here: the
        // memory engine holds what was committed).
        let n = logged(&s).len();
        drop(s);
        let s = start(&db);
        assert_eq!((s.state().log.events, n), (retain + 1, retain + 1));
        // A length record of the form before (every write wrote it, exact)
        // is taken as it is and written again by the next write.
        drop(s);
        let rev = db.revision().unwrap();
        let mut b = Batch {
            expect: rev,
            rev,
            ..Batch::default()
        };
        b.put(LOG_LEN_KEY, ((retain + 1) as u64).to_be_bytes());
        db.commit(b).unwrap();
        let s = start(&db);
        assert_eq!(s.state().log.events, retain + 1);
        s.machines().set_param(&m.name, "n", json!(-2)).unwrap();
        want = len_record(retain + 2, s.revision()).to_vec();
        assert_eq!(length_record(&*db), Some(want));
        s.machines().set_param(&m.name, "n", json!(-3)).unwrap();
        let n = logged(&s).len();
        assert_eq!((s.state().log.events, n), (retain + 3, retain + 3));
        drop(s);
        assert_eq!(start(&db).state().log.events, retain + 3);
        // A length record of another size is reported, not guessed at.
        let mut b = Batch {
            expect: rev + 2,
            rev: rev + 2,
            ..Batch::default()
        };
        b.put(LOG_LEN_KEY, vec![0; 12]);
        db.commit(b).unwrap();
        match start_on(&db, &options) {
            Err(Error::Corrupt { key, reason }) => {
                assert_eq!(
                    (key.as_str(), reason.contains("12 bytes")),
                    ("s:logn", true)
                )
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_damaged_record_is_reported_not_read_past() {
        let db = MemoryBackend::default();
        let event = br#"{"Revision":1}"#;
        let framed = |n: usize| {
            let mut v = Vec::new();
            for _ in 0..n {
                v.extend_from_slice(&(event.len() as u32).to_be_bytes());
                v.extend_from_slice(event);
            }
            v
        };
        let mut cut = framed(2);
        cut.pop();
        // A compressed record of 200 events, then damaged three ways.
        let many = packed([&HEADER[..], &framed(200)].concat());
        assert_eq!(many[4], LZ4);
        let mut flipped = many.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x5A;
        let mut oversized = many.clone();
        oversized[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut shortened = many.clone();
        shortened[5..9].copy_from_slice(&100u32.to_be_bytes());
        let cases = [
            (
                log_record_key(1, 0, 200).to_vec(),
                many[..many.len() - 3].to_vec(),
                "does not decompress",
            ),
            (
                log_record_key(1, 0, 200).to_vec(),
                oversized,
                "more than its",
            ),
            (
                log_record_key(1, 0, 200).to_vec(),
                shortened,
                "compressed change-log record",
            ),
            (
                log_record_key(1, 0, 200).to_vec(),
                many[..7].to_vec(),
                "header is cut short",
            ),
            (log_record_key(1, 0, 2).to_vec(), cut, "runs past its end"),
            (log_record_key(1, 0, 1).to_vec(), framed(2), "more events"),
            (log_record_key(1, 0, 3).to_vec(), framed(2), "fewer events"),
            (b"cshort".to_vec(), framed(1), "not a change-log key"),
            (
                log_record_key(1, 0, 1).to_vec(),
                [&[0xFF, 0xFF, 0xFF, 0xFF, RECORD_FORMAT + 1][..], &framed(1)].concat(),
                "newer than this build reads",
            ),
            (
                log_record_key(1, 0, 1).to_vec(),
                HEADER[..4].to_vec(),
                "cut short",
            ),
        ];
        for (rev, (key, value, want)) in (0u64..).zip(cases) {
            let mut b = Batch {
                expect: rev,
                rev: rev + 1,
                ..Batch::default()
            };
            for item in db.scan_prefix(LOG_PREFIX) {
                b.remove(item.unwrap().0);
            }
            b.put(key, value);
            db.commit(b).unwrap();
            let read: Vec<_> = db.changes(0, 0).collect();
            match read.last() {
                Some(Err(Error::Corrupt { reason, .. })) => {
                    assert!(reason.contains(want), "{reason}")
                }
                other => panic!("{want}: {other:?}"),
            }
        }
        // A flipped bit inside the block: an error, or events that are
        // then checked like any record's (never a panic).
        let mut b = Batch {
            expect: 10,
            rev: 11,
            ..Batch::default()
        };
        for item in db.scan_prefix(LOG_PREFIX) {
            b.remove(item.unwrap().0);
        }
        b.put(log_record_key(1, 0, 200).to_vec(), flipped);
        db.commit(b).unwrap();
        let _ = db.changes(0, 0).collect::<Vec<_>>();
    }

    #[test]
    fn a_record_of_many_events_is_stored_compressed_and_reads_back_the_same() {
        let s = Store::temporary().unwrap();
        let machines: Vec<Machine> = (0..200)
            .map(|i| {
                let mut m = Machine::new(format!("node-{i:04}"));
                m.uuid = uuid::Uuid::from_u128(i + 1);
                m.params.insert("rack".into(), json!(i % 7));
                m
            })
            .collect();
        // Created, then replaced: creates name their records, and the
        // replacing import's updates hold each machine twice.
        s.machines().import(machines.clone()).unwrap();
        let replacing = s.revision() + 1;
        s.machines().import(machines).unwrap();
        let stored: Vec<Vec<u8>> = s
            .backend()
            .scan(LOG_PREFIX, &log_key(replacing, 0))
            .map(|kv| kv.unwrap().1)
            .collect();
        assert!(stored.len() > 2, "{} records", stored.len());
        let compressed = stored.iter().filter(|v| v[4] == LZ4).count();
        assert!(compressed > 0, "no record is compressed");
        let (mut events, mut packed_bytes) = (0, 0);
        for v in &stored {
            let (body, at) = record_events(v.clone()).unwrap();
            events += body.len() - at;
            packed_bytes += v.len();
        }
        assert!(
            packed_bytes * 2 < events,
            "{packed_bytes} of {events} bytes"
        );
        // Every machine's event comes back from the log, in order.
        let logged: Vec<Vec<u8>> = s
            .backend()
            .changes(replacing, 0)
            .map(|e| e.unwrap().1)
            .collect();
        assert_eq!(logged.len(), 200);
        for (i, event) in logged.iter().enumerate() {
            let name = format!("node-{i:04}");
            assert!(
                event.windows(name.len()).any(|w| w == name.as_bytes()),
                "event {i} does not hold {name}"
            );
        }
        // A small record (one param write) stays plain.
        s.machines()
            .set_param("node-0001", "rack", json!(1))
            .unwrap();
        let last = s
            .backend()
            .scan(LOG_PREFIX, LOG_PREFIX)
            .last()
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(last[4], PLAIN);
    }

    #[test]
    fn a_param_write_logs_the_patch_that_undoes_it_not_the_machine_before() {
        for (name, s) in stores(100) {
            s.machines().create(Machine::new("m")).unwrap();
            s.machines().set_param("m", "k", json!(1)).unwrap();
            s.machines().set_param("m", "k", json!(2)).unwrap();
            s.machines().remove_param("m", "k").unwrap();
            let events: Vec<String> = s
                .backend()
                .changes(0, 0)
                .map(|item| String::from_utf8(item.unwrap().1).unwrap())
                .collect();
            // The `global` profile's create, the machine's, then the three.
            let [_, _, added, replaced, removed] = &events[..] else {
                panic!("{name}: {events:?}");
            };
            let undo = |e: &str| e.split_once(r#""Undo":"#).map(|(_, u)| u.to_string());
            assert_eq!(
                undo(added).as_deref(),
                Some(
                    r#"[{"op":"remove","path":"/Params/k"},{"op":"replace","path":"/Revision","value":2}]}"#
                ),
                "{name}"
            );
            assert_eq!(
                undo(replaced).as_deref(),
                Some(
                    r#"[{"op":"replace","path":"/Params/k","value":1},{"op":"replace","path":"/Revision","value":3}]}"#
                ),
                "{name}"
            );
            assert!(
                !added.contains(r#""Previous""#) && !replaced.contains(r#""Previous""#),
                "{name}"
            );
            // Adding it back would not put it where it was: the whole machine.
            assert!(
                removed.contains(r#""Previous":"#) && undo(removed).is_none(),
                "{name}"
            );
        }
    }

    #[test]
    fn records_with_and_without_the_format_header_are_both_read() {
        let db = MemoryBackend::default();
        let framed = |revs: [u64; 2]| {
            let mut v = Vec::new();
            for r in revs {
                let event = format!("{{\"Revision\":{r}}}");
                v.extend_from_slice(&(event.len() as u32).to_be_bytes());
                v.extend_from_slice(event.as_bytes());
            }
            v
        };
        let mut b = Batch {
            expect: 0,
            rev: 2,
            ..Batch::default()
        };
        // Revision 1 as stops 35–37 wrote it (no header), 2 as this build.
        b.put(log_record_key(1, 0, 2), framed([1, 1]));
        b.put(
            log_record_key(2, 0, 2),
            [&HEADER[..], &framed([2, 2])].concat(),
        );
        db.commit(b).unwrap();
        let read: Vec<_> = db.changes(0, 0).map(|r| r.unwrap()).collect();
        let got: Vec<_> = read
            .iter()
            .map(|(k, v)| {
                (
                    log_position(k).unwrap(),
                    String::from_utf8_lossy(v).to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ((1, 0), r#"{"Revision":1}"#.to_string()),
                ((1, 1), r#"{"Revision":1}"#.to_string()),
                ((2, 0), r#"{"Revision":2}"#.to_string()),
                ((2, 1), r#"{"Revision":2}"#.to_string()),
            ]
        );
    }

    #[test]
    fn a_watch_that_keeps_up_is_never_told_the_log_moved_on() {
        for (name, s) in stores(3) {
            let m = s.machines().create(Machine::new("m")).unwrap();
            let mut w = s.watch(None, None, None).unwrap();
            for i in 0..50 {
                s.machines().set_param(&m.name, "n", json!(i)).unwrap();
                let e = w.poll().unwrap().expect("the write's event");
                assert_eq!(e.revision, s.revision(), "{name}");
                assert!(w.poll().unwrap().is_none(), "{name}");
            }
        }
    }

    #[test]
    fn a_watch_the_log_was_trimmed_past_fails_instead_of_skipping() {
        for (name, s) in stores(5) {
            let m = s.machines().create(Machine::new("m")).unwrap();
            let mut w = s.watch(None, None, None).unwrap();
            s.machines().set_param(&m.name, "n", json!(0)).unwrap();
            assert!(w.poll().unwrap().is_some(), "{name}");
            for i in 1..20 {
                s.machines().set_param(&m.name, "n", json!(i)).unwrap();
            }
            match w.poll() {
                Err(Error::Compacted { requested, oldest }) => {
                    assert_eq!(oldest, s.revision() - 4, "{name}");
                    assert!(requested < oldest, "{name}: {requested} {oldest}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_revision_trimmed_in_part_is_not_replayed() {
        for (name, s) in stores(6) {
            // Update events of about 2.2 KB (the machine after and before
            // the write): two to a record.
            let big = json!("x".repeat(900));
            let machines = (0..8).map(|i| {
                let mut m = Machine::new(format!("m{i}"));
                m.uuid = uuid::Uuid::from_u128(i + 1);
                m.params.insert("big".into(), big.clone());
                m
            });
            // Created, then replaced: the replacing import's updates hold
            // each machine whole.
            let machines: Vec<Machine> = machines.collect();
            s.machines().import(machines.clone()).unwrap();
            s.machines().import(machines).unwrap();
            let split = s.revision();
            let counts: Vec<u32> = records(&s)
                .iter()
                .filter_map(|k| log_record(k).filter(|r| r.0 == split).map(|r| r.2))
                .collect();
            assert_eq!(counts, [2, 2, 2, 2], "{name}");
            s.machines().create(Machine::new("c")).unwrap();
            // The log: split's last three records and the next revision's event.
            assert_eq!(logged(&s).len(), 7, "{name}");
            match s.watch(None, None, Some(split)) {
                Err(Error::Compacted { requested, oldest }) => {
                    assert_eq!((requested, oldest), (split, split + 1), "{name}")
                }
                other => panic!("{name}: {:?}", other.map(|_| "a watch")),
            }
            let mut w = s.watch(None, None, Some(split + 1)).unwrap();
            assert_eq!(w.poll().unwrap().unwrap().key.len(), 36, "{name}");
            assert!(w.poll().unwrap().is_none(), "{name}");
        }
    }
}
