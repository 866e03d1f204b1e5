//! `count --until`, `wait`, `await` and `watch` across real processes: the
//! waiting process releases the store, so writers get their turn, and it
//! wakes on their writes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use notify::event::{AccessKind, EventKind};
use notify::{RecursiveMode, Watcher};

fn fleetkv(dir: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("fleetkv").unwrap();
    c.arg("--data").arg(dir.join("store"));
    c
}

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = fleetkv(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the waiting `cmd` and returns once it has checked the store at
/// least once and sleeps between checks: it opened the store (a filesystem
/// event, so it is never missed), holds none of the store's files now, and
/// its main thread is parked in a futex wait (the wait for a notification).
/// A write from then on can only be seen by waking it; without this a write
/// could land before the first check, which would then pass at once.
fn spawn_waiting(d: &Path, mut cmd: Command) -> Child {
    let store = d.join("store");
    let (tx, opened) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| matches!(e.kind, EventKind::Access(AccessKind::Open(_)))) {
            let _ = tx.send(());
        }
    })
    .unwrap();
    watcher.watch(&store, RecursiveMode::Recursive).unwrap();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    fn fail(child: &mut Child, why: String) -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{why}");
    }
    if opened.recv_timeout(Duration::from_secs(60)).is_err() {
        fail(&mut child, "the waiter never opened the store".into());
    }
    loop {
        let holds_store = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| target.starts_with(&store))
            })
            .unwrap_or(true);
        let wchan =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/wchan")).unwrap_or_default();
        if !holds_store && wchan.starts_with("futex") {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            fail(
                &mut child,
                format!("the waiter exited ({status}) before any write"),
            );
        }
        if Instant::now() > deadline {
            fail(
                &mut child,
                format!("the waiter never slept (wchan {wchan:?})"),
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn count_until_is_a_barrier_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["profiles", "create", "c"]);
    for i in 0..4 {
        let name = format!("m{i}");
        ok(d, &["machines", "create", &name]);
        ok(d, &["machines", "addprofile", &name, "c"]);
    }
    let mut count = fleetkv(d);
    count
        .args([
            "machines",
            "count",
            "Profiles",
            "Eq",
            "c",
            "done",
            "Eq",
            "true",
            "--until",
            ">= 4",
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut waiter = spawn_waiting(d, count);
    // Writers get the store while the waiter waits.
    for i in 0..4 {
        assert!(waiter.try_wait().unwrap().is_none(), "done at {i} of 4");
        ok(
            d,
            &[
                "machines",
                "set",
                &format!("m{i}"),
                "param",
                "done",
                "to",
                "true",
            ],
        );
    }
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");
    // A waiter re-checks at its deadline too: ending well before it shows
    // that the writes woke it.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no write woke the waiter"
    );

    let t = Instant::now();
    let out = fleetkv(d)
        .args([
            "machines",
            "count",
            "done",
            "Eq",
            "true",
            "--until",
            "== 9",
            "--timeout",
            "0.3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "timeout is exit code 5");
    assert!(t.elapsed() >= Duration::from_millis(300));
    let out = fleetkv(d)
        .args(["machines", "count", "--until", "about 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--until"));
}

#[test]
fn wait_and_await_print_complete_or_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["machines", "create", "m"]);
    let mut wait = fleetkv(d);
    wait.args(["machines", "wait", "Name:m", "Workflow", "install", "60"])
        .stdout(Stdio::piped());
    let started = Instant::now();
    let waiter = spawn_waiting(d, wait);
    ok(d, &["machines", "workflow", "m", "install"]);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "complete");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no write woke the waiter"
    );

    let out = fleetkv(d)
        .args([
            "machines",
            "await",
            "m",
            "Workflow Eq other",
            "--timeout",
            "0.2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "timeout");
    let out = fleetkv(d)
        .args(["machines", "await", "m", "Workflow Eq install"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = fleetkv(d)
        .args(["machines", "wait", "nobody", "Workflow", "x", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn watch_prints_json_lines_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["machines", "create", "a"]);
    ok(d, &["machines", "create", "b"]);
    ok(d, &["machines", "set", "a", "param", "x", "to", "1"]);
    let out = ok(d, &["watch", "machines", "--from", "1", "--timeout", "0.2"]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["Action"], "update");
    let from = events[1]["Revision"].as_u64().unwrap().to_string();
    let filtered = ok(
        d,
        &[
            "watch",
            "machines",
            "Name",
            "Eq",
            "a",
            "--from",
            &from,
            "--timeout",
            "0.2",
        ],
    );
    assert_eq!(filtered.lines().count(), 1, "{filtered}");
    let out = fleetkv(d)
        .args(["watch", "machines", "--from", "999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
