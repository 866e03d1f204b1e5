//! Crash testing by the thousand (issue 17, part 2): a child process runs a
//! seeded random workload on a durable store and reports every write the
//! store acknowledged; the parent kills it with SIGKILL at a random moment,
//! reopens the store and checks it, then starts the next child on the same
//! directory, so state, checkpoints and the change log carry across cycles.
//!
//! ```text
//! cargo run --example crash_harness -- --cycles 1000 --seed 7 [--dir DIR]
//! ```
//!
//! `tests/crash.rs` runs a bounded number of cycles of the same code in CI.
//!
//! # What a cycle checks
//! The child is the store's only writer and runs one write at a time, so the
//! writes form one sequence and at most one is in flight when the kill
//! lands. Before each write the child prints what the write will leave in
//! the store (`FKV-INTENT`: the objects it touches, as they will read); after
//! the call returns `Ok` — with `Options::durable`, flushed — it prints
//! `FKV-ACK` and the write's revision. After the kill the store must be
//! exactly the acknowledged writes, or those plus the whole in-flight write
//! (it may or may not have landed): the revision is the last acknowledged
//! one or the next, every object reads as the model says (own fields,
//! revision, effective params, filter counts through the indexes),
//! `verify_indexes()` equals a rebuild, and the change log has no gaps: one
//! run of revisions up to the store's, sequences from 0 within each, each
//! revision's events naming exactly the objects its write touched, and the
//! newest event of each object agreeing with the object.
//!
//! A write the child expects to be refused (a compare-and-swap or JSON Patch
//! `test` against a stale value) must fail with `Conflict` and leave no
//! trace; the child stops with `FKV-BUG` if one succeeds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetkv::store::Bulk;
use fleetkv::{Error, Filter, Kind, Machine, Options, ParamDef, Profile, Recovery, Store};
use serde_json::{json, Value};

/// Set (to the child's JSON arguments) in a child that runs the workload.
pub const CHILD_ENV: &str = "FLEETKV_CRASH_CHILD";
/// A child that has not opened the store after this long is hung: the run fails.
const CHILD_SILENT: Duration = Duration::from_secs(60);
/// Machines past which the workload stops adding machines (and deletes
/// instead), so a thousand cycles stay quick to check.
const FLEET_CAP: usize = 600;

/// One run of the harness.
pub struct Config {
    /// Kill-and-reopen cycles.
    pub cycles: u64,
    /// Seeds the workloads, kill delays and options of every cycle.
    pub seed: u64,
    /// The store's directory (kept); a temporary one when `None` (kept
    /// only when a check fails).
    pub dir: Option<PathBuf>,
    /// Builds the command that runs a child: this executable, with whatever
    /// arguments make it call [`child_if_asked`] first. The harness adds
    /// [`CHILD_ENV`].
    pub command: Box<dyn Fn() -> Command>,
    /// Prints a line per cycle.
    pub verbose: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Figures {
    /// Cycles run.
    pub cycles: u64,
    /// Acknowledged writes, each checked after its cycle's kill.
    pub acked: u64,
    /// Writes the child expected refused and the store refused.
    pub refused: u64,
    /// Explicit checkpoints the children finished.
    pub checkpoints: u64,
    /// Kills that landed while a write was in flight, and of those, how many
    /// writes had landed anyway.
    pub in_flight: u64,
    /// In-flight writes found in the store after the kill.
    pub in_flight_landed: u64,
    /// Kills before the child had opened the store.
    pub during_open: u64,
    /// SIGKILLs sent.
    pub kills: u64,
    /// How the opens after a kill got their indexes, with counts.
    pub recovery: BTreeMap<String, u64>,
    /// Reopen times after a kill, in milliseconds.
    pub reopen_ms: Vec<f64>,
    /// Machines, profiles and definitions at the end.
    pub objects: usize,
    /// The store's revision at the end.
    pub revision: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ms = self.reopen_ms.clone();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms.get(((ms.len() as f64 - 1.0) * p) as usize).copied();
        writeln!(f, "cycles:                  {}", self.cycles)?;
        writeln!(f, "kills (SIGKILL):         {}", self.kills)?;
        writeln!(f, "  during open:           {}", self.during_open)?;
        writeln!(
            f,
            "  with a write in flight: {} ({} of those landed)",
            self.in_flight, self.in_flight_landed
        )?;
        writeln!(f, "acknowledged writes checked: {}", self.acked)?;
        writeln!(f, "refused CAS writes:      {}", self.refused)?;
        writeln!(f, "explicit checkpoints:    {}", self.checkpoints)?;
        writeln!(f, "recovery paths (reopen after a kill):")?;
        for (path, n) in &self.recovery {
            writeln!(f, "  {n:6}  {path}")?;
        }
        if let (Some(p50), Some(p99), Some(max)) = (pct(0.5), pct(0.99), pct(1.0)) {
            writeln!(
                f,
                "reopen time: median {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
            )?;
        }
        writeln!(
            f,
            "final store: revision {}, {} objects",
            self.revision, self.objects
        )?;
        write!(f, "elapsed: {:.1} s", self.elapsed.as_secs_f64())
    }
}

/// The arguments a child gets through [`CHILD_ENV`].
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildArgs {
    dir: PathBuf,
    seed: u64,
    log_retain: usize,
    checkpoint_after: Option<u64>,
}

fn options(log_retain: usize, checkpoint_after: Option<u64>) -> Options {
    Options {
        durable: true,
        log_retain,
        checkpoint_after,
        ..Options::default()
    }
}

/// Opens `dir`, waiting out the lock of a process that just died or a store
/// this process just closed (sled's threads can hold it a moment).
fn open(dir: &Path, options: Options) -> fleetkv::Result<Store> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Store::open_with(dir, options.clone()) {
            Err(Error::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

// ---------------------------------------------------------------- the model

/// An object as the harness compares it: the fields the workload writes,
/// and the revision of the write that last touched it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Obj {
    doc: Value,
    rev: u64,
}

/// Every object by `kind:key` (`machine:UUID`, `profile:NAME`, `param:NAME`).
type Objects = BTreeMap<String, Obj>;

fn machine_doc(m: &Machine) -> Value {
    json!({"Name": m.name, "Profiles": m.profiles, "Params": m.params})
}

fn profile_doc(p: &Profile) -> Value {
    json!({"Params": p.params})
}

fn param_doc(d: &ParamDef) -> Value {
    json!({"Schema": d.schema})
}

fn kind_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Machine => "machine",
        Kind::Profile => "profile",
        Kind::Param => "param",
        _ => "job",
    }
}

/// The model's view of an event's object (as stored, in the event).
fn event_doc(kind: Kind, object: &Value) -> Result<Value, String> {
    let bad = |e: serde_json::Error| format!("event object does not decode: {e}");
    Ok(match kind {
        Kind::Machine => machine_doc(&serde_json::from_value(object.clone()).map_err(bad)?),
        Kind::Profile => profile_doc(&serde_json::from_value(object.clone()).map_err(bad)?),
        Kind::Param => param_doc(&serde_json::from_value(object.clone()).map_err(bad)?),
        _ => object.clone(),
    })
}

/// Every object in `s`.
fn snapshot(s: &Store) -> Result<Objects, String> {
    let mut out = Objects::new();
    for m in s.machines().list_all().map_err(|e| e.to_string())? {
        out.insert(
            format!("machine:{}", m.uuid),
            Obj {
                doc: machine_doc(&m),
                rev: m.revision,
            },
        );
    }
    for p in s.profiles().list_all() {
        out.insert(
            format!("profile:{}", p.name),
            Obj {
                doc: profile_doc(&p),
                rev: p.revision,
            },
        );
    }
    for d in s.params().list_all() {
        out.insert(
            format!("param:{}", d.name),
            Obj {
                doc: param_doc(&d),
                rev: d.revision,
            },
        );
    }
    Ok(out)
}

/// A machine's effective params as the model has them (own, then each
/// profile in order, then `global`, then definitions' defaults).
fn effective(objs: &Objects, machine: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let params = |doc: &Value| doc["Params"].as_object().cloned().unwrap_or_default();
    for (key, o) in objs.range("param:".to_string()..) {
        let Some(name) = key.strip_prefix("param:") else {
            break;
        };
        if let Some(d) = o.doc["Schema"].get("default") {
            out.insert(name.to_string(), d.clone());
        }
    }
    let mut layers = vec![objs.get("profile:global").map(|o| params(&o.doc))];
    let profiles: Vec<&str> = machine["Profiles"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for p in profiles.iter().rev() {
        layers.push(objs.get(&format!("profile:{p}")).map(|o| params(&o.doc)));
    }
    layers.push(Some(params(machine)));
    for layer in layers.into_iter().flatten() {
        out.extend(layer);
    }
    out
}

// ---------------------------------------------------------------- the child

/// Runs the child's workload when this process is a harness child (it never
/// returns then: the parent kills it); returns otherwise.
pub fn child_if_asked() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let code = match serde_json::from_str::<ChildArgs>(&args) {
        Ok(args) => match child(&args) {
            Ok(()) => 0,
            Err(e) => {
                say("FKV-BUG", &json!(e));
                3
            }
        },
        Err(e) => {
            eprintln!("{CHILD_ENV}: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// One line to the parent, written whole: a line cut short by the kill has
/// no newline and does not count.
fn say(tag: &str, body: &Value) {
    let line = format!("{tag} {body}\n");
    let mut out = std::io::stdout().lock();
    // A failed write means the parent is gone (killed, or a test runner's
    // timeout): stop rather than write on with nobody checking.
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(4);
    }
}

fn uuid(rng: &mut fastrand::Rng) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.usize(..items.len()))
    }
}

/// A random subset of `names`, in a random order.
fn some_of(rng: &mut fastrand::Rng, names: &[String], most: usize) -> Vec<String> {
    let mut names = names.to_vec();
    rng.shuffle(&mut names);
    names.truncate(rng.usize(0..=most.min(names.len())));
    names
}

/// The child's view of the store: every object, and the machines' Uuids
/// in a vector to pick from.
struct View {
    objs: Objects,
    ids: Vec<String>,
}

impl View {
    fn new(objs: Objects) -> View {
        let ids = objs
            .keys()
            .filter_map(|k| k.strip_prefix("machine:"))
            .map(str::to_string)
            .collect();
        View { objs, ids }
    }

    fn apply(&mut self, rev: u64, touch: BTreeMap<String, Option<Value>>) {
        for (key, doc) in touch {
            let id = key.strip_prefix("machine:").map(str::to_string);
            let known = self.objs.contains_key(&key);
            match doc {
                Some(doc) => {
                    self.objs.insert(key, Obj { doc, rev });
                    if let (Some(id), false) = (id, known) {
                        self.ids.push(id);
                    }
                }
                None => {
                    self.objs.remove(&key);
                    if let Some(at) = id.and_then(|id| self.ids.iter().position(|i| *i == id)) {
                        self.ids.swap_remove(at);
                    }
                }
            }
        }
    }

    /// A random machine: its Uuid and document.
    fn machine(&self, rng: &mut fastrand::Rng) -> Option<(String, Value)> {
        let id = pick(rng, &self.ids)?;
        let doc = self.objs.get(&format!("machine:{id}"))?.doc.clone();
        Some((id.clone(), doc))
    }
}

/// A store call the workload makes.
type Call = Box<dyn FnOnce(&Store) -> fleetkv::Result<()>>;

/// What one step of the workload does.
enum Step {
    /// A write expected to succeed, leaving `touch` (`None`: deleted).
    Write {
        what: String,
        touch: BTreeMap<String, Option<Value>>,
        call: Call,
    },
    /// A write expected to fail with `Conflict`, writing nothing.
    Refused {
        what: String,
        call: Call,
    },
    Checkpoint,
}

fn child(args: &ChildArgs) -> Result<(), String> {
    let s = open(&args.dir, options(args.log_retain, args.checkpoint_after))
        .map_err(|e| format!("open: {e}"))?;
    let mut view = View::new(snapshot(&s)?);
    let mut rev = s.revision();
    say(
        "FKV-READY",
        &json!({"rev": rev, "recovery": format!("{:?}", s.recovery())}),
    );
    let mut rng = fastrand::Rng::with_seed(args.seed);
    for n in 0u64.. {
        let step = plan(&mut rng, &view, args.seed, n);
        match step {
            Step::Checkpoint => {
                s.checkpoint().map_err(|e| format!("checkpoint: {e}"))?;
                say("FKV-CHECKPOINT", &json!({}));
            }
            Step::Refused { what, call } => match call(&s) {
                Err(Error::Conflict { .. }) => say("FKV-REFUSED", &json!({"what": what})),
                Ok(()) => return Err(format!("{what}: a stale compare-and-swap succeeded")),
                Err(e) => return Err(format!("{what}: {e}")),
            },
            Step::Write { what, touch, call } => {
                say("FKV-INTENT", &json!({"what": what, "touch": touch}));
                call(&s).map_err(|e| format!("{what}: {e}"))?;
                let now = s.revision();
                if now != rev + 1 {
                    return Err(format!("{what}: revision {rev} → {now}, not one write"));
                }
                rev = now;
                view.apply(rev, touch);
                say("FKV-ACK", &json!({"rev": rev}));
            }
        }
    }
    Ok(())
}

/// The next step of the workload against the child's view `objs`.
fn plan(rng: &mut fastrand::Rng, view: &View, seed: u64, n: u64) -> Step {
    let objs = &view.objs;
    let machines = &view.ids;
    let profiles: Vec<String> = objs
        .keys()
        .filter_map(|k| k.strip_prefix("profile:"))
        .filter(|p| *p != "global")
        .map(str::to_string)
        .collect();
    let rack_def = objs.contains_key("param:rack");
    let tag = format!("{seed:x}-{n}");
    let mut roll = rng.u32(0..100);
    if machines.is_empty() && roll < 95 {
        roll = 0;
    }
    let full = machines.len() > FLEET_CAP;
    if full && roll < 10 {
        roll = 90;
    }
    // New machines per bulk write or import.
    let new = |rng: &mut fastrand::Rng, most: usize| if full { 0 } else { rng.usize(0..=most) };
    let own = |doc: &Value| doc["Params"].as_object().cloned().unwrap_or_default();
    let counter = |doc: &Value| doc["Params"]["counter"].as_u64().unwrap_or(0);
    let write = |what: &str, touch: Vec<(String, Option<Value>)>, call| Step::Write {
        what: what.to_string(),
        touch: touch.into_iter().collect(),
        call,
    };
    match roll {
        // Create a machine.
        0..=9 => {
            let mut m = Machine::new(format!("m-{tag}"));
            m.uuid = uuid(rng);
            m.profiles = some_of(rng, &profiles, 3);
            m.params.insert("counter".into(), json!(0));
            if rack_def && rng.bool() {
                m.params
                    .insert("rack".into(), json!(format!("r{}", rng.u32(0..6))));
            }
            let key = format!("machine:{}", m.uuid);
            write(
                "create",
                vec![(key, Some(machine_doc(&m)))],
                Box::new(move |s| s.machines().create(m).map(drop)),
            )
        }
        // JSON Patch guarded by `test` (a CAS); one in five against a stale value.
        10..=29 => {
            let Some((id, doc)) = view.machine(rng) else {
                return Step::Checkpoint;
            };
            let cur = counter(&doc);
            if rng.u32(0..5) == 0 {
                let ops = json!([
                    {"op": "test", "path": "/Params/counter", "value": cur + 1},
                    {"op": "replace", "path": "/Params/counter", "value": cur + 2},
                ]);
                return Step::Refused {
                    what: "stale patch".into(),
                    call: Box::new(move |s| s.machines().patch(&id, &ops).map(drop)),
                };
            }
            let note = format!("n{}", rng.u32(0..1000));
            let ops = json!([
                {"op": "test", "path": "/Params/counter", "value": cur},
                {"op": "replace", "path": "/Params/counter", "value": cur + 1},
                {"op": "add", "path": "/Params/note", "value": note},
            ]);
            let mut new = doc.clone();
            new["Params"]["counter"] = json!(cur + 1);
            new["Params"]["note"] = json!(note);
            write(
                "patch",
                vec![(format!("machine:{id}"), Some(new))],
                Box::new(move |s| s.machines().patch(&id, &ops).map(drop)),
            )
        }
        // A param set (or a merge patch).
        30..=44 => {
            let Some((id, doc)) = view.machine(rng) else {
                return Step::Checkpoint;
            };
            let color = json!(format!("c{}", rng.u32(0..10)));
            let key = format!("machine:{id}");
            let mut new = doc.clone();
            new["Params"]["color"] = color.clone();
            let call: Call = if rng.bool() {
                Box::new(move |s| s.machines().set_param(&id, "color", color).map(drop))
            } else {
                let merge = json!({"Params": {"color": color}});
                Box::new(move |s| s.machines().update(&id, &merge).map(drop))
            };
            write("set param", vec![(key, Some(new))], call)
        }
        // Param compare-and-set; one in four against a stale value.
        45..=54 => {
            let Some((id, doc)) = view.machine(rng) else {
                return Step::Checkpoint;
            };
            let cur = counter(&doc);
            if rng.u32(0..4) == 0 {
                return Step::Refused {
                    what: "stale param cas".into(),
                    call: Box::new(move |s| {
                        s.machines()
                            .set_param_if(&id, "counter", Some(&json!(cur + 7)), json!(0))
                            .map(drop)
                    }),
                };
            }
            let mut new = doc.clone();
            new["Params"]["counter"] = json!(cur + 1);
            write(
                "param cas",
                vec![(format!("machine:{id}"), Some(new))],
                Box::new(move |s| {
                    s.machines()
                        .set_param_if(&id, "counter", Some(&json!(cur)), json!(cur + 1))
                        .map(drop)
                }),
            )
        }
        // A profile's param: every member's effective value follows
        // (`global` now and then: every machine's).
        55..=64 => {
            let name = if rng.u32(0..6) == 0 {
                "global".to_string()
            } else {
                match pick(rng, &profiles) {
                    Some(p) => p.clone(),
                    None => "global".to_string(),
                }
            };
            let key = format!("profile:{name}");
            let Some(old) = objs.get(&key) else {
                return Step::Checkpoint;
            };
            let tier = json!(format!("t{}", rng.u32(0..5)));
            let mut new = old.doc.clone();
            new["Params"]["tier"] = tier.clone();
            let call: Call = match own(&old.doc).get("tier").cloned() {
                // A guarded profile patch when there is a value to test.
                Some(cur) if rng.bool() => {
                    let ops = json!([
                        {"op": "test", "path": "/Params/tier", "value": cur},
                        {"op": "replace", "path": "/Params/tier", "value": tier},
                    ]);
                    Box::new(move |s| s.profiles().patch(&name, &ops).map(drop))
                }
                _ => Box::new(move |s| s.profiles().set_param(&name, "tier", tier).map(drop)),
            };
            write("profile param", vec![(key, Some(new))], call)
        }
        // A machine's profile list.
        65..=70 => {
            let Some((id, doc)) = view.machine(rng) else {
                return Step::Checkpoint;
            };
            let list = some_of(rng, &profiles, 3);
            let mut new = doc.clone();
            new["Profiles"] = json!(list);
            let ops = json!([{"op": "replace", "path": "/Profiles", "value": list}]);
            write(
                "profiles of a machine",
                vec![(format!("machine:{id}"), Some(new))],
                Box::new(move |s| s.machines().patch(&id, &ops).map(drop)),
            )
        }
        // A new profile (at most eight).
        71..=73 => {
            let name = format!("p{}", rng.u32(0..8));
            let key = format!("profile:{name}");
            if objs.contains_key(&key) {
                return plan(rng, view, seed, n);
            }
            let mut p = Profile::new(name);
            p.params
                .insert("tier".into(), json!(format!("t{}", rng.u32(0..5))));
            write(
                "create profile",
                vec![(key, Some(profile_doc(&p)))],
                Box::new(move |s| s.profiles().create(p).map(drop)),
            )
        }
        // One bulk write: a definition (its default moves every machine
        // without its own value), a profile upserted, new machines on it
        // and some existing machines replaced.
        74..=81 => {
            let mut bulk = Bulk::default();
            let mut touch = Vec::new();
            if !rack_def || rng.bool() {
                let d = ParamDef::new(
                    "rack",
                    json!({"type": "string", "default": format!("r{}", rng.u32(0..6))}),
                );
                touch.push(("param:rack".to_string(), Some(param_doc(&d))));
                bulk.params.push(d);
            }
            let pname = format!("bp{}", rng.u32(0..4));
            let mut p = Profile::new(pname.clone());
            p.params
                .insert("tier".into(), json!(format!("t{}", rng.u32(0..5))));
            touch.push((format!("profile:{pname}"), Some(profile_doc(&p))));
            bulk.profiles.push(p);
            for i in 0..new(rng, 30) {
                let mut m = Machine::new(format!("b-{tag}-{i}"));
                m.uuid = uuid(rng);
                if rng.bool() {
                    m.profiles = vec![pname.clone()];
                }
                m.params.insert("counter".into(), json!(0));
                m.params
                    .insert("rack".into(), json!(format!("r{}", rng.u32(0..6))));
                touch.push((format!("machine:{}", m.uuid), Some(machine_doc(&m))));
                bulk.machines.push(m);
            }
            bulk.machines.extend(replaced(rng, view, 3, &mut touch));
            write(
                "bulk",
                touch,
                Box::new(move |s| s.write_bulk(bulk).map(drop).map_err(bulk_error)),
            )
        }
        // `Machines::import`: new machines and replacements in one write.
        82..=86 => {
            let mut touch = Vec::new();
            let mut batch = Vec::new();
            for i in 0..new(rng, 20) {
                let mut m = Machine::new(format!("i-{tag}-{i}"));
                m.uuid = uuid(rng);
                m.profiles = some_of(rng, &profiles, 2);
                m.params.insert("counter".into(), json!(0));
                touch.push((format!("machine:{}", m.uuid), Some(machine_doc(&m))));
                batch.push(m);
            }
            batch.extend(replaced(rng, view, 5, &mut touch));
            if batch.is_empty() {
                return plan(rng, view, seed, n);
            }
            write(
                "import",
                touch,
                Box::new(move |s| s.machines().import(batch).map(drop)),
            )
        }
        // A delete.
        87..=96 => {
            let Some((id, _)) = view.machine(rng) else {
                return Step::Checkpoint;
            };
            write(
                "delete",
                vec![(format!("machine:{id}"), None)],
                Box::new(move |s| s.machines().delete(&id).map(drop)),
            )
        }
        _ => Step::Checkpoint,
    }
}

/// Up to `most` existing machines with new own params, to replace whole.
fn replaced(
    rng: &mut fastrand::Rng,
    view: &View,
    most: usize,
    touch: &mut Vec<(String, Option<Value>)>,
) -> Vec<Machine> {
    let mut out: Vec<Machine> = Vec::new();
    for _ in 0..rng.usize(0..=most) {
        let Some((id, doc)) = view.machine(rng) else {
            break;
        };
        let key = format!("machine:{id}");
        if touch.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let Ok(uuid) = id.parse() else { continue };
        let mut m = Machine::new(doc["Name"].as_str().unwrap_or_default());
        m.uuid = uuid;
        m.profiles = serde_json::from_value(doc["Profiles"].clone()).unwrap_or_default();
        m.params.insert("counter".into(), json!(rng.u32(0..100)));
        m.params
            .insert("color".into(), json!(format!("c{}", rng.u32(0..10))));
        touch.push((key, Some(machine_doc(&m))));
        out.push(m);
    }
    out
}

fn bulk_error(e: fleetkv::store::BulkError) -> Error {
    match e {
        fleetkv::store::BulkError::Store(e) => e,
        fleetkv::store::BulkError::Refused { source, .. } => source,
    }
}

// --------------------------------------------------------------- the parent

/// What the parent read from one child.
#[derive(Default)]
struct Heard {
    ready: Option<Value>,
    /// Acknowledged writes: revision and what each touched.
    acked: Vec<(u64, BTreeMap<String, Option<Value>>)>,
    /// The write announced and not acknowledged, if any.
    pending: Option<(String, BTreeMap<String, Option<Value>>)>,
    refused: u64,
    checkpoints: u64,
    bug: Option<String>,
}

impl Heard {
    fn line(&mut self, line: &str) -> Result<(), String> {
        // Anything before the tag is the test harness's own output (it
        // prints "test NAME ... " before the test's first line).
        let Some((tag, body)) = line.find("FKV-").and_then(|at| line[at..].split_once(' ')) else {
            return Ok(());
        };
        let body: Value =
            serde_json::from_str(body).map_err(|e| format!("child line {line:?}: {e}"))?;
        match tag {
            "FKV-READY" => self.ready = Some(body),
            "FKV-INTENT" => {
                let touch = serde_json::from_value(body["touch"].clone())
                    .map_err(|e| format!("child intent {line:?}: {e}"))?;
                let what = body["what"].as_str().unwrap_or_default().to_string();
                self.pending = Some((what, touch));
            }
            "FKV-ACK" => {
                let rev = body["rev"].as_u64().ok_or("an ack without a revision")?;
                let (_, touch) = self.pending.take().ok_or("an ack without an intent")?;
                self.acked.push((rev, touch));
            }
            "FKV-REFUSED" => self.refused += 1,
            "FKV-CHECKPOINT" => self.checkpoints += 1,
            "FKV-BUG" => self.bug = Some(body.to_string()),
            _ => {}
        }
        Ok(())
    }
}

/// The parent's model: every object, and which objects each write since the
/// harness began touched.
struct Model {
    rev: u64,
    objs: Objects,
    touched: BTreeMap<u64, BTreeSet<String>>,
}

impl Model {
    fn apply(&mut self, rev: u64, touch: &BTreeMap<String, Option<Value>>) {
        for (key, doc) in touch {
            match doc {
                Some(doc) => self.objs.insert(
                    key.clone(),
                    Obj {
                        doc: doc.clone(),
                        rev,
                    },
                ),
                None => self.objs.remove(key),
            };
        }
        self.touched.insert(rev, touch.keys().cloned().collect());
        self.rev = rev;
    }
}

/// Runs the harness.
pub fn run(cfg: &Config) -> Result<Figures, String> {
    let started = Instant::now();
    let temp;
    let dir = match &cfg.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|e| e.to_string())?;
            temp.path().join("db")
        }
    };
    let result = run_in(cfg, &dir, started);
    if result.is_err() && cfg.dir.is_none() {
        // Keep the evidence.
        let kept = std::env::temp_dir().join(format!("fleetkv-crash-{}", cfg.seed));
        let _ = std::fs::remove_dir_all(&kept);
        if std::fs::rename(&dir, &kept).is_ok() {
            eprintln!("crash harness: the store is kept in {}", kept.display());
        }
    }
    result
}

fn run_in(cfg: &Config, dir: &Path, started: Instant) -> Result<Figures, String> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut figures = Figures::default();
    // The store's first write (global profile, secret) is the parent's, so
    // every later revision is a child's write.
    let mut model = {
        let s = open(dir, options(100_000, None)).map_err(|e| format!("first open: {e}"))?;
        let objs = snapshot(&s)?;
        let mut touched = BTreeMap::new();
        if s.revision() == 1 {
            touched.insert(1, objs.keys().cloned().collect());
        }
        Model {
            rev: s.revision(),
            objs,
            touched,
        }
    };
    for cycle in 0..cfg.cycles {
        let args = ChildArgs {
            dir: dir.to_path_buf(),
            seed: rng.u64(..),
            log_retain: [300, 3_000, 100_000][rng.usize(0..3)],
            checkpoint_after: [Some(1), Some(500), None][rng.usize(0..3)],
        };
        // Now and then before the child has opened the store; otherwise
        // a random moment into its workload.
        let kill_at = if rng.u32(0..8) == 0 {
            (false, Duration::from_micros(rng.u64(0..60_000)))
        } else {
            (true, Duration::from_micros(rng.u64(0..250_000)))
        };
        let what = format!(
            "seed {} cycle {cycle} (child seed {}, retain {}, checkpoint_after {:?})",
            cfg.seed, args.seed, args.log_retain, args.checkpoint_after
        );
        let heard = run_child(cfg, dir, &args, kill_at).map_err(|e| format!("{what}: {e}"))?;
        figures.kills += 1;
        if heard.ready.is_none() {
            figures.during_open += 1;
        }
        let (line, landed) = check(dir, &args, &mut model, &heard, &mut figures)
            .map_err(|e| format!("{what}: {e}"))?;
        if cfg.verbose {
            eprintln!(
                "cycle {cycle}: {} acked, rev {}, {line}{}",
                heard.acked.len(),
                model.rev,
                if landed {
                    ", in-flight write landed"
                } else {
                    ""
                }
            );
        }
        figures.cycles += 1;
    }
    figures.revision = model.rev;
    figures.objects = model.objs.len();
    figures.elapsed = started.elapsed();
    Ok(figures)
}

/// Starts a child, kills it with SIGKILL at `kill_at` (after its READY line
/// when the flag is set, else after its start), and returns what it said.
fn run_child(
    cfg: &Config,
    dir: &Path,
    args: &ChildArgs,
    kill_at: (bool, Duration),
) -> Result<Heard, String> {
    let errlog = dir.with_extension("child-stderr");
    let err = std::fs::File::create(&errlog).map_err(|e| e.to_string())?;
    let mut cmd = (cfg.command)();
    let mut child = cmd
        .env(
            CHILD_ENV,
            serde_json::to_string(args).map_err(|e| e.to_string())?,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let spawned = Instant::now();
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        // Whole lines only: the kill can cut the last one short.
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            if line.ends_with('\n') && tx.send(line.trim_end().to_string()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let mut heard = Heard::default();
    let mut result = Ok(());
    let mut deadline = if kill_at.0 {
        None
    } else {
        Some(spawned + kill_at.1)
    };
    loop {
        // The kill is due at the deadline even while lines keep coming.
        let wait = match deadline {
            Some(d) if Instant::now() >= d => break,
            Some(d) => d - Instant::now(),
            None => match CHILD_SILENT.checked_sub(spawned.elapsed()) {
                Some(left) => left,
                None => {
                    result = Err(format!(
                        "the child did not open the store in {CHILD_SILENT:?}"
                    ));
                    break;
                }
            },
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if let Err(e) = heard.line(&line) {
                    result = Err(e);
                    break;
                }
                if heard.bug.is_some() {
                    break;
                }
                if deadline.is_none() && heard.ready.is_some() {
                    deadline = Some(Instant::now() + kill_at.1);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if deadline.is_some() => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                result = Err(format!(
                    "the child did not open the store in {CHILD_SILENT:?}"
                ));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                result = Err("the child exited by itself".into());
                break;
            }
        }
    }
    // SIGKILL (std's kill on Unix); then read what the pipe still holds.
    let _ = child.kill();
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    for line in rx.try_iter() {
        heard.line(&line)?;
    }
    let stderr = || std::fs::read_to_string(&errlog).unwrap_or_default();
    if let Some(bug) = &heard.bug {
        return Err(format!(
            "the child found a bug: {bug}\nits stderr:\n{}",
            stderr()
        ));
    }
    result.map_err(|e| format!("{e} ({status})\nits stderr:\n{}", stderr()))?;
    Ok(heard)
}

/// Reopens the store after a kill and checks it against the model; moves
/// the model forward. Returns the recovery path and whether the in-flight
/// write landed.
fn check(
    dir: &Path,
    args: &ChildArgs,
    model: &mut Model,
    heard: &Heard,
    figures: &mut Figures,
) -> Result<(String, bool), String> {
    if let Some(ready) = &heard.ready {
        if ready["rev"].as_u64() != Some(model.rev) {
            return Err(format!(
                "the child opened at revision {}, the last check saw {}",
                ready["rev"], model.rev
            ));
        }
    }
    for (rev, touch) in &heard.acked {
        if *rev != model.rev + 1 {
            return Err(format!("acknowledged revision {rev} after {}", model.rev));
        }
        model.apply(*rev, touch);
    }
    figures.acked += heard.acked.len() as u64;
    figures.refused += heard.refused;
    figures.checkpoints += heard.checkpoints;

    let t0 = Instant::now();
    let s = open(dir, options(args.log_retain, args.checkpoint_after))
        .map_err(|e| format!("reopen: {e}"))?;
    figures.reopen_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    let path = match s.recovery() {
        Recovery::Checkpoint { .. } => "checkpoint + log replay".to_string(),
        Recovery::Rebuilt { refused: None } => "rebuilt (no checkpoint)".to_string(),
        Recovery::Rebuilt { refused: Some(why) } => {
            // Numbers vary; the reason does not.
            let why: String = why
                .chars()
                .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                .collect::<String>()
                .split("N")
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("N");
            format!("rebuilt (checkpoint refused: {why})")
        }
    };
    *figures.recovery.entry(path.clone()).or_default() += 1;

    // The in-flight write: all of it or none of it.
    let rev = s.revision();
    let mut landed = false;
    if let Some((what, touch)) = &heard.pending {
        figures.in_flight += 1;
        if rev == model.rev + 1 {
            landed = true;
            figures.in_flight_landed += 1;
            model.apply(rev, touch);
        } else if rev != model.rev {
            return Err(format!(
                "in-flight {what}: the store is at revision {rev}, acknowledged {}",
                model.rev
            ));
        }
    } else if rev != model.rev {
        return Err(format!(
            "the store is at revision {rev}, acknowledged {} and nothing in flight",
            model.rev
        ));
    }

    // Every object as the model has it, and nothing else.
    let stored = snapshot(&s)?;
    if stored != model.objs {
        return Err(format!(
            "the store differs from the acknowledged writes{}:\n{}",
            if heard.pending.is_some() {
                " (with the in-flight write applied if it landed)"
            } else {
                ""
            },
            diff(&model.objs, &stored)
        ));
    }
    // Effective params through the store, and counts through the indexes.
    let mut by_profile: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_value: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (key, o) in &model.objs {
        let Some(id) = key.strip_prefix("machine:") else {
            continue;
        };
        let want = effective(&model.objs, &o.doc);
        let got: BTreeMap<String, Value> = s
            .machines()
            .params(id, true)
            .map_err(|e| format!("params of {id}: {e}"))?
            .into_iter()
            .collect();
        if got != want {
            return Err(format!(
                "machine {id}: effective params {got:?}, the model says {want:?}"
            ));
        }
        for p in o.doc["Profiles"].as_array().into_iter().flatten() {
            *by_profile
                .entry(p.as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        for k in ["tier", "rack", "color"] {
            if let Some(v) = want.get(k).and_then(Value::as_str) {
                *by_value.entry((k.to_string(), v.to_string())).or_default() += 1;
            }
        }
    }
    for key in model.objs.keys() {
        if let Some(p) = key.strip_prefix("profile:").filter(|p| *p != "global") {
            let want = by_profile.get(p).copied().unwrap_or(0);
            count(&s, &format!("Profiles Eq {p}"), want)?;
        }
    }
    for k in ["tier", "rack", "color"] {
        let values: BTreeSet<String> = (0..10).map(|i| format!("{}{i}", &k[..1])).collect();
        for v in values {
            let want = by_value
                .get(&(k.to_string(), v.clone()))
                .copied()
                .unwrap_or(0);
            count(&s, &format!("Params.{k} Eq {v}"), want)?;
        }
    }
    s.verify_indexes()
        .map_err(|e| format!("verify_indexes: {e}"))?;
    check_log(&s, model)?;
    Ok((path, landed))
}

/// The indexes' count of `filter` is the model's.
fn count(s: &Store, filter: &str, want: u64) -> Result<(), String> {
    let f = Filter::parse(filter).map_err(|e| format!("{filter}: {e}"))?;
    let got = s
        .machines()
        .count(&f)
        .map_err(|e| format!("{filter}: {e}"))?;
    if got != want {
        return Err(format!("count of {filter:?}: {got}, the model says {want}"));
    }
    Ok(())
}

/// The change log from its oldest kept event: no gaps up to the store's
/// revision, each revision's events naming the objects its write touched,
/// and each object's newest event agreeing with the object.
fn check_log(s: &Store, model: &Model) -> Result<(), String> {
    let mut w = match s.watch(None, None, Some(1)) {
        Err(Error::Compacted { oldest, .. }) => s.watch(None, None, Some(oldest)),
        other => other,
    }
    .map_err(|e| format!("watch: {e}"))?;
    let mut at: Option<(u64, u32)> = None;
    let mut keys: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut newest: BTreeMap<String, (u64, Option<Value>)> = BTreeMap::new();
    while let Some(e) = w.poll().map_err(|e| format!("log: {e}"))? {
        match at {
            None => {}
            Some((r, q)) if e.revision == r && e.seq == q + 1 => {}
            Some((r, _)) if e.revision == r + 1 && e.seq == 0 => {}
            Some((r, q)) => {
                return Err(format!(
                    "log gap: event {r}.{q} then {}.{}",
                    e.revision, e.seq
                ))
            }
        }
        at = Some((e.revision, e.seq));
        let key = format!("{}:{}", kind_prefix(e.kind), e.key);
        keys.entry(e.revision).or_default().insert(key.clone());
        let doc = match e.action {
            fleetkv::Action::Delete => None,
            _ => Some(event_doc(e.kind, &e.object)?),
        };
        newest.insert(key, (e.revision, doc));
    }
    let last = at.map(|(r, _)| r).unwrap_or(0);
    if last != s.revision() {
        return Err(format!(
            "the log ends at revision {last}, the store is at {}",
            s.revision()
        ));
    }
    let oldest = keys.keys().next().copied();
    for (rev, got) in &keys {
        let Some(want) = model.touched.get(rev) else {
            return Err(format!("the log has revision {rev}, which no write made"));
        };
        // The oldest kept revision may have lost its first events to trimming.
        if got != want && !(Some(*rev) == oldest && got.is_subset(want)) {
            return Err(format!(
                "revision {rev}: the log names {got:?}, the write touched {want:?}"
            ));
        }
    }
    for (key, (rev, doc)) in newest {
        let now = model.objs.get(&key);
        let agrees = match (&doc, now) {
            (None, None) => true,
            (Some(d), Some(o)) => *d == o.doc && o.rev == rev,
            _ => false,
        };
        if !agrees {
            return Err(format!(
                "{key}: its newest event (revision {rev}) says {doc:?}, the store has {now:?}"
            ));
        }
    }
    Ok(())
}

fn diff(want: &Objects, got: &Objects) -> String {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("  missing {k}: {w:?}")),
            Some(g) if g != w => out.push(format!("  {k}: stored {g:?}, expected {w:?}")),
            _ => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!("  unexpected {k}: {g:?}"));
        }
    }
    out.truncate(20);
    out.join("\n")
}

#[allow(dead_code)] // tests/crash.rs includes this file and has its own main
fn main() {
    child_if_asked();
    let mut cycles = 100;
    let mut seed = 1;
    let mut dir = None;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--cycles" => {
                cycles = value("--cycles")
                    .parse()
                    .unwrap_or_else(|_| usage("--cycles N"))
            }
            "--seed" => {
                seed = value("--seed")
                    .parse()
                    .unwrap_or_else(|_| usage("--seed S"))
            }
            "--dir" => dir = Some(PathBuf::from(value("--dir"))),
            "--verbose" | "-v" => verbose = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => usage(&format!("cannot find this executable: {e}")),
    };
    let cfg = Config {
        cycles,
        seed,
        dir,
        command: Box::new(move || Command::new(&exe)),
        verbose,
    };
    match run(&cfg) {
        Ok(f) => println!("crash harness, seed {seed}\n{f}"),
        Err(e) => {
            eprintln!("crash harness FAILED: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: crash_harness [--cycles N] [--seed S] [--dir DIR] [--verbose]");
    std::process::exit(2);
}
