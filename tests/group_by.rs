//! DRP's `group-by` + `range-only` (counts per distinct value) against
//! counting the documents: random fleets whose values come from the machine,
//! its profiles, `global` and a definition's default, grouped by one and by
//! two keys, through the library, the HTTP API and both CLIs.

mod common;

use std::collections::BTreeMap;

use common::{embedded, Server};
use fleetkv::{Filter, GroupCount, ListOptions, Machine, ParamDef, Profile, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Values a param may take (absent is another choice); `1` and `1.0` are one
/// value, `"1"` another.
fn value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!("leader"))),
        Just(Some(json!("worker"))),
        Just(Some(json!(1))),
        Just(Some(json!(1.0))),
        Just(Some(json!("1"))),
        Just(Some(json!(true))),
        Just(Some(Value::Null)),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    role: Option<Value>,
    zone: Option<Value>,
    color: Option<&'static str>,
    profile: Option<usize>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        value(),
        value(),
        prop::option::of(prop::sample::select(vec!["red", "blue"])),
        prop::option::of(0..2usize),
    )
        .prop_map(|(role, zone, color, profile)| Spec {
            role,
            zone,
            color,
            profile,
        })
}

/// A value's identity as the index sees it: numbers by value, then type.
fn canon(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("n{}", n.as_f64().unwrap()),
        other => other.to_string(),
    }
}

/// Counts per value of `keys` (effective params, `Meta.KEY` or `Workflow`)
/// read from the listed documents, nested like the answer.
fn expected(docs: &[Value], keys: &[&str]) -> BTreeMap<String, (u64, BTreeMap<String, u64>)> {
    let get = |doc: &Value, key: &str| -> Value {
        let v = if let Some(p) = key.strip_prefix("Params.") {
            doc["Params"].get(p)
        } else if let Some(m) = key.strip_prefix("Meta.") {
            doc["Meta"].get(m)
        } else {
            doc.get(key)
        };
        v.cloned().unwrap_or(Value::Null)
    };
    let mut out: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    for doc in docs {
        let e = out.entry(canon(&get(doc, keys[0]))).or_default();
        e.0 += 1;
        if let Some(k) = keys.get(1) {
            *e.1.entry(canon(&get(doc, k))).or_default() += 1;
        }
    }
    out
}

fn answered(groups: &[GroupCount]) -> BTreeMap<String, (u64, BTreeMap<String, u64>)> {
    groups
        .iter()
        .map(|g| {
            let sub = g
                .groups
                .iter()
                .map(|s| (canon(&s.value), s.count))
                .collect();
            (canon(&g.value), (g.count, sub))
        })
        .collect()
}

fn fleet(specs: &[Spec], zone_default: bool, global_zone: Option<Value>) -> Store {
    let store = Store::in_memory().unwrap();
    if zone_default {
        store
            .params()
            .create(ParamDef::new(
                "zone",
                json!({"type": ["string", "number", "boolean", "null"], "default": "dc1"}),
            ))
            .unwrap();
    }
    for (i, role) in [json!("worker"), json!(1)].into_iter().enumerate() {
        let mut p = Profile::new(format!("p{i}"));
        p.params.insert("role".into(), role);
        store.profiles().create(p).unwrap();
    }
    if let Some(z) = global_zone {
        store
            .profiles()
            .update("global", &json!({"Params": {"zone": z}}))
            .unwrap();
    }
    for (i, s) in specs.iter().enumerate() {
        let mut m = Machine::new(format!("m{i:03}"));
        if let Some(v) = &s.role {
            m.params.insert("role".into(), v.clone());
        }
        if let Some(v) = &s.zone {
            m.params.insert("zone".into(), v.clone());
        }
        if let Some(c) = s.color {
            m.meta.insert("color".into(), c.into());
        }
        if let Some(p) = s.profile {
            m.profiles.push(format!("p{p}"));
        }
        m.workflow = if i % 3 == 0 {
            "discover".into()
        } else {
            String::new()
        };
        store.machines().create(m).unwrap();
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn group_counts_equal_counting_the_documents(
        specs in prop::collection::vec(spec(), 0..40),
        zone_default in any::<bool>(),
        global_zone in value(),
        subset in any::<bool>(),
    ) {
        let store = fleet(&specs, zone_default, global_zone);
        let filter = if subset { Filter::parse("Name Re ^m0[0-2]").unwrap() } else { Filter::all() };
        let docs = store
            .machines()
            .list(&filter, &ListOptions { aggregate: true, ..ListOptions::default() })
            .unwrap();
        for keys in [
            vec!["Params.role"],
            vec!["Params.zone"],
            vec!["Params.role", "Params.zone"],
            vec!["Meta.color", "Params.role"],
            vec!["Workflow", "Meta.color"],
        ] {
            let by: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let groups = store.machines().group_count(&filter, &by).unwrap();
            prop_assert_eq!(answered(&groups), expected(&docs, &keys), "{:?}", keys);
            // In value order, each value once, no empty group.
            let order: Vec<String> = groups.iter().map(|g| canon(&g.value)).collect();
            let mut unique = order.clone();
            unique.dedup();
            prop_assert_eq!(order.len(), unique.len());
            prop_assert!(groups.iter().all(|g| g.count > 0));
            prop_assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), docs.len() as u64);
        }
    }
}

#[test]
fn profiles_group_by_their_own_params() {
    let store = fleet(&[], false, None);
    let groups = store
        .profiles()
        .group_count(&Filter::all(), &["Params.role".into()])
        .unwrap();
    // global has no role; p1 holds 1, p0 "worker".
    let got: Vec<(Value, u64)> = groups.iter().map(|g| (g.value.clone(), g.count)).collect();
    assert_eq!(
        got,
        vec![(Value::Null, 1), (json!(1), 1), (json!("worker"), 1)]
    );
}

#[test]
fn bad_group_keys_are_refused_with_the_key_named() {
    let store = fleet(&[], false, None);
    for (by, want) in [
        (vec!["Profiles"], "cannot group by \"Profiles\""),
        (vec!["Params"], "cannot group by \"Params\""),
        (vec![], "give at least one key"),
    ] {
        let by: Vec<String> = by.into_iter().map(String::from).collect();
        let e = store
            .machines()
            .group_count(&Filter::all(), &by)
            .unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// The server's answer, the remote CLI's and the embedded CLI's agree.
#[test]
fn http_and_both_clis_answer_the_same_groups() {
    let s = Server::start(&[]);
    for (i, role) in ["leader", "worker", "worker", "worker"].iter().enumerate() {
        let m = json!({"Name": format!("m{i}"), "Params": {"cluster/role": role}});
        assert_eq!(s.json("POST", "/machines", &m).0, 201);
    }
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "bare"})).0, 201);
    let (st, v, total) = s.call(
        "GET",
        "/machines?group-by=Params.cluster%2Frole&range-only=True&Name=Re(%5Em)",
        None,
        &[],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!([{"Value": "leader", "Count": 1}, {"Value": "worker", "Count": 3}])
    );
    assert_eq!(total, Some(4));
    let (st, v, _) = s.call(
        "GET",
        "/machines?group-by=Params.cluster/role&group-by=Name&range-only=true",
        None,
        &[],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v[0],
        json!({"Value": null, "Count": 1, "Groups": [{"Value": "bare", "Count": 1}]})
    );
    assert_eq!(v[2]["Count"], 3);
    assert_eq!(v[2]["Groups"].as_array().unwrap().len(), 3);

    for (q, want) in [
        ("/machines?group-by=Name", "add range-only=true"),
        ("/machines?range-only=true", "give group-by=KEY"),
        (
            "/machines?group-by=Profiles&range-only=true",
            "cannot group by \"Profiles\"",
        ),
        (
            "/params?group-by=Name&range-only=true",
            "counts machines and profiles",
        ),
        ("/machines?group-by=Name&range-only=maybe", "range-only"),
    ] {
        let (st, v, _) = s.call("GET", q, None, &[]);
        assert_eq!(st, 400, "{q}: {v}");
        assert!(
            v["Messages"][0].as_str().unwrap().contains(want),
            "{q}: {v}"
        );
    }

    let args = [
        "machines",
        "count",
        "Name",
        "Re",
        "^m",
        "--group-by",
        "Params.cluster/role",
    ];
    let (code, remote, err) = s.cli(&args);
    assert_eq!(code, 0, "{err}");
    let (code, dir) = s.stop();
    assert_eq!(code, 0);
    let (code, local, err) = embedded(&dir.path().join("db"), &args, None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(remote, local);
    let v: Value = serde_json::from_str(&local).unwrap();
    assert_eq!(
        v,
        json!([{"Value": "leader", "Count": 1}, {"Value": "worker", "Count": 3}])
    );
}
