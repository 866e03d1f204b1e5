//! A read of the in-memory machine state at one revision, for the
//! membership streams of [`crate::watch`] (`Store::watch_members`).
//!
//! Owns: [`StateView`], which holds the state's read lock so that every
//! answer it gives — the revision, bitmap evaluations, id lookups, the
//! reference evaluator on a logged document — is about the same revision.
//! Must not: write, read the engine, or keep the lock beyond one step of a
//! stream (writers wait for it).

use std::collections::HashMap;

use roaring::RoaringBitmap;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::open::{ReadState, Store};
use crate::error::{Error, Result};
use crate::filter::{Bound, Field, Filter, Key, Subject};
use crate::index::{Text, ValueKey};
use crate::model::{Kind, Machine};

/// The machine state at one revision, read-locked.
pub(crate) struct StateView<'a> {
    st: ReadState<'a>,
}

impl Store {
    /// The state for a membership stream's step (see [`StateView`]).
    pub(crate) fn view(&self) -> StateView<'_> {
        StateView { st: self.state() }
    }
}

impl StateView<'_> {
    /// The revision every answer of this view is at.
    pub(crate) fn revision(&self) -> u64 {
        self.st.rev
    }

    /// `filter` bound for machines against the definitions at this revision.
    pub(crate) fn bind(&self, filter: &Filter) -> Result<Bound> {
        Ok(filter.bind(Kind::Machine, &*self.st)?)
    }

    /// The machine ids `bound` selects, within `within` (all when `None`).
    pub(crate) fn eval(&self, bound: &Bound, within: Option<&RoaringBitmap>) -> RoaringBitmap {
        self.st.machines.eval(bound, within, &*self.st)
    }

    /// The dense id of the machine with this Uuid, if it exists.
    pub(crate) fn machine_id(&self, uuid: &Uuid) -> Option<u32> {
        self.st
            .machines
            .lookup(&Key::Field(Field::Uuid), &ValueKey::str(&uuid.to_string()))
            .and_then(|p| p.min())
    }

    /// The reference evaluator on a machine document (as logged), with the
    /// profiles and definitions of this revision.
    pub(crate) fn machine_matches(&self, bound: &Bound, doc: &str) -> Result<bool> {
        let corrupt = |e: serde_json::Error| Error::Corrupt {
            key: "change log".into(),
            reason: e.to_string(),
        };
        let obj: Map<String, Value> = serde_json::from_str(doc).map_err(corrupt)?;
        let m = Machine::deserialize(&Value::Object(obj.clone())).map_err(corrupt)?;
        let params = self.st.effective(&m);
        Ok(bound.matches(&Subject {
            doc: &obj,
            params: &params,
        }))
    }

    /// The Uuid and Name of each of `ids` that exists, from the indexes
    /// (walks the Uuid and Name values; reads no document).
    pub(crate) fn identities(&self, ids: &RoaringBitmap) -> HashMap<u32, (Uuid, String)> {
        let mut out: HashMap<u32, (Uuid, String)> = HashMap::with_capacity(ids.len() as usize);
        if ids.is_empty() {
            return out;
        }
        let idx = &self.st.machines;
        idx.each_value_within(&Key::Field(Field::Uuid), ids, |id, v| {
            let uuid = match v {
                ValueKey::Str(Text::Uuid(u)) => Some(*u),
                ValueKey::Str(Text::Compact(s)) => Uuid::parse_str(s).ok(),
                _ => None,
            };
            if let Some(u) = uuid {
                out.insert(id, (u, String::new()));
            }
        });
        idx.each_value_within(&Key::Field(Field::Name), ids, |id, v| {
            if let (Some(slot), ValueKey::Str(s)) = (out.get_mut(&id), v) {
                slot.1 = s.as_str().to_string();
            }
        });
        out
    }
}
