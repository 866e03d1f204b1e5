//! Mixed HTTP load on `fleetkv serve`: N clients, each on its own keep-alive
//! connection, cycle through a count (`HEAD`), a list (`GET`, limit 100,
//! slim) and a JSON Patch of one machine, for a fixed time; prints each
//! operation's throughput and p50/p99 latency, then a single-connection pass
//! of each operation alone.
//!
//! The server is the release binary in its own process (durable, the
//! default; pass `--no-fsync` to measure buffered writes), on a store of
//! generated machines (1,000 cluster profiles, so a cluster has N/1000
//! members). Client and server share the machine's cores, as wrk would.
//!
//! ```sh
//! cargo build --release --bin fleetkv
//! cargo run --release --example http_load -- --machines 100000 --clients 64 --seconds 60 [--data DIR] [--no-fsync]
//! ```

#[path = "../benches/support/fleet.rs"]
mod fleet;
#[path = "../benches/support/serve.rs"]
mod serve;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
enum Op {
    Count,
    List,
    Patch,
}

const OPS: [Op; 3] = [Op::Count, Op::List, Op::Patch];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Count => "HEAD count (one cluster, 3 triples)",
            Op::List => "GET list limit 100 slim",
            Op::Patch => "PATCH one machine (JSON Patch)",
        }
    }
}

struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
    machines: usize,
}

impl Client {
    /// One request of `op`; `i` varies the cluster and machine touched.
    fn run(&self, op: Op, i: usize) -> Result<(), String> {
        let cluster = i % fleet::CLUSTERS;
        let r = match op {
            Op::Count => self
                .agent
                .head(&format!(
                    "{}/machines?Profiles=Eq(cluster-{cluster})&cluster/manager=Eq(false)&cluster/leader=Eq(true)",
                    self.base
                ))
                .set("Authorization", &self.auth)
                .call(),
            Op::List => self
                .agent
                .get(&format!(
                    "{}/machines?Profiles=Eq(cluster-{cluster})&limit=100&slim=Params,Meta",
                    self.base
                ))
                .set("Authorization", &self.auth)
                .call(),
            Op::Patch => {
                let m = fleet::machine(i.wrapping_mul(7919) % self.machines);
                self.agent
                    .request("PATCH", &format!("{}/machines/{}", self.base, m.uuid))
                    .set("Authorization", &self.auth)
                    .set("Content-Type", "application/json-patch+json")
                    .send_string(&format!(
                        r#"[{{"op":"add","path":"/Params/load~1n","value":{i}}}]"#
                    ))
            }
        };
        let resp = r.map_err(|e| e.to_string())?;
        // Read the body so the connection is reused.
        resp.into_string().map(drop).map_err(|e| e.to_string())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--machines", 100_000);
    let clients: usize = arg(&args, "--clients", 64);
    let seconds: f64 = arg(&args, "--seconds", 60.0);
    let bin: String = arg(&args, "--bin", serve::FLEETKV.to_string());

    // `--data DIR` keeps the generated store for reuse (e.g. by wrk).
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = match args.iter().position(|a| a == "--data") {
        Some(i) => std::path::PathBuf::from(args.get(i + 1).expect("--data DIR")),
        None => dir.path().join("db"),
    };
    if !data.join("db").exists() {
        let store = fleet::fleetkv(0, Some(&data));
        let machines: Vec<_> = (0..n).map(fleet::machine).collect();
        for chunk in machines.chunks(10_000) {
            store.machines().import(chunk.to_vec()).expect("import");
        }
        store.flush().expect("flush");
    }
    let flags: &[&str] = if args.iter().any(|a| a == "--no-fsync") {
        &["--no-fsync"]
    } else {
        &[]
    };
    let server = serve::fleetkv(&bin, &data, flags);
    let (url, auth) = (server.url.clone(), server.auth.clone());
    let client = |_: usize| Client {
        agent: ureq::AgentBuilder::new()
            .max_idle_connections_per_host(1)
            .timeout(Duration::from_secs(30))
            .build(),
        base: format!("{url}/api/v3"),
        auth: auth.clone(),
        machines: n,
    };
    println!(
        "fleet: {n} machines ({} per cluster); {clients} clients for {seconds} s; {} cores shared by client and server",
        n / fleet::CLUSTERS,
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );

    // Mixed: every client cycles count, list, patch.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let client = client(c);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lat: [Vec<Duration>; 3] = Default::default();
                let mut errors = 0usize;
                let mut i = c * 1_000_003;
                while !stop.load(Ordering::Relaxed) {
                    for (k, op) in OPS.iter().enumerate() {
                        let t = Instant::now();
                        match client.run(*op, i) {
                            Ok(()) => lat[k].push(t.elapsed()),
                            Err(e) => {
                                errors += 1;
                                if errors <= 3 {
                                    eprintln!("{}: {e}", op.name());
                                }
                            }
                        }
                        i += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all: [Vec<Duration>; 3] = Default::default();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.join().expect("a client thread");
        for k in 0..3 {
            all[k].extend_from_slice(&lat[k]);
        }
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    println!();
    println!("| mixed, {clients} connections, {wall:.0} s | requests | req/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    let mut total = 0;
    for (k, op) in OPS.iter().enumerate() {
        all[k].sort();
        total += all[k].len();
        println!(
            "| {} | {} | {:.0} | {} | {} |",
            op.name(),
            all[k].len(),
            all[k].len() as f64 / wall,
            us(percentile(&all[k], 0.5)),
            us(percentile(&all[k], 0.99))
        );
    }
    println!("| all | {total} | {:.0} | | |", total as f64 / wall);
    println!("errors: {errors}");

    // Each operation alone on one connection: the latency floor.
    println!();
    println!("| alone, 1 connection | req/s | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    let one = client(0);
    for op in OPS {
        let mut lat = Vec::new();
        let t = Instant::now();
        let mut i = 0;
        while t.elapsed() < Duration::from_secs(5) {
            let s = Instant::now();
            one.run(op, i).expect("request");
            lat.push(s.elapsed());
            i += 1;
        }
        lat.sort();
        println!(
            "| {} | {:.0} | {} | {} |",
            op.name(),
            lat.len() as f64 / t.elapsed().as_secs_f64(),
            us(percentile(&lat, 0.5)),
            us(percentile(&lat, 0.99))
        );
    }
    drop(server);
}
