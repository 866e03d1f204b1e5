//! The indexes against an oracle: random stores (machines, overlapping
//! profiles, `global`, definitions with defaults), random filters over every
//! operator and And/Or/Not nesting, random interleaved writes to machines,
//! profiles and definitions. After every step, for machines and for profiles,
//! the indexed count and list (and for machines the crate's reference scan)
//! equal what `mod oracle` below computes from the stored documents and the
//! parsed filter, without the binder.

use fleetkv::{Error, Filter, Kind, ListOptions, Machine, ParamDef, Profile, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

#[macro_use]
mod engines;
use engines::Engine;

on_each_engine!(
    sorted_listing_matches_scan_order,
    readers_see_whole_writes_and_writers_read_their_own,
    profile_writes_leave_no_stale_postings,
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
/// values of their type, params and Meta with anything. For profiles, only
/// keys profiles have, but for the odd `any_leaf` (which the oracle and the
/// store must then refuse alike).
fn leaf(profiles: bool) -> BoxedStrategy<String> {
    let set_keys = if profiles {
        vec!["Params", "Meta"]
    } else {
        vec!["Profiles", "Params", "Meta"]
    };
    let set_key = proptest::sample::select(set_keys);
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
    let mut scalar_keys = vec!["Name", "Description", "Meta.icon"];
    if !profiles {
        scalar_keys.push("Workflow");
    }
    scalar_keys.extend(PARAMS);
    let scalar_key = proptest::sample::select(scalar_keys);
    let sets = prop_oneof![
        3 => (set_key.clone(), set_op, member.clone(), member, any::<bool>()).prop_map(|(k, op, a, b, two)| {
            if two { format!("{k} {op} {a},{b}") } else { format!("{k} {op} {a}") }
        }),
        1 => (set_key, regex()).prop_map(|(k, re)| format!("{k} Re \"{re}\"")),
    ];
    let scalars = (
        scalar_key,
        proptest::sample::select(vec![
            "Eq", "Ne", "Lt", "Lte", "Gt", "Gte", "In", "Nin", "Re", "Between", "Except",
        ]),
        literal(),
        literal(),
        regex(),
    )
        .prop_map(|(k, op, a, b, re)| match op {
            "Between" | "Except" => format!("{k} {op} {a} {b}"),
            "In" | "Nin" => format!("{k} {op} {a},{b}"),
            "Re" => format!("{k} Re \"{re}\""),
            _ => format!("{k} {op} {a}"),
        });
    if profiles {
        return prop_oneof![1 => any_leaf(), 4 => sets, 6 => scalars].boxed();
    }
    let ip = proptest::sample::select(vec!["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "::2"]);
    prop_oneof![
        1 => any_leaf(),
        4 => sets,
        1 => (proptest::sample::select(vec!["Eq", "Ne"]), any::<bool>()).prop_map(|(op, b)| format!("Runnable {op} {b}")),
        1 => (proptest::sample::select(vec!["Eq", "Ne", "Lt", "Lte", "Gt", "Gte"]), ip.clone(), ip.clone(), any::<bool>())
            .prop_map(|(op, a, b, between)| if between { format!("Address Between {a} {b}") } else { format!("Address {op} {a}") }),
        6 => scalars,
    ]
    .boxed()
}

/// Leaves that bind on machines and profiles alike, whatever the
/// definitions: string fields, Meta values and the untyped param with every
/// operator, and the set keys profiles have with theirs.
fn binding_leaf() -> BoxedStrategy<String> {
    let scalar_key = proptest::sample::select(vec![
        "Name",
        "Description",
        "Meta.icon",
        "any",
        "Params.any",
    ]);
    let member = proptest::sample::select(vec!["p0", "icon", "flag", "any", "num", "x"]);
    prop_oneof![
        2 => (scalar_key, proptest::sample::select(Vec::from(fleetkv::filter::Op::ALL)), literal(), literal(), regex())
            .prop_map(|(k, op, a, b, re)| match op.name() {
                "Between" | "Except" => format!("{k} {op} {a} {b}", op = op.name()),
                "In" | "Nin" => format!("{k} {op} {a},{b}", op = op.name()),
                "Re" => format!("{k} Re \"{re}\""),
                op => format!("{k} {op} {a}"),
            }),
        1 => (proptest::sample::select(vec!["Params", "Meta"]), proptest::sample::select(vec!["Eq", "Ne", "In", "Nin"]), member.clone(), member)
            .prop_map(|(k, op, a, b)| format!("{k} {op} {a},{b}")),
        1 => (proptest::sample::select(vec!["Params", "Meta"]), regex()).prop_map(|(k, re)| format!("{k} Re \"{re}\"")),
    ]
    .boxed()
}

fn filter_text(leaf: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    leaf.prop_recursive(3, 12, 3, |inner| {
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
    ProfileMeta(usize, Option<String>),
    Fields(usize, String, bool, String),
    Delete(usize),
    Create(usize),
}

impl Step {
    /// Whether the step writes a profile (or `global`), which moves the
    /// postings of the profile index and of its members.
    fn touches_profiles(&self) -> bool {
        matches!(
            self,
            Step::SetProfileParam(..)
                | Step::RemoveProfileParam(..)
                | Step::SetGlobal(..)
                | Step::ProfileMeta(..)
        )
    }
}

fn step() -> impl Strategy<Value = Step> {
    let m = 0..MACHINES + 5;
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
        1 => (0..4usize, proptest::option::of(prop_oneof![Just("anchor".to_string()), Just("x".to_string())])).prop_map(|(p, v)| Step::ProfileMeta(p, v)),
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
        Step::ProfileMeta(p, v) => s
            .profiles()
            .update(PROFILES[*p], &json!({"Meta": {"icon": v}}))
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
        if i % 3 == 0 {
            prof.meta.insert("icon".into(), "anchor".into());
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

/// Filters the oracle compared with the store, per kind (the rest were
/// refused, by both, with the same error kind).
#[derive(Debug, Default, Clone, Copy)]
struct Compared {
    machines: usize,
    profiles: usize,
}

/// Each filter on machines and on profiles: the indexed count and the
/// profile listing (and with `full`, the machine listing and the crate's
/// reference scan) equal the oracle's answer; a filter the oracle refuses
/// is refused by the store with the same kind of error.
fn check(s: &Store, filters: &[(String, Filter)], full: bool) -> Compared {
    let world = oracle::World::read(s);
    let mut compared = Compared::default();
    for (text, f) in filters {
        let Some(expr) = &f.expr else {
            panic!("`{text}` parsed to the empty filter");
        };
        for kind in [Kind::Machine, Kind::Profile] {
            let want = world.answer(expr, kind);
            // Listing machines reads every match's record: with `full` only.
            let (count, listed) = match kind {
                Kind::Machine => (
                    s.machines().count(f),
                    full.then(|| s.machines().list(f, &ListOptions::default())),
                ),
                _ => (
                    s.profiles().count(f),
                    Some(s.profiles().list(f, &ListOptions::default())),
                ),
            };
            let names = |v: Vec<Value>| -> Vec<String> {
                v.iter()
                    .map(|o| o["Name"].as_str().unwrap_or_default().to_string())
                    .collect()
            };
            match want {
                Err(refused) => {
                    let listed = listed.map(|l| ("list", l.map(drop)));
                    for (what, got) in [("count", count.map(drop))].into_iter().chain(listed) {
                        match got {
                            Err(Error::Filter(e)) if e.kind == refused => {}
                            other => panic!(
                                "{kind} {what} of `{text}`: the oracle refuses it ({refused:?}), the store answered {other:?}"
                            ),
                        }
                    }
                }
                Ok(want) => {
                    assert_eq!(
                        count.unwrap(),
                        want.len() as u64,
                        "{kind} count of `{text}`"
                    );
                    if let Some(listed) = listed {
                        assert_eq!(names(listed.unwrap()), want, "{kind} list of `{text}`");
                    }
                    if kind == Kind::Machine {
                        if full {
                            let scanned: Vec<String> = s
                                .machines()
                                .scan(f)
                                .unwrap()
                                .into_iter()
                                .map(|m| m.name)
                                .collect();
                            assert_eq!(scanned, want, "reference scan of `{text}`");
                        }
                        compared.machines += 1;
                    } else {
                        compared.profiles += 1;
                    }
                }
            }
        }
    }
    compared
}

/// Proptest cases: 256 in CI; more for a long run, e.g.
/// `FLEETKV_ORACLE_CASES=20000 cargo test --release --test index_oracle`.
fn cases() -> u32 {
    std::env::var("FLEETKV_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Filters per case over machine keys (and half as many over profile
/// keys); most bind, some are refused (wrong types, machine keys on
/// profiles), which the oracle must predict.
const FILTERS: usize = 16;
/// Filters per case that bind on both kinds: so many at least must be
/// compared on each, or the oracle is refusing what the store must answer.
const BINDING_FILTERS: usize = 6;

/// Machines in each case's store.
const MACHINES: usize = 30;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn indexed_equals_oracle(
        machine_texts in proptest::collection::vec(filter_text(leaf(false)), FILTERS),
        profile_texts in proptest::collection::vec(filter_text(leaf(true)), FILTERS / 2),
        binding_texts in proptest::collection::vec(filter_text(binding_leaf()), BINDING_FILTERS),
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        // The parser is shared with the store, so it is no oracle: a filter
        // that does not parse is left out, and too few left fails the case.
        let texts = [machine_texts, profile_texts, binding_texts].concat();
        let filters: Vec<(String, Filter)> = texts
            .iter()
            .filter_map(|t| Filter::parse(t).ok().map(|f| (t.clone(), f)))
            .collect();
        for e in [Engine::Sled, Engine::Memory] {
            let s = e.store();
            seed(&s, MACHINES);
            let compared = check(&s, &filters, true);
            prop_assert!(
                compared.machines >= BINDING_FILTERS && compared.profiles >= BINDING_FILTERS,
                "only {compared:?} of {} filters compared: {texts:#?}", texts.len()
            );
            for (n, st) in steps.iter().enumerate() {
                apply(&s, st);
                // Machine listings and the reference scan decode records:
                // at the start and the end only.
                check(&s, &filters, n + 1 == steps.len());
                // Profile changes move postings in both indexes: a stale
                // one must show here even if no filter asks about it.
                if st.touches_profiles() {
                    s.verify_indexes().unwrap();
                }
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
    let names = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|m| m["Name"].as_str().unwrap().to_string())
            .collect()
    };
    // What a sort by `key` must give: the reference scan's machines by their
    // effective value (false before true), those without one last, ties in
    // the scan's (creation) order.
    let scan_sorted = |f: &Filter, key: &str| -> Vec<String> {
        let mut by: Vec<(Option<f64>, String)> = s
            .machines()
            .scan(f)
            .unwrap()
            .into_iter()
            .map(|m| {
                let eff = s.machines().params(&m.name, true).unwrap();
                let v = eff.get(key);
                let v = v.and_then(|v| v.as_f64().or(v.as_bool().map(f64::from)));
                (v, m.name)
            })
            .collect();
        by.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (x, y) => y.is_some().cmp(&x.is_some()),
        });
        by.into_iter().map(|(_, n)| n).collect()
    };
    let opts = ListOptions {
        sort: Some("num".into()),
        ..Default::default()
    };
    let listed = s.machines().list(&Filter::all(), &opts).unwrap();
    assert_eq!(names(&listed), scan_sorted(&Filter::all(), "num"));
    let some_profiles = Filter::parse("Profiles In p1,p3 Or num Lt 2").unwrap();
    let filtered = s.machines().list(&some_profiles, &opts).unwrap();
    assert_eq!(names(&filtered), scan_sorted(&some_profiles, "num"));
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
    let scanned: Vec<String> = s
        .machines()
        .scan(&Filter::all())
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names(&all), scanned);
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
    assert_eq!(names(&by_flag), scan_sorted(&Filter::all(), "flag"));
}

/// `verify_indexes` after each kind of profile write, with no query in
/// between: a posting the write should have removed fails it.
fn profile_writes_leave_no_stale_postings(e: Engine) {
    let s = e.store();
    seed(&s, 10);
    let writes: [&dyn Fn(&Store); 6] = [
        &|s| {
            drop(
                s.profiles()
                    .set_param("p1", "any", json!("changed"))
                    .unwrap(),
            )
        },
        &|s| drop(s.profiles().set_param("global", "num", json!(7)).unwrap()),
        &|s| drop(s.profiles().set_param("global", "num", json!(8)).unwrap()),
        &|s| drop(s.profiles().remove_param("p0", "flag").unwrap()),
        &|s| {
            drop(
                s.profiles()
                    .update("p0", &json!({"Meta": {"icon": "x"}}))
                    .unwrap(),
            )
        },
        &|s| {
            drop(
                s.profiles()
                    .update("p2", &json!({"Description": "d"}))
                    .unwrap(),
            )
        },
    ];
    for w in writes {
        w(&s);
        s.verify_indexes().unwrap();
    }
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
                // Writer w alone moves machines m{w}, m{w+2}, … m{w+48}:
                // each visit moves its machine to the profile it is not in
                // (all start in p0), so every round is a real change.
                for round in 0..100 {
                    let m = format!("m{}", (round % 25) * 2 + w);
                    let to = if (round / 25) % 2 == 0 { "p1" } else { "p0" };
                    let before = s.machines().get(&m).unwrap().profiles;
                    assert_ne!(before, [to], "round {round} would not move {m}");
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

/// The oracle: the parsed filter evaluated on the stored documents, written
/// from DESIGN.md §3 and independent of `src/filter/bind.rs` (no Ne→Not(Eq)
/// rewrite, no pre-converted alternatives, no bound ordinals). Effective
/// params are computed here from the documents (§1).
mod oracle {
    use std::cell::RefCell;
    use std::cmp::Ordering;
    use std::collections::{BTreeMap, HashMap};
    use std::net::IpAddr;

    use regex::Regex;

    use fleetkv::filter::{Expr, Field, FilterErrorKind, Key, Literal, Op, Predicate};
    use fleetkv::{Kind, Store};
    use serde_json::{Map, Value};

    /// One object as the oracle sees it.
    pub struct Doc {
        pub name: String,
        pub json: Map<String, Value>,
        pub params: Map<String, Value>,
    }

    /// Everything a filter can look at, read from the store's records.
    pub struct World {
        /// Schema `type` per defined param.
        types: BTreeMap<String, Option<String>>,
        /// Machines in id (creation) order.
        pub machines: Vec<Doc>,
        /// Profiles by name.
        pub profiles: Vec<Doc>,
        /// Compiled patterns (compiling per document would dominate the run).
        regexes: RefCell<HashMap<String, Regex>>,
    }

    fn object(v: impl serde::Serialize) -> Map<String, Value> {
        match serde_json::to_value(v) {
            Ok(Value::Object(m)) => m,
            other => panic!("not an object: {other:?}"),
        }
    }

    impl World {
        pub fn read(s: &Store) -> World {
            let defs = s.params().list_all();
            let types = defs
                .iter()
                .map(|d| {
                    let ty = d
                        .schema
                        .get("type")
                        .and_then(Value::as_str)
                        .map(String::from);
                    (d.name.clone(), ty)
                })
                .collect();
            let defaults: Map<String, Value> = defs
                .iter()
                .filter_map(|d| d.schema.get("default").map(|v| (d.name.clone(), v.clone())))
                .collect();
            let profiles: BTreeMap<String, fleetkv::Profile> = s
                .profiles()
                .list_all()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect();
            // First found wins: own, then each layer in order, then defaults.
            let resolve = |layers: Vec<&Map<String, Value>>| {
                let mut eff = Map::new();
                for layer in layers.into_iter().chain([&defaults]) {
                    for (k, v) in layer {
                        eff.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                eff
            };
            // The reference scan of `All` reads every stored record.
            let machines = s
                .machines()
                .scan(&fleetkv::Filter::all())
                .unwrap()
                .into_iter()
                .map(|m| {
                    let mut layers = vec![&m.params];
                    layers.extend(m.profiles.iter().map(|p| &profiles[p].params));
                    layers.push(&profiles[fleetkv::GLOBAL_PROFILE].params);
                    let params = resolve(layers);
                    Doc {
                        name: m.name.clone(),
                        json: object(&m),
                        params,
                    }
                })
                .collect();
            let profiles = profiles
                .values()
                .map(|p| Doc {
                    name: p.name.clone(),
                    json: object(p),
                    params: resolve(vec![&p.params]),
                })
                .collect();
            World {
                types,
                machines,
                profiles,
                regexes: RefCell::default(),
            }
        }

        /// The names of the `kind` objects `e` matches, in the store's
        /// listing order, or the error the filter must be refused with.
        pub fn answer(&self, e: &Expr, kind: Kind) -> Result<Vec<String>, FilterErrorKind> {
            self.valid(e, kind)?;
            let docs = match kind {
                Kind::Machine => &self.machines,
                _ => &self.profiles,
            };
            Ok(docs
                .iter()
                .filter(|d| self.eval(e, d))
                .map(|d| d.name.clone())
                .collect())
        }

        fn ty(&self, key: &Key) -> Option<&str> {
            match key {
                Key::Param(n) => self.types.get(n).and_then(|t| t.as_deref()),
                _ => None,
            }
        }

        /// §3 Errors: keys the kind lacks, operators a key does not take,
        /// literals of the wrong type, bad regexes, wrong arity.
        fn valid(&self, e: &Expr, kind: Kind) -> Result<(), FilterErrorKind> {
            use FilterErrorKind as K;
            let p = match e {
                Expr::And(v) | Expr::Or(v) => {
                    return v.iter().try_for_each(|x| self.valid(x, kind));
                }
                Expr::Not(x) => return self.valid(x, kind),
                Expr::Pred(p) => p,
            };
            let machine_only = matches!(
                p.key,
                Key::Profiles
                    | Key::Field(Field::Uuid | Field::Address | Field::Workflow | Field::Runnable)
            );
            if kind != Kind::Machine && machine_only {
                return Err(K::UnknownKey);
            }
            if p.values.is_empty() {
                return Err(K::MissingValue);
            }
            let regex = |l: &Literal| Regex::new(&l.text).map(drop).map_err(|_| K::BadRegex);
            if p.key.is_set() {
                return match p.op {
                    Op::Eq | Op::Ne | Op::In | Op::Nin => Ok(()),
                    Op::Re => regex(&p.values[0]),
                    _ => Err(K::UnsupportedOperator),
                };
            }
            let ordered = |l: &Literal| -> Result<(), K> {
                match (&p.key, self.ty(&p.key)) {
                    (Key::Field(Field::Runnable), _) => Err(K::UnsupportedOperator),
                    (Key::Field(Field::Address), _) => ip(l).map(drop).ok_or(K::WrongType),
                    (_, Some("number" | "integer")) => json_reading(l)
                        .filter(Value::is_number)
                        .map(drop)
                        .ok_or(K::WrongType),
                    (_, Some("boolean" | "null" | "array" | "object")) => {
                        Err(K::UnsupportedOperator)
                    }
                    _ => Ok(()),
                }
            };
            match p.op {
                Op::Eq | Op::Ne | Op::In | Op::Nin => {
                    p.values.iter().try_for_each(|l| match &p.key {
                        Key::Field(Field::Runnable) => matches!(l.text.as_str(), "true" | "false")
                            .then_some(())
                            .ok_or(K::WrongType),
                        Key::Field(Field::Address) => ip(l).map(drop).ok_or(K::WrongType),
                        Key::Param(_) => (!self.readings(&p.key, l).is_empty())
                            .then_some(())
                            .ok_or(K::WrongType),
                        _ => Ok(()),
                    })
                }
                Op::Lt | Op::Lte | Op::Gt | Op::Gte => ordered(&p.values[0]),
                Op::Between | Op::Except => match p.values.as_slice() {
                    [lo, hi] => ordered(lo).and_then(|()| ordered(hi)),
                    _ => Err(K::Arity),
                },
                Op::Re => {
                    let strings_only = matches!(p.key, Key::Field(Field::Runnable))
                        || matches!(
                            self.ty(&p.key),
                            Some("number" | "integer" | "boolean" | "null" | "array" | "object")
                        );
                    if strings_only {
                        Err(K::UnsupportedOperator)
                    } else {
                        regex(&p.values[0])
                    }
                }
            }
        }

        /// The values a literal can mean for a param (§3 Values): its JSON
        /// reading when unquoted and not a string, and the text as a string;
        /// a typed param keeps the readings of its type.
        fn readings(&self, key: &Key, l: &Literal) -> Vec<Value> {
            let ty = self.ty(key);
            json_reading(l)
                .into_iter()
                .chain([Value::String(l.text.clone())])
                .filter(|v| match ty {
                    Some("boolean") => v.is_boolean(),
                    Some("number") => v.is_number(),
                    Some("integer") => v.as_f64().is_some_and(|f| f.fract() == 0.0),
                    Some("string") => v.is_string(),
                    Some("array") => v.is_array(),
                    Some("object") => v.is_object(),
                    Some("null") => v.is_null(),
                    _ => true,
                })
                .collect()
        }

        fn eval(&self, e: &Expr, d: &Doc) -> bool {
            match e {
                Expr::And(v) => v.iter().all(|x| self.eval(x, d)),
                Expr::Or(v) => v.iter().any(|x| self.eval(x, d)),
                Expr::Not(x) => !self.eval(x, d),
                Expr::Pred(p) => {
                    let holds = self.positive(p, d);
                    match p.op {
                        Op::Ne | Op::Nin | Op::Except => !holds,
                        _ => holds,
                    }
                }
            }
        }

        /// Eq/In/Lt/…/Between/Re as written; Ne/Nin/Except are its complement.
        fn positive(&self, p: &Predicate, d: &Doc) -> bool {
            let texts = || p.values.iter().map(|l| l.text.as_str());
            if p.key.is_set() {
                let set: Vec<&str> = match &p.key {
                    Key::Profiles => d.json["Profiles"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default(),
                    Key::ParamNames => d.params.keys().map(String::as_str).collect(),
                    _ => d
                        .json
                        .get("Meta")
                        .and_then(Value::as_object)
                        .map(|m| m.keys().map(String::as_str).collect())
                        .unwrap_or_default(),
                };
                return match p.op {
                    Op::Eq | Op::Ne => texts().all(|t| set.contains(&t)),
                    Op::In | Op::Nin => texts().any(|t| set.contains(&t)),
                    _ => self.regex(&p.values[0], |re| set.iter().any(|s| re.is_match(s))),
                };
            }
            let stored = match &p.key {
                Key::Field(Field::Address) => {
                    d.json.get("Address").filter(|a| a.as_str() != Some(""))
                }
                Key::Field(f) => d.json.get(f.name()),
                Key::Meta(k) => d.json.get("Meta").and_then(|m| m.get(k)),
                Key::Param(n) => d.params.get(n),
                _ => unreachable!("set keys are above"),
            };
            let Some(v) = stored else {
                // No value (and no default): only the negations hold.
                return false;
            };
            let cmp = |l: &Literal| self.compare(&p.key, v, l);
            match p.op {
                Op::Eq | Op::Ne | Op::In | Op::Nin => {
                    p.values.iter().any(|l| self.equal(&p.key, v, l))
                }
                Op::Lt => cmp(&p.values[0]) == Some(Ordering::Less),
                Op::Lte => matches!(cmp(&p.values[0]), Some(Ordering::Less | Ordering::Equal)),
                Op::Gt => cmp(&p.values[0]) == Some(Ordering::Greater),
                Op::Gte => matches!(cmp(&p.values[0]), Some(Ordering::Greater | Ordering::Equal)),
                Op::Between | Op::Except => {
                    matches!(cmp(&p.values[0]), Some(Ordering::Greater | Ordering::Equal))
                        && matches!(cmp(&p.values[1]), Some(Ordering::Less | Ordering::Equal))
                }
                Op::Re => {
                    let s = v.as_str();
                    s.is_some_and(|s| self.regex(&p.values[0], |re| re.is_match(s)))
                }
            }
        }

        /// `f` of the pattern `l` (valid: `valid` checked it).
        fn regex(&self, l: &Literal, f: impl FnOnce(&Regex) -> bool) -> bool {
            let mut cache = self.regexes.borrow_mut();
            let re = cache
                .entry(l.text.clone())
                .or_insert_with(|| Regex::new(&l.text).unwrap());
            f(re)
        }

        fn equal(&self, key: &Key, v: &Value, l: &Literal) -> bool {
            match key {
                Key::Field(Field::Runnable) => v.as_bool() == Some(l.text == "true"),
                Key::Field(Field::Address) => stored_ip(v).is_some() && stored_ip(v) == ip(l),
                Key::Param(_) => self.readings(key, l).iter().any(|r| match (v, r) {
                    // Numbers by value: 3 equals 3.0.
                    (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                    _ => v == r,
                }),
                _ => v.as_str() == Some(l.text.as_str()),
            }
        }

        /// How the stored value orders against the literal, when they are of
        /// one type: numbers as numbers, strings as strings, addresses as
        /// addresses of one family; never across types.
        fn compare(&self, key: &Key, v: &Value, l: &Literal) -> Option<Ordering> {
            if matches!(key, Key::Field(Field::Address)) {
                return match (stored_ip(v)?, ip(l)?) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => Some(a.cmp(&b)),
                    (IpAddr::V6(a), IpAddr::V6(b)) => Some(a.cmp(&b)),
                    _ => None,
                };
            }
            let typed_number = matches!(self.ty(key), Some("number" | "integer"));
            match v {
                Value::Number(n) if matches!(key, Key::Param(_)) => {
                    n.as_f64()?.partial_cmp(&json_reading(l)?.as_f64()?)
                }
                Value::String(s) if !typed_number => Some(s.as_bytes().cmp(l.text.as_bytes())),
                _ => None,
            }
        }
    }

    /// An unquoted literal read as JSON, when that is not a string.
    fn json_reading(l: &Literal) -> Option<Value> {
        if l.quoted {
            return None;
        }
        serde_json::from_str::<Value>(&l.text)
            .ok()
            .filter(|v| !v.is_string())
    }

    fn ip(l: &Literal) -> Option<IpAddr> {
        l.text.trim().parse().ok()
    }

    fn stored_ip(v: &Value) -> Option<IpAddr> {
        v.as_str()?.trim().parse().ok()
    }
}
