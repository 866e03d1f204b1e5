//! Stores on a shared etcd: two `Store`s in one process stand for two
//! servers on one cluster. Each test starts its own etcd 3.4
//! (`tests/common/etcd_server.rs`); `.ci/run` installs it.

mod common;
#[path = "common/etcd_server.rs"]
mod etcd_server;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use etcd_server::Etcd;
use fleetkv::{CountCondition, Error, EtcdOptions, Filter, Machine, Options, Store};
use serde_json::json;

fn open(etcd: &Etcd, prefix: &str) -> Store {
    Store::open_etcd(
        std::slice::from_ref(&etcd.url),
        EtcdOptions {
            prefix: prefix.into(),
            ..EtcdOptions::default()
        },
        Options::default(),
    )
    .unwrap()
}

/// Waits until `s` has caught up to `rev` (the follower, not the test,
/// moves it: no `catch_up` call here).
fn until_at(s: &Store, rev: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    while s.revision() < rev {
        assert!(Instant::now() < until, "stuck at {} < {rev}", s.revision());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_write_on_one_server_is_seen_by_the_other() {
    let etcd = Etcd::start();
    let a = open(&etcd, "/seen/");
    let b = open(&etcd, "/seen/");
    // One store: the second open found the first's secret and global.
    assert_eq!(a.revision(), b.revision());
    let ma = a.machines().create(Machine::new("from-a")).unwrap();
    until_at(&b, a.revision());
    assert_eq!(b.machines().get("Name:from-a").unwrap().uuid, ma.uuid);
    // B's first create loses nothing: it plans at B's state, and dense ids
    // are allocated through the same compare as everything else.
    let mb = b.machines().create(Machine::new("from-b")).unwrap();
    let mc = a.machines().create(Machine::new("from-a-2")).unwrap();
    until_at(&b, a.revision());
    until_at(&a, b.revision());
    let names = Filter::parse("Name Re ^from-").unwrap();
    assert_eq!(a.machines().count(&names).unwrap(), 3);
    assert_eq!(b.machines().count(&names).unwrap(), 3);
    assert_ne!(mb.uuid, mc.uuid);
    // A profile change on B reaches A's index of machines.
    b.profiles()
        .set_param("global", "site", json!("x"))
        .unwrap();
    until_at(&a, b.revision());
    let site = Filter::parse("site Eq x").unwrap();
    assert_eq!(a.machines().count(&site).unwrap(), 3);
    a.verify_indexes().unwrap();
    b.verify_indexes().unwrap();
}

/// The change log stores a write's events in records of several, so an
/// import of a hundred machines is 100 records, a few log records and the
/// store's own keys: one transaction under etcd's default 128 operations
/// (with a record per event it was 203, refused). Another server follows
/// it and watches its events one by one.
#[test]
fn an_import_of_a_hundred_machines_is_one_etcd_transaction() {
    let etcd = Etcd::start();
    let a = open(&etcd, "/hundred/");
    let b = open(&etcd, "/hundred/");
    let from = a.revision() + 1;
    let machines = |n: usize, tag: &str| -> Vec<Machine> {
        (0..n)
            .map(|i| {
                let mut m = Machine::new(format!("{tag}-{i:03}"));
                m.params.insert("rack".into(), json!(i % 7));
                m
            })
            .collect()
    };
    assert_eq!(a.machines().import(machines(100, "imp")).unwrap(), (100, 0));
    assert_eq!(a.revision(), from);
    until_at(&b, from);
    let imported = Filter::parse("Name Re ^imp-").unwrap();
    assert_eq!(b.machines().count(&imported).unwrap(), 100);
    let mut w = b.watch(None, None, Some(from)).unwrap();
    for seq in 0..100 {
        let e = w.poll().unwrap().expect("an event per machine");
        assert_eq!((e.revision, e.seq), (from, seq));
    }
    assert!(w.poll().unwrap().is_none());
    // Past the limit the write is refused whole, naming it.
    match a.machines().import(machines(130, "over")) {
        Err(Error::Invalid { reason, .. }) => {
            assert!(reason.contains("--max-txn-ops"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.revision(), from);
    // Half of them replaced (by Uuid, their rack moved) and fifty new, in
    // one write: planned beside the commit, into a copy of the index.
    let mut again: Vec<Machine> = machines(50, "imp")
        .into_iter()
        .map(|mut m| {
            m.uuid = a.machines().get(&m.name).unwrap().uuid;
            m.params.insert("rack".into(), json!(9));
            m
        })
        .collect();
    again.extend(machines(50, "new"));
    assert_eq!(a.machines().import(again).unwrap(), (50, 50));
    until_at(&b, from + 1);
    for s in [&a, &b] {
        let count = |f: &str| s.machines().count(&Filter::parse(f).unwrap()).unwrap();
        assert_eq!(count("rack Eq 9"), 50);
        assert_eq!(count("Name Re ^new-"), 50);
        assert_eq!(count("Name Re ^imp-"), 100);
    }
    a.verify_indexes().unwrap();
    b.verify_indexes().unwrap();
}

#[test]
fn concurrent_param_cas_has_exactly_one_winner_per_round() {
    let etcd = Etcd::start();
    let a = open(&etcd, "/cas/");
    let b = open(&etcd, "/cas/");
    let m = a.machines().create(Machine::new("m")).unwrap();
    let name = m.uuid.to_string();
    until_at(&b, a.revision());
    const ROUNDS: i64 = 25;
    let barrier = Arc::new(Barrier::new(2));
    let run = |s: Store, barrier: Arc<Barrier>, name: String| {
        std::thread::spawn(move || {
            let mut won = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait();
                // Both have seen the previous round's winner (the barrier
                // below); each tries to move the counter from `round`.
                let expected = (round > 0).then(|| json!(round));
                match s
                    .machines()
                    .set_param_if(&name, "n", expected.as_ref(), json!(round + 1))
                {
                    Ok(_) => won.push(round),
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("round {round}: {e}"),
                }
                barrier.wait();
                s.catch_up().unwrap();
                barrier.wait();
            }
            won
        })
    };
    let ta = run(a.clone(), barrier.clone(), name.clone());
    let tb = run(b.clone(), barrier, name.clone());
    let (wa, wb) = (ta.join().unwrap(), tb.join().unwrap());
    let mut all: Vec<i64> = wa.iter().chain(&wb).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (0..ROUNDS).collect::<Vec<_>>(),
        "a won {wa:?}, b {wb:?}"
    );
    for s in [&a, &b] {
        let n = s.machines().get_param(&name, "n", false).unwrap();
        assert_eq!(n, Some(json!(ROUNDS)));
        s.verify_indexes().unwrap();
    }
}

#[test]
fn waits_on_one_server_wake_on_the_other_servers_write() {
    let etcd = Etcd::start();
    let a = open(&etcd, "/wait/");
    let b = open(&etcd, "/wait/");
    let m = a.machines().create(Machine::new("w")).unwrap();
    until_at(&b, a.revision());
    let ready = Filter::parse("ready Eq true").unwrap();
    let waiter = {
        let (b, ready, name) = (b.clone(), ready.clone(), m.uuid.to_string());
        std::thread::spawn(move || {
            let started = Instant::now();
            b.wait_machine(&name, &ready, Duration::from_secs(20))
                .unwrap();
            let n = b
                .count_wait(&ready, CountCondition::AtLeast(2), Duration::from_secs(20))
                .unwrap();
            (n, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    a.machines()
        .set_param(&m.uuid.to_string(), "ready", json!(true))
        .unwrap();
    let mut other = Machine::new("w2");
    other.params.insert("ready".into(), json!(true));
    a.machines().create(other).unwrap();
    let (n, took) = waiter.join().unwrap();
    assert_eq!(n, 2);
    // Woken by the follower's watch, not by a 20 s timeout.
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A watch on B reads the change log A wrote.
    let mut w = b.watch(None, None, Some(1)).unwrap();
    let mut events = 0;
    while w.poll().unwrap().is_some() {
        events += 1;
    }
    assert!(events >= 4, "{events}");
    // `wait_for_revision` on B: reached at once once B caught up.
    let rev = a.revision();
    assert_eq!(
        b.wait_for_revision(rev, Instant::now() + Duration::from_secs(5))
            .unwrap(),
        rev
    );
    assert!(matches!(
        b.wait_for_revision(rev + 100, Instant::now() + Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    a.verify_indexes().unwrap();
    b.verify_indexes().unwrap();
}

/// Waits until `f` holds, at most `secs` seconds.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_lease_granted_on_one_server_is_kept_revoked_and_expired_on_another() {
    let etcd = Etcd::start();
    let a = open(&etcd, "/lease/");
    let b = open(&etcd, "/lease/");
    a.machines().create(Machine::new("m1")).unwrap();
    let lease = a.leases().grant(2).unwrap();
    a.machines()
        .with_lease(lease.id)
        .set_param("m1", "agent/alive", json!(true))
        .unwrap();
    until_at(&b, a.revision());
    // B renews what A granted, past its TTL: etcd keeps one deadline.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        let kept = b.leases().keep_alive(lease.id).unwrap();
        // etcd counts whole seconds.
        assert!(kept.remaining >= 1.0, "{kept:?}");
    }
    assert_eq!(
        a.machines().get_param("m1", "agent/alive", false).unwrap(),
        Some(json!(true))
    );
    assert_eq!(b.leases().get(lease.id).unwrap().holds.len(), 1);
    // Left to expire: both servers see what it held go, in one write.
    eventually(10, "the expired lease's param gone on B", || {
        b.machines()
            .get_param("m1", "agent/alive", false)
            .unwrap()
            .is_none()
    });
    until_at(&a, b.revision());
    assert_eq!(
        a.machines().get_param("m1", "agent/alive", false).unwrap(),
        None
    );
    assert!(matches!(
        a.leases().keep_alive(lease.id),
        Err(Error::NotFound { .. })
    ));
    // Revoked through the server that did not grant it.
    let second = a.leases().grant(30).unwrap();
    a.machines()
        .with_lease(second.id)
        .set_param("m1", "x", json!(1))
        .unwrap();
    until_at(&b, a.revision());
    b.leases().revoke(second.id).unwrap();
    until_at(&a, b.revision());
    assert_eq!(a.machines().get_param("m1", "x", false).unwrap(), None);
    assert!(a.leases().list().is_empty());
    a.verify_indexes().unwrap();
    b.verify_indexes().unwrap();
}

#[test]
fn a_campaign_on_one_server_fails_over_to_a_campaign_on_another() {
    use fleetkv::Cluster;
    let etcd = Etcd::start();
    let a = open(&etcd, "/campaign/");
    let b = open(&etcd, "/campaign/");
    for m in ["m1", "m2"] {
        a.machines().create(Machine::new(m)).unwrap();
    }
    let ca = Cluster::init(&a, "c1", None).unwrap();
    for m in ["m1", "m2"] {
        ca.add(m).unwrap();
    }
    until_at(&b, a.revision());
    let cb = Cluster::open(&b, "c1").unwrap();
    let l1 = a.leases().grant(2).unwrap();
    let won = ca.campaign("m1", l1.id, 1, Duration::from_secs(5)).unwrap();
    let token = won.token.unwrap();
    // B's campaign waits while A's leader lives (A keeps its lease)…
    let l2 = b.leases().grant(30).unwrap();
    let waiting = {
        let cb = cb.clone();
        std::thread::spawn(move || cb.campaign("m2", l2.id, 1, Duration::from_secs(20)))
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        a.leases().keep_alive(l1.id).unwrap();
    }
    assert!(!waiting.is_finished(), "B won while A's leader lived");
    // …and wins once A stops renewing (A's process "paused").
    let next = waiting.join().unwrap().unwrap();
    assert_eq!(next.name, "m2");
    assert!(next.token.unwrap() > token);
    until_at(&a, b.revision());
    // A's old leader is fenced on either server.
    assert!(matches!(
        a.machines()
            .with_fence(Cluster::fenced_by(token))
            .set_param("m1", "work", json!("stale")),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(ca.leaderships().unwrap().leaders, vec![next]);
    b.leases().revoke(l2.id).unwrap();
    a.verify_indexes().unwrap();
}

#[test]
fn an_etcd_that_goes_away_fails_requests_and_the_store_recovers_by_itself() {
    let etcd = Etcd::start();
    let a = Store::open_etcd(
        std::slice::from_ref(&etcd.url),
        EtcdOptions {
            prefix: "/away/".into(),
            request_timeout: Duration::from_secs(1),
            ..EtcdOptions::default()
        },
        Options::default(),
    )
    .unwrap();
    let m = a.machines().create(Machine::new("m")).unwrap();
    let name = m.uuid.to_string();
    etcd.signal("STOP");
    // A create reads nothing from etcd before its commit: the commit is
    // what goes unanswered.
    let r = a.machines().create(Machine::new("during"));
    let read = a.machines().get(&name);
    etcd.signal("CONT");
    match r {
        Err(Error::OutcomeUnknown(msg)) => assert!(msg.contains("may or may not"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(read, Err(Error::Unavailable(_))), "{read:?}");
    // Back by itself: the next write catches up with whatever landed.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match a.machines().set_param(&name, "n", json!(2)) {
            Ok(_) => break,
            Err(Error::OutcomeUnknown(_)) | Err(Error::Unavailable(_))
                if Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The unanswered create landed or not; the index agrees either way.
    let landed = a.machines().exists("Name:during").unwrap();
    let all = Filter::parse("Name Re .").unwrap();
    assert_eq!(a.machines().count(&all).unwrap(), 1 + u64::from(landed));
    assert_eq!(a.failure(), None);
    assert_eq!(
        a.machines().get_param(&name, "n", false).unwrap(),
        Some(json!(2))
    );
    a.verify_indexes().unwrap();
}

#[test]
fn serve_with_an_unreachable_etcd_exits_with_a_clear_error() {
    let dead = format!("http://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("db"))
        .args(["--etcd", &dead])
        .env_remove("FLEETKV_DATA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open the store in etcd"), "{err}");
    assert!(err.contains(&dead) && err.contains("unavailable"), "{err}");
}

#[test]
fn two_servers_on_one_etcd_answer_each_others_writes() {
    let etcd = Etcd::start();
    let flags = [
        "--etcd",
        &etcd.url,
        "--etcd-prefix",
        "/srv/",
        "--request-timeout",
        "3",
    ];
    let a = common::Server::start(&flags);
    let b = common::Server::start(&flags);
    let resp = ureq::post(&format!("{}/api/v3/machines", a.url))
        .set("Authorization", &a.bearer())
        .set("Content-Type", "application/json")
        .send_string(r#"{"Name": "m1"}"#)
        .unwrap();
    let rev: u64 = resp
        .header("X-Fleetkv-Revision")
        .and_then(|r| r.parse().ok())
        .expect("X-Fleetkv-Revision on a write");
    // Read your write on the other server: it waits until it reached it.
    let (status, body, count) = b.call(
        "GET",
        &format!("/machines?min_revision={rev}&Name=m1"),
        None,
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(count, Some(1), "{body}");
    let resp = ureq::get(&format!("{}/api/v3/machines?min_revision={rev}", b.url))
        .set("Authorization", &b.bearer())
        .call()
        .unwrap();
    let at: u64 = resp.header("X-Fleetkv-Revision").unwrap().parse().unwrap();
    assert!(at >= rev, "{at} < {rev}");
    // A revision nobody wrote: the wait ends, DRP-shaped, within the request.
    let (status, body, _) = b.call(
        "GET",
        &format!("/machines?min_revision={}", rev + 1000),
        None,
        &[],
    );
    assert_eq!(status, 408, "{body}");
    let (status, body, _) = b.call("GET", "/machines?min_revision=x", None, &[]);
    assert_eq!(status, 400, "{body}");
}

/// etcd's own revision (what a compaction names), from its JSON gateway.
fn etcd_revision(etcd: &Etcd) -> i64 {
    let resp: serde_json::Value = serde_json::from_str(
        &ureq::post(&format!("{}/v3/kv/range", etcd.url))
            .send_string(r#"{"key": "AA=="}"#)
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    resp["header"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_server_paused_past_a_compaction_and_the_log_trim_catches_up() {
    // Server B is frozen while a writer with a short change log moves the
    // store on and etcd compacts its history: B's watch resumes from a
    // compacted revision, and its own change log no longer reaches its
    // state. It must rebuild, answer at the new revision and pass its check.
    let etcd = Etcd::start();
    let b = common::Server::start(&["--etcd", &etcd.url, "--etcd-prefix", "/pause/"]);
    let a = Store::open_etcd(
        std::slice::from_ref(&etcd.url),
        EtcdOptions {
            prefix: "/pause/".into(),
            ..EtcdOptions::default()
        },
        Options {
            log_retain: 5,
            ..Options::default()
        },
    )
    .unwrap();
    a.machines().create(Machine::new("c-0")).unwrap();
    let (st, v, _) = b.call(
        "GET",
        &format!("/machines?min_revision={}&Name=c-0", a.revision()),
        None,
        &[],
    );
    assert_eq!(st, 200, "{v}");
    let pid = b.child.id().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    for i in 1..=40 {
        a.machines().create(Machine::new(format!("c-{i}"))).unwrap();
    }
    a.profiles()
        .set_param("global", "site", json!("after"))
        .unwrap();
    let compact = format!(
        r#"{{"revision": "{}", "physical": true}}"#,
        etcd_revision(&etcd)
    );
    ureq::post(&format!("{}/v3/kv/compaction", etcd.url))
        .send_string(&compact)
        .unwrap();
    signal("-CONT");
    let at = a.revision();
    let (st, v, n) = b.call(
        "GET",
        &format!("/machines?min_revision={at}&Name=Re(%5Ec-)&site=after"),
        None,
        &[],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(n, Some(41), "{v}");
    let (st, v, _) = b.call("GET", "/check", None, &[]);
    assert_eq!(st, 200, "{v}");
    a.verify_indexes().unwrap();
}

#[test]
fn a_store_shared_through_etcd_trims_its_log_every_write() {
    // A store on an engine of its own trims its log in bursts of a 64th of
    // the retention; on etcd a burst could exceed the operations one
    // transaction takes (128), so a shared store trims every write: the
    // log holds exactly the newest `retain` events, one per param write.
    let etcd = Etcd::start();
    let retain = 640;
    let s = Store::open_etcd(
        std::slice::from_ref(&etcd.url),
        EtcdOptions {
            prefix: "/trim/".into(),
            ..EtcdOptions::default()
        },
        Options {
            log_retain: retain,
            ..Options::default()
        },
    )
    .unwrap();
    let m = s.machines().create(Machine::new("m")).unwrap();
    let first = |from: u64| s.watch(None, None, Some(from)).and_then(|mut w| w.poll());
    for i in 0..retain + 40 {
        s.machines().set_param(&m.name, "n", json!(i)).unwrap();
        if i < retain + 20 {
            continue;
        }
        let rev = s.revision();
        let oldest = rev + 1 - retain as u64;
        assert_eq!(first(oldest).unwrap().map(|e| e.revision), Some(oldest));
        match first(oldest - 1) {
            Err(Error::Compacted { oldest: o, .. }) => assert_eq!(o, oldest),
            other => panic!("after write {i}: {other:?}"),
        }
    }
    s.verify_indexes().unwrap();
}
