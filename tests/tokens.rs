//! Tokens that cannot outgrow their parent (issue 17 part 4).
//!
//! Minting through a token needs `profiles/token/NAME`, carries only claims
//! the minter holds and never expires later than the minter — in the
//! library, over HTTP (`POST /api/v3/profiles/{id}/token`) and in
//! `.GenerateProfileToken` of a template rendered by a token holder; the
//! admin key and users stay the root of trust. And one authorization
//! decision for the library and the server: a matrix of token × machine
//! alias × verb, judged by the server (a real `fleetkv serve`) and by a
//! `Scoped` handle on a copy of the same store, both against the claim
//! semantics computed directly.

use std::path::Path;
use std::time::Duration;

use fleetkv::auth::{now_secs, TokenClaims};
use fleetkv::{
    AuthError, Claim, Error, Machine, Profile, RenderContext, Store, Template, TemplateErrorKind,
    TokenMinter,
};
use serde_json::{json, Map, Value};

mod common;

use common::{copy_dir, Server, BIN};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: u64 = 86_400;

fn claims(list: &[&str]) -> Vec<Claim> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

/// Profiles `example` and `other`; machine m1 (in example), m2, and a
/// machine whose Name is m1's Uuid in upper case — an address the store
/// reads as m1's Uuid.
fn fleet(s: &Store) {
    s.profiles().create(Profile::new("example")).unwrap();
    s.profiles().create(Profile::new("other")).unwrap();
    let mut m1 = Machine::new("m1");
    m1.profiles = vec!["example".into()];
    let m1 = s.machines().create(m1).unwrap();
    s.machines().create(Machine::new("m2")).unwrap();
    let shadow = m1.uuid.to_string().to_uppercase();
    s.machines().create(Machine::new(shadow)).unwrap();
}

fn auth_err<T: std::fmt::Debug>(r: fleetkv::Result<T>) -> AuthError {
    match r {
        Err(Error::Auth(e)) => e,
        other => panic!("expected a refused token, got {other:?}"),
    }
}

/// A token's payload, read without verifying (the tests check `exp`).
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT");
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in part.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {part}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    serde_json::from_slice(&bytes).unwrap()
}

fn exp(token: &str) -> u64 {
    payload(token)["exp"].as_u64().unwrap()
}

fn iat(token: &str) -> u64 {
    payload(token)["iat"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------
// The library

#[test]
fn a_profile_token_mints_nothing() {
    let s = Store::temporary().unwrap();
    fleet(&s);
    // The issue's case: a 60 s profile token asking for a day.
    let parent = s
        .generate_profile_token("example", Duration::from_secs(60))
        .unwrap();
    let sc = s.with_token(&parent).unwrap();
    let e = auth_err(sc.generate_profile_token("example", Duration::from_secs(DAY)));
    assert!(matches!(e, AuthError::WrongAction { .. }), "{e:?}");
    assert_eq!(e.to_string(), "may not token: needs profiles/token/example");
    // The template minter of a token holder is the same rule.
    let e = auth_err(TokenMinter::profile_token(&sc, "example", DAY));
    assert_eq!(e.to_string(), "may not token: needs profiles/token/example");
}

#[test]
fn minted_tokens_expire_no_later_than_the_minter() {
    let s = Store::temporary().unwrap();
    fleet(&s);
    let now = now_secs();
    let parent = s
        .generate_token_at(
            &claims(&["profiles/*/example"]),
            Duration::from_secs(60),
            now,
        )
        .unwrap();
    let sc = s.with_claims(s.verify_token_at(&parent, now).unwrap());
    // Longer than the parent has: cut to the parent's expiry.
    let child = sc
        .generate_profile_token_at("example", Duration::from_secs(DAY), &[], now)
        .unwrap();
    let c = s.verify_token_at(&child, now).unwrap();
    assert_eq!(c.expires_at, now + 60);
    assert_eq!(c.claims, vec![Claim::profile("example").unwrap()]);
    // Shorter: as asked.
    let short = sc
        .generate_profile_token_at("example", Duration::from_secs(10), &[], now)
        .unwrap();
    assert_eq!(s.verify_token_at(&short, now).unwrap().expires_at, now + 10);
    // A chain does not extend it: a child that may mint again still ends
    // with the root token.
    let minter = sc
        .generate_profile_token_at(
            "example",
            Duration::from_secs(DAY),
            &claims(&["profiles/token/example"]),
            now + 30,
        )
        .unwrap();
    let sc2 = s.with_claims(s.verify_token_at(&minter, now + 30).unwrap());
    let grandchild = sc2
        .generate_profile_token_at("example", Duration::from_secs(DAY), &[], now + 50)
        .unwrap();
    assert_eq!(
        s.verify_token_at(&grandchild, now + 50).unwrap().expires_at,
        now + 60
    );
    // The child without the token claim mints nothing.
    let c = s.with_claims(s.verify_token_at(&child, now).unwrap());
    auth_err(c.generate_profile_token_at("example", Duration::from_secs(1), &[], now));
    // The owner is the root of trust: its ttl is not cut.
    let owned = s
        .generate_profile_token("example", Duration::from_secs(DAY))
        .unwrap();
    let o = s.verify_token(&owned).unwrap();
    assert_eq!(o.expires_at - o.issued_at, DAY);
}

#[test]
fn minted_claims_are_the_minters_own() {
    let s = Store::temporary().unwrap();
    fleet(&s);
    let mint = |held: &[&str], profile: &str, extra: &[&str]| {
        let t = s.generate_token(&claims(held), HOUR).unwrap();
        s.with_token(&t)
            .unwrap()
            .generate_profile_token_with(profile, HOUR, &claims(extra))
    };
    // The profile token's own claims must be covered: here param-set is not.
    let e = auth_err(mint(
        &["profiles/token,get,update,patch/example"],
        "example",
        &[],
    ));
    assert_eq!(
        e.to_string(),
        "may not param-set: needs profiles/param-set/example"
    );
    // Extra claims too.
    let e = auth_err(mint(&["profiles/*/example"], "example", &["machines/*/*"]));
    assert!(matches!(e, AuthError::WrongKind { .. }), "{e:?}");
    let e = auth_err(mint(
        &["profiles/*/example", "machines/get/m1"],
        "example",
        &["machines/get,update/m1"],
    ));
    assert_eq!(e.to_string(), "may not update: needs machines/update/m1");
    let t = mint(
        &["profiles/*/example", "machines/get/m1"],
        "example",
        &["machines/get/m1"],
    )
    .unwrap();
    assert_eq!(
        s.verify_token(&t).unwrap().claims,
        claims(&[
            "profiles/get,update,patch,param-set/example",
            "machines/get/m1"
        ])
    );
    // Another profile: the token claim names objects.
    let e = auth_err(mint(&["profiles/*/example"], "other", &[]));
    assert_eq!(e.to_string(), "not for other: needs profiles/token/other");
    // A missing profile is not found only to a caller whose claims cover
    // it; anyone else is refused without learning whether it exists.
    assert!(matches!(
        mint(&["profiles/*/*"], "missing", &[]),
        Err(Error::NotFound { .. })
    ));
    auth_err(mint(&["profiles/*/example"], "missing", &[]));
}

fn render_with(s: &Store, minter: &dyn TokenMinter, text: &str) -> Result<String, Box<Error>> {
    let m = s.machines().get("m1").unwrap();
    let params: Map<String, Value> = s.machines().params("m1", true).unwrap();
    let t = Template::parse("t", text).unwrap();
    t.render(&RenderContext {
        machine: &m,
        params: &params,
        templates: std::slice::from_ref(&t),
        minter,
    })
    .map_err(|e| Box::new(Error::from(e)))
}

#[test]
fn generate_profile_token_in_a_template_rendered_by_a_token() {
    let s = Store::temporary().unwrap();
    fleet(&s);
    let text = r#"{{ .GenerateProfileToken "example" 86400 }}"#;
    let parent = s
        .generate_token(&claims(&["profiles/*/example"]), Duration::from_secs(60))
        .unwrap();
    let sc = s.with_token(&parent).unwrap();
    let out = render_with(&s, &sc, text).unwrap();
    assert_eq!(exp(&out), exp(&parent), "cut to the renderer's expiry");
    assert_eq!(
        s.verify_token(&out).unwrap().claims,
        vec![Claim::profile("example").unwrap()]
    );
    // A profile token renders no token.
    let profile = s.generate_profile_token("example", HOUR).unwrap();
    let e = render_with(&s, &s.with_token(&profile).unwrap(), text).unwrap_err();
    match *e {
        Error::Template(ref t) => {
            assert_eq!(t.kind, TemplateErrorKind::TokenMinting);
            assert!(t.found.contains("needs profiles/token/example"), "{t}");
        }
        ref other => panic!("{other:?}"),
    }
    // The owner's store mints as asked.
    let out = render_with(&s, &s, text).unwrap();
    assert_eq!(exp(&out) - iat(&out), DAY);
}

// ---------------------------------------------------------------------------
// Over HTTP

/// Builds the fleet in `db`, mints `tokens` there (claims and ttl), and
/// returns them; the store is closed when this returns.
fn seed(db: &Path, tokens: &[(&[&str], u64)]) -> Vec<String> {
    let s = Store::open(db).unwrap();
    fleet(&s);
    let out = tokens
        .iter()
        .map(|(c, ttl)| {
            s.generate_token(&claims(c), Duration::from_secs(*ttl))
                .unwrap()
        })
        .collect();
    s.flush().unwrap();
    out
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn mint(s: &Server, auth: &str, profile: &str, ttl: u64) -> (u16, Value) {
    let (st, v, _) = s.call(
        "POST",
        &format!("/profiles/{profile}/token?ttl={ttl}"),
        None,
        &[("Authorization", auth)],
    );
    (st, v)
}

#[test]
fn http_minting_follows_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let t = seed(
        &db,
        &[
            (&["profiles/get,update,patch,param-set/example"], 60),
            (&["profiles/*/example"], 60),
            (&["profiles/token/example"], 3600),
        ],
    );
    let (profile60, minter60, token_only) = (bearer(&t[0]), bearer(&t[1]), bearer(&t[2]));
    let added = common::run(
        {
            let mut c = std::process::Command::new(BIN);
            c.args(["serve", "--data"])
                .arg(&db)
                .args(["--add-user", "ops:secret"]);
            c
        },
        None,
    );
    assert_eq!(added.0, 0, "{}", added.2);
    let s = Server::start_at(&db, &[]);

    // The issue's case: a profile token asking for a day is refused.
    let (st, v) = mint(&s, &profile60, "example", DAY);
    assert_eq!(st, 403, "{v}");
    assert!(
        v["Messages"][0]
            .as_str()
            .unwrap_or_default()
            .contains("needs profiles/token/example"),
        "{v}"
    );
    // With the claim: a token, cut to the minter's expiry.
    let (st, v) = mint(&s, &minter60, "example", DAY);
    assert_eq!(st, 200, "{v}");
    let child = v["Token"].as_str().unwrap().to_string();
    assert_eq!(exp(&child), exp(&t[1]));
    let (st, _, _) = s.call(
        "GET",
        "/profiles/example",
        None,
        &[("Authorization", &bearer(&child))],
    );
    assert_eq!(st, 200);
    assert_eq!(mint(&s, &bearer(&child), "example", 1).0, 403);
    // Shorter than the minter's: as asked.
    let (st, v) = mint(&s, &minter60, "example", 10);
    assert_eq!(st, 200, "{v}");
    let short = v["Token"].as_str().unwrap();
    assert!(exp(short) <= iat(short) + 10, "{}", payload(short));
    // Claims the minter lacks: another profile, the profile token's own.
    assert_eq!(mint(&s, &minter60, "other", 10).0, 403);
    let (st, v) = mint(&s, &token_only, "example", 10);
    assert_eq!(st, 403, "{v}");
    assert!(v["Messages"][0]
        .as_str()
        .unwrap_or_default()
        .contains("needs profiles/get/example"));
    // The admin key and users are the root of trust: the ttl stands.
    let (st, v) = mint(&s, &s.bearer(), "example", DAY);
    assert_eq!(st, 200, "{v}");
    let t = v["Token"].as_str().unwrap();
    assert_eq!(exp(t) - iat(t), DAY);
    let basic = "Basic b3BzOnNlY3JldA=="; // ops:secret
    let (st, v) = mint(&s, basic, "example", DAY);
    assert_eq!(st, 200, "{v}");
    let t = v["Token"].as_str().unwrap();
    assert_eq!(exp(t) - iat(t), DAY);
}

fn render(s: &Server, auth: &str, addr: &str, text: &str) -> (u16, String) {
    let r = ureq::post(&format!("{}/api/v3/machines/{addr}/render", s.url))
        .set("Authorization", auth)
        .send_string(text);
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(st, r)) => (st, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn http_template_mints_under_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let t = seed(
        &db,
        &[
            (&["machines/get/m1", "profiles/*/example"], 60),
            (
                &[
                    "machines/get/m1",
                    "profiles/get,update,patch,param-set/example",
                ],
                3600,
            ),
        ],
    );
    let s = Server::start_at(&db, &[]);
    let text = r#"{{ .GenerateProfileToken "example" 86400 }}"#;
    let (st, out) = render(&s, &bearer(&t[0]), "Name:m1", text);
    assert_eq!(st, 200, "{out}");
    assert_eq!(exp(&out), exp(&t[0]), "cut to the renderer's expiry");
    let (st, out) = render(&s, &bearer(&t[1]), "Name:m1", text);
    assert_eq!(st, 400, "{out}");
    assert!(out.contains("needs profiles/token/example"), "{out}");
    let (st, out) = render(&s, &s.bearer(), "Name:m1", text);
    assert_eq!(st, 200, "{out}");
    assert_eq!(exp(&out) - iat(&out), DAY);
}

// ---------------------------------------------------------------------------
// One decision: token × alias × verb

const M: &str = "machines";

/// An HTTP request: method, path, and content type and body.
type Request = (&'static str, String, Option<(&'static str, String)>);

/// One verb: its HTTP request for address `a`, the same operation through a
/// scoped handle, and the action it needs.
struct Verb {
    name: &'static str,
    action: &'static str,
    http: fn(&str, &Value) -> Request,
    lib: fn(&fleetkv::Scoped, &str, &Value) -> fleetkv::Result<()>,
}

fn verbs() -> Vec<Verb> {
    fn ok<T>(r: fleetkv::Result<T>) -> fleetkv::Result<()> {
        r.map(drop)
    }
    vec![
        Verb {
            name: "show",
            action: "get",
            http: |a, _| ("GET", format!("/machines/{a}?aggregate=true"), None),
            lib: |s, a, _| ok(s.machines().get(a)),
        },
        Verb {
            name: "params",
            action: "get",
            http: |a, _| ("GET", format!("/machines/{a}/params"), None),
            lib: |s, a, _| ok(s.machines().params(a, false)),
        },
        Verb {
            name: "get param",
            action: "get",
            http: |a, _| ("GET", format!("/machines/{a}/params/k"), None),
            lib: |s, a, _| ok(s.machines().get_param(a, "k", true)),
        },
        Verb {
            name: "wait",
            action: "get",
            http: |a, _| {
                let q = "timeout=1&filter=Name%20Eq%20m1";
                ("GET", format!("/wait/machines/{a}?{q}"), None)
            },
            lib: |s, a, _| ok(s.machines().get(a)),
        },
        Verb {
            name: "render",
            action: "get",
            http: |a, _| {
                // Quoted, so the answer parses as JSON for `Server::call`.
                let body = Some(("text/plain", r#""{{ .Machine.Name }}""#.to_string()));
                ("POST", format!("/machines/{a}/render"), body)
            },
            lib: |s, a, _| ok(s.machines().get(a)),
        },
        Verb {
            name: "json patch",
            action: "patch",
            http: |a, _| {
                let ops = r#"[{"op":"test","path":"/Name","value":"m1"}]"#.to_string();
                let body = Some(("application/json-patch+json", ops));
                ("PATCH", format!("/machines/{a}"), body)
            },
            lib: |s, a, _| {
                let ops = json!([{"op": "test", "path": "/Name", "value": "m1"}]);
                ok(s.machines().patch(a, &ops))
            },
        },
        Verb {
            name: "params patch",
            action: "patch",
            http: |a, _| {
                let ops = r#"[{"op":"add","path":"/k","value":1}]"#.to_string();
                let body = Some(("application/json-patch+json", ops));
                ("PATCH", format!("/machines/{a}/params"), body)
            },
            lib: |s, a, _| {
                let ops = json!([{"op": "add", "path": "/Params/k", "value": 1}]);
                ok(s.machines().patch(a, &ops))
            },
        },
        Verb {
            name: "merge",
            action: "update",
            http: |a, _| {
                let body = Some((
                    "application/merge-patch+json",
                    r#"{"Meta":{"x":"y"}}"#.into(),
                ));
                ("PATCH", format!("/machines/{a}"), body)
            },
            lib: |s, a, _| ok(s.machines().update(a, &json!({"Meta": {"x": "y"}}))),
        },
        Verb {
            name: "replace",
            action: "update",
            http: |a, doc| {
                let body = Some(("application/json", doc.to_string()));
                ("PUT", format!("/machines/{a}"), body)
            },
            lib: |s, a, doc| {
                let m: Machine = serde_json::from_value(doc.clone()).unwrap();
                ok(s.machines().replace(a, m))
            },
        },
        Verb {
            name: "set param",
            action: "param-set",
            http: |a, _| {
                let body = Some(("application/json", "1".to_string()));
                ("POST", format!("/machines/{a}/params/k"), body)
            },
            lib: |s, a, _| ok(s.machines().set_param(a, "k", json!(1))),
        },
        Verb {
            name: "replace params",
            action: "param-set",
            http: |a, _| {
                let body = Some(("application/json", r#"{"k":1}"#.to_string()));
                ("POST", format!("/machines/{a}/params"), body)
            },
            lib: |s, a, _| ok(s.machines().set_param(a, "k", json!(1))),
        },
        Verb {
            name: "remove param",
            action: "param-set",
            http: |a, _| ("DELETE", format!("/machines/{a}/params/absent"), None),
            lib: |s, a, _| ok(s.machines().remove_param(a, "absent")),
        },
    ]
}

#[test]
fn one_decision_for_library_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (uuid, shadow) = {
        let s = Store::open(&a).unwrap();
        fleet(&s);
        let u = s.machines().get("m1").unwrap().uuid.to_string();
        s.flush().unwrap();
        (u.clone(), u.to_uppercase())
    };
    let tokens: Vec<(&str, Vec<String>)> = vec![
        (
            "by name",
            vec!["machines/get,patch,update,param-set/m1".into()],
        ),
        (
            "by uuid",
            vec![format!("machines/get,patch,update,param-set/{uuid}")],
        ),
        ("read only", vec!["machines/get/m1".into()]),
        ("another machine", vec!["machines/*/m2".into()]),
        // Names the machine called "<M1-UUID>", which is not m1.
        ("uuid-shaped name", vec![format!("machines/*/{shadow}")]),
        ("every machine", vec!["machines/*/*".into()]),
        ("profile", vec!["profiles/*/example".into()]),
    ];
    let (minted, verified): (Vec<String>, Vec<TokenClaims>) = {
        let s = Store::open(&a).unwrap();
        let out = tokens
            .iter()
            .map(|(_, c)| {
                let cs: Vec<Claim> = c.iter().map(|c| c.parse().unwrap()).collect();
                let t = s.generate_token(&cs, HOUR).unwrap();
                let v = s.verify_token(&t).unwrap();
                (t, v)
            })
            .unzip();
        s.flush().unwrap();
        out
    };
    // The library judges on a copy: the server holds the store's lock.
    let b = dir.path().join("b");
    copy_dir(&a, &b);
    let lib = Store::open(&b).unwrap();
    let server = Server::start_at(&a, &[]);

    let aliases = [
        "m1".to_string(),
        "Name:m1".to_string(),
        uuid.clone(),
        format!("Uuid:{uuid}"),
        format!("Key:{uuid}"),
        shadow.clone(),
        format!("Uuid:{shadow}"),
        uuid.replace('-', ""),
    ];
    let doc = json!({"Name": "m1", "Uuid": uuid, "Profiles": ["example"], "Params": {"k": 1}});
    let verbs = verbs();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for ((label, _), (token, held)) in tokens.iter().zip(minted.iter().zip(&verified)) {
        let scoped = lib.with_token(token).unwrap();
        let auth = bearer(token);
        for verb in &verbs {
            // The claim semantics, computed directly: m1 is covered when a
            // claim names it by its Uuid or its Name.
            let want = held.allows(M, verb.action, "m1") || held.allows(M, verb.action, &uuid);
            for alias in &aliases {
                let lib_ok = match (verb.lib)(&scoped, alias, &doc) {
                    Ok(()) => true,
                    Err(Error::Auth(e)) if e.is_forbidden() => false,
                    Err(e) => panic!("{label} {} {alias}: library: {e}", verb.name),
                };
                let (method, path, body) = (verb.http)(alias, &doc);
                let body = body.as_ref().map(|(ct, b)| (*ct, b.as_str()));
                let (st, v, _) = server.call(method, &path, body, &[("Authorization", &auth)]);
                let server_ok = match st {
                    200..=299 => true,
                    403 => false,
                    _ => panic!("{label} {method} {path}: {st} {v}"),
                };
                if (lib_ok, server_ok) != (want, want) {
                    mismatches.push(format!(
                        "{label} / {} / {alias}: want {want}, library {lib_ok}, server {server_ok}",
                        verb.name
                    ));
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, tokens.len() * verbs.len() * aliases.len());
    assert!(
        mismatches.is_empty(),
        "{} of {checked} disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    let untouched = |s: &Store| {
        [
            s.machines().get("m2").unwrap(),
            s.machines().get(&format!("Name:{shadow}")).unwrap(),
        ]
    };
    let before = untouched(&lib);
    same_and_sound(server, &a, &lib);
    // Only m1 was ever allowed: the other two were never written.
    assert_eq!(untouched(&lib), before);
    assert!(before
        .iter()
        .all(|m| m.params.is_empty() && m.meta.is_empty()));
}

/// After a run: the server's store (stopped, reopened) holds what the
/// library's copy holds — the same writes were allowed on both, and the
/// refused ones changed nothing — and both indexes equal a rebuild.
fn same_and_sound(server: Server, a: &Path, lib: &Store) {
    let (code, _) = server.stop();
    assert_eq!(code, 0);
    let served = Store::open(a).unwrap();
    let strip = |s: &Store| {
        let mut all = serde_json::to_value(s.machines().list_all().unwrap()).unwrap();
        for m in all.as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("Revision");
        }
        all
    };
    assert_eq!(strip(&served), strip(lib));
    served.verify_indexes().unwrap();
    lib.verify_indexes().unwrap();
}

/// Delete and create, which change what exists: each alias of a machine
/// `d` deleted through a token naming it by Name or by Uuid (recreated with
/// the same Uuid after each), and creates judged on the new object's Name or
/// Uuid, by the server and the library alike.
#[test]
fn delete_and_create_by_alias() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let d_uuid = uuid::Uuid::new_v4().to_string();
    let new_uuid = uuid::Uuid::new_v4().to_string();
    let fresh_uuid = uuid::Uuid::new_v4().to_string();
    let d = json!({"Name": "d", "Uuid": d_uuid});
    let t = {
        let s = Store::open(&a).unwrap();
        fleet(&s);
        s.machines()
            .create(serde_json::from_value(d.clone()).unwrap())
            .unwrap();
        let mk = |c: &str| s.generate_token(&claims(&[c]), HOUR).unwrap();
        let t = [
            mk("machines/delete/d"),
            mk(&format!("machines/delete/{d_uuid}")),
            mk("machines/delete/m1"),
            mk("machines/create/fresh"),
            mk(&format!("machines/create/{new_uuid}")),
        ];
        s.flush().unwrap();
        t
    };
    let b = dir.path().join("b");
    copy_dir(&a, &b);
    let lib = Store::open(&b).unwrap();
    let server = Server::start_at(&a, &[]);
    let aliases = [
        "d".to_string(),
        "Name:d".to_string(),
        d_uuid.clone(),
        format!("Uuid:{d_uuid}"),
        format!("Key:{d_uuid}"),
        d_uuid.to_uppercase(),
    ];
    for (token, want) in [(&t[0], true), (&t[1], true), (&t[2], false)] {
        let scoped = lib.with_token(token).unwrap();
        for alias in &aliases {
            let st = server
                .call(
                    "DELETE",
                    &format!("/machines/{alias}"),
                    None,
                    &[("Authorization", &bearer(token))],
                )
                .0;
            let lib_r = scoped.machines().delete(alias);
            assert_eq!(st == 200, want, "server DELETE {alias}: {st}");
            assert_eq!(lib_r.is_ok(), want, "library delete {alias}: {lib_r:?}");
            if want {
                assert_eq!(server.json("POST", "/machines", &d).0, 201);
                lib.machines()
                    .create(serde_json::from_value(d.clone()).unwrap())
                    .unwrap();
            } else {
                assert_eq!(st, 403);
                assert!(matches!(lib_r, Err(Error::Auth(ref e)) if e.is_forbidden()));
            }
        }
    }
    // Create: by the new Name, by the Uuid it is created with; not another.
    let cases = [
        // A Uuid of its own, so that both stores hold the same machine.
        (&t[3], json!({"Name": "fresh", "Uuid": fresh_uuid}), true),
        (&t[3], json!({"Name": "stale"}), false),
        (&t[4], json!({"Name": "any", "Uuid": new_uuid}), true),
        (&t[4], json!({"Name": "fresh2"}), false),
    ];
    for (token, body, want) in cases {
        let st = server
            .call(
                "POST",
                "/machines",
                Some(("application/json", &body.to_string())),
                &[("Authorization", &bearer(token))],
            )
            .0;
        let m: Machine = serde_json::from_value(body.clone()).unwrap();
        let lib_r = lib.with_token(token).unwrap().machines().create(m);
        assert_eq!(st == 201, want, "server create {body}: {st}");
        assert_eq!(lib_r.is_ok(), want, "library create {body}: {lib_r:?}");
        if !want {
            assert_eq!(st, 403, "{body}");
        }
    }
    same_and_sound(server, &a, &lib);
}
