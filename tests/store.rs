//! The core store through its public API: data model rules, atomic updates,
//! compare-and-swap, effective params, durability and bad input.

use std::sync::{Arc, Barrier};
use std::thread;

use fleetkv::{Error, Filter, Kind, Machine, Options, ParamDef, Profile, Store};
use serde_json::{json, Value};

#[macro_use]
mod engines;
use engines::Engine;

on_each_engine!(
    machines_crud_and_addressing,
    unknown_fields_round_trip,
    uuid_is_immutable_and_unique_names,
    profiles_rules,
    schema_validation,
    effective_params_order,
    patch_is_atomic_and_conflicts_are_typed,
    reference_update,
    param_cas_race_has_one_winner_per_round,
    cas_counter_loses_no_increment,
    concurrent_patches_of_different_objects_do_not_interfere,
    merge_update_rules,
    patch_many_is_all_or_nothing,
    param_writes_keep_the_index_equal_to_a_rebuild,
    global_listed_in_profiles_ranks_at_its_place,
    a_param_write_answering_its_value_writes_what_set_param_writes,
    a_large_import_refuses_its_first_bad_machine,
    a_large_import_of_new_and_replaced_machines_indexes_as_a_rebuild,
);

fn member(name: &str, profiles: &[&str]) -> Machine {
    let mut m = Machine::new(name);
    m.profiles = profiles.iter().map(|s| s.to_string()).collect();
    m
}

fn snapshot(s: &Store) -> Value {
    json!({
        "machines": s.machines().list_all().unwrap(),
        "profiles": s.profiles().list_all(),
        "params": s.params().list_all(),
        "rev": s.revision(),
    })
}

fn machines_crud_and_addressing(e: Engine) {
    let s = e.store();
    let m = s.machines().create(Machine::new("fred")).unwrap();
    assert!(!m.uuid.is_nil());
    assert!(m.runnable, "Runnable defaults to true");
    assert!(m.revision > 0);
    let u = m.uuid.to_string();
    for addr in [
        u.clone(),
        format!("Uuid:{u}"),
        format!("Key:{u}"),
        "Name:fred".into(),
        "fred".into(),
    ] {
        assert_eq!(s.machines().get(&addr).unwrap().uuid, m.uuid, "{addr}");
        assert!(s.machines().exists(&addr).unwrap());
    }
    assert!(!s.machines().exists("Name:nobody").unwrap());
    assert!(matches!(
        s.machines().get("Name:nobody"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.machines().get("Uuid:not-a-uuid"),
        Err(Error::Invalid { .. })
    ));

    let updated = s
        .machines()
        .update("fred", &json!({"Description": "d", "Workflow": "w"}))
        .unwrap();
    assert_eq!(updated.description, "d");
    assert!(updated.revision > m.revision);
    let mut r = updated.clone();
    r.address = "10.0.0.1".into();
    let replaced = s.machines().replace("fred", r).unwrap();
    assert_eq!(replaced.address, "10.0.0.1");
    assert_eq!(replaced.uuid, m.uuid);
    assert_eq!(s.machines().list_all().unwrap().len(), 1);
    s.machines().delete(&u).unwrap();
    assert!(!s.machines().exists(&u).unwrap());
    assert!(matches!(
        s.machines().delete(&u),
        Err(Error::NotFound { .. })
    ));
    s.verify_indexes().unwrap();
}

fn unknown_fields_round_trip(e: Engine) {
    let s = e.store();
    let drp = json!({
        "Name": "d1", "Uuid": "3f0e7a52-6f0e-4b3c-9b3e-0a2b1c9d8e7f", "Available": true,
        "Errors": [], "Validated": true, "Arch": "amd64", "BootEnv": "local",
        "Context": "", "Fingerprint": {"SSNHash": "x", "MemoryIds": ["a"]},
        "Profiles": [], "Params": {"a/b": {"deep": [1, 2]}}, "Meta": {"icon": "server"}
    });
    let m: Machine = serde_json::from_value(drp.clone()).unwrap();
    s.machines().create(m).unwrap();
    let back = serde_json::to_value(s.machines().get("d1").unwrap()).unwrap();
    for (k, v) in drp.as_object().unwrap() {
        assert_eq!(&back[k], v, "field {k}");
    }
}

fn uuid_is_immutable_and_unique_names(e: Engine) {
    let s = e.store();
    let m = s.machines().create(Machine::new("a")).unwrap();
    s.machines().create(Machine::new("b")).unwrap();
    let before = snapshot(&s);
    let other = uuid::Uuid::new_v4().to_string();
    assert!(matches!(
        s.machines().update("a", &json!({"Uuid": other})),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.machines().patch(
            "a",
            &json!([{"op": "replace", "path": "/Uuid", "value": other}])
        ),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.machines().update("a", &json!({"Name": "b"})),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.machines().create(Machine::new("b")),
        Err(Error::AlreadyExists { .. })
    ));
    let mut dup = Machine::new("c");
    dup.uuid = m.uuid;
    assert!(matches!(
        s.machines().create(dup),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.machines().create(Machine::new("")),
        Err(Error::Invalid { .. })
    ));
    assert_eq!(snapshot(&s), before, "refused writes changed the store");
    // Renaming to a free name works.
    s.machines().update("a", &json!({"Name": "z"})).unwrap();
    assert!(s.machines().exists("Name:z").unwrap());
    assert!(!s.machines().exists("Name:a").unwrap());
}

fn profiles_rules(e: Engine) {
    let s = e.store();
    assert!(s.profiles().exists("global"), "global always exists");
    assert!(s.profiles().delete("global").is_err());
    assert!(matches!(
        s.machines().create(member("m", &["nope"])),
        Err(Error::Invalid { .. })
    ));
    s.profiles().create(Profile::new("p")).unwrap();
    assert!(matches!(
        s.profiles().create(Profile::new("p")),
        Err(Error::AlreadyExists { .. })
    ));
    for i in 0..7 {
        s.machines()
            .create(member(&format!("m{i}"), &["p"]))
            .unwrap();
    }
    match s.profiles().delete("p") {
        Err(Error::InUse {
            profile,
            machines,
            more,
        }) => {
            assert_eq!(profile, "p");
            assert_eq!(machines.len(), 5);
            assert_eq!(more, 2);
            assert!(machines.contains(&"m0".to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.machines()
            .update("m0", &json!({"Profiles": ["p", "missing"]})),
        Err(Error::Invalid { .. })
    ));
    for i in 0..7 {
        s.machines()
            .update(&format!("m{i}"), &json!({"Profiles": []}))
            .unwrap();
    }
    s.profiles().delete("p").unwrap();
    assert!(!s.profiles().exists("p"));
    s.verify_indexes().unwrap();
}

fn schema_validation(e: Engine) {
    let s = e.store();
    s.params()
        .create(ParamDef::new(
            "cluster/leader",
            json!({"type": "boolean", "default": false}),
        ))
        .unwrap();
    assert!(matches!(
        s.params().create(ParamDef::new(
            "bad",
            json!({"type": "boolean", "default": "x"})
        )),
        Err(Error::Schema { .. })
    ));
    assert!(matches!(
        s.params()
            .create(ParamDef::new("bad2", json!({"type": 12}))),
        Err(Error::Invalid { .. })
    ));
    s.machines().create(Machine::new("m")).unwrap();
    s.profiles().create(Profile::new("p")).unwrap();
    let before = snapshot(&s);
    match s.machines().set_param("m", "cluster/leader", json!("yes")) {
        Err(Error::Schema { param, .. }) => assert_eq!(param, "cluster/leader"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.profiles().set_param("p", "cluster/leader", json!(3)),
        Err(Error::Schema { .. })
    ));
    let mut bad = Machine::new("n");
    bad.params.insert("cluster/leader".into(), json!("x"));
    assert!(matches!(
        s.machines().create(bad),
        Err(Error::Schema { .. })
    ));
    assert_eq!(snapshot(&s), before);
    s.machines()
        .set_param("m", "cluster/leader", json!(true))
        .unwrap();
}

fn effective_params_order(e: Engine) {
    let s = e.store();
    s.params()
        .create(ParamDef::new("k", json!({"default": "def"})))
        .unwrap();
    let mut a = Profile::new("a");
    a.params.insert("k".into(), json!("from-a"));
    s.profiles().create(a).unwrap();
    let mut b = Profile::new("b");
    b.params.insert("k".into(), json!("from-b"));
    s.profiles().create(b).unwrap();
    s.machines().create(member("m", &[])).unwrap();
    let get = |s: &Store| s.machines().get_param("m", "k", true).unwrap();
    assert_eq!(get(&s), Some(json!("def")));
    s.profiles()
        .set_param("global", "k", json!("from-global"))
        .unwrap();
    assert_eq!(get(&s), Some(json!("from-global")));
    s.machines()
        .update("m", &json!({"Profiles": ["b", "a"]}))
        .unwrap();
    assert_eq!(get(&s), Some(json!("from-b")));
    s.machines()
        .update("m", &json!({"Profiles": ["a", "b"]}))
        .unwrap();
    assert_eq!(get(&s), Some(json!("from-a")));
    s.machines().set_param("m", "k", json!("own")).unwrap();
    assert_eq!(get(&s), Some(json!("own")));
    assert_eq!(
        s.machines().get_param("m", "k", false).unwrap(),
        Some(json!("own"))
    );
    assert_eq!(
        s.machines().remove_param("m", "k").unwrap(),
        Some(json!("own"))
    );
    assert_eq!(s.machines().get_param("m", "k", false).unwrap(), None);
    assert_eq!(get(&s), Some(json!("from-a")));
    let all = s.machines().params("m", true).unwrap();
    assert_eq!(all["k"], json!("from-a"));
    s.verify_indexes().unwrap();
}

fn patch_is_atomic_and_conflicts_are_typed(e: Engine) {
    let s = e.store();
    let mut m = Machine::new("m");
    m.params.insert("a".into(), json!(1));
    s.machines().create(m).unwrap();
    let before = snapshot(&s);
    let r = s.machines().patch(
        "m",
        &json!([
            {"op": "replace", "path": "/Params/a", "value": 2},
            {"op": "test", "path": "/Params/a", "value": 3}
        ]),
    );
    match r {
        Err(Error::Conflict {
            path,
            expected,
            actual,
        }) => {
            assert_eq!(path, "/Params/a");
            assert_eq!(expected.as_deref(), Some(&json!(3)));
            assert_eq!(
                actual.as_deref(),
                Some(&json!(2)),
                "actual is as the op saw it"
            );
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        json!({"op": "add"}),
        json!([{"op": "add", "value": 1}]),
        json!([{"op": "frobnicate", "path": "/Params/a"}]),
        json!([{"op": "remove", "path": "/Params/missing"}]),
        json!([{"op": "add", "path": "/Profiles/-", "value": "missing"}]),
        json!([{"op": "replace", "path": "/Runnable", "value": "yes"}]),
        json!([{"op": "replace", "path": "/Address", "value": "not-an-ip"}]),
        json!([{"op": "remove", "path": "/Name"}]),
    ] {
        let e = s.machines().patch("m", &bad).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{bad}: {e:?}");
    }
    assert_eq!(snapshot(&s), before, "refused patches changed the store");
    s.machines()
        .patch("m", &json!([{"op": "test", "path": "/Params/a", "value": 1}, {"op": "replace", "path": "/Params/a", "value": 2}]))
        .unwrap();
    assert_eq!(
        s.machines().get_param("m", "a", false).unwrap(),
        Some(json!(2))
    );
}

fn reference_update(e: Engine) {
    let s = e.store();
    s.profiles().create(Profile::new("example")).unwrap();
    let seen = serde_json::to_value(s.profiles().get("example").unwrap()).unwrap();
    let mut want = seen.clone();
    want["Params"]["my/data"] = json!("foo");
    s.profiles().update_from("example", &seen, &want).unwrap();
    // A second caller with the same stale reference loses, and writes nothing.
    let mut other = seen.clone();
    other["Params"]["my/data"] = json!("bar");
    let rev = s.revision();
    assert!(matches!(
        s.profiles().update_from("example", &seen, &other),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(s.revision(), rev);
    assert_eq!(
        s.profiles().get_param("example", "my/data", false).unwrap(),
        Some(json!("foo"))
    );
    // A change elsewhere does not conflict.
    let mut desc = seen.clone();
    desc["Description"] = json!("shared");
    s.profiles().update_from("example", &seen, &desc).unwrap();
    assert_eq!(s.profiles().get("example").unwrap().description, "shared");
}

fn param_cas_race_has_one_winner_per_round(e: Engine) {
    const THREADS: usize = 32;
    const ROUNDS: u64 = 1000;
    let s = e.store();
    s.profiles().create(Profile::new("example")).unwrap();
    s.profiles()
        .set_param("example", "round", json!(0))
        .unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut wins = Vec::new();
                for r in 0..ROUNDS {
                    barrier.wait();
                    match s.profiles().set_param_if(
                        "example",
                        "round",
                        Some(&json!(r)),
                        json!(r + 1),
                    ) {
                        Ok(_) => wins.push(r),
                        Err(Error::Conflict { .. }) => {}
                        Err(e) => panic!("thread {t}: {e}"),
                    }
                    barrier.wait();
                }
                wins
            })
        })
        .collect();
    let mut per_round = vec![0u32; ROUNDS as usize];
    for h in handles {
        for r in h.join().unwrap() {
            per_round[r as usize] += 1;
        }
    }
    assert!(
        per_round.iter().all(|&n| n == 1),
        "winners per round: {per_round:?}"
    );
    assert_eq!(
        s.profiles().get_param("example", "round", false).unwrap(),
        Some(json!(ROUNDS))
    );
}

fn cas_counter_loses_no_increment(e: Engine) {
    const THREADS: usize = 32;
    const EACH: u64 = 50;
    let s = e.store();
    s.machines().create(Machine::new("counter")).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = s.clone();
            thread::spawn(move || {
                for _ in 0..EACH {
                    loop {
                        let cur = s.machines().get_param("counter", "n", false).unwrap();
                        let next = cur.as_ref().and_then(Value::as_u64).unwrap_or(0) + 1;
                        match s
                            .machines()
                            .set_param_if("counter", "n", cur.as_ref(), json!(next))
                        {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        s.machines().get_param("counter", "n", false).unwrap(),
        Some(json!(THREADS as u64 * EACH))
    );
}

fn concurrent_patches_of_different_objects_do_not_interfere(e: Engine) {
    let s = e.store();
    for t in 0..16 {
        s.machines().create(Machine::new(format!("m{t}"))).unwrap();
    }
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let s = s.clone();
            thread::spawn(move || {
                for i in 0..100 {
                    s.machines()
                        .patch(
                            &format!("m{t}"),
                            &json!([{"op": "add", "path": "/Params/i", "value": i}]),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for t in 0..16 {
        assert_eq!(
            s.machines()
                .get_param(&format!("m{t}"), "i", false)
                .unwrap(),
            Some(json!(99))
        );
    }
    s.verify_indexes().unwrap();
}

/// Set (to the store's directory) in the child process that
/// `durable_writes_survive_sigkill` runs its writer in.
const DURABLE_CHILD: &str = "FLEETKV_DURABLE_WRITER_DIR";

/// Acknowledged writes the parent waits for before it kills the writer.
const ACKS_BEFORE_KILL: usize = 150;

/// The writer: durable writes, each reported on stdout once the call has
/// returned, until the parent kills it (SIGKILL), so the last ones are
/// still in flight in the engine when the process dies.
fn durable_writer(dir: &std::path::Path) {
    let s = Store::open_with(
        dir,
        Options {
            durable: true,
            ..Options::default()
        },
    )
    .unwrap();
    s.params()
        .create(ParamDef::new("p", json!({"type": "number"})))
        .unwrap();
    s.profiles().create(Profile::new("prof")).unwrap();
    println!("ack setup");
    for i in 0..100_000u64 {
        s.machines()
            .create(member(&format!("m{i}"), &["prof"]))
            .unwrap();
        println!("ack create {i}");
        s.machines()
            .set_param(&format!("m{i}"), "p", json!(i))
            .unwrap();
        println!("ack param {i}");
        if i % 10 == 9 {
            s.machines().delete(&format!("m{}", i - 5)).unwrap();
            println!("ack delete {}", i - 5);
        }
    }
    // The parent kills long before this: a writer that ran out of writes
    // would let the engine's own flush make the test pass.
    panic!("the parent did not kill the writer");
}

/// Every write a durable store acknowledged is there after the process is
/// killed with SIGKILL (no close, no flush on drop): the writer runs in a
/// child process, re-invoked from this test binary.
#[test]
fn durable_writes_survive_sigkill() {
    use std::io::BufRead as _;
    use std::time::Duration;
    if let Some(dir) = std::env::var_os(DURABLE_CHILD) {
        durable_writer(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "durable_writes_survive_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DURABLE_CHILD, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    while acks.len() < ACKS_BEFORE_KILL {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("ack ") => acks.push(line),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("writer stopped after {} acks: {e}", acks.len());
            }
        }
    }
    // SIGKILL while it writes; reaped, so its lock on the store is gone.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer was killed: {status}");
    reader.join().unwrap();
    // Everything it printed before it died was acknowledged too.
    acks.extend(rx.try_iter().filter(|l| l.starts_with("ack ")));

    let s = Store::open(dir.path()).unwrap();
    let mut created = std::collections::BTreeMap::new();
    for a in &acks {
        let words: Vec<&str> = a.split(' ').collect();
        match words[1..] {
            ["setup"] => {}
            ["create", i] => {
                created.insert(i.to_string(), None);
            }
            ["param", i] => {
                created.insert(i.to_string(), Some(i.parse::<u64>().unwrap()));
            }
            ["delete", i] => {
                created.remove(i);
                assert!(
                    !s.machines().exists(&format!("m{i}")).unwrap(),
                    "acknowledged delete of m{i} lost"
                );
            }
            _ => panic!("unexpected line {a}"),
        }
    }
    assert!(s.profiles().exists("prof"));
    assert!(s.params().exists("p"));
    // The write in flight at the kill may or may not have happened; the
    // only one that can remove an acknowledged write is a delete.
    let in_flight_delete = acks.last().and_then(|a| {
        let i: u64 = a.strip_prefix("ack param ")?.parse().ok()?;
        (i % 10 == 9).then(|| (i - 5).to_string())
    });
    for (i, p) in &created {
        if in_flight_delete.as_ref() == Some(i) && !s.machines().exists(&format!("m{i}")).unwrap() {
            continue;
        }
        let got = s.machines().get_param(&format!("m{i}"), "p", false);
        match p {
            Some(v) => assert_eq!(got.unwrap(), Some(json!(v)), "acknowledged param of m{i}"),
            None => assert!(got.is_ok(), "acknowledged create of m{i} lost: {got:?}"),
        }
    }
    s.verify_indexes().unwrap();
    // New ids continue after the old ones.
    s.machines().create(Machine::new("new")).unwrap();
    s.verify_indexes().unwrap();
}

#[test]
fn corrupt_record_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.machines().create(Machine::new("ok")).unwrap();
        s.flush().unwrap();
    }
    // sled's IO threads release a closed store's lock a moment after the
    // close returns: each open retries while the lock is held (2 s at most).
    let retry = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let db = loop {
        match sled::open(dir.path()) {
            Err(_) if std::time::Instant::now() < retry => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r.unwrap(),
        }
    };
    db.insert(b"m\0\0\0\x07", b"{not json".as_slice()).unwrap();
    db.flush().unwrap();
    drop(db);
    let retry = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let opened = loop {
        match Store::open(dir.path()) {
            Err(Error::Busy(_)) if std::time::Instant::now() < retry => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r,
        }
    };
    match opened {
        Err(Error::Corrupt { key, .. }) => assert!(key.contains('m'), "{key}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a corrupt store"),
    }
}

fn merge_update_rules(e: Engine) {
    let s = e.store();
    let mut m = Machine::new("m");
    m.params.insert("a".into(), json!(1));
    m.params.insert("b".into(), json!(2));
    s.machines().create(m).unwrap();
    let out = s
        .machines()
        .update(
            "m",
            &json!({"Params": {"a": null, "c": 3}, "Revision": 999}),
        )
        .unwrap();
    assert_eq!(out.params.get("a"), None);
    assert_eq!(out.params["c"], json!(3));
    assert_ne!(out.revision, 999, "Revision is the store's");
    assert!(matches!(
        s.machines().update("m", &json!([1])),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        s.machines().update("m", &json!({"Runnable": "x"})),
        Err(Error::Invalid { .. })
    ));
}

fn patch_many_is_all_or_nothing(e: Engine) {
    let s = e.store();
    for n in ["a", "b", "c"] {
        s.machines().create(Machine::new(n)).unwrap();
    }
    let set = |v: bool| json!([{"op": "add", "path": "/Params/leader", "value": v}]);
    let before = snapshot(&s);
    let r = s.machines().patch_many(&[
        ("a".into(), set(true)),
        (
            "b".into(),
            json!([{"op": "test", "path": "/Params/leader", "value": false}]),
        ),
    ]);
    assert!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
    assert_eq!(snapshot(&s), before, "a failed batch wrote something");
    let twice = s
        .machines()
        .patch_many(&[("a".into(), set(true)), ("Name:a".into(), set(false))]);
    assert!(matches!(twice, Err(Error::Invalid { .. })));
    let same_name = s.machines().patch_many(&[
        (
            "a".into(),
            json!([{"op": "replace", "path": "/Name", "value": "z"}]),
        ),
        (
            "b".into(),
            json!([{"op": "replace", "path": "/Name", "value": "z"}]),
        ),
    ]);
    assert!(matches!(same_name, Err(Error::AlreadyExists { .. })));
    assert_eq!(snapshot(&s), before);
    let out = s
        .machines()
        .patch_many(&[("a".into(), set(true)), ("c".into(), set(true))])
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].revision, out[1].revision, "one write, one revision");
    assert_eq!(
        s.machines().get_param("c", "leader", false).unwrap(),
        Some(json!(true))
    );
    s.verify_indexes().unwrap();
}

/// Param writes change only the names whose value changed in the index:
/// own values shadowing a profile's (equal or not), removal back to the
/// profile's, a compare-and-set, and each event's previous object.
fn param_writes_keep_the_index_equal_to_a_rebuild(e: Engine) {
    let s = e.store();
    s.params()
        .create(ParamDef::new("d", json!({"default": 0})))
        .unwrap();
    let mut a = Profile::new("a");
    a.params.insert("k".into(), json!("from-a"));
    s.profiles().create(a).unwrap();
    s.machines().create(member("m", &["a"])).unwrap();
    let count = |s: &Store, f: &str| s.machines().count(&Filter::parse(f).unwrap()).unwrap();
    let mut w = s.watch(Some(Kind::Machine), None, None).unwrap();
    type Step = Box<dyn Fn(&Store)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "own equal to the profile's",
            Box::new(|s| {
                s.machines().set_param("m", "k", json!("from-a")).unwrap();
            }),
        ),
        (
            "own differs",
            Box::new(|s| {
                s.machines().set_param("m", "k", json!("own")).unwrap();
            }),
        ),
        (
            "cas",
            Box::new(|s| {
                s.machines()
                    .set_param_if("m", "k", Some(&json!("own")), json!("cas"))
                    .unwrap();
            }),
        ),
        (
            "defaulted name",
            Box::new(|s| {
                s.machines().set_param("m", "d", json!(3)).unwrap();
            }),
        ),
        (
            "a name with / and ~ added",
            Box::new(|s| {
                s.machines().set_param("m", "hw/x~y", json!(1)).unwrap();
            }),
        ),
        (
            "a name with / and ~ changed",
            Box::new(|s| {
                s.machines().set_param("m", "hw/x~y", json!(2)).unwrap();
            }),
        ),
        (
            "removed",
            Box::new(|s| {
                s.machines().remove_param("m", "k").unwrap();
                s.machines().remove_param("m", "d").unwrap();
            }),
        ),
    ];
    for (what, step) in steps {
        let before = serde_json::to_value(s.machines().get("m").unwrap()).unwrap();
        step(&s);
        s.verify_indexes().unwrap_or_else(|e| panic!("{what}: {e}"));
        let ev = w.poll().unwrap().unwrap();
        // As text: the members' order too (a param write's event may keep
        // the patch that undoes it instead of the machine before it).
        assert_eq!(
            ev.previous.map(|p| p.to_string()),
            Some(before.to_string()),
            "{what}"
        );
        while w.poll().unwrap().is_some() {}
    }
    assert_eq!(count(&s, "k Eq from-a"), 1);
    assert_eq!(count(&s, "d Eq 0"), 1);
    assert_eq!(count(&s, "k Eq cas"), 0);
}

/// A machine that lists `global` in its Profiles takes global's value at
/// that place in the list, also when global or the other profile changes
/// later (found by the write-path fuzzer: the counts kept the other
/// profile's value).
fn global_listed_in_profiles_ranks_at_its_place(e: Engine) {
    let s = e.store();
    let mut p0 = Profile::new("p0");
    p0.params.insert("k".into(), json!("p0"));
    s.profiles().create(p0).unwrap();
    s.machines()
        .create(member("first", &["global", "p0"]))
        .unwrap();
    s.machines()
        .create(member("last", &["p0", "global"]))
        .unwrap();
    s.machines().create(member("implicit", &["p0"])).unwrap();
    let count = |v: &str| {
        s.machines()
            .count(&Filter::parse(&format!("k Eq {v}")).unwrap())
            .unwrap()
    };
    s.profiles().set_param("global", "k", json!("g")).unwrap();
    s.verify_indexes().unwrap();
    assert_eq!((count("g"), count("p0")), (1, 2));
    s.profiles().set_param("p0", "k", json!("p1")).unwrap();
    s.verify_indexes().unwrap();
    assert_eq!((count("g"), count("p1")), (1, 2));
    s.profiles().remove_param("global", "k").unwrap();
    s.verify_indexes().unwrap();
    assert_eq!(count("p1"), 3);
}

#[test]
fn an_open_waits_for_a_held_directory_up_to_the_lock_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let held = Store::open(&path).unwrap();
    held.machines().create(Machine::new("m1")).unwrap();
    // Held for the whole timeout: Busy, naming the wait.
    let short = Options {
        lock_timeout: std::time::Duration::from_millis(200),
        ..Options::default()
    };
    let started = std::time::Instant::now();
    match Store::open_with(&path, short) {
        Err(Error::Busy(why)) => assert!(why.contains("lock timeout"), "{why}"),
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("opened a store another handle holds"),
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    // Released while an open waits: the open gets it, with what was written.
    let closer = thread::spawn(move || {
        thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let store = Store::open_with(&path, Options::default()).unwrap();
    closer.join().unwrap();
    assert!(store.machines().get("Name:m1").is_ok());
}

/// `Objects::set_param_value` (the server's and the clients' param write,
/// which does not read the machine back) stores, indexes and logs what
/// `Machines::set_param` does, answers the value written, and on a failed
/// compare or a bad value writes nothing.
fn a_param_write_answering_its_value_writes_what_set_param_writes(e: Engine) {
    let s = e.store();
    s.params()
        .create(ParamDef::new("n", json!({"type": "integer"})))
        .unwrap();
    s.profiles().create(Profile::new("p")).unwrap();
    s.machines().create(member("a", &["p"])).unwrap();
    s.machines().create(member("b", &["p"])).unwrap();
    let machines = s.objects(Kind::Machine).unwrap();
    let mut w = s.watch(Some(Kind::Machine), None, None).unwrap();

    let typed = s.machines().set_param("a", "n", json!(7)).unwrap();
    assert_eq!(
        machines.set_param_value("b", "n", None, json!(7)).unwrap(),
        json!(7)
    );
    let b = s.machines().get("b").unwrap();
    assert_eq!(b.params, typed.params);
    assert_eq!(b.revision, typed.revision + 1);
    let events: Vec<_> = std::iter::from_fn(|| w.poll().unwrap()).collect();
    assert_eq!(events.len(), 2, "one event per write");
    assert_eq!(events[1].object["Params"], json!({"n": 7}));
    assert_eq!(
        s.machines()
            .count(&Filter::parse("n Eq 7").unwrap())
            .unwrap(),
        2
    );

    let before = snapshot(&s);
    let lost = machines.set_param_value("b", "n", Some(Some(&json!(1))), json!(8));
    assert!(matches!(lost, Err(Error::Conflict { .. })), "{lost:?}");
    let bad = machines.set_param_value("b", "n", None, json!("eight"));
    assert!(matches!(bad, Err(Error::Schema { .. })), "{bad:?}");
    let missing = machines.set_param_value("c", "n", None, json!(8));
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    assert_eq!(snapshot(&s), before, "a refused write changed the store");

    assert_eq!(
        machines
            .set_param_value("b", "n", Some(Some(&json!(7))), json!(8))
            .unwrap(),
        json!(8)
    );
    let profiles = s.objects(Kind::Profile).unwrap();
    assert_eq!(
        profiles
            .set_param_value("p", "n", Some(None), json!(1))
            .unwrap(),
        json!(1)
    );
    assert_eq!(s.profiles().get("p").unwrap().params["n"], json!(1));
    assert_eq!(
        s.machines()
            .count(&Filter::parse("n Eq 8").unwrap())
            .unwrap(),
        1
    );
    s.verify_indexes().unwrap();
}

/// An import large enough to be checked on two threads (over 1,024
/// machines) reports the first machine refused, wherever the refusals are:
/// in either half, or found in order (a Name given twice) after a machine
/// the per-machine checks refuse. Nothing is written.
fn a_large_import_refuses_its_first_bad_machine(e: Engine) {
    use fleetkv::store::{Bulk, BulkError};
    let s = e.store();
    s.params()
        .create(ParamDef::new(
            "slot",
            json!({"type": "integer", "minimum": 0}),
        ))
        .unwrap();
    s.profiles().create(Profile::new("rack")).unwrap();
    let fleet = || -> Vec<Machine> {
        (0..3000)
            .map(|i| {
                let mut m = member(&format!("m{i}"), &["rack"]);
                m.params.insert("slot".into(), json!(i));
                m
            })
            .collect()
    };
    let bad_slot = |m: &mut Machine| {
        m.params.insert("slot".into(), json!(-1));
    };
    let bad_profile = |m: &mut Machine| m.profiles.push("ghost".into());
    let name_of_10 = |m: &mut Machine| m.name = "m10".into();
    type Spoiled<'a> = Vec<(usize, &'a dyn Fn(&mut Machine))>;
    // The spoiled machines, and the first refused with what its error says.
    let cases: Vec<(Spoiled, usize, &str)> = vec![
        (vec![(2500, &bad_slot)], 2500, "param slot"),
        (
            vec![(2500, &bad_slot), (700, &bad_profile)],
            700,
            "Profiles of m700",
        ),
        (
            vec![(1400, &bad_profile), (1600, &bad_slot)],
            1400,
            "Profiles of m1400",
        ),
        (
            vec![(2800, &name_of_10), (2900, &bad_slot)],
            2800,
            "Name:m10",
        ),
        (
            vec![(2800, &name_of_10), (1600, &bad_slot)],
            1600,
            "param slot",
        ),
        (
            vec![(2800, &name_of_10), (20, &bad_profile)],
            20,
            "Profiles of m20",
        ),
    ];
    let before = snapshot(&s);
    for (spoils, first, says) in cases {
        let mut machines = fleet();
        for (at, spoil) in &spoils {
            spoil(&mut machines[*at]);
        }
        let e = s.machines().import(machines.clone()).unwrap_err();
        assert!(e.to_string().contains(says), "{first}: {e}");
        match s.write_bulk(Bulk {
            machines,
            ..Bulk::default()
        }) {
            Err(BulkError::Refused {
                kind,
                index,
                source,
            }) => {
                assert_eq!((kind, index), (Kind::Machine, first), "{source}");
                assert!(source.to_string().contains(says), "{first}: {source}");
            }
            other => panic!("{first}: {other:?}"),
        }
        assert_eq!(snapshot(&s), before, "{first}: a refused import wrote");
    }
    assert_eq!(s.machines().import(fleet()).unwrap(), (3000, 0));
    s.verify_indexes().unwrap();
}

/// An import large enough to be planned on two threads indexes its new
/// machines from what both threads gathered and its replaced ones one by
/// one, new and replaced interleaved across both halves: the index equals
/// a rebuild, and every machine is found by its params, own and inherited.
fn a_large_import_of_new_and_replaced_machines_indexes_as_a_rebuild(e: Engine) {
    let s = e.store();
    for r in ["rack-a", "rack-b"] {
        let mut p = Profile::new(r);
        p.params.insert("row".into(), json!(r));
        s.profiles().create(p).unwrap();
    }
    let machine = |i: usize, round: i64| {
        let mut m = member(&format!("m{i:05}"), &[["rack-a", "rack-b"][i % 2]]);
        m.uuid = uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i as u128);
        m.address = format!("10.0.{}.{}", i / 250, i % 250);
        m.params.insert("slot".into(), json!(i as i64 * round));
        if i.is_multiple_of(3) {
            m.params.insert(format!("only-{}", i % 7), json!(round));
        }
        m
    };
    assert_eq!(
        s.machines()
            .import((0..3000).step_by(2).map(|i| machine(i, 1)).collect())
            .unwrap(),
        (1500, 0)
    );
    assert_eq!(
        s.machines()
            .import((0..3000).map(|i| machine(i, 2)).collect())
            .unwrap(),
        (1500, 1500)
    );
    s.verify_indexes().unwrap();
    let count = |f: &str| s.machines().count(&Filter::parse(f).unwrap()).unwrap();
    assert_eq!(count("row Eq rack-b"), 1500);
    assert_eq!(count("slot Gte 0"), 3000);
    assert_eq!(count("slot Eq 5998"), 1);
    let only_3 = (0..3000u64)
        .filter(|i| i.is_multiple_of(3) && i % 7 == 3)
        .count() as u64;
    assert_eq!(count("only-3 Eq 2"), only_3);
    assert_eq!(count("Address Eq 10.0.11.249"), 1);
}
