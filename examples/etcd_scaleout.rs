//! Several `fleetkv serve` over one etcd (issue 15, part 6), side by side in
//! one run on loopback:
//! - the cold start of a server joining an etcd store of `--machines`
//!   machines (spawn to listening, and to its first count);
//! - HEAD count and list (limit 100, slim) throughput with one server, then
//!   with two servers sharing the clients;
//! - write throughput and p50/p99 at 1 and 64 clients (a param of one of
//!   1,000 machines per request, round-robin over two servers), next to
//!   etcd's own durable put of a small key on the same etcd;
//! - the time from a write acknowledged by server A until server B counts
//!   it (B's `HEAD` with `?min_revision=` of A's answer), median and p99.
//!
//! etcd is one member (Debian's `etcd-server`) started with room for the
//! load's transactions (`--max-txn-ops 20000 --max-request-bytes 32 MiB`).
//! Client, servers and etcd share the machine's cores.
//!
//! ```sh
//! cargo build --release --features etcd --bin fleetkv
//! cargo run --release --features etcd --example etcd_scaleout -- [--machines 100000] [--seconds 10] [--clients 32]
//! ```

#[path = "../benches/support/fleet.rs"]
mod fleet;
#[path = "../benches/support/load.rs"]
mod load;
#[path = "../benches/support/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use base64::Engine as _;
use fleetkv::{EtcdOptions, Options, Store};
use load::arg;

const ADMIN: &str = "etcd-scaleout-admin-key";
const PREFIX: &str = "/scale/";

/// A one-member etcd with room for the load's imports.
fn etcd(dir: &std::path::Path) -> serve::Running {
    let flags = [
        "--max-txn-ops",
        "20000",
        "--max-request-bytes",
        "33554432",
        "--quota-backend-bytes",
        "8589934592",
    ];
    serve::etcd_with("etcd", dir, &flags).expect("etcd (apt-get install etcd-server)")
}

/// `fleetkv serve --etcd` with the shared admin key; (server, ms to listen).
fn server(etcd: &str, dir: &std::path::Path) -> (serve::Running, Duration) {
    std::fs::create_dir_all(dir).expect("a server directory");
    std::fs::write(dir.join("admin.key"), ADMIN).expect("the admin key");
    let t = Instant::now();
    let s = serve::fleetkv_serve(
        serve::FLEETKV,
        dir,
        &[],
        &["--etcd", etcd, "--etcd-prefix", PREFIX],
    );
    (s, t.elapsed())
}

fn done(r: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, String> {
    r.map_err(|e| e.to_string())
}

fn count(agent: &ureq::Agent, base: &str, i: usize, min_rev: Option<u64>) -> Result<(), String> {
    let cluster = i % fleet::CLUSTERS;
    let at = min_rev.map_or(String::new(), |r| format!("&min_revision={r}"));
    done(
        agent
            .head(&format!(
                "{base}/api/v3/machines?Profiles=Eq(cluster-{cluster})&cluster/manager=Eq(false)&cluster/leader=Eq(true){at}"
            ))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call(),
    )
    .map(drop)
}

fn list(agent: &ureq::Agent, base: &str, i: usize) -> Result<(), String> {
    let cluster = i % fleet::CLUSTERS;
    let r = done(
        agent
            .get(&format!(
                "{base}/api/v3/machines?Profiles=Eq(cluster-{cluster})&limit=100&slim=Params,Meta"
            ))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call(),
    )?;
    r.into_string().map(drop).map_err(|e| e.to_string())
}

/// A param write on one of 1,000 machines; the answer's revision.
fn write(agent: &ureq::Agent, base: &str, i: usize) -> Result<u64, String> {
    let m = fleet::machine(i % 1000);
    let r = done(
        agent
            .post(&format!(
                "{base}/api/v3/machines/{}/params/bench%2Fn",
                m.uuid
            ))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .set("Content-Type", "application/json")
            .send_string(&i.to_string()),
    )?;
    let rev = r
        .header("X-Fleetkv-Revision")
        .and_then(|v| v.parse().ok())
        .ok_or("no X-Fleetkv-Revision")?;
    r.into_string().map_err(|e| e.to_string())?;
    Ok(rev)
}

fn etcd_put(agent: &ureq::Agent, base: &str, i: usize) -> Result<(), String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let r = done(
        agent.post(&format!("{base}/v3/kv/put")).send_string(
            &serde_json::json!({
                "key": b64(&format!("bench/{}", i % 1000)),
                "value": b64(&i.to_string()),
            })
            .to_string(),
        ),
    )?;
    r.into_string().map(drop).map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let machines: usize = arg(&args, "--machines", 100_000);
    let seconds: f64 = arg(&args, "--seconds", 10.0);
    let clients: usize = arg(&args, "--clients", 32);
    let dir = tempfile::tempdir().expect("a scratch directory");
    let etcd = etcd(&dir.path().join("etcd"));
    println!(
        "fleetkv {} over one etcd member, {machines} machines, {clients} clients, {seconds} s per figure; {} cores",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // The store, loaded through the library in imports that fit one
    // transaction each (a machine is a record and a change-log entry).
    let t = Instant::now();
    {
        let store = Store::open_etcd(
            std::slice::from_ref(&etcd.url),
            EtcdOptions {
                prefix: PREFIX.into(),
                max_txn_ops: 20_000,
                max_request_bytes: 32 << 20,
                ..EtcdOptions::default()
            },
            Options::default(),
        )
        .expect("the etcd store");
        for d in fleet::definitions() {
            store.params().create(d).expect("a definition");
        }
        for c in (0..fleet::CLUSTERS).step_by(100) {
            let batch: Vec<_> = (c..c + 100).map(fleet::profile).collect();
            for p in batch {
                store.profiles().create(p).expect("a profile");
            }
        }
        let mut start = 0;
        while start < machines {
            let end = (start + 2_000).min(machines);
            store
                .machines()
                .import((start..end).map(fleet::machine).collect())
                .expect("an import");
            start = end;
        }
    }
    println!(
        "load: {machines} machines into etcd in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Cold start: spawn to listening, then to the first count answered.
    let (a, listen_a) = server(&etcd.url, &dir.path().join("a"));
    let t = Instant::now();
    count(&load::agent(), &a.url, 0, None).expect("the first count");
    println!(
        "cold start of a server joining the store: listening after {:.2} s, first count {:.1} ms later",
        listen_a.as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let (b, _) = server(&etcd.url, &dir.path().join("b"));
    let servers = [a.url.clone(), b.url.clone()];

    println!("\nreads ({clients} clients):");
    let one = load::run(clients, seconds, |ag, _, i| count(ag, &servers[0], i, None));
    println!("  HEAD count, one server       {one}");
    let two = load::run(clients, seconds, |ag, c, i| {
        count(ag, &servers[c % 2], i, None)
    });
    println!("  HEAD count, two servers      {two}");
    let one = load::run(clients, seconds, |ag, _, i| list(ag, &servers[0], i));
    println!("  GET list 100 slim, one       {one}");
    let two = load::run(clients, seconds, |ag, c, i| list(ag, &servers[c % 2], i));
    println!("  GET list 100 slim, two       {two}");

    println!("\nwrites (a param of one of 1,000 machines; two servers, round robin):");
    for n in [1, 64] {
        let f = load::run(n, seconds, |ag, c, i| {
            write(ag, &servers[(c + i) % 2], i).map(drop)
        });
        println!("  fleetkv, {n:>2} clients          {f}");
        let f = load::run(n, seconds, |ag, _, i| etcd_put(ag, &etcd.url, i));
        println!("  etcd put, {n:>2} clients         {f}");
    }

    // Visibility: A acknowledges, B counts it.
    let (ag_a, ag_b) = (load::agent(), load::agent());
    let mut lags = Vec::new();
    for i in 0..300 {
        let rev = write(&ag_a, &servers[0], i).expect("a write on A");
        let t = Instant::now();
        count(&ag_b, &servers[1], i, Some(rev)).expect("B's count at A's revision");
        lags.push(t.elapsed());
    }
    let (p50, p99) = load::percentiles(lags);
    println!(
        "\nwrite on A to its count on B (300 writes): median {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    drop((a, b));
}
