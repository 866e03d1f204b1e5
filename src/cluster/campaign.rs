//! Leader election that fails over: [`Cluster::campaign`] takes one of `n`
//! leader slots for a member while its lease lives, [`Cluster::resign`]
//! gives it back, [`LeaderWatch`] streams the leaders as they change.
//!
//! Owns: the `cluster/leader-token` param and what it means. Must not:
//! reach below the store's public API (each step is one machine write with
//! the store's guards).
//!
//! # How a slot is taken
//! One write, [`Machines::update_with`](crate::store::Machines::update_with)
//! under the member's lease and a count guard ("fewer than `n` non-manager
//! leaders among the members", checked under the writer lock at commit):
//! `cluster/leader = true` and `cluster/leader-token = ` the write's own
//! revision. Both are held by the lease, so when the lease ends (expiry,
//! revoke) they go in one write, the count drops and the next campaigner's
//! retry — woken by that write — takes the slot with a higher token. The
//! token is the **fencing token**: a write made with
//! [`Cluster::fenced_by`]`(token)` is refused once that leadership ended, so a
//! paused old leader cannot overwrite its successor's work.
//!
//! Leaders made by [`Cluster::elect`] or by hand count against the slots
//! but hold no token and no lease: the two styles share the role, and the
//! seed's `-r` race keeps working beside campaigns.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{role_filter, Cluster, LEADER_PARAM, MANAGER_PARAM};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::Machine;
use crate::store::{Fence, LeaseId, ListOptions};

/// The param holding a campaigned leader's fencing token.
pub const LEADER_TOKEN_PARAM: &str = "cluster/leader-token";

/// A leader and the token its leadership was won with (none for leaders
/// made by `elect` or by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The machine's Name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The machine's Uuid.
    #[serde(rename = "Uuid")]
    pub uuid: uuid::Uuid,
    /// The revision at which it won, when it campaigned.
    #[serde(rename = "Token", default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

impl Leadership {
    fn of(m: &Machine) -> Leadership {
        Leadership {
            name: m.name.clone(),
            uuid: m.uuid,
            token: m.params.get(LEADER_TOKEN_PARAM).and_then(Value::as_u64),
        }
    }
}

/// The leaders at a revision, as [`LeaderWatch`] hands them out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaders {
    /// The store revision they were read at.
    #[serde(rename = "Revision")]
    pub revision: u64,
    /// The non-manager leaders, in creation order.
    #[serde(rename = "Leaders")]
    pub leaders: Vec<Leadership>,
}

impl Cluster {
    /// Blocks until member `machine` holds one of `slots` leader slots
    /// under `lease` (or `timeout`: [`Error::Timeout`]); returns its
    /// leadership and fencing token. A member that already campaigned and
    /// still leads gets its leadership back. A manager, a non-member, an
    /// unknown or ended lease are refused.
    pub fn campaign(
        &self,
        machine: &str,
        lease: LeaseId,
        slots: usize,
        timeout: Duration,
    ) -> Result<Leadership> {
        if slots == 0 {
            return Err(Error::invalid("campaign", "there must be at least 1 slot"));
        }
        let deadline = Instant::now() + timeout;
        let leaders = self.member_filter(role_filter(false, true)?)?;
        loop {
            let seen = self.store.revision();
            let m = self.store.machines().get(machine)?;
            self.check_member(&m)?;
            if m.params.get(MANAGER_PARAM) == Some(&Value::Bool(true)) {
                return Err(Error::invalid(
                    format!("campaign of {}", m.name),
                    "a manager does not lead",
                ));
            }
            let lead = Leadership::of(&m);
            if m.params.get(LEADER_PARAM) == Some(&Value::Bool(true)) && lead.token.is_some() {
                return Ok(lead);
            }
            let won = self
                .store
                .machines()
                .with_lease(lease)
                .when_count_below(leaders.clone(), slots as u64)
                .update_with(&m.uuid.to_string(), |m, rev| {
                    m.params.insert(LEADER_PARAM.into(), Value::Bool(true));
                    m.params.insert(LEADER_TOKEN_PARAM.into(), rev.into());
                    Ok(())
                });
            match won {
                Ok(m) => return Ok(Leadership::of(&m)),
                Err(Error::Conflict { .. }) => self.store.wait_for_write(seen, deadline)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives up `machine`'s leadership (role and token) in one write;
    /// returns the machine as written. Not a leader: nothing is written.
    pub fn resign(&self, machine: &str) -> Result<Machine> {
        let m = self.store.machines().get(machine)?;
        if !m.params.contains_key(LEADER_PARAM) && !m.params.contains_key(LEADER_TOKEN_PARAM) {
            return Ok(m);
        }
        self.store.machines().update_with(machine, |m, _| {
            m.params.shift_remove(LEADER_PARAM);
            m.params.shift_remove(LEADER_TOKEN_PARAM);
            Ok(())
        })
    }

    /// The guard of a write that must only land while leadership `token`
    /// lasts: pass it to
    /// [`Machines::with_fence`](crate::store::Machines::with_fence).
    pub fn fenced_by(token: u64) -> Fence {
        Fence {
            param: LEADER_TOKEN_PARAM.into(),
            token,
        }
    }

    /// The non-manager leaders now, with their tokens.
    pub fn leaderships(&self) -> Result<Leaders> {
        loop {
            let revision = self.store.revision();
            let leaders = self
                .leaders()?
                .iter()
                .map(Leadership::of)
                .collect::<Vec<_>>();
            // Read at one revision: retried if a write came in between.
            if self.store.revision() == revision {
                return Ok(Leaders { revision, leaders });
            }
        }
    }

    /// The leaders now, then each time they change.
    pub fn observe(&self) -> LeaderWatch {
        LeaderWatch {
            cluster: self.clone(),
            last: None,
        }
    }

    fn check_member(&self, m: &Machine) -> Result<()> {
        let me = self.member_filter(Filter::parse(&format!("Uuid Eq {}", m.uuid))?)?;
        let opts = ListOptions::default();
        if self.store.machines().list(&me, &opts)?.is_empty() {
            return Err(Error::invalid(
                format!("campaign of {}", m.name),
                format!("{} is not a member of cluster {}", m.name, self.name),
            ));
        }
        Ok(())
    }
}

/// The leaders of a cluster as they change (see [`Cluster::observe`]).
pub struct LeaderWatch {
    cluster: Cluster,
    last: Option<Vec<Leadership>>,
}

impl LeaderWatch {
    /// The leaders the first time, then the next change of them, waiting
    /// up to `timeout`; `Ok(None)` on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Leaders>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.cluster.leaderships()?;
            if self.last.as_ref() != Some(&now.leaders) {
                self.last = Some(now.leaders.clone());
                return Ok(Some(now));
            }
            match self.cluster.store.wait_for_write(now.revision, deadline) {
                Ok(()) => {}
                Err(Error::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}
