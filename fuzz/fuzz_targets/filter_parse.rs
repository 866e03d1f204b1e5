//! Any bytes: if UTF-8, `Filter::parse`, `Filter::from_query` and
//! `Filter::from_args` never panic; a parsed filter's canonical text parses
//! back to the same AST (spans aside); binding never panics; filters from the
//! other two entry points keep their meaning through their canonical text.
#![no_main]

use fleetkv::filter::{Bound, Expr, Filter, Op, ParamTypes, Subject};
use fleetkv::model::Kind;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

struct Types;

impl ParamTypes for Types {
    fn schema_type(&self, name: &str) -> Option<&str> {
        match name {
            "b" | "cluster/leader" | "cluster/manager" => Some("boolean"),
            "n" | "rack" => Some("number"),
            "i" => Some("integer"),
            "s" => Some("string"),
            "o" => Some("object"),
            _ => None,
        }
    }
}

type Subj = (Map<String, Value>, Map<String, Value>);

fn subjects() -> &'static [Subj] {
    static SUBJECTS: OnceLock<Vec<Subj>> = OnceLock::new();
    SUBJECTS.get_or_init(make_subjects)
}

fn make_subjects() -> Vec<Subj> {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    vec![
        (
            obj(
                json!({"Name": "fred", "Uuid": "3e7031fe-3062-45f1-835c-92541bc9cbd3",
                "Address": "10.0.0.7", "Runnable": true, "Workflow": "w",
                "Profiles": ["example", "a", "b"], "Meta": {"icon": "anchor", "x": "1"}}),
            ),
            obj(
                json!({"cluster/leader": true, "cluster/manager": false, "rack": 12,
                "s": "str", "x": "1", "y": 2, "a": [1, 2], "o": {"k": "v"}}),
            ),
        ),
        (
            obj(json!({"Name": "and", "Address": "", "Profiles": []})),
            obj(json!({"cluster/leader": "true", "n": 3.5, "b": false, "i": -1})),
        ),
        (Map::new(), Map::new()),
    ]
}

fn results(b: &Bound, subs: &[Subj]) -> Vec<bool> {
    subs.iter()
        .map(|(doc, params)| b.matches(&Subject { doc, params }))
        .collect()
}

fn has_re(e: &Expr) -> bool {
    match e {
        Expr::And(v) | Expr::Or(v) => v.iter().any(has_re),
        Expr::Not(x) => has_re(x),
        Expr::Pred(p) => p.op == Op::Re,
    }
}

/// Regexes short enough to compile quickly (no counted repetition).
fn cheap_re(e: &Expr) -> bool {
    match e {
        Expr::And(v) | Expr::Or(v) => v.iter().all(cheap_re),
        Expr::Not(x) => cheap_re(x),
        Expr::Pred(p) => {
            p.op != Op::Re
                || p.values
                    .iter()
                    .all(|l| l.text.len() <= 12 && !l.text.contains('{'))
        }
    }
}

/// Canonical text must parse and bind to a filter with the same meaning.
///
/// Regex compilation (instrumented) dominates the cost of an execution, so a
/// filter with `Re` is bound once, not compared, and only when its patterns
/// are short: the round trip of its AST is still checked for `Filter::parse`
/// results. (Regex compile errors and limits are unit-tested.)
fn same_meaning(f: &Filter, origin: &str) {
    if let Some(e) = f.expr.as_ref().filter(|e| has_re(e)) {
        if cheap_re(e) {
            if let Err(e) = f.bind(Kind::Machine, &Types) {
                let _ = e.to_string();
            }
        }
        return;
    }
    let text = f.to_string();
    let g = match Filter::parse(&text) {
        Ok(g) => g,
        Err(e) => panic!("canonical text {text:?} of {origin:?} does not parse:\n{e}"),
    };
    let subs = subjects();
    // Profiles differ only in refusing machine keys: bind those once, below.
    {
        let kind = Kind::Machine;
        match (f.bind(kind, &Types), g.bind(kind, &Types)) {
            (Ok(a), Ok(b)) => assert_eq!(
                results(&a, subs),
                results(&b, subs),
                "{origin:?} and its canonical text {text:?} differ"
            ),
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "{origin:?} and {text:?} bind differently: {:?} / {:?}",
                a.err(),
                b.err()
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Filter::parse(s) {
        let text = f.to_string();
        match Filter::parse(&text) {
            Ok(g) => assert_eq!(
                f.without_spans(),
                g.without_spans(),
                "{s:?} prints as {text:?}, which parses differently"
            ),
            Err(e) => panic!("canonical text {text:?} of {s:?} does not parse:\n{e}"),
        }
        same_meaning(&f, s);
        if !f.expr.as_ref().is_some_and(has_re) {
            if let Err(e) = f.bind(Kind::Profile, &Types) {
                let _ = e.to_string();
            }
        }
    } else if let Err(e) = Filter::parse(s) {
        let _ = e.to_string();
    }
    match Filter::from_query(s) {
        Ok(f) => same_meaning(&f, s),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let args: Vec<String> = s.split('\t').map(str::to_owned).collect();
    match Filter::from_args(&args) {
        Ok(f) => same_meaning(&f, s),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
