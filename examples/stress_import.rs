//! Reproduces (or shows the absence of) a hang inside the storage engine
//! during bulk import: fresh-store imports of the membership fleet, and an
//! import with concurrent small writers, each in a child process under a
//! watchdog. A child that prints no progress line and uses no CPU for
//! `--stall` seconds is counted as hung; the first hung child's threads are dumped with gdb
//! (when gdb is installed) before it is killed. After a kill the store is
//! reopened and its indexes checked against a rebuild.
//!
//! ```sh
//! cargo run --release --example stress_import -- --imports 100
//! cargo run --release --example stress_import -- --imports 0 --writer-seconds 600
//! ```
//!
//! Machines are slim by default (Name, Uuid, Profiles, one param: ~107
//! bytes each, the shape of the report that found the hang); `--full` uses
//! the membership fleet's ~360-byte machines.
//!
//! With `--cli PATH` the imports run the `fleetkv` binary itself
//! (`fleetkv --data DIR import machines.json`, the user's path) instead of
//! the library in a child of this example.
//!
//! Options: `--imports N` (8), `--machines N` (100000), `--full`, `--cli PATH`, `--writer-seconds S`,
//! `--writer-runs N` (1)
//! (0: no writer run), `--stall S` (60), `--dump FILE`
//! (stress_import.gdb.txt).

#[path = "../benches/support/fleet.rs"]
mod fleet;
#[path = "../benches/support/watchdog.rs"]
mod watchdog;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetkv::{Options, Store};
use serde_json::json;

struct Args {
    imports: usize,
    machines: usize,
    writer_seconds: u64,
    writer_runs: usize,
    stall: u64,
    full: bool,
    cli: Option<String>,
    dump: PathBuf,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match arg(args, name) {
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name} {v}: not a number");
            std::process::exit(2)
        }),
        None => default,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child-import") => child_import(Path::new(&args[2]), Path::new(&args[3]), None),
        Some("child-writers") => child_import(
            Path::new(&args[2]),
            Path::new(&args[3]),
            Some(args[4].parse().unwrap_or(60)),
        ),
        _ => parent(Args {
            imports: num(&args, "--imports", 8),
            machines: num(&args, "--machines", 100_000),
            writer_seconds: num(&args, "--writer-seconds", 0),
            writer_runs: num(&args, "--writer-runs", 1),
            stall: num(&args, "--stall", 60),
            full: args.iter().any(|a| a == "--full"),
            cli: arg(&args, "--cli"),
            dump: arg(&args, "--dump")
                .unwrap_or_else(|| "stress_import.gdb.txt".into())
                .into(),
        }),
    }
}

/// How one child run ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done(Duration),
    /// No progress for the stall limit: the watchdog killed it.
    Hung,
    /// The store's own stall limit fired (the safety net) and it exited.
    Stalled(String),
    Failed(String),
}

fn parent(a: Args) {
    let work = tempfile::tempdir().expect("a temporary directory");
    let file = work.path().join("machines.json");
    let fleet: Vec<_> = (0..a.machines)
        .map(|i| {
            let mut m = fleet::machine(i);
            if !a.full {
                m.params.retain(|k, _| k == "rack");
                m.meta.clear();
                m.address.clear();
            }
            m
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&fleet).expect("fleet JSON")).expect("write fleet");
    let mb = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    println!(
        "fleet: {} machines ({mb:.1} MB), {} profiles created first; stall limit {} s",
        a.machines,
        fleet::CLUSTERS,
        a.stall
    );
    let mut dumped = false;
    let mut tally = |label: &str, runs: usize, child_args: &dyn Fn(&Path) -> Vec<String>| {
        let (mut hung, mut stalled, mut failed, mut times) = (0, 0, 0, Vec::new());
        for run in 0..runs {
            let store = work.path().join(format!("{label}-{run}"));
            let outcome = watch_child(&child_args(&store), a.stall, &a.dump, &mut dumped);
            match &outcome {
                Outcome::Done(t) => times.push(t.as_secs_f64()),
                Outcome::Hung => hung += 1,
                Outcome::Stalled(_) => stalled += 1,
                Outcome::Failed(_) => failed += 1,
            }
            if !matches!(outcome, Outcome::Done(_)) {
                println!("{label} run {run}: {outcome:?}; {}", check_reopen(&store));
            }
            let _ = std::fs::remove_dir_all(&store);
            println!(
                "{label} {}/{runs}: {outcome:?} (hung so far {hung}, stalled {stalled}, failed {failed})",
                run + 1
            );
        }
        times.sort_by(f64::total_cmp);
        let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            "== {label}: {runs} runs, {hung} hung, {stalled} stalled (store error), {failed} failed, {} finished (median {median:.1} s)",
            times.len()
        );
        hung + stalled + failed
    };
    let exe = std::env::current_exe().expect("own path");
    let exe = exe.to_string_lossy().into_owned();
    let file_s = file.to_string_lossy().into_owned();
    let mut bad = tally("import", a.imports, &|store| match &a.cli {
        Some(cli) => {
            // The same setup as a library child, then the binary's import.
            match Store::open(store) {
                Ok(s) => setup(&s),
                Err(e) => fail(&format!("open {}: {e}", store.display())),
            }
            vec![
                cli.clone(),
                "--data".into(),
                store.to_string_lossy().into(),
                "import".into(),
                file_s.clone(),
            ]
        }
        None => vec![
            exe.clone(),
            "child-import".into(),
            store.to_string_lossy().into(),
            file_s.clone(),
        ],
    });
    if a.writer_seconds > 0 {
        bad += tally("writers", a.writer_runs, &|store| {
            vec![
                exe.clone(),
                "child-writers".into(),
                store.to_string_lossy().into(),
                file_s.clone(),
                a.writer_seconds.to_string(),
            ]
        });
    }
    if dumped {
        println!("stack dump of the first hung child: {}", a.dump.display());
    }
    std::process::exit(if bad == 0 { 0 } else { 1 });
}

/// Runs a child, reading its progress lines and its CPU time; kills it
/// after `stall` seconds with neither.
fn watch_child(argv: &[String], stall: u64, dump: &Path, dumped: &mut bool) -> Outcome {
    let started = Instant::now();
    let mut child: Child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("spawn: {e}")),
    };
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut last = String::new();
    let (mut progressed, mut cpu) = (Instant::now(), watchdog::cpu_ticks(child.id()));
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                last = line;
                progressed = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = watchdog::cpu_ticks(child.id());
                if now != cpu {
                    (cpu, progressed) = (now, Instant::now());
                } else if progressed.elapsed() >= Duration::from_secs(stall) {
                    if !*dumped {
                        *dumped = dump_threads(child.id(), dump, &last);
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    return Outcome::Hung;
                }
            }
        }
    }
    let status = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    match status {
        Ok(s) if s.success() => Outcome::Done(started.elapsed()),
        _ if err.contains("stalled") => Outcome::Stalled(err.trim().to_string()),
        s => Outcome::Failed(format!("{s:?}: {} (last: {last})", err.trim())),
    }
}

fn dump_threads(pid: u32, to: &Path, last: &str) -> bool {
    match watchdog::stacks(pid) {
        Ok(stacks) => std::fs::write(to, format!("# last progress line: {last}\n{stacks}")).is_ok(),
        Err(e) => {
            println!("({e})");
            false
        }
    }
}

/// Reopens a killed child's store and checks it (whole writes, indexes
/// equal to a rebuild). A library child keeps its rounds in `r0`, `r1`, …
fn check_reopen(dir: &Path) -> String {
    let newest_round = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('r'))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let store = newest_round.unwrap_or_else(|| dir.to_path_buf());
    match Store::open(&store) {
        Ok(s) => match s.verify_indexes() {
            Ok(()) => format!(
                "reopened: {} machines, indexes equal a rebuild",
                s.machines().list_all().map(|l| l.len()).unwrap_or(0)
            ),
            Err(e) => {
                println!("REOPEN CHECK FAILED: {e}");
                format!("reopened but the indexes differ: {e}")
            }
        },
        Err(e) => format!("reopen failed: {e}"),
    }
}

/// The child: the CLI's import path (`fleetkv import` calls the same
/// `transfer::import_with`) into a fresh store, one line per batch. With
/// `writers`, repeats fresh-store imports for that many seconds while two
/// threads do small param writes, one line per 100 writes.
fn child_import(dir: &Path, file: &Path, writer_seconds: Option<u64>) {
    let doc: serde_json::Value = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => fail(&format!("reading {}: {e}", file.display())),
    };
    let deadline = writer_seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut round = 0;
    loop {
        let store = match Store::open_with(dir.join(format!("r{round}")), Options::default()) {
            Ok(s) => s,
            Err(e) => fail(&format!("open: {e}")),
        };
        setup(&store);
        let stop = AtomicBool::new(false);
        let writes = AtomicU64::new(0);
        std::thread::scope(|scope| {
            if deadline.is_some() {
                for w in 0..2 {
                    let (store, stop, writes) = (&store, &stop, &writes);
                    scope.spawn(move || {
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let agent = format!("Name:agent-{w}-{}", i % 50);
                            if let Err(e) =
                                store.machines().set_param(&agent, "heartbeat", json!(i))
                            {
                                fail(&format!("writer: {e}"));
                            }
                            i += 1;
                            if writes.fetch_add(1, Ordering::Relaxed) % 100 == 99 {
                                println!("w {}", writes.load(Ordering::Relaxed));
                            }
                        }
                    });
                }
            }
            let result = fleetkv::transfer::import_with(&store, doc.clone(), None, |_, done, _| {
                println!("i {done}");
            });
            stop.store(true, Ordering::Relaxed);
            if let Err(e) = result {
                fail(&format!("import: {e}"));
            }
        });
        if let Err(e) = store.flush() {
            fail(&format!("flush: {e}"));
        }
        drop(store);
        let _ = std::fs::remove_dir_all(dir.join(format!("r{round}")));
        round += 1;
        match deadline {
            Some(d) if Instant::now() < d => println!("round {round}"),
            _ => break,
        }
    }
    println!("done {round}");
}

fn setup(store: &Store) {
    let run = || -> fleetkv::Result<()> {
        for d in fleet::definitions() {
            store.params().create(d)?;
        }
        for c in 0..fleet::CLUSTERS {
            store.profiles().create(fleet::profile(c))?;
        }
        for w in 0..2 {
            for i in 0..50 {
                store
                    .machines()
                    .create(fleetkv::Machine::new(format!("agent-{w}-{i}")))?;
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        fail(&format!("setup: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1)
}
