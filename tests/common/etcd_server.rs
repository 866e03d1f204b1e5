//! A single-member etcd 3.4 on loopback for a test (`/usr/bin/etcd`, or
//! `$FLEETKV_TEST_ETCD`), in a temporary data directory; killed on drop.
//! Shared by `tests/etcd.rs` and the etcd backend's unit tests.
#![allow(dead_code)] // each test binary uses a different part

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    pub fn start() -> Etcd {
        let bin = std::env::var("FLEETKV_TEST_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .args(["--initial-cluster-state", "new", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (install etcd-server): {e}"));
        let etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < until, "etcd did not listen on {client}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening comes before the member has elected itself leader.
        std::thread::sleep(Duration::from_millis(300));
        etcd
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the member: it keeps its socket
    /// and answers nothing — an etcd that is unreachable, then returns.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.child.id());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One member of a [`Cluster`]: its URLs, its data directory, its process
/// while it runs.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data: std::path::PathBuf,
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

impl Cluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> Cluster {
        let bin = std::env::var("FLEETKV_TEST_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members,
            initial,
            bin,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let child = Command::new(&self.bin)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "fleetkv-test"])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (install etcd-server): {e}", self.bin));
        m.child = Some(child);
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
    pub fn wait_healthy(&self, i: usize) {
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
                return;
            }
            assert!(Instant::now() < until, "etcd member {i} is not healthy");
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
