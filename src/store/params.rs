//! The [`Params`] handle: param definitions, their compiled schemas and
//! defaults.
//!
//! Owns: definition records and validators. Must not: rewrite objects that
//! hold values of a changed definition (values already stored stay).

use std::sync::Arc;

use serde_json::Value;

use super::backend::Batch;
use super::layout::{from_json, named_key, to_json, PARAM_PREFIX};
use super::list::{shape, window, ListOptions};
use super::open::Store;
use super::patch;
use super::state::State;
use super::write::{erase, record, Apply};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::{Kind, ParamDef};
use crate::telemetry::WriteKind;

/// Param definitions, addressed by name.
pub struct Params<'a> {
    pub(super) store: &'a Store,
}

impl Params<'_> {
    /// Creates a param definition; its schema must compile, and its default
    /// (if any) must fit it.
    pub fn create(&self, d: ParamDef) -> Result<ParamDef> {
        self.write_def(None, move |_| Ok(to_json(&d)))
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Result<ParamDef> {
        self.store
            .state()
            .params
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(Kind::Param, name))
    }

    /// Whether it exists.
    pub fn exists(&self, name: &str) -> bool {
        self.store.state().params.contains_key(name)
    }

    /// Every definition, by name.
    pub fn list_all(&self) -> Vec<ParamDef> {
        self.store.state().params.values().cloned().collect()
    }

    /// Definitions as JSON, shaped by `opts` (by Name; `sort` orders by a
    /// field's JSON text). Definitions take no filter: `filter` must be empty.
    pub fn list(&self, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        if !filter.is_all() {
            return Err(Error::invalid(
                "params filter",
                "definitions take no filter: the list has every definition",
            ));
        }
        let mut all: Vec<Value> = self.list_all().iter().map(to_json).collect();
        if let Some(key) = &opts.sort {
            all.sort_by_key(|v| v.get(key).map(|k| k.to_string()).unwrap_or_default());
        }
        let page = window((0..all.len() as u32).collect(), opts);
        Ok(page
            .into_iter()
            .map(|i| shape(all[i as usize].clone(), None, opts))
            .collect())
    }

    /// Replaces a definition.
    pub fn replace(&self, name: &str, d: ParamDef) -> Result<ParamDef> {
        let new = to_json(&d);
        let mut new = self.store.replan(new);
        self.write_def(Some(name), move |_| new.take())
    }

    /// RFC 7396 merge patch.
    pub fn update(&self, name: &str, merge: &Value) -> Result<ParamDef> {
        self.modify(name, |doc| patch::apply_merge(doc, merge))
    }

    /// RFC 6902 patch, atomic.
    pub fn patch(&self, name: &str, ops: &Value) -> Result<ParamDef> {
        let ops = patch::parse_patch(ops)?;
        self.modify(name, |doc| patch::apply_patch(doc, &ops))
    }

    /// Reference update.
    pub fn update_from(&self, name: &str, reference: &Value, desired: &Value) -> Result<ParamDef> {
        self.modify(name, |doc| patch::apply_reference(doc, reference, desired))
    }

    /// Deletes a definition. Values already stored stay as they are.
    pub fn delete(&self, name: &str) -> Result<ParamDef> {
        self.store.write_as(WriteKind::Param, |st, _, log| {
            let old = st
                .params
                .get(name)
                .cloned()
                .ok_or_else(|| Error::not_found(Kind::Param, name))?;
            let mut batch = Batch::default();
            erase(&mut batch, log, &named_key(PARAM_PREFIX, name), name, &old);
            let out = old.clone();
            let apply = Box::new(move |st: &mut State| {
                st.params.remove(&old.name);
                st.validators.remove(&old.name);
            });
            Ok((batch, apply as Apply, out))
        })
    }

    fn modify(&self, name: &str, mut f: impl FnMut(&mut Value) -> Result<()>) -> Result<ParamDef> {
        self.write_def(Some(name), |old| {
            let mut doc = to_json(old.ok_or_else(|| Error::not_found(Kind::Param, name))?);
            f(&mut doc)?;
            Ok(doc)
        })
    }

    fn write_def(
        &self,
        name: Option<&str>,
        mut f: impl FnMut(Option<&ParamDef>) -> Result<Value>,
    ) -> Result<ParamDef> {
        self.store.write_as(WriteKind::Param, |st, rev, log| {
            let old = match name {
                Some(n) => Some(
                    st.params
                        .get(n)
                        .cloned()
                        .ok_or_else(|| Error::not_found(Kind::Param, n))?,
                ),
                None => None,
            };
            let d: ParamDef = from_json(Kind::Param, f(old.as_ref())?)?;
            if old.is_none() && st.params.contains_key(&d.name) {
                return Err(Error::AlreadyExists {
                    kind: Kind::Param,
                    key: d.name.clone(),
                });
            }
            let (mut d, validator) = plan_def(old.as_ref(), d)?;
            d.revision = rev;
            let mut batch = Batch::default();
            record(
                &mut batch,
                log,
                &named_key(PARAM_PREFIX, &d.name),
                &d.name,
                &d,
                old.as_ref(),
            );
            let out = d.clone();
            let apply = Box::new(move |st: &mut State| {
                st.validators.insert(d.name.clone(), Arc::new(validator));
                st.params.insert(d.name.clone(), d);
            });
            Ok((batch, apply as Apply, out))
        })
    }
}

/// Checks definition `d` (replacing `old`, if any): a Name, the same Name as
/// `old`'s, a schema that compiles and a default that fits it. Returns it
/// with its compiled schema. Shared by single writes and bulk imports.
pub(super) fn plan_def(
    old: Option<&ParamDef>,
    d: ParamDef,
) -> Result<(ParamDef, jsonschema::Validator)> {
    if d.name.is_empty() {
        return Err(Error::invalid(
            "param Name",
            "Name is required and may not be empty",
        ));
    }
    if let Some(o) = old.filter(|o| o.name != d.name) {
        return Err(Error::invalid(
            "param Name",
            format!(
                "Name is the key and cannot change ({} → {})",
                o.name, d.name
            ),
        ));
    }
    let validator = jsonschema::validator_for(&d.schema)
        .map_err(|e| Error::invalid(format!("param {} Schema", d.name), e.to_string()))?;
    if let Some(def) = d.default_value() {
        if let Err(e) = validator.validate(def) {
            return Err(Error::Schema {
                param: d.name.clone(),
                reason: format!("default: {e}"),
            });
        }
    }
    Ok((d, validator))
}
