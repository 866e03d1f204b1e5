//! Leases through the library: what a lease holds goes away with it (revoke,
//! expiry, an open after its deadline), renewals keep it, a restart never
//! extends it, and the guards a write can carry (lease, fence, count).

use std::time::{Duration, Instant};

use fleetkv::{Error, Fence, Filter, Kind, Machine, Options, Store};
use serde_json::json;

fn store_with(names: &[&str]) -> Store {
    let s = Store::temporary().unwrap();
    for n in names {
        s.machines().create(Machine::new(*n)).unwrap();
    }
    s
}

fn count(s: &Store, f: &str) -> u64 {
    s.machines().count(&Filter::parse(f).unwrap()).unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool, within: Duration) {
    let end = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < end, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoke_removes_what_the_lease_set_in_one_write() {
    let s = store_with(&["a", "b"]);
    let lease = s.leases().grant(30).unwrap();
    assert_eq!(lease.ttl, 30);
    assert!(lease.remaining > 29.0 && lease.remaining <= 30.0);
    s.machines()
        .with_lease(lease.id)
        .set_param("a", "agent/alive", json!(true))
        .unwrap();
    s.machines()
        .with_lease(lease.id)
        .update(
            "b",
            &json!({"Meta": {"icon": "anchor"}, "Params": {"agent/alive": true}}),
        )
        .unwrap();
    assert_eq!(count(&s, "agent/alive Eq true"), 2);
    let held = s.leases().get(lease.id).unwrap().holds;
    assert_eq!(held.len(), 3, "{held:?}");

    let mut events = s.watch(Some(Kind::Machine), None, None).unwrap();
    let rev = s.revision();
    let ended = s.leases().revoke(lease.id).unwrap();
    assert_eq!(ended.holds.len(), 3);
    assert_eq!(s.revision(), rev + 1, "one write");
    assert_eq!(count(&s, "agent/alive Eq true"), 0);
    assert_eq!(s.machines().get("b").unwrap().meta.get("icon"), None);
    let mut seen = 0;
    while let Some(e) = events.next_timeout(Duration::from_millis(50)).unwrap() {
        assert_eq!(e.revision, rev + 1);
        seen += 1;
    }
    assert_eq!(seen, 2, "one event per machine");
    assert!(matches!(
        s.leases().keep_alive(lease.id),
        Err(Error::NotFound {
            kind: Kind::Lease,
            ..
        })
    ));
    assert!(matches!(
        s.leases().revoke(lease.id),
        Err(Error::NotFound { .. })
    ));
    s.verify_indexes().unwrap();
}

#[test]
fn expiry_releases_and_a_renewal_keeps() {
    let s = store_with(&["a", "b"]);
    let short = s.leases().grant(1).unwrap();
    let kept = s.leases().grant(1).unwrap();
    s.machines()
        .with_lease(short.id)
        .set_param("a", "role", json!("leader"))
        .unwrap();
    s.machines()
        .with_lease(kept.id)
        .set_param("b", "role", json!("leader"))
        .unwrap();
    let started = Instant::now();
    // Renew `kept` at a third of its TTL while `short` runs out.
    while started.elapsed() < Duration::from_millis(1_800) {
        s.leases().keep_alive(kept.id).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until(
        "short lease's param removed",
        || count(&s, "role Eq leader") == 1,
        Duration::from_secs(2),
    );
    assert_eq!(
        s.machines().get_param("b", "role", false).unwrap(),
        Some(json!("leader"))
    );
    assert!(matches!(
        s.leases().keep_alive(short.id),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.leases().list().len(), 1);
    s.verify_indexes().unwrap();
}

#[test]
fn a_later_value_survives_and_a_slot_has_one_holder() {
    let s = store_with(&["a"]);
    let first = s.leases().grant(60).unwrap();
    let second = s.leases().grant(60).unwrap();
    s.machines()
        .with_lease(first.id)
        .set_param("a", "x", json!(1))
        .unwrap();
    s.machines()
        .with_lease(first.id)
        .set_param("a", "y", json!(1))
        .unwrap();
    // x is overwritten without a lease; y is taken by the second lease.
    s.machines().set_param("a", "x", json!(2)).unwrap();
    s.machines()
        .with_lease(second.id)
        .set_param("a", "y", json!(1))
        .unwrap();
    assert_eq!(s.leases().get(first.id).unwrap().holds.len(), 1);
    s.leases().revoke(first.id).unwrap();
    let m = s.machines().get("a").unwrap();
    assert_eq!(m.params["x"], json!(2), "a later write's value stays");
    assert_eq!(m.params["y"], json!(1), "the second lease holds y");
    s.leases().revoke(second.id).unwrap();
    assert!(!s.machines().get("a").unwrap().params.contains_key("y"));
}

#[test]
fn a_machine_created_under_a_lease_goes_with_it() {
    let s = store_with(&[]);
    let lease = s.leases().grant(60).unwrap();
    s.machines()
        .with_lease(lease.id)
        .create(Machine::new("ephemeral"))
        .unwrap();
    assert!(s.machines().exists("ephemeral").unwrap());
    s.leases().revoke(lease.id).unwrap();
    assert!(!s.machines().exists("ephemeral").unwrap());
    s.verify_indexes().unwrap();
}

#[test]
fn bad_leases_and_writes_a_lease_cannot_hold_are_refused() {
    let s = store_with(&["a"]);
    for ttl in [0, 24 * 3600 + 1] {
        assert!(matches!(s.leases().grant(ttl), Err(Error::Invalid { .. })));
    }
    let rev = s.revision();
    assert!(matches!(
        s.machines().with_lease(999).set_param("a", "x", json!(1)),
        Err(Error::NotFound {
            kind: Kind::Lease,
            ..
        })
    ));
    let lease = s.leases().grant(60).unwrap();
    assert!(matches!(
        s.machines().with_lease(lease.id).delete("a"),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.machines()
            .with_lease(lease.id)
            .patch_many(&[("a".into(), json!([]))]),
        Err(Error::Invalid { .. })
    ));
    assert_eq!(s.revision(), rev + 1, "only the grant was written");
    assert!(matches!(
        s.leases().keep_alive(12345),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn fence_and_count_guards_are_checked_at_commit() {
    let s = store_with(&["a", "b", "c"]);
    let fence = |token| Fence {
        param: "token".into(),
        token,
    };
    let won = s
        .machines()
        .update_with("a", |m, rev| {
            m.params.insert("token".into(), rev.into());
            Ok(())
        })
        .unwrap();
    let token = won.revision;
    s.machines()
        .with_fence(fence(token))
        .set_param("c", "work", json!("done"))
        .unwrap();
    assert!(matches!(
        s.machines()
            .with_fence(fence(token + 1))
            .set_param("c", "work", json!("stale")),
        Err(Error::Conflict { .. })
    ));
    // The token goes: the fence fails.
    s.machines().remove_param("a", "token").unwrap();
    assert!(matches!(
        s.machines()
            .with_fence(fence(token))
            .set_param("c", "work", json!("late")),
        Err(Error::Conflict { .. })
    ));
    let leaders = Filter::parse("leader Eq true").unwrap();
    s.machines()
        .when_count_below(leaders.clone(), 1)
        .set_param("a", "leader", json!(true))
        .unwrap();
    assert!(matches!(
        s.machines()
            .when_count_below(leaders, 1)
            .set_param("b", "leader", json!(true)),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(count(&s, "leader Eq true"), 1);
}

#[test]
fn a_restart_keeps_live_leases_and_ends_expired_ones_before_the_open_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (long, short) = {
        let s = Store::open(dir.path()).unwrap();
        s.machines().create(Machine::new("a")).unwrap();
        let long = s.leases().grant(60).unwrap();
        let short = s.leases().grant(1).unwrap();
        s.machines()
            .with_lease(long.id)
            .set_param("a", "long", json!(true))
            .unwrap();
        s.machines()
            .with_lease(short.id)
            .set_param("a", "short", json!(true))
            .unwrap();
        (long.id, short.id)
    };
    std::thread::sleep(Duration::from_millis(1_300));
    let s = Store::open(dir.path()).unwrap();
    // Right at open: the short lease ended while the store was closed.
    let m = s.machines().get("a").unwrap();
    assert!(!m.params.contains_key("short"), "{:?}", m.params);
    assert!(m.params.contains_key("long"));
    assert!(s.leases().get(short).is_err());
    let left = s.leases().get(long).unwrap().remaining;
    assert!(left <= 60.0 - 1.2 && left > 50.0, "never extended: {left}");
    s.leases().keep_alive(long).unwrap();
    s.verify_indexes().unwrap();
}

#[test]
fn a_damaged_deadline_file_ends_every_lease_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let s = Store::open_with(dir.path(), Options::default()).unwrap();
        s.machines().create(Machine::new("a")).unwrap();
        let l = s.leases().grant(60).unwrap();
        s.machines()
            .with_lease(l.id)
            .set_param("a", "x", json!(1))
            .unwrap();
        l.id
    };
    let file = dir.path().join("fleetkv.leases");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert!(s.leases().get(id).is_err());
    assert!(!s.machines().get("a").unwrap().params.contains_key("x"));
    s.verify_indexes().unwrap();
}

#[test]
fn campaign_fails_over_when_the_leader_lease_ends_and_fences_the_old_leader() {
    use fleetkv::Cluster;
    let s = store_with(&["m1", "m2", "m3"]);
    let c = Cluster::init(&s, "c1", None).unwrap();
    for m in ["m1", "m2", "m3"] {
        c.add(m).unwrap();
    }
    let mut watch = c.observe();
    let first = watch.next_timeout(Duration::from_secs(1)).unwrap().unwrap();
    assert!(first.leaders.is_empty());

    let l1 = s.leases().grant(60).unwrap();
    let l2 = s.leases().grant(60).unwrap();
    let won = c.campaign("m1", l1.id, 1, Duration::from_secs(5)).unwrap();
    let token = won.token.unwrap();
    let seen = watch.next_timeout(Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!(seen.leaders, vec![won.clone()]);
    assert_eq!(
        c.campaign("m1", l1.id, 1, Duration::from_secs(1)).unwrap(),
        won
    );
    assert!(matches!(
        c.campaign("m2", l2.id, 1, Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    let waiting = {
        let c = c.clone();
        std::thread::spawn(move || c.campaign("m2", l2.id, 1, Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(100));
    s.machines()
        .with_fence(Cluster::fenced_by(token))
        .set_param("m3", "work", json!("by m1"))
        .unwrap();
    s.leases().revoke(l1.id).unwrap();
    let next = waiting.join().unwrap().unwrap();
    assert_eq!(next.name, "m2");
    assert!(next.token.unwrap() > token);
    assert!(matches!(
        s.machines()
            .with_fence(Cluster::fenced_by(token))
            .set_param("m3", "work", json!("stale m1")),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(count(&s, "cluster/leader Eq true"), 1);
    // The watch sees m1 go and m2 lead (the newest set when read).
    let mut last = Vec::new();
    while let Some(l) = watch.next_timeout(Duration::from_millis(200)).unwrap() {
        last = l.leaders;
    }
    assert_eq!(last, vec![next.clone()]);
    c.resign("m2").unwrap();
    assert_eq!(count(&s, "cluster/leader Eq true"), 0);
    s.verify_indexes().unwrap();
}
