//! The change log's place in a write: every write's events go into its own
//! batch, and the oldest events beyond the retention leave in that batch.
//!
//! Owns: the log's keys in a batch, its length record, and trimming. Must
//! not: encode or decode events (the watch module owns their format) or
//! read the log for watchers (they read the engine's feed of committed
//! changes, [`Backend::changes`]).

use super::backend::{Backend, Batch};
use super::layout::{log_key, LOG_LEN_KEY, LOG_PREFIX};
use crate::error::{Error, Result};
use crate::timing;
use crate::watch::{encode_event, Change};

/// Stages `changes` as the events of `batch`'s revision and trims the log to
/// `retain` events (the oldest first: keys sort by revision). The log holds
/// `log_len` events before the write; returns how many it holds after.
/// Trimming reads only the events it removes.
pub(super) fn stage(
    backend: &dyn Backend,
    batch: &mut Batch,
    changes: &[Change],
    log_len: usize,
    retain: usize,
) -> Result<usize> {
    let rev = batch.rev;
    for (seq, c) in changes.iter().enumerate() {
        let seq = u32::try_from(seq)
            .map_err(|_| Error::invalid("write", "too many objects in one write"))?;
        batch.put(log_key(rev, seq), encode_event(rev, seq, c));
    }
    timing::mark("log: event encode");
    let excess = (log_len + changes.len()).saturating_sub(retain);
    for item in backend.scan_prefix(LOG_PREFIX).take(excess) {
        batch.remove(item?.0);
    }
    let log_len = log_len + changes.len() - excess;
    batch.put(LOG_LEN_KEY, (log_len as u64).to_be_bytes());
    timing::mark("log: trim");
    Ok(log_len)
}
