//! The filter language through the public API: every operator on every kind
//! of key, DRP's list semantics, type-directed comparison, absent params, the
//! seed's filters, the query-string and argument forms, canonical text, and
//! every error kind with its offset.

use fleetkv::filter::{
    Bound, BoundPred, Expr, Filter, FilterError, FilterErrorKind, Key, ParamTypes, Subject, Test,
};
use fleetkv::model::Kind;
use serde_json::{json, Map, Value};

struct Types;

impl ParamTypes for Types {
    fn schema_type(&self, name: &str) -> Option<&str> {
        match name {
            "cluster/leader" | "cluster/manager" | "flag" => Some("boolean"),
            "rack" | "weight" => Some("number"),
            "count" => Some("integer"),
            "label" => Some("string"),
            "list" => Some("array"),
            "nothing" => Some("null"),
            "obj" => Some("object"),
            _ => None,
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// A machine doc and its effective params.
fn machine() -> (Map<String, Value>, Map<String, Value>) {
    (
        obj(json!({
            "Name": "fred",
            "Uuid": "3e7031fe-3062-45f1-835c-92541bc9cbd3",
            "Description": "the first machine",
            "Address": "10.0.0.7",
            "Workflow": "discover",
            "Runnable": true,
            "Profiles": ["example", "rack-1"],
            "Meta": {"icon": "anchor", "color": "blue", "n": "7"}
        })),
        obj(json!({
            "cluster/leader": true,
            "cluster/manager": false,
            "rack": 12,
            "weight": 2.5,
            "count": 3,
            "label": "true",
            "s3": "3",
            "b": true,
            "bs": "true",
            "zone": "eu-west",
            "num": 5,
            "list": [1, 2],
            "obj": {"k": "v"},
            "nothing": null
        })),
    )
}

fn check(filter: &str, doc: &Map<String, Value>, params: &Map<String, Value>) -> bool {
    let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
    let b = f
        .bind(Kind::Machine, &Types)
        .unwrap_or_else(|e| panic!("{filter}: {e}"));
    b.matches(&Subject { doc, params })
}

fn m(filter: &str) -> bool {
    let (d, p) = machine();
    check(filter, &d, &p)
}

fn table(rows: &[(&str, bool)]) {
    let (d, p) = machine();
    for (f, want) in rows {
        assert_eq!(check(f, &d, &p), *want, "filter {f:?}");
    }
}

fn parse_err(input: &str) -> FilterError {
    match Filter::parse(input) {
        Ok(f) => panic!("{input:?} parsed as {f:?}"),
        Err(e) => e,
    }
}

fn bind_err(input: &str, kind: Kind) -> FilterError {
    let f = Filter::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
    match f.bind(kind, &Types) {
        Ok(b) => panic!("{input:?} bound as {b:?}"),
        Err(e) => e,
    }
}

fn assert_err(e: &FilterError, kind: FilterErrorKind, offset: usize) {
    assert_eq!((e.kind, e.offset), (kind, offset), "{e}");
}

// ---------------------------------------------------------------------------
// Every operator on every kind of key.

#[test]
fn string_fields_every_operator() {
    table(&[
        ("Name Eq fred", true),
        ("Name Eq barney", false),
        ("Name Ne fred", false),
        ("Name Ne barney", true),
        ("Name Lt fz", true),
        ("Name Lt fred", false),
        ("Name Lte fred", true),
        ("Name Gt fre", true),
        ("Name Gt fred", false),
        ("Name Gte fred", true),
        ("Name In barney,fred", true),
        ("Name In barney,wilma", false),
        ("Name Nin barney,fred", false),
        ("Name Nin barney,wilma", true),
        ("Name Re ^fr", true),
        ("Name Re ^re", false),
        ("Name Between a g", true),
        ("Name Between g z", false),
        ("Name Except a g", false),
        ("Name Except g z", true),
        ("Description Eq \"the first machine\"", true),
        ("Description Re first", true),
        ("Workflow Eq discover", true),
        ("Workflow In a,discover", true),
        ("Workflow Gte discover", true),
    ]);
}

#[test]
fn runnable_field() {
    table(&[
        ("Runnable Eq true", true),
        ("Runnable Eq false", false),
        ("Runnable Ne true", false),
        ("Runnable Ne false", true),
        ("Runnable In true,false", true),
        ("Runnable Nin false", true),
        ("Runnable Nin true", false),
    ]);
    for op in ["Lt", "Lte", "Gt", "Gte", "Re"] {
        let e = bind_err(&format!("Runnable {op} true"), Kind::Machine);
        assert_err(&e, FilterErrorKind::UnsupportedOperator, 9);
    }
    let e = bind_err("Runnable Between true false", Kind::Machine);
    assert_err(&e, FilterErrorKind::UnsupportedOperator, 9);
    let e = bind_err("Runnable Eq yes", Kind::Machine);
    assert_err(&e, FilterErrorKind::WrongType, 12);
}

#[test]
fn uuid_field() {
    table(&[
        ("Uuid Eq 3E7031FE-3062-45F1-835C-92541BC9CBD3", true),
        ("Uuid Eq 3e7031fe306245f1835c92541bc9cbd3", true),
        ("Uuid Ne 3e7031fe-3062-45f1-835c-92541bc9cbd3", false),
        ("Uuid In 00000000-0000-0000-0000-000000000000,3e7031fe-3062-45f1-835c-92541bc9cbd3", true),
        ("Uuid Nin 00000000-0000-0000-0000-000000000000", true),
        ("Uuid Gt 00000000-0000-0000-0000-000000000000", true),
        ("Uuid Gte 3e7031fe-3062-45f1-835c-92541bc9cbd3", true),
        ("Uuid Lt 3e7031fe-3062-45f1-835c-92541bc9cbd3", false),
        ("Uuid Lte 3e7031fe-3062-45f1-835c-92541bc9cbd3", true),
        ("Uuid Between 00000000-0000-0000-0000-000000000000 FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", true),
        ("Uuid Except 00000000-0000-0000-0000-000000000000 ffffffff-ffff-ffff-ffff-ffffffffffff", false),
        ("Uuid Re ^3e70", true),
    ]);
    let e = bind_err("Uuid Eq not-a-uuid", Kind::Machine);
    assert_err(&e, FilterErrorKind::WrongType, 8);
    assert!(e.expected.contains("UUID"), "{e}");
}

#[test]
fn address_field_orders_as_ip() {
    table(&[
        ("Address Eq 10.0.0.7", true),
        ("Address Eq 10.0.0.8", false),
        ("Address Ne 10.0.0.7", false),
        ("Address In 10.0.0.1,10.0.0.7", true),
        ("Address Nin 10.0.0.1", true),
        // As text "10.0.0.7" > "10.0.0.10"; as addresses it is smaller.
        ("Address Lt 10.0.0.10", true),
        ("Address Lte 10.0.0.7", true),
        ("Address Gt 9.255.255.255", true),
        ("Address Gte 10.0.0.8", false),
        ("Address Between 10.0.0.1 10.0.0.100", true),
        ("Address Except 10.0.0.1 10.0.0.100", false),
        ("Address Gt ::1", false),
        ("Address Lt ::1", false),
        ("Address Re ^10\\.", true),
    ]);
    let e = bind_err("Address Eq 10.0.0.300", Kind::Machine);
    assert_err(&e, FilterErrorKind::WrongType, 11);
    // The bound value is canonical.
    let b = Filter::parse("Address Eq ::FFFF:1")
        .unwrap()
        .bind(Kind::Machine, &Types)
        .unwrap();
    match b {
        Bound::Pred(BoundPred {
            test: Test::Equals(v),
            ..
        }) => assert_eq!(v, vec![json!("::ffff:1")]),
        other => panic!("{other:?}"),
    }
    // An empty or unparsable stored Address is no address.
    let (mut d, p) = machine();
    d.insert("Address".into(), json!(""));
    assert!(!check("Address Lt 255.255.255.255", &d, &p));
    assert!(check("Address Ne 10.0.0.7", &d, &p));
    d.insert("Address".into(), json!("nonsense"));
    assert!(!check("Address Gt 0.0.0.0", &d, &p));
}

#[test]
fn untyped_params_every_operator() {
    table(&[
        ("zone Eq eu-west", true),
        ("zone Ne eu-west", false),
        ("zone In us-east,eu-west", true),
        ("zone Nin us-east,eu-west", false),
        ("zone Lt f", true),
        ("zone Lte eu-west", true),
        ("zone Gt eu", true),
        ("zone Gte f", false),
        ("zone Between e f", true),
        ("zone Except e f", false),
        ("zone Re ^eu-", true),
        ("Params.zone Eq eu-west", true),
        ("s3 Lt 4", true),
        ("s3 Between 1 5", true),
    ]);
}

#[test]
fn typed_params_every_operator() {
    table(&[
        ("rack Eq 12", true),
        ("rack Eq 12.0", true),
        ("rack Ne 12", false),
        ("rack In 1,12", true),
        ("rack Nin 1,12", false),
        ("rack Lt 13", true),
        ("rack Lt 12", false),
        ("rack Lte 12", true),
        ("rack Gt 11.5", true),
        ("rack Gte 13", false),
        ("rack Between 10 20", true),
        ("rack Between 13 20", false),
        ("rack Except 10 20", false),
        ("rack Except 13 20", true),
        // Numbers compare as numbers: 12 > 9 (as text "12" < "9").
        ("rack Gt 9", true),
        ("count Eq 3", true),
        ("weight Lte 2.5", true),
        ("label Eq true", true),
        ("label Eq \"true\"", true),
        ("label Re ^tr", true),
        ("label Lt u", true),
        ("cluster/leader Eq true", true),
        ("cluster/leader Ne true", false),
        ("cluster/leader In false,true", true),
        ("list Eq [1,2]", true),
        ("list Eq [2,1]", false),
        ("obj Eq {\"k\":\"v\"}", true),
        ("nothing Eq null", true),
    ]);
    let cases = [
        ("cluster/leader Eq fred", FilterErrorKind::WrongType, 18),
        ("cluster/leader Eq \"true\"", FilterErrorKind::WrongType, 18),
        ("rack Eq ten", FilterErrorKind::WrongType, 8),
        ("rack Lt ten", FilterErrorKind::WrongType, 8),
        ("rack Between 1 \"2\"", FilterErrorKind::WrongType, 15),
        ("count Eq 2.5", FilterErrorKind::WrongType, 9),
        ("label Eq 3", FilterErrorKind::WrongType, usize::MAX),
        ("rack In 1,x", FilterErrorKind::WrongType, 10),
        ("rack Re 1", FilterErrorKind::UnsupportedOperator, 5),
        (
            "cluster/leader Lt true",
            FilterErrorKind::UnsupportedOperator,
            15,
        ),
        ("list Gt 1", FilterErrorKind::UnsupportedOperator, 5),
    ];
    for (f, kind, off) in cases {
        if off == usize::MAX {
            // An unquoted 3 is also the string "3": fine for a string param.
            assert!(Filter::parse(f)
                .unwrap()
                .bind(Kind::Machine, &Types)
                .is_ok());
            continue;
        }
        let e = bind_err(f, Kind::Machine);
        assert_err(&e, kind, off);
    }
    let e = bind_err("cluster/leader Eq fred", Kind::Machine);
    assert!(
        e.expected.contains("param cluster/leader is boolean") && e.found == "fred",
        "{e}"
    );
}

#[test]
fn meta_values_every_operator() {
    table(&[
        ("Meta.icon Eq anchor", true),
        ("Meta.icon Ne anchor", false),
        ("Meta.icon In a,anchor", true),
        ("Meta.icon Nin a,anchor", false),
        ("Meta.icon Lt b", true),
        ("Meta.icon Lte anchor", true),
        ("Meta.icon Gt anchor", false),
        ("Meta.icon Gte anchor", true),
        ("Meta.icon Between a b", true),
        ("Meta.icon Except a b", false),
        ("Meta.icon Re ^anc", true),
        // Meta values are strings: 7 matches "7", and orders as text.
        ("Meta.n Eq 7", true),
        ("Meta.n Gt 10", true),
        ("Meta.missing Eq x", false),
        ("Meta.missing Ne x", true),
    ]);
}

#[test]
fn set_keys_every_operator() {
    table(&[
        ("Profiles Eq example", true),
        ("Profiles Eq example,rack-1", true),
        ("Profiles Eq example,other", false),
        ("Profiles Ne example,other", true),
        ("Profiles Ne example,rack-1", false),
        ("Profiles In other,rack-1", true),
        ("Profiles In other,more", false),
        ("Profiles Nin other,more", true),
        ("Profiles Nin other,rack-1", false),
        ("Profiles Re ^rack-", true),
        ("Profiles Re ^zzz", false),
        ("Params Eq rack,zone", true),
        ("Params Eq rack,nope", false),
        ("Params Ne rack,nope", true),
        ("Params In nope,zone", true),
        ("Params Nin nope,zone", false),
        ("Params Re ^cluster/", true),
        ("Meta Eq icon,color", true),
        ("Meta Eq icon,size", false),
        ("Meta Ne icon,size", true),
        ("Meta In size,color", true),
        ("Meta Nin size,shape", true),
        ("Meta Re ^ic", true),
    ]);
    for key in ["Profiles", "Params", "Meta"] {
        for op in ["Lt", "Lte", "Gt", "Gte"] {
            let e = bind_err(&format!("{key} {op} a"), Kind::Machine);
            assert_err(&e, FilterErrorKind::UnsupportedOperator, key.len() + 1);
        }
        for op in ["Between", "Except"] {
            let e = bind_err(&format!("{key} {op} a b"), Kind::Machine);
            assert_err(&e, FilterErrorKind::UnsupportedOperator, key.len() + 1);
        }
    }
}

#[test]
fn drp_list_semantics_table() {
    let (mut d, p) = machine();
    d.insert("Profiles".into(), json!(["a", "b", "c"]));
    let rows = [
        ("Profiles Eq a,b", true),
        ("Profiles Eq a,z", false),
        ("Profiles Ne a,b", false),
        ("Profiles Ne a,z", true),
        ("Profiles In z,b", true),
        ("Profiles In y,z", false),
        ("Profiles Nin y,z", true),
        ("Profiles Nin y,a", false),
        ("Params Eq rack,zone", true),
        ("Params Eq rack,absent", false),
        ("Meta Eq icon,color", true),
        ("Meta Eq icon,absent", false),
    ];
    for (f, want) in rows {
        assert_eq!(check(f, &d, &p), want, "{f}");
    }
    // No profiles, no Meta: the empty set.
    let (d, p) = (Map::new(), Map::new());
    assert!(!check("Profiles Eq a", &d, &p));
    assert!(check("Profiles Ne a", &d, &p));
    assert!(check("Profiles Nin a", &d, &p));
    assert!(!check("Meta In icon", &d, &p));
    assert!(check("Meta Nin icon", &d, &p));
}

#[test]
fn type_directed_comparison() {
    table(&[
        // Unquoted true matches a stored true and a stored "true".
        ("b Eq true", true),
        ("bs Eq true", true),
        // Quoted "true" matches only the string.
        ("b Eq \"true\"", false),
        ("bs Eq \"true\"", true),
        // 3 matches 3 and "3"; "3" only "3".
        ("count Eq 3", true),
        ("s3 Eq 3", true),
        ("s3 Eq \"3\"", true),
        ("zone Eq 3", false),
        // Lt never across types: a number is not less than a string bound.
        ("num Lt zzz", false),
        ("num Lt 9", true),
        ("num Gt 10", false),
        ("zone Lt 99", false),
        ("zone Gt 99", true),
        ("s3 Lt 4", true),
        ("b Lt 2", false),
        ("b Gt 0", false),
    ]);
    let (d, mut p) = machine();
    p.insert("x".into(), json!(3.0));
    assert!(check("x Eq 3", &d, &p));
    p.insert("x".into(), json!(f64::MAX));
    assert!(!check("x Lt 1", &d, &p));
}

#[test]
fn absent_params_match_only_negations() {
    let rows = [
        ("ghost Eq 1", false),
        ("ghost Ne 1", true),
        ("ghost In 1,2", false),
        ("ghost Nin 1,2", true),
        ("ghost Lt 1", false),
        ("ghost Lte 1", false),
        ("ghost Gt 1", false),
        ("ghost Gte 1", false),
        ("ghost Between 1 2", false),
        ("ghost Except 1 2", true),
        ("ghost Re .*", false),
        ("Params.ghost Ne x", true),
    ];
    table(&rows);
    // Empty subject: fields absent too.
    let (d, p) = (Map::new(), Map::new());
    assert!(!check("Name Eq fred", &d, &p));
    assert!(check("Name Ne fred", &d, &p));
    assert!(check("Address Except 1.1.1.1 2.2.2.2", &d, &p));
    assert!(!check("Runnable Eq false", &d, &p));
}

// ---------------------------------------------------------------------------
// Binding shape.

#[test]
fn negations_bind_to_not_of_positive_tests() {
    let b = Filter::parse("x Ne 1 y Nin a,b z Except 1 2")
        .unwrap()
        .bind(Kind::Machine, &Types)
        .unwrap();
    let Bound::And(v) = b else { panic!("{b:?}") };
    assert_eq!(v.len(), 3);
    for (b, want) in v.iter().zip(["Equals", "Equals", "Between"]) {
        let Bound::Not(inner) = b else {
            panic!("{b:?}")
        };
        let Bound::Pred(p) = inner.as_ref() else {
            panic!("{b:?}")
        };
        let got = match &p.test {
            Test::Equals(_) => "Equals",
            Test::Between(..) => "Between",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, want);
    }
    assert!(matches!(
        Filter::all().bind(Kind::Machine, &Types).unwrap(),
        Bound::All
    ));
    assert!(matches!(
        Filter::parse("  ")
            .unwrap()
            .bind(Kind::Profile, &Types)
            .unwrap(),
        Bound::All
    ));
    // Untyped param: unquoted true is [true, "true"]; ordinals carry both.
    let b = Filter::parse("x Eq true y Between 1 b")
        .unwrap()
        .bind(Kind::Machine, &Types)
        .unwrap();
    let Bound::And(v) = b else { panic!() };
    match &v[0] {
        Bound::Pred(BoundPred {
            key: Key::Param(n),
            test: Test::Equals(alts),
        }) => {
            assert_eq!(n, "x");
            assert_eq!(alts, &vec![json!(true), json!("true")]);
        }
        other => panic!("{other:?}"),
    }
    match &v[1] {
        Bound::Pred(BoundPred {
            test: Test::Between(lo, hi),
            ..
        }) => {
            assert_eq!((lo.num, lo.text.as_deref()), (Some(1.0), Some("1")));
            assert_eq!((hi.num, hi.text.as_deref()), (None, Some("b")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn profile_filters_refuse_machine_keys() {
    for (f, off) in [
        ("Uuid Eq 3e7031fe-3062-45f1-835c-92541bc9cbd3", 0),
        ("Name Eq a And Address Eq 1.2.3.4", 14),
        ("Workflow Eq w", 0),
        ("Runnable Eq true", 0),
        ("Name Eq a Or Profiles Eq x", 13),
    ] {
        for kind in [Kind::Profile, Kind::Param] {
            let e = bind_err(f, kind);
            assert_err(&e, FilterErrorKind::UnknownKey, off);
        }
    }
    for f in [
        "Name Eq p",
        "Description Re x",
        "Params Eq a",
        "Meta.icon Eq x",
        "x Eq 1",
    ] {
        Filter::parse(f)
            .unwrap()
            .bind(Kind::Profile, &Types)
            .unwrap();
    }
}

// ---------------------------------------------------------------------------
// The seed's filters.

#[test]
fn seed_filters() {
    let (d, mut p) = machine();
    let f = "cluster/manager Eq false cluster/leader Eq true Profiles Eq example";
    assert!(check(f, &d, &p));
    assert!(check("Profiles Eq example", &d, &p));
    p.insert("cluster/leader".into(), json!(false));
    assert!(!check(f, &d, &p));

    // Splicing a stored cluster/filter with extra words.
    let stored = Filter::parse("cluster/manager Eq false cluster/leader Eq true").unwrap();
    let extra = Filter::parse("Profiles Eq example").unwrap();
    let spliced = stored.and(extra);
    assert_eq!(
        spliced.to_string(),
        "cluster/manager Eq false And cluster/leader Eq true And Profiles Eq example"
    );
    assert_eq!(
        spliced.without_spans(),
        Filter::parse(f).unwrap().without_spans()
    );
    // Splicing is safe whatever the parts are: an Or stays inside.
    let a = Filter::parse("x Eq 1 Or y Eq 2").unwrap();
    let b = Filter::parse("Profiles Eq example").unwrap();
    let s = a.clone().and(b.clone());
    assert_eq!(s.to_string(), "(x Eq 1 Or y Eq 2) And Profiles Eq example");
    let (d2, p2) = (obj(json!({"Profiles": []})), obj(json!({"x": 1})));
    let bound = s.bind(Kind::Machine, &Types).unwrap();
    assert!(!bound.matches(&Subject {
        doc: &d2,
        params: &p2
    }));
    assert_eq!(Filter::all().and(b.clone()), b);
    assert_eq!(b.clone().and(Filter::all()), b);
    assert_eq!(Filter::all().and(Filter::all()), Filter::all());
}

#[test]
fn seed_filters_through_words() {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let f = Filter::from_args(&words(&[
        "cluster/manager",
        "Eq",
        "false",
        "cluster/leader",
        "Eq",
        "true",
        "Profiles",
        "Eq",
        "example",
    ]))
    .unwrap();
    assert_eq!(
        f.without_spans(),
        Filter::parse("cluster/manager Eq false cluster/leader Eq true Profiles Eq example")
            .unwrap()
            .without_spans()
    );
}

// ---------------------------------------------------------------------------
// Boolean expressions.

#[test]
fn boolean_expressions_and_precedence() {
    table(&[
        (
            "Profiles Eq example And (cluster/leader Eq true Or Meta.icon Eq anchor)",
            true,
        ),
        ("Profiles Eq other Or Name Eq fred And rack Eq 12", true),
        ("Profiles Eq other Or Name Eq fred And rack Eq 13", false),
        ("Not Name Eq fred", false),
        ("Not Name Eq fred Or rack Eq 12", true),
        ("not (name eq 1 or Name EQ fred)", false),
        ("NOT NOT Name eQ fred", true),
        ("Name Eq fred AND rack Eq 12", true),
        ("Name Eq fred OR rack Eq 0", true),
        ("Name Eq fred rack Eq 12 Or rack Eq 0", true),
        ("()", true),
        ("Not ()", false),
        ("((Name Eq fred))", true),
    ]);
    let f = Filter::parse("a Eq 1 Or b Eq 2 c Eq 3 And Not d Eq 4").unwrap();
    let Some(Expr::Or(v)) = &f.expr else {
        panic!("{f:?}")
    };
    assert_eq!(v.len(), 2);
    let Expr::And(w) = &v[1] else { panic!("{f:?}") };
    assert_eq!(w.len(), 3);
    assert!(matches!(w[2], Expr::Not(_)));
}

#[test]
fn keys_parse_to_the_right_kind() {
    let key = |s: &str| match Filter::parse(s).unwrap().expr {
        Some(Expr::Pred(p)) => p.key,
        other => panic!("{other:?}"),
    };
    use fleetkv::filter::Field;
    assert_eq!(key("Name Eq a"), Key::Field(Field::Name));
    assert_eq!(key("Uuid Eq a"), Key::Field(Field::Uuid));
    assert_eq!(key("Description Eq a"), Key::Field(Field::Description));
    assert_eq!(key("Address Eq a"), Key::Field(Field::Address));
    assert_eq!(key("Workflow Eq a"), Key::Field(Field::Workflow));
    assert_eq!(key("Runnable Eq a"), Key::Field(Field::Runnable));
    assert_eq!(key("Profiles Eq a"), Key::Profiles);
    assert_eq!(key("Params Eq a"), Key::ParamNames);
    assert_eq!(key("Meta Eq a"), Key::MetaKeys);
    assert_eq!(
        key("Params.cluster/leader Eq a"),
        Key::Param("cluster/leader".into())
    );
    assert_eq!(key("Params.Name Eq a"), Key::Param("Name".into()));
    assert_eq!(key("Params.\"my key\" Eq a"), Key::Param("my key".into()));
    assert_eq!(key("Meta.icon Eq a"), Key::Meta("icon".into()));
    assert_eq!(key("Meta.\"a b\" Eq a"), Key::Meta("a b".into()));
    assert_eq!(
        key("my/data_1.x-y Eq a"),
        Key::Param("my/data_1.x-y".into())
    );
    // Field names are case-sensitive, as in DRP.
    assert_eq!(key("name Eq a"), Key::Param("name".into()));
    assert_eq!(key("Notes Eq a"), Key::Param("Notes".into()));
}

#[test]
fn values_bare_quoted_and_lists() {
    let values = |s: &str| match Filter::parse(s).unwrap().expr {
        Some(Expr::Pred(p)) => p
            .values
            .into_iter()
            .map(|l| (l.text, l.quoted))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(values("x Eq a"), vec![("a".into(), false)]);
    assert_eq!(values("x=a"), vec![("a".into(), false)]);
    assert_eq!(values("x = a"), vec![("a".into(), false)]);
    assert_eq!(
        values("x Eq \"a b\\n\\u00e9\""),
        vec![("a b\né".into(), true)]
    );
    assert_eq!(
        values("Profiles In a, b,\"c d\""),
        vec![
            ("a".into(), false),
            ("b".into(), false),
            ("c d".into(), true)
        ]
    );
    assert_eq!(
        values("x Eq [1, \"a)\"]"),
        vec![("[1, \"a)\"]".into(), false)]
    );
    assert_eq!(values("Name Re a{1,3}"), vec![("a{1,3}".into(), false)]);
    assert_eq!(
        values("rack Between 10 20"),
        vec![("10".into(), false), ("20".into(), false)]
    );
    assert_eq!(
        values("rack Between 10,20"),
        vec![("10".into(), false), ("20".into(), false)]
    );
    assert_eq!(values("x Eq \"And\""), vec![("And".into(), true)]);
    assert_eq!(values("x eq Eq"), vec![("Eq".into(), false)]);
}

// ---------------------------------------------------------------------------
// Query-string form.

#[test]
fn query_form() {
    let q = "Name=Eq(fred)&Params.cluster/leader=Eq(true)&Profiles=In(a,example)";
    let f = Filter::from_query(q).unwrap();
    assert_eq!(
        f.to_string(),
        "Name Eq fred And cluster/leader Eq true And Profiles In a,example"
    );
    assert!(m(&f.to_string()));
    let (d, p) = machine();
    let b = f.bind(Kind::Machine, &Types).unwrap();
    assert!(b.matches(&Subject {
        doc: &d,
        params: &p
    }));

    let same = |q: &str, t: &str| {
        assert_eq!(
            Filter::from_query(q).unwrap().without_spans(),
            Filter::parse(t).unwrap().without_spans(),
            "{q}"
        )
    };
    same("Name=fred", "Name Eq fred");
    same("?Name=fred&&rack=Gt(3)&", "Name Eq fred rack Gt 3");
    same("rack=Between(10,20)", "rack Between 10 20");
    same("rack=except(10,20)", "rack Except 10 20");
    same("Profiles=a,b", "Profiles Eq a,b");
    let f = Filter::from_query("Description=hello+world%21").unwrap();
    let Some(Expr::Pred(p)) = &f.expr else {
        panic!("{f:?}")
    };
    assert_eq!(
        (p.values[0].text.as_str(), p.values[0].quoted),
        ("hello world!", false)
    );
    assert_eq!(f.to_string(), "Description Eq \"hello world!\"");
    same("Name=Eq%28fred%29", "Name Eq fred");
    let f = Filter::from_query("Name=Re(^(a|b)$)").unwrap();
    assert_eq!(f.to_string(), "Name Re \"^(a|b)$\"");
    same("Name=In(\"a,b\",c)", "Name In \"a,b\",c");
    same("Meta.icon=Nin(a,b)", "Meta.icon Nin a,b");
    same("Params.my%2Fkey=1", "my/key Eq 1");
    same("", "");
    // Offsets are in the raw query.
    let e = Filter::from_query("Name=Eq(a)&rack=Equals(3)").unwrap_err();
    assert_err(&e, FilterErrorKind::UnknownOperator, 16);
    assert_eq!(e.found, "Equals");
    let e = Filter::from_query("Name=Eq(a)&rack").unwrap_err();
    assert_err(&e, FilterErrorKind::MissingValue, 15);
    let e = Filter::from_query("Name=a%zz").unwrap_err();
    assert_err(&e, FilterErrorKind::InvalidText, 6);
    let e = Filter::from_query("Name=%ff").unwrap_err();
    assert_err(&e, FilterErrorKind::InvalidText, 5);
    let e = Filter::from_query("rack=Between(1)").unwrap_err();
    assert_err(&e, FilterErrorKind::Arity, 15);
    let e = Filter::from_query("x=In(1,\"a\\q\")").unwrap_err();
    assert_eq!(e.kind, FilterErrorKind::InvalidText, "{e}");
}

// ---------------------------------------------------------------------------
// drpcli words.

#[test]
fn args_form() {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Compared by canonical text: a word with spaces is an unquoted literal
    // that prints quoted (with the same meaning).
    let same = |w: &[&str], t: &str| {
        assert_eq!(
            Filter::from_args(&words(w)).unwrap().to_string(),
            Filter::parse(t).unwrap().to_string(),
            "{w:?}"
        )
    };
    same(&["Name=fred"], "Name Eq fred");
    same(
        &["Description", "Eq", "hello world"],
        "Description Eq \"hello world\"",
    );
    same(&["Name=hello world"], "Name Eq \"hello world\"");
    same(&["Name", "Re", "^(a|b)$"], "Name Re \"^(a|b)$\"");
    same(&["Profiles", "In", "a,b"], "Profiles In a,b");
    same(&["x", "Eq", "\"true\""], "x Eq \"true\"");
    same(&["x", "Eq", ""], "x Eq \"\"");
    same(&["x", "Eq", "", "y", "Eq", "1"], "x Eq \"\" y Eq 1");
    same(&["Profiles", "In", "", "y=1"], "Profiles In \"\" y Eq 1");
    same(&["x", "Eq", "And"], "x Eq \"And\"");
    same(
        &["Profiles Eq a And (x Eq 1 Or y Eq 2)"],
        "Profiles Eq a And (x Eq 1 Or y Eq 2)",
    );
    same(
        &[
            "cluster/manager",
            "Eq",
            "false",
            "(x Eq 1 Or y Eq 2)",
            "rack",
            "Between",
            "1",
            "2",
        ],
        "cluster/manager Eq false (x Eq 1 Or y Eq 2) rack Between 1 2",
    );
    same(
        &["(x", "Eq", "1)", "Or", "y", "Eq", "2"],
        "(x Eq 1) Or y Eq 2",
    );
    same(&[], "");
    // Offsets refer to the words joined with single spaces.
    let e = Filter::from_args(&words(&["Name", "Eq", "fred", "rack", "Equals", "3"])).unwrap_err();
    assert_err(&e, FilterErrorKind::UnknownOperator, 18);
    assert_eq!(e.input, "Name Eq fred rack Equals 3");
    let e = Filter::from_args(&words(&["Name", "Eq"])).unwrap_err();
    assert_err(&e, FilterErrorKind::MissingValue, 7);
}

// ---------------------------------------------------------------------------
// Errors: kind and offset, human-readable expected/found, caret rendering.

#[test]
fn parse_errors_kinds_and_offsets() {
    use FilterErrorKind::*;
    let cases: &[(&str, FilterErrorKind, usize)] = &[
        ("Name Equals fred", UnknownOperator, 5),
        ("Name", UnknownOperator, 4),
        ("Name Eq", MissingValue, 7),
        ("Name Eq )", MissingValue, 8),
        ("Name Eq And x Eq 1", MissingValue, 8),
        ("Profiles In a,", MissingValue, 14),
        ("(Name Eq fred", UnbalancedParen, 13),
        ("Name Eq fred)", UnbalancedParen, 12),
        (")", UnbalancedParen, 0),
        ("Name Eq fred \"x\"", TrailingInput, 13),
        ("Name Eq fred ,", MissingValue, 14),
        ("Name Eq fred =", TrailingInput, 13),
        ("rack Between 10", Arity, 15),
        ("rack Except 10 And x Eq 1", Arity, 15),
        ("rack Between 1,2,3", Arity, 17),
        ("Name Eq a,b", Arity, 10),
        ("Name Re a,b", Arity, 10),
        ("Name Lt a,b", Arity, 10),
        ("Name Eq \"abc", Syntax, 12),
        ("Name Eq \"a\\qb\"", InvalidText, 11),
        ("Name Eq \"a\u{1}\"", InvalidText, 10),
        ("Name Eq [1, 2", Syntax, 8),
        ("Name Eq fred Or", Syntax, 15),
        ("Name Eq fred And", Syntax, 16),
        ("Not", Syntax, 3),
        ("And Name Eq 1", Syntax, 0),
        ("Params. Eq 1", Syntax, 7),
        ("\"x\" Eq 1", Syntax, 0),
        ("Name Eq 1 And Or x Eq 1", Syntax, 14),
    ];
    for (input, kind, offset) in cases {
        let e = parse_err(input);
        assert_eq!((e.kind, e.offset), (*kind, *offset), "{input:?}: {e}");
        assert_eq!(e.input, *input);
    }
    let e = parse_err("Name Equals fred");
    assert_eq!(
        e.expected,
        "an operator (Eq, Ne, Lt, Lte, Gt, Gte, In, Nin, Re, Between, Except)"
    );
    assert_eq!(e.found, "Equals");
}

#[test]
fn limits() {
    let deep = format!("{}x Eq 1{}", "(".repeat(64), ")".repeat(64));
    assert!(Filter::parse(&deep).is_ok());
    let deeper = format!("{}x Eq 1{}", "(".repeat(65), ")".repeat(65));
    assert_err(&parse_err(&deeper), FilterErrorKind::TooDeep, 64);
    let nots = format!("{}x Eq 1", "Not ".repeat(65));
    assert_err(&parse_err(&nots), FilterErrorKind::TooDeep, 256);
    let huge = "(".repeat(1_000_000);
    assert_eq!(parse_err(&huge).kind, FilterErrorKind::TooLong);
    let long = format!("x In {}", vec!["a"; 9000].join(","));
    assert_err(&parse_err(&long), FilterErrorKind::TooLong, 16 * 1024);
    assert_eq!(
        Filter::from_query(&long).unwrap_err().kind,
        FilterErrorKind::TooLong
    );
    let ok = format!("x In {}", vec!["a"; 8000].join(","));
    assert!(Filter::parse(&ok).is_ok());
    // Stack safety: deep input is refused before it can overflow.
    let bomb = "Not (".repeat(3000);
    assert_eq!(parse_err(&bomb).kind, FilterErrorKind::TooDeep);
}

#[test]
fn bind_errors_kinds_and_offsets() {
    use FilterErrorKind::*;
    let cases: &[(&str, FilterErrorKind, usize)] = &[
        ("Name Re \"(unclosed\"", BadRegex, 8),
        ("x Eq 1 And Profiles Re \"[z-a]\"", BadRegex, 23),
        ("Name Re \"a{1000}{1000}\"", BadRegex, 8),
        ("Profiles Lt a", UnsupportedOperator, 9),
        ("cluster/leader Eq fred", WrongType, 18),
    ];
    for (input, kind, offset) in cases {
        let e = bind_err(input, Kind::Machine);
        assert_eq!((e.kind, e.offset), (*kind, *offset), "{input:?}: {e}");
    }
    let e = bind_err("Name Re \"(unclosed\"", Kind::Machine);
    assert!(e.expected.contains("unclosed"), "{e}");
    // Bind errors point into the canonical text.
    let f = Filter::parse("rack   eq     ten").unwrap();
    let e = f.bind(Kind::Machine, &Types).unwrap_err();
    assert_eq!(e.input, "rack Eq ten");
    assert_eq!(e.offset, 8);
}

#[test]
fn error_rendering_has_a_caret() {
    let e = parse_err("cluster/leader Eq true Name Equals fred");
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("unknown operator at byte 28: expected an operator"));
    assert_eq!(lines[1], "  cluster/leader Eq true Name Equals fred");
    assert_eq!(lines[2], format!("  {}^", " ".repeat(28)));
    // Long inputs are clipped around the offset.
    let long = format!("{} Name Equals fred", "x Eq 1 ".repeat(100));
    let e = parse_err(&long);
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].len() < 140, "{text}");
    let caret = lines[2].find('^').unwrap();
    assert_eq!(&lines[1][caret..caret + 6], "Equals");
    // Multi-line inputs show the line with the error.
    let e = parse_err("Name Eq fred\nAnd rack Eq 1\nOr x Equals 2");
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "  Or x Equals 2");
    assert_eq!(lines[2], "       ^");
}

// ---------------------------------------------------------------------------
// Canonical text.

#[test]
fn canonical_text() {
    let canon = |s: &str| Filter::parse(s).unwrap().to_string();
    assert_eq!(canon("name eq  fred"), "name Eq fred");
    assert_eq!(canon("Name=fred"), "Name Eq fred");
    assert_eq!(
        canon("a eq 1 b eq 2 or c eq 3"),
        "a Eq 1 And b Eq 2 Or c Eq 3"
    );
    assert_eq!(
        canon("a eq 1 (b eq 2 or c eq 3)"),
        "a Eq 1 And (b Eq 2 Or c Eq 3)"
    );
    assert_eq!(canon("not a eq 1"), "Not (a Eq 1)");
    assert_eq!(canon("not not a eq 1"), "Not (Not (a Eq 1))");
    assert_eq!(
        canon("(a eq 1 b eq 2) c eq 3"),
        "(a Eq 1 And b Eq 2) And c Eq 3"
    );
    assert_eq!(
        canon("(a eq 1 or b eq 2) or c eq 3"),
        "(a Eq 1 Or b Eq 2) Or c Eq 3"
    );
    assert_eq!(canon("x Eq \"a b\""), "x Eq \"a b\"");
    assert_eq!(canon("x Eq \"ab\""), "x Eq \"ab\"");
    assert_eq!(canon("Params.Name Eq 1"), "Params.Name Eq 1");
    assert_eq!(canon("Params.and Eq 1"), "Params.and Eq 1");
    assert_eq!(canon("Params.\"a b\" Eq 1"), "Params.\"a b\" Eq 1");
    assert_eq!(canon("Params.x Eq 1"), "x Eq 1");
    assert_eq!(canon("rack between 1,2"), "rack Between 1 2");
    assert_eq!(canon("()"), "()");
    assert_eq!(canon(""), "");
    for s in [
        "cluster/manager Eq false cluster/leader Eq true Profiles Eq example",
        "Profiles In cluster-1,cluster-2 And Not (cluster/leader Eq true Or Meta.icon Eq anchor)",
        "x Eq [1, \"a b\"] Meta.\"\" Eq \"\\\"\"",
        "Not (Not ()) Or Not () Or ()",
    ] {
        let f = Filter::parse(s).unwrap();
        let g = Filter::parse(&f.to_string()).unwrap();
        assert_eq!(f.without_spans(), g.without_spans(), "{s}");
    }
}
