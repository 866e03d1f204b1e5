//! The indexes against the reference evaluator: random stores (machines,
//! overlapping profiles, `global`, definitions with defaults), random filters
//! over every operator and And/Or/Not nesting, random interleaved writes.
//! After every step the indexed count and list equal a full scan.

use fleetkv::{Error, Filter, ListOptions, Machine, ParamDef, Profile, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

#[macro_use]
mod engines;
use engines::Engine;

on_each_engine!(
    sorted_listing_matches_scan_order,
    readers_see_whole_writes_and_writers_read_their_own,
);

const PARAMS: [&str; 5] = ["flag", "any", "c/str", "num", "Params.any"];
const PROFILES: [&str; 4] = ["p0", "p1", "p2", "p3"];

fn value_pool() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        Just(json!("true")),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(3)),
        Just(json!(3.0)),
        Just(json!("3")),
        Just(json!(2.5)),
        Just(json!("x")),
        Just(json!("y")),
        Just(json!("10")),
        Just(Value::Null),
        Just(json!([1])),
        Just(json!({"k": 1})),
    ]
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("true".to_string()),
        Just("false".to_string()),
        Just("\"true\"".to_string()),
        Just("1".to_string()),
        Just("2".to_string()),
        Just("3".to_string()),
        Just("\"3\"".to_string()),
        Just("2.5".to_string()),
        Just("x".to_string()),
        Just("y".to_string()),
        Just("10".to_string()),
        Just("null".to_string()),
        Just("p0".to_string()),
        Just("p1".to_string()),
        Just("m1".to_string()),
        Just("10.0.0.1".to_string()),
        Just("10.0.0.3".to_string()),
        Just("icon".to_string()),
        Just("flag".to_string()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Name".to_string()),
        Just("Workflow".to_string()),
        Just("Runnable".to_string()),
        Just("Address".to_string()),
        Just("Description".to_string()),
        Just("Profiles".to_string()),
        Just("Params".to_string()),
        Just("Meta".to_string()),
        Just("Meta.icon".to_string()),
        proptest::sample::select(PARAMS.to_vec()).prop_map(String::from),
    ]
}

fn any_leaf() -> impl Strategy<Value = String> {
    let op = proptest::sample::select(vec![
        "Eq", "Ne", "Lt", "Lte", "Gt", "Gte", "In", "Nin", "Re", "Between", "Except",
    ]);
    (key(), op, literal(), literal(), regex()).prop_map(|(k, op, a, b, re)| match op {
        "Between" | "Except" => format!("{k} {op} {a} {b}"),
        "In" | "Nin" => format!("{k} {op} {a},{b}"),
        "Re" => format!("{k} Re \"{re}\""),
        _ => format!("{k} {op} {a}"),
    })
}

fn regex() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("^m"),
        Just("1"),
        Just("^p[01]$"),
        Just("x|y"),
        Just(".*"),
        Just("^m1"),
        Just("con"),
        // Prefix ranges: a deciding class, overlapping alternatives, an end
        // anchor and case folding (the index walks only these ranges).
        Just("^m[12]"),
        Just("^(m|m1)"),
        Just("^m1$"),
        Just("(?i)^M1")
    ]
}

/// Leaves that mostly bind: set keys with set operators, typed fields with
/// values of their type, params and Meta with anything.
fn leaf() -> impl Strategy<Value = String> {
    let set_key = proptest::sample::select(vec!["Profiles", "Params", "Meta"]);
    let set_op = proptest::sample::select(vec!["Eq", "Ne", "In", "Nin"]);
    let member = prop_oneof![
        Just("p0"),
        Just("p1"),
        Just("p2"),
        Just("p3"),
        Just("icon"),
        Just("flag"),
        Just("any"),
        Just("num"),
        Just("c/str"),
        Just("x")
    ];
    let scalar_key = prop_oneof![
        Just("Name".to_string()),
        Just("Workflow".to_string()),
        Just("Description".to_string()),
        Just("Meta.icon".to_string()),
        proptest::sample::select(PARAMS.to_vec()).prop_map(String::from),
    ];
    let ip = proptest::sample::select(vec!["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "::2"]);
    prop_oneof![
        1 => any_leaf(),
        3 => (set_key.clone(), set_op, member.clone(), member.clone(), any::<bool>()).prop_map(|(k, op, a, b, two)| {
            if two { format!("{k} {op} {a},{b}") } else { format!("{k} {op} {a}") }
        }),
        1 => (set_key, regex()).prop_map(|(k, re)| format!("{k} Re \"{re}\"")),
        1 => (proptest::sample::select(vec!["Eq", "Ne"]), any::<bool>()).prop_map(|(op, b)| format!("Runnable {op} {b}")),
        1 => (proptest::sample::select(vec!["Eq", "Ne", "Lt", "Lte", "Gt", "Gte"]), ip.clone(), ip.clone(), any::<bool>())
            .prop_map(|(op, a, b, between)| if between { format!("Address Between {a} {b}") } else { format!("Address {op} {a}") }),
        6 => (scalar_key, proptest::sample::select(vec![
            "Eq", "Ne", "Lt", "Lte", "Gt", "Gte", "In", "Nin", "Re", "Between", "Except",
        ]), literal(), literal(), regex()).prop_map(|(k, op, a, b, re)| match op {
            "Between" | "Except" => format!("{k} {op} {a} {b}"),
            "In" | "Nin" => format!("{k} {op} {a},{b}"),
            "Re" => format!("{k} Re \"{re}\""),
            _ => format!("{k} {op} {a}"),
        }),
    ]
}

fn filter_text() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) And ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) Or ({b})")),
            inner.clone().prop_map(|a| format!("Not ({a})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a} {b}")),
        ]
    })
}

#[derive(Debug, Clone)]
enum Step {
    SetMachineParam(usize, usize, Value),
    RemoveMachineParam(usize, usize),
    SetProfiles(usize, Vec<usize>),
    SetProfileParam(usize, usize, Value),
    RemoveProfileParam(usize, usize),
    SetGlobal(usize, Value),
    SetDefault(usize, Option<Value>),
    Meta(usize, Option<String>),
    Fields(usize, String, bool, String),
    Delete(usize),
    Create(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let m = 0..200usize;
    let p = 0..4usize;
    let k = 0..4usize;
    prop_oneof![
        4 => (m.clone(), k.clone(), value_pool()).prop_map(|(m, k, v)| Step::SetMachineParam(m, k, v)),
        2 => (m.clone(), k.clone()).prop_map(|(m, k)| Step::RemoveMachineParam(m, k)),
        3 => (m.clone(), proptest::sample::subsequence((0..4).collect::<Vec<_>>(), 0..=3).prop_shuffle()).prop_map(|(m, ps)| Step::SetProfiles(m, ps)),
        3 => (p.clone(), k.clone(), value_pool()).prop_map(|(p, k, v)| Step::SetProfileParam(p, k, v)),
        1 => (p, k.clone()).prop_map(|(p, k)| Step::RemoveProfileParam(p, k)),
        2 => (k.clone(), value_pool()).prop_map(|(k, v)| Step::SetGlobal(k, v)),
        1 => (k, proptest::option::of(value_pool())).prop_map(|(k, v)| Step::SetDefault(k, v)),
        1 => (m.clone(), proptest::option::of(prop_oneof![Just("anchor".to_string()), Just("server".to_string())])).prop_map(|(m, v)| Step::Meta(m, v)),
        1 => (m.clone(), prop_oneof![Just("".to_string()), Just("w1".to_string()), Just("x".to_string())], any::<bool>(), prop_oneof![Just("".to_string()), Just("10.0.0.1".to_string()), Just("10.0.0.2".to_string()), Just("::1".to_string())]).prop_map(|(m, w, r, a)| Step::Fields(m, w, r, a)),
        1 => m.clone().prop_map(Step::Delete),
        1 => m.prop_map(Step::Create),
    ]
}

fn schema(k: usize, default: Option<Value>) -> Value {
    let mut s = match k {
        0 => json!({"type": "boolean"}),
        2 => json!({"type": "string"}),
        3 => json!({"type": "number"}),
        _ => json!({}),
    };
    if let Some(d) = default {
        s["default"] = d;
    }
    s
}

fn param_name(k: usize) -> &'static str {
    PARAMS[k]
}

fn apply(s: &Store, step: &Step) {
    let mname = |m: usize| format!("m{m}");
    let r: Result<(), Error> = match step {
        Step::SetMachineParam(m, k, v) => s
            .machines()
            .set_param(&mname(*m), param_name(*k), v.clone())
            .map(drop),
        Step::RemoveMachineParam(m, k) => s
            .machines()
            .remove_param(&mname(*m), param_name(*k))
            .map(drop),
        Step::SetProfiles(m, ps) => s
            .machines()
            .update(
                &mname(*m),
                &json!({"Profiles": ps.iter().map(|p| PROFILES[*p]).collect::<Vec<_>>()}),
            )
            .map(drop),
        Step::SetProfileParam(p, k, v) => s
            .profiles()
            .set_param(PROFILES[*p], param_name(*k), v.clone())
            .map(drop),
        Step::RemoveProfileParam(p, k) => s
            .profiles()
            .remove_param(PROFILES[*p], param_name(*k))
            .map(drop),
        Step::SetGlobal(k, v) => s
            .profiles()
            .set_param("global", param_name(*k), v.clone())
            .map(drop),
        Step::SetDefault(k, d) => s
            .params()
            .replace(
                param_name(*k),
                ParamDef::new(param_name(*k), schema(*k, d.clone())),
            )
            .map(drop),
        Step::Meta(m, v) => s
            .machines()
            .update(&mname(*m), &json!({"Meta": {"icon": v}}))
            .map(drop),
        Step::Fields(m, w, r, a) => s
            .machines()
            .update(
                &mname(*m),
                &json!({"Workflow": w, "Runnable": r, "Address": a}),
            )
            .map(drop),
        Step::Delete(m) => s.machines().delete(&mname(*m)).map(drop),
        Step::Create(m) => {
            let mut x = Machine::new(mname(*m));
            x.profiles.push(PROFILES[*m % 4].into());
            s.machines().create(x).map(drop)
        }
    };
    match r {
        Ok(())
        | Err(Error::NotFound { .. })
        | Err(Error::Schema { .. })
        | Err(Error::AlreadyExists { .. }) => {}
        Err(e) => panic!("{step:?}: {e}"),
    }
}

fn seed(s: &Store, n: usize) {
    for k in 0..4 {
        let default = match k {
            0 => Some(json!(false)),
            2 => Some(json!("x")),
            _ => None,
        };
        s.params()
            .create(ParamDef::new(param_name(k), schema(k, default)))
            .unwrap();
    }
    for (i, p) in PROFILES.iter().enumerate() {
        let mut prof = Profile::new(*p);
        prof.params.insert("any".into(), json!(i));
        if i % 2 == 0 {
            prof.params.insert("flag".into(), json!(true));
        }
        s.profiles().create(prof).unwrap();
    }
    for m in 0..n {
        let mut x = Machine::new(format!("m{m}"));
        x.profiles = match m % 5 {
            0 => vec![],
            1 => vec!["p0".into()],
            2 => vec!["p1".into(), "p0".into()],
            3 => vec!["p0".into(), "p2".into(), "p3".into()],
            _ => vec!["p3".into()],
        };
        if m % 3 == 0 {
            x.params.insert("num".into(), json!(m % 4));
        }
        if m % 7 == 0 {
            x.meta.insert("icon".into(), "anchor".into());
        }
        s.machines().create(x).unwrap();
    }
}

fn check(s: &Store, filters: &[String]) {
    for text in filters {
        let Ok(f) = Filter::parse(text) else { continue };
        let indexed = s.machines().count(&f);
        let scanned = s.machines().scan(&f);
        match (indexed, scanned) {
            (Ok(n), Ok(scan)) => {
                assert_eq!(n, scan.len() as u64, "count of `{text}`");
                let listed: Vec<String> = s
                    .machines()
                    .list(&f, &ListOptions::default())
                    .unwrap()
                    .iter()
                    .map(|m| m["Name"].as_str().unwrap_or_default().to_string())
                    .collect();
                let want: Vec<String> = scan.iter().map(|m| m.name.clone()).collect();
                assert_eq!(listed, want, "list of `{text}`");
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("`{text}`: index {a:?} vs scan {:?}", b.map(|v| v.len())),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn indexed_equals_scan(
        filters in proptest::collection::vec(filter_text(), 12),
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        for e in [Engine::Sled, Engine::Memory] {
            let s = e.store();
            seed(&s, 200);
            check(&s, &filters);
            for st in &steps {
                apply(&s, st);
                check(&s, &filters);
            }
            s.verify_indexes().unwrap();
        }
    }
}

fn sorted_listing_matches_scan_order(e: Engine) {
    let s = e.store();
    seed(&s, 30);
    for m in 0..30 {
        if m % 4 != 0 {
            s.machines()
                .set_param(&format!("m{m}"), "num", json!((m * 7) % 5))
                .unwrap();
        }
    }
    let opts = ListOptions {
        sort: Some("num".into()),
        ..Default::default()
    };
    let listed = s.machines().list(&Filter::all(), &opts).unwrap();
    let nums: Vec<Option<f64>> = listed
        .iter()
        .map(|m| m["Params"].get("num").and_then(Value::as_f64))
        .collect();
    let with: Vec<f64> = nums.iter().flatten().copied().collect();
    assert!(with.windows(2).all(|w| w[0] <= w[1]), "{nums:?}");
    assert!(
        nums.iter().skip_while(|n| n.is_some()).all(Option::is_none),
        "missing last: {nums:?}"
    );
    let rev = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                reverse: true,
                ..opts.clone()
            },
        )
        .unwrap();
    let mut back = rev.clone();
    back.reverse();
    assert_eq!(back, listed);
    let page = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                offset: 5,
                limit: Some(3),
                ..opts.clone()
            },
        )
        .unwrap();
    assert_eq!(page, listed[5..8].to_vec());
    // Without sort: creation order, paged off the bitmap, both directions.
    let all = s
        .machines()
        .list(&Filter::all(), &ListOptions::default())
        .unwrap();
    let mut back = all.clone();
    back.reverse();
    let page2 = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                reverse: true,
                offset: 3,
                limit: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page2, back[3..7].to_vec());
    let page3 = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                offset: 28,
                limit: Some(9),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page3, all[28..].to_vec());
    let slim = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                slim: vec!["Params".into(), "Meta".into()],
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(slim[0].get("Params").is_none() && slim[0].get("Meta").is_none());
    let mut full = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let full = full[0].as_object_mut().unwrap();
    full.remove("Params");
    full.remove("Meta");
    assert_eq!(
        slim[0],
        Value::Object(full.clone()),
        "slim is the object less those fields, in order"
    );
    assert_eq!(
        serde_json::to_string(&slim[0]).unwrap(),
        serde_json::to_string(&Value::Object(full.clone())).unwrap()
    );
    let some = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                params: Some(vec!["flag".into()]),
                aggregate: true,
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(some[0]["Params"], json!({"flag": false}));
    // A defaulted param sorts at its default's place.
    let by_flag = s
        .machines()
        .list(
            &Filter::all(),
            &ListOptions {
                sort: Some("flag".into()),
                aggregate: true,
                ..Default::default()
            },
        )
        .unwrap();
    let flags: Vec<bool> = by_flag
        .iter()
        .map(|m| m["Params"]["flag"].as_bool().unwrap())
        .collect();
    assert!(flags.windows(2).all(|w| !w[0] || w[1]), "{flags:?}");
}

/// Readers never see half a write: machines move between two profiles in
/// single writes, so the two counts always add up; each writer sees its own
/// write in the next count.
fn readers_see_whole_writes_and_writers_read_their_own(e: Engine) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const N: usize = 200;
    let s = e.store();
    seed(&s, 0);
    for m in 0..N {
        let mut x = Machine::new(format!("m{m}"));
        x.profiles.push("p0".into());
        s.machines().create(x).unwrap();
    }
    let in_p0 = Filter::parse("Profiles Eq p0").unwrap();
    let in_p1 = Filter::parse("Profiles Eq p1").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, a, b, done) = (s.clone(), in_p0.clone(), in_p1.clone(), done.clone());
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let q = s
                        .machines()
                        .prepare(&Filter::parse("Profiles In p0,p1").unwrap())
                        .unwrap();
                    let either = s.machines().count_query(&q);
                    assert_eq!(
                        either, N as u64,
                        "a machine was in neither or both profiles"
                    );
                    let listed = s
                        .machines()
                        .list(&a.clone().and(b.clone()), &ListOptions::default())
                        .unwrap();
                    assert!(listed.is_empty(), "a machine was in both profiles");
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (s, p1) = (s.clone(), in_p1.clone());
            std::thread::spawn(move || {
                for round in 0..100 {
                    let m = format!("m{}", (round * 2 + w) % N);
                    let to = if round % 2 == 0 { "p1" } else { "p0" };
                    s.machines().update(&m, &json!({"Profiles": [to]})).unwrap();
                    let mine = s
                        .machines()
                        .list(
                            &p1.clone()
                                .and(Filter::parse(&format!("Name Eq {m}")).unwrap()),
                            &ListOptions::default(),
                        )
                        .unwrap();
                    assert_eq!(
                        mine.len(),
                        usize::from(to == "p1"),
                        "writer did not read its own write"
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    s.verify_indexes().unwrap();
}
