//! etcd 3.4 on loopback for tests (`/usr/bin/etcd`, or `$FLEETKV_TEST_ETCD`):
//! one member ([`Etcd`]) or several ([`Cluster`]), in a temporary data
//! directory, killed on drop. Shared by `tests/etcd.rs`,
//! `tests/etcd_cluster.rs`, the linearizability example and the etcd
//! backend's unit tests.
//!
//! Ports come from below the kernel's ephemeral range, so neither a
//! "dead port" a test picks with `bind(0)` nor an outgoing connection's local
//! port can ever be one of them, and each is claimed with a file lock held
//! for the member's life, so two test processes never hand etcd the same
//! one. (Before, a second etcd could lose the race for a port and exit while
//! the first answered its health check: the test then ran against another
//! test's etcd.) A member that still exits before it listens — a port some
//! other program holds — is started again on new ports, and a member that
//! never comes up fails the test with its own stderr.
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many times a start is tried on fresh ports before the test fails.
const START_ATTEMPTS: usize = 5;

/// A single-member cluster, with what a test of one member needs.
pub struct Etcd {
    cluster: Cluster,
    pub url: String,
}

/// A loopback port claimed for a member's life: the lock on its file keeps
/// every other test process off it; dropping it frees the port.
struct Port {
    number: u16,
    _claim: std::fs::File,
}

/// The lowest port the kernel hands out by itself (`bind(0)`, `connect`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Claims a port in `[10000, ephemeral_low)` that no test process holds and
/// that nothing listens on now.
fn claim_port() -> Port {
    let dir = std::env::temp_dir().join("fleetkv-test-ports");
    std::fs::create_dir_all(&dir).expect("a port claim directory");
    let high = ephemeral_low().max(10001);
    for _ in 0..10_000 {
        let number = fastrand::u16(10000..high);
        let Ok(file) = std::fs::File::create(dir.join(number.to_string())) else {
            continue;
        };
        if fs2::FileExt::try_lock_exclusive(&file).is_ok()
            && TcpListener::bind(("127.0.0.1", number)).is_ok()
        {
            return Port {
                number,
                _claim: file,
            };
        }
    }
    panic!("no free loopback port below {high}")
}

fn etcd_bin() -> String {
    std::env::var("FLEETKV_TEST_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into())
}

/// Starts etcd with `args`, its stderr in `log`.
fn spawn_etcd(bin: &str, args: &[String], log: &Path) -> Child {
    let stderr = std::fs::File::create(log).expect("an etcd log file");
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin} (install etcd-server): {e}"))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Etcd {
    /// Starts one member and waits until it has elected itself leader.
    pub fn start() -> Etcd {
        let cluster = Cluster::start(1);
        let url = cluster.endpoint(0);
        Etcd { cluster, url }
    }

    pub fn pid(&self) -> u32 {
        self.cluster.members[0]
            .child
            .as_ref()
            .map(|c| c.id())
            .expect("the member runs")
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the member: it keeps its socket
    /// and answers nothing — an etcd that is unreachable, then returns.
    /// `STOP` returns once every thread of the member is stopped: `kill`
    /// only queues the signal, and on a loaded machine a thread can still
    /// answer a request sent right after it.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {pid}");
        if sig != "STOP" {
            return;
        }
        let stopped = || -> Option<bool> {
            let mut all = true;
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
                let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
                // The state follows the command name's closing parenthesis.
                let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
                all &= matches!(state, 'T' | 't');
            }
            Some(all)
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stopped() != Some(true) {
            assert!(std::time::Instant::now() < until, "etcd {pid} did not stop");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// One member of a [`Cluster`]: its URLs, its data directory and log, its
/// process while it runs.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    _ports: [Port; 2],
    data: std::path::PathBuf,
    log: std::path::PathBuf,
    child: Option<Child>,
}

/// An etcd 3.4 cluster of several members on loopback, in one temporary
/// directory; members can be killed with SIGKILL and restarted on their
/// data. Every member is killed on drop.
pub struct Cluster {
    members: Vec<Member>,
    initial: String,
    bin: String,
    _dir: tempfile::TempDir,
}

/// What became of a member that was waited for.
enum Health {
    Healthy,
    Exited,
}

impl Cluster {
    /// Starts `n` members and waits until the cluster has a leader. A
    /// member that exits on the way (a port taken meanwhile) makes the whole
    /// cluster start again on new ports: its peers already know the old ones.
    pub fn start(n: usize) -> Cluster {
        let bin = etcd_bin();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut attempts = 0;
        let mut cluster = Cluster {
            members: Vec::new(),
            initial: String::new(),
            bin,
            _dir: dir,
        };
        'attempt: loop {
            attempts += 1;
            assert!(
                attempts <= START_ATTEMPTS,
                "an etcd member exited before listening {START_ATTEMPTS} times"
            );
            let base = cluster._dir.path().join(format!("attempt{attempts}"));
            cluster.members = (0..n)
                .map(|i| {
                    let (client, peer) = (claim_port(), claim_port());
                    Member {
                        name: format!("m{i}"),
                        client_url: format!("http://127.0.0.1:{}", client.number),
                        peer_url: format!("http://127.0.0.1:{}", peer.number),
                        _ports: [client, peer],
                        data: base.join(format!("m{i}")),
                        log: base.join(format!("m{i}.log")),
                        child: None,
                    }
                })
                .collect();
            cluster.initial = cluster
                .members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url))
                .collect::<Vec<_>>()
                .join(",");
            std::fs::create_dir_all(&base).expect("a member directory");
            for i in 0..n {
                cluster.spawn(i);
            }
            for i in 0..n {
                if let Health::Exited = cluster.await_health(i) {
                    eprintln!(
                        "etcd member {i} exited while starting (attempt {attempts}), \
                         restarting the cluster on new ports:\n{}",
                        log_tail(&cluster.members[i].log)
                    );
                    for j in 0..n {
                        cluster.kill(j);
                    }
                    continue 'attempt;
                }
            }
            return cluster;
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let args: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &m.data.to_string_lossy(),
            "--listen-client-urls",
            &m.client_url,
            "--advertise-client-urls",
            &m.client_url,
            "--listen-peer-urls",
            &m.peer_url,
            "--initial-advertise-peer-urls",
            &m.peer_url,
            "--initial-cluster",
            &self.initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "fleetkv-test",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ]
        .map(String::from)
        .to_vec();
        m.child = Some(spawn_etcd(&self.bin, &args, &m.log));
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url.clone()
    }

    /// Waits until member `i` answers `/health` with a leader in sight.
    pub fn wait_healthy(&mut self, i: usize) {
        if let Health::Exited = self.await_health(i) {
            panic!(
                "etcd member {i} exited; its stderr:\n{}",
                log_tail(&self.members[i].log)
            );
        }
    }

    /// Waits until member `i` is healthy or its process has exited; fails
    /// the test with the member's stderr after 30 s.
    fn await_health(&mut self, i: usize) -> Health {
        let url = format!("{}/health", self.members[i].client_url);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = ureq::get(&url)
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|body| body.contains("\"true\""));
            if healthy {
                return Health::Healthy;
            }
            let m = &mut self.members[i];
            if let Some(c) = m.child.as_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    m.child = None;
                    return Health::Exited;
                }
            }
            assert!(
                Instant::now() < until,
                "etcd member {i} is not healthy in 30 s; its stderr:\n{}",
                log_tail(&m.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` with SIGKILL (no chance to flush or step down).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory (etcd ignores the
    /// initial-cluster flags once it has data) and waits until it is
    /// healthy.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
        self.wait_healthy(i);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
