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
