//! An engine in memory: a `BTreeMap` under a lock, for tests and for
//! stores that need no durability ([`Store::in_memory`](super::Store::in_memory)).
//!
//! Owns: its map and revision. Must not: know what the records mean.
//! The revision is checked and moved under the same write lock as the
//! batch's apply, so check and apply are one step. Scans read in chunks,
//! taking the lock once per chunk, so a long scan never holds writers off
//! (and, like sled's, is not a snapshot).

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::backend::{check_revision, Backend, Batch, Scan};
use crate::error::Result;

/// Entries a scan copies out per lock.
const CHUNK: usize = 256;

#[derive(Default)]
struct Data {
    rev: u64,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A store's records in memory; gone when dropped.
#[derive(Default)]
pub(crate) struct MemoryBackend {
    data: RwLock<Data>,
}

impl MemoryBackend {
    /// An engine holding `records` at revision `rev`.
    pub(crate) fn holding(rev: u64, records: Vec<(Vec<u8>, Vec<u8>)>) -> MemoryBackend {
        MemoryBackend {
            data: RwLock::new(Data {
                rev,
                map: records.into_iter().collect(),
            }),
        }
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.read().map.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8], from: &[u8]) -> Scan<'_> {
        let prefix = prefix.to_vec();
        // Where the next chunk starts; `None` once the range is read.
        let mut next = Some(Bound::Included(from.to_vec()));
        let mut chunk = Vec::new().into_iter();
        Box::new(std::iter::from_fn(move || loop {
            if let Some(item) = chunk.next() {
                return Some(Ok(item));
            }
            let start = next.take()?;
            let data = self.data.read();
            let got: Vec<(Vec<u8>, Vec<u8>)> = data
                .map
                .range((start, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&prefix))
                .take(CHUNK)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            next = match got.last() {
                Some((k, _)) if got.len() == CHUNK => Some(Bound::Excluded(k.clone())),
                _ => None,
            };
            chunk = got.into_iter();
        }))
    }

    fn revision(&self) -> Result<u64> {
        Ok(self.data.read().rev)
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        let mut data = self.data.write();
        check_revision(data.rev, &batch)?;
        for (k, v) in batch.ops {
            match v {
                Some(v) => data.map.insert(k, v),
                None => data.map.remove(&k),
            };
        }
        data.rev = batch.rev;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
