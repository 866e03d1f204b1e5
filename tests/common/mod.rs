//! Shared by the CLI and server tests: the binary on an embedded store, in a
//! shell script, and `fleetkv serve` on a free loopback port.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetkv");

/// A running `fleetkv serve` with its admin key; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub key: String,
    pub dir: tempfile::TempDir,
    /// What the server printed on stderr before it listened.
    pub banner: Vec<String>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let data = dir.path().join("db");
        Server::spawn(dir, &data, &[], extra, &[])
    }

    /// A server on a fresh store, started through `prefix` (e.g.
    /// `prlimit …`, which execs it, so `child` is the server itself).
    pub fn start_under(prefix: &[&str], extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        Server::spawn(dir, &data, prefix, extra, &[])
    }

    /// A server on the store at `data`, which the caller keeps (`dir` is
    /// then an empty scratch directory).
    pub fn start_at(data: &Path, extra: &[&str]) -> Server {
        Server::start_at_env(data, extra, &[])
    }

    /// [`Server::start_at`] with extra environment variables.
    pub fn start_at_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(tempfile::tempdir().unwrap(), data, &[], extra, env)
    }

    fn spawn(
        dir: tempfile::TempDir,
        data: &Path,
        prefix: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let (program, wrapper) = match prefix {
            [first, rest @ ..] => (*first, rest),
            [] => (BIN, &[][..]),
        };
        let mut child = Command::new(program)
            .args(wrapper)
            .args(if prefix.is_empty() { None } else { Some(BIN) })
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("FLEETKV_DATA")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut banner = Vec::new();
        let url = loop {
            let Some(line) = lines.next() else {
                let status = child.wait();
                panic!(
                    "the server exited before listening ({status:?}); its stderr:\n{}",
                    banner.join("\n")
                );
            };
            let line = line.unwrap();
            if let Some(u) = line.strip_prefix("fleetkv: listening on ") {
                break u.to_string();
            }
            banner.push(line);
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
            banner,
        }
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// (status, body, X-DRP-List-Count)
    pub fn call(
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

    pub fn json(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.call(
            method,
            path,
            Some(("application/json", &body.to_string())),
            &[],
        );
        (s, v)
    }

    /// The CLI against this server, as admin unless `args` brings `-T`:
    /// (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_with(args, None)
    }

    /// [`Server::cli`] with `stdin` as standard input.
    pub fn cli_with(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut c = Command::new(BIN);
        c.args(["-E", &self.url]);
        if !args.contains(&"-T") {
            c.args(["-T", &self.key]);
        }
        c.args(args);
        run(c, stdin)
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> (i32, tempfile::TempDir) {
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

/// Runs the CLI command `c` without any fleetkv variables from the
/// environment: (exit code, stdout, stderr).
pub fn run(mut c: Command, stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write as _;
    c.env_remove("FLEETKV_DATA")
        .env_remove("RS_ENDPOINT")
        .env_remove("RS_TOKEN")
        .env_remove("RS_KEY")
        .env_remove("RS_CA_CERT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The CLI on the embedded store `db`: (exit code, stdout, stderr).
pub fn embedded(db: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.arg("--data").arg(db).args(args);
    run(c, stdin)
}

/// `bash -c script` in `dir`, with the fleetkv binary first on `PATH` and
/// no store chosen by the environment.
pub fn bash(script: &str, dir: &Path) -> Command {
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("bash");
    c.args(["-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("FLEETKV_DATA");
    c
}

/// Copies directory `from` (a stopped store, say) to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The path of an outside program a test needs, or `None` (and a note on
/// stderr) when it is missing, so `cargo test` still runs on a bare machine.
/// CI installs them all and sets `FLEETKV_REQUIRE_TOOLS`, which turns a
/// missing one into a failure instead of a skip.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("FLEETKV_REQUIRE_TOOLS").is_none(),
            "{name} is not installed, and FLEETKV_REQUIRE_TOOLS is set"
        );
        eprintln!("skipped: this test needs {name}, which is not installed");
    }
    found
}
