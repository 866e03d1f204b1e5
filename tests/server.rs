//! `fleetkv serve` end to end: the real binary on a free loopback port,
//! driven with ureq and with the CLI's remote mode.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fleetkv");

struct Server {
    child: Child,
    url: String,
    key: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let data = dir.path().join("db");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(u) = line.strip_prefix("fleetkv: listening on ") {
                break u.to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let key = std::fs::read_to_string(data.join("admin.key"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            child,
            url,
            key,
            dir,
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// (status, body, X-DRP-List-Count)
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
        headers: &[(&str, &str)],
    ) -> (u16, Value, Option<u64>) {
        let mut r = ureq::request(method, &format!("{}/api/v3{path}", self.url));
        let auth = self.bearer();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            r = r.set("Authorization", &auth);
        }
        for (k, v) in headers {
            r = r.set(k, v);
        }
        let res = match body {
            Some((ct, b)) => r.set("Content-Type", ct).send_string(b),
            None => r.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let count = resp.header("X-DRP-List-Count").and_then(|c| c.parse().ok());
        let text = resp.into_string().unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, v, count)
    }

    fn json(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.call(
            method,
            path,
            Some(("application/json", &body.to_string())),
            &[],
        );
        (s, v)
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(["-E", &self.url, "-T", &self.key])
            .args(args)
            .env_remove("RS_KEY")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> (i32, tempfile::TempDir) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (code, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw(s: &Server, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// method, path, body, headers, expected status.
type Case<'a> = (
    &'a str,
    String,
    Option<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
    u16,
);

fn drp_error(v: &Value, code: u16) {
    assert_eq!(v["Code"], code, "{v}");
    for k in ["Model", "Key", "Type"] {
        assert!(v[k].is_string(), "{k} in {v}");
    }
    assert!(v["Messages"][0].is_string(), "{v}");
}

#[test]
fn crud_list_count_and_params() {
    let s = Server::start(&[]);
    let (st, m) = s.json(
        "POST",
        "/machines",
        &json!({"Name": "m1", "Params": {"cluster/leader": true}}),
    );
    assert_eq!(st, 201, "{m}");
    let uuid = m["Uuid"].as_str().unwrap().to_string();
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "m2"})).0, 201);
    let (st, _, n) = s.call("HEAD", "/machines?cluster/leader=Eq(true)", None, &[]);
    assert_eq!((st, n), (200, Some(1)));
    let (st, v, n) = s.call(
        "GET",
        "/machines?limit=1&slim=Params,Meta&sort=Name",
        None,
        &[],
    );
    assert_eq!((st, n), (200, Some(2)));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["Name"], "m1");
    assert!(v[0].get("Params").is_none());
    let (st, v, _) = s.call("GET", &format!("/machines/{uuid}"), None, &[]);
    assert_eq!((st, &v["Name"]), (200, &json!("m1")));
    // Merge patch, JSON Patch with a failing test (409, nothing written).
    let (st, v, _) = s.call(
        "PATCH",
        "/machines/Name:m1",
        Some(("application/merge-patch+json", r#"{"Workflow":"w1"}"#)),
        &[],
    );
    assert_eq!((st, &v["Workflow"]), (200, &json!("w1")));
    let ops = r#"[{"op":"test","path":"/Workflow","value":"w0"},{"op":"replace","path":"/Workflow","value":"w2"}]"#;
    let (st, v, _) = s.call(
        "PATCH",
        "/machines/Name:m1",
        Some(("application/json-patch+json", ops)),
        &[],
    );
    assert_eq!(st, 409);
    drp_error(&v, 409);
    assert!(v["Messages"].to_string().contains("/Workflow"), "{v}");
    // Params sub-resources; keys with '/'.
    let (st, v) = s.json("POST", "/machines/Name:m1/params/my/data", &json!("none"));
    assert_eq!((st, v), (200, json!("none")));
    let (_, v, _) = s.call("GET", "/machines/Name:m1/params/my/data", None, &[]);
    assert_eq!(v, json!("none"));
    let (_, v, _) = s.call("GET", "/machines/Name:m1/params", None, &[]);
    assert_eq!(v["cluster/leader"], json!(true));
    let ops = r#"[{"op":"test","path":"/my~1data","value":"none"},{"op":"replace","path":"/my~1data","value":"x"}]"#;
    let (st, v, _) = s.call(
        "PATCH",
        "/machines/Name:m1/params",
        Some(("application/json-patch+json", ops)),
        &[],
    );
    assert_eq!((st, &v["my/data"]), (200, &json!("x")));
    let (st, v, _) = s.call("DELETE", "/machines/Name:m1/params/my/data", None, &[]);
    assert_eq!((st, v), (200, json!("x")));
    // Profiles too.
    assert_eq!(s.json("POST", "/profiles", &json!({"Name": "p1"})).0, 201);
    let (st, _) = s.json("POST", "/profiles/p1/params/a", &json!(1));
    assert_eq!(st, 200);
    let (_, v, n) = s.call("GET", "/profiles", None, &[]);
    assert_eq!(n, Some(v.as_array().unwrap().len() as u64));
    let (st, _, _) = s.call("DELETE", "/machines/Name:m2", None, &[]);
    assert_eq!(st, 200);
    let (st, v, _) = s.call("GET", "/machines/Name:m2", None, &[]);
    assert_eq!(st, 404);
    drp_error(&v, 404);
    // The OpenAPI document is generated and lists the paths.
    let (st, v, _) = s.call("GET", "/openapi.json", None, &[]);
    assert_eq!(st, 200);
    assert!(v["paths"]["/api/v3/{kind}/{id}/params/{key}"].is_object());
}

#[test]
fn credentials() {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(BIN)
        .args(["serve", "--add-user", "ops:s3cret", "--data"])
        .arg(dir.path().join("db"))
        .status()
        .unwrap();
    assert!(st.success());
    let s = Server::start_in(dir, &[]);
    let mode = std::fs::metadata(s.dir.path().join("db/admin.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
    let (st, _, _) = s.call("GET", "/info", None, &[("Authorization", "")]);
    assert_eq!(st, 200);
    for (auth, want) in [
        ("", 401),
        ("Bearer not-a-token", 401),
        ("Basic b3BzOndyb25n", 401),     // ops:wrong
        ("Basic b3BzOnMzY3JldA==", 200), // ops:s3cret
        ("Digest x", 401),
    ] {
        let (st, v, _) = s.call("GET", "/machines", None, &[("Authorization", auth)]);
        assert_eq!(st, want, "{auth}: {v}");
        if want == 401 {
            drp_error(&v, 401);
        }
    }
    let basic_admin = format!("admin:{}", s.key);
    let out = Command::new(BIN)
        .args(["-E", &s.url, "machines", "count"])
        .env("RS_KEY", &basic_admin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(BIN)
        .args(["-E", &s.url, "-U", "ops", "-P", "nope", "machines", "list"])
        .env_remove("RS_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn bad_input_changes_nothing() {
    let s = Server::start(&["--max-body-bytes", "2000", "--max-header-bytes", "4000"]);
    let (_, m) = s.json("POST", "/machines", &json!({"Name": "m1"}));
    let before = m.to_string();
    let big = format!("{{\"Name\":\"{}\"}}", "a".repeat(5000));
    let flood = "x".repeat(5000);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/machines".into(),
            Some(("application/json", "{\"Name\":")),
            vec![],
            400,
        ),
        (
            "POST",
            "/machines".into(),
            Some(("text/plain", "{}")),
            vec![],
            415,
        ),
        (
            "POST",
            "/machines".into(),
            Some(("application/json", big.as_str())),
            vec![],
            413,
        ),
        (
            "PUT",
            "/machines/Name:m1".into(),
            Some(("application/json", "[]")),
            vec![],
            400,
        ),
        ("GET", "/machines?Name=Foo(x)".into(), None, vec![], 400),
        ("GET", "/machines?limit=many".into(), None, vec![], 400),
        ("GET", "/machines/..%2Fprofiles".into(), None, vec![], 400),
        ("GET", "/nothing".into(), None, vec![], 404),
        (
            "GET",
            "/machines/Name:m1".into(),
            None,
            vec![("X-Flood", flood.as_str())],
            431,
        ),
        (
            "PATCH",
            "/machines/Name:m1".into(),
            Some((
                "application/json-patch+json",
                r#"[{"op":"replace","path":"/Uuid","value":"00000000-0000-0000-0000-000000000000"}]"#,
            )),
            vec![],
            400,
        ),
        (
            "PATCH",
            "/machines/Name:m1".into(),
            Some(("application/json-patch+json", "{not json")),
            vec![],
            400,
        ),
        (
            "POST",
            "/machines/Name:m1/params/x".into(),
            Some(("application/json", "1")),
            vec![("X-Fleetkv-Expect", "{bad")],
            400,
        ),
        ("DELETE", "/machines".into(), None, vec![], 405),
    ];
    for (method, path, body, headers, want) in &cases {
        let (st, v, _) = s.call(method, path, *body, headers);
        assert_eq!(st, *want, "{method} {path}: {v}");
        drp_error(&v, *want);
    }
    // Dot segments (which HTTP clients normalise away) sent raw.
    for path in [
        "/api/v3/machines/Name:m1/params/a/../b",
        "/api/v3/machines/../params",
    ] {
        let answer = raw(
            &s,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                s.bearer()
            ),
        );
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 404"),
            "{path}: {answer}"
        );
        assert!(answer.contains("\"Messages\""), "{answer}");
    }
    let (_, v, _) = s.call("GET", "/machines?Name=Foo(x)", None, &[]);
    assert!(v["Messages"][0].as_str().unwrap().contains("byte 5"), "{v}");
    assert!(v["Messages"][0].as_str().unwrap().contains('^'), "{v}");
    // A hundred-odd headers: hyper refuses them itself; the server stays up.
    let mut r = ureq::get(&format!("{}/api/v3/info", s.url));
    for i in 0..200 {
        r = r.set(&format!("x-h{i}"), "v");
    }
    assert!(r.call().is_err());
    let (st, v, _) = s.call("GET", "/machines/Name:m1", None, &[]);
    assert_eq!(st, 200);
    assert_eq!(v.to_string(), before);
}

#[test]
fn cas_race_200_clients_one_winner_per_round() {
    let s = Arc::new(Server::start(&[]));
    s.json("POST", "/profiles", &json!({"Name": "cluster"}));
    for round in 0..3 {
        let (st, _) = s.json("POST", "/profiles/cluster/params/my/data", &json!("none"));
        assert_eq!(st, 200);
        let barrier = Arc::new(Barrier::new(200));
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let body = json!(format!("r{round}-c{i}")).to_string();
                    barrier.wait();
                    let res = agent
                        .post(&format!("{}/api/v3/profiles/cluster/params/my/data", s.url))
                        .set("Authorization", &s.bearer())
                        .set("Content-Type", "application/json")
                        .set("X-Fleetkv-Expect", "\"none\"")
                        .send_string(&body);
                    match res {
                        Ok(r) => (r.status(), i),
                        Err(ureq::Error::Status(c, _)) => (c, i),
                        Err(e) => panic!("client {i}: {e}"),
                    }
                })
            })
            .collect();
        let results: Vec<(u16, usize)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<usize> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(results.iter().filter(|r| r.0 == 409).count(), 199);
        let (_, v, _) = s.call("GET", "/profiles/cluster/params/my/data", None, &[]);
        assert_eq!(v, json!(format!("r{round}-c{}", winners[0])));
    }
}

#[test]
fn remote_cli_exit_codes_and_output() {
    let s = Server::start(&[]);
    let (c, out, err) = s.cli(&[
        "profiles",
        "create",
        r#"{"Name":"cl","Params":{"my/data":"none"}}"#,
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("\"cl\""));
    let (c, _, _) = s.cli(&["machines", "create", "m1"]);
    assert_eq!(c, 0);
    let (c, out, _) = s.cli(&["machines", "addprofile", "Name:m1", "cl"]);
    assert_eq!(c, 0);
    assert!(out.contains("\"cl\""));
    let (c, out, _) = s.cli(&["machines", "count", "Profiles", "Eq", "cl"]);
    assert_eq!((c, out.trim()), (0, "1"));
    let (c, out, _) = s.cli(&[
        "machines",
        "get",
        "Name:m1",
        "param",
        "my/data",
        "--aggregate",
    ]);
    assert_eq!((c, out.trim()), (0, "\"none\""));
    // The seed's leader race, sequentially: the first -r none wins, the second conflicts.
    let (c, out, _) = s.cli(&[
        "-r", "none", "profiles", "set", "cl", "param", "my/data", "to", "foo",
    ]);
    assert_eq!((c, out.trim()), (0, "\"foo\""));
    let (c, _, err) = s.cli(&[
        "-r", "none", "profiles", "set", "cl", "param", "my/data", "to", "bar",
    ]);
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("conflict"), "{err}");
    let (c, _, _) = s.cli(&["machines", "show", "nope"]);
    assert_eq!(c, 4);
    let (c, _, _) = s.cli(&["machines", "exists", "Name:m1"]);
    assert_eq!(c, 0);
    let (c, _, err) = s.cli(&["machines", "list", "Name", "Foo", "x"]);
    assert_eq!(c, 2);
    assert!(err.contains('^'), "{err}");
    let (c, _, _) = s.cli(&["machines", "create", "m1"]);
    assert_eq!(c, 2, "duplicate is bad input, as embedded");
    let (c, out, _) = s.cli(&[
        "machines",
        "update",
        "Name:m1",
        r#"{"Workflow":"a"}"#,
        "-r",
        r#"{"Workflow":""}"#,
    ]);
    assert_eq!(c, 0);
    assert!(out.contains("\"a\""));
    let (c, _, _) = s.cli(&[
        "machines",
        "update",
        "Name:m1",
        r#"{"Workflow":"b"}"#,
        "-r",
        r#"{"Workflow":""}"#,
    ]);
    assert_eq!(c, 3);
    let (c, _, _) = s.cli(&[
        "machines", "meta", "set", "Name:m1", "key", "icon", "to", "anchor",
    ]);
    assert_eq!(c, 0);
    let (c, out, _) = s.cli(&["machines", "meta", "get", "Name:m1", "key", "icon"]);
    assert_eq!((c, out.trim()), (0, "\"anchor\""));
    let (c, out, _) = s.cli(&[
        "machines",
        "list",
        "Name",
        "Eq",
        "m1",
        "--slim",
        "Params,Meta",
    ]);
    assert_eq!(c, 0);
    assert!(
        out.contains("\"Workflow\": \"a\"") && !out.contains("Meta"),
        "{out}"
    );
    let (c, out, _) = s.cli(&["machines", "destroy", "Name:m1"]);
    assert_eq!((c, out.trim()), (0, "Deleted machine Name:m1"));
    let out = Command::new(BIN)
        .args(["-E", &s.url, "-T", "forged", "machines", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let out = Command::new(BIN)
        .args(["-E", "http://127.0.0.1:1", "machines", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn sigterm_flushes_and_exits_zero() {
    let s = Server::start(&[]);
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "kept"})).0, 201);
    let (code, dir) = s.stop();
    assert_eq!(code, 0);
    let s = Server::start_in(dir, &[]);
    let (st, _, _) = s.call("GET", "/machines/Name:kept", None, &[]);
    assert_eq!(st, 200);
}

#[test]
fn coordination_endpoints() {
    let s = Server::start(&[]);
    for body in [
        json!({"Name": "cluster/manager", "Schema": {"type": "boolean", "default": false}}),
        json!({"Name": "cluster/leader", "Schema": {"type": "boolean", "default": false}}),
    ] {
        assert_eq!(s.json("POST", "/params", &body).0, 201);
    }
    let profile =
        json!({"Name": "c", "Params": {"cluster/profile": "c", "cluster/filter": "Profiles Eq c"}});
    assert_eq!(s.json("POST", "/profiles", &profile).0, 201);
    for i in 0..4 {
        let m = json!({"Name": format!("m{i}"), "Profiles": ["c"]});
        assert_eq!(s.json("POST", "/machines", &m).0, 201);
    }

    // Profile tokens: minted by the admin, good for their profile only.
    let (st, v, _) = s.call("POST", "/profiles/c/token?ttl=60", None, &[]);
    assert_eq!(st, 200, "{v}");
    let token = format!("Bearer {}", v["Token"].as_str().unwrap());
    let with = |m: &str, p: &str| s.call(m, p, None, &[("Authorization", &token)]).0;
    assert_eq!(with("GET", "/profiles/c"), 200);
    assert_eq!(with("GET", "/profiles/global"), 403);
    assert_eq!(with("GET", "/machines"), 403);
    assert_eq!(
        with("POST", "/profiles/global/token"),
        403,
        "a token mints only what it covers"
    );
    assert_eq!(with("POST", "/profiles/c/token"), 200);
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        s.call("GET", "/profiles/c", None, &[("Authorization", &forged)])
            .0,
        401
    );

    // Long-poll count: satisfied now, or 408 after the timeout.
    let (st, v, _) = s.call("GET", "/wait/count?until=%3E%3D4&Profiles=Eq(c)", None, &[]);
    assert_eq!((st, v["Count"].as_u64()), (200, Some(4)), "{v}");
    let (st, v, _) = s.call(
        "GET",
        "/wait/count?until=%3D%3D9&timeout=0.2&Profiles=Eq(c)",
        None,
        &[],
    );
    assert_eq!(st, 408, "{v}");
    drp_error(&v, 408);
    assert_eq!(s.call("GET", "/wait/count?until=lots", None, &[]).0, 400);

    // Election and a workflow on the leaders.
    let (st, v, _) = s.call("POST", "/clusters/c/elect?leaders=2", None, &[]);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    let body = json!({"Workflow": "k3s", "Filter": "cluster/leader Eq true Profiles Eq c", "Meta": {"icon": "anchor"}});
    let (st, v) = s.json("POST", "/workflow-all", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["succeeded"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, _, n) = s.call(
        "HEAD",
        "/machines?Workflow=Eq(k3s)&Meta.icon=Eq(anchor)",
        None,
        &[],
    );
    assert_eq!(n, Some(2));

    // Rendering with the store's token minter.
    let (st, text, _) = {
        let r = ureq::post(&format!("{}/api/v3/machines/Name:m0/render", s.url))
            .set("Authorization", &s.bearer())
            .send_string("{{ .Param \"cluster/profile\" }}:{{ .Machine.Name }}");
        let r = r.unwrap();
        (r.status(), r.into_string().unwrap(), ())
    };
    assert_eq!((st, text.as_str()), (200, "c:m0"));

    // Events as server-sent events, resumable.
    let r = ureq::get(&format!("{}/api/v3/events?kind=profiles&from=1", s.url))
        .set("Authorization", &s.bearer())
        .call()
        .unwrap();
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let mut lines = BufReader::new(r.into_reader()).lines();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let l = lines.next().unwrap().unwrap();
        if let Some(id) = l.strip_prefix("id: ") {
            ids.push(id.to_string());
        }
        if let Some(d) = l.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(d).unwrap();
            assert_eq!(e["Kind"], "profiles");
        }
    }
    let r = ureq::get(&format!("{}/api/v3/events?kind=profiles", s.url))
        .set("Authorization", &s.bearer())
        .set("Last-Event-ID", &ids[0])
        .call()
        .unwrap();
    let mut lines = BufReader::new(r.into_reader()).lines();
    let first = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(id) = l.strip_prefix("id: ") {
            break id.to_string();
        }
    };
    assert_eq!(first, ids[1], "resumes right after the last event seen");
    assert_eq!(s.call("GET", "/events?from=999999", None, &[]).0, 400);
}

/// kill -9 mid-load in durable mode: every acknowledged write is there after
/// a restart, and the rebuilt indexes verify.
#[test]
fn kill_9_loses_no_acknowledged_write() {
    let s = Server::start(&["--durable"]);
    for t in 0..4 {
        let m = json!({"Name": format!("k{t}")});
        assert_eq!(s.json("POST", "/machines", &m).0, 201);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (url, auth, stop) = (s.url.clone(), s.bearer(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = None;
                for i in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let r = ureq::post(&format!("{url}/api/v3/machines/Name:k{t}/params/n"))
                        .set("Authorization", &auth)
                        .set("Content-Type", "application/json")
                        .send_string(&i.to_string());
                    match r {
                        Ok(resp) if resp.status() == 200 => acked = Some(i),
                        _ => break, // the server is gone
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(400));
    Command::new("kill")
        .args(["-9", &s.child.id().to_string()])
        .status()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<Option<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        acked.iter().all(Option::is_some),
        "writes were acknowledged before the kill: {acked:?}"
    );
    let data = s.dir.path().join("db");
    let store = fleetkv::Store::open(&data).unwrap();
    for (t, a) in acked.iter().enumerate() {
        let got = store
            .machines()
            .get_param(&format!("Name:k{t}"), "n", false)
            .unwrap();
        let got = got.and_then(|v| v.as_u64());
        // The last acknowledged value, or one the server wrote but could not
        // acknowledge before it died.
        assert!(got >= *a, "machine k{t}: acknowledged {a:?}, found {got:?}");
    }
    store.verify_indexes().unwrap();
}

/// The (method, path) pairs `router()` in `src/server/mod.rs` declares, read
/// from its source, so a route added there is checked here without editing
/// this test. `{*key}` is written `{key}`, as OpenAPI has it.
fn router_routes() -> std::collections::BTreeSet<(String, String)> {
    let src = include_str!("../src/server/mod.rs");
    let body = &src[src.find("pub fn router(").expect("router() in mod.rs")..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let mut out = std::collections::BTreeSet::new();
    for chunk in body.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().replace("{*", "{");
        // The method routers, up to the parenthesis closing `.route(`.
        let mut depth = 1;
        let end = chunk
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap()
            .0;
        let methods = &chunk[..end];
        for m in ["get", "head", "post", "put", "patch", "delete"] {
            let called = methods.match_indices(&format!("{m}(")).any(|(i, _)| {
                !methods[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if called {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn openapi_documents_every_route() {
    let routes = router_routes();
    // The parse above found what is known to be there, coordination included.
    let known = [
        ("get", "/api/v3/info"),
        ("get", "/api/v3/openapi.json"),
        ("get", "/api/v3/{kind}"),
        ("head", "/api/v3/{kind}"),
        ("post", "/api/v3/{kind}"),
        ("get", "/api/v3/{kind}/{id}"),
        ("put", "/api/v3/{kind}/{id}"),
        ("patch", "/api/v3/{kind}/{id}"),
        ("delete", "/api/v3/{kind}/{id}"),
        ("get", "/api/v3/{kind}/{id}/params"),
        ("patch", "/api/v3/{kind}/{id}/params"),
        ("get", "/api/v3/{kind}/{id}/params/{key}"),
        ("post", "/api/v3/{kind}/{id}/params/{key}"),
        ("delete", "/api/v3/{kind}/{id}/params/{key}"),
        ("post", "/api/v3/profiles/{id}/token"),
        ("get", "/api/v3/wait/count"),
        ("get", "/api/v3/wait/machines/{id}"),
        ("post", "/api/v3/clusters/{name}/elect"),
        ("post", "/api/v3/workflow-all"),
        ("post", "/api/v3/machines/{id}/render"),
        ("get", "/api/v3/events"),
    ];
    for (m, p) in known {
        assert!(
            routes.contains(&(m.to_string(), p.to_string())),
            "{m} {p} not found in router(): {routes:?}"
        );
    }

    let s = Server::start(&[]);
    let (st, doc, _) = s.call("GET", "/openapi.json", None, &[]);
    assert_eq!(st, 200);
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            documented.insert((m.clone(), path.clone()));
        }
    }
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes without #[utoipa::path] in ApiDoc: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&routes).collect();
    assert!(stale.is_empty(), "documented but not routed: {stale:?}");

    // Each operation answers something, and its errors are DRP-shaped.
    let error = "#/components/schemas/ApiErrorBody";
    for (m, p) in &routes {
        let op = &doc["paths"][p][m];
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.keys().any(|c| c.starts_with('2')), "{m} {p}");
        for (code, r) in responses {
            if code.starts_with('4') || code.starts_with('5') {
                let body = &r["content"]["application/json"]["schema"]["$ref"];
                if m != "head" {
                    assert_eq!(body, error, "{m} {p} {code}");
                }
            }
        }
    }
    // The coordination shapes.
    let ok = |m: &str, p: &str| doc["paths"][p][m]["responses"]["200"]["content"].clone();
    let schema = |m: &str, p: &str| ok(m, p)["application/json"]["schema"].clone();
    let props = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
    assert_eq!(
        schema("post", "/api/v3/profiles/{id}/token")["$ref"],
        "#/components/schemas/TokenReply"
    );
    assert!(props("TokenReply")["Token"].is_object());
    assert!(props("CountReply")["Count"].is_object());
    assert!(props("WaitReply")["Status"].is_object());
    assert_eq!(
        schema("post", "/api/v3/clusters/{name}/elect")["type"],
        "array"
    );
    for k in ["succeeded", "unchanged", "failed"] {
        assert!(props("WorkflowReport")[k].is_object(), "{k}");
    }
    for k in ["Workflow", "Filter", "Meta"] {
        assert!(props("WorkflowAll")[k].is_object(), "{k}");
    }
    assert!(
        doc["paths"]["/api/v3/machines/{id}/render"]["post"]["requestBody"]["content"]
            ["text/plain"]
            .is_object()
    );
    let sse = &ok("get", "/api/v3/events")["text/event-stream"];
    assert!(sse.is_object(), "{}", ok("get", "/api/v3/events"));
    let text = doc["paths"]["/api/v3/events"]["get"]["responses"]["200"]["description"]
        .as_str()
        .unwrap();
    for part in ["REV.SEQ", "event: change", "event: error", "Last-Event-ID"] {
        assert!(text.contains(part), "{part} in {text}");
    }
    // A param's value is any JSON, not only an object (schemathesis found
    // `null` and numbers answered against `"type": "object"`).
    let param = &doc["paths"]["/api/v3/{kind}/{id}/params/{key}"];
    for m in ["get", "post", "delete"] {
        let answer = &param[m]["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(
            answer.is_object() && answer.get("type").is_none(),
            "{m}: {answer}"
        );
    }
    let sent = &param["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert!(sent.get("type").is_none(), "{sent}");
    let wait = &doc["paths"]["/api/v3/wait/count"]["get"];
    assert!(wait["responses"]["408"].is_object());
    let until = wait["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "until")
        .unwrap();
    assert_eq!(until["required"], true);
}
