//! Linearizability, checked (issue 17, part 3): concurrent HTTP clients read,
//! write, compare-and-set and count against `fleetkv serve` while the server
//! is killed with SIGKILL and restarted on the same data directory and port;
//! the recorded history is then checked with stateright's
//! `LinearizabilityTester`.
//!
//! ```text
//! cargo build --bin fleetkv
//! cargo run --example linearizability -- --clients 64 --seconds 60 --kills 5
//! ```
//!
//! `tests/linearizability.rs` runs two bounded runs (64 and 200 clients) of
//! the same code in CI.
//!
//! # The model
//! Checking linearizability is NP-hard, and the tester searches without
//! memoisation, so the history is cut into many small independent objects.
//! Linearizability is local: a history is linearizable iff the sub-history
//! of every object is. One object (a *group*) is one param key
//! `lin/s{slot}g{generation}` on the `machines` (default 3) machines of a
//! slot. The clients are split into teams of `team`; a team works on its own
//! slot, and after `group_ops` operations on it the slot moves to its next
//! generation, a fresh key (a fresh object starting with every machine
//! unset). So a group sees at most `team` concurrent clients and
//! `group_ops` operations, while the server sees every client at once.
//!
//! Operations of a group (`Op`), each one HTTP request:
//! - `Read(m)`: `GET …/machines/{m}/params/{key}` → the value or `null`;
//! - `Write(m, v)`: `POST …/params/{key}` (a blind set) or `PATCH
//!   …/machines/{m}/params` with an `add` (both answer 200);
//! - `Cas(m, expect, v)`: `POST …/params/{key}` with `X-Fleetkv-Expect`
//!   (200: set; 409: nothing changed);
//! - `PatchCas(m, old, v)`: `PATCH …/machines/{m}` with `test` old, `replace`
//!   new (200: set; 409: the test failed, nothing changed);
//! - `Count(v)`: `HEAD …/machines?Name=In(group)&Params.{key}=Eq(v)` → the
//!   index's count of the group's machines holding `v`.
//!
//! Every value written is unique in the run, which keeps the search narrow.
//!
//! # Unknown outcomes
//! A request whose answer never came (connection refused or reset, a
//! timeout, a 5xx) stays open: the tester is told of its invocation and
//! never of its return. stateright's tester then may linearise it at any
//! point after every operation that returned before it was invoked — or not
//! at all (a search ends once every *returned* operation is placed). The
//! tester allows one operation in flight per thread, so a client whose
//! request stays open continues as a new thread (`incarnation + 1`), as
//! Jepsen's processes do. A client that lost an answer waits until the
//! server is up again, and every client opens fresh connections after a
//! restart, so each kill leaves at most one open operation per client.
//!
//! The search has a step budget per group: a group whose search runs out of
//! it is reported as undecided (neither proven linearizable nor not).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// Most machines a group may have (the model keeps them in an array).
pub const MAX_MACHINES: usize = 4;
/// Search steps per group before it is called undecided.
const STEP_BUDGET: u64 = 1_000_000;
/// Longest a request may take before its outcome is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many operations were invoked (kills spread by operations).
    Ops(u64),
    /// After this long (kills spread in time).
    Time(Duration),
}

/// One run of the harness.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `fleetkv` binary.
    pub bin: PathBuf,
    /// Concurrent clients (threads, one connection each).
    pub clients: usize,
    /// Clients per slot: the most that work on one group at a time.
    pub team: usize,
    /// Machines per group (at most [`MAX_MACHINES`]).
    pub machines: usize,
    /// Operations per group before its slot moves to a fresh one.
    pub group_ops: u64,
    pub stop: Stop,
    /// SIGKILL + restart cycles, spread evenly over the run.
    pub kills: usize,
    /// Extra flags for `fleetkv` (`--no-fsync` breaks durability on purpose).
    pub server_flags: Vec<String>,
    pub seed: u64,
    /// Threads that check groups in parallel.
    pub check_threads: usize,
    /// Stop checking at the first violation (the test's choice: a broken
    /// server violates in most groups, and proving each takes a full search).
    pub first_violation: bool,
}

// ---------------------------------------------------------------------------
// The sequential specification of one group.

/// An operation on one group; machines by index within the group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read(usize),
    Write(usize, u64),
    Cas(usize, Option<u64>, u64),
    PatchCas(usize, u64, u64),
    Count(u64),
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    Value(Option<u64>),
    Written,
    Swapped,
    CasFailed,
    Count(u64),
}

/// Most operations a group may have: the search's set of placed operations
/// is a bitset of this many bits.
pub const MAX_GROUP_OPS: u64 = 256;

/// An operation as the tester sees it: numbered within its group, so the
/// search can tell which operations it has placed.
#[derive(Clone, Debug)]
pub struct Tagged {
    id: usize,
    op: Op,
}

/// A configuration of the search: the operations placed and the state they
/// left.
type SearchPoint = (
    [u64; (MAX_GROUP_OPS / 64) as usize],
    [Option<u64>; MAX_MACHINES],
);

/// One group as a sequential object: each machine's value of the group's
/// key. It also carries the search's memory, which stateright's tester does
/// not keep: which operations the current path has placed, and every
/// configuration the search has entered. The tester searches depth first
/// and stops at the first full linearisation, so a configuration entered
/// before was explored to the end without one: entering it again is
/// refused at once (the cache of Wing & Gong, Lowe). Without it a group of
/// 100 operations by 4 clients took up to 97 s to check.
#[derive(Clone, Debug)]
pub struct Group {
    vals: [Option<u64>; MAX_MACHINES],
    placed: [u64; (MAX_GROUP_OPS / 64) as usize],
    seen: Rc<RefCell<HashSet<SearchPoint>>>,
    steps: Rc<Cell<u64>>,
    /// Set once a violation is found when the run stops at the first one.
    abort: Arc<AtomicBool>,
}

impl Group {
    fn new(abort: Arc<AtomicBool>) -> Self {
        Group {
            vals: [None; MAX_MACHINES],
            placed: [0; (MAX_GROUP_OPS / 64) as usize],
            seen: Rc::default(),
            steps: Rc::default(),
            abort,
        }
    }

    fn apply(&mut self, op: &Op) -> Ret {
        match *op {
            Op::Read(m) => Ret::Value(self.vals[m]),
            Op::Write(m, v) => {
                self.vals[m] = Some(v);
                Ret::Written
            }
            Op::Cas(m, expect, v) => {
                if self.vals[m] == expect {
                    self.vals[m] = Some(v);
                    Ret::Swapped
                } else {
                    Ret::CasFailed
                }
            }
            Op::PatchCas(m, old, v) => {
                if self.vals[m] == Some(old) {
                    self.vals[m] = Some(v);
                    Ret::Swapped
                } else {
                    Ret::CasFailed
                }
            }
            Op::Count(v) => Ret::Count(self.vals.iter().filter(|x| **x == Some(v)).count() as u64),
        }
    }
}

impl SequentialSpec for Group {
    type Op = Tagged;
    type Ret = Ret;

    /// The tester calls this to place an open operation (whatever it would
    /// have answered).
    fn invoke(&mut self, t: &Tagged) -> Ret {
        // An open read or count changes nothing: where (or whether) it is
        // placed makes no difference to what follows, so the search's
        // memory leaves it out and sees one configuration, not two.
        if !matches!(t.op, Op::Read(_) | Op::Count(_)) {
            self.placed[t.id / 64] |= 1 << (t.id % 64);
        }
        self.apply(&t.op)
    }

    /// The tester calls this to place a returned operation.
    fn is_valid_step(&mut self, t: &Tagged, ret: &Ret) -> bool {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        // Past the budget every step fails, so the search unwinds at once.
        if steps > STEP_BUDGET || self.abort.load(Ordering::Relaxed) {
            return false;
        }
        self.placed[t.id / 64] |= 1 << (t.id % 64);
        if self.apply(&t.op) != *ret {
            return false;
        }
        self.seen.borrow_mut().insert((self.placed, self.vals))
    }
}

// ---------------------------------------------------------------------------
// The history.

/// (client, incarnation): a tester thread. A client whose request stays
/// open continues as its next incarnation.
pub type ThreadId = (u32, u32);

/// (slot, generation).
pub type GroupId = (u32, u32);

#[derive(Clone, Debug)]
enum Event {
    Invoke(Op),
    Return(Ret),
}

/// One event of one client, stamped from the run's global sequence: an
/// invocation is stamped before its request is sent, a return after its
/// answer arrived, so the order of stamps respects real time.
#[derive(Clone, Debug)]
struct Stamped {
    seq: u64,
    group: GroupId,
    thread: ThreadId,
    event: Event,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Figures {
    pub clients: usize,
    pub invoked: u64,
    /// Operations with a definite answer.
    pub returned: u64,
    /// Of those: compare-and-sets refused (409).
    pub cas_failed: u64,
    /// Operations whose answer never came (they may or may not have happened).
    pub open: u64,
    /// Invocations per kind: read, write, cas, patch-cas, count.
    pub by_kind: BTreeMap<&'static str, u64>,
    pub kills: usize,
    /// Longest a restart took, from the kill to the server listening again.
    pub max_restart: Duration,
    pub groups: usize,
    pub max_group_ops: usize,
    /// The load phase.
    pub run_time: Duration,
    /// The checker, wall time (over `check_threads`).
    pub check_time: Duration,
    /// The slowest group's check.
    pub max_group_check: Duration,
    /// Groups whose history is not linearizable, with their history.
    pub violations: Vec<String>,
    /// Groups whose search ran out of its step budget.
    pub undecided: Vec<GroupId>,
    /// Groups left unchecked after the first violation
    /// ([`Config::first_violation`]).
    pub unchecked: usize,
}

impl Figures {
    /// Every group checked and linearizable.
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty() && self.undecided.is_empty() && self.unchecked == 0
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.run_time.as_secs_f64();
        writeln!(f, "clients                {}", self.clients)?;
        writeln!(
            f,
            "ops invoked            {} ({:.0} ops/s over {:.1} s)",
            self.invoked,
            self.invoked as f64 / secs.max(1e-9),
            secs
        )?;
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  by kind              {}", kinds.join(", "))?;
        writeln!(
            f,
            "ops returned           {} (of which {} CAS refused)",
            self.returned, self.cas_failed
        )?;
        writeln!(f, "ops open (unknown)     {}", self.open)?;
        writeln!(
            f,
            "kills (SIGKILL)        {} (slowest restart {} ms)",
            self.kills,
            self.max_restart.as_millis()
        )?;
        writeln!(
            f,
            "groups                 {} (at most {} ops each)",
            self.groups, self.max_group_ops
        )?;
        writeln!(
            f,
            "checker time           {:.2} s (slowest group {} ms)",
            self.check_time.as_secs_f64(),
            self.max_group_check.as_millis()
        )?;
        let result = if self.linearizable() {
            "linearizable".to_string()
        } else {
            format!(
                "NOT linearizable: {} groups violate, {} undecided, {} unchecked",
                self.violations.len(),
                self.undecided.len(),
                self.unchecked
            )
        };
        write!(f, "result                 {result}")
    }
}

// ---------------------------------------------------------------------------
// The server.

/// `fleetkv serve`, killed (SIGKILL) on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fleetkv serve` on `data` at `listen` and waits until it listens;
/// answers the server and its URL.
fn start_server(cfg: &Config, data: &Path, listen: &str) -> Result<(Server, String), String> {
    let mut child = Command::new(&cfg.bin)
        .args(&cfg.server_flags)
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .env_remove("FLEETKV_DATA")
        .env_remove("FLEETKV_NO_FSYNC")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let server = Server { child };
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => match line.strip_prefix("fleetkv: listening on ") {
                Some(u) => break u.to_string(),
                None => said.push(line),
            },
            _ => return Err(format!("the server exited: {}", said.join(" | "))),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((server, url))
}

/// What clients share: the server's address and whether it is up.
struct Shared {
    url: String,
    auth: String,
    /// (up, epoch): the epoch counts restarts.
    up: Mutex<(bool, u64)>,
    changed: Condvar,
    stop: AtomicBool,
    seq: AtomicU64,
    next_value: AtomicU64,
    invoked: AtomicU64,
    returned: AtomicU64,
    slots: Vec<AtomicU64>,
    /// The first unexpected answer (a harness or server bug), which stops the run.
    failure: Mutex<Option<String>>,
}

impl Shared {
    /// Waits until the server is up; answers its epoch.
    fn wait_up(&self) -> Option<u64> {
        let mut g = self.up.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if g.0 {
                return Some(g.1);
            }
            g = self
                .changed
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn set_up(&self, up: bool) {
        let mut g = self.up.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = up;
        if up {
            g.1 += 1;
        }
        self.changed.notify_all();
    }

    fn fail(&self, msg: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(msg);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stamp(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }
}

fn new_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_idle_connections_per_host(1)
        .build()
}

/// An HTTP answer: status, body, `X-DRP-List-Count`.
type Answer = (u16, String, Option<u64>);

/// One request; `Err` when no answer came.
fn request(
    agent: &ureq::Agent,
    shared: &Shared,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
    expect: Option<String>,
) -> Result<Answer, String> {
    let mut r = agent
        .request(method, &format!("{}/api/v3{path}", shared.url))
        .set("Authorization", &shared.auth);
    if let Some(e) = &expect {
        r = r.set("X-Fleetkv-Expect", e);
    }
    let res = match body {
        Some((ct, b)) => r.set("Content-Type", ct).send_string(&b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let count = resp.header("X-DRP-List-Count").and_then(|c| c.parse().ok());
    let text = resp.into_string().map_err(|e| e.to_string())?;
    Ok((status, text, count))
}

/// The outcome of one operation.
enum Outcome {
    /// A definite answer, mapped to the model.
    Ret(Ret),
    /// No answer (or one that says nothing about the outcome): stays open.
    Unknown(#[allow(dead_code)] String),
    /// An answer the model has no place for: a bug in the harness or server.
    Unexpected(String),
}

fn machine_name(slot: u32, m: usize) -> String {
    format!("lin-s{slot}-m{m}")
}

fn key_of(g: GroupId) -> String {
    format!("lin/s{}g{}", g.0, g.1)
}

/// Runs `op` on group `g` over HTTP and maps its answer to the model.
fn perform(
    agent: &ureq::Agent,
    shared: &Shared,
    g: GroupId,
    op: &Op,
    k: usize,
    via_patch: bool,
) -> Outcome {
    let key = key_of(g);
    // A JSON Pointer segment: `/` is `~1`.
    let pointer = key.replace('~', "~0").replace('/', "~1");
    let (answer, what) = match *op {
        Op::Read(m) => (
            request(
                agent,
                shared,
                "GET",
                &format!("/machines/{}/params/{key}", machine_name(g.0, m)),
                None,
                None,
            ),
            "read",
        ),
        Op::Write(m, v) if via_patch => (
            request(
                agent,
                shared,
                "PATCH",
                &format!("/machines/{}/params", machine_name(g.0, m)),
                Some((
                    "application/json-patch+json",
                    json!([{"op": "add", "path": format!("/{pointer}"), "value": v}]).to_string(),
                )),
                None,
            ),
            "write",
        ),
        Op::Write(m, v) => (
            request(
                agent,
                shared,
                "POST",
                &format!("/machines/{}/params/{key}", machine_name(g.0, m)),
                Some(("application/json", v.to_string())),
                None,
            ),
            "write",
        ),
        Op::Cas(m, expect, v) => (
            request(
                agent,
                shared,
                "POST",
                &format!("/machines/{}/params/{key}", machine_name(g.0, m)),
                Some(("application/json", v.to_string())),
                Some(expect.map_or("absent".to_string(), |e| e.to_string())),
            ),
            "cas",
        ),
        Op::PatchCas(m, old, v) => (
            request(
                agent,
                shared,
                "PATCH",
                &format!("/machines/{}", machine_name(g.0, m)),
                Some((
                    "application/json-patch+json",
                    json!([
                        {"op": "test", "path": format!("/Params/{pointer}"), "value": old},
                        {"op": "replace", "path": format!("/Params/{pointer}"), "value": v},
                    ])
                    .to_string(),
                )),
                None,
            ),
            "cas",
        ),
        Op::Count(v) => {
            let names: Vec<String> = (0..k).map(|m| machine_name(g.0, m)).collect();
            (
                request(
                    agent,
                    shared,
                    "HEAD",
                    &format!(
                        "/machines?Name=In({})&Params.{key}=Eq({v})",
                        names.join(",")
                    ),
                    None,
                    None,
                ),
                "count",
            )
        }
    };
    let (status, body, count) = match answer {
        Ok(a) => a,
        Err(e) => return Outcome::Unknown(e),
    };
    match (status, what) {
        (200, "read") => match serde_json::from_str::<Value>(&body) {
            Ok(Value::Null) => Outcome::Ret(Ret::Value(None)),
            Ok(v) => match v.as_u64() {
                Some(n) => Outcome::Ret(Ret::Value(Some(n))),
                None => Outcome::Unexpected(format!("{op:?}: read {v}")),
            },
            Err(e) => Outcome::Unexpected(format!("{op:?}: not JSON ({e}): {body}")),
        },
        (200, "write") => Outcome::Ret(Ret::Written),
        (200, "cas") => Outcome::Ret(Ret::Swapped),
        (409, "cas") => Outcome::Ret(Ret::CasFailed),
        (200, "count") => match count {
            Some(n) => Outcome::Ret(Ret::Count(n)),
            None => Outcome::Unexpected(format!("{op:?}: no X-DRP-List-Count")),
        },
        // Timeouts, a stalled store, an internal error: no telling whether
        // the write landed.
        (408 | 500 | 502 | 503 | 504, _) => Outcome::Unknown(format!("{status} {body}")),
        _ => Outcome::Unexpected(format!("{op:?} on {}: {status} {body}", key_of(g))),
    }
}

/// One client: operations on its team's slot until the run stops.
fn client(cfg: &Config, shared: &Shared, id: u32) -> Vec<Stamped> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ (u64::from(id) << 20));
    let slot = id / cfg.team as u32;
    let mut incarnation = 0u32;
    let mut events = Vec::new();
    let mut epoch = 0;
    let mut agent = new_agent();
    let mut group = (u32::MAX, 0);
    // The values this client last saw per machine of its group.
    let mut known: [Option<u64>; MAX_MACHINES] = [None; MAX_MACHINES];
    while let Some(e) = shared.wait_up() {
        if e != epoch {
            // Fresh connections after a restart: a pooled one to the dead
            // server would turn the next write into an unknown outcome.
            agent = new_agent();
            epoch = e;
        }
        let n = shared.slots[slot as usize].fetch_add(1, Ordering::SeqCst);
        let g = (slot, (n / cfg.group_ops) as u32);
        if g != group {
            group = g;
            known = [None; MAX_MACHINES];
        }
        let m = rng.usize(0..cfg.machines);
        let fresh = || shared.next_value.fetch_add(1, Ordering::SeqCst);
        let op = match rng.u32(0..100) {
            0..30 => Op::Read(m),
            30..50 => Op::Write(m, fresh()),
            50..70 => Op::Cas(m, known[m], fresh()),
            70..90 => match known[m] {
                Some(old) => Op::PatchCas(m, old, fresh()),
                None => Op::Cas(m, None, fresh()),
            },
            _ => {
                // A value some machine of the group may hold.
                let seen: Vec<u64> = known.iter().flatten().copied().collect();
                if seen.is_empty() {
                    Op::Read(m)
                } else {
                    Op::Count(seen[rng.usize(0..seen.len())])
                }
            }
        };
        let via_patch = rng.bool();
        let thread = (id, incarnation);
        events.push(Stamped {
            seq: shared.stamp(),
            group: g,
            thread,
            event: Event::Invoke(op.clone()),
        });
        shared.invoked.fetch_add(1, Ordering::SeqCst);
        match perform(&agent, shared, g, &op, cfg.machines, via_patch) {
            Outcome::Ret(ret) => {
                events.push(Stamped {
                    seq: shared.stamp(),
                    group: g,
                    thread,
                    event: Event::Return(ret.clone()),
                });
                shared.returned.fetch_add(1, Ordering::SeqCst);
                match (&op, ret) {
                    (Op::Read(m), Ret::Value(v)) => known[*m] = v,
                    (
                        Op::Write(m, v) | Op::Cas(m, _, v) | Op::PatchCas(m, _, v),
                        Ret::Written | Ret::Swapped,
                    ) => known[*m] = Some(*v),
                    (Op::Cas(m, ..) | Op::PatchCas(m, ..), Ret::CasFailed) => known[*m] = None,
                    _ => {}
                }
            }
            Outcome::Unknown(_) => {
                // Open for good: go on as a new tester thread, once the
                // server is back (a request during the outage would only
                // add another open operation).
                incarnation += 1;
                known = [None; MAX_MACHINES];
                std::thread::yield_now();
            }
            Outcome::Unexpected(msg) => {
                shared.fail(format!("client {id}: {msg}"));
                break;
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
    }
    events
}

/// Runs the clients against a server they see killed and restarted, then
/// checks the history. `Err` when the run itself failed (the server did not
/// start, an answer the model has no place for).
pub fn run(cfg: &Config) -> Result<Figures, String> {
    if cfg.machines == 0
        || cfg.machines > MAX_MACHINES
        || cfg.team == 0
        || cfg.clients == 0
        || cfg.group_ops == 0
        || cfg.group_ops > MAX_GROUP_OPS
    {
        return Err(
            "machines must be 1..=4, group_ops 1..=256, team and clients at least 1".into(),
        );
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("db");
    let (server, url) = start_server(cfg, &data, "127.0.0.1:0")?;
    let listen = url.trim_start_matches("http://").to_string();
    let key = std::fs::read_to_string(data.join("admin.key")).map_err(|e| e.to_string())?;
    let slots = cfg.clients.div_ceil(cfg.team);
    let shared = Arc::new(Shared {
        url,
        auth: format!("Bearer {}", key.trim()),
        up: Mutex::new((true, 1)),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        next_value: AtomicU64::new(1),
        invoked: AtomicU64::new(0),
        returned: AtomicU64::new(0),
        slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        failure: Mutex::new(None),
    });
    // The machines: the keys of the groups appear on them as they are written.
    {
        let a = new_agent();
        for s in 0..slots as u32 {
            for m in 0..cfg.machines {
                let body = json!({"Name": machine_name(s, m)}).to_string();
                match request(
                    &a,
                    &shared,
                    "POST",
                    "/machines",
                    Some(("application/json", body)),
                    None,
                ) {
                    Ok((201, ..)) => {}
                    other => return Err(format!("creating {}: {other:?}", machine_name(s, m))),
                }
            }
        }
    }

    let started = Instant::now();
    let mut figures = Figures {
        clients: cfg.clients,
        ..Figures::default()
    };
    let mut server = Some(server);
    let events: Vec<Stamped> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cfg.clients as u32)
            .map(|id| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("client-{id}"))
                    .spawn_scoped(scope, move || client(cfg, shared, id))
                    .expect("a client thread")
            })
            .collect();
        // The killer: SIGKILL at evenly spread moments, restart on the same
        // directory and port.
        let progress = |shared: &Shared| match cfg.stop {
            Stop::Ops(n) => shared.invoked.load(Ordering::SeqCst) as f64 / n as f64,
            Stop::Time(d) => started.elapsed().as_secs_f64() / d.as_secs_f64(),
        };
        let mut kills_done = 0;
        while !shared.stop.load(Ordering::SeqCst) {
            let p = progress(&shared);
            if p >= 1.0 {
                break;
            }
            if kills_done < cfg.kills && p >= (kills_done + 1) as f64 / (cfg.kills + 1) as f64 {
                let t = Instant::now();
                shared.set_up(false);
                drop(server.take()); // SIGKILL, and wait for the process
                let mut restarted = None;
                for _ in 0..50 {
                    match start_server(cfg, &data, &listen) {
                        Ok((s, _)) => {
                            restarted = Some(s);
                            break;
                        }
                        // The port may not be free again yet.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
                match restarted {
                    Some(s) => server = Some(s),
                    None => {
                        shared.fail(format!("the server did not restart on {listen}"));
                        break;
                    }
                }
                kills_done += 1;
                figures.max_restart = figures.max_restart.max(t.elapsed());
                shared.set_up(true);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        shared.stop.store(true, Ordering::SeqCst);
        shared.changed.notify_all();
        figures.kills = kills_done;
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client panicked"))
            .collect()
    });
    figures.run_time = started.elapsed();
    drop(server);
    if let Some(f) = shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(f);
    }
    check(cfg, events, &mut figures);
    Ok(figures)
}

/// Splits the history by group and checks each group's sub-history.
fn check(cfg: &Config, mut events: Vec<Stamped>, figures: &mut Figures) {
    events.sort_by_key(|e| e.seq);
    let mut groups: BTreeMap<GroupId, Vec<Stamped>> = BTreeMap::new();
    for e in events {
        match &e.event {
            Event::Invoke(op) => {
                figures.invoked += 1;
                let kind = match op {
                    Op::Read(_) => "read",
                    Op::Write(..) => "write",
                    Op::Cas(..) => "cas",
                    Op::PatchCas(..) => "patch-cas",
                    Op::Count(_) => "count",
                };
                *figures.by_kind.entry(kind).or_default() += 1;
            }
            Event::Return(r) => {
                figures.returned += 1;
                if *r == Ret::CasFailed {
                    figures.cas_failed += 1;
                }
            }
        }
        groups.entry(e.group).or_default().push(e);
    }
    figures.open = figures.invoked - figures.returned;
    figures.groups = groups.len();
    let groups: Vec<(GroupId, Vec<Stamped>)> = groups.into_iter().collect();
    figures.max_group_ops = groups
        .iter()
        .map(|(_, h)| {
            h.iter()
                .filter(|e| matches!(e.event, Event::Invoke(_)))
                .count()
        })
        .max()
        .unwrap_or(0);

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let abort = Arc::new(AtomicBool::new(false));
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cfg.check_threads.max(1) {
            std::thread::Builder::new()
                .stack_size(256 << 20) // the search recurses once per operation
                .spawn_scoped(scope, || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((g, history)) = groups.get(i) else {
                        break;
                    };
                    let t = Instant::now();
                    let verdict = check_group(history, &abort);
                    if cfg.first_violation && matches!(verdict, Verdict::Violation) {
                        abort.store(true, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((
                        *g,
                        verdict,
                        t.elapsed(),
                        history,
                    ));
                })
                .expect("a checker thread");
        }
    });
    figures.check_time = started.elapsed();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);
    for (g, verdict, took, history) in results {
        figures.max_group_check = figures.max_group_check.max(took);
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Undecided => figures.undecided.push(g),
            Verdict::Unchecked => figures.unchecked += 1,
            Verdict::Violation => figures.violations.push(format!(
                "group {} ({} events):\n{}",
                key_of(g),
                history.len(),
                render(history)
            )),
        }
    }
}

enum Verdict {
    Linearizable,
    Violation,
    Undecided,
    Unchecked,
}

fn check_group(history: &[Stamped], abort: &Arc<AtomicBool>) -> Verdict {
    if abort.load(Ordering::Relaxed) {
        return Verdict::Unchecked;
    }
    let spec = Group::new(abort.clone());
    let steps = spec.steps.clone();
    let mut tester = LinearizabilityTester::<ThreadId, Group>::new(spec);
    let mut id = 0;
    for e in history {
        let r = match &e.event {
            Event::Invoke(op) => {
                let op = Tagged { id, op: op.clone() };
                id += 1;
                tester.on_invoke(e.thread, op).map(drop)
            }
            Event::Return(ret) => tester.on_return(e.thread, ret.clone()).map(drop),
        };
        if let Err(err) = r {
            // The recorder broke the tester's rules: a harness bug.
            panic!("invalid history: {err}");
        }
    }
    let ok = tester.serialized_history().is_some();
    if ok {
        Verdict::Linearizable
    } else if abort.load(Ordering::Relaxed) {
        Verdict::Unchecked
    } else if steps.get() > STEP_BUDGET {
        Verdict::Undecided
    } else {
        Verdict::Violation
    }
}

/// A group's history, one event a line (open operations marked).
fn render(history: &[Stamped]) -> String {
    let returned: std::collections::HashSet<(ThreadId, u64)> = {
        // An invocation's return is the thread's next event.
        let mut last: BTreeMap<ThreadId, u64> = BTreeMap::new();
        let mut out = std::collections::HashSet::new();
        for e in history {
            match e.event {
                Event::Invoke(_) => {
                    last.insert(e.thread, e.seq);
                }
                Event::Return(_) => {
                    if let Some(s) = last.get(&e.thread) {
                        out.insert((e.thread, *s));
                    }
                }
            }
        }
        out
    };
    history
        .iter()
        .map(|e| match &e.event {
            Event::Invoke(op) => format!(
                "  {:>8} {:?} invoke {op:?}{}",
                e.seq,
                e.thread,
                if returned.contains(&(e.thread, e.seq)) {
                    ""
                } else {
                    "  (OPEN)"
                }
            ),
            Event::Return(r) => format!("  {:>8} {:?} return {r:?}", e.seq, e.thread),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The example's command line.

#[allow(dead_code)] // tests/linearizability.rs includes this file and has its own main
fn main() {
    let mut cfg = Config {
        bin: default_bin(),
        clients: 64,
        team: 4,
        machines: 3,
        group_ops: 100,
        stop: Stop::Time(Duration::from_secs(20)),
        kills: 3,
        server_flags: Vec::new(),
        seed: 1,
        check_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        first_violation: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> String {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        fn num<T: std::str::FromStr>(name: &str, v: String) -> T {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v}")))
        }
        match a.as_str() {
            "--clients" => cfg.clients = num("--clients", value("--clients")),
            "--team" => cfg.team = num("--team", value("--team")),
            "--keys" | "--machines" => cfg.machines = num("--keys", value("--keys")),
            "--group-ops" => cfg.group_ops = num("--group-ops", value("--group-ops")),
            "--seconds" => {
                cfg.stop = Stop::Time(Duration::from_secs_f64(num(
                    "--seconds",
                    value("--seconds"),
                )))
            }
            "--ops" => cfg.stop = Stop::Ops(num("--ops", value("--ops"))),
            "--kills" => cfg.kills = num("--kills", value("--kills")),
            "--seed" => cfg.seed = num("--seed", value("--seed")),
            "--check-threads" => {
                cfg.check_threads = num("--check-threads", value("--check-threads"))
            }
            "--bin" => cfg.bin = PathBuf::from(value("--bin")),
            "--no-fsync" => cfg.server_flags.push("--no-fsync".into()),
            "--first-violation" => cfg.first_violation = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    println!(
        "linearizability: {} clients, teams of {}, {} machines per group, {} ops per group, {:?}, {} kills, seed {}, server {} {}",
        cfg.clients,
        cfg.team,
        cfg.machines,
        cfg.group_ops,
        cfg.stop,
        cfg.kills,
        cfg.seed,
        cfg.bin.display(),
        cfg.server_flags.join(" ")
    );
    match run(&cfg) {
        Ok(f) => {
            println!("{f}");
            for v in f.violations.iter().take(3) {
                println!("{v}");
            }
            if !f.linearizable() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("linearizability run FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// `fleetkv` beside this example's directory (`target/<profile>/fleetkv`).
#[allow(dead_code)]
fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("fleetkv")))
        .unwrap_or_else(|| PathBuf::from("fleetkv"))
}

#[allow(dead_code)]
fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: linearizability [--clients N] [--seconds S | --ops N] [--kills K] [--keys K (machines per group, 1..=4)] \
         [--team N (clients per group)] [--group-ops N] [--seed S] [--check-threads N] [--bin PATH] [--no-fsync] [--first-violation]"
    );
    std::process::exit(2);
}
