//! Three `fleetkv serve` over one three-member etcd 3.4 cluster on
//! loopback, driven through HTTP and the remote CLI as a fleet would: the
//! seed's flow with its members spread over the servers, then a write load
//! through all three while an etcd member and a fleetkv server are killed
//! with SIGKILL and restarted. Every process started here is stopped here.

mod common;
#[path = "common/etcd_server.rs"]
mod etcd_server;

use std::collections::BTreeSet;
use std::io::BufRead as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use etcd_server::Cluster;
use serde_json::{json, Value};

/// The admin key every server of the fleet is given (an operator copies
/// one `admin.key` to each server; tokens are signed with the store's
/// secret, which lives in etcd and is shared already).
const ADMIN_KEY: &str = "fleet-admin-key-for-the-etcd-cluster-test";

/// Three servers on `etcd`, under `prefix`, each with its own directory.
struct Fleet {
    servers: Vec<Option<Server>>,
    dirs: Vec<tempfile::TempDir>,
    args: Vec<String>,
}

impl Fleet {
    fn start(etcd: &Cluster, prefix: &str, n: usize) -> Fleet {
        let args = vec![
            "--etcd".to_string(),
            etcd.endpoints().join(","),
            "--etcd-prefix".to_string(),
            prefix.to_string(),
        ];
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut fleet = Fleet {
            servers: (0..n).map(|_| None).collect(),
            dirs,
            args,
        };
        for i in 0..n {
            fleet.start_one(i);
        }
        fleet
    }

    fn start_one(&mut self, i: usize) {
        let data = self.dirs[i].path().join("db");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("admin.key"), format!("{ADMIN_KEY}\n")).unwrap();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.servers[i] = Some(Server::start_at(&data, &args));
    }

    fn url(&self, i: usize) -> String {
        self.servers[i].as_ref().expect("running").url.clone()
    }

    /// SIGKILL: no drain, no flush.
    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

/// `(status, body, X-Fleetkv-Revision)` of an admin call to `url`; status
/// 0 when no answer came (connection refused or cut).
fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    expect: Option<&str>,
) -> (u16, Value, u64) {
    let mut r = ureq::request(method, &format!("{url}/api/v3{path}"))
        .timeout(Duration::from_secs(15))
        .set("Authorization", &format!("Bearer {ADMIN_KEY}"));
    if let Some(e) = expect {
        r = r.set("X-Fleetkv-Expect", e);
    }
    let res = match body {
        Some(b) => r
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return (0, Value::Null, 0),
    };
    let status = resp.status();
    let rev = resp
        .header("X-Fleetkv-Revision")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = resp
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (status, body, rev)
}

const SEED: &str = r#"
set -euo pipefail
A=(-T "$ADMIN")
EPS=($ENDPOINTS)
on() { echo "-E ${EPS[$(( 10#$1 % ${#EPS[@]} ))]}"; }
fleetkv "${A[@]}" $(on 0) params create '{"Name":"cluster/manager","Schema":{"type":"boolean","default":false}}' > /dev/null
fleetkv "${A[@]}" $(on 1) params create '{"Name":"cluster/leader","Schema":{"type":"boolean","default":false}}' > /dev/null
fleetkv "${A[@]}" $(on 2) params create '{"Name":"my/data","Schema":{"type":"string","default":"none"}}' > /dev/null
fleetkv "${A[@]}" $(on 0) profiles create '{"Name":"example","Params":{"cluster/profile":"example","cluster/filter":"Profiles Eq example"}}' > /dev/null
fleetkv "${A[@]}" $(on 1) machines create '{"Name":"manager","Profiles":["example"],"Params":{"cluster/manager":true}}' > /dev/null
for i in $(seq -w 1 9); do
  fleetkv "${A[@]}" $(on $i) machines create "{\"Name\":\"member-$i\",\"Profiles\":[\"example\"]}" > /dev/null
done
cat > stanza.tmpl <<'TMPL'
CLUSTER_PROFILE={{.Param "cluster/profile"}}
PROFILE_TOKEN={{.GenerateProfileToken (.Param "cluster/profile") 7200}}
TMPL
member() {
  local MACHINE=$1 E
  E=$(on "${MACHINE#member-}")
  eval "$(fleetkv "${A[@]}" $E machines render "Name:$MACHINE" stanza.tmpl)"
  local T=(-T "$PROFILE_TOKEN")
  fleetkv "${T[@]}" $E profiles set "$CLUSTER_PROFILE" param "joined/$MACHINE" to true > /dev/null
  cl=$(fleetkv "${T[@]}" $E profiles get "$CLUSTER_PROFILE" param my/data --aggregate)
  while [[ $cl = '"none"' ]]; do
    if fleetkv "${T[@]}" $E -r "$cl" profiles set "$CLUSTER_PROFILE" param my/data to "$MACHINE" 2>/dev/null >/dev/null; then
      echo "$MACHINE" >> winners
      break
    fi
    cl=$(fleetkv "${T[@]}" $E profiles get "$CLUSTER_PROFILE" param my/data --aggregate)
  done
  fleetkv "${A[@]}" $E cluster elect "$CLUSTER_PROFILE" --leaders 3 > /dev/null
  fleetkv "${A[@]}" $E machines set "Name:$MACHINE" param member/ready to true > /dev/null
}
for i in $(seq -w 1 9); do member "member-$i" > "member-$i.log" 2>&1 & done
# The manager waits on the middle server for writes made through the others.
fleetkv "${A[@]}" $(on 1) machines count Profiles Eq example member/ready Eq true --until ">= 9" --timeout 120
fleetkv "${A[@]}" $(on 2) machines workflow-all k3s-machine-install cluster/manager Eq false cluster/leader Eq true Profiles Eq example > /dev/null
wait
"#;

/// Lines of `GET /api/v3/events` on `url`, read on a thread of their own.
fn event_lines(url: &str) -> std::sync::mpsc::Receiver<String> {
    let resp = ureq::get(&format!("{url}/api/v3/events"))
        .set("Authorization", &format!("Bearer {ADMIN_KEY}"))
        .call()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn every_server_checks(fleet: &Fleet) {
    for i in 0..fleet.servers.len() {
        let url = fleet.url(i);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let (st, v, _) = call(&url, "GET", "/check", None, None);
            if st == 200 {
                break;
            }
            // 503: another server was writing while this one read.
            assert!(st == 503 && Instant::now() < until, "server {i}: {st} {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn the_seed_over_three_servers_and_sigkills_mid_load() {
    let mut etcd = Cluster::start(3);
    let mut fleet = Fleet::start(&etcd, "/fleet/", 3);
    let urls: Vec<String> = (0..3).map(|i| fleet.url(i)).collect();

    // SSE on server 2 sees what servers 0 and 1 write.
    let events = event_lines(&urls[2]);

    // Part 1: the seed, each member on the server its number picks.
    let dir = tempfile::tempdir().unwrap();
    let o = common::bash(SEED, dir.path())
        .env("ENDPOINTS", urls.join(" "))
        .env("ADMIN", ADMIN_KEY)
        .env_remove("RS_ENDPOINT")
        .env_remove("RS_TOKEN")
        .env_remove("RS_KEY")
        .output()
        .unwrap();
    let logs: String = (1..=9)
        .map(|i| {
            std::fs::read_to_string(dir.path().join(format!("member-{i}.log"))).unwrap_or_default()
        })
        .collect();
    assert!(
        o.status.success(),
        "seed failed: {}\n{}\nmember logs:\n{logs}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let winners = std::fs::read_to_string(dir.path().join("winners")).unwrap();
    assert_eq!(
        winners.lines().count(),
        1,
        "the -r race across servers: {winners}"
    );
    let winner = winners.trim();
    // Every server agrees on the winner, the three leaders and the
    // workflow, once it has reached the last write's revision.
    let (_, _, last) = call(&urls[0], "GET", "/info", None, None);
    let (_, info, _) = call(&urls[0], "GET", "/info", None, None);
    let top = info["Revision"].as_u64().unwrap().max(last);
    for url in &urls {
        let at = format!("?min_revision={top}");
        let (st, v, _) = call(
            url,
            "GET",
            &format!("/profiles/example/params/my%2Fdata{at}"),
            None,
            None,
        );
        assert_eq!((st, v.clone()), (200, json!(winner)), "{url}");
        let (st, v, rev) = call(
            url,
            "GET",
            &format!("/machines{at}&cluster/leader=true&slim=Params"),
            None,
            None,
        );
        assert_eq!(st, 200, "{v}");
        assert!(rev >= top);
        let leaders = v.as_array().unwrap();
        assert_eq!(leaders.len(), 3, "{url}: {v}");
        for m in leaders {
            assert_eq!(m["Workflow"], "k3s-machine-install", "{url}: {m}");
        }
    }
    // The event of member-1, created through server 1, reached server 2.
    let until = Instant::now() + Duration::from_secs(10);
    let mut saw = false;
    let mut seen = Vec::new();
    while !saw && Instant::now() < until {
        if let Ok(line) = events.recv_timeout(Duration::from_secs(1)) {
            saw = line.contains("\"Name\":\"member-1\"");
            seen.push(line);
        }
    }
    assert!(
        saw,
        "server 2's event stream never showed member-1: {seen:?}"
    );

    // A linearizable read on another server sees a write the moment it is
    // acknowledged, with no revision passed along.
    for i in 0..20 {
        let name = format!("lin-{i}");
        let (st, v, _) = call(
            &urls[i % 3],
            "POST",
            "/machines",
            Some(&json!({"Name": name})),
            None,
        );
        assert_eq!(st, 201, "{v}");
        let (st, v, _) = call(
            &urls[(i + 1) % 3],
            "GET",
            &format!("/machines?linearizable=true&Name={name}"),
            None,
            None,
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v.as_array().map(Vec::len),
            Some(1),
            "{name} on server {}: {v}",
            (i + 1) % 3
        );
    }
    let (st, v, _) = call(&urls[0], "GET", "/machines?linearizable=maybe", None, None);
    assert_eq!(st, 400, "{v}");

    // Part 2: load through all three servers while etcd member 0 and
    // fleetkv server 1 are SIGKILLed and restarted.
    let (st, v, _) = call(
        &urls[0],
        "POST",
        "/params",
        Some(&json!({"Name": "load/counter", "Schema": {"type": "integer", "default": 0}})),
        None,
    );
    assert_eq!(st, 201, "{v}");
    let (st, v, _) = call(
        &urls[0],
        "POST",
        "/profiles/global/params/load%2Fcounter",
        Some(&json!(0)),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let unknown: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let (cas_won, cas_unknown) = (Arc::new(Mutex::new(0u64)), Arc::new(Mutex::new(0u64)));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (urls, stop, acked, unknown) =
                (urls.clone(), stop.clone(), acked.clone(), unknown.clone());
            let (cas_won, cas_unknown) = (cas_won.clone(), cas_unknown.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let url = &urls[(w + n) % urls.len()];
                    n += 1;
                    let name = format!("load-{w}-{n}");
                    let (st, v, _) =
                        call(url, "POST", "/machines", Some(&json!({"Name": name})), None);
                    match st {
                        201 => {
                            acked.lock().unwrap().insert(name);
                        }
                        // No answer, or an outcome etcd could not tell.
                        0 | 503 => {
                            unknown.lock().unwrap().insert(name);
                        }
                        _ => panic!("create {name} on {url}: {st} {v}"),
                    }
                    // The counter: read, then compare-and-set one higher.
                    let (st, cur, _) = call(
                        url,
                        "GET",
                        "/profiles/global/params/load%2Fcounter",
                        None,
                        None,
                    );
                    if st != 200 {
                        continue;
                    }
                    let next = json!(cur.as_u64().unwrap() + 1);
                    let (st, v, _) = call(
                        url,
                        "POST",
                        "/profiles/global/params/load%2Fcounter",
                        Some(&next),
                        Some(&cur.to_string()),
                    );
                    match st {
                        200 | 201 => *cas_won.lock().unwrap() += 1,
                        409 => {}
                        0 | 503 => *cas_unknown.lock().unwrap() += 1,
                        _ => panic!("counter CAS on {url}: {st} {v}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    etcd.kill(0);
    fleet.kill(1);
    std::thread::sleep(Duration::from_millis(1500));
    etcd.restart(0);
    fleet.start_one(1);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }

    // Every acknowledged create is on every server; an unanswered one is
    // all there or not at all; the counter moved once per won CAS.
    let acked = acked.lock().unwrap().clone();
    let unknown = unknown.lock().unwrap().clone();
    assert!(
        acked.len() >= 20,
        "too little load got through: {} acked",
        acked.len()
    );
    eprintln!(
        "load: {} creates acknowledged, {} unanswered; counter: {} CAS won, {} unanswered",
        acked.len(),
        unknown.len(),
        cas_won.lock().unwrap(),
        cas_unknown.lock().unwrap()
    );
    let top = (0..3)
        .map(|i| {
            call(&fleet.url(i), "GET", "/info", None, None).1["Revision"]
                .as_u64()
                .unwrap_or(0)
        })
        .max()
        .unwrap();
    for i in 0..3 {
        let url = fleet.url(i);
        let (st, v, _) = call(
            &url,
            "GET",
            &format!("/machines?min_revision={top}&Name=Re(%5Eload-)&slim=Params,Meta"),
            None,
            None,
        );
        assert_eq!(st, 200, "{v}");
        let names: BTreeSet<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_string())
            .collect();
        let lost: Vec<_> = acked.difference(&names).collect();
        assert!(
            lost.is_empty(),
            "server {i} lost acknowledged creates: {lost:?}"
        );
        let stray: Vec<_> = names
            .difference(&acked)
            .filter(|n| !unknown.contains(*n))
            .collect();
        assert!(
            stray.is_empty(),
            "server {i} holds creates nobody made: {stray:?}"
        );
        let (st, counter, _) = call(
            &url,
            "GET",
            &format!("/profiles/global/params/load%2Fcounter?min_revision={top}"),
            None,
            None,
        );
        assert_eq!(st, 200);
        let (won, maybe) = (*cas_won.lock().unwrap(), *cas_unknown.lock().unwrap());
        let counter = counter.as_u64().unwrap();
        assert!(
            (won..=won + maybe).contains(&counter),
            "server {i}: counter {counter}, {won} CAS won and {maybe} unanswered"
        );
    }
    every_server_checks(&fleet);
}
