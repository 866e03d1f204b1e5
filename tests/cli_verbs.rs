//! The `fleetkv` binary's verbs, exit codes and bad inputs, through the real binary.

use assert_cmd::Command;
use serde_json::{json, Value};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fleetkv");

struct Env {
    dir: TempDir,
}

/// What a run left: exit code, stdout, stderr.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.out))
    }
}

impl Env {
    fn new() -> Env {
        Env {
            dir: TempDir::new().unwrap(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_remove("FLEETKV_DATA")
            .env("RUST_BACKTRACE", "0")
            .arg("--data")
            .arg(self.dir.path().join("db"));
        c
    }

    fn run_in(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut c = self.cmd();
        c.args(args);
        if let Some(s) = stdin {
            c.write_stdin(s);
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

    fn run(&self, args: &[&str]) -> Run {
        self.run_in(args, None)
    }

    /// Runs and asserts exit 0.
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "{args:?} failed: {}", r.err);
        r
    }

    /// Runs and asserts the exit code and an `Error: ` line naming `says`.
    fn fails(&self, code: i32, args: &[&str], says: &str) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, code, "{args:?}: stdout {} stderr {}", r.out, r.err);
        assert!(r.err.starts_with("Error: "), "{args:?}: stderr {}", r.err);
        assert!(
            r.err.contains(says),
            "{args:?}: {:?} not in {}",
            says,
            r.err
        );
        assert!(r.out.is_empty(), "{args:?}: stdout on failure: {}", r.out);
        r
    }

    /// A small cluster: params, profile `example`, machines m1..m3 in it.
    fn cluster(&self) {
        self.ok(&[
            "params",
            "create",
            r#"{"Name":"cluster/leader","Schema":{"type":"boolean","default":false}}"#,
        ]);
        self.ok(&[
            "params",
            "create",
            r#"{"Name":"my/data","Schema":{"type":"string","default":"none"}}"#,
        ]);
        self.ok(&["profiles", "create", "example"]);
        for m in ["m1", "m2", "m3"] {
            self.ok(&[
                "machines",
                "create",
                &json!({"Name": m, "Profiles": ["example"]}).to_string(),
            ]);
        }
    }
}

#[test]
fn create_show_exists_destroy() {
    let e = Env::new();
    let m = e.ok(&["machines", "create", "node-1"]).json();
    assert_eq!(m["Name"], "node-1");
    let uuid = m["Uuid"].as_str().unwrap().to_string();
    for id in [
        uuid.clone(),
        format!("Uuid:{uuid}"),
        format!("Key:{uuid}"),
        "Name:node-1".into(),
        "node-1".into(),
    ] {
        assert_eq!(
            e.ok(&["machines", "show", &id]).json()["Uuid"],
            uuid.as_str()
        );
    }
    let r = e.ok(&["machines", "exists", "node-1"]);
    assert!(r.out.is_empty());
    e.fails(4, &["machines", "exists", "node-2"], "not found");
    e.fails(
        4,
        &["machines", "show", "node-2"],
        "machine node-2 not found",
    );
    e.ok(&["machines", "destroy", &uuid]);
    e.fails(4, &["machines", "exists", &uuid], "not found");
    e.fails(4, &["machines", "destroy", &uuid], "not found");

    // Profiles and params: JSON, bare name and stdin.
    let p = e
        .run_in(
            &["profiles", "create", "-"],
            Some(r#"{"Name":"p1","Description":"d"}"#),
        )
        .json();
    assert_eq!(p["Description"], "d");
    e.ok(&["profiles", "exists", "p1"]);
    e.ok(&["profiles", "show", "global"]);
    e.ok(&[
        "params",
        "create",
        r#"{"Name":"x","Schema":{"type":"number"}}"#,
    ]);
    assert_eq!(
        e.ok(&["params", "show", "x"]).json()["Schema"]["type"],
        "number"
    );
    e.ok(&["params", "exists", "x"]);
    e.ok(&["params", "destroy", "x"]);
    e.fails(4, &["params", "show", "x"], "param x not found");
    e.ok(&["profiles", "destroy", "p1"]);
    e.fails(4, &["profiles", "exists", "p1"], "not found");
}

#[test]
fn update_patch_and_reference_update() {
    let e = Env::new();
    e.cluster();
    let m = e
        .ok(&[
            "machines",
            "update",
            "m1",
            r#"{"Description":"first","Meta":{"a":"b"}}"#,
        ])
        .json();
    assert_eq!(m["Description"], "first");
    let seen = e.ok(&["machines", "show", "m1"]).out;
    // -r: the change is relative to what the caller saw.
    let m = e
        .ok(&[
            "-r",
            &seen,
            "machines",
            "update",
            "m1",
            r#"{"Description":"second"}"#,
        ])
        .json();
    assert_eq!(m["Description"], "second");
    // The same reference is stale now.
    e.fails(
        3,
        &[
            "machines",
            "update",
            "m1",
            r#"{"Description":"third"}"#,
            "-r",
            &seen,
        ],
        "conflict at /Description",
    );
    assert_eq!(
        e.ok(&["machines", "show", "m1"]).json()["Description"],
        "second"
    );
    // Update from stdin, profiles and params too.
    e.run_in(
        &["profiles", "update", "example", "-"],
        Some(r#"{"Description":"ex"}"#),
    );
    assert_eq!(
        e.ok(&["profiles", "show", "example"]).json()["Description"],
        "ex"
    );
    e.ok(&["params", "update", "my/data", r#"{"Description":"shared"}"#]);
    e.ok(&[
        "params",
        "patch",
        "my/data",
        r#"[{"op":"replace","path":"/Description","value":"p"}]"#,
    ]);
    assert_eq!(
        e.ok(&["params", "show", "my/data"]).json()["Description"],
        "p"
    );

    let m = e
        .ok(&[
            "machines",
            "patch",
            "m1",
            r#"[{"op":"test","path":"/Description","value":"second"},{"op":"replace","path":"/Description","value":"patched"}]"#,
        ])
        .json();
    assert_eq!(m["Description"], "patched");
    // A failed test: conflict, nothing written.
    e.fails(
        3,
        &[
            "machines",
            "patch",
            "m1",
            r#"[{"op":"replace","path":"/Workflow","value":"w"},{"op":"test","path":"/Description","value":"second"}]"#,
        ],
        "conflict",
    );
    assert_eq!(e.ok(&["machines", "show", "m1"]).json()["Workflow"], "");
    e.ok(&[
        "profiles",
        "patch",
        "example",
        r#"[{"op":"add","path":"/Meta/color","value":"red"}]"#,
    ]);
    assert_eq!(
        e.ok(&["profiles", "show", "example"]).json()["Meta"]["color"],
        "red"
    );
}

#[test]
fn params_set_get_remove_and_cas() {
    let e = Env::new();
    e.cluster();
    // Unset with a default: null own, default aggregated.
    assert_eq!(
        e.ok(&["machines", "get", "m1", "param", "my/data"])
            .out
            .trim(),
        "null"
    );
    assert_eq!(
        e.ok(&["machines", "get", "m1", "param", "my/data", "--aggregate"])
            .out
            .trim(),
        r#""none""#
    );
    // VALUE: JSON when it parses, else a string.
    assert_eq!(
        e.ok(&[
            "machines",
            "set",
            "m1",
            "param",
            "cluster/leader",
            "to",
            "true"
        ])
        .out
        .trim(),
        "true"
    );
    assert_eq!(
        e.ok(&["machines", "get", "m1", "param", "cluster/leader"])
            .json(),
        json!(true)
    );
    e.ok(&["machines", "set", "m1", "param", "free", "to", "foo"]);
    e.ok(&[
        "machines",
        "set",
        "m1",
        "param",
        "obj",
        "to",
        r#"{"a":[1,2]}"#,
    ]);
    let p = e.ok(&["machines", "params", "m1"]).json();
    assert_eq!(
        p,
        json!({"cluster/leader": true, "free": "foo", "obj": {"a": [1, 2]}})
    );
    // Profile params reach members through --aggregate.
    e.ok(&["profiles", "set", "example", "param", "shared", "to", "7"]);
    assert_eq!(
        e.ok(&["profiles", "get", "example", "param", "shared"])
            .json(),
        json!(7)
    );
    let agg = e.ok(&["machines", "params", "m2", "--aggregate"]).json();
    assert_eq!(agg["shared"], 7);
    assert_eq!(agg["my/data"], "none");
    assert_eq!(
        e.ok(&["profiles", "params", "example"]).json(),
        json!({"shared": 7})
    );
    assert_eq!(
        e.ok(&["machines", "remove", "m1", "param", "free"]).json(),
        json!("foo")
    );
    assert_eq!(
        e.ok(&["machines", "remove", "m1", "param", "free"])
            .out
            .trim(),
        "null"
    );
    e.ok(&["profiles", "remove", "example", "param", "shared"]);

    // CAS: the default counts as the current value when there is no own value.
    assert_eq!(
        e.ok(&[
            "-r",
            r#""none""#,
            "profiles",
            "set",
            "example",
            "param",
            "my/data",
            "to",
            "m1"
        ])
        .json(),
        json!("m1")
    );
    e.fails(
        3,
        &[
            "-r", "none", "profiles", "set", "example", "param", "my/data", "to", "m2",
        ],
        "conflict at /Params/my~1data",
    );
    assert_eq!(
        e.ok(&["profiles", "get", "example", "param", "my/data"])
            .json(),
        json!("m1")
    );
    // `-r null`: expect no own value.
    e.ok(&[
        "-r", "null", "machines", "set", "m3", "param", "fresh", "to", "1",
    ]);
    e.fails(
        3,
        &[
            "-r", "null", "machines", "set", "m3", "param", "fresh", "to", "2",
        ],
        "conflict",
    );
    e.ok(&[
        "-r", "1", "machines", "set", "m3", "param", "fresh", "to", "2",
    ]);

    e.fails(4, &["machines", "get", "nope", "param", "x"], "not found");
    e.fails(
        4,
        &["profiles", "set", "nope", "param", "x", "to", "1"],
        "not found",
    );
    e.fails(
        2,
        &["params", "set", "my/data", "param", "x", "to", "1"],
        "params (definitions) have no set",
    );
}

#[test]
fn machine_only_verbs_and_meta() {
    let e = Env::new();
    e.cluster();
    e.ok(&["profiles", "create", "extra"]);
    let m = e.ok(&["machines", "addprofile", "m1", "extra"]).json();
    assert_eq!(m["Profiles"], json!(["example", "extra"]));
    // Adding again changes nothing.
    let m = e.ok(&["machines", "addprofile", "m1", "extra"]).json();
    assert_eq!(m["Profiles"], json!(["example", "extra"]));
    e.fails(
        2,
        &["profiles", "destroy", "extra"],
        "in use by machines: m1",
    );
    let m = e.ok(&["machines", "removeprofile", "m1", "extra"]).json();
    assert_eq!(m["Profiles"], json!(["example"]));
    let m = e.ok(&["machines", "removeprofile", "m1", "extra"]).json();
    assert_eq!(m["Profiles"], json!(["example"]));
    assert!(e
        .ok(&["profiles", "destroy", "extra"])
        .out
        .contains("Deleted profile extra"));
    e.fails(
        2,
        &["machines", "addprofile", "m1", "ghost"],
        "profile \"ghost\" does not exist",
    );
    e.fails(
        2,
        &["profiles", "addprofile", "example", "x"],
        "machines verb",
    );

    let m = e
        .ok(&["machines", "workflow", "m2", "k3s-machine-install"])
        .json();
    assert_eq!(m["Workflow"], "k3s-machine-install");
    e.fails(
        2,
        &["profiles", "workflow", "example", "w"],
        "machines verb",
    );

    e.ok(&[
        "machines", "meta", "set", "m2", "key", "icon", "to", "anchor",
    ]);
    assert_eq!(
        e.ok(&["machines", "meta", "get", "m2", "key", "icon"])
            .json(),
        json!("anchor")
    );
    e.ok(&["machines", "meta", "remove", "m2", "key", "icon"]);
    assert_eq!(
        e.ok(&["machines", "meta", "get", "m2", "key", "icon"])
            .out
            .trim(),
        "null"
    );
    e.ok(&[
        "profiles", "meta", "set", "example", "key", "color", "to", "blue",
    ]);
    assert_eq!(
        e.ok(&["profiles", "meta", "get", "example", "key", "color"])
            .json(),
        json!("blue")
    );
    e.fails(
        4,
        &["machines", "meta", "get", "ghost", "key", "icon"],
        "not found",
    );
    e.fails(2, &["machines", "meta", "set", "m2", "icon", "to", "x"], "");
}

#[test]
fn bad_inputs_exit_2() {
    let e = Env::new();
    e.cluster();
    e.fails(
        2,
        &["machines", "create", r#"{"Name": "x""#],
        "machine JSON is not valid JSON",
    );
    e.fails(
        2,
        &["machines", "create", r#"["Name"]"#],
        "expected a JSON object",
    );
    e.fails(
        2,
        &["machines", "create", r#"{"Name":"x","Runnable":"yes"}"#],
        "machine JSON",
    );
    e.fails(
        2,
        &["machines", "update", "m1", "{nope"],
        "update JSON is not valid JSON",
    );
    e.fails(
        2,
        &["machines", "patch", "m1", r#"{"op":"add"}"#],
        "expected a JSON array",
    );
    e.fails(
        2,
        &[
            "machines",
            "patch",
            "m1",
            r#"[{"op":"replace","path":"/Uuid","value":"6f1e0a0e-0000-4000-8000-000000000000"}]"#,
        ],
        "Uuid",
    );
    e.fails(2, &["machines", "create", "m1"], "already exists");
    e.fails(
        2,
        &["machines", "update", "m2", r#"{"Name":"m1"}"#],
        "already exists",
    );
    e.fails(
        2,
        &["profiles", "create", "example"],
        "profile example already exists",
    );
    e.fails(
        2,
        &["machines", "create", r#"{"Name":"x","Profiles":["ghost"]}"#],
        "profile \"ghost\" does not exist",
    );
    e.fails(
        2,
        &[
            "machines",
            "set",
            "m1",
            "param",
            "cluster/leader",
            "to",
            "maybe",
        ],
        "param cluster/leader: value does not match its schema",
    );
    e.fails(
        2,
        &["-r", "{}", "machines", "show", "m1"],
        "-r/--ref is not used",
    );
    e.fails(
        2,
        &["-r", "[1]", "machines", "update", "m1", "{}"],
        "expected a JSON object",
    );
    e.fails(
        2,
        &["machines", "set", "m1", "params", "k", "to", "v"],
        "invalid value 'params'",
    );
    e.fails(2, &["machines", "frobnicate"], "unrecognized subcommand");
    e.fails(
        2,
        &["machines", "list", "limit", "many"],
        "expected a non-negative whole number",
    );
    e.fails(
        2,
        &["params", "list", "Name", "Eq", "x"],
        "params list takes no filter words",
    );
    e.fails(
        2,
        &["-F", "yaml", "machines", "show", "m1"],
        "invalid value 'yaml'",
    );
    e.fails(
        2,
        &["--lock-timeout", "nan", "machines", "show", "m1"],
        "--lock-timeout",
    );
    e.fails(
        2,
        &["--lock-timeout", "-1", "machines", "show", "m1"],
        "--lock-timeout",
    );
    let r = e.fails(2, &["machines", "create", "-"], "create needs");
    assert!(r.out.is_empty());
}

#[cfg(unix)]
#[test]
fn invalid_utf8_argument_exits_2() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let e = Env::new();
    let o = e
        .cmd()
        .args(["machines", "show"])
        .arg(OsStr::from_bytes(b"m\xff1"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("Error: ") && err.contains("UTF-8"), "{err}");
    let o = e
        .cmd()
        .args(["machines", "create"])
        .arg(OsStr::from_bytes(b"\xc3\x28"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn global_flags_anywhere_and_env_data() {
    let e = Env::new();
    e.ok(&["machines", "create", "a"]);
    // --data after the verb, via $FLEETKV_DATA, and -F table.
    let db = e.dir.path().join("db");
    let o = Command::new(BIN)
        .args(["machines", "show", "a", "-F", "table", "--data"])
        .arg(&db)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.starts_with("Name  Uuid"), "{t}");
    assert!(t.lines().nth(1).unwrap().starts_with("a  "), "{t}");
    let o = Command::new(BIN)
        .env("FLEETKV_DATA", &db)
        .args(["machines", "exists", "a"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    // Without --data or the variable: ./fleetkv.db.
    let cwd = TempDir::new().unwrap();
    Command::new(BIN)
        .current_dir(cwd.path())
        .env_remove("FLEETKV_DATA")
        .args(["profiles", "create", "here"])
        .assert()
        .success();
    assert!(cwd.path().join("fleetkv.db").is_dir());
    let r = e.ok(&["-F", "table", "profiles", "show", "global"]);
    assert_eq!(r.out, "Name    Description\nglobal\n");
}

#[test]
fn help_and_version_exit_0() {
    Command::new(BIN).arg("--help").assert().success();
    Command::new(BIN).arg("--version").assert().success();
    Command::new(BIN).assert().code(2);
}

// ---- listing: these need Filter::bind, which the contract stub leaves unimplemented.

#[test]
fn list_and_count_with_drpcli_words() {
    let e = Env::new();
    e.cluster();
    e.ok(&[
        "machines",
        "set",
        "m2",
        "param",
        "cluster/leader",
        "to",
        "true",
    ]);
    let names = |r: Run| -> Vec<String> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(e.ok(&["machines", "list"])), ["m1", "m2", "m3"]);
    assert_eq!(e.ok(&["machines", "count"]).out, "3\n");
    assert_eq!(
        names(e.ok(&["machines", "list", "sort=Name", "reverse=true"])),
        ["m3", "m2", "m1"]
    );
    assert_eq!(
        names(e.ok(&["machines", "list", "sort", "Name", "reverse"])),
        ["m3", "m2", "m1"]
    );
    assert_eq!(
        names(e.ok(&["machines", "list", "--limit", "2"])),
        ["m1", "m2"]
    );
    assert_eq!(
        names(e.ok(&["machines", "list", "limit", "2", "offset", "1"])),
        ["m2", "m3"]
    );
    assert_eq!(names(e.ok(&["machines", "list", "--offset", "2"])), ["m3"]);
    assert_eq!(names(e.ok(&["machines", "list", "Name=m2"])), ["m2"]);
    assert_eq!(
        names(e.ok(&["machines", "list", "Name", "Eq", "m3"])),
        ["m3"]
    );
    assert_eq!(
        names(e.ok(&[
            "machines",
            "list",
            "cluster/leader",
            "Eq",
            "false",
            "Profiles",
            "Eq",
            "example",
            "sort",
            "Name"
        ])),
        ["m1", "m3"]
    );
    assert_eq!(
        names(e.ok(&["machines", "list", "Name Eq m1 Or Name Eq m3", "reverse"])),
        ["m3", "m1"]
    );
    assert_eq!(
        e.ok(&["machines", "count", "cluster/leader", "Eq", "true"])
            .out,
        "1\n"
    );
    assert_eq!(
        e.ok(&["machines", "count", "Profiles Eq example", "limit", "1"])
            .out,
        "3\n"
    );
    let slim = e
        .ok(&["machines", "list", "Name=m2", "--slim", "Params,Meta"])
        .json();
    assert!(slim[0].get("Params").is_none() && slim[0].get("Meta").is_none());
    let only = e
        .ok(&[
            "machines",
            "list",
            "Name=m2",
            "--params",
            "my/data",
            "--aggregate",
        ])
        .json();
    assert_eq!(only[0]["Params"], json!({"my/data": "none"}));
    assert_eq!(names(e.ok(&["profiles", "list"])), ["example", "global"]);
    assert_eq!(e.ok(&["profiles", "count", "Name=example"]).out, "1\n");
    assert_eq!(
        names(e.ok(&["params", "list", "reverse"])),
        ["my/data", "cluster/leader"]
    );
    assert_eq!(e.ok(&["params", "count"]).out, "2\n");
    let t = e.ok(&["-F", "table", "profiles", "list"]).out;
    assert_eq!(t.lines().count(), 3);
}

#[test]
fn filter_errors_exit_2_with_caret() {
    let e = Env::new();
    e.cluster();
    let r = e.fails(2, &["machines", "list", "Name", "Frob", "x"], "");
    assert!(r.err.contains('^'), "{}", r.err);
    e.fails(2, &["machines", "count", "Name", "Eq"], "");
    e.fails(2, &["profiles", "list", "Address", "Eq", "1.2.3.4"], "");
}
