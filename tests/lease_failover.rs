//! The seed extended (issue #19): a manager and 12 member processes on one
//! `fleetkv serve`, each member holding a lease it keeps alive; three
//! leaders won by `cluster campaign`; one leader's process group killed
//! with SIGKILL. Within TTL + one renewal interval its slot is released, a
//! waiting member takes it with a higher fencing token, a write fenced with
//! the dead leader's token is refused, and the manager's `cluster observe`
//! stream shows the leader leave and the new one join.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, BIN};
use serde_json::Value;

const TTL: u64 = 3;
const MEMBERS: usize = 12;
const LEADERS: usize = 3;

/// A member: grants a lease, keeps it alive in the background, campaigns,
/// then prints `leader TOKEN` and waits. Its own process group, so one
/// SIGKILL takes the keep-alive with it.
fn member(s: &Server, name: &str) -> Child {
    let script = format!(
        r#"set -e
F() {{ "{BIN}" -E "{url}" -T "{key}" "$@"; }}
ID=$(F leases grant --ttl {TTL} | sed -n 's/.*"ID": \([0-9]*\).*/\1/p')
F leases keepalive "$ID" > /dev/null &
TOKEN=$(F cluster campaign c1 {name} --lease "$ID" --leaders {LEADERS} | sed -n 's/.*"Token": \([0-9]*\).*/\1/p')
echo "leader $TOKEN"
wait"#,
        url = s.url,
        key = s.key,
    );
    Command::new("bash")
        .args(["-c", &script])
        .env_remove("FLEETKV_DATA")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn kill_group(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", c.id())])
        .status();
    let _ = c.wait();
}

#[test]
fn a_killed_leader_is_replaced_and_fenced_out() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["cluster", "init", "c1"]).0, 0);
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:02}")).collect();
    for n in names.iter().chain(std::iter::once(&"manager".to_string())) {
        assert_eq!(s.cli(&["machines", "create", n]).0, 0);
        assert_eq!(s.cli(&["cluster", "add", "c1", n]).0, 0);
    }
    assert_eq!(s.cli(&["cluster", "role", "c1", "manager", "manager"]).0, 0);

    // The manager's stream of leaders.
    let mut observe = Command::new(BIN)
        .args(["-E", &s.url, "-T", &s.key, "cluster", "observe", "c1"])
        .args(["--timeout", "60"])
        .env_remove("FLEETKV_DATA")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sets_tx, sets) = mpsc::channel::<Vec<(String, u64)>>();
    let out = observe.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line).unwrap();
            let set = v["Leaders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l["Name"].as_str().unwrap().to_string(),
                        l["Token"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            if sets_tx.send(set).is_err() {
                return;
            }
        }
    });

    let mut members: Vec<(String, Child, mpsc::Receiver<u64>)> = names
        .iter()
        .map(|n| {
            let mut c = member(&s, n);
            let (tx, rx) = mpsc::channel();
            let out = c.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(t) = line.strip_prefix("leader ") {
                        let _ = tx.send(t.trim().parse().unwrap_or(0));
                    }
                }
            });
            (n.clone(), c, rx)
        })
        .collect();

    // Three leaders, no more.
    let mut leaders: Vec<(usize, u64)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while leaders.len() < LEADERS {
        assert!(Instant::now() < end, "three leaders within 30 s");
        for (i, (_, _, rx)) in members.iter().enumerate() {
            if let Ok(token) = rx.try_recv() {
                leaders.push((i, token));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    for (i, (_, _, rx)) in members.iter().enumerate() {
        assert!(rx.try_recv().is_err(), "member {i} led beyond 3 slots");
    }
    let (_, _, count) = s.call(
        "HEAD",
        "/machines?cluster/leader=Eq(true)&cluster/manager=Eq(false)",
        None,
        &[],
    );
    assert_eq!(count, Some(LEADERS as u64));

    // Kill one leader's whole process group.
    let (victim, old_token) = leaders[0];
    let victim_name = members[victim].0.clone();
    let max_token = leaders.iter().map(|l| l.1).max().unwrap();
    let killed = Instant::now();
    kill_group(&mut members[victim].1);

    // A waiting member takes the slot, with a higher token, within TTL +
    // one renewal interval (plus process start-up slack on a loaded CI box).
    let bound = Duration::from_secs(TTL) + Duration::from_secs(TTL) / 3 + Duration::from_secs(3);
    let (next, new_token) = loop {
        assert!(
            killed.elapsed() < bound,
            "slot not retaken within {bound:?}"
        );
        let won = members
            .iter()
            .enumerate()
            .find_map(|(i, (_, _, rx))| rx.try_recv().ok().map(|t| (i, t)));
        if let Some(w) = won {
            break w;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(next, victim);
    assert!(new_token > max_token, "{new_token} > {max_token}");
    let (_, _, count) = s.call(
        "HEAD",
        "/machines?cluster/leader=Eq(true)&cluster/manager=Eq(false)",
        None,
        &[],
    );
    assert_eq!(count, Some(LEADERS as u64));

    // The dead leader's fenced write is refused; the new leader's lands.
    let stale = s.cli(&[
        "machines",
        "set",
        "manager",
        "param",
        "work",
        "to",
        "\"stale\"",
        "--fence",
        &old_token.to_string(),
    ]);
    assert_eq!(stale.0, 3, "conflict exit: {stale:?}");
    let fresh = s.cli(&[
        "machines",
        "set",
        "manager",
        "param",
        "work",
        "to",
        "\"fresh\"",
        "--fence",
        &new_token.to_string(),
    ]);
    assert_eq!(fresh.0, 0, "{fresh:?}");

    // The manager's stream: the victim left, the new leader joined.
    let mut last: Option<Vec<(String, u64)>> = None;
    let mut left = false;
    let mut joined = false;
    let end = Instant::now() + Duration::from_secs(5);
    while !(left && joined) && Instant::now() < end {
        let Ok(set) = sets.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(prev) = &last {
            let had = |v: &Vec<(String, u64)>, n: &str| v.iter().any(|(x, _)| x == n);
            left |= had(prev, &victim_name) && !had(&set, &victim_name);
            joined |= set
                .iter()
                .any(|(n, t)| *n == members[next].0 && *t == new_token)
                && !had(prev, &members[next].0);
        }
        last = Some(set);
    }
    assert!(left && joined, "stream showed leave {left}, join {joined}");

    let _ = observe.kill();
    let _ = observe.wait();
    for (_, c, _) in &mut members {
        kill_group(c);
    }
    let (code, _) = s.stop();
    assert_eq!(code, 0);
}
