//! The storage safety net: an open, commit or flush that makes no progress
//! for the stall limit gives exit 5 (CLI) or a DRP-shaped 503 (server)
//! naming the stalled operation, the process still exits, and the store
//! reopens unharmed. Stalls are injected with `FLEETKV_FAULT_STALL` (read by
//! debug builds only).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{embedded, run, Server, BIN};
use fleetkv::Store;

/// The CLI on `db` with a 1 s stall limit and `fault` injected.
fn stalled_cli(
    db: &std::path::Path,
    fault: &str,
    args: &[&str],
) -> (i32, String, String, Duration) {
    let mut c = Command::new(BIN);
    c.arg("--data")
        .arg(db)
        .args(["--stall-timeout", "1"])
        .args(args)
        .env("FLEETKV_FAULT_STALL", fault);
    let started = Instant::now();
    let (code, out, err) = run(c, None);
    (code, out, err, started.elapsed())
}

fn fresh_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (code, _, err) = embedded(&db, &["profiles", "create", r#"{"Name":"rack-1"}"#], None);
    assert_eq!(code, 0, "{err}");
    (dir, db)
}

#[test]
fn a_stalled_commit_exits_5_naming_it_and_writes_nothing() {
    let (_dir, db) = fresh_store();
    let (code, out, err, took) = stalled_cli(
        &db,
        "commit",
        &[
            "machines",
            "create",
            r#"{"Name":"m1","Profiles":["rack-1"]}"#,
        ],
    );
    assert_eq!(code, 5, "stdout {out} stderr {err}");
    assert!(err.contains("stalled: commit"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The store reopens in the next process, without the stalled write.
    let (code, out, err) = embedded(&db, &["machines", "count"], None);
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
    let s = Store::open(&db).unwrap();
    s.verify_indexes().unwrap();
}

#[test]
fn a_stalled_flush_and_a_stalled_open_exit_5() {
    let (_dir, db) = fresh_store();
    // A write is acknowledged only once flushed: a stalled flush fails it.
    let (code, out, err, _) =
        stalled_cli(&db, "flush", &["machines", "create", r#"{"Name":"m1"}"#]);
    assert_eq!(code, 5, "stdout {out} stderr {err}");
    assert!(
        out.trim().is_empty(),
        "acknowledged an unflushed write: {out}"
    );
    assert!(err.contains("stalled: flush"), "{err}");
    let (code, _, err, _) = stalled_cli(&db, "open", &["machines", "count"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("stalled: open"), "{err}");
    // Nothing was left holding the store's lock.
    let (code, _, err) = embedded(&db, &["--lock-timeout", "2", "machines", "count"], None);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_server_answers_503_after_a_stall_keeps_reading_and_stops_cleanly() {
    let (_dir, db) = fresh_store();
    // The store exists already, so the server's first commit is the first
    // create: it succeeds, the second stalls.
    let mut server = Server::start_at_env(
        &db,
        &["--stall-timeout", "1"],
        &[("FLEETKV_FAULT_STALL", "commit:2")],
    );
    let (url, auth) = (server.url.clone(), server.bearer());
    let post = |name: &str| match ureq::post(&format!("{url}/api/v3/machines"))
        .set("Authorization", &auth)
        .set("Content-Type", "application/json")
        .send_string(&serde_json::json!({"Name": name, "Profiles": ["rack-1"]}).to_string())
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    // Writes until the injected stall: the first create may be the one.
    let mut answers = Vec::new();
    for i in 0..3 {
        answers.push(post(&format!("m{i}")));
    }
    let stalled: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!stalled.is_empty(), "{answers:?}");
    let body: serde_json::Value = serde_json::from_str(&stalled[0].1).unwrap();
    assert_eq!(body["Type"], "Stalled", "{body}");
    assert_eq!(body["Code"], 503, "{body}");
    assert!(body["Messages"][0]
        .as_str()
        .unwrap()
        .contains("stalled: commit"));
    // Every write after a stall is refused at once; reads still answer.
    let started = Instant::now();
    assert_eq!(post("late").0, 503);
    assert!(started.elapsed() < Duration::from_millis(900));
    let count = ureq::head(&format!("{url}/api/v3/machines"))
        .set("Authorization", &auth)
        .call()
        .unwrap();
    assert_eq!(count.status(), 200);
    // A second process on the store directory asks the server through its
    // socket, and reads still answer; one that needs the store to itself
    // (`check`) gives up with exit 5 after its lock timeout.
    let (code, _, err) = embedded(&db, &["machines", "count"], None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = embedded(&db, &["--lock-timeout", "1", "check"], None);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("busy"), "{err}");
    // SIGTERM still ends the process.
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success() || status.code().is_some(), "{status:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The store reopens, without the refused writes, and agrees with a rebuild.
    let s = Store::open(&db).unwrap();
    s.verify_indexes().unwrap();
}
