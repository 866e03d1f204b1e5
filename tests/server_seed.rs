//! The seed across processes through `fleetkv serve`: a manager and twelve
//! member processes on the remote CLI (`-E`), each member with the profile
//! token it rendered — the leader race on `my/data` with `-r`, election,
//! the manager's `count --until` barrier and the workflow on the leaders.

use std::process::Command;

use serde_json::Value;

mod common;

use common::{Server, BIN};

const SCRIPT: &str = r#"
set -euo pipefail
A=(-T "$ADMIN")
fleetkv "${A[@]}" params create '{"Name":"cluster/manager","Schema":{"type":"boolean","default":false}}' > /dev/null
fleetkv "${A[@]}" params create '{"Name":"cluster/leader","Schema":{"type":"boolean","default":false}}' > /dev/null
fleetkv "${A[@]}" params create '{"Name":"my/data","Schema":{"type":"string","default":"none"}}' > /dev/null
fleetkv "${A[@]}" profiles create '{"Name":"example","Params":{"cluster/profile":"example","cluster/filter":"Profiles Eq example"}}' > /dev/null
fleetkv "${A[@]}" machines create '{"Name":"manager","Profiles":["example"],"Params":{"cluster/manager":true}}' > /dev/null
for i in $(seq -w 1 12); do
  fleetkv "${A[@]}" machines create "{\"Name\":\"member-$i\",\"Profiles\":[\"example\"]}" > /dev/null
done
cat > stanza.tmpl <<'TMPL'
CLUSTER_PROFILE={{.Param "cluster/profile"}}
PROFILE_TOKEN={{.GenerateProfileToken (.Param "cluster/profile") 7200}}
TMPL
member() {
  local MACHINE=$1
  eval "$(fleetkv "${A[@]}" machines render "Name:$MACHINE" stanza.tmpl)"
  local T=(-T "$PROFILE_TOKEN")
  fleetkv "${T[@]}" profiles set "$CLUSTER_PROFILE" param "joined/$MACHINE" to true > /dev/null
  cl=$(fleetkv "${T[@]}" profiles get "$CLUSTER_PROFILE" param my/data --aggregate)
  while [[ $cl = '"none"' ]]; do
    fleetkv "${T[@]}" -r "$cl" profiles set "$CLUSTER_PROFILE" param my/data to "$MACHINE" 2>/dev/null >/dev/null && break
    cl=$(fleetkv "${T[@]}" profiles get "$CLUSTER_PROFILE" param my/data --aggregate)
  done
  # The profile token cannot touch machines: that is refused (exit 6).
  if fleetkv "${T[@]}" machines set "Name:$MACHINE" param x to 1 2>/dev/null; then exit 1; fi
  fleetkv "${A[@]}" cluster elect "$CLUSTER_PROFILE" --leaders 3 > /dev/null
  fleetkv "${A[@]}" machines set "Name:$MACHINE" param member/ready to true > /dev/null
}
for i in $(seq -w 1 12); do member "member-$i" > "member-$i.log" 2>&1 & done
fleetkv "${A[@]}" machines count Profiles Eq example member/ready Eq true --until ">= 12" --timeout 120
fleetkv "${A[@]}" machines workflow-all k3s-machine-install cluster/manager Eq false cluster/leader Eq true Profiles Eq example --meta icon=anchor > /dev/null
wait
"#;

#[test]
fn seed_through_the_server() {
    let server = Server::start(&[]);
    let (dir, url, admin) = (&server.dir, &server.url, &server.key);
    let o = common::bash(SCRIPT, dir.path())
        .env("RS_ENDPOINT", url)
        .env("ADMIN", admin)
        .env_remove("RS_TOKEN")
        .env_remove("RS_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let logs: String = (1..=12)
        .map(|i| {
            std::fs::read_to_string(dir.path().join(format!("member-{i:02}.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        o.status.success(),
        "{stdout}\n{}\n{logs}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout.trim(), "12");

    let cli = |args: &[&str]| -> Value {
        let o = Command::new(BIN)
            .args(["-E", url, "-T", admin])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let data = cli(&["profiles", "get", "example", "param", "my/data"]);
    assert!(
        data.as_str().is_some_and(|d| d.starts_with("member-")),
        "{data}"
    );
    let params = cli(&["profiles", "params", "example"]);
    for i in 1..=12 {
        assert_eq!(params[format!("joined/member-{i:02}")], Value::Bool(true));
    }
    let leaders = cli(&["machines", "list", "cluster/leader", "Eq", "true"]);
    let leaders = leaders.as_array().unwrap();
    assert_eq!(leaders.len(), 3);
    for l in leaders {
        assert!(l["Name"].as_str().unwrap().starts_with("member-"));
        assert_eq!(l["Workflow"], "k3s-machine-install");
        assert_eq!(l["Meta"]["icon"], "anchor");
    }
    assert_eq!(
        cli(&["machines", "count", "Workflow", "Eq", "k3s-machine-install"]),
        Value::from(3)
    );
}
