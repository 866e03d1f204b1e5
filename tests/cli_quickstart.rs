//! Runs the README's quickstart script (exactly as written between the
//! quickstart markers) with the built `fleetkv` first on `PATH`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

mod common;

use common::BIN;
const MEMBERS: [&str; 5] = ["member-1", "member-2", "member-3", "member-4", "member-5"];

/// The `sh` fenced block between the README's quickstart markers.
fn script() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let (_, rest) = readme
        .split_once("<!-- quickstart:start -->")
        .expect("start marker");
    let (region, _) = rest
        .split_once("<!-- quickstart:end -->")
        .expect("end marker");
    let (_, fenced) = region.split_once("```sh\n").expect("```sh fence");
    let (body, _) = fenced.split_once("\n```").expect("closing fence");
    body.to_string() + "\n"
}

/// Runs `script` in a fresh directory; returns (dir, stdout).
fn run(script: &str) -> (TempDir, String) {
    let dir = TempDir::new().unwrap();
    let o = common::bash(script, dir.path()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "quickstart failed ({:?}):\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    (dir, out)
}

fn show(dir: &TempDir, args: &[&str]) -> Value {
    let o = Command::new(BIN)
        .arg("--data")
        .arg(dir.path().join("cluster.db"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Exactly one member won the `my/data` race, and the leaders are marked.
fn check_race(dir: &TempDir, out: &str) {
    let winner = show(dir, &["profiles", "get", "example", "param", "my/data"]);
    let winner = winner.as_str().expect("my/data was set");
    assert!(MEMBERS.contains(&winner), "winner {winner}");
    assert_eq!(out.matches("my/data: ").count(), 1);
    assert!(out.contains(&format!("my/data: \"{winner}\"")), "{out}");
    let p = show(dir, &["profiles", "show", "example"]);
    assert_eq!(p["Params"]["cluster/profile"], "example");
    assert_eq!(p["Params"]["cluster/filter"], "Profiles Eq example");
    for (i, m) in MEMBERS.iter().enumerate() {
        let leader = show(
            dir,
            &[
                "machines",
                "get",
                &format!("Name:{m}"),
                "param",
                "cluster/leader",
                "--aggregate",
            ],
        );
        assert_eq!(leader, Value::Bool(i < 2), "{m}");
    }
    let manager = show(
        dir,
        &["machines", "get", "manager", "param", "cluster/manager"],
    );
    assert_eq!(manager, Value::Bool(true));
}

#[test]
fn readme_has_one_sh_script() {
    let s = script();
    assert!(s.contains("fleetkv -r \"$cl\" profiles set example param my/data to \"$MACHINE\""));
    assert!(s.contains("& done\nwait"));
}

/// The script up to the first filter query: needs no filter parser.
#[test]
fn quickstart_until_the_filter_runs_now() {
    let s = script();
    let cut = s.find("CLUSTER_FILTER=").expect("the filter section");
    let (dir, out) = run(&s[..cut]);
    check_race(&dir, &out);
}

#[test]
fn quickstart_runs() {
    let (dir, out) = run(&script());
    check_race(&dir, &out);
    for (i, m) in MEMBERS.iter().enumerate() {
        let mach = show(&dir, &["machines", "show", &format!("Name:{m}")]);
        let (wf, icon) = if i < 2 {
            ("k3s-machine-install", Value::from("anchor"))
        } else {
            ("", Value::Null)
        };
        assert_eq!(mach["Workflow"], wf, "{m}");
        assert_eq!(
            mach["Meta"].get("icon").cloned().unwrap_or(Value::Null),
            icon,
            "{m}"
        );
        if i < 2 {
            assert!(out.contains(&format!("workflow on {}", mach["Uuid"].as_str().unwrap())));
        }
    }
    let manager = show(&dir, &["machines", "show", "manager"]);
    assert_eq!(manager["Workflow"], "");
    assert_eq!(
        out.matches("starting k3s leader install workflow").count(),
        2
    );
    assert!(out.contains("members: 6\n"), "{out}");
    assert!(out.contains("leaders: 2\n"), "{out}");
}
