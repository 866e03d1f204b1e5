//! Resource exhaustion against the real binary: a full disk (a small tmpfs),
//! too few file descriptors (`prlimit --nofile`), and a flood of clients.
//! In each the server answers with errors or refuses cleanly, keeps serving
//! what it can, loses nothing it acknowledged, and recovers by itself once
//! the resource returns.
//!
//! The disk tests mount a tmpfs, so they need root (or CAP_SYS_ADMIN), as
//! CI has; without it they fail saying so rather than pass untested.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{embedded, Server};

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed ({}): the disk-full tests need root or \
             CAP_SYS_ADMIN (CI runs as root); they do not pass untested",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system holding `dir` with a ballast file until a write
/// fails for lack of space, then gives `room` bytes back; returns the
/// ballast's path.
fn fill(dir: &Path, room: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
            break;
        }
    }
    // Single pages may remain; take them too.
    while f.write_all(&[0]).and_then(|_| f.sync_all()).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(room)).unwrap();
    f.sync_all().unwrap();
    path
}

/// Machines per write while the disk fills.
const BATCH: usize = 25;

fn drp_error(v: &Value, code: u16, typ: &str) {
    assert_eq!(v["Code"], code, "{v}");
    assert_eq!(v["Type"], typ, "{v}");
    assert!(v["Model"].is_string() && v["Key"].is_string(), "{v}");
    assert!(v["Messages"][0].is_string(), "{v}");
}

fn machine(name: &str) -> Value {
    json!({ "Name": name, "Description": "d".repeat(1000) })
}

fn alive(s: &mut Server) -> bool {
    s.child.try_wait().unwrap().is_none()
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let fs = Tmpfs::mount("8m");
    let data = fs.path().join("db");
    let mut s = Server::start_at(&data, &[]);
    for i in 0..20 {
        assert_eq!(
            s.json("POST", "/machines", &machine(&format!("pre-{i}"))).0,
            201
        );
    }
    let mut acked: Vec<String> = (0..20).map(|i| format!("pre-{i}")).collect();
    let mut refused_total = 0;
    // Three rounds of full disk and recovery: whether the write that meets
    // the full disk leaves a node due for maintenance varies from run to
    // run, and one round missed the unpatched sled about half the time.
    for round in 0..3 {
        // A megabyte of room: a hundred or so writes land before the disk is
        // full, enough that sled has tree nodes due for a split when it fails.
        let ballast = fill(fs.path(), 1 << 20);
        // Write until the disk refuses, then a few more: every refusal is a
        // DRP-shaped 507, every acknowledged machine is recorded. The writes
        // are imports of BATCH machines (each one atomic write), so the write
        // that meets the full disk touches many tree nodes.
        let mut refused = 0;
        for i in 0..5000 {
            let names: Vec<String> = (0..BATCH).map(|j| format!("m{round}-{i}-{j}")).collect();
            let batch = Value::Array(names.iter().map(|n| machine(n)).collect());
            let (st, v) = s.json("POST", "/import?kind=machines", &batch);
            match st {
                200 => acked.extend(names),
                _ => {
                    drp_error(&v, 507, "InsufficientStorage");
                    refused += 1;
                    refused_total += 1;
                    if refused == 10 {
                        break;
                    }
                }
            }
        }
        assert_eq!(refused, 10, "the disk never filled");
        eprintln!(
            "acknowledged {} writes before the disk was full",
            acked.len()
        );
        // Other writes are refused the same way; reads go on.
        let (st, v) = s.json("POST", "/profiles", &json!({"Name": "p"}));
        assert_eq!(st, 507, "{v}");
        drp_error(&v, 507, "InsufficientStorage");
        // Every read answers: counts from the in-memory indexes, documents from
        // sled, whose reads skip the tree maintenance a failed log cannot write
        // (vendor/sled/PATCHES.md, patch 5).
        let (st, _, count) = s.call("HEAD", "/machines", None, &[]);
        assert_eq!(st, 200);
        let count = count.unwrap();
        assert!(count >= acked.len() as u64, "{count}");
        for name in &acked {
            let (st, v, _) = s.call("GET", &format!("/machines/Name:{name}"), None, &[]);
            assert_eq!(st, 200, "{name} on the full disk: {v}");
        }
        let (st, list, listed) = s.call("GET", "/machines?slim=Params,Meta", None, &[]);
        assert_eq!(st, 200, "list on the full disk: {list}");
        let list = list.as_array().unwrap();
        assert_eq!(listed, Some(list.len() as u64));
        let names: std::collections::HashSet<&str> =
            list.iter().map(|m| m["Name"].as_str().unwrap()).collect();
        assert!(acked.iter().all(|n| names.contains(n.as_str())));
        let (st, v, _) = s.call("GET", "/profiles/global", None, &[]);
        assert_eq!(st, 200, "{v}");
        eprintln!(
            "on the full disk: count, list and all {} gets answered",
            acked.len()
        );
        assert!(alive(&mut s), "the server exited on a full disk");

        // Space returns: the server reopens the store by itself.
        std::fs::remove_file(&ballast).unwrap();
        let freed = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let (st, v) = s.json("POST", "/machines", &machine(&format!("after{round}-0")));
            if st == 201 {
                break;
            }
            drp_error(&v, 507, "InsufficientStorage");
            assert!(
                tries < 600,
                "no write accepted after the disk had room again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "writes accepted again {:.2} s after the ballast was removed ({tries} tries)",
            freed.elapsed().as_secs_f64()
        );
        acked.push(format!("after{round}-0"));
        for i in 1..20 {
            let name = format!("after{round}-{i}");
            assert_eq!(s.json("POST", "/machines", &machine(&name)).0, 201);
            acked.push(name);
        }
        for name in &acked {
            let (st, v, _) = s.call("GET", &format!("/machines/Name:{name}"), None, &[]);
            assert_eq!(st, 200, "{name}: {v}");
        }
    }

    // A clean stop; the indexes equal a rebuild; a new process sees it all.
    let (code, _) = s.stop();
    assert_eq!(code, 0);
    let (code, out, err) = embedded(&data, &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: indexes: equal to a rebuild"), "{out}");
    let s = Server::start_at(&data, &[]);
    for name in &acked {
        let (st, v, _) = s.call("GET", &format!("/machines/Name:{name}"), None, &[]);
        assert_eq!(st, 200, "{name} after a restart: {v}");
    }
    let (_, _, count) = s.call("HEAD", "/machines", None, &[]);
    let count = count.unwrap();
    // The refused writes may or may not have landed; nothing else did.
    assert!(
        count >= acked.len() as u64 && count <= (acked.len() + refused_total * BATCH) as u64,
        "{count}"
    );
}

#[test]
fn the_cli_on_a_full_disk_exits_non_zero_and_changes_nothing() {
    let fs = Tmpfs::mount("4m");
    let db = fs.path().join("db");
    for i in 0..5 {
        let (code, _, err) = embedded(&db, &["machines", "create", &format!("pre-{i}")], None);
        assert_eq!(code, 0, "{err}");
    }
    let ballast = fill(fs.path(), 0);
    let mut acked = 5;
    let mut failed = None;
    for i in 0..200 {
        let doc = machine(&format!("m-{i}")).to_string();
        let (code, _, err) = embedded(&db, &["machines", "create", &doc], None);
        if code == 0 {
            acked += 1;
        } else {
            failed = Some((code, err));
            break;
        }
    }
    let (code, err) = failed.expect("the CLI never met the full disk");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("storage full"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_file(&ballast).unwrap();
    let (code, out, err) = embedded(&db, &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = embedded(&db, &["machines", "count"], None);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), acked.to_string());
}

fn addr(s: &Server) -> &str {
    s.url.trim_start_matches("http://")
}

/// Descriptors the server holds.
/// The server's soft limit on open files.
fn open_files_limit(s: &Server) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft = line.split_whitespace().nth(3).unwrap();
    soft.parse().unwrap_or(u64::MAX) // "unlimited"
}

fn fds(s: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of the server, in clock ticks.
fn cpu_ticks(s: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.child.id())).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of proc(5), counted from `state` (field 3).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Sends `GET /api/v3/info` on `c` (kept alive) and reads one answer;
/// `None` when the server closed the connection instead.
fn info_on(c: &mut TcpStream) -> Option<String> {
    info_within(c, Duration::from_secs(5))
}

const INFO_REQUEST: &[u8] = b"GET /api/v3/info HTTP/1.1\r\nHost: x\r\n\r\n";

/// [`info_on`], waiting up to `wait` for each read.
fn info_within(c: &mut TcpStream, wait: Duration) -> Option<String> {
    c.write_all(INFO_REQUEST).ok()?;
    answer_within(c, wait)
}

/// Reads one whole response on `c` within `wait`; `None` if the connection
/// closes or fails first.
fn answer_within(c: &mut TcpStream, wait: Duration) -> Option<String> {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    while !complete(&got) {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Whether `got` holds a whole response with a Content-Length body.
fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    got.len() >= end + 4 + len
}

/// One request on a new connection: the status line's code, or `None` when
/// the connection could not be made or was closed without an answer.
fn fresh_info(addr: &str) -> Option<u16> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    c.write_all(b"GET /api/v3/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.get(9..12)?.parse().ok()
}

#[test]
fn out_of_file_descriptors_the_server_serves_open_connections_and_recovers() {
    const NOFILE: usize = 64;
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    // The header timeout also closes a keep-alive connection idle that long
    // between requests, so it is set well above the time the flood takes.
    let s = Server::start_under(&["prlimit", &limit], &["--header-timeout", "60"]);
    // An established client, before the flood.
    let mut kept = TcpStream::connect(addr(&s)).unwrap();
    assert!(info_on(&mut kept).unwrap().starts_with("HTTP/1.1 200"));
    // More connections than descriptors: they sit in the listen backlog once
    // accept() fails with EMFILE. Not more than the backlog holds (128 plus
    // what was accepted): past that a connect blocks in SYN retries until
    // the header timeout frees descriptors, by which time `kept` has idled
    // past it too and is rightly closed.
    let flood: Vec<TcpStream> = (0..2 * NOFILE)
        .map(|_| TcpStream::connect(addr(&s)).unwrap())
        .collect();
    let mut waited = 0;
    while fds(&s) < NOFILE - 1 {
        waited += 1;
        assert!(waited < 3000, "the server never ran out: {} fds", fds(&s));
        std::thread::sleep(Duration::from_millis(10));
    }
    // Out of descriptors, a connection the server already holds is served.
    let answer = info_on(&mut kept);
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "the connection opened before the flood, during it: {answer:?}"
    );
    // And the accept loop waits instead of spinning (a figure, not an
    // assertion).
    let (t0, c0) = (Instant::now(), cpu_ticks(&s));
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(&s) - c0;
    eprintln!(
        "out of descriptors for {:.2} s: the server used {:.2} s of CPU ({ticks} ticks), {} fds open",
        t0.elapsed().as_secs_f64(),
        ticks as f64 / 100.0,
        fds(&s)
    );
    // Descriptors return: new clients are served again.
    drop(flood);
    let mut tries = 0;
    while fresh_info(addr(&s)) != Some(200) {
        tries += 1;
        assert!(tries < 100, "no new connection served after the flood");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut after = TcpStream::connect(addr(&s)).unwrap();
    assert!(info_on(&mut after).unwrap().starts_with("HTTP/1.1 200"));
    assert!(info_on(&mut after).unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn a_flood_of_clients_is_answered_or_refused_cleanly_and_others_are_served() {
    let s = Server::start(&[]);
    let addr = s.url.trim_start_matches("http://").to_string();
    const THREADS: usize = 20;
    const PER: usize = 100; // 2,000 connections at once
                            // A normal client writing all along.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let normal = {
        let (url, auth, done) = (s.url.clone(), s.bearer(), done.clone());
        std::thread::spawn(move || {
            let mut ok = 0;
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = ureq::post(&format!("{url}/api/v3/machines"))
                    .set("Authorization", &auth)
                    .set("Content-Type", "application/json")
                    .send_string(&json!({ "Name": format!("during-{i}") }).to_string());
                i += 1;
                if matches!(r, Ok(ref r) if r.status() == 201) {
                    ok += 1;
                }
            }
            (ok, i)
        })
    };
    let start = Instant::now();
    // Every flood connection sends a keep-alive request and stays open
    // until all of them have been answered: the server holds all 2,000 at
    // once.
    let answered_all = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let flood: Vec<_> = (0..THREADS)
        .map(|_| {
            let (addr, answered_all) = (addr.clone(), answered_all.clone());
            std::thread::spawn(move || {
                // Each connection sends its request as it opens. Sending
                // only when the ones before it were answered left the last
                // ones silent for longer than the server's header timeout
                // (10 s), which rightly closes them: 9 and 18 of 2,000 were
                // "dropped" that way in CI.
                let mut conns: Vec<TcpStream> = (0..PER)
                    .filter_map(|_| {
                        let mut c = TcpStream::connect(&addr).ok()?;
                        c.write_all(INFO_REQUEST).ok()?;
                        Some(c)
                    })
                    .collect();
                let (mut answered, mut closed) = (0, PER - conns.len());
                for c in &mut conns {
                    // A slow answer is not a dropped connection: under the
                    // whole suite on two cores, 2,000 at once can take
                    // longer than `info_on`'s 5 s. A connection the server
                    // closes still reads as closed.
                    match answer_within(c, Duration::from_secs(60)) {
                        // A whole answer, never a torn one.
                        Some(text) => {
                            assert!(text.starts_with("HTTP/1.1 "), "{text:.200}");
                            answered += 1;
                        }
                        None => closed += 1,
                    }
                }
                answered_all.wait();
                (answered, closed)
            })
        })
        .collect();
    let (mut answered, mut closed) = (0, 0);
    for t in flood {
        let (a, c) = t.join().unwrap();
        answered += a;
        closed += c;
    }
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (during_ok, during) = normal.join().unwrap();
    eprintln!(
        "{} connections: {answered} answered, {closed} closed without an answer, in {:.2} s; \
         the normal client had {during_ok} of {during} writes accepted meanwhile",
        THREADS * PER,
        took.as_secs_f64()
    );
    assert_eq!(answered + closed, THREADS * PER);
    // With descriptors and connection slots for all of them, nobody is
    // dropped without an answer; the normal client was served all along.
    if open_files_limit(&s) > (THREADS * PER + 256) as u64 {
        assert_eq!(closed, 0, "connections dropped with room to serve them");
        assert_eq!(during_ok, during, "the normal client was refused");
    }
    assert!(during_ok > 0, "the normal client was never served");
    // After the flood: served, and every write accepted during it is there.
    assert_eq!(
        s.json("POST", "/machines", &json!({"Name": "after"})).0,
        201
    );
    let (_, _, count) = s.call("HEAD", "/machines", None, &[]);
    assert_eq!(count, Some(during_ok + 1));
}

#[test]
fn the_connection_cap_holds_and_idle_connections_make_room() {
    let s = Server::start(&["--max-connections", "32", "--header-timeout", "1"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    // 100 clients that connect and never send: 32 hold every slot, the rest
    // wait in the backlog; each is cut off by the header deadline in turn.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A normal client waits its turn and is served (each try waits up to
    // 30 s for its answer).
    let mut tries = 0;
    while fresh_info(&addr) != Some(200) {
        tries += 1;
        assert!(
            tries < 3,
            "a client behind idle connections was never served"
        );
    }
    assert_eq!(
        s.json("POST", "/machines", &json!({"Name": "served"})).0,
        201
    );
    assert_eq!(s.call("HEAD", "/machines", None, &[]).2, Some(1));
    drop(idle);
}

/// A durable store whose flush fails on a full disk has already shown the
/// write to readers (they read memory, then wait for the flush, which
/// fails). `recover()` must bring the store back at that revision, not
/// before it: a reader must never have been shown a write that is then
/// taken back. Library-level, on a tmpfs, through sled: here sled's bytes
/// mostly reach the file before the error, so this checks the whole path
/// (kept batches the reopened engine holds are skipped); the case where the
/// engine lost the write is `fault_backend`'s
/// `a_write_readers_were_shown_is_committed_again_when_its_flush_failed`.
#[test]
fn a_write_readers_were_shown_survives_its_failed_flush_and_recover() {
    use fleetkv::{Machine, Options, Store};
    let fs = Tmpfs::mount("24m");
    let dir = fs.path().join("db");
    let store = Store::open_with(
        &dir,
        Options {
            durable: true,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..20 {
        store
            .machines()
            .create(Machine::new(format!("before-{i}")))
            .unwrap();
    }
    let ballast = fill(fs.path(), 64 << 10);
    let mut acknowledged = store.revision();
    let mut failed = None;
    for i in 0..10_000 {
        let mut m = Machine::new(format!("m-{i}"));
        m.description = "d".repeat(4000);
        match store.machines().create(m) {
            Ok(_) => acknowledged = store.revision(),
            Err(e) => {
                failed = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = failed.expect("the disk never filled");
    let shown = store.revision_in_memory();
    assert!(
        shown > acknowledged,
        "the write failed before it was applied ({e}), so no reader was shown it: \
         this run cannot check the case (acknowledged {acknowledged}, shown {shown})"
    );
    // A reader is shown the write whose flush failed.
    let name = format!("m-{i}");
    assert_eq!(store.machines().get(&name).unwrap().name, name);
    assert!(
        store.failure().is_some(),
        "the write's failure ({e}) left the store accepting writes"
    );

    std::fs::remove_file(ballast).unwrap();
    assert!(store.recover().unwrap());
    assert_eq!(store.revision(), shown, "the store went back after {e}");
    assert_eq!(store.machines().get(&name).unwrap().name, name);
    store.verify_indexes().unwrap();
    drop(store);
    // And it is on disk.
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.revision(), shown);
    assert_eq!(store.machines().get(&name).unwrap().name, name);
    store.verify_indexes().unwrap();
}
