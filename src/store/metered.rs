//! The store's side of [`crate::telemetry`]: writes timed and labelled by
//! kind and outcome, and the figures its scrape-time gauges read.
//!
//! Owns: [`Store::write_as`], [`Store::gauges`] and [`Store::index_bytes`]. Must not: name metrics
//! or record anything but through [`crate::telemetry`]'s helpers.

use std::time::Instant;

use super::backend::Batch;
use super::open::Store;
use super::write::Memory;
use crate::error::Result;
use crate::telemetry::{self, WriteKind};
use crate::watch::Change;

/// What [`telemetry::observe_store`] reports, read under one read lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gauges {
    pub revision: u64,
    pub machines: u64,
    pub profiles: u64,
    pub params: u64,
    pub log_len: u64,
}

impl Store {
    /// [`Store::write`], recorded as a `kind` write with its outcome and
    /// duration.
    pub(super) fn write_as<T, M: Into<Memory>>(
        &self,
        kind: WriteKind,
        f: impl FnMut(&super::state::State, u64, &mut Vec<Change>) -> Result<(Batch, M, T)>,
    ) -> Result<T> {
        let started = Instant::now();
        let r = self.write(f);
        telemetry::record_write(kind, &r, started.elapsed());
        r
    }

    /// Estimated heap bytes of the machine and the profile index: walks
    /// every distinct indexed value under the state's read lock.
    pub(crate) fn index_bytes(&self) -> (u64, u64) {
        let st = self.state();
        (st.machines.heap_bytes(), st.profile_index.heap_bytes())
    }

    /// The store's cheap gauges as they are now.
    pub(crate) fn gauges(&self) -> Gauges {
        let st = self.state();
        Gauges {
            revision: st.rev,
            machines: st.machines.universe().len(),
            profiles: st.profiles.len() as u64,
            params: st.params.len() as u64,
            log_len: st.log.events as u64,
        }
    }
}
