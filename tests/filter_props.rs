//! Property tests: random ASTs round-trip through their canonical text;
//! random strings and token soups never panic anywhere in the pipeline.

use fleetkv::filter::{
    Expr, Field, Filter, Key, Literal, Op, ParamTypes, Predicate, Span, Subject,
};
use fleetkv::model::Kind;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

struct Types;

impl ParamTypes for Types {
    fn schema_type(&self, name: &str) -> Option<&str> {
        match name {
            "b" => Some("boolean"),
            "n" => Some("number"),
            "i" => Some("integer"),
            "s" => Some("string"),
            _ => None,
        }
    }
}

fn key() -> impl Strategy<Value = Key> {
    let name = prop_oneof![
        "[a-z][a-z0-9/_.-]{0,10}",
        Just("cluster/leader".to_owned()),
        Just("Name".to_owned()),
        Just("and".to_owned()),
        Just("Params.x".to_owned()),
        ".{0,6}",
    ];
    prop_oneof![
        prop::sample::select(vec![
            Field::Name,
            Field::Uuid,
            Field::Description,
            Field::Address,
            Field::Workflow,
            Field::Runnable
        ])
        .prop_map(Key::Field),
        Just(Key::Profiles),
        Just(Key::ParamNames),
        Just(Key::MetaKeys),
        name.clone().prop_map(Key::Param),
        name.prop_map(Key::Meta),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    let bare = prop_oneof![
        "[A-Za-z0-9_./:=&%*+^$-]{1,10}",
        Just("true".to_owned()),
        Just("null".to_owned()),
        Just("-1.5e3".to_owned()),
        Just("[1, \"a b\"]".to_owned()),
        Just("{\"k\": [true]}".to_owned()),
        Just("a{1,3}".to_owned()),
    ]
    .prop_filter("keywords need quotes", |t| {
        !["and", "or", "not"].contains(&t.to_ascii_lowercase().as_str())
    });
    prop_oneof![
        bare.prop_map(|text| Literal {
            text,
            quoted: false,
            span: Span::default()
        }),
        ".{0,8}".prop_map(|text| Literal {
            text,
            quoted: true,
            span: Span::default()
        }),
    ]
}

fn predicate() -> impl Strategy<Value = Expr> {
    (
        key(),
        prop::sample::select(Op::ALL.to_vec()),
        prop::collection::vec(literal(), 1..4),
    )
        .prop_map(|(key, op, mut values)| {
            match op {
                Op::Between | Op::Except => {
                    while values.len() < 2 {
                        values.push(values[0].clone());
                    }
                    values.truncate(2);
                }
                Op::In | Op::Nin => {}
                Op::Re => values.truncate(1),
                _ if key.is_set() => {}
                _ => values.truncate(1),
            }
            Expr::Pred(Predicate {
                key,
                op,
                values,
                span: Span::default(),
            })
        })
}

fn expr() -> impl Strategy<Value = Expr> {
    predicate().prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
            Just(Expr::And(Vec::new())),
        ]
    })
}

fn subject_maps() -> (Map<String, Value>, Map<String, Value>) {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    (
        obj(
            json!({"Name": "fred", "Address": "10.0.0.1", "Runnable": true,
            "Profiles": ["a", "b"], "Meta": {"icon": "anchor"}}),
        ),
        obj(json!({"b": true, "n": 3, "s": "x", "x": "1"})),
    )
}

/// Everything after parsing must not panic either.
fn exercise(f: &Filter) {
    let text = f.to_string();
    let _ = Filter::parse(&text);
    let (doc, params) = subject_maps();
    for kind in [Kind::Machine, Kind::Profile] {
        match f.bind(kind, &Types) {
            Ok(b) => {
                let _ = b.matches(&Subject {
                    doc: &doc,
                    params: &params,
                });
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

const TOKENS: &[&str] = &[
    "Name",
    "Profiles",
    "Params",
    "Meta",
    "Meta.icon",
    "Params.x",
    "Params.",
    "cluster/leader",
    "Eq",
    "ne",
    "LT",
    "Lte",
    "Gt",
    "Gte",
    "In",
    "Nin",
    "Re",
    "Between",
    "Except",
    "Equals",
    "And",
    "or",
    "NOT",
    "(",
    ")",
    "\"",
    "\"a b\"",
    "\"\\q\"",
    ",",
    "=",
    "&",
    "%",
    "%2",
    "%41",
    "+",
    "true",
    "3",
    "[",
    "]",
    "{",
    "}",
    "[1, 2]",
    " ",
    "\t",
    "\n",
    "é",
    "Eq(",
    "x=",
    "a,b",
    "10.0.0.1",
    "^(a|b)$",
    "?",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (prop::sample::select(TOKENS.to_vec()), prop::bool::ANY),
        0..30,
    )
    .prop_map(|v| {
        let mut s = String::new();
        for (t, space) in v {
            s.push_str(t);
            if space {
                s.push(' ');
            }
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_asts_round_trip(e in expr()) {
        let f = Filter { expr: Some(e) };
        let text = f.to_string();
        let g = Filter::parse(&text)
            .map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
        prop_assert_eq!(f.without_spans(), g.without_spans(), "text {:?}", text);
    }

    #[test]
    fn random_strings_never_panic(s in ".{0,200}") {
        if let Ok(f) = Filter::parse(&s) {
            let g = Filter::parse(&f.to_string());
            prop_assert!(g.is_ok());
            prop_assert_eq!(g.unwrap().without_spans(), f.without_spans());
            exercise(&f);
        }
        if let Ok(f) = Filter::from_query(&s) { exercise(&f); }
        let words: Vec<String> = s.split(' ').map(str::to_owned).collect();
        if let Ok(f) = Filter::from_args(&words) { exercise(&f); }
    }

    #[test]
    fn token_soups_never_panic(s in soup()) {
        match Filter::parse(&s) {
            Ok(f) => {
                let g = Filter::parse(&f.to_string());
                prop_assert!(g.is_ok(), "{:?} -> {:?}", s, f.to_string());
                prop_assert_eq!(g.unwrap().without_spans(), f.without_spans());
                exercise(&f);
            }
            Err(e) => {
                prop_assert!(e.offset <= s.len());
                prop_assert!(s.is_char_boundary(e.offset));
                let _ = e.to_string();
            }
        }
        if let Ok(f) = Filter::from_query(&s) { exercise(&f); }
        let words: Vec<String> = s.split(' ').map(str::to_owned).collect();
        if let Ok(f) = Filter::from_args(&words) { exercise(&f); }
    }
}
