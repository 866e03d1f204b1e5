//! `fleetkv --data DIR …` while `fleetkv serve --data DIR` owns the store:
//! the CLI talks to the server through the Unix socket in DIR, with the same
//! output and exit codes as over HTTP; a stale socket is removed, a file
//! that is not a socket or a socket of another user is refused.

mod common;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::time::Duration;

use common::{embedded, run, Server, BIN};

use serde_json::json;

const SOCKET: &str = "fleetkv.sock";

/// A server on `dir/db`, and that path.
fn served() -> (Server, std::path::PathBuf) {
    let s = Server::start(&[]);
    let data = s.dir.path().join("db");
    (s, data)
}

#[test]
fn the_cli_on_a_served_directory_answers_through_the_socket_as_over_http() {
    let (s, data) = served();
    let sock = data.join(SOCKET);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for i in 0..3 {
        let m = json!({"Name": format!("m{i}"), "Params": {"rack": i}});
        assert_eq!(s.json("POST", "/machines", &m).0, 201);
    }
    // -v says which way the store was reached.
    let (code, out, err) = embedded(&data, &["-v", "machines", "count"], None);
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    assert!(err.contains("talking to it through"), "{err}");
    assert!(err.contains(SOCKET), "{err}");
    let cases: &[&[&str]] = &[
        &[
            "machines",
            "list",
            "rack",
            "Gte",
            "1",
            "--slim",
            "Params,Meta",
        ],
        &["machines", "count", "--group-by", "Params.rack"],
        &["machines", "show", "m1"],
        &["machines", "set", "m1", "param", "rack", "to", "7"],
        &[
            "-r", "1", "machines", "set", "m2", "param", "rack", "to", "8",
        ],
        &[
            "-r", "1", "machines", "set", "m2", "param", "rack", "to", "9",
        ],
        &["machines", "wait", "m1", "Params.rack", "7", "1"],
        &["machines", "wait", "m1", "Params.rack", "6", "0.2"],
        &["machines", "show", "ghost"],
        &["machines", "list", "Name", "Foo"],
        &["machines", "create", "{\"Name\":\"m0\"}"],
        &["export"],
    ];
    for args in cases {
        let over_socket = embedded(&data, args, None);
        let over_http = s.cli(args);
        assert_eq!(over_socket, over_http, "{args:?}");
    }
    // A watch streams through the socket.
    let watch = ["watch", "machines", "--from", "1", "--timeout", "1"];
    let (code, out, err) = embedded(&data, &watch, None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert_eq!((code, out, err), s.cli(&watch));
    // A token is the token's claims, not the admin's.
    let (_, token, _) = s.cli(&["profiles", "token", "global", "--ttl", "60"]);
    let token = token.trim().trim_matches('"').to_string();
    let (code, _, err) = embedded(&data, &["-T", &token, "machines", "count"], None);
    assert_eq!(code, 6, "{err}");
    // A clean stop takes the socket away.
    let (code, _kept) = s.stop();
    assert_eq!(code, 0);
    assert!(!sock.exists());
    let (code, out, err) = embedded(&data, &["-v", "machines", "count"], None);
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    assert!(err.contains("opening the store"), "{err}");
}

#[test]
fn a_stale_socket_is_removed_and_the_store_opened() {
    let (mut s, data) = served();
    assert_eq!(s.json("POST", "/machines", &json!({"Name": "m"})).0, 201);
    s.child.kill().unwrap(); // SIGKILL: the socket stays behind
    s.child.wait().unwrap();
    assert!(data.join(SOCKET).exists());
    let (code, out, err) = embedded(&data, &["-v", "machines", "count"], None);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    assert!(err.contains("opening the store"), "{err}");
    assert!(!data.join(SOCKET).exists());
}

#[test]
fn what_is_not_our_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    assert_eq!(embedded(&data, &["machines", "create", "m"], None).0, 0);
    // A plain file where the socket goes: the CLI and the server refuse it.
    std::fs::write(data.join(SOCKET), "not a socket").unwrap();
    let (code, _, err) = embedded(&data, &["machines", "count"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    let mut c = std::process::Command::new(BIN);
    c.arg("--data")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let (code, _, err) = run(c, None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    std::fs::remove_file(data.join(SOCKET)).unwrap();
    // A live socket of another user: no credentials are sent to it.
    let listener = std::os::unix::net::UnixListener::bind(data.join(SOCKET)).unwrap();
    let chown = std::process::Command::new("chown")
        .arg("65534")
        .arg(data.join(SOCKET))
        .status()
        .unwrap();
    if !chown.success() {
        eprintln!("skipped: cannot chown (not root)");
        return;
    }
    let (code, _, err) = embedded(&data, &["machines", "count"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("belongs to user 65534"), "{err}");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the CLI connected to a socket it refused"
    );
    std::thread::sleep(Duration::from_millis(10));
}
