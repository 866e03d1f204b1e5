//! Lease figures (issue #19 part 5), in one process on a store in a
//! temporary directory:
//!
//! 1. **Renewals**: `--leases N` leases (default 100,000), each renewed every
//!    `--every S` seconds (default 3) by `--threads T` renewing threads for
//!    `--seconds D`; prints renewals/s, the process's CPU per second of
//!    renewing (from `/proc/self/stat`), and the renewal latency p50/p99.
//! 2. **Release**: `--samples K` leases of TTL 1 s, each holding a param on
//!    its own machine, left to expire; prints the time from each deadline to
//!    the count no longer seeing the param (p50/p99, polled every 100 µs).
//!
//! `cargo run --release --example lease_load -- [--leases N] [--seconds D]`

#[path = "../benches/support/watchdog.rs"]
mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetkv::{Filter, Machine, Options, Store};
use serde_json::json;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process so far (USER_HZ ticks: 100
/// a second on Linux).
fn cpu_seconds() -> f64 {
    watchdog::cpu_ticks(std::process::id()) as f64 / 100.0
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> fleetkv::Result<()> {
    let n = arg("--leases", 100_000.0) as usize;
    let every = Duration::from_secs_f64(arg("--every", 3.0));
    let seconds = arg("--seconds", 15.0);
    let threads = arg("--threads", 2.0) as usize;
    let samples = arg("--samples", 200.0) as usize;
    let dir = tempfile::tempdir().map_err(|e| fleetkv::Error::Storage(e.to_string()))?;
    let store = Store::open_with(
        dir.path(),
        Options {
            durable: false,
            ..Options::default()
        },
    )?;

    let t = Instant::now();
    let ids: Vec<u64> = (0..n)
        .map(|_| store.leases().grant(60).map(|l| l.id))
        .collect::<fleetkv::Result<_>>()?;
    println!(
        "granted {n} leases in {:.2} s ({:.0}/s, buffered writes)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );

    // 1. Renewals: each thread renews its share, spread evenly over `every`.
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
            std::thread::spawn(move || {
                let mine: Vec<u64> = ids.iter().skip(w).step_by(threads).copied().collect();
                let gap = every.as_secs_f64() / mine.len().max(1) as f64;
                let start = Instant::now();
                let mut lat = Vec::with_capacity(mine.len() * 8);
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + Duration::from_secs_f64(gap * k as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let id = mine[k % mine.len()];
                    let s = Instant::now();
                    if store.leases().keep_alive(id).is_err() {
                        eprintln!("lease {id} lost");
                    }
                    lat.push(s.elapsed());
                    k += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "renewals: {} in {wall:.1} s = {:.0}/s ({n} leases every {:.1} s, {threads} threads); \
         CPU {:.1}% of one core; latency p50 {:?} p99 {:?}",
        lat.len(),
        lat.len() as f64 / wall,
        every.as_secs_f64(),
        100.0 * cpu / wall,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
    );

    // 2. Release: lease expiry to the count no longer seeing what it held.
    // Leases granted a few milliseconds apart, watched together.
    let mut pending = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("holder-{i}");
        store.machines().create(Machine::new(&name))?;
        let lease = store.leases().grant(1)?;
        store
            .machines()
            .with_lease(lease.id)
            .set_param(&name, "alive", json!(true))?;
        let renewed = Instant::now();
        store.leases().keep_alive(lease.id)?;
        let f = Filter::parse(&format!("Name Eq {name} alive Eq true"))?;
        pending.push((
            renewed + Duration::from_secs(1),
            store.machines().prepare(&f)?,
        ));
        std::thread::sleep(Duration::from_millis(3));
    }
    let mut release = Vec::with_capacity(samples);
    while !pending.is_empty() {
        let now = Instant::now();
        pending.retain(|(deadline, q)| {
            let gone = store.machines().count_query(q) == 0;
            if gone {
                release.push(now.saturating_duration_since(*deadline));
            }
            !gone
        });
        std::thread::sleep(Duration::from_micros(100));
    }
    println!(
        "release: {samples} leases of TTL 1 s; deadline to the count dropping p50 {:?} p99 {:?}",
        percentile(&mut release, 0.5),
        percentile(&mut release, 0.99)
    );
    Ok(())
}
