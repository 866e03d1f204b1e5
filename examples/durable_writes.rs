//! Durable writes over HTTP, side by side in one run: writes/s and p50/p99
//! latency at 1 and 64 clients for
//! - `fleetkv serve` (durable, the default: a write is answered once it is on
//!   disk; concurrent writers share flushes),
//! - `fleetkv serve --no-fsync` (buffered: answered before the disk), and
//! - etcd 3.4's durable put (Debian's `etcd-server`, one member, its JSON
//!   gateway `POST /v3/kv/put` on the same loopback), when installed.
//!
//! Every client keeps one connection and writes one small value per
//! request: a param of one of 1,000 machines (fleetkv), a key of 1,000
//! (etcd). Client and server share the machine's cores.
//!
//! ```sh
//! cargo build --release --bin fleetkv
//! cargo run --release --example durable_writes -- [--seconds 10] [--clients 1,64] [--etcd /usr/bin/etcd]
//! ```

#[path = "../benches/support/fleet.rs"]
mod fleet;
#[path = "../benches/support/load.rs"]
mod load;
#[path = "../benches/support/serve.rs"]
mod serve;

use std::time::Duration;

use load::arg;

use base64::Engine as _;

/// What one request writes.
#[derive(Clone)]
enum Target {
    /// `POST {base}/machines/{uuid}/params/bench%2Fn`.
    Fleetkv { base: String, auth: String },
    /// `POST {base}/v3/kv/put`.
    Etcd { base: String },
}

const KEYS: usize = 1_000;

/// Starts a target's server; the target writes to it.
type Start = dyn Fn() -> (serve::Running, Target);

impl Target {
    fn write(&self, agent: &ureq::Agent, i: usize) -> Result<(), String> {
        let r = match self {
            Target::Fleetkv { base, auth } => {
                let m = fleet::machine(i % KEYS);
                agent
                    .post(&format!(
                        "{base}/api/v3/machines/{}/params/bench%2Fn",
                        m.uuid
                    ))
                    .set("Authorization", auth)
                    .set("Content-Type", "application/json")
                    .send_string(&i.to_string())
            }
            Target::Etcd { base } => {
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                agent.post(&format!("{base}/v3/kv/put")).send_string(
                    &serde_json::json!({
                        "key": b64(&format!("bench/{}", i % KEYS)),
                        "value": b64(&i.to_string()),
                    })
                    .to_string(),
                )
            }
        };
        let resp = r.map_err(|e| e.to_string())?;
        resp.into_string().map(drop).map_err(|e| e.to_string())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = arg(&args, "--seconds", 10.0);
    let clients: Vec<usize> = arg(&args, "--clients", "1,64".to_string())
        .split(',')
        .map(|c| c.parse().expect("--clients N,M"))
        .collect();
    let bin = arg(&args, "--bin", serve::FLEETKV.to_string());
    let etcd_bin = arg(&args, "--etcd", "etcd".to_string());

    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut targets: Vec<(String, Box<Start>)> = Vec::new();
    for (name, flags) in [
        ("fleetkv (fsync)", &[][..]),
        ("fleetkv --no-fsync", &["--no-fsync"][..]),
    ] {
        let data = dir.path().join(name.replace([' ', '(', ')', '-'], ""));
        let store = fleet::fleetkv(0, Some(&data));
        store
            .machines()
            .import((0..KEYS).map(fleet::machine).collect())
            .expect("import");
        drop(store);
        let bin = bin.clone();
        targets.push((
            name.to_string(),
            Box::new(move || {
                let s = serve::fleetkv(&bin, &data, flags);
                let t = Target::Fleetkv {
                    base: s.url.clone(),
                    auth: s.auth.clone(),
                };
                (s, t)
            }),
        ));
    }
    let etcd_dir = dir.path().join("etcd");
    if std::process::Command::new(&etcd_bin)
        .arg("--version")
        .output()
        .is_ok()
    {
        let etcd_bin = etcd_bin.clone();
        targets.push((
            "etcd 3.4 put".to_string(),
            Box::new(move || {
                let s = serve::etcd(&etcd_bin, &etcd_dir).expect("etcd starts");
                let t = Target::Etcd {
                    base: s.url.clone(),
                };
                (s, t)
            }),
        ));
    } else {
        println!(
            "etcd: `{etcd_bin}` not found (apt-get install etcd-server); its column is left out"
        );
    }

    println!(
        "{seconds} s per cell; {} cores shared by clients and servers",
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    let mut rows = Vec::new();
    for (name, start) in &targets {
        let (server, target) = start();
        let _ = load::run(1, 1.0, |agent, _, i| target.write(agent, i)); // warm up: connections, caches
        for &n in &clients {
            let f = load::run(n, seconds, |agent, _, i| target.write(agent, i));
            rows.push((name.clone(), n, f));
        }
        drop(server);
    }
    println!();
    println!("| target | clients | writes/s | p50 | p99 | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, n, f) in &rows {
        println!(
            "| {name} | {n} | {:.0} | {} | {} | {} |",
            f.per_sec,
            ms(f.p50),
            ms(f.p99),
            f.errors
        );
    }
}
