//! Closed-loop HTTP load for the report examples: `clients` threads, each
//! with one keep-alive connection, run one request after another for a
//! while; the figures are requests/s and latency percentiles. Shared by
//! `durable_writes` and `etcd_scaleout` (include with `#[path]`).
#![allow(dead_code)] // each example uses a different part

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The value after `name` in `args`, parsed; `default` when absent.
/// A value that does not parse is refused loudly: a report must not run
/// with a setting other than the one asked for.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        None => default,
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} takes a value")),
    }
}

/// One client's connection: kept alive, 30 s per request at most.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .max_idle_connections_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
}

/// Throughput and latency of one load.
pub struct Figures {
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms{}",
            self.per_sec,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            if self.errors > 0 {
                format!("  ({} errors)", self.errors)
            } else {
                String::new()
            }
        )
    }
}

/// The median and 99th percentile (nearest rank) of `all`.
pub fn percentiles(mut all: Vec<Duration>) -> (Duration, Duration) {
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    (pct(0.5), pct(0.99))
}

/// `clients` threads run `op(agent, client, i)` for `seconds`; `i` counts
/// each client's requests from a client-specific start, so clients spread
/// over the keys. A failed request is counted (the first two are printed),
/// not timed.
pub fn run(
    clients: usize,
    seconds: f64,
    op: impl Fn(&ureq::Agent, usize, usize) -> Result<(), String> + Sync,
) -> Figures {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (all, errors) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (op, stop) = (&op, &stop);
                scope.spawn(move || {
                    let agent = agent();
                    let (mut lat, mut errors, mut i) = (Vec::new(), 0usize, c * 7919);
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match op(&agent, c, i) {
                            Ok(()) => lat.push(t.elapsed()),
                            Err(e) => {
                                errors += 1;
                                if errors <= 2 {
                                    eprintln!("  error: {e}");
                                }
                            }
                        }
                        i += 1;
                    }
                    (lat, errors)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut errors = 0;
        for w in workers {
            let (lat, e) = w.join().expect("a client thread");
            all.extend(lat);
            errors += e;
        }
        (all, errors)
    });
    let wall = started.elapsed().as_secs_f64();
    let n = all.len();
    let (p50, p99) = percentiles(all);
    Figures {
        per_sec: n as f64 / wall,
        p50,
        p99,
        errors,
    }
}
