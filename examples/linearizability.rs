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
//! it is reported as undecided (neither proven linearizable nor not). Its
//! cost grows exponentially with a group's open operations, so each group
//! sees at most one fault: when a fault is due, a slot still in the
//! generation the fault before it hit moves on to the next, and the fault
//! waits until no operation of such a generation is in flight.
//!
//! A violating group is printed with the end of its shortest violating
//! prefix marked: the event no linearisation explains.
//!
//! # Several servers over etcd (issue 15)
//! ```text
//! cargo build --features etcd --bin fleetkv
//! cargo run --features etcd --example linearizability -- \
//!     --etcd-members 3 --servers 3 --kills 2 --member-kills 2 --pauses 2 [--session-reads | --linearizable-reads]
//! ```
//! With [`EtcdTopology`] the run starts an etcd cluster and several
//! `fleetkv serve --etcd` on it (one admin key written into every data
//! directory), and each client sends each request to the next server up.
//! Faults, spread over the run one at a time: SIGKILL + restart of a
//! server (in turn), SIGKILL + restart of an etcd member (the leader, then
//! a follower, …), SIGSTOP/SIGCONT of a server for [`PAUSE`]. A client's
//! request to a killed server stays open, and it goes on with the next
//! server; after an unknown outcome it backs off (an etcd election answers
//! every write 503 for a while). Two answers say nothing happened and are
//! left out of the history, counted apart: a 409 "revision conflict" (the
//! write lost the revision race to other servers on every attempt) and a
//! 503 `Unavailable` (etcd unreachable: nothing read or written; were
//! either applied after all, its unique value would show up in a read the
//! checker cannot explain).
//!
//! What fleetkv promises to reads across servers: a write is a
//! compare-and-swap on the store revision in etcd, and a refused `test` or
//! CAS is answered only once the server has caught up with etcd, so writes
//! and refusals are linearizable through any server. A read of one
//! machine's param reads the record from etcd (a linearizable get) and was
//! not seen stale. A count (and a list's filter) is answered from the
//! server's own indexes, which follow etcd's watch and may lag a write
//! another server has already answered: with plain requests the checker
//! finds most groups violating, each at a count that misses such a write.
//! Linearizable counts therefore need either the client's side of the
//! bargain, `?min_revision=` the highest `X-Fleetkv-Revision` it knows of
//! (the `--session-reads` mode), or the server's read barrier,
//! `?linearizable=true`: the server catches up with etcd's current revision
//! before it answers (the `--linearizable-reads` mode). Each mode is
//! reported as such.

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

/// The etcd cluster launcher of the tests (`Cluster`: start, SIGKILL,
/// restart members).
#[path = "../tests/common/etcd_server.rs"]
mod etcd_server;

/// Most machines a group may have (the model keeps them in an array).
pub const MAX_MACHINES: usize = 4;
/// Search steps per group before it is called undecided.
const STEP_BUDGET: u64 = 1_000_000;
/// Longest a fault waits for the operations of generations an earlier
/// fault hit to finish.
const FAULT_WAIT: Duration = Duration::from_secs(5);
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
    /// SIGKILL + restart cycles of a fleetkv server (with several servers,
    /// server 0, 1, … in turn), spread evenly over the run with the other
    /// faults of [`EtcdTopology`].
    pub kills: usize,
    /// Extra flags for `fleetkv` (`--no-fsync` breaks durability on purpose).
    pub server_flags: Vec<String>,
    pub seed: u64,
    /// Threads that check groups in parallel.
    pub check_threads: usize,
    /// Stop checking at the first violation (the test's choice: a broken
    /// server violates in most groups, and proving each takes a full search).
    pub first_violation: bool,
    /// Several servers over one etcd cluster the run starts; `None`: one
    /// server on its own data directory.
    pub etcd: Option<EtcdTopology>,
}

/// Several `fleetkv serve --etcd` over one etcd cluster (issue 15).
#[derive(Clone, Debug)]
pub struct EtcdTopology {
    /// Members of the etcd cluster (started and stopped by the run).
    pub members: usize,
    /// fleetkv servers over it, each on its own data directory. A client
    /// sends each request to the next server in turn (skipping one that is
    /// down), so reads meet writes made through the other servers.
    pub servers: usize,
    /// SIGKILL + restart of an etcd member: the leader, then a follower, …
    pub member_kills: usize,
    /// SIGSTOP, [`PAUSE`] later SIGCONT, of a server (server 1, 2, … in turn).
    pub pauses: usize,
    /// How reads and counts ask for freshness.
    pub reads: Reads,
}

/// How reads and counts ask a server for freshness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reads {
    /// Nothing: each server answers from its own indexes as they stand.
    #[default]
    Plain,
    /// `--session-reads`: every read and count passes `?min_revision=` the
    /// highest `X-Fleetkv-Revision` any client had seen returned before it
    /// was invoked. That is the client's side of a bargain, not something
    /// the checker can tell apart: a run with it proves reads linearizable
    /// only for clients that pass on revisions.
    Session,
    /// `--linearizable-reads`: every read and count passes
    /// `?linearizable=true`, the server's read barrier.
    Linearizable,
}

impl fmt::Display for Reads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reads::Plain => "plain",
            Reads::Session => "session (?min_revision=)",
            Reads::Linearizable => "linearizable (?linearizable=true)",
        })
    }
}

/// A client's pause after an unknown outcome, doubled per unknown outcome
/// in a row.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(640);

/// How long a paused server stays stopped.
pub const PAUSE: Duration = Duration::from_secs(1);
/// How long a killed etcd member stays down before its restart.
const MEMBER_DOWN: Duration = Duration::from_secs(1);

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

impl Op {
    /// The kind, as [`Figures::by_kind`] counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Read(_) => "read",
            Op::Write(..) => "write",
            Op::Cas(..) => "cas",
            Op::PatchCas(..) => "patch-cas",
            Op::Count(_) => "count",
        }
    }
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
    /// The server the request went to.
    server: u8,
    /// A return's `X-Fleetkv-Revision` (0: none).
    rev: u64,
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
    /// fleetkv servers (1 without etcd) and etcd members (0 without).
    pub servers: usize,
    pub etcd_members: usize,
    /// How reads and counts asked for freshness ([`EtcdTopology::reads`]).
    pub reads: Reads,
    /// etcd members killed (SIGKILL) and restarted; of those, leaders.
    pub member_kills: usize,
    pub leader_kills: usize,
    /// Longest an etcd member took from its restart to healthy.
    pub max_member_restart: Duration,
    /// Servers paused (SIGSTOP … SIGCONT).
    pub pauses: usize,
    /// Reads (`GET` of a machine's param) answered, and of those the ones
    /// behind: answered with an `X-Fleetkv-Revision` below one some client
    /// had seen returned before the read was invoked. The header names the
    /// server's indexes; the record itself comes from etcd (a linearizable
    /// get), so a read behind is not necessarily stale.
    pub reads_answered: u64,
    pub reads_behind: u64,
    /// Counts (`HEAD`, answered from the indexes alone) answered, and of
    /// those the ones behind as above: each certainly missed writes (of some
    /// group) that completed before it began.
    pub counts_answered: u64,
    pub counts_behind: u64,
    /// The most revisions a read or count was behind.
    pub max_read_lag: u64,
    /// Writes refused after losing the revision race to other servers on
    /// every attempt (409 "revision conflict"): nothing was written, so
    /// they are left out of the history.
    pub races_lost: u64,
    /// Operations refused with 503 `Unavailable` (etcd unreachable:
    /// nothing read or written), left out of the history too.
    pub unavailable: u64,
    pub groups: usize,
    pub max_group_ops: usize,
    /// The most operations one group left open.
    pub max_group_open: usize,
    /// The load phase.
    pub run_time: Duration,
    /// The checker, wall time (over `check_threads`).
    pub check_time: Duration,
    /// The slowest group's check.
    pub max_group_check: Duration,
    /// Groups whose history is not linearizable, with their history.
    pub violations: Vec<String>,
    /// Per kind, the operations whose answer first made a violating group
    /// unexplainable (the end of its shortest violating prefix).
    pub culprits: BTreeMap<&'static str, u64>,
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

    /// Why a run under `cfg` proves less than a test needs, if it does: a
    /// history not found linearizable, or a run that did not exercise what
    /// was asked — every fault done, most operations answered, compare-and-
    /// sets refused, every kind of operation invoked.
    pub fn shortfall(&self, cfg: &Config) -> Option<String> {
        if !self.linearizable() {
            return Some(format!(
                "not linearizable ({} undecided: {:?}, {} unchecked); first violation:\n{}",
                self.undecided.len(),
                self.undecided,
                self.unchecked,
                self.violations.first().map_or("", String::as_str)
            ));
        }
        let mut faults = vec![("server kills", self.kills, cfg.kills)];
        if let Some(t) = &cfg.etcd {
            faults.push(("etcd member kills", self.member_kills, t.member_kills));
            faults.push(("server pauses", self.pauses, t.pauses));
        }
        if let Some((what, done, asked)) = faults.into_iter().find(|(_, d, a)| d != a) {
            return Some(format!("{what}: {done} done, {asked} asked"));
        }
        if self.returned <= self.invoked / 2 {
            return Some(format!("{} of {} returned", self.returned, self.invoked));
        }
        if self.cas_failed == 0 {
            return Some("no compare-and-set was refused".into());
        }
        ["read", "write", "cas", "patch-cas", "count"]
            .into_iter()
            .find(|kind| self.by_kind.get(kind).copied().unwrap_or(0) == 0)
            .map(|kind| format!("no {kind} invoked: {:?}", self.by_kind))
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
        if self.etcd_members > 0 {
            writeln!(
                f,
                "topology               {} servers over {} etcd members, {} reads",
                self.servers, self.etcd_members, self.reads
            )?;
            writeln!(
                f,
                "etcd member kills      {} ({} of the leader; slowest back to healthy {} ms), server pauses {}",
                self.member_kills,
                self.leader_kills,
                self.max_member_restart.as_millis(),
                self.pauses
            )?;
            writeln!(
                f,
                "behind                 {} of {} counts, {} of {} reads answered at a revision below one already returned (at most {} behind)",
                self.counts_behind,
                self.counts_answered,
                self.reads_behind,
                self.reads_answered,
                self.max_read_lag
            )?;
            writeln!(
                f,
                "refused, no effect     {} revision races lost (409), {} etcd unavailable (503); left out",
                self.races_lost, self.unavailable
            )?;
        }
        writeln!(
            f,
            "groups                 {} (at most {} ops, {} open, each)",
            self.groups, self.max_group_ops, self.max_group_open
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
            let culprits: Vec<String> = self
                .culprits
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            format!(
                "NOT linearizable: {} groups violate (first unexplained answer: {}), {} undecided, {} unchecked",
                self.violations.len(),
                culprits.join(", "),
                self.undecided.len(),
                self.unchecked
            )
        };
        write!(f, "result                 {result}")
    }
}

// ---------------------------------------------------------------------------
// The servers.

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

/// Starts `fleetkv serve` on `data` at `listen` (with `extra` flags) and
/// waits until it listens; answers the server and its URL.
fn start_server(
    cfg: &Config,
    data: &Path,
    listen: &str,
    extra: &[String],
) -> Result<(Server, String), String> {
    let mut child = Command::new(&cfg.bin)
        .args(&cfg.server_flags)
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .args(extra)
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
    // What a server says once up (it cannot follow etcd, …) is worth
    // seeing next to a failed run.
    let name = data
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    Ok((server, url))
}

/// `f`, its panic turned into an error: the etcd launcher shared with the
/// tests asserts where the harness answers `Err`.
fn unpanic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{what}: {msg}")
    })
}

/// The processes of a run: one server on its own directory, or several
/// over an etcd cluster the run started. Every process stops on drop.
struct Fleet {
    servers: Vec<Option<Server>>,
    urls: Vec<String>,
    data: Vec<PathBuf>,
    /// `--etcd …` for every server.
    extra: Vec<String>,
    /// Dropped after the servers (field order), so none is left waiting
    /// on a dead cluster.
    etcd: Option<etcd_server::Cluster>,
}

impl Fleet {
    /// Starts the fleet under `dir`; answers it and the admin key.
    fn start(cfg: &Config, dir: &Path) -> Result<(Fleet, String), String> {
        let Some(t) = &cfg.etcd else {
            let data = dir.join("db");
            let (server, url) = start_server(cfg, &data, "127.0.0.1:0", &[])?;
            let key = std::fs::read_to_string(data.join("admin.key"))
                .map_err(|e| format!("reading the admin key: {e}"))?;
            let fleet = Fleet {
                servers: vec![Some(server)],
                urls: vec![url],
                data: vec![data],
                extra: Vec::new(),
                etcd: None,
            };
            return Ok((fleet, key.trim().to_string()));
        };
        let etcd = unpanic("starting etcd", || etcd_server::Cluster::start(t.members))?;
        let extra = vec![
            "--etcd".to_string(),
            etcd.endpoints().join(","),
            "--etcd-prefix".to_string(),
            "/lin/".to_string(),
        ];
        // One admin key in every directory: admin keys are per directory,
        // tokens are shared through etcd.
        let key = format!(
            "lin-admin-{:016x}",
            fastrand::Rng::with_seed(cfg.seed).u64(..)
        );
        let mut fleet = Fleet {
            servers: Vec::new(),
            urls: Vec::new(),
            data: Vec::new(),
            extra,
            etcd: Some(etcd),
        };
        for i in 0..t.servers {
            let data = dir.join(format!("db{i}"));
            std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
            std::fs::write(data.join("admin.key"), format!("{key}\n"))
                .map_err(|e| format!("writing the admin key: {e}"))?;
            let (server, url) = start_server(cfg, &data, "127.0.0.1:0", &fleet.extra)?;
            fleet.servers.push(Some(server));
            fleet.urls.push(url);
            fleet.data.push(data);
        }
        Ok((fleet, key))
    }

    /// SIGKILL to server `i`, and wait for the process.
    fn kill(&mut self, i: usize) {
        drop(self.servers[i].take());
    }

    /// Starts server `i` again on its directory and port.
    fn restart(&mut self, cfg: &Config, i: usize) -> Result<(), String> {
        let listen = self.urls[i].trim_start_matches("http://").to_string();
        for _ in 0..50 {
            match start_server(cfg, &self.data[i], &listen, &self.extra) {
                Ok((s, _)) => {
                    self.servers[i] = Some(s);
                    return Ok(());
                }
                // The port may not be free again yet.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Err(format!("server {i} did not restart on {listen}"))
    }

    /// `kill -{sig}` to server `i` (STOP, CONT).
    fn signal(&self, i: usize, sig: &str) -> Result<(), String> {
        let pid = self.servers[i].as_ref().ok_or("not running")?.child.id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(())
            .ok_or_else(|| format!("kill -{sig} {pid} (server {i}) failed"))
    }
}

/// One fault of a run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL a fleetkv server, restart it on its directory and port.
    KillServer(usize),
    /// SIGKILL an etcd member (the `k`th kill: the leader when `k` is
    /// even, a follower when odd), restart it after [`MEMBER_DOWN`].
    KillMember(usize),
    /// SIGSTOP a server for [`PAUSE`].
    Pause(usize),
}

/// The run's faults in the order they happen: the kinds interleaved, each
/// kind rotating over its targets.
fn faults(cfg: &Config) -> Vec<Fault> {
    let (servers, member_kills, pauses) = match &cfg.etcd {
        Some(t) => (t.servers, t.member_kills, t.pauses),
        None => (1, 0, 0),
    };
    let mut out = Vec::new();
    for i in 0..cfg.kills.max(member_kills).max(pauses) {
        if i < cfg.kills {
            out.push(Fault::KillServer(i % servers));
        }
        if i < member_kills {
            out.push(Fault::KillMember(i));
        }
        if i < pauses {
            // Not the server just killed.
            out.push(Fault::Pause((i + 1) % servers));
        }
    }
    out
}

/// What clients share: the servers' addresses and which are up.
struct Shared {
    urls: Vec<String>,
    auth: String,
    /// (bitmask of servers up, epoch): the epoch counts restarts.
    up: Mutex<(u64, u64)>,
    changed: Condvar,
    stop: AtomicBool,
    seq: AtomicU64,
    next_value: AtomicU64,
    invoked: AtomicU64,
    returned: AtomicU64,
    /// Per slot, the operations invoked on it (its generation follows).
    slots: Vec<AtomicU64>,
    /// Per client, the generation of its operation in flight, plus one
    /// (0: none; `u64::MAX`: one whose generation is not known yet).
    busy: Vec<AtomicU64>,
    /// The highest `X-Fleetkv-Revision` answered so far; raised before the
    /// answer's return is stamped.
    max_rev: AtomicU64,
    reads: Reads,
    /// Answered and behind (see [`Figures::reads_behind`]): reads, counts.
    answered: [AtomicU64; 2],
    behind: [AtomicU64; 2],
    max_read_lag: AtomicU64,
    races_lost: AtomicU64,
    unavailable: AtomicU64,
    /// The first unexpected answer (a harness or server bug), which stops the run.
    failure: Mutex<Option<String>>,
}

impl Shared {
    /// Waits until some server is up; answers (the servers up, the epoch).
    fn wait_up(&self) -> Option<(u64, u64)> {
        let mut g = self.up.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if g.0 != 0 {
                return Some(*g);
            }
            g = self
                .changed
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn set_up(&self, server: usize, up: bool) {
        let mut g = self.up.lock().unwrap_or_else(|e| e.into_inner());
        if up {
            g.0 |= 1 << server;
            g.1 += 1;
        } else {
            g.0 &= !(1 << server);
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

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    /// `X-DRP-List-Count`.
    count: Option<u64>,
    /// `X-Fleetkv-Revision` (0: none).
    rev: u64,
}

/// One request to server `server`; `Err` when no answer came.
fn request(
    agent: &ureq::Agent,
    shared: &Shared,
    server: usize,
    method: &str,
    path: &str,
    body: Option<(&str, String)>,
    expect: Option<String>,
) -> Result<Answer, String> {
    let mut r = agent
        .request(method, &format!("{}/api/v3{path}", shared.urls[server]))
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
    let rev = resp
        .header("X-Fleetkv-Revision")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.into_string().map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        body,
        count,
        rev,
    })
}

/// The outcome of one operation.
enum Outcome {
    /// A definite answer, mapped to the model.
    Ret(Ret),
    /// Refused without effect for a reason outside the model: as if never
    /// invoked.
    Refused(Refusal),
    /// No answer (or one that says nothing about the outcome): stays open.
    Unknown(#[allow(dead_code)] String),
    /// An answer the model has no place for: a bug in the harness or server.
    Unexpected(String),
}

/// Why an operation was refused without effect.
#[derive(Clone, Copy)]
enum Refusal {
    /// A write lost the revision race to other servers on every attempt.
    RaceLost,
    /// etcd could not be reached (503 `Unavailable`).
    Unavailable,
}

/// The `Type` of a DRP-shaped error body.
fn error_type(body: &str) -> Option<&str> {
    // `"Type":"X"` without a parse: the body is fleetkv's own JSON.
    let rest = &body[body.find("\"Type\":\"")? + 8..];
    Some(&rest[..rest.find('"')?])
}

fn machine_name(slot: u32, m: usize) -> String {
    format!("lin-s{slot}-m{m}")
}

fn key_of(g: GroupId) -> String {
    format!("lin/s{}g{}", g.0, g.1)
}

/// The request of `op` on group `g` (machines `0..k`): method, path, body,
/// `X-Fleetkv-Expect`, and which answer it expects.
#[allow(clippy::type_complexity)]
fn shape(
    g: GroupId,
    op: &Op,
    k: usize,
    via_patch: bool,
) -> (
    &'static str,
    String,
    Option<(&'static str, String)>,
    Option<String>,
    &'static str,
) {
    let key = key_of(g);
    // A JSON Pointer segment: `/` is `~1`.
    let pointer = key.replace('~', "~0").replace('/', "~1");
    match *op {
        Op::Read(m) => (
            "GET",
            format!("/machines/{}/params/{key}", machine_name(g.0, m)),
            None,
            None,
            "read",
        ),
        Op::Write(m, v) if via_patch => (
            "PATCH",
            format!("/machines/{}/params", machine_name(g.0, m)),
            Some((
                "application/json-patch+json",
                json!([{"op": "add", "path": format!("/{pointer}"), "value": v}]).to_string(),
            )),
            None,
            "write",
        ),
        Op::Write(m, v) => (
            "POST",
            format!("/machines/{}/params/{key}", machine_name(g.0, m)),
            Some(("application/json", v.to_string())),
            None,
            "write",
        ),
        Op::Cas(m, expect, v) => (
            "POST",
            format!("/machines/{}/params/{key}", machine_name(g.0, m)),
            Some(("application/json", v.to_string())),
            Some(expect.map_or("absent".to_string(), |e| e.to_string())),
            "cas",
        ),
        Op::PatchCas(m, old, v) => (
            "PATCH",
            format!("/machines/{}", machine_name(g.0, m)),
            Some((
                "application/json-patch+json",
                json!([
                    {"op": "test", "path": format!("/Params/{pointer}"), "value": old},
                    {"op": "replace", "path": format!("/Params/{pointer}"), "value": v},
                ])
                .to_string(),
            )),
            None,
            "cas",
        ),
        Op::Count(v) => {
            let names: Vec<String> = (0..k).map(|m| machine_name(g.0, m)).collect();
            (
                "HEAD",
                format!(
                    "/machines?Name=In({})&Params.{key}=Eq({v})",
                    names.join(",")
                ),
                None,
                None,
                "count",
            )
        }
    }
}

/// Runs `op` on group `g` over HTTP on `server` and maps its answer to the
/// model; `fresh` is a query parameter the request passes (a read's
/// `min_revision=N` or `linearizable=true`). Answers the
/// outcome and the answer's `X-Fleetkv-Revision` (0: none).
#[allow(clippy::too_many_arguments)]
fn perform(
    agent: &ureq::Agent,
    shared: &Shared,
    server: usize,
    g: GroupId,
    op: &Op,
    k: usize,
    via_patch: bool,
    fresh: Option<String>,
) -> (Outcome, u64) {
    let (method, mut path, body, expect, what) = shape(g, op, k, via_patch);
    if let Some(param) = fresh {
        let sep = if path.contains('?') { '&' } else { '?' };
        path = format!("{path}{sep}{param}");
    }
    let a = match request(agent, shared, server, method, &path, body, expect) {
        Ok(a) => a,
        Err(e) => return (Outcome::Unknown(e), 0),
    };
    let outcome = match (a.status, what) {
        (200, "read") => match serde_json::from_str::<Value>(&a.body) {
            Ok(Value::Null) => Outcome::Ret(Ret::Value(None)),
            Ok(v) => match v.as_u64() {
                Some(n) => Outcome::Ret(Ret::Value(Some(n))),
                None => Outcome::Unexpected(format!("{op:?}: read {v}")),
            },
            Err(e) => Outcome::Unexpected(format!("{op:?}: not JSON ({e}): {}", a.body)),
        },
        (200, "write") => Outcome::Ret(Ret::Written),
        (200, "cas") => Outcome::Ret(Ret::Swapped),
        // Error::RevisionMismatch: other servers won every attempt; not a
        // refused compare (that would claim the value differed).
        (409, "write" | "cas") if a.body.contains("revision conflict") => {
            Outcome::Refused(Refusal::RaceLost)
        }
        // etcd unreachable or without a leader: "nothing was read or
        // written" (unlike OutcomeUnknown, also a 503). Taken at its word:
        // were it applied after all, its unique value would turn up in a
        // read the checker cannot explain.
        (503, _) if error_type(&a.body) == Some("Unavailable") => {
            Outcome::Refused(Refusal::Unavailable)
        }
        (409, "cas") => Outcome::Ret(Ret::CasFailed),
        (200, "count") => match a.count {
            Some(n) => Outcome::Ret(Ret::Count(n)),
            None => Outcome::Unexpected(format!("{op:?}: no X-DRP-List-Count")),
        },
        // Timeouts (a `min_revision` wait too), a stalled store, etcd
        // unavailable or an outcome it could not tell, an internal error:
        // no telling whether the write landed.
        (408 | 500 | 502 | 503 | 504, _) => Outcome::Unknown(format!("{} {}", a.status, a.body)),
        _ => Outcome::Unexpected(format!(
            "{op:?} on {} via server {server}: {} {}",
            key_of(g),
            a.status,
            a.body
        )),
    };
    (outcome, a.rev)
}

/// The first server up from `turn` on (`up`: a bitmask, not empty).
fn pick(up: u64, turn: usize, servers: usize) -> usize {
    (0..servers)
        .map(|k| (turn + k) % servers)
        .find(|s| up & (1 << s) != 0)
        .unwrap_or(0)
}

/// One client: operations on its team's slot until the run stops.
fn client(cfg: &Config, shared: &Shared, id: u32) -> Vec<Stamped> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ (u64::from(id) << 20));
    let slot = id / cfg.team as u32;
    let servers = shared.urls.len();
    let mut turn = id as usize;
    let mut incarnation = 0u32;
    let mut events = Vec::new();
    let mut epoch = 0;
    let mut agent = new_agent();
    let mut group = (u32::MAX, 0);
    // The values this client last saw per machine of its group.
    let mut known: [Option<u64>; MAX_MACHINES] = [None; MAX_MACHINES];
    let mut backoff = MIN_BACKOFF;
    while let Some((up, e)) = shared.wait_up() {
        if e != epoch {
            // Fresh connections after a restart: a pooled one to the dead
            // server would turn the next write into an unknown outcome.
            agent = new_agent();
            epoch = e;
        }
        // Each request to the next server: reads meet other servers' writes.
        let server = pick(up, turn, servers);
        turn += 1;
        // Busy before the generation is known: a fault waits for it.
        shared.busy[id as usize].store(u64::MAX, Ordering::SeqCst);
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
        let is_read = matches!(op, Op::Read(_) | Op::Count(_));
        events.push(Stamped {
            seq: shared.stamp(),
            group: g,
            thread,
            event: Event::Invoke(op.clone()),
            server: server as u8,
            rev: 0,
        });
        // Read after the stamp: every operation returned before this
        // invocation raised `max_rev` before its return was stamped.
        let floor = shared.max_rev.load(Ordering::SeqCst);
        let fresh = match (shared.reads, is_read) {
            (Reads::Session, true) => Some(format!("min_revision={floor}")),
            (Reads::Linearizable, true) => Some("linearizable=true".to_string()),
            _ => None,
        };
        shared.invoked.fetch_add(1, Ordering::SeqCst);
        shared.busy[id as usize].store(u64::from(g.1) + 1, Ordering::SeqCst);
        let (outcome, rev) = perform(
            &agent,
            shared,
            server,
            g,
            &op,
            cfg.machines,
            via_patch,
            fresh,
        );
        shared.busy[id as usize].store(0, Ordering::SeqCst);
        shared.max_rev.fetch_max(rev, Ordering::SeqCst);
        match outcome {
            Outcome::Ret(ret) => {
                backoff = MIN_BACKOFF;
                if is_read {
                    let k = usize::from(matches!(op, Op::Count(_)));
                    shared.answered[k].fetch_add(1, Ordering::Relaxed);
                    if rev < floor {
                        shared.behind[k].fetch_add(1, Ordering::Relaxed);
                        shared
                            .max_read_lag
                            .fetch_max(floor - rev, Ordering::Relaxed);
                    }
                }
                events.push(Stamped {
                    seq: shared.stamp(),
                    group: g,
                    thread,
                    event: Event::Return(ret.clone()),
                    server: server as u8,
                    rev,
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
            Outcome::Refused(why) => {
                // Nothing happened: out of the history, the thread free.
                events.pop();
                match why {
                    Refusal::RaceLost => shared.races_lost.fetch_add(1, Ordering::Relaxed),
                    Refusal::Unavailable => {
                        // etcd is away: no point in asking again at once.
                        std::thread::sleep(Duration::from_millis(20));
                        shared.unavailable.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            Outcome::Unknown(_) => {
                // Open for good: go on as a new tester thread, on another
                // server or once this one is back (a request during the
                // outage would only add another open operation). Backing
                // off keeps an etcd election (every write 503) from
                // filling the groups with open writes, which the search
                // may place anywhere after their invocation.
                incarnation += 1;
                known = [None; MAX_MACHINES];
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
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

/// Brings every server to the revision of the setup's writes, so none
/// answers 404 for a machine another server created. (Not `/info`: it is
/// outside the layer that honours `?min_revision=`.)
fn sync_servers(shared: &Shared, rev: u64, machines: u64) -> Result<(), String> {
    let a = new_agent();
    for s in 0..shared.urls.len() {
        let path = format!("/machines?Name=Re(%5Elin-)&min_revision={rev}");
        match request(&a, shared, s, "HEAD", &path, None, None) {
            Ok(Answer {
                status: 200,
                count: Some(n),
                ..
            }) if n == machines => {}
            other => {
                return Err(format!(
                    "server {s} at revision {rev} with {machines} machines: {other:?}"
                ))
            }
        }
    }
    Ok(())
}

/// Runs the clients against servers they see killed and restarted (and
/// etcd members killed, servers paused), then checks the history. `Err`
/// when the run itself failed (a process did not start, an answer the
/// model has no place for).
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
    if let Some(t) = &cfg.etcd {
        if !(1..=64).contains(&t.servers) || t.members == 0 {
            return Err("servers must be 1..=64, etcd members at least 1".into());
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mut fleet, key) = Fleet::start(cfg, dir.path())?;
    let servers = fleet.urls.len();
    let slots = cfg.clients.div_ceil(cfg.team);
    let shared = Arc::new(Shared {
        urls: fleet.urls.clone(),
        auth: format!("Bearer {key}"),
        up: Mutex::new((u64::MAX >> (64 - servers), 1)),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        next_value: AtomicU64::new(1),
        invoked: AtomicU64::new(0),
        returned: AtomicU64::new(0),
        slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        busy: (0..cfg.clients).map(|_| AtomicU64::new(0)).collect(),
        max_rev: AtomicU64::new(0),
        reads: cfg.etcd.as_ref().map_or(Reads::Plain, |t| t.reads),
        answered: Default::default(),
        behind: Default::default(),
        max_read_lag: AtomicU64::new(0),
        races_lost: AtomicU64::new(0),
        unavailable: AtomicU64::new(0),
        failure: Mutex::new(None),
    });
    // The machines: the keys of the groups appear on them as they are written.
    {
        let a = new_agent();
        let mut top = 0;
        for s in 0..slots as u32 {
            for m in 0..cfg.machines {
                let body = json!({"Name": machine_name(s, m)}).to_string();
                match request(
                    &a,
                    &shared,
                    0,
                    "POST",
                    "/machines",
                    Some(("application/json", body)),
                    None,
                ) {
                    Ok(Answer {
                        status: 201, rev, ..
                    }) => top = top.max(rev),
                    other => return Err(format!("creating {}: {other:?}", machine_name(s, m))),
                }
            }
        }
        sync_servers(&shared, top, (slots * cfg.machines) as u64)?;
    }

    let started = Instant::now();
    let mut figures = Figures {
        clients: cfg.clients,
        servers,
        etcd_members: cfg.etcd.as_ref().map_or(0, |t| t.members),
        reads: shared.reads,
        ..Figures::default()
    };
    let plan = faults(cfg);
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
        // The faults, at evenly spread moments, one at a time.
        let progress = |shared: &Shared| match cfg.stop {
            Stop::Ops(n) => shared.invoked.load(Ordering::SeqCst) as f64 / n as f64,
            Stop::Time(d) => started.elapsed().as_secs_f64() / d.as_secs_f64(),
        };
        let mut done = 0;
        // Per slot, the generation the last fault hit. Each fault leaves up
        // to `team` operations of a group open, and the search grows
        // exponentially with a group's open operations (two kills in one
        // group of 200 clients once ran out of its step budget). So when a
        // fault is due, a slot still in the generation the fault before it
        // hit moves on to the next, and the fault waits until no client has
        // an operation of such a generation in flight (at most
        // `FAULT_WAIT`).
        let mut hit: Vec<Option<u64>> = vec![None; shared.slots.len()];
        let mut due_since: Option<Instant> = None;
        let apart = |hit: &[Option<u64>]| {
            shared.busy.iter().enumerate().all(|(c, b)| {
                let b = b.load(Ordering::SeqCst);
                b == 0 || (b != u64::MAX && hit[c / cfg.team].is_none_or(|h| b - 1 > h))
            })
        };
        while !shared.stop.load(Ordering::SeqCst) {
            let p = progress(&shared);
            if p >= 1.0 {
                break;
            }
            if done < plan.len() && p >= (done + 1) as f64 / (plan.len() + 1) as f64 {
                if due_since.is_none() {
                    due_since = Some(Instant::now());
                    for (h, n) in hit.iter().zip(&shared.slots) {
                        if let Some(h) = h {
                            n.fetch_max((h + 1) * cfg.group_ops, Ordering::SeqCst);
                        }
                    }
                }
                if !apart(&hit) && due_since.is_some_and(|t| t.elapsed() < FAULT_WAIT) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                due_since = None;
                for (h, n) in hit.iter_mut().zip(&shared.slots) {
                    *h = Some(n.load(Ordering::SeqCst) / cfg.group_ops);
                }
                if let Err(e) = inject(cfg, &mut fleet, &shared, plan[done], &mut figures) {
                    shared.fail(e);
                    break;
                }
                done += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        shared.stop.store(true, Ordering::SeqCst);
        shared.changed.notify_all();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client panicked"))
            .collect()
    });
    figures.run_time = started.elapsed();
    let failure = shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(f) = failure {
        // What each server holds, while they still run.
        let a = new_agent();
        let views: Vec<String> = (0..servers)
            .map(|s| {
                let count = |path: &str| match request(&a, &shared, s, "HEAD", path, None, None) {
                    Ok(ans) => format!("{} at revision {}", ans.count.unwrap_or(0), ans.rev),
                    Err(e) => e,
                };
                let check = request(&a, &shared, s, "GET", "/check", None, None)
                    .map_or_else(|e| e, |ans| format!("{} {}", ans.status, ans.body));
                format!(
                    "server {s}: {} lin- machines; /check: {check}",
                    count("/machines?Name=Re(%5Elin-)")
                )
            })
            .collect();
        drop(fleet);
        return Err(format!("{f}\n{}", views.join("\n")));
    }
    drop(fleet);
    [figures.reads_answered, figures.counts_answered] =
        shared.answered.each_ref().map(|n| n.load(Ordering::SeqCst));
    [figures.reads_behind, figures.counts_behind] =
        shared.behind.each_ref().map(|n| n.load(Ordering::SeqCst));
    figures.max_read_lag = shared.max_read_lag.load(Ordering::SeqCst);
    figures.races_lost = shared.races_lost.load(Ordering::SeqCst);
    figures.unavailable = shared.unavailable.load(Ordering::SeqCst);
    eprintln!(
        "load done in {:.1} s: {} invoked, {} returned; checking",
        figures.run_time.as_secs_f64(),
        shared.invoked.load(Ordering::SeqCst),
        shared.returned.load(Ordering::SeqCst)
    );
    check(cfg, events, &mut figures);
    Ok(figures)
}

/// The member that leads the cluster now (its `/metrics` say so).
fn etcd_leader(etcd: &etcd_server::Cluster) -> Option<usize> {
    etcd.endpoints().iter().position(|url| {
        ureq::get(&format!("{url}/metrics"))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .is_some_and(|m| m.lines().any(|l| l == "etcd_server_is_leader 1"))
    })
}

/// Does one fault (back to the whole fleet up before it returns) and
/// counts it.
fn inject(
    cfg: &Config,
    fleet: &mut Fleet,
    shared: &Shared,
    fault: Fault,
    figures: &mut Figures,
) -> Result<(), String> {
    match fault {
        Fault::KillServer(i) => {
            let t = Instant::now();
            shared.set_up(i, false);
            fleet.kill(i);
            fleet.restart(cfg, i)?;
            figures.max_restart = figures.max_restart.max(t.elapsed());
            figures.kills += 1;
            shared.set_up(i, true);
        }
        Fault::KillMember(k) => {
            let etcd = fleet.etcd.as_mut().ok_or("no etcd cluster")?;
            // Every other kill hits the leader: an election, and commits
            // in flight whose outcome nobody can tell.
            let leader = etcd_leader(etcd);
            let members = etcd.endpoints().len();
            let i = match leader {
                Some(l) if k % 2 == 0 => l,
                Some(l) => (l + 1 + k % (members - 1).max(1)) % members,
                None => k % members,
            };
            if Some(i) == leader {
                figures.leader_kills += 1;
            }
            etcd.kill(i);
            std::thread::sleep(MEMBER_DOWN);
            let t = Instant::now();
            unpanic(&format!("restarting etcd member {i}"), || etcd.restart(i))?;
            figures.max_member_restart = figures.max_member_restart.max(t.elapsed());
            figures.member_kills += 1;
        }
        Fault::Pause(i) => {
            fleet.signal(i, "STOP")?;
            std::thread::sleep(PAUSE);
            fleet.signal(i, "CONT")?;
            figures.pauses += 1;
        }
    }
    Ok(())
}

/// Splits the history by group and checks each group's sub-history.
fn check(cfg: &Config, mut events: Vec<Stamped>, figures: &mut Figures) {
    events.sort_by_key(|e| e.seq);
    let mut groups: BTreeMap<GroupId, Vec<Stamped>> = BTreeMap::new();
    for e in events {
        match &e.event {
            Event::Invoke(op) => {
                figures.invoked += 1;
                *figures.by_kind.entry(op.kind()).or_default() += 1;
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
    figures.max_group_open = groups
        .iter()
        .map(|(_, h)| {
            let invoked = h.iter().filter(|e| matches!(e.event, Event::Invoke(_)));
            2 * invoked.count() - h.len()
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
                    let took = t.elapsed();
                    let mut cut = None;
                    if matches!(verdict, Verdict::Violation) {
                        cut = Some(shortest_violating_prefix(history, &abort));
                        if cfg.first_violation {
                            abort.store(true, Ordering::Relaxed);
                        }
                    }
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((*g, verdict, took, history, cut));
                })
                .expect("a checker thread");
        }
    });
    figures.check_time = started.elapsed();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);
    for (g, verdict, took, history, cut) in results {
        figures.max_group_check = figures.max_group_check.max(took);
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Undecided => figures.undecided.push(g),
            Verdict::Unchecked => figures.unchecked += 1,
            Verdict::Violation => {
                // The operation whose answer no linearisation explains: the
                // marked event is its return (or, open, its invocation).
                let culprit = cut.and_then(|c| {
                    let last = history.get(c.checked_sub(1)?)?;
                    history[..c].iter().rev().find_map(|e| match &e.event {
                        Event::Invoke(op) if e.thread == last.thread => Some(op.kind()),
                        _ => None,
                    })
                });
                *figures
                    .culprits
                    .entry(culprit.unwrap_or("unknown"))
                    .or_default() += 1;
                figures.violations.push(format!(
                    "group {} ({} events; the first {} are already not linearizable):\n{}",
                    key_of(g),
                    history.len(),
                    cut.unwrap_or(history.len()),
                    render(history, cut)
                ))
            }
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

/// The length of the shortest prefix of a violating history that violates
/// already: its last event is the one no linearisation explains. (A prefix
/// of a violating prefix's extension violates too: the search halves.)
fn shortest_violating_prefix(history: &[Stamped], abort: &Arc<AtomicBool>) -> usize {
    let (mut lo, mut hi) = (1, history.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match check_group(&history[..mid], abort) {
            Verdict::Violation => hi = mid,
            _ => lo = mid + 1,
        }
    }
    hi
}

/// A group's history, one event a line (open operations marked; with
/// `cut`, the last event of the shortest violating prefix).
fn render(history: &[Stamped], cut: Option<usize>) -> String {
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
    let culprit = cut.map(|c| c.saturating_sub(1));
    history
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let line = match &e.event {
                Event::Invoke(op) => format!(
                    "  {:>8} {:?} invoke {op:?} on server {}{}",
                    e.seq,
                    e.thread,
                    e.server,
                    if returned.contains(&(e.thread, e.seq)) {
                        ""
                    } else {
                        "  (OPEN)"
                    }
                ),
                Event::Return(r) => format!(
                    "  {:>8} {:?} return {r:?} (X-Fleetkv-Revision {})",
                    e.seq, e.thread, e.rev
                ),
            };
            if Some(i) == culprit {
                format!("{line}   <== no linearisation explains the history up to here")
            } else {
                line
            }
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
        etcd: None,
    };
    // The topology's flags, gathered first: any of them means etcd.
    let (mut members, mut servers) = (None, None);
    let (mut member_kills, mut pauses, mut reads) = (None, None, Reads::Plain);
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
            "--etcd-members" => members = Some(num("--etcd-members", value("--etcd-members"))),
            "--servers" => servers = Some(num("--servers", value("--servers"))),
            "--member-kills" => member_kills = Some(num("--member-kills", value("--member-kills"))),
            "--pauses" => pauses = Some(num("--pauses", value("--pauses"))),
            "--session-reads" => reads = Reads::Session,
            "--linearizable-reads" => reads = Reads::Linearizable,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if members.is_some() || servers.is_some() {
        cfg.etcd = Some(EtcdTopology {
            members: members.unwrap_or(3),
            servers: servers.unwrap_or(3),
            member_kills: member_kills.unwrap_or(1),
            pauses: pauses.unwrap_or(1),
            reads,
        });
    } else if member_kills.is_some() || pauses.is_some() || reads != Reads::Plain {
        usage("--member-kills, --pauses and --session-reads/--linearizable-reads need --etcd-members or --servers");
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
    if let Some(t) = &cfg.etcd {
        println!(
            "  over etcd: {} servers, {} etcd members, {} member kills, {} pauses, {} reads",
            t.servers, t.members, t.member_kills, t.pauses, t.reads
        );
    }
    match run(&cfg) {
        Ok(f) => {
            println!("{f}");
            for v in f.violations.iter().take(3) {
                println!("{v}");
            }
            if let Some(why) = f.shortfall(&cfg) {
                println!("short of a full check: {why}");
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
         [--team N (clients per group)] [--group-ops N] [--seed S] [--check-threads N] [--bin PATH] [--no-fsync] [--first-violation] \
         [--etcd-members M (3)] [--servers N (3)] [--member-kills K (1)] [--pauses P (1)] [--session-reads | --linearizable-reads]"
    );
    std::process::exit(2);
}
