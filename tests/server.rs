//! `fleetkv serve` end to end: the real binary on a free loopback port,
//! driven with ureq and with the CLI's remote mode.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

mod common;

use common::{Server, BIN};

fn raw(s: &Server, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    // A server that cuts a flood off may close before the request is all
    // written: the write fails, and what it answered is still readable.
    if let Err(e) = c.write_all(request.as_bytes()) {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        assert!(matches!(e.kind(), BrokenPipe | ConnectionReset), "{e}");
    }
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

/// Opens a raw connection to the server.
fn connect(s: &Server) -> std::net::TcpStream {
    std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap()
}

/// True when the server closes `c` (EOF or reset) within `within`; bytes
/// it sends first (an error response) are skipped.
fn closed_within(c: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// A fake server on a free port answering every connection with `reply`
/// (`None`: it accepts and never answers).
fn fake_server(reply: Option<&'static [u8]>) -> String {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            match reply {
                Some(r) => {
                    let _ = c.write_all(r);
                }
                None => held.push(c),
            }
        }
    });
    url
}

#[test]
fn remote_cli_names_servers_that_answer_garbage_or_nothing() {
    let cli = |url: &str, extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["-E", url, "-T", "x"])
            .args(extra)
            .args(["machines", "count"])
            .env_remove("RS_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // HTTP, but not fleetkv's answer.
    let url = fake_server(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"));
    let (code, err) = cli(&url, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no X-DRP-List-Count"), "{err}");
    let out = Command::new(BIN)
        .args(["-E", &url, "-T", "x", "machines", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));
    // Not HTTP at all.
    let url = fake_server(Some(b"SSH-2.0-OpenSSH_9.2\r\n"));
    let (code, err) = cli(&url, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the server"), "{err}");
    // Accepts, never answers: a timeout (exit 5) after --http-timeout.
    let url = fake_server(None);
    let (code, err) = cli(&url, &["--http-timeout", "1"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn sigterm_ends_open_event_streams() {
    use std::io::{Read as _, Write as _};
    let s = Server::start(&[]);
    let mut c = connect(&s);
    write!(
        c,
        "GET /api/v3/events HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        s.bearer()
    )
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Without ending the stream the stop would wait out its 30 s grace.
    let started = std::time::Instant::now();
    let (code, _) = s.stop();
    assert_eq!(code, 0);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "stop waited {:?} for an open event stream",
        started.elapsed()
    );
    assert!(closed_within(&mut c, std::time::Duration::from_secs(1)));
}

#[test]
fn slowloris_clients_are_cut_off_and_others_served() {
    use std::io::Write as _;
    let s = Server::start(&["--header-timeout", "1"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 64 clients that send a request line, then a header byte every 100 ms.
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut c = connect(&s);
        c.write_all(b"GET /api/v3/info HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut writer = c.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if writer.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        slow.push(c);
    }
    // Everyone else is served meanwhile.
    for i in 0..20 {
        let (st, _) = s.json("POST", "/machines", &json!({ "Name": format!("m{i}") }));
        assert_eq!(st, 201);
    }
    // Every trickling connection is closed by the header deadline (1 s),
    // long before it would finish its headers (never).
    for c in &mut slow {
        assert!(closed_within(c, std::time::Duration::from_secs(10)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(s.call("HEAD", "/machines", None, &[]).2, Some(20));
}

#[test]
fn header_floods_get_431_and_the_server_stays_up() {
    let s = Server::start(&[]);
    let auth = format!("Authorization: {}\r\n", s.bearer());
    // Over the DRP-shaped limit (16 KiB): a 431 with an error body.
    let big = format!("X-Big: {}\r\n", "a".repeat(20 << 10));
    let out = raw(
        &s,
        &format!(
            "GET /api/v3/machines HTTP/1.1\r\nHost: x\r\n{auth}{big}Connection: close\r\n\r\n"
        ),
    );
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let body: Value = serde_json::from_str(&out[out.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    drp_error(&body, 431);
    // A flood: 1 MiB of headers, and 5,000 tiny ones. Cut off before they
    // are buffered: a bare 431 or a closed connection, never a 200.
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1 << 20));
    let many: String = (0..5000).map(|i| format!("X-{i}: v\r\n")).collect();
    for flood in [huge, many] {
        let out = raw(
            &s,
            &format!("GET /api/v3/machines HTTP/1.1\r\nHost: x\r\n{auth}{flood}\r\n"),
        );
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 431"),
            "{out:.200}"
        );
    }
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "ok"})).0, 201);
}

#[test]
fn an_event_stream_that_is_never_read_is_dropped() {
    use std::io::Write as _;
    // One waiter slot: while the stalled stream holds it, waits get 503.
    let s = Server::start(&["--write-timeout", "1", "--max-waiters", "1"]);
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "big"})).0, 201);
    let mut c = connect(&s);
    write!(
        c,
        "GET /api/v3/events?kind=machines HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        s.bearer()
    )
    .unwrap();
    // The stream is open (and holds the one slot) once its head arrives;
    // probing before that could take the slot from it.
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut c, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let wait = "/wait/count?until=%3E%3D0&timeout=0";
    assert_eq!(
        s.call("GET", wait, None, &[]).0,
        503,
        "the stream holds the slot"
    );
    // ~60 MB of events (each carries the object before and after) that the
    // client never reads: far beyond the socket buffers.
    for i in 0..120 {
        let text = format!("{i}{}", "x".repeat(256 << 10));
        let patch = json!([{"op": "add", "path": "/Description", "value": text}]).to_string();
        let (st, _, _) = s.call(
            "PATCH",
            "/machines/Name:big",
            Some(("application/json-patch+json", &patch)),
            &[],
        );
        assert_eq!(st, 200);
    }
    // The write deadline (1 s) disconnects it and frees the slot.
    let mut freed = false;
    for _ in 0..200 {
        if s.call("GET", wait, None, &[]).0 == 200 {
            freed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        freed,
        "the stalled event stream still holds its waiter slot"
    );
    drop(c);
}

#[test]
fn tls_serves_the_cli_and_refuses_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (crt, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    let s = Server::start(&[
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let cli = |args: &[&str]| s.cli(args);
    let ca = crt.to_str().unwrap();
    let (code, out, err) = cli(&["--ca-cert", ca, "machines", "create", "tls-1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["Name"],
        "tls-1"
    );
    let (code, out, _) = cli(&["--ca-cert", ca, "machines", "count"]);
    assert_eq!((code, out.trim()), (0, "1"));
    // The verbs on their own connections (export, import parts, the event
    // stream) trust the same CA.
    let (code, out, err) = cli(&["--ca-cert", ca, "export"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["machines"][0]["Name"],
        "tls-1"
    );
    let (code, out, err) = cli(&[
        "--ca-cert",
        ca,
        "watch",
        "machines",
        "--from",
        "1",
        "--timeout",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tls-1"), "{out}");
    // Without trusting the certificate: a clear transport error, exit 1.
    let (code, _, err) = cli(&["machines", "count"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the server"), "{err}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = s.url.replace("https://", "http://");
    let out = Command::new(BIN)
        .args(["-E", &plain, "-T", &s.key, "machines", "count"])
        .env_remove("RS_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A missing key file is a clear startup error.
    let bad = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("db2"))
        .args(["--tls-cert", ca, "--tls-key"])
        .arg(dir.path().join("nope.pem"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TLS key"));
}

/// A raw request (no client normalises the path): (status line, body).
fn raw_get(s: &Server, path: &str) -> (String, Value) {
    let answer = raw(
        s,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            s.bearer()
        ),
    );
    let status = answer.lines().next().unwrap_or("").to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, v)
}

#[test]
fn percent_encoded_path_segments() {
    let s = Server::start(&[]);
    let def = json!({"Name": "my/data", "Schema": {"type": "string", "default": "none"}});
    assert_eq!(s.json("POST", "/params", &def).0, 201);
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "m1"})).0, 201);
    assert_eq!(s.json("POST", "/profiles", &json!({"Name": "p1"})).0, 201);
    // What drppy-client sends: every reserved character encoded, `:` too.
    let (st, v, _) = s.call("GET", "/params/my%2Fdata", None, &[]);
    assert_eq!((st, &v["Name"]), (200, &json!("my/data")), "{v}");
    let (st, v) = s.json(
        "POST",
        "/machines/Name%3Am1/params/my%2Fdata",
        &json!("set"),
    );
    assert_eq!((st, v), (200, json!("set")));
    let (_, v, _) = s.call("GET", "/machines/Name:m1/params/my/data", None, &[]);
    assert_eq!(v, json!("set"), "raw and encoded slashes name one param");
    let (st, v, _) = s.call("GET", "/machines/Name%3Am1/params/my%2Fdata", None, &[]);
    assert_eq!((st, v), (200, json!("set")));
    // Decoded once: `%252F` is the three characters `%2F`, not a slash.
    let (st, v) = s.json("POST", "/profiles/p1/params/a%252Fb", &json!(1));
    assert_eq!((st, v), (200, json!(1)));
    let (_, v, _) = s.call("GET", "/profiles/p1/params", None, &[]);
    assert_eq!(v, json!({"a%2Fb": 1}));
    let def = json!({"Name": "my/data", "Description": "d", "Schema": {"type": "string"}});
    let (st, v) = s.json("PUT", "/params/my%2Fdata", &def);
    assert_eq!((st, &v["Description"]), (200, &json!("d")), "{v}");

    // Refused, DRP-shaped, naming the segment.
    let refused = [
        ("/api/v3/machines/a%2Fb", "a/b"),
        ("/api/v3/profiles/p%2F1/params", "p/1"),
        ("/api/v3/clusters/c%2Fd/members", "c/d"),
        ("/api/v3/machines/%FF", "%FF"),
        ("/api/v3/machines/Name:m1/params/my%C3", "my%C3"),
        ("/api/v3/machines/%zz", "%zz"),
        ("/api/v3/params/%2E%2E", "%2E%2E"),
        ("/api/v3/params/my%2F..%2Fdata", "my%2F..%2Fdata"),
        ("/api/v3/params/my%2F%2Fdata", "my%2F%2Fdata"),
        ("/api/v3/machines/Name:m1/params/a/../b", ".."),
        ("/api/v3/machines//params", "\"\""),
        ("/api/v3/machines/Name:m1/params/a%00b", "a%00b"),
    ];
    for (path, named) in refused {
        let (status, v) = raw_get(&s, path);
        assert!(status.starts_with("HTTP/1.1 400"), "{path}: {status} {v}");
        drp_error(&v, 400);
        let msg = v["Messages"][0].as_str().unwrap_or("");
        assert!(msg.contains(named), "{path}: {msg:?} names {named}");
    }
    // Nothing was written by the refused requests.
    let (_, v, n) = s.call("GET", "/machines", None, &[]);
    assert_eq!(
        (n, v[0]["Params"].clone()),
        (Some(1), json!({"my/data": "set"}))
    );
}

#[test]
fn go_booleans_in_queries() {
    let s = Server::start(&[]);
    let def = json!({"Name": "my/data", "Schema": {"type": "string", "default": "none"}});
    assert_eq!(s.json("POST", "/params", &def).0, 201);
    for n in ["a", "b"] {
        assert_eq!(s.json("POST", "/machines", &json!({"Name": n})).0, 201);
    }
    for t in ["1", "t", "T", "TRUE", "true", "True"] {
        let (st, v, _) = s.call(
            "GET",
            &format!("/machines/Name:a/params?aggregate={t}"),
            None,
            &[],
        );
        assert_eq!(
            (st, &v["my/data"]),
            (200, &json!("none")),
            "aggregate={t}: {v}"
        );
        let (_, v, _) = s.call(
            "GET",
            &format!("/machines?sort=Name&reverse={t}"),
            None,
            &[],
        );
        assert_eq!(v[0]["Name"], "b", "reverse={t}");
    }
    for f in ["0", "f", "F", "FALSE", "false", "False"] {
        let (st, v, _) = s.call(
            "GET",
            &format!("/machines/Name:a/params?aggregate={f}"),
            None,
            &[],
        );
        assert_eq!((st, v), (200, json!({})), "aggregate={f}");
        let (_, v, _) = s.call(
            "GET",
            &format!("/machines?sort=Name&reverse={f}"),
            None,
            &[],
        );
        assert_eq!(v[0]["Name"], "a", "reverse={f}");
    }
    // The SDK's other booleans: aggregate on one object, decode (a no-op:
    // secure params are stored as sent).
    let (st, v, _) = s.call(
        "GET",
        "/machines/Name:a?aggregate=True&decode=True",
        None,
        &[],
    );
    assert_eq!((st, &v["Params"]["my/data"]), (200, &json!("none")), "{v}");
    let (_, v, _) = s.call("GET", "/machines/Name:a", None, &[]);
    assert_eq!(v["Params"], json!({}));
    let (st, v, _) = s.call("GET", "/machines?decode=1&aggregate=T", None, &[]);
    assert_eq!(
        (st, &v[1]["Params"]["my/data"]),
        (200, &json!("none")),
        "{v}"
    );
    let (st, _, n) = s.call("HEAD", "/machines?reverse=False&Name=Eq(a)", None, &[]);
    assert_eq!((st, n), (200, Some(1)));
    for path in [
        "/machines/Name:a/params?aggregate=yes",
        "/machines/Name:a/params/my%2Fdata?aggregate=tRUE",
        "/machines/Name:a?decode=2",
        "/machines?reverse=on",
        "/machines?decode=nope",
        "/profiles?aggregate=",
    ] {
        let (st, v, _) = s.call("GET", path, None, &[]);
        if path.ends_with('=') {
            assert_eq!(st, 200, "a bare key is true: {v}");
            continue;
        }
        assert_eq!(st, 400, "{path}: {v}");
        drp_error(&v, 400);
        let msg = v["Messages"][0].as_str().unwrap_or("");
        let key = path.split('?').nth(1).unwrap().split('=').next().unwrap();
        assert!(
            msg.contains(key) && msg.contains("True, 0, f"),
            "{path}: {msg}"
        );
    }
}

#[test]
fn post_params_replaces_them_all() {
    let s = Server::start(&[]);
    let def = json!({"Name": "cluster/leader", "Schema": {"type": "boolean", "default": false}});
    assert_eq!(s.json("POST", "/params", &def).0, 201);
    let m = json!({"Name": "m1", "Params": {"old": 1, "cluster/leader": true}});
    assert_eq!(s.json("POST", "/machines", &m).0, 201);
    let p = json!({"Name": "p1", "Params": {"old": 1}});
    assert_eq!(s.json("POST", "/profiles", &p).0, 201);
    let all = json!({"new": [1, 2], "cluster/leader": false});
    for obj in ["/machines/Name%3Am1", "/profiles/p1"] {
        let (st, v) = s.json("POST", &format!("{obj}/params"), &all);
        assert_eq!((st, &v), (200, &all), "{obj}");
        let (_, v, _) = s.call("GET", &format!("{obj}/params"), None, &[]);
        assert_eq!(v, all, "{obj}: the old params are gone");
        // A value its definition refuses, or a body that is not an object:
        // 400, nothing written.
        let (st, v) = s.json(
            "POST",
            &format!("{obj}/params"),
            &json!({"cluster/leader": "x"}),
        );
        assert_eq!(st, 400, "{obj}: {v}");
        drp_error(&v, 400);
        let (st, v) = s.json("POST", &format!("{obj}/params"), &json!([1]));
        assert_eq!(st, 400, "{obj}: {v}");
        let (_, v, _) = s.call("GET", &format!("{obj}/params"), None, &[]);
        assert_eq!(v, all, "{obj}: unchanged");
    }
    assert_eq!(
        s.json("POST", "/params/cluster%2Fleader/params", &all).0,
        400
    );
    assert_eq!(s.json("POST", "/machines/Name:nope/params", &all).0, 404);
    let (st, _) = s.json("POST", "/machines/Name:m1/params", &json!({}));
    assert_eq!(st, 200);
    let (_, v, _) = s.call("GET", "/machines/Name:m1", None, &[]);
    assert_eq!(v["Params"], json!({}));
    // The claim is param-set, as for one param: a profile token may replace
    // its profile's params, not another's.
    assert_eq!(s.json("POST", "/profiles", &json!({"Name": "p2"})).0, 201);
    let (_, v, _) = s.call("POST", "/profiles/p1/token?ttl=60", None, &[]);
    let token = format!("Bearer {}", v["Token"].as_str().unwrap_or(""));
    let body = json!({"k": "v"}).to_string();
    let with = |p: &str| {
        let (st, v, _) = s.call(
            "POST",
            p,
            Some(("application/json", &body)),
            &[("Authorization", &token)],
        );
        (st, v)
    };
    assert_eq!(with("/profiles/p1/params").0, 200);
    let (st, v) = with("/profiles/p2/params");
    assert_eq!(st, 403, "{v}");
    drp_error(&v, 403);
    let (_, v, _) = s.call("GET", "/profiles/p2/params", None, &[]);
    assert_eq!(v, json!({}));
}

/// DRP's clients send a body (`{}`) with DELETE and sometimes GET; one the
/// handler never reads, arriving after the headers, must not cost the
/// kept-alive connection the next request.
#[test]
fn unread_bodies_keep_the_connection() {
    use std::io::{Read as _, Write as _};
    let s = Server::start(&[]);
    for n in ["m1", "m2"] {
        assert_eq!(s.json("POST", "/machines", &json!({"Name": n})).0, 201);
    }
    let addr = s.url.trim_start_matches("http://");
    for (method, path) in [
        ("DELETE", "/api/v3/machines/Name:m1"),
        ("GET", "/api/v3/machines/Name:m2"),
    ] {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n",
            s.bearer()
        );
        c.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Without the fix the server has closed by now: writes may fail.
        let _ = c.write_all(b"{}");
        let _ = c.write_all(b"GET /api/v3/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert_eq!(
            out.matches("HTTP/1.1 200").count(),
            2,
            "{method} {path} then GET /info on one connection: {out}"
        );
    }
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
    assert_eq!(
        with("POST", "/profiles/c/token"),
        403,
        "a profile token has no profiles/token claim: it cannot renew itself"
    );
    // The index check: the admin's, never a token's.
    let (st, v, _) = s.call("GET", "/check", None, &[]);
    assert_eq!(st, 200, "{v}");
    assert!(v["Revision"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(with("GET", "/check"), 403);
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

/// kill -9 mid-load: every acknowledged write is there after a restart, and
/// the rebuilt indexes verify. This is the process-crash promise, and with
/// writers this busy it mostly holds with `--no-fsync` too: sled hands a
/// batch to the kernel (a `pwrite` into the page cache, which a killed
/// process leaves behind) as soon as the next batch starts, so only a write
/// acknowledged with no batch after it can be lost, a window this test
/// rarely hits (`tests/linearizability.rs` does, with `--no-fsync`). What
/// fsync adds is checked directly by `every_acknowledgement_follows_an_fsync`
/// and by the fault backend's durable image (`tests/crash.rs`).
#[test]
fn kill_9_loses_no_acknowledged_write() {
    let mut s = Server::start(&[]);
    for t in 0..4 {
        let m = json!({"Name": format!("k{t}")});
        assert_eq!(s.json("POST", "/machines", &m).0, 201);
    }
    use std::sync::atomic::Ordering;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Each writer reports its 20th acknowledged write, so the kill waits
    // for every writer to have some, however slow the machine, rather than
    // for a fixed time.
    let (twenty, reported) = std::sync::mpsc::channel();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (url, auth, stop) = (s.url.clone(), s.bearer(), stop.clone());
            let twenty = twenty.clone();
            std::thread::spawn(move || {
                let mut acked = None;
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = ureq::post(&format!("{url}/api/v3/machines/Name:k{t}/params/n"))
                        .set("Authorization", &auth)
                        .set("Content-Type", "application/json")
                        .send_string(&i.to_string());
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            acked = Some(i);
                            if i == 19 {
                                let _ = twenty.send(t);
                            }
                        }
                        _ => break, // the server is gone
                    }
                }
                acked
            })
        })
        .collect();
    for _ in 0..4 {
        if let Err(e) = reported.recv_timeout(std::time::Duration::from_secs(60)) {
            let _ = s.child.kill();
            panic!("a writer had no 20 writes acknowledged in a minute: {e}");
        }
    }
    Command::new("kill")
        .args(["-9", &s.child.id().to_string()])
        .status()
        .unwrap();
    // Reaped, so its lock on the store is gone.
    s.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Option<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        acked.iter().all(|a| a.is_some_and(|n| n >= 19)),
        "every writer had 20 writes acknowledged before the kill: {acked:?}"
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
        ("post", "/api/v3/{kind}/{id}/params"),
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
        ("get", "/api/v3/watch/members"),
        ("post", "/api/v3/clusters/{name}"),
        ("get", "/api/v3/clusters/{name}/members"),
        ("head", "/api/v3/clusters/{name}/members"),
        ("post", "/api/v3/clusters/{name}/members/{machine}"),
        ("delete", "/api/v3/clusters/{name}/members/{machine}"),
        ("get", "/api/v3/clusters/{name}/members/{machine}/role"),
        ("put", "/api/v3/clusters/{name}/members/{machine}/role"),
        ("get", "/api/v3/export"),
        ("post", "/api/v3/import"),
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

/// A power loss keeps only what was fsynced, so every write the server
/// acknowledges must have an fsync completed between its request and its
/// answer. Seen from outside with strace on the running server: one client
/// writing in a loop (no two writes can share a flush), and between two
/// `HTTP/1.1 2xx` answers there must be a completed `fdatasync`/`fsync`.
/// With `--no-fsync` this fails: sled's background flush syncs every 500 ms.
#[test]
fn every_acknowledgement_follows_an_fsync() {
    let Some(strace) = common::tool("strace") else {
        return;
    };
    let s = Server::start(&[]);
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "f"})).0, 201);
    let pid = s.child.id();
    let trace = s.dir.path().join("trace");
    let mut tracer = Command::new(strace)
        .args([
            "-f",
            "-e",
            "trace=fdatasync,fsync,write,writev,sendto,sendmsg",
        ])
        .args(["-e", "signal=none", "-s", "16", "-o"])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // "Process N attached with T threads": from here on every thread is
    // traced.
    let mut said = BufReader::new(tracer.stderr.take().unwrap()).lines();
    while !said
        .next()
        .expect("strace exited")
        .unwrap()
        .contains("attached")
    {}
    std::thread::spawn(move || said.for_each(drop));
    let writes = 40;
    for i in 0..writes {
        let r = s.call(
            "POST",
            "/machines/Name:f/params/n",
            Some(("application/json", &i.to_string())),
            &[],
        );
        assert_eq!(r.0, 200, "{r:?}");
    }
    // SIGINT makes strace detach and leave the server running.
    Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status()
        .unwrap();
    tracer.wait().unwrap();
    let trace = std::fs::read_to_string(&trace).unwrap();
    let (mut answers, mut synced) = (0, false);
    for line in trace.lines() {
        // `fsync(7) = 0`, or `<... fdatasync resumed>) = 0` when another
        // thread's call came in between.
        let completed_sync = line.contains("sync") && line.ends_with("= 0");
        if completed_sync {
            synced = true;
        } else if line.contains("\"HTTP/1.1 2") {
            assert!(
                synced,
                "answer {answers} without an fsync before it:\n{trace}"
            );
            (answers, synced) = (answers + 1, false);
        }
    }
    assert_eq!(answers, writes, "every answer seen in the trace:\n{trace}");
}

/// sled writes a log message too large for its log buffer (a node over a
/// quarter of a segment, here one holding a 300 KB param) to a file of its
/// own under `blobs/`. The log's sync covers neither that file nor its name
/// in the directory, so both must be synced before the write is answered,
/// or a power loss leaves a durable log pointing at a missing or torn blob.
/// Seen with strace on one CLI process: every blob file it creates is
/// fsynced before it is closed, the `blobs` directory is fsynced after
/// each create, and all of it happens before the answer is printed.
#[test]
fn a_value_sled_writes_to_a_file_of_its_own_is_synced_before_the_answer() {
    let Some(strace) = common::tool("strace") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let doc = json!({"Name": "big", "Params": {"blob": "x".repeat(300_000)}});
    let mut child = Command::new(strace)
        .args(["-f", "-e", "trace=openat,fsync,fdatasync,close,write"])
        .args(["-e", "signal=none", "-s", "16", "-o"])
        .arg(&trace)
        .arg(BIN)
        .arg("--data")
        .arg(dir.path().join("store"))
        .args(["machines", "create", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(doc.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let trace = std::fs::read_to_string(&trace).unwrap();
    // Per thread: blob files open and not yet synced (by fd), and whether a
    // create still waits for the directory's sync.
    let mut open: Vec<(String, String, bool)> = Vec::new();
    let (mut blobs, mut dir_synced) = (0, true);
    // A call another thread interrupts is split: `openat(… <unfinished ...>`
    // and later `<... openat resumed>) = 4`. Rejoined per thread.
    let mut unfinished: Vec<(String, String)> = Vec::new();
    for line in trace.lines() {
        let (tid, call) = line.split_once(' ').unwrap_or(("", line));
        let call = call.trim_start();
        if let Some(head) = call.strip_suffix("<unfinished ...>") {
            // `fsync(4 <unfinished ...>`: the space is not the call's.
            unfinished.push((tid.to_string(), head.trim_end().to_string()));
            continue;
        }
        let joined;
        let call = match call
            .strip_prefix("<... ")
            .and_then(|r| r.split_once("resumed>"))
        {
            Some((_, tail)) => {
                let i = unfinished.iter().position(|(t, _)| t == tid).unwrap();
                joined = format!("{}{tail}", unfinished.remove(i).1);
                joined.as_str()
            }
            None => call,
        };
        let fd = call.rsplit("= ").next().unwrap_or("").to_string();
        if call.starts_with("openat(") && call.contains("/blobs/") && call.contains("O_CREAT") {
            blobs += 1;
            dir_synced = false;
            open.push((tid.to_string(), fd, false));
        } else if call.starts_with("openat(") && call.contains("/blobs\"") {
            open.push((tid.to_string(), fd, true));
        } else if let Some(rest) = call.strip_prefix("fsync(") {
            let fd = rest.split(')').next().unwrap_or("");
            if let Some(i) = open.iter().position(|(t, f, _)| t == tid && f == fd) {
                if open[i].2 {
                    dir_synced = true;
                }
                open.remove(i);
            }
        } else if let Some(rest) = call.strip_prefix("close(") {
            let fd = rest.split(')').next().unwrap_or("");
            assert!(
                !open
                    .iter()
                    .any(|(t, f, is_dir)| t == tid && f == fd && !is_dir),
                "a blob file closed without an fsync:\n{trace}"
            );
        } else if call.starts_with("write(1,") {
            assert!(
                dir_synced && open.iter().all(|(_, _, is_dir)| *is_dir),
                "the answer printed before its blobs were synced:\n{trace}"
            );
        }
    }
    assert!(
        blobs > 0,
        "sled wrote no blob file; the test needs a larger value:\n{trace}"
    );
    assert!(dir_synced, "the blobs directory was not synced:\n{trace}");
}

/// Reads server-sent events from `lines` until `n` with data: `(id, data)`.
fn sse_events(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    n: usize,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut id = String::new();
    while out.len() < n {
        let l = lines.next().unwrap().unwrap();
        if let Some(i) = l.strip_prefix("id: ") {
            id = i.to_string();
        }
        if let Some(d) = l.strip_prefix("data: ") {
            out.push((id.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    out
}

#[test]
fn membership_stream_over_sse_resumes_with_last_event_id() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["machines", "create", "m1"]).0, 0);
    let url = format!(
        // `True`: Go's spellings, as DRP's Python client sends booleans.
        "{}/api/v3/watch/members?filter=Workflow%20Eq%20done&members=True",
        s.url
    );
    let r = ureq::get(&url)
        .set("Authorization", &s.bearer())
        .call()
        .unwrap();
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let mut lines = BufReader::new(r.into_reader()).lines();
    let first = sse_events(&mut lines, 1);
    let (id0, snap) = &first[0];
    assert_eq!(snap["Snapshot"], true);
    assert_eq!(
        (snap["Count"].clone(), snap["Members"].clone()),
        (json!(0), json!([]))
    );
    assert_eq!(id0, &snap["Revision"].to_string());

    assert_eq!(s.cli(&["machines", "workflow", "m1", "done"]).0, 0);
    let got = sse_events(&mut lines, 1);
    let (id1, m) = &got[0];
    assert_eq!(m["Count"], 1);
    assert_eq!(m["Joined"][0]["Name"], "m1");
    assert!(m.get("Snapshot").is_none() && m.get("Members").is_none());
    drop(lines);

    // While nobody listens: m2 joins, m1 leaves.
    assert_eq!(
        s.cli(&[
            "machines",
            "create",
            "{\"Name\":\"m2\",\"Workflow\":\"done\"}"
        ])
        .0,
        0
    );
    assert_eq!(s.cli(&["machines", "destroy", "m1"]).0, 0);
    let r = ureq::get(&url)
        .set("Authorization", &s.bearer())
        .set("Last-Event-ID", id1)
        .call()
        .unwrap();
    let mut lines = BufReader::new(r.into_reader()).lines();
    let got = sse_events(&mut lines, 2);
    assert!(
        got.iter().all(|(_, m)| m.get("Snapshot").is_none()),
        "{got:?}"
    );
    assert_eq!(got[0].1["Joined"][0]["Name"], "m2");
    assert_eq!(got[1].1["Left"][0]["Name"], "m1");
    assert_eq!(got[1].1["Count"], 1);
    assert!(got[0].0.parse::<u64>().unwrap() > id1.parse::<u64>().unwrap());

    // Bad input, as the other endpoints answer it.
    let (code, body, _) = s.call("GET", "/watch/members?filter=Name%20Foo%20x", None, &[]);
    assert_eq!(code, 400, "{body}");
    assert!(body["Messages"].to_string().contains('^'), "{body}");
    assert_eq!(
        s.call("GET", "/watch/members?from=999999", None, &[]).0,
        400
    );
    assert_eq!(s.call("GET", "/events?from=999999", None, &[]).0, 400);
    assert_eq!(
        s.call("GET", "/watch/members?members=maybe", None, &[]).0,
        400
    );
}

#[test]
fn leases_and_campaigns_over_http() {
    let s = Server::start(&[]);
    for args in [
        &["cluster", "init", "c1"][..],
        &["machines", "create", "m1"],
        &["machines", "create", "m2"],
        &["cluster", "add", "c1", "m1"],
        &["cluster", "add", "c1", "m2"],
    ] {
        assert_eq!(s.cli(args).0, 0, "{args:?}");
    }
    let (code, lease) = s.json("POST", "/leases", &json!({"TTL": 30}));
    assert_eq!(code, 201, "{lease}");
    let id = lease["ID"].as_u64().unwrap();
    for bad in [
        json!({"TTL": 0}),
        json!({"TTL": -1}),
        json!({"TTL": "x"}),
        json!({}),
    ] {
        assert_eq!(s.json("POST", "/leases", &bad).0, 400, "{bad}");
    }
    // The leaders as a stream: the first event is the set now (empty).
    let r = ureq::get(&format!("{}/api/v3/clusters/c1/leaders", s.url))
        .set("Authorization", &s.bearer())
        .set("Accept", "text/event-stream")
        .call()
        .unwrap();
    let mut lines = BufReader::new(r.into_reader()).lines();
    assert_eq!(sse_events(&mut lines, 1)[0].1["Leaders"], json!([]));
    let (code, won, _) = s.call(
        "POST",
        &format!("/clusters/c1/campaign?machine=m1&lease={id}&leaders=1"),
        None,
        &[],
    );
    assert_eq!(code, 200, "{won}");
    let token = won["Token"].as_u64().unwrap();
    assert_eq!(sse_events(&mut lines, 1)[0].1["Leaders"][0]["Name"], "m1");
    let (code, now, _) = s.call("GET", "/clusters/c1/leaders", None, &[]);
    assert_eq!(
        (code, now["Leaders"][0]["Token"].as_u64()),
        (200, Some(token))
    );
    // No second slot: the campaign times out (408).
    let (code, _, _) = s.call(
        "POST",
        &format!("/clusters/c1/campaign?machine=m2&lease={id}&leaders=1&timeout=0.2"),
        None,
        &[],
    );
    assert_eq!(code, 408);
    // Fenced writes: the live token lands, another is a 409.
    let fenced = |t: u64| {
        s.call(
            "POST",
            "/machines/m2/params/work",
            Some(("application/json", "1")),
            &[("X-Fleetkv-Fence", &t.to_string())],
        )
        .0
    };
    assert_eq!(fenced(token), 200);
    assert_eq!(fenced(token + 1000), 409);
    // A lease on a profile write is refused; on a machine write it holds.
    let (code, _, _) = s.call(
        "POST",
        "/profiles/c1/params/x",
        Some(("application/json", "1")),
        &[("X-Fleetkv-Lease", &id.to_string())],
    );
    assert_eq!(code, 400);
    let (code, ended, _) = s.call("DELETE", &format!("/leases/{id}"), None, &[]);
    assert_eq!(code, 200, "{ended}");
    assert_eq!(sse_events(&mut lines, 1)[0].1["Leaders"], json!([]));
    let (code, _, _) = s.call("POST", &format!("/leases/{id}/keepalive"), None, &[]);
    assert_eq!(code, 404, "never revived");
}

#[test]
fn a_server_started_while_the_store_is_closing_waits_for_it() {
    // A program that closes its store and starts a server on it at once:
    // the server waits for the directory (--lock-timeout) instead of exiting.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let held = fleetkv::Store::open(&data).unwrap();
    held.machines().create(fleetkv::Machine::new("m1")).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let server = Server::start_at(&data, &[]);
    closer.join().unwrap();
    let (status, body, _) = server.call("GET", "/machines/Name:m1", None, &[]);
    assert_eq!(status, 200, "{body}");
}
