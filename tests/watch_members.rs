//! Membership streams against the listing: random machine, profile,
//! `global` and definition writes, polled at random points (so a step sees
//! one revision or many) and resumed at random points. Every message's
//! `Count` and the set accumulated from `Joined`/`Left` (or a snapshot's
//! `Members`) must equal `Machines::list`/`count` of the filter at the
//! message's revision, recorded after each write; a revision that moved the
//! set without a message of its own must be inside a `Coalesced` one (the
//! only message that may be empty); after
//! the last message nothing may have moved.

use std::collections::{BTreeMap, BTreeSet};

use fleetkv::{
    Filter, ListOptions, Machine, MemberOptions, MemberWatch, Membership, ParamDef, Profile, Store,
};
use proptest::prelude::*;
use serde_json::json;

const FILTERS: [&str; 6] = [
    "rack Eq 1",
    "rack In 0,2",
    "Profiles Eq p0",
    "rack Eq 1 Or Profiles Eq p1",
    "Not rack Eq 1",
    "zone Eq a And rack Lt 2",
];

#[derive(Debug, Clone)]
enum Op {
    Create(u8, Option<u8>, Vec<u8>),
    SetRack(u8, u8),
    RemoveRack(u8),
    Delete(u8),
    AddProfile(u8, u8),
    ProfileRack(u8, Option<u8>),
    GlobalRack(Option<u8>),
    ZoneDefault(Option<&'static str>),
    Rename(u8, u8),
    Poll,
    Resume,
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0u8..8;
    let rack = 0u8..3;
    prop_oneof![
        4 => (m.clone(), proptest::option::of(rack.clone()), proptest::collection::vec(0u8..2, 0..2))
            .prop_map(|(m, r, p)| Op::Create(m, r, p)),
        6 => (m.clone(), rack.clone()).prop_map(|(m, r)| Op::SetRack(m, r)),
        1 => m.clone().prop_map(Op::RemoveRack),
        2 => m.clone().prop_map(Op::Delete),
        2 => (m.clone(), 0u8..2).prop_map(|(m, p)| Op::AddProfile(m, p)),
        2 => (0u8..2, proptest::option::of(rack.clone())).prop_map(|(p, r)| Op::ProfileRack(p, r)),
        1 => proptest::option::of(rack).prop_map(Op::GlobalRack),
        1 => proptest::option::of(prop_oneof![Just("a"), Just("b")]).prop_map(Op::ZoneDefault),
        1 => (m.clone(), 0u8..3).prop_map(|(m, n)| Op::Rename(m, n)),
        4 => Just(Op::Poll),
        1 => Just(Op::Resume),
    ]
}

fn name(m: u8) -> String {
    format!("m{m}")
}

/// Applies a write; errors (a machine that does not exist, a name taken)
/// are writes that did not happen.
fn write(s: &Store, op: &Op) {
    let _ = match op {
        Op::Create(m, rack, profiles) => {
            let mut x = Machine::new(name(*m));
            if let Some(r) = rack {
                x.params.insert("rack".into(), json!(r));
            }
            x.profiles = profiles.iter().map(|p| format!("p{p}")).collect();
            x.profiles.dedup();
            s.machines().create(x).map(drop)
        }
        Op::SetRack(m, r) => s
            .machines()
            .set_param(&name(*m), "rack", json!(r))
            .map(drop),
        Op::RemoveRack(m) => s.machines().remove_param(&name(*m), "rack").map(drop),
        Op::Delete(m) => s.machines().delete(&name(*m)).map(drop),
        Op::AddProfile(m, p) => s
            .machines()
            .update(&name(*m), &json!({ "Profiles": [format!("p{p}")] }))
            .map(drop),
        Op::ProfileRack(p, Some(r)) => s
            .profiles()
            .set_param(&format!("p{p}"), "rack", json!(r))
            .map(drop),
        Op::ProfileRack(p, None) => s
            .profiles()
            .remove_param(&format!("p{p}"), "rack")
            .map(drop),
        Op::GlobalRack(Some(r)) => s.profiles().set_param("global", "rack", json!(r)).map(drop),
        Op::GlobalRack(None) => s.profiles().remove_param("global", "rack").map(drop),
        Op::ZoneDefault(Some(z)) => {
            let d = ParamDef::new("zone", json!({ "default": z }));
            match s.params().exists("zone") {
                true => s.params().replace("zone", d).map(drop),
                false => s.params().create(d).map(drop),
            }
        }
        Op::ZoneDefault(None) => s.params().delete("zone").map(drop),
        Op::Rename(m, n) => s
            .machines()
            .update(&name(*m), &json!({ "Name": format!("r{n}") }))
            .map(drop),
        Op::Poll | Op::Resume => Ok(()),
    };
}

/// The filter's members by Uuid, with their names, as listed now.
fn listed(s: &Store, f: &Filter) -> BTreeMap<String, String> {
    let opts = ListOptions::default();
    s.machines()
        .list(f, &opts)
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m["Uuid"].as_str().unwrap_or_default().to_string(),
                m["Name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// What the subscriber holds, and checks each message against the truth.
struct Subscriber {
    set: BTreeSet<String>,
    /// The revision of the last message (or the one resumed from).
    at: u64,
}

impl Subscriber {
    fn take(&mut self, m: &Membership, truth: &BTreeMap<u64, BTreeMap<String, String>>) {
        let want = &truth[&m.revision];
        if m.snapshot {
            let members = m.members.as_ref().expect("members asked for");
            self.set = members.iter().map(|x| x.uuid.to_string()).collect();
            for x in members {
                assert_eq!(want.get(&x.uuid.to_string()), Some(&x.name), "{m:?}");
            }
        } else {
            assert!(m.revision > self.at, "{m:?} after {}", self.at);
            if !m.coalesced {
                // Nothing moved between the previous message and this one.
                let before = &truth[&(m.revision - 1)];
                for r in self.at..m.revision {
                    assert_eq!(
                        truth[&r].keys().collect::<Vec<_>>(),
                        before.keys().collect::<Vec<_>>(),
                        "revision {r} moved the set without a message: {m:?}"
                    );
                }
            }
            for x in &m.joined {
                let u = x.uuid.to_string();
                assert!(self.set.insert(u.clone()), "joined twice: {m:?}");
                assert_eq!(want.get(&u), Some(&x.name), "{m:?}");
            }
            for x in &m.left {
                assert!(self.set.remove(&x.uuid.to_string()), "left, not in: {m:?}");
                assert!(!want.contains_key(&x.uuid.to_string()), "{m:?}");
            }
            assert!(
                m.coalesced || !m.joined.is_empty() || !m.left.is_empty(),
                "an empty message: {m:?}"
            );
        }
        assert_eq!(m.count, want.len() as u64, "{m:?}");
        assert_eq!(
            self.set.iter().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{m:?}"
        );
        self.at = m.revision;
    }
}

fn run(filter: &str, ops: &[Op]) {
    let s = Store::in_memory().unwrap();
    for p in ["p0", "p1"] {
        s.profiles().create(Profile::new(p)).unwrap();
    }
    let f = Filter::parse(filter).unwrap();
    let mut truth: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    truth.insert(s.revision(), listed(&s, &f));
    let opts = MemberOptions {
        members: true,
        ..MemberOptions::default()
    };
    let mut w: MemberWatch = s.watch_members_with(&f, opts).unwrap();
    let mut sub = Subscriber {
        set: BTreeSet::new(),
        at: 0,
    };
    let drain = |w: &mut MemberWatch, sub: &mut Subscriber, truth: &BTreeMap<_, _>| {
        while let Some(m) = w.poll().unwrap() {
            sub.take(&m, truth);
        }
    };
    for op in ops {
        match op {
            Op::Poll => drain(&mut w, &mut sub, &truth),
            Op::Resume => {
                drain(&mut w, &mut sub, &truth);
                let opts = MemberOptions {
                    from: Some(w.revision()),
                    members: true,
                    ..MemberOptions::default()
                };
                sub.at = w.revision();
                w = s.watch_members_with(&f, opts).unwrap();
            }
            _ => {
                let before = s.revision();
                write(&s, op);
                assert_eq!(s.machines().count(&f).unwrap(), listed(&s, &f).len() as u64);
                if s.revision() != before {
                    truth.insert(s.revision(), listed(&s, &f));
                }
            }
        }
    }
    drain(&mut w, &mut sub, &truth);
    // Nothing moved after the last message.
    assert_eq!(
        sub.set.iter().collect::<Vec<_>>(),
        truth[&s.revision()].keys().collect::<Vec<_>>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_stream_agrees_with_the_listing_at_every_revision(
        filter in proptest::sample::select(FILTERS.to_vec()),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(filter, &ops);
    }
}

#[test]
fn a_stream_follows_writes_from_another_thread() {
    let s = Store::in_memory().unwrap();
    let f = Filter::parse("rack Eq 1").unwrap();
    let mut w = s.watch_members(&f, None).unwrap();
    assert_eq!(w.poll().unwrap().map(|m| m.count), Some(0));
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                let mut m = Machine::new(format!("m{i}"));
                m.params.insert("rack".into(), json!(i % 2));
                s.machines().create(m).unwrap();
            }
        })
    };
    let mut count = 0;
    while count < 25 {
        let m = w
            .next_timeout(std::time::Duration::from_secs(10))
            .unwrap()
            .expect("a message within 10 s");
        assert_eq!(m.joined.len(), 1);
        count = m.count;
    }
    writer.join().unwrap();
}
