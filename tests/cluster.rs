//! The cluster pattern through the library: init, members, roles, leader
//! election (exact under a race, idempotent, refusing the impossible) and
//! starting a workflow on members.

use std::sync::{Arc, Barrier};
use std::thread;

use fleetkv::cluster::{FENCE_PARAM, FILTER_PARAM, LEADER_PARAM, MANAGER_PARAM, PROFILE_PARAM};
use fleetkv::{start_workflow, Cluster, Error, Filter, ListOptions, Machine, Role, Store};
use serde_json::{json, Value};

/// A store with cluster `c` of `members` machines (`m0`…) and `others`
/// non-members (`x0`…).
fn cluster(members: usize, others: usize) -> (Store, Cluster) {
    let s = Store::temporary().unwrap();
    let c = Cluster::init(&s, "c", None).unwrap();
    let mut all: Vec<Machine> = (0..members)
        .map(|i| {
            let mut m = Machine::new(format!("m{i}"));
            m.profiles.push("c".into());
            m
        })
        .collect();
    all.extend((0..others).map(|i| Machine::new(format!("x{i}"))));
    s.machines().import(all).unwrap();
    (s, c)
}

fn names(ms: &[Machine]) -> Vec<String> {
    let mut v: Vec<String> = ms.iter().map(|m| m.name.clone()).collect();
    v.sort();
    v
}

fn f(text: &str) -> Filter {
    Filter::parse(text).unwrap()
}

#[test]
fn init_defines_params_and_is_idempotent() {
    let s = Store::temporary().unwrap();
    Cluster::init(&s, "c", None).unwrap();
    let p = s.profiles().get("c").unwrap();
    assert_eq!(p.params[PROFILE_PARAM], json!("c"));
    assert_eq!(p.params[FILTER_PARAM], json!("Profiles Eq c"));
    for d in [MANAGER_PARAM, LEADER_PARAM, PROFILE_PARAM, FILTER_PARAM] {
        assert!(s.params().exists(d), "{d}");
    }
    assert_eq!(
        s.params().get(LEADER_PARAM).unwrap().schema,
        json!({"type": "boolean", "default": false})
    );
    let rev = s.revision();
    Cluster::init(&s, "c", None).unwrap();
    Cluster::init(&s, "c", Some("Profiles Eq c")).unwrap();
    assert_eq!(s.revision(), rev, "a second init writes nothing");

    // A new filter is written; a bad one is refused with nothing written.
    Cluster::init(&s, "c", Some("Profiles Eq c And Meta.icon Eq anchor")).unwrap();
    let rev = s.revision();
    assert!(matches!(
        Cluster::init(&s, "c", Some("Profiles Eq (")),
        Err(Error::Filter(_))
    ));
    assert_eq!(s.revision(), rev);

    // A profile that does not name itself is not a cluster.
    s.profiles().create(fleetkv::Profile::new("plain")).unwrap();
    assert!(matches!(
        Cluster::open(&s, "plain"),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        Cluster::open(&s, "nope"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn default_filter_quotes_odd_names() {
    let s = Store::temporary().unwrap();
    let c = Cluster::init(&s, "odd name", None).unwrap();
    let mut m = Machine::new("a");
    m.profiles.push("odd name".into());
    s.machines().create(m).unwrap();
    s.machines().create(Machine::new("b")).unwrap();
    assert_eq!(c.count(Filter::all()).unwrap(), 1);
}

#[test]
fn add_remove_and_members_splice() {
    let (s, c) = cluster(3, 2);
    assert_eq!(c.count(Filter::all()).unwrap(), 3);
    let m = c.add("x0").unwrap();
    assert_eq!(m.profiles, vec!["c".to_string()]);
    let rev = s.revision();
    c.add("x0").unwrap();
    assert_eq!(s.revision(), rev, "adding a member again writes nothing");
    assert_eq!(c.count(Filter::all()).unwrap(), 4);
    c.remove("x0").unwrap();
    assert_eq!(c.count(Filter::all()).unwrap(), 3);
    assert!(matches!(c.add("ghost"), Err(Error::NotFound { .. })));

    // A hostile stored filter stays one parenthesised term when spliced.
    Cluster::init(&s, "c", Some("Profiles Eq c Or Name Eq x1")).unwrap();
    assert_eq!(c.count(Filter::all()).unwrap(), 4);
    let spliced = c.member_filter(f("Name Eq x1")).unwrap();
    assert_eq!(
        spliced.to_string(),
        "(Profiles Eq c Or Name Eq x1) And Name Eq x1"
    );
    assert_eq!(c.count(f("Name Eq x1")).unwrap(), 1);
    assert_eq!(c.count(f("Name Eq m0")).unwrap(), 1);
    assert_eq!(c.count(f("Name Eq x0")).unwrap(), 0);
    let listed = c
        .members(
            f("Name Re ^x"),
            &ListOptions {
                slim: vec!["Params".into(), "Meta".into()],
                ..ListOptions::default()
            },
        )
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["Name"], json!("x1"));
    assert!(listed[0].get("Params").is_none());
}

#[test]
fn roles() {
    let (s, c) = cluster(3, 1);
    assert_eq!(c.role("m0").unwrap(), Role::Worker);
    c.set_role("m0", Role::Manager).unwrap();
    c.set_role("m1", Role::Leader).unwrap();
    assert_eq!(c.role("m0").unwrap(), Role::Manager);
    assert_eq!(c.role("m1").unwrap(), Role::Leader);
    assert_eq!(c.role("m2").unwrap(), Role::Worker);
    assert_eq!(
        c.count(f("cluster/manager Eq false cluster/leader Eq false"))
            .unwrap(),
        1
    );
    c.set_role("m1", Role::Worker).unwrap();
    assert_eq!(
        s.machines().get("m1").unwrap().params[LEADER_PARAM],
        json!(false)
    );
    assert!(matches!(
        c.set_role("x0", Role::Leader),
        Err(Error::Invalid { .. })
    ));
    assert_eq!("Leader".parse::<Role>().unwrap(), Role::Leader);
    assert!("boss".parse::<Role>().is_err());
}

#[test]
fn election_is_idempotent_and_grows_by_the_difference() {
    let (s, c) = cluster(10, 5);
    c.set_role("m0", Role::Manager).unwrap();
    let first = c.elect(2).unwrap();
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|m| m.name != "m0" && m.name.starts_with('m')));
    let rev = s.revision();
    for _ in 0..3 {
        assert_eq!(names(&c.elect(2).unwrap()), names(&first));
        assert_eq!(names(&c.elect(1).unwrap()), names(&first));
    }
    assert_eq!(s.revision(), rev, "re-election writes nothing");
    let more = c.elect(4).unwrap();
    assert_eq!(more.len(), 4);
    for m in &first {
        assert!(names(&more).contains(&m.name), "kept {}", m.name);
    }
    assert_eq!(c.leaders().unwrap().len(), 4);
    // The fence is designated once, on a member.
    let fence = s.profiles().get("c").unwrap().params[FENCE_PARAM].clone();
    let fence = s.machines().get(fence.as_str().unwrap()).unwrap();
    assert!(fence.profiles.contains(&"c".to_string()));
}

#[test]
fn too_many_leaders_is_invalid_and_writes_nothing() {
    let (s, c) = cluster(4, 3);
    c.set_role("m0", Role::Manager).unwrap();
    let rev = s.revision();
    match c.elect(4) {
        Err(Error::Invalid { reason, .. }) => {
            assert!(reason.contains("asked for 4 leaders"), "{reason}");
            assert!(reason.contains("only 3"), "{reason}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(s.revision(), rev);
    assert!(c.elect(0).unwrap().is_empty());
    assert_eq!(s.revision(), rev);
    assert_eq!(c.elect(3).unwrap().len(), 3);

    let empty = Cluster::init(&s, "empty", None).unwrap();
    let rev = s.revision();
    assert!(matches!(empty.elect(1), Err(Error::Invalid { .. })));
    assert_eq!(s.revision(), rev);
}

#[test]
fn thirty_two_threads_elect_exactly_n() {
    for n in [1, 3, 7].repeat(6) {
        let (s, c) = cluster(40, 10);
        c.set_role("m5", Role::Manager).unwrap();
        // Designate the fence first, so that the racers go straight at it.
        for m in c.elect(1).unwrap() {
            c.set_role(&m.name, Role::Worker).unwrap();
        }
        let gate = Arc::new(Barrier::new(32));
        let results: Vec<Vec<String>> = (0..32)
            .map(|_| {
                let (c, gate) = (c.clone(), gate.clone());
                thread::spawn(move || {
                    gate.wait();
                    names(&c.elect(n).unwrap())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let leaders = s
            .machines()
            .list(&f("cluster/leader Eq true"), &ListOptions::default())
            .unwrap();
        assert_eq!(leaders.len(), n, "exactly {n} leaders");
        for l in &leaders {
            assert_eq!(l["Profiles"], json!(["c"]), "a member");
            assert_ne!(l["Name"], json!("m5"), "not the manager");
        }
        let mut want: Vec<String> = leaders
            .iter()
            .filter_map(|l| l["Name"].as_str().map(String::from))
            .collect();
        want.sort();
        for r in results {
            assert_eq!(r, want, "every elector returns the same leaders");
        }
        s.verify_indexes().unwrap();
    }
}

#[test]
fn elections_pick_at_random() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..12 {
        let (_s, c) = cluster(20, 0);
        seen.insert(names(&c.elect(1).unwrap()));
    }
    assert!(seen.len() > 1, "twelve elections all picked {seen:?}");
}

#[test]
fn workflow_on_members_reports_and_is_idempotent() {
    let (s, c) = cluster(4, 2);
    c.set_role("m0", Role::Manager).unwrap();
    c.elect(2).unwrap();
    let leaders = c.member_filter(f("cluster/manager Eq false cluster/leader Eq true"));
    let leaders = leaders.unwrap();
    let meta = vec![("icon".to_string(), "anchor".to_string())];
    let r = start_workflow(&s, &leaders, "k3s-machine-install", &meta).unwrap();
    assert_eq!(r.succeeded.len(), 2);
    assert!(r.unchanged.is_empty() && r.failed.is_empty());
    for u in &r.succeeded {
        let m = s.machines().get(&u.to_string()).unwrap();
        assert_eq!(m.workflow, "k3s-machine-install");
        assert_eq!(m.meta["icon"], "anchor");
    }
    let rev = s.revision();
    let again = start_workflow(&s, &leaders, "k3s-machine-install", &meta).unwrap();
    assert_eq!(s.revision(), rev, "re-running writes nothing");
    assert!(again.succeeded.is_empty());
    let (mut a, mut b) = (again.unchanged.clone(), r.succeeded.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b);

    // Through the cluster handle, on every member: leaders unchanged unless
    // the meta differs.
    let all = c
        .start_workflow(Filter::all(), "k3s-machine-install", &[])
        .unwrap();
    assert_eq!((all.succeeded.len(), all.unchanged.len()), (2, 2));
    let report = serde_json::to_value(&all).unwrap();
    assert!(report["failed"] == Value::Array(vec![]));
    assert!(matches!(
        start_workflow(&s, &leaders, "", &[]),
        Err(Error::Invalid { .. })
    ));
}
