//! Servers the HTTP examples start on loopback: `fleetkv serve` (the
//! release binary) and etcd (Debian's `etcd-server`). Each is killed when
//! its handle drops, so a panicking example leaves no process behind.

#![allow(dead_code)] // each example uses part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed on drop.
pub struct Running {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `Authorization` header value (fleetkv only).
    pub auth: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release `fleetkv` binary of this checkout.
pub const FLEETKV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/fleetkv");

/// `fleetkv serve` on `data` with `flags`, once it listens.
pub fn fleetkv(bin: &str, data: &Path, flags: &[&str]) -> Running {
    fleetkv_serve(bin, data, flags, &[])
}

/// [`fleetkv`] with `serve_flags` after `serve` (`--etcd URL`…).
pub fn fleetkv_serve(bin: &str, data: &Path, flags: &[&str], serve_flags: &[&str]) -> Running {
    let mut child = Command::new(bin)
        .args(flags)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(serve_flags)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (cargo build --release --bin fleetkv)")
        });
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = loop {
        let line = lines.next().expect("the server exited").expect("stderr");
        if let Some(u) = line.strip_prefix("fleetkv: listening on ") {
            break u.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let key = std::fs::read_to_string(data.join("admin.key")).expect("admin key");
    Running {
        child,
        url,
        auth: format!("Bearer {}", key.trim()),
    }
}

/// A port nobody listens on now (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A one-member etcd in `dir`, once it answers; `None` when `bin` is not
/// installed (Debian: `apt-get install etcd-server`).
pub fn etcd(bin: &str, dir: &Path) -> Option<Running> {
    etcd_with(bin, dir, &[])
}

/// [`etcd`] with extra flags (`--max-txn-ops N`…).
pub fn etcd_with(bin: &str, dir: &Path, flags: &[&str]) -> Option<Running> {
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .args(["--log-level", "error"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let running = Running {
        child,
        url: client_url,
        auth: String::new(),
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if ureq::get(&format!("{}/health", running.url)).call().is_ok() {
            return Some(running);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("etcd did not become healthy within 30 s");
}
