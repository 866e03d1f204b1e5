//! The default engine: one sled tree in a directory (or a temporary one).
//!
//! Owns: every use of the `sled` crate — opening, the mapping of a [`Batch`]
//! onto one `sled::Batch`, the revision record, and turning sled's errors
//! into ours ([`Error::Busy`] for a store another process holds,
//! [`Error::StorageFull`] for a full disk or quota, [`Error::Storage`] with
//! sled's message otherwise). Must not: know what
//! the records mean, or decide when a call is bounded (the store runs open,
//! commit and flush on its storage thread).
//!
//! # The revision guard on sled
//! The revision lives under key `s:rev` (the layout it always had) and is
//! written inside the same `sled::Batch` as the write, so the two are
//! atomic. The compare runs against a copy of that revision kept under a
//! mutex held across the check and `apply_batch`. That is sound because
//! sled locks its directory for one process: nobody else can move `s:rev`,
//! so the copy is the stored value, and the mutex makes check and apply one
//! step for every writer in the process. sled's transactions would do the
//! same compare inside the engine, but they track a read and write set per
//! key — costly for a 10,000-machine import batch — and run a second
//! concurrency-control path through the engine whose locking we had to
//! patch once (`vendor/sled/PATCHES.md`); the store's writer lock already
//! serializes commits, so this mutex is never contended.

use std::path::PathBuf;

use parking_lot::Mutex;

use super::backend::{check_revision, Backend, Batch, Scan};
use super::layout::REV_KEY;
use crate::error::{Error, Result};

/// sled's message when another process holds the directory's lock.
const LOCKED: &str = "could not acquire lock";

/// A sled database.
pub(crate) struct SledBackend {
    db: sled::Db,
    /// `s:rev` as committed; held across check and apply.
    rev: Mutex<u64>,
}

fn storage(e: sled::Error) -> Error {
    let msg = e.to_string();
    if let sled::Error::Io(io) = &e {
        // ENOSPC, EDQUOT: the caller may retry once space returns.
        if io.kind() == std::io::ErrorKind::StorageFull
            || matches!(io.raw_os_error(), Some(28 | 122))
        {
            return Error::StorageFull(msg);
        }
    }
    if msg.contains(LOCKED) {
        Error::Busy(msg)
    } else {
        Error::Storage(msg)
    }
}

impl SledBackend {
    /// Opens (or creates) the store in `path`; a temporary one when `None`,
    /// removed when the last handle drops.
    pub(crate) fn open(path: Option<PathBuf>) -> Result<SledBackend> {
        let config = match path {
            Some(p) => sled::Config::new().path(p),
            None => sled::Config::new().temporary(true),
        };
        let db = config.open().map_err(storage)?;
        let rev = match db.get(REV_KEY).map_err(storage)? {
            Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(|_| Error::Corrupt {
                key: "s:rev".into(),
                reason: "not 8 bytes".into(),
            })?),
            None => 0,
        };
        Ok(SledBackend {
            db,
            rev: Mutex::new(rev),
        })
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8], from: &[u8]) -> Scan<'_> {
        let prefix = prefix.to_vec();
        Box::new(
            self.db
                .range(from.to_vec()..)
                .take_while(move |item| match item {
                    Ok((k, _)) => k.starts_with(&prefix),
                    Err(_) => true,
                })
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(storage)),
        )
    }

    fn revision(&self) -> Result<u64> {
        Ok(*self.rev.lock())
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        let mut rev = self.rev.lock();
        check_revision(*rev, &batch)?;
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        b.insert(REV_KEY, &batch.rev.to_be_bytes());
        self.db.apply_batch(b).map_err(storage)?;
        *rev = batch.rev;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(storage)?;
        Ok(())
    }
}
