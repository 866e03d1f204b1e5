//! Claims and scoped tokens through the public API: every refusal reads and
//! writes nothing, clock-skew leeway, deleted profiles, wildcards, claim
//! parsing.

use std::time::Duration;

use fleetkv::auth::{now_secs, LEEWAY_SECS};
use fleetkv::{AuthError, Claim, Error, Filter, ListOptions, Machine, Profile, Store};
use serde_json::{json, Value};

const HOUR: Duration = Duration::from_secs(3600);

fn claims(list: &[&str]) -> Vec<Claim> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

/// A store with profile `example` (param `my/data` = "none"), profile
/// `other`, and machines m1 (in example) and m2.
fn fleet() -> Store {
    let s = Store::temporary().unwrap();
    let mut p = Profile::new("example");
    p.params.insert("my/data".into(), json!("none"));
    s.profiles().create(p).unwrap();
    s.profiles().create(Profile::new("other")).unwrap();
    let mut m1 = Machine::new("m1");
    m1.profiles = vec!["example".into()];
    s.machines().create(m1).unwrap();
    s.machines().create(Machine::new("m2")).unwrap();
    s
}

fn snapshot(s: &Store) -> Value {
    json!({
        "machines": s.machines().list_all().unwrap(),
        "profiles": s.profiles().list_all(),
        "params": s.params().list_all(),
        "rev": s.revision(),
    })
}

fn auth_err<T: std::fmt::Debug>(r: fleetkv::Result<T>) -> AuthError {
    match r {
        Err(Error::Auth(e)) => e,
        other => panic!("expected a refused token, got {other:?}"),
    }
}

/// Tries a read and a write through `token`; both must be refused with the
/// same error, and the store must be unchanged.
fn refused_everywhere(s: &Store, token: &str) -> AuthError {
    let before = snapshot(s);
    let e = auth_err(s.with_token(token).map(|_| ()));
    assert_eq!(auth_err(s.verify_token(token)), e);
    assert_eq!(snapshot(s), before, "a refused token changed the store");
    e
}

#[test]
fn profile_token_allows_its_profile() {
    let s = fleet();
    let t = s.generate_profile_token("example", HOUR).unwrap();
    let sc = s.with_token(&t).unwrap();
    let p = sc.profiles();
    assert_eq!(p.get("example").unwrap().name, "example");
    assert!(p.exists("example").unwrap());
    assert_eq!(
        p.get_param("example", "my/data", false).unwrap(),
        Some(json!("none"))
    );
    p.set_param_if("example", "my/data", Some(&json!("none")), json!("foo"))
        .unwrap();
    // The compare-and-set still conflicts when the reference is stale.
    assert!(matches!(
        p.set_param_if("example", "my/data", Some(&json!("none")), json!("bar")),
        Err(Error::Conflict { .. })
    ));
    p.set_param("example", "k", json!(1)).unwrap();
    p.remove_param("example", "k").unwrap();
    p.update("example", &json!({"Description": "shared"}))
        .unwrap();
    p.patch(
        "example",
        &json!([{"op": "test", "path": "/Params/my~1data", "value": "foo"},
                {"op": "replace", "path": "/Params/my~1data", "value": "done"}]),
    )
    .unwrap();
    assert_eq!(
        s.profiles().get("example").unwrap().params["my/data"],
        json!("done")
    );
    let c = s.verify_token(&t).unwrap();
    assert_eq!(
        c.claims,
        claims(&["profiles/get,update,patch,param-set/example"])
    );
    assert!(c.expires_at >= now_secs() + 3599);
    assert!(!c.id.is_empty());
}

#[test]
fn profile_token_needs_the_profile() {
    let s = fleet();
    assert!(matches!(
        s.generate_profile_token("missing", HOUR),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn tokens_are_unique() {
    let s = fleet();
    let a = s.generate_profile_token("example", HOUR).unwrap();
    let b = s.generate_profile_token("example", HOUR).unwrap();
    assert_ne!(a, b);
    assert_ne!(
        s.verify_token(&a).unwrap().id,
        s.verify_token(&b).unwrap().id
    );
}

#[test]
fn forged_with_another_stores_secret() {
    let s = fleet();
    let other = fleet();
    let t = other.generate_token(&claims(&["*/*/*"]), HOUR).unwrap();
    assert_eq!(refused_everywhere(&s, &t), AuthError::BadSignature);
    // And the other way round: this store's tokens mean nothing elsewhere.
    let mine = s.generate_profile_token("example", HOUR).unwrap();
    assert_eq!(refused_everywhere(&other, &mine), AuthError::BadSignature);
}

#[test]
fn tampered_payload() {
    let s = fleet();
    let narrow = s.generate_profile_token("example", HOUR).unwrap();
    let wide = s.generate_token(&claims(&["*/*/*"]), HOUR).unwrap();
    // The wide token's header and payload with the narrow token's signature:
    // what editing the payload of a signed token amounts to.
    let (body, _) = wide.rsplit_once('.').unwrap();
    let (_, sig) = narrow.rsplit_once('.').unwrap();
    let forged = format!("{body}.{sig}");
    assert_eq!(refused_everywhere(&s, &forged), AuthError::BadSignature);
    // Another algorithm in the header: refused before any MAC is computed.
    let hs512 = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS512","typ":"JWT"}
    let (_, rest) = body.split_once('.').unwrap();
    let other_alg = format!("{hs512}.{rest}.{sig}");
    assert_eq!(refused_everywhere(&s, &other_alg), AuthError::BadSignature);
    // `alg: none` (no signature at all) is not even a header we read.
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let unsigned = format!("{none_header}.{rest}.");
    assert!(matches!(
        refused_everywhere(&s, &unsigned),
        AuthError::Malformed { .. }
    ));
}

#[test]
fn malformed_tokens() {
    let s = fleet();
    for t in [
        "",
        "not-a-token",
        "a.b.c",
        "a.b",
        "eyJhbGciOiJIUzI1NiJ9.!!!.xyz",
    ] {
        let e = refused_everywhere(&s, t);
        assert!(matches!(e, AuthError::Malformed { .. }), "{t:?}: {e:?}");
        assert!(
            Error::Auth(e)
                .to_string()
                .starts_with("token refused: malformed"),
            "{t:?}"
        );
    }
}

#[test]
fn expired_and_leeway() {
    let s = fleet();
    let now = now_secs();
    let t = s
        .generate_token_at(
            &claims(&["profiles/*/*"]),
            Duration::from_secs(60),
            now - 62,
        )
        .unwrap();
    // Expired 2 s ago: within the leeway.
    assert!(s.verify_token_at(&t, now).is_ok());
    assert!(s.with_token(&t).unwrap().profiles().get("example").is_ok());
    // Exactly at the edge of the leeway, and one past it.
    assert!(s.verify_token_at(&t, now - 2 + LEEWAY_SECS).is_ok());
    let e = auth_err(s.verify_token_at(&t, now - 1 + LEEWAY_SECS));
    assert_eq!(
        e,
        AuthError::Expired {
            expired_at: now - 2
        }
    );
    // Expired 30 s ago: refused, and through the real clock too.
    let old = s
        .generate_token_at(
            &claims(&["profiles/*/*"]),
            Duration::from_secs(60),
            now - 90,
        )
        .unwrap();
    let e = refused_everywhere(&s, &old);
    assert_eq!(
        e,
        AuthError::Expired {
            expired_at: now - 30
        }
    );
    assert!(Error::Auth(e).to_string().contains("expired"));
}

#[test]
fn not_yet_valid_and_leeway() {
    let s = fleet();
    let now = now_secs();
    // Minted by a clock 2 s ahead: fine. 30 s ahead: not yet valid.
    let ahead = s
        .generate_token_at(&claims(&["*/*/*"]), HOUR, now + 2)
        .unwrap();
    assert!(s.verify_token(&ahead).is_ok());
    let far = s
        .generate_token_at(&claims(&["*/*/*"]), HOUR, now + 30)
        .unwrap();
    assert_eq!(
        refused_everywhere(&s, &far),
        AuthError::NotYetValid {
            not_before: now + 30
        }
    );
    assert!(s.verify_token_at(&far, now + 30).is_ok());
}

/// Runs every checked profile operation on `name`, expecting each refused
/// with the same kind of error, and the store unchanged.
fn all_profile_ops_refused(s: &Store, token: &str, name: &str) -> Vec<AuthError> {
    let before = snapshot(s);
    let sc = s.with_token(token).unwrap();
    let p = sc.profiles();
    let errs = vec![
        auth_err(p.get(name)),
        auth_err(p.exists(name)),
        auth_err(p.params(name, true)),
        auth_err(p.get_param(name, "my/data", false)),
        auth_err(p.update(name, &json!({"Description": "x"}))),
        auth_err(p.update_from(name, &json!({}), &json!({"Description": "x"}))),
        auth_err(p.replace(name, Profile::new(name))),
        auth_err(p.patch(name, &json!([]))),
        auth_err(p.set_param(name, "k", json!(1))),
        auth_err(p.set_param_if(name, "k", None, json!(1))),
        auth_err(p.remove_param(name, "my/data")),
        auth_err(p.delete(name)),
    ];
    assert_eq!(snapshot(s), before, "a refused operation changed the store");
    errs
}

#[test]
fn wrong_profile() {
    let s = fleet();
    let t = s.generate_profile_token("example", HOUR).unwrap();
    let errs = all_profile_ops_refused(&s, &t, "other");
    assert!(errs.iter().all(
        |e| matches!(e, AuthError::WrongObject { specific, .. } if specific == "other")
            || matches!(e, AuthError::WrongAction { .. })
    ));
    let sc = s.with_token(&t).unwrap();
    let e = auth_err(sc.profiles().update("other", &json!({"Description": "x"})));
    assert_eq!(
        e,
        AuthError::WrongObject {
            specific: "other".into(),
            needed: "profiles/update/other".into()
        }
    );
    assert_eq!(
        Error::Auth(e).to_string(),
        "token refused: not for other: needs profiles/update/other"
    );
    // Creating a profile is an action the profile token lacks.
    let before = snapshot(&s);
    assert!(matches!(
        auth_err(sc.profiles().create(Profile::new("new"))),
        AuthError::WrongAction { .. }
    ));
    assert_eq!(snapshot(&s), before);
}

#[test]
fn wrong_action() {
    let s = fleet();
    let t = s
        .generate_token(&claims(&["profiles/get/example"]), HOUR)
        .unwrap();
    let before = snapshot(&s);
    let sc = s.with_token(&t).unwrap();
    assert!(sc.profiles().get("example").is_ok());
    let e = auth_err(sc.profiles().delete("example"));
    assert_eq!(
        e,
        AuthError::WrongAction {
            action: "delete".into(),
            needed: "profiles/delete/example".into()
        }
    );
    assert!(matches!(
        auth_err(sc.profiles().set_param("example", "my/data", json!("x"))),
        AuthError::WrongAction { .. }
    ));
    // Listing needs `list` on `*`.
    assert!(matches!(
        auth_err(sc.profiles().list(&Filter::all(), &ListOptions::default())),
        AuthError::WrongAction { .. }
    ));
    assert!(matches!(
        auth_err(sc.profiles().count(&Filter::all())),
        AuthError::WrongAction { .. }
    ));
    assert_eq!(snapshot(&s), before);
}

#[test]
fn wrong_kind() {
    let s = fleet();
    let t = s.generate_profile_token("example", HOUR).unwrap();
    let before = snapshot(&s);
    let sc = s.with_token(&t).unwrap();
    let e = auth_err(sc.machines().get("m1"));
    assert_eq!(
        e,
        AuthError::WrongKind {
            scope: "machines".into(),
            needed: "machines/get/m1".into()
        }
    );
    assert!(Error::Auth(e).to_string().contains("needs machines/get/m1"));
    assert!(matches!(
        auth_err(sc.machines().set_param("m1", "k", json!(1))),
        AuthError::WrongKind { .. }
    ));
    assert!(matches!(
        auth_err(sc.machines().create(Machine::new("m3"))),
        AuthError::WrongKind { .. }
    ));
    assert!(matches!(
        auth_err(sc.machines().list_all()),
        AuthError::WrongKind { .. }
    ));
    assert!(matches!(
        auth_err(sc.params().list_all()),
        AuthError::WrongKind { .. }
    ));
    assert!(matches!(
        auth_err(sc.params().delete("x")),
        AuthError::WrongKind { .. }
    ));
    assert_eq!(snapshot(&s), before);
}

#[test]
fn deleted_profile_is_not_found() {
    let s = fleet();
    s.profiles().create(Profile::new("gone")).unwrap();
    let t = s.generate_profile_token("gone", HOUR).unwrap();
    s.profiles().delete("gone").unwrap();
    let sc = s.with_token(&t).unwrap();
    assert!(matches!(
        sc.profiles().get("gone"),
        Err(Error::NotFound { .. })
    ));
    assert!(!sc.profiles().exists("gone").unwrap());
    assert!(matches!(
        sc.profiles().set_param("gone", "k", json!(1)),
        Err(Error::NotFound { .. })
    ));
    // Still refused for anything else.
    assert!(matches!(
        auth_err(sc.profiles().get("example")),
        AuthError::WrongObject { .. }
    ));
}

#[test]
fn extra_claims_machines_wildcard() {
    let s = fleet();
    let t = s
        .generate_profile_token_with("example", HOUR, &claims(&["machines/*/*"]))
        .unwrap();
    let sc = s.with_token(&t).unwrap();
    let m = sc.machines();
    assert_eq!(m.list_all().unwrap().len(), 2);
    assert_eq!(m.count(&Filter::all()).unwrap(), 2);
    let members = Filter::parse("Profiles Eq example").unwrap();
    assert_eq!(m.list(&members, &ListOptions::default()).unwrap().len(), 1);
    m.set_param("m2", "cluster/leader", json!(true)).unwrap();
    m.update("m2", &json!({"Workflow": "k3s"})).unwrap();
    assert!(m.exists("m1").unwrap());
    let created = m.create(Machine::new("m3")).unwrap();
    m.delete(&created.uuid.to_string()).unwrap();
    // Still only the one profile.
    assert!(sc.profiles().get("example").is_ok());
    assert!(matches!(
        auth_err(sc.profiles().get("other")),
        AuthError::WrongObject { .. }
    ));
}

#[test]
fn machine_named_by_uuid_or_name() {
    let s = fleet();
    let uuid = s.machines().get("m1").unwrap().uuid.to_string();
    let by_name = s
        .generate_token(&claims(&["machines/get/m1"]), HOUR)
        .unwrap();
    let by_uuid = s
        .generate_token(&[format!("machines/get/{uuid}").parse().unwrap()], HOUR)
        .unwrap();
    for t in [&by_name, &by_uuid] {
        let sc = s.with_token(t).unwrap();
        for addr in ["m1", "Name:m1", uuid.as_str(), &format!("Uuid:{uuid}")] {
            assert!(sc.machines().get(addr).is_ok(), "{addr}");
        }
        assert!(matches!(
            auth_err(sc.machines().get("m2")),
            AuthError::WrongObject { .. }
        ));
    }
}

#[test]
fn everything_wildcard() {
    let s = fleet();
    let t = s.generate_token(&claims(&["*/*/*"]), HOUR).unwrap();
    let sc = s.with_token(&t).unwrap();
    sc.profiles().delete("other").unwrap();
    sc.machines()
        .patch_many(&[("m1".into(), json!([])), ("m2".into(), json!([]))])
        .unwrap();
    sc.params()
        .create(fleetkv::ParamDef::new("p", json!({"type": "string"})))
        .unwrap();
    assert_eq!(sc.params().list_all().unwrap().len(), 1);
    assert_eq!(sc.profiles().list_all().unwrap().len(), 2);
}

#[test]
fn claim_parsing() {
    let ok = [
        "profiles/get,update/example",
        "machines/*/*",
        "*/*/*",
        "params/get/cluster/profile",
        "profiles,machines/list/*",
    ];
    for c in ok {
        assert_eq!(c.parse::<Claim>().unwrap().to_string(), c);
    }
    let c: Claim = "params/get/cluster/profile".parse().unwrap();
    assert!(c.allows("params", "get", "cluster/profile"));
    let c: Claim = "profiles/get,update/a,b".parse().unwrap();
    assert!(c.allows("profiles", "update", "b"));
    assert!(!c.allows("profiles", "update", "*"));
    assert!(!c.allows("machines", "update", "a"));
    for (bad, what) in [
        ("profiles", "three parts"),
        ("profiles/get", "three parts"),
        ("/get/x", "scope part"),
        ("profiles//x", "action part"),
        ("profiles/get/", "specific part"),
        ("profiles/get,,update/x", "action part"),
        ("profile/get/x", "unknown scope \"profile\""),
        ("profiles/read/x", "unknown action \"read\""),
    ] {
        match bad.parse::<Claim>() {
            Err(Error::Auth(AuthError::Malformed { reason })) => {
                assert!(reason.contains(what), "{bad}: {reason}");
                assert!(reason.contains(bad), "{bad}: {reason}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}
