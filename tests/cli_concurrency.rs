//! Many `fleetkv` processes on one store: the lock wait, and the seed's
//! leader race (`-r` compare-and-set) with exactly one winner.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fleetkv");

fn fleetkv(db: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("FLEETKV_DATA")
        .env("RUST_BACKTRACE", "0")
        .arg("--data")
        .arg(db);
    c
}

fn ok(db: &std::path::Path, args: &[&str]) {
    let o = fleetkv(db).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn twelve_processes_race_one_winner() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    ok(
        &db,
        &[
            "params",
            "create",
            r#"{"Name":"my/data","Schema":{"type":"string","default":"none"}}"#,
        ],
    );
    ok(&db, &["profiles", "create", "example"]);
    let children: Vec<_> = (0..12)
        .map(|i| {
            fleetkv(&db)
                .args([
                    "-r",
                    r#""none""#,
                    "profiles",
                    "set",
                    "example",
                    "param",
                    "my/data",
                    "to",
                ])
                .arg(format!("m{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut winners = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => winners.push(format!("m{i}")),
            Some(3) => assert!(err.contains("conflict at /Params/my~1data"), "{err}"),
            other => panic!("process {i} exited {other:?}: {err}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let o = fleetkv(&db)
        .args(["profiles", "get", "example", "param", "my/data"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("\"{}\"", winners[0])
    );
}

#[test]
fn seed_retry_loops_all_finish_with_one_winner() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    ok(
        &db,
        &[
            "params",
            "create",
            r#"{"Name":"my/data","Schema":{"type":"string","default":"none"}}"#,
        ],
    );
    ok(&db, &["profiles", "create", "example"]);
    // The seed's loop: read, try with -r, stop on success or once someone won.
    let script = r#"
        cl=$(fleetkv profiles get example param my/data --aggregate)
        while [ "$cl" = '"none"' ]; do
            fleetkv -r "$cl" profiles set example param my/data to "$ME" >/dev/null 2>&1 && { echo won; break; }
            cl=$(fleetkv profiles get example param my/data --aggregate)
        done
    "#;
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let children: Vec<_> = (0..12)
        .map(|i| {
            Command::new("bash")
                .args(["-c", script])
                .env("PATH", &path)
                .env("FLEETKV_DATA", &db)
                .env("ME", format!("m{i}"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let won: usize = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success());
            String::from_utf8_lossy(&o.stdout).matches("won").count()
        })
        .sum();
    assert_eq!(won, 1);
}

#[test]
fn busy_store_waits_then_times_out_with_5() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    ok(&db, &["profiles", "create", "example"]);
    let store = fleetkv::Store::open(&db).unwrap();
    // Held for longer than the timeout: exit 5, "busy".
    let t = Instant::now();
    let o = fleetkv(&db)
        .args(["--lock-timeout", "0.4", "profiles", "show", "example"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("Error: ") && err.contains("busy"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(400));
    // Released while a process waits: it gets its turn.
    let child = fleetkv(&db)
        .args(["profiles", "show", "example"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(store);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"example\""));
}
