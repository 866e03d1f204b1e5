//! Index checkpoints through the public API: every way an open can find
//! one — current, behind (replayed), damaged, foreign, ahead, beyond the
//! log, after a SIGKILL — ends with indexes equal to a rebuild.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use fleetkv::{Filter, Machine, Options, ParamDef, Profile, Recovery, Snapshot, Store};
use serde_json::json;

mod common;
use common::Server;

const FILE: &str = "fleetkv.index";
const SNAPSHOT: &str = "fleetkv.clean";

fn quiet() -> Options {
    // Close writes no checkpoint, so an open must replay what came after.
    Options {
        checkpoint_after: None,
        ..Options::default()
    }
}

fn machine(i: u32, profiles: &[&str]) -> Machine {
    let mut m = Machine::new(format!("node-{i:04}"));
    m.address = format!("10.0.{}.{}", i / 250, i % 250);
    m.profiles = profiles.iter().map(|p| p.to_string()).collect();
    m.params.insert("rack".into(), json!(i % 7));
    m
}

/// A fleet in 4 clusters, checkpointed at close.
fn fleet(dir: &Path) {
    let s = open(dir);
    s.params()
        .create(ParamDef::new("rack", json!({"type": "integer"})))
        .unwrap();
    for c in 0..4 {
        let mut p = Profile::new(format!("cluster-{c}"));
        p.params.insert("cluster/size".into(), json!(c * 10));
        s.profiles().create(p).unwrap();
    }
    let ms: Vec<Machine> = (0..1200)
        .map(|i| machine(i, &[&format!("cluster-{}", i % 4)]))
        .collect();
    s.machines().import(ms).unwrap();
}

const QUERIES: [&str; 7] = [
    "",
    "Profiles Eq cluster-1",
    "cluster/size Gte 20",
    "rack Eq 3",
    "Name Re ^node-00[0-4]",
    "Workflow Eq deploy",
    "Meta.owner Eq ops",
];

fn counts(s: &Store) -> Vec<u64> {
    QUERIES
        .iter()
        .map(|f| s.machines().count(&Filter::parse(f).unwrap()).unwrap())
        .collect()
}

#[test]
fn a_clean_close_leaves_a_checkpoint_the_next_open_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    assert!(dir.path().join(FILE).exists(), "written at close");
    let s = open(dir.path());
    assert_eq!(
        s.recovery(),
        &Recovery::Checkpoint {
            revision: s.revision(),
            events: 0,
            reindexed: 0
        }
    );
    s.verify_indexes().unwrap();
    assert_eq!(counts(&s)[..2], [1200, 300]);
}

/// Keys held packed (a key decoded from a checkpoint packs Name, Uuid and
/// Address) are written as their blocks by the next checkpoint and read
/// back from them: the open after it finds every machine by Name and by
/// Uuid, counts as before and equals a rebuild.
#[test]
fn packed_keys_written_as_blocks_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let uuids: Vec<String> = {
        let s = open(dir.path());
        // An import decodes every key it adds to (packed, once decoded).
        let more: Vec<Machine> = (1200..1300).map(|i| machine(i, &["cluster-1"])).collect();
        s.machines().import(more).unwrap();
        s.checkpoint().unwrap();
        (0..1300)
            .step_by(7)
            .map(|i| {
                s.machines()
                    .get(&format!("node-{i:04}"))
                    .unwrap()
                    .uuid
                    .to_string()
            })
            .collect()
    };
    let s = open(dir.path());
    assert!(
        matches!(s.recovery(), Recovery::Checkpoint { events: 0, .. }),
        "{:?}",
        s.recovery()
    );
    for (i, uuid) in (0..1300).step_by(7).zip(&uuids) {
        let by_name = s.machines().get(&format!("Name:node-{i:04}")).unwrap();
        assert_eq!(&by_name.uuid.to_string(), uuid);
        assert!(s.machines().exists(&format!("Uuid:{uuid}")).unwrap());
    }
    assert!(!s.machines().exists("Name:node-1300").unwrap());
    assert_eq!(counts(&s)[..2], [1300, 400]);
    s.verify_indexes().unwrap();
    drop(s);
    // Every key of the file decodes as it is (a key that does not is
    // built from the records, which the open above would not show).
    released(dir.path());
    let (code, out, err) = common::embedded(dir.path(), &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("damage") && !err.contains("index checkpoint key"),
        "{out}{err}"
    );
}

/// A process killed between writing a checkpoint's or a snapshot's
/// temporary file and renaming it leaves the file; the next open of the
/// store removes it (and reads the checkpoint the rename never replaced).
#[test]
fn temporary_files_a_killed_process_left_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    released(dir.path());
    let left: Vec<_> = [FILE, SNAPSHOT]
        .iter()
        .map(|name| dir.path().join(format!("{name}.tmp")))
        .collect();
    for tmp in &left {
        std::fs::write(tmp, vec![7u8; 1 << 20]).unwrap();
    }
    let s = open(dir.path());
    for tmp in &left {
        assert!(!tmp.exists(), "{} is still there", tmp.display());
    }
    assert!(matches!(s.recovery(), Recovery::Checkpoint { .. }));
    assert_eq!(counts(&s)[..2], [1200, 300]);
}

/// Each file in `dir`: its length and when it was last written.
fn files(
    dir: &Path,
) -> std::collections::BTreeMap<std::ffi::OsString, (u64, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (e.file_name(), (m.len(), m.modified().unwrap()))
        })
        .collect()
}

/// An open that only counts leaves every file of the store as it found it
/// but the snapshot its close leaves again: sled's recovery no longer
/// rewrites the fill its last open already wrote (vendor/sled/PATCHES.md,
/// patch 6). Reading documents is another matter: sled may consolidate a
/// page it reads.
#[test]
fn an_open_that_only_counts_writes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    // The first open after writes may advance sled's snapshot.
    for _ in 0..2 {
        let s = open(dir.path());
        assert_eq!(counts(&s)[..2], [1200, 300]);
    }
    let mut before = files(dir.path());
    let s = open(dir.path());
    assert_eq!(counts(&s)[..2], [1200, 300]);
    drop(s);
    let mut after = files(dir.path());
    assert!(after.remove(std::ffi::OsStr::new(SNAPSHOT)).is_some());
    before.remove(std::ffi::OsStr::new(SNAPSHOT));
    assert_eq!(after, before);
}

/// Every kind of write after a checkpoint, then an open that replays them.
#[test]
fn writes_after_a_checkpoint_are_replayed_to_the_same_indexes_as_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let before = {
        let s = open_with(dir.path(), quiet());
        let m = s.machines();
        m.set_param("node-0003", "rack", json!(6)).unwrap();
        m.update(
            "node-0004",
            &json!({"Name": "renamed-4", "Workflow": "deploy"}),
        )
        .unwrap();
        m.update(
            "node-0005",
            &json!({"Profiles": ["cluster-2", "cluster-3"]}),
        )
        .unwrap();
        m.update("node-0006", &json!({"Meta": {"owner": "ops"}}))
            .unwrap();
        m.delete("node-0007").unwrap();
        m.create(machine(5000, &["cluster-1"])).unwrap();
        let created = m.create(machine(5001, &[])).unwrap();
        m.delete(&created.uuid.to_string()).unwrap();
        // A re-import replaces some machines and creates others.
        let again = (1190..1200).map(|i| {
            let mut x = m.get(&format!("node-{i:04}")).unwrap();
            x.profiles = vec!["cluster-0".into()];
            x
        });
        let new = (1200..1210).map(|i| machine(i, &["cluster-0"]));
        assert_eq!(m.import(again.chain(new).collect()).unwrap(), (10, 10));
        // A profile change moves every member's effective param.
        s.profiles()
            .set_param("cluster-1", "cluster/size", json!(99))
            .unwrap();
        s.profiles().create(Profile::new("late")).unwrap();
        s.profiles().delete("late").unwrap();
        s.params()
            .create(ParamDef::new("owner", json!({"type": "string"})))
            .unwrap();
        counts(&s)
    };
    let s = open(dir.path());
    match s.recovery() {
        Recovery::Checkpoint {
            events, reindexed, ..
        } => {
            assert!(*events >= 30, "{events} events replayed");
            // cluster-1's 300 members, plus the machines touched directly.
            assert!(*reindexed >= 300 && *reindexed < 400, "{reindexed}");
        }
        other => panic!("expected a checkpoint, got {other:?}"),
    }
    s.verify_indexes().unwrap();
    assert_eq!(counts(&s), before);
}

#[test]
fn a_change_of_global_means_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    {
        let s = open_with(dir.path(), quiet());
        s.profiles().set_param("global", "rack", json!(1)).unwrap();
    }
    let s = open(dir.path());
    assert!(
        matches!(s.recovery(), Recovery::Rebuilt { refused: Some(why) } if why.contains("global")),
        "{:?}",
        s.recovery()
    );
    s.verify_indexes().unwrap();
}

fn refused_after(dir: &Path, damage: impl FnOnce(&Path)) -> String {
    damage(&dir.join(FILE));
    let s = open(dir);
    s.verify_indexes().unwrap();
    let why = match s.recovery() {
        Recovery::Rebuilt { refused: Some(why) } => why.clone(),
        other => panic!("expected a refused checkpoint, got {other:?}"),
    };
    assert_eq!(counts(&s)[..2], [1200, 300]);
    drop(s);
    // The rebuild's close wrote a good checkpoint again.
    assert!(matches!(open(dir).recovery(), Recovery::Checkpoint { .. }));
    why
}

#[test]
fn torn_flipped_newer_and_foreign_checkpoints_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let why = refused_after(dir.path(), |f| {
        let len = std::fs::metadata(f).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        file.set_len(len / 2).unwrap();
    });
    assert!(why.contains("torn"), "{why}");
    let why = refused_after(dir.path(), |f| {
        let mut b = std::fs::read(f).unwrap();
        let at = b.len() - 100;
        b[at] ^= 0x01;
        std::fs::write(f, b).unwrap();
    });
    assert!(why.contains("checksum"), "{why}");
    let why = refused_after(dir.path(), |f| {
        let mut b = std::fs::read(f).unwrap();
        b[8] = b[8].wrapping_add(1); // the format version
        std::fs::write(f, b).unwrap();
    });
    assert!(why.contains("version"), "{why}");
    let other = tempfile::tempdir().unwrap();
    fleet(other.path());
    let why = refused_after(dir.path(), |f| {
        std::fs::copy(other.path().join(FILE), f).unwrap();
    });
    assert!(why.contains("another store"), "{why}");
    let why = refused_after(dir.path(), |f| std::fs::write(f, b"garbage").unwrap());
    assert!(why.contains("not a fleetkv index checkpoint"), "{why}");
}

/// A checkpoint from later than the store (the engine lost writes the
/// checkpoint had seen) is not used.
#[test]
fn a_checkpoint_ahead_of_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let behind = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), behind.path());
    {
        let s = open(dir.path());
        s.machines()
            .set_param("node-0001", "rack", json!(0))
            .unwrap();
        s.checkpoint().unwrap();
    }
    std::fs::copy(dir.path().join(FILE), behind.path().join(FILE)).unwrap();
    let s = open(behind.path());
    assert!(
        matches!(s.recovery(), Recovery::Rebuilt { refused: Some(why) } if why.contains("store is at")),
        "{:?}",
        s.recovery()
    );
    s.verify_indexes().unwrap();
}

#[test]
fn a_checkpoint_the_trimmed_log_cannot_bridge_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    {
        let s = open_with(
            dir.path(),
            Options {
                log_retain: 10,
                ..quiet()
            },
        );
        for i in 0..20 {
            s.machines()
                .set_param("node-0001", "rack", json!(i % 7))
                .unwrap();
        }
    }
    let s = open(dir.path());
    assert!(
        matches!(s.recovery(), Recovery::Rebuilt { refused: Some(why) } if why.contains("change log")),
        "{:?}",
        s.recovery()
    );
    s.verify_indexes().unwrap();
}

/// Until the next checkpoint is in place, the log keeps every record after
/// the one in place, however far past its retention: the next open (here
/// after a close that writes none) brings that checkpoint forward instead
/// of reading every machine. Once the log holds four times its retention
/// it lets go (a checkpoint that keeps failing must not grow it for good),
/// and the open rebuilds.
#[test]
fn the_log_keeps_what_the_checkpoint_in_place_needs_up_to_four_times_its_retention() {
    for (writes, bridged) in [(30, true), (60, false)] {
        let dir = tempfile::tempdir().unwrap();
        fleet(dir.path());
        {
            // Checkpoints after a million machines' writes: none is written.
            let s = open_with(
                dir.path(),
                Options {
                    log_retain: 10,
                    checkpoint_after: Some(1_000_000),
                    ..Options::default()
                },
            );
            for i in 0..writes {
                s.machines()
                    .set_param("node-0001", "rack", json!(i % 7))
                    .unwrap();
            }
        }
        let s = open(dir.path());
        match bridged {
            true => assert!(
                matches!(s.recovery(), Recovery::Checkpoint { events, .. } if *events == writes),
                "{writes} writes: {:?}",
                s.recovery()
            ),
            false => assert!(
                matches!(s.recovery(), Recovery::Rebuilt { refused: Some(why) } if why.contains("change log")),
                "{writes} writes: {:?}",
                s.recovery()
            ),
        }
        s.verify_indexes().unwrap();
    }
}

/// An open reads the checkpoint while the engine opens, before it has the
/// directory's lock; a checkpoint written meanwhile by the store holding
/// the lock is the one it uses (the one it read first is past the trimmed
/// log and would mean a rebuild).
#[test]
fn a_checkpoint_written_while_an_open_waits_for_the_lock_is_the_one_read() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let holder = open_with(
        dir.path(),
        Options {
            log_retain: 10,
            ..quiet()
        },
    );
    for i in 0..20 {
        holder
            .machines()
            .set_param("node-0001", "rack", json!(i % 7))
            .unwrap();
    }
    let path = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        Store::open_with(
            &path,
            Options {
                lock_timeout: std::time::Duration::from_secs(20),
                ..Options::default()
            },
        )
    });
    // Time for the waiter to read the old checkpoint (a few KB) and start
    // waiting for the lock.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rev = holder.revision();
    holder.checkpoint().unwrap();
    drop(holder);
    let s = waiter.join().unwrap().unwrap();
    assert!(
        matches!(s.recovery(), Recovery::Checkpoint { revision, events: 0, .. } if *revision == rev),
        "{:?} (the holder closed at {rev})",
        s.recovery()
    );
    s.verify_indexes().unwrap();
}

/// A key's section is read from the checkpoint file when a query first
/// needs it. If the bytes changed on disk after the open checked the whole
/// file (written in place, which fleetkv never does), that key is built
/// from the records instead: answers and indexes stay right.
#[test]
fn a_section_changed_on_disk_after_the_open_is_built_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let expected = counts(&open(dir.path()));
    let s = open(dir.path());
    assert!(
        matches!(s.recovery(), Recovery::Checkpoint { events: 0, .. }),
        "{:?}",
        s.recovery()
    );
    damage_in_place(&dir.path().join(FILE));
    assert_eq!(counts(&s), expected);
    s.verify_indexes().unwrap();
}

/// A running store writes a checkpoint itself once what the next open
/// would replay reaches the log's retention.
#[test]
fn a_busy_store_checkpoints_once_its_replay_reaches_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let s = open_with(
        dir.path(),
        Options {
            log_retain: 200,
            checkpoint_after: Some(50),
            ..Options::default()
        },
    );
    let start = s.revision();
    for i in 0..500 {
        s.machines()
            .set_param("node-0001", "rack", json!(i % 7))
            .unwrap();
    }
    // Before any close, in the background: a checkpoint at most the
    // retention behind (its header holds its revision at bytes 28..36).
    let bridged = |at: u64| at > start && s.revision() - at <= 200;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let at = loop {
        let header = std::fs::read(dir.path().join(FILE)).unwrap();
        let at = u64::from_le_bytes(header[28..36].try_into().unwrap());
        if bridged(at) || std::time::Instant::now() > deadline {
            break at;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(bridged(at), "checkpoint at {at}, store at {}", s.revision());
    drop(s);
    let s = open(dir.path());
    assert!(matches!(s.recovery(), Recovery::Checkpoint { .. }));
    s.verify_indexes().unwrap();
}

/// SIGKILL while a server writes, after a checkpoint: the next open replays
/// from the checkpoint, loses no acknowledged write and verifies.
#[test]
fn sigkill_between_a_checkpoint_and_later_writes_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    fleet(&data);
    let server = Server::start_at(&data, &["--durable"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (url, auth, stop) = (server.url.clone(), server.bearer(), stop.clone());
            let acks = acks.clone();
            std::thread::spawn(move || {
                let mut acked = None;
                for i in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let m = format!("{url}/api/v3/machines/Name:node-{:04}", t * 4 + 1);
                    let ops = json!([{"op": "replace", "path": "/Workflow", "value": format!("w{}", i % 3)}]);
                    let send = |req: ureq::Request, body: String| {
                        req.set("Authorization", &auth)
                            .set("Content-Type", "application/json")
                            .send_string(&body)
                            .is_ok_and(|r| r.status() == 200)
                    };
                    if !send(ureq::patch(&m), ops.to_string())
                        || !send(ureq::post(&format!("{m}/params/n")), i.to_string())
                    {
                        break; // the server is gone
                    }
                    if acked.is_none() {
                        acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    acked = Some(i);
                }
                acked
            })
        })
        .collect();
    // Kill once every writer has had a write acknowledged, and a little
    // after, so that the kill lands among writes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acks.load(std::sync::atomic::Ordering::Relaxed) < 3
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-9", &server.child.id().to_string()])
        .status()
        .unwrap();
    let mut server = server;
    server.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<Option<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let s = open(&data);
    match s.recovery() {
        Recovery::Checkpoint { events, .. } => assert!(*events > 0, "writes were replayed"),
        other => panic!("expected a checkpoint, got {other:?}"),
    }
    s.verify_indexes().unwrap();
    for (t, a) in acked.iter().enumerate() {
        let a = a.unwrap_or_else(|| panic!("writer {t} had no write acknowledged"));
        let got = s
            .machines()
            .get_param(&format!("Name:node-{:04}", t * 4 + 1), "n", false)
            .unwrap()
            .and_then(|v| v.as_u64());
        assert!(
            got >= Some(a),
            "writer {t}: acknowledged {a}, found {got:?}"
        );
    }
}

/// The importing child [`sigkill_mid_import_replays_exactly`] kills: this
/// test binary run again with the store's directory in this variable. It
/// imports `more.json` beside it and prints a line after each write that
/// committed, so that the kill comes between two commits.
const IMPORT_CHILD: &str = "FLEETKV_CHECKPOINT_IMPORT_CHILD";

#[test]
fn import_child() {
    use std::io::Write;
    let Some(data) = std::env::var_os(IMPORT_CHILD) else {
        return; // only as the child
    };
    let data = std::path::PathBuf::from(data);
    let s = open(&data);
    let file = data.parent().unwrap().join("more.json");
    let doc = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    fleetkv::transfer::import_with(&s, doc, None, |_, done, _| {
        if done > 0 {
            println!("committed {done}");
            let _ = std::io::stdout().flush();
        }
    })
    .unwrap();
}

/// SIGKILL in the middle of an import of three writes, once the first has
/// committed: the checkpoint from before the import bridges to indexes
/// equal to a rebuild, every machine that landed is whole, and the CLI's
/// counts (opening the store, then from the snapshot its close leaves)
/// agree with them.
#[test]
fn sigkill_mid_import_replays_exactly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    fleet(&data);
    let more: Vec<Machine> = (0..30_000)
        .map(|i| {
            let mut m = Machine::new(format!("more-{i:05}"));
            m.profiles = vec!["cluster-1".into()];
            m
        })
        .collect();
    std::fs::write(
        dir.path().join("more.json"),
        serde_json::to_vec(&more).unwrap(),
    )
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["import_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(IMPORT_CHILD, &data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .map(Result::unwrap)
        // The harness's "test import_child ... " may start the line.
        .find(|l| l.contains("committed "))
        .expect("the child committed a write");
    let _ = child.kill();
    child.wait().unwrap();
    // The CLI's count: the killed import's open removed the fleet's
    // snapshot, so the first count opens the store (and replays); its close
    // checkpoints, and the second answers from the snapshot that leaves.
    let cli_count = || {
        let out = Command::new(common::BIN)
            .arg("--data")
            .arg(&data)
            .args(["machines", "count", "Profiles", "Eq", "cluster-1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let replayed = cli_count();
    released(&data);
    assert!(data.join(SNAPSHOT).exists(), "left by the count's close");
    let from_snapshot = cli_count();
    let s = open(&data);
    assert_eq!((replayed, from_snapshot), (counts(&s)[1], counts(&s)[1]));
    assert!(
        matches!(s.recovery(), Recovery::Checkpoint { .. }),
        "{:?}",
        s.recovery()
    );
    s.verify_indexes().unwrap();
    let imported = s
        .machines()
        .count(&Filter::parse("Name Re ^more-").unwrap())
        .unwrap();
    // Whole writes of whole machines: each one landed with its profile.
    assert!(
        imported >= 10_000 && imported.is_multiple_of(10_000),
        "{imported}"
    );
    assert_eq!(counts(&s)[1], 300 + imported);
    eprintln!("{imported} of 30000 imported before the kill ({first})");
}

/// Opens `dir`, waiting out the lock of a store this process just closed:
/// sled's IO threads can hold its files a moment after the last handle
/// drops.
fn open_with(dir: &Path, options: Options) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open_with(dir, options.clone()) {
            Err(fleetkv::Error::Busy(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
}

fn open(dir: &Path) -> Store {
    open_with(dir, Options::default())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Rewrites every 97th byte of the file's last three quarters, in place:
/// the same file (inode), which a store or snapshot may hold open.
/// A checkpoint taken after the file it replaces changed on disk: the
/// copy it encodes without the state's lock cannot read the untouched keys
/// back, so it is encoded again under the lock, where those keys are built
/// from the records; the next open reads it and equals a rebuild.
#[test]
fn a_checkpoint_over_a_changed_file_builds_the_unreadable_keys_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let s = open(dir.path());
    s.machines()
        .set_param("node-0001", "rack", json!(99))
        .unwrap();
    damage_in_place(&dir.path().join(FILE));
    s.checkpoint().unwrap();
    let expected = counts(&s);
    let rev = s.revision();
    drop(s);
    released(dir.path());
    let s = open(dir.path());
    assert!(
        matches!(s.recovery(), Recovery::Checkpoint { revision, .. } if *revision == rev),
        "{:?}",
        s.recovery()
    );
    assert_eq!(counts(&s), expected);
    s.verify_indexes().unwrap();
}

fn damage_in_place(path: &Path) {
    use std::io::Write;
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len();
    for at in (len / 4..len).step_by(97) {
        bytes[at] ^= 0x5A;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}

/// Waits until no engine holds `dir` (sled's IO threads let go of its lock
/// a moment after the last handle drops).
fn released(dir: &Path) {
    use fs2::FileExt;
    let f = std::fs::File::open(dir.join("db")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while FileExt::try_lock_exclusive(&f).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never let go"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    FileExt::unlock(&f).unwrap();
}

fn snapshot(dir: &Path) -> Option<Snapshot> {
    released(dir);
    Snapshot::open(dir).unwrap()
}

fn snapshot_counts(snap: &Snapshot) -> Vec<u64> {
    QUERIES
        .iter()
        .map(|f| snap.count(&Filter::parse(f).unwrap()).unwrap())
        .collect()
}

/// A clean close with the checkpoint at the store's revision leaves a
/// snapshot that counts (and group-counts, with definitions' defaults) as
/// the store did, until the next open of the store removes it.
#[test]
fn a_clean_close_leaves_a_snapshot_that_counts_as_the_store() {
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path());
    let s = open(dir.path());
    s.params()
        .create(ParamDef::new(
            "tier",
            json!({"type": "string", "default": "bronze"}),
        ))
        .unwrap();
    s.machines()
        .set_param("node-0007", "tier", json!("gold"))
        .unwrap();
    s.checkpoint().unwrap();
    let expected = counts(&s);
    let by = ["Params.tier".to_string(), "Params.rack".to_string()];
    let groups = s.machines().group_count(&Filter::all(), &by).unwrap();
    let rev = s.revision();
    // Open: the store holds the directory, and its open removed the file.
    assert!(Snapshot::open(dir.path()).unwrap().is_none());
    assert!(!dir.path().join(SNAPSHOT).exists());
    drop(s);
    let snap = snapshot(dir.path()).expect("left by the close");
    assert_eq!(snap.revision(), rev);
    assert_eq!(snapshot_counts(&snap), expected);
    let tier = |f: &str| snap.count(&Filter::parse(f).unwrap()).unwrap();
    assert_eq!(tier("tier Eq bronze"), 1199, "the default binds");
    assert_eq!(tier("tier Eq gold"), 1);
    assert_eq!(snap.group_count(&Filter::all(), &by).unwrap(), groups);
    // Bad input is the same typed error the store gives.
    assert!(matches!(
        snap.count(&Filter::parse("Profiles Lt cluster-1").unwrap()),
        Err(fleetkv::Error::Filter(_))
    ));
}

/// A close after writes the checkpoint does not cover leaves a snapshot
/// that brings the checkpoint forward itself: machines created, changed,
/// moved between profiles and deleted, a profile's param changed under its
/// members. Not after a `global` change, past its bound of machines to
/// index again, or while a lease is live.
#[test]
fn a_close_after_writes_leaves_a_snapshot_that_brings_the_checkpoint_forward() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fleet(d);
    let s = open_with(d, quiet());
    s.machines()
        .set_param("node-0001", "rack", json!(99))
        .unwrap();
    s.machines().create(machine(5000, &["cluster-2"])).unwrap();
    s.machines().delete("node-0002").unwrap();
    s.machines()
        .patch(
            "node-0003",
            &json!([{"op": "replace", "path": "/Profiles", "value": ["cluster-1"]}]),
        )
        .unwrap();
    s.profiles()
        .update("cluster-0", &json!({"Params": {"cluster/size": 77}}))
        .unwrap();
    let expected = counts(&s);
    let sized = |f: &str| Filter::parse(f).unwrap();
    let n77 = s.machines().count(&sized("cluster/size Eq 77")).unwrap();
    assert_eq!(n77, 300);
    drop(s);
    let snap = snapshot(d).expect("brought forward by the snapshot itself");
    assert_eq!(snapshot_counts(&snap), expected);
    assert_eq!(snap.count(&sized("cluster/size Eq 77")).unwrap(), n77);
    assert_eq!(snap.count(&sized("rack Eq 99")).unwrap(), 1);
    assert_eq!(snap.count(&sized("Name Eq node-0002")).unwrap(), 0);
    assert_eq!(snap.count(&sized("Name Eq node-5000")).unwrap(), 1);
    // An open replays the same writes, and its close leaves the same.
    let s = open_with(d, quiet());
    assert!(matches!(
        s.recovery(),
        Recovery::Checkpoint { events: 5, .. }
    ));
    assert_eq!(counts(&s), expected);
    drop(s);
    assert_eq!(snapshot_counts(&snapshot(d).unwrap()), expected);

    // `global` changed: every machine, so an open rebuilds instead.
    let s = open_with(d, quiet());
    s.profiles()
        .update("global", &json!({"Params": {"dc": "east"}}))
        .unwrap();
    drop(s);
    assert!(snapshot(d).is_none(), "after a global change");
    // More machines than a count should index again: open the store. Made
    // first, then changed after a checkpoint (a change the machine ids
    // alone would not show).
    let s = open_with(d, quiet());
    let mut many: Vec<Machine> = (6000..6000 + 4100)
        .map(|i| {
            let mut m = machine(i, &[]);
            m.uuid = uuid::Uuid::from_u128(0x5eed0000_0000_4000_8000_000000000000 | u128::from(i));
            m
        })
        .collect();
    s.machines().import(many.clone()).unwrap();
    s.checkpoint().unwrap();
    for m in &mut many {
        m.params.insert("rack".into(), json!(77));
    }
    assert_eq!(s.machines().import(many).unwrap(), (0, 4100));
    drop(s);
    assert!(snapshot(d).is_none(), "past the bound");
    let s = open(d);
    assert_eq!(s.machines().count(&sized("rack Eq 77")).unwrap(), 4100);
    s.checkpoint().unwrap();
    drop(s);
    let snap = snapshot(d).expect("a checkpoint covers the changes");
    assert_eq!(snap.count(&sized("rack Eq 77")).unwrap(), 4100);
    drop(snap);
    let s = open(d);
    s.leases().grant(600).unwrap();
    s.checkpoint().unwrap();
    drop(s);
    assert!(snapshot(d).is_none(), "a lease is live");
}

/// A checkpoint written between writes forgets only what it covers: the
/// snapshot at the close brings it forward over the writes after it, some
/// of them to machines and profiles the writes before it changed too.
#[test]
fn a_snapshot_brings_forward_a_checkpoint_written_between_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fleet(d);
    let s = open_with(d, quiet());
    let write = |i: u32| {
        let name = format!("node-{:04}", i % 150);
        s.machines()
            .set_param(&name, "rack", json!(100 + i % 9))
            .unwrap();
        if i.is_multiple_of(50) {
            s.profiles()
                .update(
                    &format!("cluster-{}", i % 4),
                    &json!({"Params": {"cluster/size": i}}),
                )
                .unwrap();
        }
    };
    for i in 0..200 {
        write(i);
    }
    s.checkpoint().unwrap();
    for i in 200..260 {
        write(i);
    }
    let by = ["Params.rack".to_string(), "Params.cluster/size".to_string()];
    let groups = s.machines().group_count(&Filter::all(), &by).unwrap();
    let expected = counts(&s);
    drop(s);
    let snap = snapshot(d).expect("a snapshot past the checkpoint");
    assert_eq!(snapshot_counts(&snap), expected);
    assert_eq!(snap.group_count(&Filter::all(), &by).unwrap(), groups);
}

/// Writes that land while a checkpoint is being written are not forgotten
/// with what it covers (checkpoints taken in a loop beside a writer).
#[test]
fn writes_during_a_checkpoint_stay_in_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fleet(d);
    let s = open_with(
        d,
        Options {
            durable: false,
            ..quiet()
        },
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                s.checkpoint().unwrap();
            }
        });
        for i in 0..3000u32 {
            let name = format!("node-{:04}", (i * 7) % 1200);
            s.machines()
                .set_param(&name, "rack", json!(1000 + i))
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    let by = ["Params.rack".to_string()];
    let groups = s.machines().group_count(&Filter::all(), &by).unwrap();
    drop(s);
    let snap = snapshot(d).expect("a snapshot");
    assert_eq!(snap.group_count(&Filter::all(), &by).unwrap(), groups);
}

/// Another store's checkpoint at the same revision, refused by the open
/// (a rebuild) and left in place by a close that writes none, is never a
/// snapshot's base.
#[test]
fn another_stores_checkpoint_is_never_a_snapshots_base() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fleet(a.path());
    fleet(b.path());
    drop(open(a.path()));
    let s = open(b.path());
    let rev = s.revision();
    let uuid = s.machines().get("node-0001").unwrap().uuid;
    drop(s);
    std::fs::copy(a.path().join(FILE), b.path().join(FILE)).unwrap();
    let s = open_with(b.path(), quiet());
    assert_eq!(s.revision(), rev, "the same revisions, other Uuids");
    assert!(matches!(
        s.recovery(),
        Recovery::Rebuilt { refused: Some(_) }
    ));
    drop(s);
    match snapshot(b.path()) {
        None => {}
        Some(snap) => {
            let f = Filter::parse(&format!("Uuid Eq {uuid}")).unwrap();
            assert_eq!(snap.count(&f).unwrap(), 1, "counted from the other store");
        }
    }
}

/// Anything changed since the close — an engine file, the checkpoint, the
/// snapshot file itself — and there is no snapshot; a section damaged
/// after the snapshot was opened fails the count instead of answering.
#[test]
fn a_snapshot_whose_files_changed_is_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fleet(d);
    let expected = counts(&open(d));
    let again = || drop(open(d));
    assert!(snapshot(d).is_some());

    // An engine file touched (as a write by a build that does not know
    // the snapshot would).
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("db"))
        .unwrap();
    db.set_modified(later).unwrap();
    drop(db);
    assert!(snapshot(d).is_none(), "db touched");
    again();
    assert!(snapshot(d).is_some());

    // The checkpoint written again, the same bytes under a new inode.
    let bytes = std::fs::read(d.join(FILE)).unwrap();
    std::fs::remove_file(d.join(FILE)).unwrap();
    std::fs::write(d.join(FILE), &bytes).unwrap();
    assert!(snapshot(d).is_none(), "checkpoint replaced");
    again();

    // The snapshot file flipped.
    let mut clean = std::fs::read(d.join(SNAPSHOT)).unwrap();
    let at = clean.len() / 2;
    clean[at] ^= 1;
    std::fs::write(d.join(SNAPSHOT), &clean).unwrap();
    assert!(snapshot(d).is_none(), "snapshot flipped");
    again();

    // Sections changed in place once the snapshot has the file open.
    let snap = snapshot(d).expect("left again");
    damage_in_place(&d.join(FILE));
    let mut refused = 0;
    for (f, n) in QUERIES.iter().zip(&expected) {
        match snap.count(&Filter::parse(f).unwrap()) {
            Ok(got) => assert_eq!(got, *n, "{f}"),
            Err(fleetkv::Error::Corrupt { .. }) => refused += 1,
            Err(e) => panic!("{f}: {e}"),
        }
    }
    assert!(refused > 0, "no damaged section was read");
    // The store itself builds those keys from the records.
    assert_eq!(counts(&open(d)), expected);
}

/// `fleetkv machines count` answers from the snapshot without opening the
/// store (whose open would remove the file and whose close would write a
/// new one), also after a write through the CLI.
#[test]
fn the_cli_counts_from_the_snapshot_and_opens_the_store_after_a_write() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fleet(d);
    drop(open(d));
    released(d);
    let cli = |args: &[&str]| {
        let out = Command::new(common::BIN)
            .arg("--data")
            .arg(d)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let identity = || {
        let m = std::fs::metadata(d.join(SNAPSHOT)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let left = identity();
    assert_eq!(
        cli(&["machines", "count", "Profiles", "Eq", "cluster-1"]),
        "300\n"
    );
    let groups: serde_json::Value =
        serde_json::from_str(&cli(&["machines", "count", "--group-by", "Params.rack"])).unwrap();
    let total: u64 = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["Count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1200);
    assert_eq!(identity(), left, "the store was not opened");
    // A write opens the store (which removes the file) and its close
    // leaves a new one, which the next count reads.
    cli(&["machines", "set", "node-0001", "param", "rack", "to", "99"]);
    let after_write = identity();
    assert_ne!(after_write, left);
    assert_eq!(cli(&["machines", "count", "rack", "Eq", "99"]), "1\n");
    assert_eq!(identity(), after_write, "the store was not opened");
}
