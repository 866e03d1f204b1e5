//! The multi-machine cluster pattern (`docs/architecture.md` §12): a
//! self-naming cluster profile, its member filter, the manager / leader /
//! worker roles, leader election, and starting a workflow on the machines a
//! filter selects.
//!
//! Owns: the `cluster/*` params and what they mean. Must not: reach below
//! the store's public API — every write here is one atomic store call
//! ([`Machines::patch`](crate::store::Machines::patch), `patch_many`,
//! `update` or a param compare-and-set).
//!
//! # The cluster profile
//! [`Cluster::init`] creates (or completes) profile `NAME` with
//! `cluster/profile = NAME` and `cluster/filter` (default `Profiles Eq NAME`),
//! and defines the params `cluster/manager` and `cluster/leader` (boolean,
//! default false), `cluster/profile` and `cluster/filter` (string) when they
//! are missing. Membership is whatever `cluster/filter` selects;
//! [`Cluster::add`] / [`Cluster::remove`] edit a machine's `Profiles` in one
//! patch guarded by a `test` of the list as read. Extra filter words are
//! spliced onto the stored filter as data ([`Filter::and`]), so a stored
//! filter such as `Profiles Eq a Or Name Eq x` stays one parenthesised term.
//!
//! # Roles
//! manager: `cluster/manager` true; leader: `cluster/leader` true; worker:
//! neither (both default false). [`Cluster::set_role`] writes both params in
//! one merge, so a machine never holds two roles through this API.
//!
//! # Election
//! [`Cluster::elect`]`(n)` makes sure that exactly `n` non-manager members
//! are leaders, picking the missing ones uniformly at random. One attempt:
//!
//! 1. Read the **fence**: profile param `cluster/fence` names (by Uuid) one
//!    machine, and that machine's own param `cluster/fence-token` holds a
//!    random token. The first election designates the first member in
//!    creation order (a profile compare-and-set), and designates again only
//!    when the named machine no longer exists.
//! 2. Read, through the indexes, the leaders (`cluster/manager Eq false And
//!    cluster/leader Eq true` within the members) and the candidates
//!    (members with both false). If there are `n` leaders or more, return
//!    them: nothing is written (idempotence). If leaders + candidates < `n`,
//!    fail with [`Error::Invalid`] naming the numbers: nothing is written.
//! 3. Pick `n − leaders` candidates at random and write, with **one**
//!    [`patch_many`](crate::store::Machines::patch_many): on every pick a
//!    `test` of its `Profiles` and `Params` as read and `cluster/leader =
//!    true`; on the fence machine a `test` of the token as read and its
//!    replacement by a fresh one. Any failed `test` (or a machine gone) aborts
//!    the whole write; the attempt is retried after a jittered backoff
//!    (bounded), re-reading everything.
//!
//! **Why the result is exactly `n`.** Writes to the store are serialized.
//! Take two successful elections E1 before E2 that used the same fence. E2's
//! token `test` passed, and E1 replaced the token with a fresh random one
//! that nobody else writes, so E2 read the token after E1 committed — and E2
//! reads the leaders after the token, so it counted E1's leaders: it only
//! adds what is still missing. Two elections cannot use different fences
//! concurrently: the designation changes only after the designated machine
//! was deleted, and an election that read the old fence then fails on it
//! (not found); one that read the new fence read it after the deletion,
//! hence after every election that used the old one. The per-pick `test`s
//! keep a pick that changed meanwhile (made manager or leader by
//! [`Cluster::set_role`], left the cluster) from being elected. So
//! concurrent electors, in one process or many, never overshoot: the first
//! adds the difference, the others find `n` leaders and return them.
//! Leaders set by hand beyond `n` are kept, never demoted. Randomness comes
//! from [`Uuid::new_v4`] (the OS generator via `getrandom`; 122 random bits,
//! reduced modulo the candidate count with negligible bias): the crate
//! already depends on it, so no `rand`.
//!
//! # Campaigns
//! [`Cluster::campaign`] is the election that fails over: a slot held by a
//! lease, with a fencing token (see `campaign`).
//!
//! # Workflows on members
//! [`start_workflow`] sets `Workflow` (and optional `Meta` entries) on every
//! machine a filter selects, one atomic merge per machine, and reports which
//! machines changed, which already had that workflow and meta (not written
//! again: re-running is idempotent), and which failed and why.

mod campaign;

pub use campaign::{LeaderWatch, Leaders, Leadership, LEADER_TOKEN_PARAM};

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filter::{Expr, Filter, Key, Literal, Op, Predicate, Span};
use crate::model::{Kind, Machine, ParamDef, Profile};
use crate::store::{ListOptions, Store};

/// Profile param naming the cluster profile itself.
pub const PROFILE_PARAM: &str = "cluster/profile";
/// Profile param holding the member filter.
pub const FILTER_PARAM: &str = "cluster/filter";
/// Machine param: the machine is the cluster manager (default false).
pub const MANAGER_PARAM: &str = "cluster/manager";
/// Machine param: the machine is a cluster leader (default false).
pub const LEADER_PARAM: &str = "cluster/leader";
/// Profile param naming (by Uuid) the machine that fences elections.
pub const FENCE_PARAM: &str = "cluster/fence";
/// Param of the fence machine: the token every election replaces.
pub const FENCE_TOKEN_PARAM: &str = "cluster/fence-token";

/// How many times an election re-reads and retries after a conflict.
const ELECT_ATTEMPTS: u32 = 64;

/// A member's built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `cluster/manager` true.
    Manager,
    /// `cluster/leader` true (and not manager).
    Leader,
    /// Neither manager nor leader.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Leader => "leader",
            Role::Worker => "worker",
        })
    }
}

impl Role {
    /// The role that effective params give (manager wins over leader; `true`
    /// or `"true"`).
    pub fn of(params: &serde_json::Map<String, Value>) -> Role {
        let on = |k: &str| {
            matches!(params.get(k), Some(Value::Bool(true)))
                || params.get(k).and_then(Value::as_str) == Some("true")
        };
        if on(MANAGER_PARAM) {
            Role::Manager
        } else if on(LEADER_PARAM) {
            Role::Leader
        } else {
            Role::Worker
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s.to_ascii_lowercase().as_str() {
            "manager" => Ok(Role::Manager),
            "leader" => Ok(Role::Leader),
            "worker" => Ok(Role::Worker),
            _ => Err(Error::invalid(
                "role",
                format!("{s:?}: expected manager, leader or worker"),
            )),
        }
    }
}

/// A cluster: a handle on its profile in a store. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    store: Store,
    name: String,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish()
    }
}

impl Cluster {
    /// Creates or completes cluster profile `name`: `cluster/profile = name`,
    /// `cluster/filter` = `filter` when given, else kept, else
    /// `Profiles Eq name`; defines the `cluster/*` params that are missing.
    /// Idempotent: a second identical call writes nothing. A filter that does
    /// not parse or bind is refused before anything is written.
    pub fn init(store: &Store, name: &str, filter: Option<&str>) -> Result<Cluster> {
        if let Some(f) = filter {
            store.machines().prepare(&Filter::parse(f)?)?;
        }
        for (param, ty, default) in [
            (MANAGER_PARAM, "boolean", Some(false)),
            (LEADER_PARAM, "boolean", Some(false)),
            (PROFILE_PARAM, "string", None),
            (FILTER_PARAM, "string", None),
            (LEADER_TOKEN_PARAM, "integer", None),
        ] {
            if store.params().exists(param) {
                continue;
            }
            let mut schema = json!({ "type": ty });
            if let Some(d) = default {
                schema["default"] = json!(d);
            }
            match store.params().create(ParamDef::new(param, schema)) {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let wanted_filter = match filter {
            Some(f) => f.to_string(),
            None => default_filter(name),
        };
        if !store.profiles().exists(name) {
            let mut p = Profile::new(name);
            p.params.insert(PROFILE_PARAM.into(), json!(name));
            p.params
                .insert(FILTER_PARAM.into(), json!(wanted_filter.clone()));
            match store.profiles().create(p) {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let p = store.profiles().get(name)?;
        let mut changes = Map::new();
        if p.params.get(PROFILE_PARAM) != Some(&json!(name)) {
            changes.insert(PROFILE_PARAM.into(), json!(name));
        }
        match p.params.get(FILTER_PARAM) {
            Some(Value::String(f)) if filter.is_none() || *f == wanted_filter => {}
            _ => {
                changes.insert(FILTER_PARAM.into(), json!(wanted_filter));
            }
        }
        if !changes.is_empty() {
            store
                .profiles()
                .update(name, &json!({ "Params": changes }))?;
        }
        Ok(Cluster {
            store: store.clone(),
            name: name.to_string(),
        })
    }

    /// The cluster whose profile is `name`. [`Error::NotFound`] without the
    /// profile; [`Error::Invalid`] when the profile does not name itself in
    /// `cluster/profile` (it was not initialized as a cluster).
    pub fn open(store: &Store, name: &str) -> Result<Cluster> {
        let p = store.profiles().get(name)?;
        if p.params.get(PROFILE_PARAM).and_then(Value::as_str) != Some(name) {
            return Err(Error::invalid(
                format!("cluster {name}"),
                format!("profile {name} has no {PROFILE_PARAM} = {name:?}: initialize it as a cluster first"),
            ));
        }
        Ok(Cluster {
            store: store.clone(),
            name: name.to_string(),
        })
    }

    /// The cluster (profile) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored member filter (`cluster/filter`, default `Profiles Eq
    /// NAME`) And `extra`, spliced as data: the stored filter stays one term
    /// whatever its operators.
    pub fn member_filter(&self, extra: Filter) -> Result<Filter> {
        let p = self.store.profiles().get(&self.name)?;
        let stored = match p.params.get(FILTER_PARAM) {
            None => return Ok(profile_filter(&self.name).and(extra)),
            Some(Value::String(s)) => Filter::parse(s)?,
            Some(other) => {
                return Err(Error::invalid(
                    format!("{FILTER_PARAM} of profile {}", self.name),
                    format!("expected a string, found {other}"),
                ))
            }
        };
        Ok(stored.and(extra))
    }

    /// The members that also match `extra`, as JSON shaped by `opts`.
    pub fn members(&self, extra: Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        self.store
            .machines()
            .list(&self.member_filter(extra)?, opts)
    }

    /// How many members also match `extra` (from the indexes alone).
    pub fn count(&self, extra: Filter) -> Result<u64> {
        self.store.machines().count(&self.member_filter(extra)?)
    }

    /// Adds the cluster profile to machine `machine` (last in its list), in
    /// one patch with a `test` of `Profiles` as read. No write if it has it.
    pub fn add(&self, machine: &str) -> Result<Machine> {
        self.edit_profiles(machine, true)
    }

    /// Removes the cluster profile from machine `machine`, in one patch with
    /// a `test` of `Profiles` as read. No write if it does not have it.
    pub fn remove(&self, machine: &str) -> Result<Machine> {
        self.edit_profiles(machine, false)
    }

    fn edit_profiles(&self, machine: &str, add: bool) -> Result<Machine> {
        let m = self.store.machines().get(machine)?;
        let mut profiles = m.profiles.clone();
        match (add, profiles.contains(&self.name)) {
            (true, false) => profiles.push(self.name.clone()),
            (false, true) => profiles.retain(|p| *p != self.name),
            _ => return Ok(m),
        }
        let ops = json!([
            { "op": "test", "path": "/Profiles", "value": m.profiles },
            { "op": "replace", "path": "/Profiles", "value": profiles },
        ]);
        self.store
            .machines()
            .patch(&format!("Uuid:{}", m.uuid), &ops)
    }

    /// Sets a member's role: both `cluster/manager` and `cluster/leader` in
    /// one merge. [`Error::Invalid`] if the machine is not a member.
    pub fn set_role(&self, machine: &str, role: Role) -> Result<Machine> {
        let m = self.member(machine)?;
        let (manager, leader) = match role {
            Role::Manager => (true, false),
            Role::Leader => (false, true),
            Role::Worker => (false, false),
        };
        self.store.machines().update(
            &format!("Uuid:{}", m.uuid),
            &json!({ "Params": { MANAGER_PARAM: manager, LEADER_PARAM: leader } }),
        )
    }

    /// A member's role from its effective params (manager wins over leader).
    pub fn role(&self, machine: &str) -> Result<Role> {
        let m = self.member(machine)?;
        let params = self
            .store
            .machines()
            .params(&format!("Uuid:{}", m.uuid), true)?;
        Ok(Role::of(&params))
    }

    fn member(&self, machine: &str) -> Result<Machine> {
        let m = self.store.machines().get(machine)?;
        let only = Filter::parse(&format!("Uuid Eq {}", m.uuid))?;
        if self.count(only)? == 0 {
            return Err(Error::invalid(
                format!("machine {}", m.name),
                format!("not a member of cluster {}", self.name),
            ));
        }
        Ok(m)
    }

    /// The non-manager leaders, in creation order.
    pub fn leaders(&self) -> Result<Vec<Machine>> {
        let rows = self.members(role_filter(false, true)?, &ListOptions::default())?;
        rows.into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| Error::Corrupt {
                    key: "machine".into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Makes sure `n` non-manager members are leaders (see the module doc):
    /// picks the missing ones at random in one atomic write, retrying on
    /// conflicts; returns the leaders. Idempotent and safe to call from
    /// every member at once. More leaders than eligible members is
    /// [`Error::Invalid`], with nothing written.
    pub fn elect(&self, n: usize) -> Result<Vec<Machine>> {
        let mut last = None;
        for attempt in 0..ELECT_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt);
            }
            match self.try_elect(n) {
                Ok(leaders) => return Ok(leaders),
                Err(e @ Error::Conflict { .. })
                | Err(
                    e @ Error::NotFound {
                        kind: Kind::Machine,
                        ..
                    },
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("election", "no attempt was made")))
    }

    /// (Leaders, candidates): counts of the members in each state.
    fn tally(&self, candidates: &crate::Query) -> Result<(usize, usize)> {
        let machines = self.store.machines();
        let leaders = machines.count(&self.member_filter(role_filter(false, true)?)?)?;
        Ok((leaders as usize, machines.count_query(candidates) as usize))
    }

    fn try_elect(&self, n: usize) -> Result<Vec<Machine>> {
        let machines = self.store.machines();
        let q = machines.prepare(&self.member_filter(role_filter(false, false)?)?)?;
        // Settled or impossible: answer without writing anything (not even
        // the fence's designation).
        let (leaders, eligible) = self.tally(&q)?;
        if leaders >= n {
            return self.leaders();
        }
        if leaders + eligible < n {
            return Err(Error::invalid(
                format!("election in cluster {}", self.name),
                format!(
                    "asked for {n} leaders but only {} non-manager members are eligible ({leaders} leaders, {eligible} candidates)",
                    leaders + eligible
                ),
            ));
        }
        // The fence first, then the authoritative counts (see the module doc).
        let Some((fence_uuid, token)) = self.fence()? else {
            return Err(changed("the members changed while reading"));
        };
        let (leaders, eligible) = self.tally(&q)?;
        if leaders >= n {
            return self.leaders();
        }
        let need = n - leaders;
        if need > eligible {
            return Err(changed("the candidates changed while reading"));
        }
        let picks = sample(eligible, need);
        let rows: Vec<Value> = if need <= 32 {
            let mut rows = Vec::with_capacity(need);
            for &i in &picks {
                let opts = ListOptions {
                    offset: i,
                    limit: Some(1),
                    slim: vec!["Meta".into()],
                    ..ListOptions::default()
                };
                match machines.list_query(&q, &opts)?.pop() {
                    Some(v) => rows.push(v),
                    None => return Err(changed("the candidates changed while reading")),
                }
            }
            rows
        } else {
            let opts = ListOptions {
                slim: vec!["Meta".into()],
                ..ListOptions::default()
            };
            let mut all = machines.list_query(&q, &opts)?;
            if all.len() != eligible {
                return Err(changed("the candidates changed while reading"));
            }
            picks.iter().map(|&i| all[i].take()).collect()
        };
        let mut ops: HashMap<String, Vec<Value>> = HashMap::with_capacity(need + 1);
        let mut order = Vec::with_capacity(need + 1);
        for row in rows {
            let uuid = row.get("Uuid").and_then(Value::as_str).unwrap_or_default();
            let leader_ptr = format!("/Params/{}", escape(LEADER_PARAM));
            order.push(uuid.to_string());
            ops.insert(
                uuid.to_string(),
                vec![
                    json!({ "op": "test", "path": "/Profiles", "value": row.get("Profiles") }),
                    json!({ "op": "test", "path": "/Params", "value": row.get("Params") }),
                    json!({ "op": "add", "path": leader_ptr, "value": true }),
                ],
            );
        }
        let token_ptr = format!("/Params/{}", escape(FENCE_TOKEN_PARAM));
        let fence_ops = ops.entry(fence_uuid.clone()).or_insert_with(|| {
            order.push(fence_uuid.clone());
            Vec::new()
        });
        fence_ops.push(json!({ "op": "test", "path": token_ptr, "value": token }));
        fence_ops.push(json!({ "op": "replace", "path": token_ptr, "value": fresh_token() }));
        let batch: Vec<(String, Value)> = order
            .into_iter()
            .map(|u| {
                let o = ops.remove(&u).unwrap_or_default();
                (format!("Uuid:{u}"), Value::Array(o))
            })
            .collect();
        machines.patch_many(&batch)?;
        self.leaders()
    }

    /// The fence machine's Uuid and token, designating the first member (and
    /// giving it a token) when needed; `None` when the cluster has no members.
    fn fence(&self) -> Result<Option<(String, Value)>> {
        for _ in 0..8 {
            let p = self.store.profiles().get(&self.name)?;
            let designated = p.params.get(FENCE_PARAM).cloned();
            if let Some(Value::String(u)) = &designated {
                match self.store.machines().get(&format!("Uuid:{u}")) {
                    Ok(m) => match m.params.get(FENCE_TOKEN_PARAM) {
                        Some(t) => return Ok(Some((u.clone(), t.clone()))),
                        None => {
                            tolerate(self.store.machines().set_param_if(
                                &format!("Uuid:{u}"),
                                FENCE_TOKEN_PARAM,
                                None,
                                fresh_token(),
                            ))?;
                            continue;
                        }
                    },
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let opts = ListOptions {
                limit: Some(1),
                slim: vec!["Params".into(), "Meta".into()],
                ..ListOptions::default()
            };
            let first = self.members(Filter::all(), &opts)?;
            let Some(uuid) = first
                .first()
                .and_then(|v| v.get("Uuid"))
                .and_then(Value::as_str)
            else {
                return Ok(None);
            };
            tolerate(self.store.profiles().set_param_if(
                &self.name,
                FENCE_PARAM,
                designated.as_ref(),
                json!(uuid),
            ))?;
        }
        Err(changed("the election fence kept changing"))
    }

    /// [`start_workflow`] on the members that also match `extra`.
    pub fn start_workflow(
        &self,
        extra: Filter,
        workflow: &str,
        meta: &[(String, String)],
    ) -> Result<WorkflowReport> {
        start_workflow(&self.store, &self.member_filter(extra)?, workflow, meta)
    }
}

/// `cluster/manager Eq M And cluster/leader Eq L`.
fn role_filter(manager: bool, leader: bool) -> Result<Filter> {
    Ok(Filter::parse(&format!(
        "{MANAGER_PARAM} Eq {manager} And {LEADER_PARAM} Eq {leader}"
    ))?)
}

/// `Profiles Eq NAME`, built as an AST so that any name is one literal.
fn profile_filter(name: &str) -> Filter {
    Filter {
        expr: Some(Expr::Pred(Predicate {
            key: Key::Profiles,
            op: Op::Eq,
            values: vec![Literal {
                text: name.to_string(),
                quoted: false,
                span: Span::default(),
            }],
            span: Span::default(),
        })),
    }
}

/// The default `cluster/filter` text for cluster `name`.
pub fn default_filter(name: &str) -> String {
    profile_filter(name).to_string()
}

fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn changed(why: &str) -> Error {
    Error::Conflict {
        path: format!("election: {why}"),
        expected: None,
        actual: None,
    }
}

/// A conflict means someone else wrote first: fine, the caller re-reads.
fn tolerate<T>(r: Result<T>) -> Result<()> {
    match r {
        Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn random_below(n: usize) -> usize {
    (Uuid::new_v4().as_u128() % n as u128) as usize
}

fn fresh_token() -> Value {
    json!(Uuid::new_v4().to_string())
}

/// `k` distinct indexes below `n`, uniformly (Floyd's algorithm), ascending.
fn sample(n: usize, k: usize) -> Vec<usize> {
    let mut set = BTreeSet::new();
    for j in n - k..n {
        let t = random_below(j + 1);
        if !set.insert(t) {
            set.insert(j);
        }
    }
    set.into_iter().collect()
}

/// Sleeps a jittered, growing delay (up to ~32 ms) before retry `attempt`.
fn backoff(attempt: u32) {
    let cap = 1u64 << attempt.min(5);
    let micros = random_below((cap * 1000) as usize) as u64;
    std::thread::sleep(Duration::from_micros(micros + 100));
}

/// What [`start_workflow`] did, machine by machine (Uuids).
///
/// Its schema (with the `server` feature) is the one `POST
/// /api/v3/workflow-all` documents, derived here so it cannot drift.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WorkflowReport {
    /// Machines whose workflow (or meta) was written.
    #[cfg_attr(feature = "server", schema(value_type = Vec<String>, format = "uuid"))]
    pub succeeded: Vec<Uuid>,
    /// Machines already in that workflow with that meta: not written.
    #[cfg_attr(feature = "server", schema(value_type = Vec<String>, format = "uuid"))]
    pub unchanged: Vec<Uuid>,
    /// Machines whose write failed, with the error.
    pub failed: Vec<WorkflowFailure>,
}

/// One machine [`start_workflow`] could not update.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WorkflowFailure {
    /// The machine.
    #[cfg_attr(feature = "server", schema(value_type = String, format = "uuid"))]
    pub uuid: Uuid,
    /// Its Name, as listed.
    pub name: String,
    /// Why the write failed.
    pub error: String,
}

/// Sets `workflow` (and the `meta` entries) on every machine `filter`
/// selects: one atomic merge per machine; machines that already have both
/// are left alone. Per-machine failures are reported, not returned; only a
/// bad filter or workflow name (or a storage failure while listing) is an
/// error. An empty filter selects every machine.
pub fn start_workflow(
    store: &Store,
    filter: &Filter,
    workflow: &str,
    meta: &[(String, String)],
) -> Result<WorkflowReport> {
    if workflow.is_empty() {
        return Err(Error::invalid("workflow", "the workflow name is empty"));
    }
    let wanted: Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let merge = json!({ "Workflow": workflow, "Meta": wanted });
    let opts = ListOptions {
        slim: vec!["Params".into()],
        ..ListOptions::default()
    };
    let mut report = WorkflowReport::default();
    for row in store.machines().list(filter, &opts)? {
        let Some(uuid) = row
            .get("Uuid")
            .and_then(Value::as_str)
            .and_then(|u| Uuid::parse_str(u).ok())
        else {
            continue;
        };
        let same = row.get("Workflow").and_then(Value::as_str) == Some(workflow)
            && wanted
                .iter()
                .all(|(k, v)| row.get("Meta").and_then(|m| m.get(k)) == Some(v));
        if same {
            report.unchanged.push(uuid);
            continue;
        }
        match store.machines().update(&format!("Uuid:{uuid}"), &merge) {
            Ok(_) => report.succeeded.push(uuid),
            Err(e) => report.failed.push(WorkflowFailure {
                uuid,
                name: row
                    .get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                error: e.to_string(),
            }),
        }
    }
    Ok(report)
}
