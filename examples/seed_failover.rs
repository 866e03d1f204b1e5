//! The seed extended with leases (issue #19): one `fleetkv serve`, a
//! manager and 12 member processes, each member holding a lease it keeps
//! alive (`fleetkv leases keepalive`) and campaigning for one of 3 leader
//! slots (`fleetkv cluster campaign … --lease`). One leader's process group
//! is killed with SIGKILL; the run measures, from the kill:
//!
//! - when the manager's membership stream of the leaders (`fleetkv
//!   machines watch-count … --members`) shows the dead leader leave and a
//!   waiting member join,
//! - that the new leader's fencing token is higher, a write fenced with the
//!   dead leader's token is refused (exit 3) and one with the new token
//!   lands.
//!
//! `cargo run --release --example seed_failover -- [--runs N] [--ttl S]`
//! prints each run and the medians; `tests/lease_failover.rs` runs it once.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One run's settings.
pub struct Config {
    /// The `fleetkv` binary.
    pub bin: PathBuf,
    /// Lease TTL in seconds (members renew at a third of it).
    pub ttl: u64,
    pub members: usize,
    pub leaders: usize,
}

/// What one run saw, from the SIGKILL on.
#[derive(Debug)]
pub struct Report {
    /// The manager's stream showed the dead leader leave.
    pub left_after: Duration,
    /// The manager's stream showed the new leader join.
    pub joined_after: Duration,
    pub old_token: u64,
    pub new_token: u64,
}

/// A child process (group) killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` in its own process group, its stdout's lines sent to the
/// returned channel.
fn spawn(mut cmd: Command) -> Result<(Proc, mpsc::Receiver<String>), String> {
    let mut child = cmd
        .env_remove("FLEETKV_DATA")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((Proc(child), rx))
}

struct Server {
    _proc: Proc,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &Path) -> Result<Server, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("db");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .env_remove("FLEETKV_DATA")
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("serve: {e}"))?;
        let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let proc = Proc(child);
        let url = loop {
            let line = lines
                .next()
                .ok_or("the server exited")?
                .map_err(|e| e.to_string())?;
            if let Some(u) = line.strip_prefix("fleetkv: listening on ") {
                break u.to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let key = std::fs::read_to_string(data.join("admin.key"))
            .map_err(|e| e.to_string())?
            .trim()
            .to_string();
        Ok(Server {
            _proc: proc,
            url,
            key,
            _dir: dir,
        })
    }

    fn cli(&self, bin: &Path, args: &[&str]) -> Result<(i32, String), String> {
        let out = Command::new(bin)
            .args(["-E", &self.url, "-T", &self.key])
            .args(args)
            .env_remove("FLEETKV_DATA")
            .output()
            .map_err(|e| e.to_string())?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    fn ok(&self, bin: &Path, args: &[&str]) -> Result<String, String> {
        match self.cli(bin, args)? {
            (0, out) => Ok(out),
            (code, out) => Err(format!("{args:?}: exit {code}: {out}")),
        }
    }
}

/// A member: grants a lease, keeps it alive in the background, campaigns,
/// prints `leader TOKEN` once it leads, then waits.
fn member(cfg: &Config, s: &Server, name: &str) -> Result<(Proc, mpsc::Receiver<String>), String> {
    let script = format!(
        r#"set -e
F() {{ "$BIN" -E "$URL" -T "$KEY" "$@"; }}
ID=$(F leases grant --ttl {ttl} | sed -n 's/.*"ID": \([0-9]*\).*/\1/p')
F leases keepalive "$ID" > /dev/null &
TOKEN=$(F cluster campaign c1 {name} --lease "$ID" --leaders {leaders} | sed -n 's/.*"Token": \([0-9]*\).*/\1/p')
echo "leader $TOKEN"
wait"#,
        ttl = cfg.ttl,
        leaders = cfg.leaders,
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script])
        .env("BIN", &cfg.bin)
        .env("URL", &s.url)
        .env("KEY", &s.key);
    spawn(cmd)
}

fn token(line: &str) -> Option<u64> {
    line.strip_prefix("leader ")?.trim().parse().ok()
}

/// One run of the seed with a leader killed.
pub fn run(cfg: &Config) -> Result<Report, String> {
    let bin = &cfg.bin;
    let s = Server::start(bin)?;
    s.ok(bin, &["cluster", "init", "c1"])?;
    let names: Vec<String> = (0..cfg.members).map(|i| format!("m{i:02}")).collect();
    for n in names.iter().map(String::as_str).chain(["manager"]) {
        s.ok(bin, &["machines", "create", n])?;
        s.ok(bin, &["cluster", "add", "c1", n])?;
    }
    s.ok(bin, &["cluster", "role", "c1", "manager", "manager"])?;

    // The manager's membership stream of the leaders.
    let mut watch = Command::new(bin);
    watch
        .args(["-E", &s.url, "-T", &s.key, "machines", "watch-count"])
        .args([
            "cluster/leader",
            "Eq",
            "true",
            "cluster/manager",
            "Eq",
            "false",
        ])
        .args(["Profiles", "Eq", "c1", "--members"]);
    let (_watch, stream) = spawn(watch)?;

    let mut members = Vec::new();
    for n in &names {
        let (p, rx) = member(cfg, &s, n)?;
        members.push((n.clone(), Some(p), rx));
    }
    let mut leaders: Vec<(usize, u64)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while leaders.len() < cfg.leaders {
        if Instant::now() > end {
            return Err(format!("{} leaders after 60 s", leaders.len()));
        }
        for (i, (_, _, rx)) in members.iter().enumerate() {
            if let Some(t) = rx.try_recv().ok().as_deref().and_then(token) {
                leaders.push((i, t));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Some(extra) = members.iter().position(|(_, _, rx)| rx.try_recv().is_ok()) {
        return Err(format!("member {extra} led beyond {} slots", cfg.leaders));
    }
    while stream.try_recv().is_ok() {}

    let (victim, old_token) = leaders[0];
    let victim_name = members[victim].0.clone();
    let killed = Instant::now();
    members[victim].1.take(); // SIGKILL to its process group

    // The stream: one message per write that moves a leader.
    let named = |v: &Value, field: &str, name: &str| {
        v[field]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["Name"] == name))
    };
    let bound = Duration::from_secs(cfg.ttl * 2 + 10);
    let (mut left_after, mut joined_after, mut joined) = (None, None, None);
    while joined.is_none() {
        let line = stream
            .recv_timeout(bound.saturating_sub(killed.elapsed()))
            .map_err(|_| format!("no leader change within {bound:?} of the kill"))?;
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{line}: {e}"))?;
        if named(&v, "Left", &victim_name) {
            left_after = Some(killed.elapsed());
        }
        if let Some(m) = v["Joined"].as_array().and_then(|a| a.first()) {
            joined_after = Some(killed.elapsed());
            joined = m["Name"].as_str().map(String::from);
        }
    }
    let joined = joined.unwrap_or_default();
    let next = members
        .iter()
        .position(|(n, _, _)| *n == joined)
        .ok_or(format!("{joined} is not a member"))?;
    let new_token = members[next]
        .2
        .recv_timeout(Duration::from_secs(10))
        .ok()
        .as_deref()
        .and_then(token)
        .ok_or(format!("{joined} joined but did not report its token"))?;
    if new_token <= leaders.iter().map(|l| l.1).max().unwrap_or(0) {
        return Err(format!("new token {new_token} is not above the old ones"));
    }
    let count = s.ok(
        bin,
        &["cluster", "count", "c1", "cluster/leader", "Eq", "true"],
    )?;
    if count.trim() != cfg.leaders.to_string() {
        return Err(format!("{} leaders after the failover", count.trim()));
    }
    let fenced = |t: u64, v: &str| {
        s.cli(
            bin,
            &[
                "machines",
                "set",
                "manager",
                "param",
                "work",
                "to",
                v,
                "--fence",
                &t.to_string(),
            ],
        )
    };
    match fenced(old_token, "\"stale\"")? {
        (3, _) => {}
        other => return Err(format!("the dead leader's fenced write: {other:?}")),
    }
    match fenced(new_token, "\"fresh\"")? {
        (0, _) => {}
        other => return Err(format!("the new leader's fenced write: {other:?}")),
    }
    Ok(Report {
        left_after: left_after.ok_or("the stream never showed the dead leader leave")?,
        joined_after: joined_after.unwrap_or_default(),
        old_token,
        new_token,
    })
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[allow(dead_code)]
fn main() {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("fleetkv")))
        .unwrap_or_else(|| PathBuf::from("fleetkv"));
    let cfg = Config {
        bin,
        ttl: arg("--ttl", 3),
        members: 12,
        leaders: 3,
    };
    let runs = arg("--runs", 5);
    let (mut left, mut joined) = (Vec::new(), Vec::new());
    for i in 0..runs {
        match run(&cfg) {
            Ok(r) => {
                println!(
                    "run {i}: leader left after {:?}, new leader joined after {:?} (token {} → {})",
                    r.left_after, r.joined_after, r.old_token, r.new_token
                );
                left.push(r.left_after);
                joined.push(r.joined_after);
            }
            Err(e) => {
                eprintln!("run {i} FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    left.sort();
    joined.sort();
    println!(
        "{runs} runs, TTL {} s (renewed every {:.1} s): kill → leave seen, median {:?} (max {:?}); kill → new leader seen, median {:?} (max {:?})",
        cfg.ttl,
        cfg.ttl as f64 / 3.0,
        left[left.len() / 2],
        left[left.len() - 1],
        joined[joined.len() / 2],
        joined[joined.len() - 1]
    );
}
