//! The seed end to end (README, "The whole seed"): a manager and twelve
//! member processes render the cluster-utilities stanza, use the rendered
//! profile token, race for `my/data` with `-r`, elect leaders, and the
//! manager waits with `count --until` and starts the workflow on the
//! leaders. Runs the README's script exactly and checks the final store.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;

use common::BIN;

fn script() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let (_, rest) = readme
        .split_once("<!-- seed:start -->")
        .expect("start marker");
    let (region, _) = rest.split_once("<!-- seed:end -->").expect("end marker");
    let (_, fenced) = region.split_once("```sh\n").expect("```sh fence");
    let (body, _) = fenced.split_once("\n```").expect("closing fence");
    body.to_string() + "\n"
}

fn fleetkv(dir: &Path, args: &[&str]) -> Value {
    let o = Command::new(BIN)
        .arg("--data")
        .arg(dir.join("seed.db"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&o.stdout).trim().into()))
}

#[test]
fn the_seed_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::bash(&script(), dir.path())
        .env_remove("RS_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "seed script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let d = dir.path();
    let members: Vec<String> = (1..=12).map(|i| format!("member-{i:02}")).collect();

    // The barrier printed the count it waited for; the report lists the leaders.
    assert!(
        stdout.lines().next().is_some_and(|l| l.trim() == "12"),
        "{stdout}"
    );

    // One winner of the my/data race, a member.
    let data = fleetkv(d, &["profiles", "get", "example", "param", "my/data"]);
    assert!(
        members.iter().any(|m| data == Value::String(m.clone())),
        "my/data = {data}"
    );
    // Every member wrote to the shared profile with its token.
    let params = fleetkv(d, &["profiles", "params", "example"]);
    for m in &members {
        assert_eq!(
            params[format!("joined/{m}")],
            Value::Bool(true),
            "{m} did not join"
        );
    }
    // Exactly three leaders, all members, never the manager; all ready.
    let leaders = fleetkv(d, &["machines", "list", "cluster/leader", "Eq", "true"]);
    let leaders = leaders.as_array().unwrap();
    assert_eq!(leaders.len(), 3, "{leaders:?}");
    for l in leaders {
        let name = l["Name"].as_str().unwrap();
        assert!(members.iter().any(|m| m == name), "leader {name}");
        assert_eq!(l["Workflow"], "k3s-machine-install");
        assert_eq!(l["Meta"]["icon"], "anchor");
    }
    assert_eq!(
        fleetkv(d, &["machines", "count", "member/ready", "Eq", "true"]),
        Value::from(12)
    );
    assert_eq!(
        fleetkv(
            d,
            &["machines", "count", "Workflow", "Eq", "k3s-machine-install"]
        ),
        Value::from(3)
    );
    assert_eq!(
        fleetkv(
            d,
            &[
                "machines",
                "count",
                "cluster/manager",
                "Eq",
                "true",
                "cluster/leader",
                "Eq",
                "true"
            ]
        ),
        Value::from(0)
    );
    assert_eq!(
        fleetkv(d, &["machines", "count", "Profiles", "Eq", "example"]),
        Value::from(13)
    );
    // Each member rendered the stanza's first branch.
    for m in &members {
        let log = std::fs::read_to_string(d.join(format!("{m}.log"))).unwrap();
        assert!(log.contains("Cluster Profile is example"), "{m}: {log}");
    }
}
