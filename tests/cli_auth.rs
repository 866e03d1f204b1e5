//! `-T`/`$RS_TOKEN` and `profiles token` through the real binary.

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fleetkv");

struct Run {
    code: i32,
    out: String,
    err: String,
}

fn run(dir: &TempDir, db: &str, args: &[&str], env_token: Option<&str>) -> Run {
    let mut c = Command::new(BIN);
    c.env_remove("FLEETKV_DATA")
        .env_remove("RS_TOKEN")
        .env("RUST_BACKTRACE", "0")
        .arg("--data")
        .arg(dir.path().join(db))
        .args(args);
    if let Some(t) = env_token {
        c.env("RS_TOKEN", t);
    }
    let o = c.output().unwrap();
    let r = Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(!r.err.contains("panicked"), "panic on {args:?}: {}", r.err);
    r
}

fn ok(dir: &TempDir, args: &[&str]) -> String {
    let r = run(dir, "db", args, None);
    assert_eq!(r.code, 0, "{args:?} failed: {}", r.err);
    r.out
}

fn refused(dir: &TempDir, args: &[&str], says: &str) {
    let r = run(dir, "db", args, None);
    assert_eq!(r.code, 6, "{args:?}: stdout {} stderr {}", r.out, r.err);
    assert!(r.err.starts_with("Error: token refused: "), "{}", r.err);
    assert!(r.err.contains(says), "{says:?} not in {}", r.err);
    assert!(r.out.is_empty(), "a refused run printed {}", r.out);
}

/// A store with profile `example` (param my/data = none) and machine m1.
fn setup() -> TempDir {
    let dir = TempDir::new().unwrap();
    ok(
        &dir,
        &[
            "profiles",
            "create",
            r#"{"Name":"example","Params":{"my/data":"none"}}"#,
        ],
    );
    ok(&dir, &["profiles", "create", "other"]);
    ok(&dir, &["machines", "create", "m1"]);
    dir
}

fn token(dir: &TempDir, args: &[&str]) -> String {
    let mut a = vec!["profiles", "token", "example"];
    a.extend_from_slice(args);
    let t = ok(dir, &a).trim().to_string();
    assert_eq!(t.split('.').count(), 3, "not a JWT: {t}");
    t
}

#[test]
fn profile_token_allowed_ops() {
    let dir = setup();
    let t = token(&dir, &[]);
    let out = ok(&dir, &["-T", &t, "profiles", "show", "example"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Name"], "example");
    // DRP's cluster-leader loop: a compare-and-set through the token.
    ok(
        &dir,
        &[
            "-r", "none", "-T", &t, "profiles", "set", "example", "param", "my/data", "to", "foo",
        ],
    );
    let r = run(
        &dir,
        "db",
        &[
            "-r", "none", "-T", &t, "profiles", "set", "example", "param", "my/data", "to", "bar",
        ],
        None,
    );
    assert_eq!(r.code, 3, "stale -r is still a conflict: {}", r.err);
    assert_eq!(
        ok(
            &dir,
            &["--token", &t, "profiles", "get", "example", "param", "my/data"]
        )
        .trim(),
        "\"foo\""
    );
    ok(
        &dir,
        &[
            "-T",
            &t,
            "profiles",
            "patch",
            "example",
            r#"[{"op":"add","path":"/Params/x","value":1}]"#,
        ],
    );
    ok(
        &dir,
        &[
            "-T",
            &t,
            "profiles",
            "update",
            "example",
            r#"{"Description":"d"}"#,
        ],
    );
    ok(&dir, &["-T", &t, "profiles", "exists", "example"]);
}

#[test]
fn refused_token_exits_6_with_the_missing_claim() {
    let dir = setup();
    let t = token(&dir, &["--ttl", "60"]);
    let before = ok(&dir, &["export"]);
    refused(
        &dir,
        &["-T", &t, "profiles", "show", "other"],
        "needs profiles/get/other",
    );
    refused(
        &dir,
        &["-T", &t, "profiles", "destroy", "example"],
        "needs profiles/delete/example",
    );
    refused(
        &dir,
        &["-T", &t, "machines", "show", "m1"],
        "needs machines/get/m1",
    );
    refused(
        &dir,
        &["-T", &t, "machines", "list"],
        "needs machines/list/*",
    );
    refused(
        &dir,
        &["-T", &t, "profiles", "count"],
        "needs profiles/list/*",
    );
    refused(&dir, &["-T", &t, "export"], "needs machines/list/*");
    refused(
        &dir,
        &["-T", &t, "machines", "set", "m1", "param", "k", "to", "1"],
        "needs machines/param-set/m1",
    );
    refused(
        &dir,
        &["-T", "garbage", "profiles", "show", "example"],
        "malformed",
    );
    assert_eq!(
        ok(&dir, &["export"]),
        before,
        "refused runs changed the store"
    );
}

#[test]
fn expired_and_foreign_tokens_are_refused() {
    let dir = setup();
    // Mint through the library with a clock 100 s behind: expired 40 s ago.
    let expired = {
        let s = fleetkv::Store::open(dir.path().join("db")).unwrap();
        let c: Vec<fleetkv::Claim> = vec!["profiles/*/*".parse().unwrap()];
        let now = fleetkv::auth::now_secs();
        s.generate_token_at(&c, std::time::Duration::from_secs(60), now - 100)
            .unwrap()
    };
    refused(
        &dir,
        &["-T", &expired, "profiles", "show", "example"],
        "expired",
    );
    let other = TempDir::new().unwrap();
    ok(&other, &["profiles", "create", "example"]);
    let foreign = token(&other, &[]);
    refused(
        &dir,
        &["-T", &foreign, "profiles", "show", "example"],
        "bad signature",
    );
}

#[test]
fn rs_token_env() {
    let dir = setup();
    let t = token(&dir, &[]);
    let r = run(&dir, "db", &["profiles", "show", "example"], Some(&t));
    assert_eq!(r.code, 0, "{}", r.err);
    let r = run(&dir, "db", &["profiles", "show", "other"], Some(&t));
    assert_eq!(r.code, 6);
    assert!(r.err.contains("needs profiles/get/other"), "{}", r.err);
    // The owner (no token) may do anything.
    ok(&dir, &["profiles", "show", "other"]);
}

#[test]
fn extra_claims() {
    let dir = setup();
    let t = token(&dir, &["--claims", "machines/*/*"]);
    ok(&dir, &["-T", &t, "machines", "list"]);
    ok(
        &dir,
        &[
            "-T",
            &t,
            "machines",
            "set",
            "m1",
            "param",
            "cluster/leader",
            "to",
            "true",
        ],
    );
    assert_eq!(ok(&dir, &["-T", &t, "machines", "count"]).trim(), "1");
    refused(
        &dir,
        &["-T", &t, "profiles", "list"],
        "needs profiles/list/*",
    );
    // A bad claim is bad input.
    let r = run(
        &dir,
        "db",
        &["profiles", "token", "example", "--claims", "machine/*/*"],
        None,
    );
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.err.contains("unknown scope \"machine\""), "{}", r.err);
    // No profile, no token.
    let r = run(&dir, "db", &["profiles", "token", "missing"], None);
    assert_eq!(r.code, 4, "{}", r.err);
}

#[test]
fn a_token_mints_only_narrower_tokens() {
    let dir = setup();
    // A profile token carries no `token` claim: it mints nothing.
    let plain = token(&dir, &[]);
    refused(
        &dir,
        &["-T", &plain, "profiles", "token", "example", "--ttl", "60"],
        "needs profiles/token/example",
    );
    let t = token(
        &dir,
        &["--ttl", "120", "--claims", "profiles/token/example"],
    );
    let again = ok(
        &dir,
        &["-T", &t, "profiles", "token", "example", "--ttl", "86400"],
    );
    ok(&dir, &["-T", again.trim(), "profiles", "show", "example"]);
    // Never later than the token that minted it.
    let s = fleetkv::Store::open(dir.path().join("db")).unwrap();
    let (parent, child) = (
        s.verify_token(&t).unwrap(),
        s.verify_token(again.trim()).unwrap(),
    );
    assert_eq!(child.expires_at, parent.expires_at);
    drop(s);
    refused(
        &dir,
        &["-T", &t, "profiles", "token", "other"],
        "needs profiles/token/other",
    );
    refused(
        &dir,
        &[
            "-T",
            &t,
            "profiles",
            "token",
            "example",
            "--claims",
            "machines/*/*",
        ],
        "needs machines/*/*",
    );
}

#[test]
fn export_carries_no_secret() {
    let dir = setup();
    let t = token(&dir, &[]);
    let export = ok(&dir, &["export"]);
    assert!(!export.contains("secret"), "{export}");
    // A store imported from the export has its own secret: the old token fails there.
    let file = dir.path().join("export.json");
    std::fs::write(&file, &export).unwrap();
    let r = run(&dir, "copy", &["import", file.to_str().unwrap()], None);
    assert_eq!(r.code, 0, "{}", r.err);
    let r = run(
        &dir,
        "copy",
        &["-T", &t, "profiles", "show", "example"],
        None,
    );
    assert_eq!(r.code, 6, "{}", r.err);
    assert!(r.err.contains("bad signature"), "{}", r.err);
    let r = run(&dir, "db", &["-T", &t, "profiles", "show", "example"], None);
    assert_eq!(r.code, 0, "{}", r.err);
}
