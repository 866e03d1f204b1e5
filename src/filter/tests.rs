//! Unit tests of the filter internals (lexing helpers, literal typing,
//! scalar comparison). The language end to end is tested in
//! `tests/filter_lang.rs` and `tests/filter_props.rs`.

use serde_json::json;

use super::bind::json_of;
use super::parse::{bare, is_bare_param, is_bare_value, quoted_string};
use super::*;

fn lit(text: &str, quoted: bool) -> Literal {
    Literal {
        text: text.to_owned(),
        quoted,
        span: Span::default(),
    }
}

fn ord(num: Option<f64>, text: Option<&str>) -> Ordinal {
    Ordinal {
        num,
        text: text.map(str::to_owned),
        ip: None,
    }
}

#[test]
fn bare_words_and_groups() {
    assert_eq!(bare("abc def"), Ok((" def", "abc")));
    assert_eq!(bare("a,b"), Ok((",b", "a")));
    assert_eq!(bare("a)"), Ok((")", "a")));
    assert_eq!(bare("[1, [2, \"]\"]]x y"), Ok((" y", "[1, [2, \"]\"]]x")));
    assert_eq!(bare("a{1,3} b"), Ok((" b", "a{1,3}")));
    assert_eq!(bare("{\"a\": \"}\\\"\"}"), Ok(("", "{\"a\": \"}\\\"\"}")));
    assert_eq!(bare("x[1, 2"), Err(1));
    assert_eq!(bare("\"q\""), Ok(("\"q\"", "")));
    assert!(is_bare_value("a=b&c%"));
    assert!(!is_bare_value(""));
    assert!(!is_bare_value("AND"));
    assert!(!is_bare_value("a b"));
    assert!(!is_bare_value("\"a\""));
    assert!(is_bare_param("cluster/leader"));
    assert!(!is_bare_param("Name"));
    assert!(!is_bare_param("Params.x"));
    assert!(!is_bare_param("not"));
    assert!(!is_bare_param("a b"));
}

#[test]
fn quoted_strings() {
    assert_eq!(
        quoted_string("\"a b\" rest").unwrap(),
        (" rest", "a b".into())
    );
    assert_eq!(
        quoted_string("\"\\u00e9\\\"\\\\\"x").unwrap(),
        ("x", "é\"\\".into())
    );
    assert_eq!(
        quoted_string("\"abc").unwrap_err().0,
        FilterErrorKind::Syntax
    );
    assert_eq!(
        quoted_string("\"\\ud800\"").unwrap_err().0,
        FilterErrorKind::InvalidText
    );
    assert_eq!(
        quoted_string("\"a\nb\"").unwrap_err().0,
        FilterErrorKind::InvalidText
    );
    // A backslash before a multi-byte char must not split it.
    assert!(quoted_string("\"\\é\"").is_err());
}

#[test]
fn literal_json_reading() {
    assert_eq!(json_of(&lit("true", false)), Some(json!(true)));
    assert_eq!(json_of(&lit("-1.5", false)), Some(json!(-1.5)));
    assert_eq!(json_of(&lit("null", false)), Some(json!(null)));
    assert_eq!(json_of(&lit("[1,2]", false)), Some(json!([1, 2])));
    assert_eq!(json_of(&lit("true", true)), None);
    assert_eq!(json_of(&lit("fred", false)), None);
    assert_eq!(json_of(&lit("\"s\"", false)), None);
    assert_eq!(json_of(&lit("1 ", false)), None);
    assert_eq!(json_of(&lit("01", false)), None);
    assert_eq!(json_of(&lit("", false)), None);
}

#[test]
fn scalar_equality() {
    let eq = Test::Equals(vec![json!(3), json!("3")]);
    assert!(eq.matches_scalar(&json!(3)));
    assert!(eq.matches_scalar(&json!(3.0)));
    assert!(eq.matches_scalar(&json!("3")));
    assert!(!eq.matches_scalar(&json!("3.0")));
    assert!(!eq.matches_scalar(&json!(true)));
    let b = Test::Equals(vec![json!(true)]);
    assert!(b.matches_scalar(&json!(true)));
    assert!(!b.matches_scalar(&json!("true")));
    assert!(!b.matches_scalar(&json!(1)));
    let a = Test::Equals(vec![json!({"a": [1, 2]})]);
    assert!(a.matches_scalar(&json!({"a": [1, 2]})));
    assert!(!a.matches_scalar(&json!({"a": [2, 1]})));
    assert!(Test::Equals(vec![json!(null)]).matches_scalar(&json!(null)));
    assert!(!Test::Equals(vec![]).matches_scalar(&json!(null)));
    assert!(!Test::HasAll(vec![]).matches_scalar(&json!("x")));
}

#[test]
fn scalar_ordering_never_crosses_types() {
    let lt10 = Test::Less(ord(Some(10.0), Some("10")), false);
    assert!(lt10.matches_scalar(&json!(9)));
    assert!(!lt10.matches_scalar(&json!(10)));
    assert!(lt10.matches_scalar(&json!("1")));
    assert!(!lt10.matches_scalar(&json!("9")));
    assert!(!lt10.matches_scalar(&json!(true)));
    assert!(!lt10.matches_scalar(&json!(null)));
    assert!(!lt10.matches_scalar(&json!([1])));
    let lte_num_only = Test::Less(ord(Some(10.0), None), true);
    assert!(lte_num_only.matches_scalar(&json!(10)));
    assert!(!lte_num_only.matches_scalar(&json!("1")));
    let gt_text = Test::Greater(ord(None, Some("b")), false);
    assert!(gt_text.matches_scalar(&json!("c")));
    assert!(!gt_text.matches_scalar(&json!(5)));
    let nan = Test::Greater(ord(Some(f64::NAN), None), true);
    assert!(!nan.matches_scalar(&json!(1)));
    let between = Test::Between(ord(Some(1.0), Some("1")), ord(None, Some("b")));
    assert!(!between.matches_scalar(&json!(5)));
    assert!(between.matches_scalar(&json!("a")));
    let ip = |s: &str| Ordinal {
        num: None,
        text: None,
        ip: Some(s.parse().unwrap()),
    };
    let lt = Test::Less(ip("10.0.0.10"), false);
    assert!(lt.matches_scalar(&json!("10.0.0.9")));
    assert!(!lt.matches_scalar(&json!("::1")));
    assert!(!lt.matches_scalar(&json!("")));
    assert!(!lt.matches_scalar(&json!("bogus")));
    assert!(!lt.matches_scalar(&json!(1)));
    let v6 = Test::Between(ip("::1"), ip("::ffff"));
    assert!(v6.matches_scalar(&json!("::2")));
    assert!(!v6.matches_scalar(&json!("0.0.0.2")));
    let re = Test::Matches(Regex::new("^a").unwrap());
    assert!(re.matches_scalar(&json!("abc")));
    assert!(!re.matches_scalar(&json!(1)));
}

#[test]
fn set_tests() {
    let set = ["a", "b"];
    assert!(Test::HasAll(vec!["a".into(), "b".into()]).matches_set(set));
    assert!(!Test::HasAll(vec!["a".into(), "c".into()]).matches_set(set));
    assert!(Test::HasAll(vec![]).matches_set(set));
    assert!(Test::HasAny(vec!["c".into(), "b".into()]).matches_set(set));
    assert!(!Test::HasAny(vec![]).matches_set(set));
    assert!(Test::AnyMatches(Regex::new("^b$").unwrap()).matches_set(set));
    assert!(!Test::Equals(vec![json!("a")]).matches_set(set));
}

#[test]
fn evaluator_connectives() {
    let doc = Map::new();
    let params = Map::new();
    let s = Subject {
        doc: &doc,
        params: &params,
    };
    assert!(Bound::All.matches(&s));
    assert!(Bound::And(vec![]).matches(&s));
    assert!(!Bound::Or(vec![]).matches(&s));
    assert!(Bound::Not(Box::new(Bound::Or(vec![]))).matches(&s));
    assert!(Bound::Or(vec![Bound::All, Bound::Not(Box::new(Bound::All))]).matches(&s));
}

#[test]
fn op_and_key_names() {
    for op in Op::ALL {
        assert_eq!(Op::from_name(&op.name().to_uppercase()), Some(op));
        assert_eq!(op.to_string(), op.name());
    }
    assert_eq!(Op::from_name("Equals"), None);
    assert_eq!(Key::Param("a b".into()).to_string(), "Params.\"a b\"");
    assert_eq!(Key::Meta("".into()).to_string(), "Meta.\"\"");
    assert_eq!(Key::Param("Profiles".into()).to_string(), "Params.Profiles");
}
