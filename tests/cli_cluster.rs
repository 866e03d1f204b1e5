//! The cluster verbs through the `fleetkv` binary: twelve processes electing
//! at once end with exactly N leaders; `machines workflow-all`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fleetkv");

fn fleetkv(db: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("FLEETKV_DATA")
        .env("RUST_BACKTRACE", "0")
        .arg("--data")
        .arg(db);
    c
}

fn run(db: &Path, args: &[&str]) -> Output {
    fleetkv(db).args(args).output().unwrap()
}

fn ok(db: &Path, args: &[&str]) -> Value {
    let o = run(db, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// Cluster `example` with members m0…m{n-1} (m0 the manager) and x0, x1.
fn setup(db: &Path, n: usize) {
    ok(db, &["cluster", "init", "example"]);
    let mut machines: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"Name":"m{i}","Profiles":["example"]}}"#))
        .collect();
    machines.push(r#"{"Name":"x0"}"#.into());
    machines.push(r#"{"Name":"x1"}"#.into());
    let file = db.with_extension("json");
    std::fs::write(&file, format!("[{}]", machines.join(","))).unwrap();
    ok(
        db,
        &["import", file.to_str().unwrap(), "--kind", "machines"],
    );
    ok(db, &["cluster", "role", "example", "m0", "manager"]);
}

fn sorted_names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn twelve_processes_elect_exactly_n() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    setup(&db, 16);
    let children: Vec<_> = (0..12)
        .map(|_| {
            fleetkv(&db)
                .args(["cluster", "elect", "example", "--leaders", "3"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    let leaders = ok(
        &db,
        &[
            "machines",
            "list",
            "cluster/leader",
            "Eq",
            "true",
            "--slim",
            "Params,Meta",
        ],
    );
    let want = sorted_names(&leaders);
    assert_eq!(want.len(), 3, "{want:?}");
    assert!(
        !want.contains(&"m0".to_string()),
        "the manager is no leader"
    );
    assert!(want.iter().all(|n| n.starts_with('m')), "members only");
    for o in &outs {
        assert_eq!(sorted_names(o), want);
    }
    // The filter the seed uses, as cluster members with extra words.
    let count = run(
        &db,
        &[
            "cluster",
            "count",
            "example",
            "cluster/manager",
            "Eq",
            "false",
            "cluster/leader",
            "Eq",
            "true",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "3");

    // Too many: exit 2, nothing written.
    let o = run(&db, &["cluster", "elect", "example", "--leaders", "16"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("asked for 16 leaders"));
    assert_eq!(ok(&db, &["cluster", "role", "example", "m0"]), "manager");
}

#[test]
fn workflow_all_and_membership_verbs() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    setup(&db, 4);
    ok(&db, &["cluster", "elect", "example", "--leaders", "2"]);
    let args = [
        "machines",
        "workflow-all",
        "k3s-machine-install",
        "cluster/manager",
        "Eq",
        "false",
        "cluster/leader",
        "Eq",
        "true",
        "Profiles",
        "Eq",
        "example",
        "--meta",
        "icon=anchor",
    ];
    let r = ok(&db, &args);
    assert_eq!(r["succeeded"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["unchanged"], serde_json::json!([]));
    assert_eq!(r["failed"], serde_json::json!([]));
    let again = ok(&db, &args);
    assert_eq!(again["succeeded"], serde_json::json!([]));
    assert_eq!(again["unchanged"].as_array().unwrap().len(), 2);
    let icons = ok(&db, &["machines", "list", "Meta.icon", "Eq", "anchor"]);
    assert_eq!(icons.as_array().unwrap().len(), 2);

    let bad = run(
        &db,
        &[
            "machines",
            "workflow-all",
            "w",
            "Name",
            "Eq",
            "m1",
            "--meta",
            "novalue",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    let bad = run(&db, &["machines", "workflow-all", "w"]);
    assert_eq!(bad.status.code(), Some(2), "a filter is required");

    // Membership and listing.
    ok(&db, &["cluster", "add", "example", "x0"]);
    let members = ok(
        &db,
        &["cluster", "members", "example", "--slim", "Params,Meta"],
    );
    assert_eq!(members.as_array().unwrap().len(), 5);
    let narrowed = ok(&db, &["cluster", "members", "example", "Name", "Re", "^x"]);
    assert_eq!(sorted_names(&narrowed), vec!["x0".to_string()]);
    ok(&db, &["cluster", "remove", "example", "x0"]);
    let o = run(&db, &["cluster", "count", "example"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "4");
    let o = run(&db, &["cluster", "add", "example", "ghost"]);
    assert_eq!(o.status.code(), Some(4));
    let o = run(&db, &["cluster", "role", "example", "x1", "leader"]);
    assert_eq!(o.status.code(), Some(2), "not a member");
}
