//! The README's server table, fleetkv and etcd 3.4 side by side in one run,
//! on the same loopback and the same generated fleet (100 machines per
//! cluster):
//! - `HEAD` counts and a list through `wrk` (64 and 1 connections);
//! - a remote CLI call, spawn to exit (`fleetkv -E … machines count`, `curl`,
//!   `etcdctl get --prefix --keys-only --limit 1 -w json`, whose answer
//!   carries the prefix's count; 3.4 has no `--count-only`), median of 31;
//! - bulk load over HTTP: `fleetkv -E … import` of an export, and etcd
//!   loading the same documents as fast as it takes them (transactions of
//!   100 puts from 8 clients).
//!
//! etcd holds the fleet as an etcd user would: each machine's JSON under
//! `machines/<uuid>`, and a membership key `clusters/<cluster>/<uuid>`
//! written in the same transaction, so "how many in this cluster" is a
//! `count_only` range over one prefix. etcd has no filters, so the rows with
//! param filters (`Q2` shape) and the list have no etcd column.
//!
//! fleetkv serves durably (the default); etcd is one member with its
//! defaults. Client and server share the machine's cores.
//!
//! ```sh
//! apt-get install wrk etcd-server etcd-client curl
//! cargo build --release --bin fleetkv
//! cargo run --release --example server_table -- [--machines 100000] [--seconds 15]
//! ```

#[path = "../benches/support/fleet.rs"]
mod fleet;
#[path = "../benches/support/serve.rs"]
mod serve;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

fn arg(args: &[String], name: &str, default: &str) -> String {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
        None => default.to_string(),
    }
}

/// What `wrk --latency` printed: requests/s, p50, p99, non-2xx answers.
struct Wrk {
    per_second: f64,
    p50: String,
    p99: String,
    failed: u64,
}

impl std::fmt::Display for Wrk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} req/s, p50 {}, p99 {}",
            self.per_second, self.p50, self.p99
        )?;
        if self.failed > 0 {
            write!(f, " ({} FAILED)", self.failed)?;
        }
        Ok(())
    }
}

/// One wrk run of `method url` with `headers` and `body`.
fn wrk(
    wrk: &str,
    scratch: &Path,
    (method, url): (&str, &str),
    headers: &[(&str, &str)],
    body: Option<&str>,
    connections: usize,
    seconds: u64,
) -> Wrk {
    let mut lua = format!("wrk.method = {method:?}\n");
    for (k, v) in headers {
        lua += &format!("wrk.headers[{k:?}] = {v:?}\n");
    }
    if let Some(b) = body {
        lua += &format!("wrk.body = {b:?}\n");
    }
    // wrk counts a non-2xx/3xx answer but reports it only in its summary.
    let script = scratch.join("request.lua");
    std::fs::write(&script, lua).expect("write the wrk script");
    let threads = connections.min(2).to_string();
    let out = Command::new(wrk)
        .args(["-t", &threads, "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {wrk}: {e} (apt-get install wrk)"));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    Wrk {
        per_second: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("wrk printed no rate:\n{text}")),
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        failed: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// Median wall time of `runs` spawns of `cmd`, each checked to succeed.
fn spawn_median(runs: usize, cmd: &mut dyn FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let mut c = cmd();
            let started = Instant::now();
            let out = c.stderr(Stdio::inherit()).output().expect("spawn");
            let took = started.elapsed();
            assert!(out.status.success(), "{c:?} failed");
            took
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The key just past every key starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8(end).expect("ASCII prefix")
}

fn count_only(prefix: &str) -> String {
    json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "count_only": true})
        .to_string()
}

/// Loads machines `0..n` into etcd: each machine's JSON and its membership
/// key in one transaction, 50 machines (100 puts) per transaction, from 8
/// clients. Returns machines per second.
fn etcd_load(url: &str, n: usize) -> f64 {
    let clients = 8;
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let mine: Vec<usize> = (c..n).step_by(clients).collect();
                for chunk in mine.chunks(50) {
                    let mut success = Vec::with_capacity(2 * chunk.len());
                    for &i in chunk {
                        let m = fleet::machine(i);
                        let doc = serde_json::to_string(&m).expect("machine JSON");
                        let member = format!("clusters/{}/{}", m.profiles[0], m.uuid);
                        for (k, v) in [
                            (format!("machines/{}", m.uuid), doc),
                            (member, String::new()),
                        ] {
                            success
                                .push(json!({"request_put": {"key": b64(&k), "value": b64(&v)}}));
                        }
                    }
                    agent
                        .post(&format!("{url}/v3/kv/txn"))
                        .send_string(&json!({"success": success}).to_string())
                        .expect("etcd txn");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a loader thread");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--machines", "100000")
        .parse()
        .expect("--machines N");
    let seconds: u64 = arg(&args, "--seconds", "15").parse().expect("--seconds S");
    let bin = arg(&args, "--bin", serve::FLEETKV);
    let wrk_bin = arg(&args, "--wrk", "wrk");
    let etcd_bin = arg(&args, "--etcd", "/usr/bin/etcd");
    let etcdctl = arg(&args, "--etcdctl", "/usr/bin/etcdctl");
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let dir = scratch.path();

    let data = dir.join("fleet");
    {
        let store = fleet::fleetkv(0, Some(&data));
        let machines: Vec<_> = (0..n).map(fleet::machine).collect();
        for chunk in machines.chunks(10_000) {
            store.machines().import(chunk.to_vec()).expect("import");
        }
        store.flush().expect("flush");
    }
    println!(
        "fleet: {n} machines, {} per cluster; {} cores shared by clients and servers; wrk {seconds} s a row",
        n / fleet::CLUSTERS,
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );

    let export = dir.join("fleet.json");
    let server = serve::fleetkv(&bin, &data, &[]);
    let key = server.auth.trim_start_matches("Bearer ").to_string();
    let status = Command::new(&bin)
        .args(["-E", &server.url, "-T", &key, "export"])
        .stdout(std::fs::File::create(&export).expect("export file"))
        .status()
        .expect("fleetkv export");
    assert!(status.success(), "fleetkv export failed");

    let auth = [("Authorization", server.auth.as_str())];
    let base = format!("{}/api/v3/machines", server.url);
    let one_cluster = format!("{base}?Profiles=Eq(cluster-7)");
    let q2 =
        format!("{base}?Profiles=Eq(cluster-7)&cluster/manager=Eq(false)&cluster/leader=Eq(true)");
    let list = format!("{base}?Profiles=Eq(cluster-7)&limit=100&slim=Params,Meta");
    let run = |target: (&str, &str), c: usize| wrk(&wrk_bin, dir, target, &auth, None, c, seconds);
    let fk_cluster_64 = run(("HEAD", &one_cluster), 64);
    let fk_cluster_1 = run(("HEAD", &one_cluster), 1);
    let fk_q2_64 = run(("HEAD", &q2), 64);
    let fk_all_1 = run(("HEAD", &base), 1);
    let fk_list_64 = run(("GET", &list), 64);
    let fk_cli = spawn_median(31, &mut || {
        let mut c = Command::new(&bin);
        c.args(["-E", &server.url, "-T", &key, "machines", "count"])
            .args(["Profiles", "Eq", "cluster-7"]);
        c
    });
    let curl = spawn_median(31, &mut || {
        let mut c = Command::new("curl");
        c.args([
            "-sfI",
            "-H",
            &format!("Authorization: {}", server.auth),
            &one_cluster,
        ]);
        c
    });
    drop(server);

    // Bulk load over HTTP into an empty server.
    let empty = dir.join("empty");
    let server = serve::fleetkv(&bin, &empty, &[]);
    let key = server.auth.trim_start_matches("Bearer ").to_string();
    let started = Instant::now();
    let status = Command::new(&bin)
        .args(["-E", &server.url, "-T", &key, "import"])
        .arg(&export)
        .stdout(Stdio::null())
        .status()
        .expect("fleetkv import");
    let fk_import = n as f64 / started.elapsed().as_secs_f64();
    assert!(status.success(), "fleetkv import failed");
    drop(server);
    let export_mb = std::fs::metadata(&export).map_or(0, |m| m.len()) as f64 / 1e6;

    let etcd = serve::etcd(&etcd_bin, &dir.join("etcd"));
    let etcd_rows = etcd.map(|etcd| {
        let load = etcd_load(&etcd.url, n);
        let range = format!("{}/v3/kv/range", etcd.url);
        let run = |prefix: &str, c: usize| {
            wrk(
                &wrk_bin,
                dir,
                ("POST", &range),
                &[],
                Some(&count_only(prefix)),
                c,
                seconds,
            )
        };
        let cluster = "clusters/cluster-7/";
        let rows = (run(cluster, 64), run(cluster, 1), run("machines/", 1));
        let cli = spawn_median(31, &mut || {
            let mut c = Command::new(&etcdctl);
            c.env("ETCDCTL_API", "3")
                .args(["--endpoints", &etcd.url, "get", "--prefix", "--keys-only"])
                .args(["--limit", "1", "-w", "json", cluster])
                .stdout(Stdio::null());
            c
        });
        (load, rows, cli)
    });

    let (e64, e1, eall, ecli, eload) = match &etcd_rows {
        Some((load, (a, b, c), cli)) => (
            a.to_string(),
            b.to_string(),
            c.to_string(),
            ms(*cli),
            format!("{load:.0} machines/s"),
        ),
        None => Default::default(),
    };
    println!("\n| measurement | fleetkv | etcd 3.4 |");
    println!("|---|---:|---:|");
    println!("| `HEAD` count of one cluster, 64 connections | {fk_cluster_64} | {e64} |");
    println!("| the same, 1 connection | {fk_cluster_1} | {e1} |");
    println!("| `HEAD` count, 3 triples (Q2 shape), 64 connections | {fk_q2_64} | |");
    println!("| `HEAD` count of all {n}, 1 connection | {fk_all_1} | {eall} |");
    println!("| `GET` list 100 slim, 64 connections | {fk_list_64} | |");
    println!(
        "| remote CLI call, spawn to exit, median of 31 | {} (curl: {}) | {ecli} (`etcdctl`) |",
        ms(fk_cli),
        ms(curl)
    );
    println!(
        "| bulk load over HTTP ({export_mb:.0} MB export) | {fk_import:.0} machines/s | {eload} |"
    );
    if let Some((_, (a, ..), _)) = &etcd_rows {
        println!(
            "\none-cluster count, 64 connections: fleetkv {:.1}× etcd",
            fk_cluster_64.per_second / a.per_second
        );
    } else {
        println!("\netcd not found at {etcd_bin}: no etcd column");
    }
}
