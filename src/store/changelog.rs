//! The change log's place in a write: every write's events go into its own
//! batch, and the oldest events beyond the retention leave in that batch.
//!
//! Owns: the log's keys in a batch, its length record, and trimming. Must
//! not: encode or decode events (the watch module owns their format) or
//! read the log for watchers (they read the engine's feed of committed
//! changes, [`Backend::changes`]).
//!
//! # Trimming
//! A write that takes the log past its retention removes as many of the
//! oldest events in the same batch. Their keys come from [`Trim`], a queue
//! of the log's oldest keys held as runs of one revision's events, so a
//! write's trim is a remove with no read of its own. The events this writer
//! appends join the queue as they commit (their keys are known); the part
//! of the log written before this process opened it is read from the
//! engine [`READ_AHEAD`] keys at a time, until the reads reach the first
//! event this writer appended: from then on the log is never read again.
//! Only writers touch the log, under the writer lock, and new events sort
//! after every queued key, so the queue stays the log's head.

use std::collections::VecDeque;

use super::backend::{Backend, Batch};
use super::layout::{log_key, log_position, LOG_LEN_KEY, LOG_PREFIX};
use crate::error::{Error, Result};
use crate::timing;
use crate::watch::{encode_event, Change};

/// How many of the oldest log keys one read fetches.
pub(super) const READ_AHEAD: usize = 1024;

/// Events `seq .. seq + len` of revision `rev`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    rev: u64,
    seq: u32,
    len: u32,
}

impl Run {
    fn keys(self) -> impl Iterator<Item = [u8; 13]> {
        (self.seq..self.seq + self.len).map(move |q| log_key(self.rev, q))
    }
}

/// Appends event `(rev, seq)` to `runs`, extending the last run if it is
/// the event right after it.
fn push_event(runs: &mut VecDeque<Run>, rev: u64, seq: u32) {
    match runs.back_mut() {
        Some(r) if r.rev == rev && r.seq + r.len == seq => r.len += 1,
        _ => runs.push_back(Run { rev, seq, len: 1 }),
    }
}

/// The log's oldest keys, oldest first (a prefix of the log's keys), and
/// the keys of the events this writer appended beyond them.
#[derive(Default)]
pub(crate) struct Trim {
    head: VecDeque<Run>,
    /// Keys in `head`.
    queued: usize,
    /// This writer's events that `head` has not reached yet (read from the
    /// engine, the log between them would be); empty once `whole`.
    tail: VecDeque<Run>,
    /// The queue holds every key in the log: new events join `head` as
    /// they commit, so it is never read again.
    whole: bool,
    /// Reads of the log's head so far (for tests).
    pub(super) reads: usize,
}

impl Trim {
    /// Makes sure the queue holds the `n` oldest keys, or every key there is.
    fn fill(&mut self, backend: &dyn Backend, n: usize) -> Result<()> {
        while self.queued < n && !self.whole {
            // Keys are 13 bytes: the last queued key plus a zero byte sorts
            // right after it and before every longer-lived key.
            let from = match self.head.back() {
                Some(r) => [&log_key(r.rev, r.seq + r.len - 1)[..], &[0]].concat(),
                None => LOG_PREFIX.to_vec(),
            };
            let want = (n - self.queued).max(READ_AHEAD);
            self.reads += 1;
            let keys = backend.scan_keys(LOG_PREFIX, &from, want)?;
            let got = keys.len();
            let first_appended = self.tail.front().map(|r| (r.rev, r.seq));
            for key in keys {
                let Some(at) = log_position(&key) else {
                    return Err(Error::Corrupt {
                        key: super::layout::show_key(&key),
                        reason: "not a change-log key".into(),
                    });
                };
                if first_appended.is_some_and(|first| at >= first) {
                    // The rest of the log is what this writer appended.
                    self.join_tail();
                    return Ok(());
                }
                push_event(&mut self.head, at.0, at.1);
                self.queued += 1;
            }
            if got < want {
                self.join_tail();
            }
        }
        Ok(())
    }

    /// The queue has reached the first event this writer appended.
    fn join_tail(&mut self) {
        for r in self.tail.drain(..) {
            self.queued += r.len as usize;
            self.head.push_back(r);
        }
        self.whole = true;
    }

    /// The first `n` queued keys, oldest first.
    fn oldest(&self, n: usize) -> impl Iterator<Item = [u8; 13]> + '_ {
        self.head.iter().flat_map(|r| r.keys()).take(n)
    }

    /// Once a batch committed: forgets the `trimmed` oldest keys it removed
    /// and takes in the keys of the `added` events of `rev`.
    pub(super) fn committed(&mut self, trimmed: usize, rev: u64, added: usize) {
        let mut left = trimmed.min(self.queued);
        self.queued -= left;
        while left > 0 {
            let Some(front) = self.head.front_mut() else {
                break;
            };
            let take = left.min(front.len as usize);
            if take == front.len as usize {
                self.head.pop_front();
            } else {
                front.seq += take as u32;
                front.len -= take as u32;
            }
            left -= take;
        }
        let Ok(len) = u32::try_from(added) else {
            // More events than a write may hold (refused when staged).
            return;
        };
        if len == 0 {
            return;
        }
        let run = Run { rev, seq: 0, len };
        if self.whole {
            self.head.push_back(run);
            self.queued += added;
        } else {
            self.tail.push_back(run);
        }
    }
}

impl Trim {
    /// Brings the queue in line with the log after other servers' writes
    /// came in (a catch-up on a shared engine). They trim from the same
    /// head, so what they removed is a prefix of this queue: queued keys
    /// are dropped from the front while they are gone (a point read each,
    /// usually one or two), instead of reading the head again — on etcd 3.4
    /// a range read costs as much as the whole log. Their new events sit
    /// between this writer's, so the events this writer appended are no
    /// longer the log's end, and a queue that held the whole log is no
    /// longer its head: those start over, read again when next needed. A
    /// long run of gone keys means the queue is far behind: it starts over.
    pub(super) fn after_others(&mut self, backend: &dyn Backend) -> Result<()> {
        const MOST_CHECKS: usize = 64;
        self.tail.clear();
        if std::mem::take(&mut self.whole) {
            self.head.clear();
            self.queued = 0;
            return Ok(());
        }
        for _ in 0..MOST_CHECKS {
            let front = self.oldest(1).next();
            match front {
                Some(k) if backend.get(&k)?.is_none() => self.committed(1, 0, 0),
                _ => return Ok(()),
            }
        }
        self.head.clear();
        self.queued = 0;
        Ok(())
    }
}

/// Stages `changes` as the events of `batch`'s revision and trims the log to
/// `retain` events (the oldest first: keys sort by revision). The log holds
/// `log_len` events before the write. Returns how many it holds after, and
/// how many queued keys the batch removes (hand that to
/// [`Trim::committed`] once it commits).
pub(super) fn stage(
    backend: &dyn Backend,
    trim: &mut Trim,
    batch: &mut Batch,
    changes: &[Change],
    log_len: usize,
    retain: usize,
) -> Result<(usize, usize)> {
    let rev = batch.rev;
    for (seq, c) in changes.iter().enumerate() {
        let seq = u32::try_from(seq)
            .map_err(|_| Error::invalid("write", "too many objects in one write"))?;
        batch.put(log_key(rev, seq), encode_event(rev, seq, c));
    }
    timing::mark("log: event encode");
    let excess = (log_len + changes.len()).saturating_sub(retain);
    let mut removed = 0;
    if excess > 0 {
        trim.fill(backend, excess)?;
        for key in trim.oldest(excess) {
            batch.remove(key.to_vec());
            removed += 1;
        }
    }
    let log_len = log_len + changes.len() - excess;
    batch.put(LOG_LEN_KEY, (log_len as u64).to_be_bytes());
    timing::mark("log: trim");
    Ok((log_len, removed))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Machine;
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

    fn logged(s: &Store) -> Vec<Vec<u8>> {
        s.backend()
            .scan_prefix(LOG_PREFIX)
            .map(|item| item.unwrap().0)
            .collect()
    }

    #[test]
    fn another_writers_trims_drop_from_the_front_of_the_queue() {
        use crate::store::memory_backend::MemoryBackend;
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
        assert_eq!(
            t.oldest(1).next().map(|k| k.to_vec()),
            Some(keys[3].clone())
        );
        assert_eq!(t.queued, READ_AHEAD - 3);
        assert_eq!(t.reads, 1);
        // Far behind: the queue starts over, read again when next needed.
        commit(&|b| keys[3..200].iter().for_each(|k| b.remove(k.clone())));
        t.after_others(&db).unwrap();
        assert_eq!(t.queued, 0);
        t.fill(&db, 1).unwrap();
        assert_eq!(
            t.oldest(1).next().map(|k| k.to_vec()),
            Some(keys[200].clone())
        );
    }

    #[test]
    fn trimming_keeps_exactly_retain_events_and_reads_only_the_log_this_writer_did_not_write() {
        let retain = READ_AHEAD + 10;
        for (name, s) in stores(retain) {
            let m = s.machines().create(Machine::new("m")).unwrap();
            let old = (0..retain)
                .map(|i| Machine::new(format!("old{i}")))
                .collect();
            s.machines().import(old).unwrap();
            // A writer that did not write that log, as after a reopen.
            *s.inner.writer.lock() = Trim::default();
            let writes = 3 * READ_AHEAD;
            for i in 0..writes {
                s.machines().set_param(&m.name, "n", json!(i)).unwrap();
                if i % 97 == 0 {
                    assert_eq!(logged(&s).len(), retain, "{name}: after write {i}");
                    assert_eq!(s.state().log_len, retain, "{name}");
                }
            }
            // The newest writes' events, nothing older.
            let rev = s.revision();
            let want: Vec<Vec<u8>> = (rev + 1 - retain as u64..=rev)
                .map(|r| log_key(r, 0).to_vec())
                .collect();
            assert_eq!(logged(&s), want, "{name}");
            // The import's events were read, 1,024 and then the rest up to
            // the first event this writer appended; its own, never.
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

    #[test]
    fn a_write_of_many_events_trims_across_read_ahead_boundaries() {
        for (name, s) in stores(READ_AHEAD + 10) {
            for round in 0..4 {
                let batch: Vec<Machine> = (0..700)
                    .map(|i| Machine::new(format!("m{round}-{i}")))
                    .collect();
                s.machines().import(batch).unwrap();
                let n = logged(&s).len();
                assert_eq!(n, s.state().log_len, "{name}: round {round}");
                assert!(n <= READ_AHEAD + 10, "{name}: {n} events kept");
            }
            assert_eq!(logged(&s).len(), READ_AHEAD + 10, "{name}");
        }
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
        for (name, s) in stores(3) {
            s.machines()
                .import(vec![Machine::new("a"), Machine::new("b")])
                .unwrap();
            let split = s.revision();
            s.machines()
                .import(vec![Machine::new("c"), Machine::new("d")])
                .unwrap();
            // The log: split's second event and the next revision's two.
            assert_eq!(logged(&s).len(), 3, "{name}");
            match s.watch(None, None, Some(split)) {
                Err(Error::Compacted { requested, oldest }) => {
                    assert_eq!((requested, oldest), (split, split + 1), "{name}")
                }
                other => panic!("{name}: {:?}", other.map(|_| "a watch")),
            }
            let mut w = s.watch(None, None, Some(split + 1)).unwrap();
            assert_eq!(w.poll().unwrap().unwrap().seq, 0, "{name}");
            assert_eq!(w.poll().unwrap().unwrap().seq, 1, "{name}");
            assert!(w.poll().unwrap().is_none(), "{name}");
        }
    }
}
