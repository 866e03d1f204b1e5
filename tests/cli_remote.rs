//! The CLI's remote mode (`-E URL`) for `import`, `export`, `watch` and the
//! `cluster` verbs: the same stdout, stderr and exit codes as on an embedded
//! store holding the same data. Each comparison runs the embedded CLI on a
//! store directory and `fleetkv serve` on a byte-for-byte copy of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

use common::{copy_dir, run, Server, BIN};

impl Server {
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "remote {args:?}: {err}");
        out
    }
}

/// The CLI on the embedded store `db`.
use common::embedded as local;

fn local_ok(db: &Path, args: &[&str]) -> String {
    let (code, out, err) = local(db, args, None);
    assert_eq!(code, 0, "embedded {args:?}: {err}");
    out
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

fn machine(i: usize, profiles: &[&str]) -> Value {
    json!({
        "Uuid": format!("00000000-0000-4000-8000-{i:012}"),
        "Name": format!("m{i}"),
        "Address": format!("10.0.0.{i}"),
        "Profiles": profiles,
        "Meta": {"color": "black"},
    })
}

/// A store with params, profiles and machines, built through the embedded CLI.
fn seed(db: &Path, dir: &Path) {
    let doc = json!({
        "params": [
            {"Name": "my/data", "Schema": {"type": "string", "default": "none"}},
        ],
        "profiles": [
            {"Name": "example", "Params": {"site": "ams"}, "Meta": {"icon": "cube"}},
        ],
        "machines": (0..6).map(|i| machine(i, if i < 4 { &["example"] } else { &[] }))
            .collect::<Vec<_>>(),
    });
    let f = write(dir, "seed.json", &doc);
    local_ok(db, &["import", f.to_str().unwrap()]);
}

/// Embedded on `a`, remote on a server over a copy of `a`.
fn twins(dir: &Path) -> (PathBuf, Server) {
    let a = dir.join("a");
    seed(&a, dir);
    let b = dir.join("b");
    copy_dir(&a, &b);
    (a, Server::start_at(&b, &[]))
}

fn strip_revisions(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("Revision");
            o.values_mut().for_each(strip_revisions);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_revisions),
        _ => {}
    }
}

fn without_revisions(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap();
    strip_revisions(&mut v);
    v
}

#[test]
fn export_equals_embedded_and_import_round_trips() {
    let dir = TempDir::new().unwrap();
    let (a, server) = twins(dir.path());
    let embedded = local_ok(&a, &["export"]);
    assert_eq!(server.ok(&["export"]), embedded);

    // Into an empty server and an empty embedded store: the same answers.
    let file = dir.path().join("all.json");
    std::fs::write(&file, &embedded).unwrap();
    let file = file.to_str().unwrap();
    let fresh = Server::start_at(&dir.path().join("c"), &[]);
    let d = dir.path().join("d");
    assert_eq!(fresh.ok(&["import", file]), "9\n");
    assert_eq!(local_ok(&d, &["import", file]), "9\n");
    let first = fresh.ok(&["export"]);
    assert_eq!(without_revisions(&first), without_revisions(&embedded));
    assert_eq!(first, local_ok(&d, &["export"]));
    // Idempotent: again, the same count and the same objects.
    assert_eq!(fresh.ok(&["import", file]), "9\n");
    assert_eq!(
        without_revisions(&fresh.ok(&["export"])),
        without_revisions(&first)
    );
    // A plain array from stdin: refused without --kind (no field says
    // machines or profiles), taken with it.
    let names = r#"[{"Name": "n1"}, {"Name": "n2"}]"#;
    let refused = fresh.cli_with(&["import", "-"], Some(names));
    assert_eq!(refused.0, 2, "{}", refused.2);
    assert_eq!(local(&d, &["import", "-"], Some(names)), refused);
    let args = &["import", "-", "--kind", "machines"][..];
    let (code, out, err) = fresh.cli_with(args, Some(names));
    assert_eq!((code, out.as_str()), (0, "2\n"), "{err}");
    assert_eq!(local(&d, args, Some(names)).1, out);
    let remote = without_revisions(&fresh.ok(&["export"]));
    assert_eq!(remote["profiles"].as_array().unwrap().len(), 2);
    assert_eq!(remote["machines"].as_array().unwrap().len(), 8);
}

#[test]
fn large_imports_go_in_parts_under_the_body_limit() {
    let dir = TempDir::new().unwrap();
    let server = Server::start_at(&dir.path().join("s"), &["--max-body-bytes", "4096"]);
    let machines: Vec<Value> = (0..60).map(|i| machine(i, &[])).collect();
    let f = write(dir.path(), "m.json", &Value::Array(machines));
    assert_eq!(server.ok(&["import", f.to_str().unwrap()]), "60\n");
    assert_eq!(server.ok(&["machines", "count"]), "60\n");
    // A refused object in a later part is numbered within the whole array.
    let mut machines: Vec<Value> = (100..160).map(|i| machine(i, &[])).collect();
    machines[50]["Profiles"] = json!(["ghost"]);
    let f = write(dir.path(), "bad.json", &Value::Array(machines.clone()));
    let (code, _, err) = server.cli(&["import", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("import machines #50: "), "{err}");
    let local_db = dir.path().join("l");
    let (lcode, _, lerr) = local(&local_db, &["import", f.to_str().unwrap()], None);
    assert_eq!((lcode, &lerr), (code, &err));
    // One object over the limit cannot be split: the error says which limit.
    let big = json!([{"Name": "big", "Description": "x".repeat(8000)}]);
    let (code, _, err) = server.cli_with(&["import", "-"], Some(&big.to_string()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-body-bytes"), "{err}");
}

#[test]
fn refused_imports_change_nothing_and_exit_as_embedded() {
    let dir = TempDir::new().unwrap();
    let (a, server) = twins(dir.path());
    let before = server.ok(&["export"]);
    for input in [
        "{\"machines\": [",
        "42",
        r#"{"machines": {}}"#,
        r#"{"widgets": []}"#,
        r#"[{"Name": "m", "Profiles": ["ghost"]}]"#,
        r#"[{"Name": "p", "Schema": {"type": 7}}]"#,
        r#"[17]"#,
    ] {
        let remote = server.cli_with(&["import", "-"], Some(input));
        let embedded = local(&a, &["import", "-"], Some(input));
        assert_eq!(remote.0, 2, "{input}: {}", remote.2);
        assert_eq!(remote, embedded, "{input}");
    }
    let (code, _, err) = server.cli_with(&["import", "-", "--kind", "params"], Some("{}"));
    assert_eq!(
        (code, err),
        (
            2,
            local(&a, &["import", "-", "--kind", "params"], Some("{}")).2
        )
    );
    assert_eq!(server.ok(&["export"]), before);
    assert_eq!(local_ok(&a, &["export"]), before);
}

/// Lines from a child's stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn remote_watch_prints_the_embedded_lines() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("w");
    let server = Server::start_at(&db, &[]);
    let mut watch = Command::new(BIN)
        .args(["-E", &server.url, "-T", &server.key])
        .args(["watch", "machines", "--timeout", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut watch);
    // Write until the watch shows it is listening.
    let start = Instant::now();
    let first = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "watch never printed"
        );
        server.ok(&[
            "machines",
            "create",
            &format!("probe{}", start.elapsed().as_micros()),
        ]);
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            break l;
        }
    };
    server.ok(&[
        "machines",
        "create",
        r#"{"Name": "a", "Uuid": "00000000-0000-4000-8000-00000000000a"}"#,
    ]);
    server.ok(&["profiles", "create", "not-a-machine"]);
    server.ok(&["machines", "set", "a", "param", "x", "to", "1"]);
    server.ok(&["machines", "update", "a", r#"{"Workflow": "w"}"#]);
    server.ok(&["machines", "create", "b"]);
    server.ok(&["machines", "destroy", "b"]);
    let status = watch.wait().unwrap();
    let mut err = String::new();
    watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let mut live = vec![first.clone()];
    live.extend(rx.iter());
    assert!(live.len() >= 6, "{live:?}");
    assert_eq!(live.iter().filter(|l| l.contains("\"delete\"")).count(), 1);
    let first_rev = serde_json::from_str::<Value>(&first).unwrap()["Revision"]
        .as_u64()
        .unwrap()
        .to_string();

    // Replays (--from), whole and filtered, and a refused revision.
    let replay = server.ok(&["watch", "machines", "--from", "1", "--timeout", "1"]);
    let filtered_args = [
        "watch",
        "machines",
        "Name",
        "Eq",
        "a",
        "Or",
        "Workflow",
        "Eq",
        "w",
        "--from",
        "1",
        "--timeout",
        "1",
    ];
    let filtered = server.ok(&filtered_args);
    assert_eq!(filtered.lines().count(), 3, "{filtered}");
    let future = server.cli(&["watch", "machines", "--from", "999"]);
    assert_eq!(future.0, 2);
    let profiles = server.ok(&["watch", "profiles", "--from", "1", "--timeout", "1"]);

    // The same store, embedded.
    server.stop();
    let embedded_live = local_ok(
        &db,
        &[
            "watch",
            "machines",
            "--from",
            &first_rev,
            "--timeout",
            "0.3",
        ],
    );
    assert_eq!(live.join("\n") + "\n", embedded_live);
    assert_eq!(
        replay,
        local_ok(
            &db,
            &["watch", "machines", "--from", "1", "--timeout", "0.3"]
        )
    );
    assert_eq!(
        filtered,
        local_ok(
            &db,
            &filtered_args[..filtered_args.len() - 1]
                .iter()
                .copied()
                .chain(["0.3"])
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        profiles,
        local_ok(
            &db,
            &["watch", "profiles", "--from", "1", "--timeout", "0.3"]
        )
    );
    let embedded_future = local(&db, &["watch", "machines", "--from", "999"], None);
    assert_eq!(future, embedded_future);
}

/// A fake event server: answers each connection with the next script
/// (chunked, then the end of the body), recording each request's
/// `Last-Event-ID`.
fn fake_events(scripts: Vec<&'static str>) -> (String, mpsc::Receiver<Option<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for script in scripts {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut last = None;
            loop {
                let mut l = String::new();
                reader.read_line(&mut l).unwrap();
                if l.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("last-event-id") {
                        last = Some(v.trim().to_string());
                    }
                }
            }
            tx.send(last).unwrap();
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                 transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            );
            out += &format!("{:x}\r\n{script}\r\n0\r\n\r\n", script.len());
            conn.write_all(out.as_bytes()).unwrap();
            conn.flush().unwrap();
        }
    });
    (url, rx)
}

#[test]
fn watch_resumes_after_a_drop_with_last_event_id() {
    let (url, seen) = fake_events(vec![
        ": keep-alive\n\nid: 4.0\nevent: change\ndata: {\"n\":1}\n\n\
         id: 5.0\nevent: change\ndata: {\"n\":2}\n\nid: 5.1\nevent: change\ndata",
        ": again\nid: 5.1\nevent: change\ndata: {\"n\":3}\n\n",
        "event: error\ndata: boom\n\n",
        "event: error\ndata: boom again\n\n",
    ]);
    let mut c = Command::new(BIN);
    c.args([
        "-E",
        &url,
        "-T",
        "x",
        "watch",
        "machines",
        "--timeout",
        "20",
    ]);
    let (code, out, err) = run(c, None);
    assert_eq!(out, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n", "{err}");
    let ids: Vec<Option<String>> = seen.iter().collect();
    assert_eq!(
        ids,
        vec![
            None,
            Some("5.0".into()),
            Some("5.1".into()),
            Some("5.1".into())
        ],
        "a cut-off event is not acknowledged"
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("boom"), "{err}");
}

#[test]
fn cluster_verbs_answer_as_embedded() {
    let dir = TempDir::new().unwrap();
    let (a, server) = twins(dir.path());
    let cases: &[&[&str]] = &[
        &["cluster", "members", "example"],
        &["cluster", "init", "example"],
        &["cluster", "init", "example"],
        &["cluster", "add", "example", "m5"],
        &["cluster", "add", "example", "m5"],
        &[
            "cluster", "members", "example", "sort", "Name", "--slim", "Meta",
        ],
        &[
            "cluster", "members", "example", "limit", "2", "offset", "1", "reverse",
        ],
        &[
            "cluster",
            "members",
            "example",
            "Name",
            "In",
            "m1,m5",
            "--aggregate",
        ],
        &["cluster", "count", "example"],
        &["cluster", "role", "example", "m0"],
        &["cluster", "role", "example", "m0", "manager"],
        &["cluster", "role", "example", "m1", "leader"],
        &["cluster", "role", "example", "m2", "worker"],
        &["cluster", "role", "example", "m1"],
        &[
            "cluster",
            "count",
            "example",
            "cluster/leader",
            "Eq",
            "true",
        ],
        &["cluster", "elect", "example", "--leaders", "1"],
        &["cluster", "remove", "example", "m5"],
        &["cluster", "remove", "example", "m5"],
        &["cluster", "count", "example"],
        &[
            "-F", "table", "cluster", "members", "example", "sort", "Name",
        ],
        &["cluster", "init", "other", "--filter", "Name Eq m4"],
        &["cluster", "members", "other", "--params", "cluster/leader"],
        &["cluster", "count", "other"],
        // Failures: exit codes and messages.
        &["cluster", "members", "nope"],
        &["cluster", "members", "global"],
        &["cluster", "add", "example", "ghost"],
        &["cluster", "role", "example", "ghost"],
        &["cluster", "init", "bad", "--filter", "Name Foo x"],
        &["cluster", "members", "example", "Name", "Foo"],
        &["cluster", "role", "example", "m1", "boss"],
    ];
    for args in cases {
        let remote = server.cli(args);
        let embedded = local(&a, args, None);
        assert_eq!(remote, embedded, "{args:?}");
    }
    assert_eq!(server.ok(&["export"]), local_ok(&a, &["export"]));
}

#[test]
fn tokens_without_the_claim_exit_6() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    seed(&a, dir.path());
    let narrow = local_ok(&a, &["profiles", "token", "example"]);
    let machines = local_ok(
        &a,
        &["profiles", "token", "example", "--claims", "machines/*/*"],
    );
    let b = dir.path().join("b");
    copy_dir(&a, &b);
    let server = Server::start_at(&b, &[]);
    let import = r#"[{"Name": "p1"}]"#;
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        (narrow.trim(), &["export"], None),
        (narrow.trim(), &["import", "-"], Some(import)),
        (narrow.trim(), &["cluster", "init", "example"], None),
        (narrow.trim(), &["cluster", "members", "example"], None),
        (
            narrow.trim(),
            &["cluster", "role", "example", "m0", "leader"],
            None,
        ),
        // machines/*/* is not enough for bulk transfer...
        (machines.trim(), &["export"], None),
        (machines.trim(), &["import", "-"], Some(import)),
        // ...but it is for the cluster verbs.
        (machines.trim(), &["cluster", "init", "example"], None),
        (machines.trim(), &["cluster", "count", "example"], None),
    ];
    for (token, args, stdin) in cases {
        let with: Vec<&str> = ["-T", token].iter().chain(args.iter()).copied().collect();
        let remote = server.cli_with(&with, *stdin);
        let embedded = local(&a, &with, *stdin);
        assert_eq!(
            remote.0, embedded.0,
            "{args:?}: {} / {}",
            remote.2, embedded.2
        );
        assert_eq!(remote.1, embedded.1, "{args:?}");
        assert!(remote.0 == 0 || remote.0 == 6, "{args:?}: {}", remote.2);
    }
    let watch = server.cli(&["-T", narrow.trim(), "watch", "machines", "--timeout", "1"]);
    assert_eq!(watch.0, 6, "{}", watch.2);
}

#[test]
fn remote_export_and_list_past_ten_megabytes() {
    // ureq's `into_string` stops at 10 MB: the answers must be read whole.
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("big");
    {
        let s = fleetkv::Store::open(&db).unwrap();
        let pad = "x".repeat(256 << 10);
        for i in 0..48 {
            let mut m = fleetkv::Machine::new(format!("big-{i:02}"));
            m.description = pad.clone();
            s.machines().create(m).unwrap();
        }
        s.flush().unwrap();
    }
    let server = Server::start_at(&db, &[]);
    let export: Value = serde_json::from_str(&server.ok(&["export"])).unwrap();
    assert_eq!(export["machines"].as_array().unwrap().len(), 48);
    let list: Value = serde_json::from_str(&server.ok(&["machines", "list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 48);
    assert_eq!(list[47]["Description"].as_str().unwrap().len(), 256 << 10);
}

/// Every verb of `machines`, `profiles` and `params` (with the options that
/// change what they do), successes and failures, through `-E` and on the
/// embedded twin: the same exit code, stdout and stderr, step by step.
#[test]
fn every_verb_answers_as_embedded() {
    let dir = TempDir::new().unwrap();
    let (a, server) = twins(dir.path());
    let tmpl = write(dir.path(), "t.tmpl", &json!("unused"));
    std::fs::write(&tmpl, "{{.Machine.Name}} at {{.Param \"site\"}}\n").unwrap();
    let tmpl = tmpl.to_str().unwrap();
    let cases: &[&[&str]] = &[
        // Reads.
        &["machines", "show", "m1"],
        &["machines", "show", "Name:m1", "--aggregate"],
        &["machines", "show", "00000000-0000-4000-8000-000000000002"],
        &["machines", "exists", "m1"],
        &["machines", "exists", "ghost"],
        &["machines", "list", "Profiles", "Eq", "example", "--slim", "Params,Meta"],
        &["machines", "list", "sort", "Name", "reverse", "limit", "2", "--params", "site", "--aggregate"],
        &["-F", "table", "machines", "list"],
        &["machines", "count"],
        &["machines", "count", "Profiles", "Eq", "example", "--group-by", "Meta.color"],
        &["machines", "count", "--group-by", "Params.my/data", "--group-by", "Name"],
        &["profiles", "list"],
        &["profiles", "count", "--group-by", "Meta.icon"],
        &["profiles", "show", "example"],
        &["params", "list"],
        &["params", "show", "my/data"],
        &["machines", "watch-count", "Profiles", "Eq", "example", "--members", "--timeout", "0.3"],
        &["machines", "watch-count", "--from", "1", "--timeout", "0.3"],
        &["machines", "watch-count", "Name", "Foo", "x"],
        &["profiles", "watch-count"],
        // Writes, each applied to both twins.
        &["machines", "create", "{\"Name\":\"m9\",\"Uuid\":\"00000000-0000-4000-8000-000000000009\"}"],
        &["machines", "update", "m9", "{\"Description\":\"nine\"}"],
        &["machines", "patch", "m9", "[{\"op\":\"replace\",\"path\":\"/Description\",\"value\":\"9\"}]"],
        &["machines", "patch", "m9", "[{\"op\":\"test\",\"path\":\"/Description\",\"value\":\"x\"},{\"op\":\"remove\",\"path\":\"/Description\"}]"],
        &["machines", "set", "m9", "param", "my/data", "to", "\"a\""],
        &["-r", "\"a\"", "machines", "set", "m9", "param", "my/data", "to", "\"b\""],
        &["-r", "\"a\"", "machines", "set", "m9", "param", "my/data", "to", "\"c\""],
        &["machines", "get", "m9", "param", "my/data"],
        &["machines", "get", "m1", "param", "my/data"],
        &["machines", "get", "m1", "param", "my/data", "--aggregate"],
        &["machines", "params", "m9"],
        &["machines", "params", "m1", "--aggregate"],
        &["machines", "remove", "m9", "param", "my/data"],
        &["machines", "remove", "m9", "param", "my/data"],
        &["machines", "addprofile", "m9", "example"],
        &["machines", "addprofile", "m9", "example"],
        &["machines", "addprofile", "m9", "ghost"],
        &["machines", "removeprofile", "m9", "example"],
        &["machines", "removeprofile", "m9", "example"],
        &["machines", "workflow", "m9", "discover"],
        &["machines", "wait", "m9", "Workflow", "discover", "1"],
        &["machines", "wait", "m9", "Workflow", "never", "0.2"],
        &["machines", "await", "m9", "Workflow", "Eq", "discover", "--timeout", "1"],
        &["machines", "await", "m9", "Workflow", "Eq", "never", "--timeout", "0.2"],
        &["machines", "meta", "set", "m9", "key", "icon", "to", "anchor"],
        &["machines", "meta", "get", "m9", "key", "icon"],
        &["machines", "meta", "remove", "m9", "key", "icon"],
        &["machines", "meta", "get", "m9", "key", "icon"],
        &["machines", "render", "m1", tmpl],
        &["machines", "workflow-all", "install", "Profiles", "Eq", "example"],
        &["machines", "count", "Workflow", "Eq", "install"],
        &["profiles", "create", "{\"Name\":\"p2\",\"Params\":{\"site\":\"fra\"}}"],
        &["profiles", "update", "p2", "{\"Description\":\"two\"}"],
        &["profiles", "set", "p2", "param", "my/data", "to", "\"shared\""],
        &["-r", "\"none\"", "profiles", "set", "p2", "param", "my/data", "to", "\"race\""],
        &["profiles", "get", "p2", "param", "my/data"],
        &["profiles", "get", "example", "param", "my/data", "--aggregate"],
        &["profiles", "params", "p2"],
        &["profiles", "patch", "p2", "[{\"op\":\"add\",\"path\":\"/Meta/icon\",\"value\":\"cube\"}]"],
        &["profiles", "meta", "set", "p2", "key", "color", "to", "blue"],
        &["profiles", "remove", "p2", "param", "site"],
        &["params", "create", "{\"Name\":\"n\",\"Schema\":{\"type\":\"number\",\"default\":3}}"],
        &["params", "update", "n", "{\"Description\":\"a number\"}"],
        &["machines", "set", "m9", "param", "n", "to", "\"three\""],
        &["machines", "get", "m9", "param", "n", "--aggregate"],
        &["params", "destroy", "n"],
        &["profiles", "destroy", "p2"],
        &["machines", "destroy", "m9"],
        &["machines", "destroy", "m9"],
        // Failures: exit codes and messages.
        &["machines", "show", "ghost"],
        &["machines", "list", "Name", "Foo", "x"],
        &["machines", "count", "--group-by", "Profiles"],
        &["machines", "create", "{not json"],
        &["machines", "create", "{\"Name\":\"m1\"}"],
        &["machines", "update", "m1", "[1]"],
        &["machines", "patch", "m1", "{\"op\":\"add\"}"],
        &["machines", "set", "m1", "param", "my/data", "to", "7"],
        &["profiles", "destroy", "example"],
        &["params", "list", "Name", "Eq", "x"],
        &["params", "destroy", "ghost"],
    ];
    for args in cases {
        let remote = server.cli(args);
        let embedded = local(&a, args, None);
        assert_eq!(remote, embedded, "{args:?}");
    }
    // A token is minted anew each time (its issue time differs): both print
    // one; a refusal is the same refusal.
    for args in [&["profiles", "token", "example", "--ttl", "60"][..]] {
        let (code, remote, err) = server.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let (code, embedded, err) = local(&a, args, None);
        assert_eq!(code, 0, "{args:?}: {err}");
        for t in [remote, embedded] {
            assert_eq!(t.trim().trim_matches('"').split('.').count(), 3, "{t}");
        }
    }
    for args in [
        &["profiles", "token", "ghost"][..],
        &["machines", "token", "m1"][..],
    ] {
        assert_eq!(server.cli(args), local(&a, args, None), "{args:?}");
    }
    assert_eq!(server.ok(&["export"]), local_ok(&a, &["export"]));
    // Leases and campaigns: ids are revisions, the same on both twins;
    // `Remaining` is a clock reading, left out of the comparison.
    let no_clock = |(code, out, err): (i32, String, String)| {
        let out = match serde_json::from_str::<Value>(&out) {
            Ok(mut v) => {
                for l in v.as_array_mut().into_iter().flatten() {
                    l.as_object_mut().map(|o| o.remove("Remaining"));
                }
                if let Some(o) = v.as_object_mut() {
                    o.remove("Remaining");
                }
                v.to_string()
            }
            Err(_) => out,
        };
        (code, out, err)
    };
    let grant = server.ok(&["leases", "grant", "--ttl", "60"]);
    assert_eq!(grant, local_ok(&a, &["leases", "grant", "--ttl", "60"]));
    let id = serde_json::from_str::<Value>(&grant).unwrap()["ID"].to_string();
    let cases: &[&[&str]] = &[
        &[
            "machines", "set", "m1", "param", "alive", "to", "true", "--lease", &id,
        ],
        &[
            "machines", "meta", "set", "m1", "key", "pid", "to", "7", "--lease", &id,
        ],
        &["leases", "show", &id],
        &["leases", "list"],
        &["leases", "keepalive", &id, "--once"],
        &["cluster", "init", "lc"],
        &["cluster", "add", "lc", "m1"],
        &[
            "cluster",
            "campaign",
            "lc",
            "m1",
            "--lease",
            &id,
            "--timeout",
            "5",
        ],
        &[
            "machines", "set", "m2", "param", "work", "to", "1", "--fence", "1",
        ],
        &["cluster", "resign", "lc", "m1"],
        &["leases", "revoke", &id],
        &["machines", "get", "m1", "param", "alive"],
        &["leases", "keepalive", &id, "--once"],
        &["leases", "show", &id],
        &["leases", "grant", "--ttl", "0"],
        &["leases", "grant", "--ttl", "-5"],
        &[
            "profiles", "set", "example", "param", "x", "to", "1", "--lease", &id,
        ],
        &[
            "machines", "set", "m1", "param", "x", "to", "1", "--lease", "99999",
        ],
        &["machines", "destroy", "m2", "--lease", &id],
        &["cluster", "campaign", "lc", "m1"],
        // `-r`: the library's reference update on both sides (an addition
        // must still be absent; a changed path must still hold the
        // reference's value).
        &[
            "-r",
            "{\"Name\":\"m1\",\"Meta\":{}}",
            "machines",
            "update",
            "m1",
            "{\"Meta\":{\"new\":\"x\"}}",
        ],
        &[
            "-r",
            "{\"Name\":\"m1\",\"Meta\":{\"new\":\"x\"}}",
            "machines",
            "update",
            "m1",
            "{\"Meta\":{\"new\":\"y\"}}",
        ],
        &[
            "-r",
            "{\"Name\":\"m1\",\"Meta\":{\"new\":\"x\"}}",
            "machines",
            "update",
            "m1",
            "{\"Meta\":{\"new\":\"z\"}}",
        ],
    ];
    for args in cases {
        let remote = no_clock(server.cli(args));
        let embedded = no_clock(local(&a, args, None));
        assert_eq!(remote, embedded, "{args:?}");
    }
}

#[test]
fn watch_count_prints_each_arrival_alike_embedded_and_through_a_server() {
    let dir = TempDir::new().unwrap();
    let (a, server) = twins(dir.path());
    let server = std::sync::Arc::new(server);
    let args = [
        "machines",
        "watch-count",
        "Workflow",
        "Eq",
        "done",
        "--members",
        "--timeout",
        "4",
    ];
    let remote = {
        let server = server.clone();
        std::thread::spawn(move || server.cli(&args))
    };
    let embedded = {
        let a = a.clone();
        std::thread::spawn(move || local(&a, &args, None))
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let writes: &[&[&str]] = &[
        &["machines", "workflow", "m1", "done"],
        &["machines", "create", "{\"Name\":\"m9\",\"Workflow\":\"done\",\"Uuid\":\"00000000-0000-4000-8000-000000000009\"}"],
        &["machines", "update", "m9", "{\"Description\":\"moves nothing\"}"],
        &["machines", "destroy", "m1"],
    ];
    for w in writes {
        assert_eq!(server.cli(w).0, 0, "{w:?}");
        assert_eq!(local(&a, w, None).0, 0, "{w:?}");
    }
    let (remote, embedded) = (remote.join().unwrap(), embedded.join().unwrap());
    assert_eq!(remote, embedded);
    let (code, out, err) = remote;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0]["Snapshot"], true);
    assert_eq!(lines[1]["Joined"][0]["Name"], "m1");
    assert_eq!(lines[2]["Joined"][0]["Name"], "m9");
    assert_eq!(lines[3]["Left"][0]["Name"], "m1");
    assert_eq!(lines[3]["Count"], lines[0]["Count"].as_u64().unwrap() + 1);
}
