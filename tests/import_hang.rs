//! A bounded slice of `examples/stress_import.rs`: fresh-store imports
//! through the `fleetkv` binary, and an in-process import with concurrent
//! small writers for a minute, each under a watchdog. A run that makes no
//! progress (no CPU in the child; no write in process) for `STALL` fails the
//! test, with every thread's stack (gdb, when installed) in the output,
//! instead of hanging CI. Sled 0.34.7 as released could deadlock here (see
//! `vendor/sled/PATCHES.md`).

mod common;
#[path = "../benches/support/watchdog.rs"]
mod watchdog;

use std::io::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::BIN;
use fleetkv::{Machine, ParamDef, Profile, Store};
use serde_json::json;

const STALL: Duration = Duration::from_secs(60);
const MACHINES: usize = 50_000;
const PROFILES: usize = 1000;
/// Small writers beside the import: more of them made the released sled's
/// deadlock likelier (more log buffers sealed while one thread waits).
const WRITERS: usize = 4;

/// The report's slim machines: Name, Uuid, one profile, one param.
fn fleet_file(dir: &std::path::Path) -> std::path::PathBuf {
    let machines: Vec<_> = (0..MACHINES)
        .map(|i| {
            let mut m = Machine::new(format!("node-{i:07}"));
            m.uuid = uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i as u128);
            m.profiles.push(format!("cluster-{}", i % PROFILES));
            m.params.insert("rack".into(), json!(i / 40 % 50));
            m
        })
        .collect();
    let file = dir.join("machines.json");
    std::fs::write(&file, serde_json::to_vec(&machines).unwrap()).unwrap();
    file
}

fn setup(s: &Store) {
    s.params()
        .create(ParamDef::new("rack", json!({"type": "integer"})))
        .unwrap();
    for c in 0..PROFILES {
        s.profiles()
            .create(Profile::new(format!("cluster-{c}")))
            .unwrap();
    }
}

#[test]
fn cli_imports_into_fresh_stores_finish() {
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_file(dir.path());
    for run in 0..3 {
        let db = dir.path().join(format!("db{run}"));
        setup(&Store::open(&db).unwrap());
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(&db)
            .arg("import")
            .arg(&file)
            .env_remove("FLEETKV_DATA")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (mut cpu, mut progressed) = (watchdog::cpu_ticks(child.id()), Instant::now());
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
            let now = watchdog::cpu_ticks(child.id());
            if now != cpu {
                (cpu, progressed) = (now, Instant::now());
            } else if progressed.elapsed() > STALL {
                let dump = watchdog::stacks(child.id()).unwrap_or_else(|e| e);
                let _ = child.kill();
                let _ = child.wait();
                panic!("import {run} hung (no CPU for {STALL:?}):\n{dump}");
            }
        };
        assert!(status.success(), "import {run}: {status:?}");
        let s = Store::open(&db).unwrap();
        assert_eq!(s.machines().list_all().unwrap().len(), MACHINES);
        s.verify_indexes().unwrap();
    }
}

#[test]
fn an_import_with_concurrent_writers_keeps_moving_for_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_file(dir.path());
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    // The watchdog ends the whole test process on a hang: a deadlocked
    // engine cannot be unwound, and CI must not wait for it.
    {
        let (progress, finished) = (progress.clone(), finished.clone());
        std::thread::spawn(move || {
            let (mut seen, mut since) = (0, Instant::now());
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = progress.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > STALL {
                    let dump = watchdog::stacks(std::process::id()).unwrap_or_else(|e| e);
                    let mut err = std::io::stderr();
                    let _ = writeln!(err, "import with writers hung after {seen} steps:\n{dump}");
                    std::process::exit(101);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while Instant::now() < deadline {
        let store = Store::open(dir.path().join(format!("r{round}"))).unwrap();
        setup(&store);
        for w in 0..WRITERS {
            for i in 0..20 {
                store
                    .machines()
                    .create(Machine::new(format!("agent-{w}-{i}")))
                    .unwrap();
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, stop, progress) = (store.clone(), stop.clone(), progress.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        store
                            .machines()
                            .set_param(&format!("Name:agent-{w}-{}", i % 20), "heartbeat", json!(i))
                            .unwrap();
                        progress.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        let imported = fleetkv::transfer::import_with(&store, doc.clone(), None, |_, _, _| {
            progress.fetch_add(1, Ordering::Relaxed);
        });
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(imported.unwrap(), MACHINES);
        store.verify_indexes().unwrap();
        drop(store);
        std::fs::remove_dir_all(dir.path().join(format!("r{round}"))).unwrap();
        round += 1;
    }
    finished.store(true, Ordering::Relaxed);
    assert!(round >= 1);
}
