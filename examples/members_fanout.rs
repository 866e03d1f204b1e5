//! Membership stream fan-out: one store of 10,000 machines, 100 subscribers
//! on different filters (each its own thread and `MemberWatch`), one writer
//! at 1,000 writes/s for 10 s moving machines in and out of the filters
//! (and, once a second, a profile write that moves a tenth of the fleet at
//! once). Prints the subscribers' CPU time per delivered message and the
//! delivery lag (write acknowledged → message received), p50/p99/max.
//!
//! `cargo run --release --example members_fanout [-- MACHINES SUBSCRIBERS RATE SECONDS]`
//!
//! CPU time is each subscriber thread's on-CPU time from
//! `/proc/thread-self/schedstat` (Linux). The store is in memory (no fsync):
//! what is measured is the streams, not the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetkv::{Filter, Machine, Profile, Store};
use serde_json::json;

/// This thread's on-CPU time so far, in nanoseconds (0 where unknown).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn filter_text(i: usize) -> String {
    match i % 5 {
        0 => format!("rack Eq {}", i % 50),
        1 => format!("rack Lt {} And zone Eq z{}", i % 50, i % 10),
        2 => format!("Profiles Eq p{} And state Eq busy", i % 10),
        3 => format!("tier Eq gold And rack In {},{}", i % 50, (i + 7) % 50),
        _ => format!("state Eq idle Or rack Eq {}", i % 50),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> fleetkv::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let machines = args.first().copied().unwrap_or(10_000);
    let subscribers = args.get(1).copied().unwrap_or(100);
    let rate = args.get(2).copied().unwrap_or(1_000);
    let seconds = args.get(3).copied().unwrap_or(10);

    let store = Store::in_memory()?;
    for p in 0..10 {
        let mut prof = Profile::new(format!("p{p}"));
        prof.params.insert("tier".into(), json!("silver"));
        store.profiles().create(prof)?;
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let all: Vec<Machine> = (0..machines)
        .map(|i| {
            let mut m = Machine::new(format!("node-{i:05}"));
            m.params.insert("rack".into(), json!(rng.usize(0..50)));
            m.params
                .insert("zone".into(), json!(format!("z{}", rng.usize(0..10))));
            m.params.insert("state".into(), json!("idle"));
            m.profiles.push(format!("p{}", i % 10));
            m
        })
        .collect();
    let names: Vec<String> = all.iter().map(|m| m.name.clone()).collect();
    for chunk in all.chunks(10_000) {
        store.machines().import(chunk.to_vec())?;
    }
    println!("{machines} machines, {subscribers} subscribers, {rate} writes/s for {seconds} s");

    let stop = Arc::new(AtomicBool::new(false));
    let committed: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let filter = Filter::parse(&filter_text(i)).map_err(fleetkv::Error::from)?;
        let mut w = store.watch_members(&filter, None)?;
        let stop = stop.clone();
        subs.push(std::thread::spawn(move || {
            let cpu0 = thread_cpu_ns();
            let mut got: Vec<(u64, Instant)> = Vec::new();
            let mut count = 0;
            let mut messages = 0u64;
            let mut moved = 0u64;
            loop {
                match w.next_timeout(Duration::from_millis(50)) {
                    Ok(Some(m)) => {
                        got.push((m.revision, Instant::now()));
                        count = m.count;
                        messages += 1;
                        moved += (m.joined.len() + m.left.len()) as u64;
                    }
                    Ok(None) if stop.load(Ordering::Relaxed) => break,
                    Ok(None) => {}
                    Err(e) => panic!("subscriber {i}: {e}"),
                }
            }
            (thread_cpu_ns() - cpu0, messages, moved, count, got, filter)
        }));
    }

    // The writer: `rate` machine writes a second on an absolute schedule,
    // and a profile write once a second.
    let start = Instant::now();
    let total = rate * seconds;
    let writer_cpu0 = thread_cpu_ns();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if n % rate == rate - 1 {
            let p = format!("p{}", rng.usize(0..10));
            let tier = if rng.bool() { "gold" } else { "silver" };
            store.profiles().set_param(&p, "tier", json!(tier))?;
        } else {
            let name = &names[rng.usize(0..names.len())];
            if rng.usize(0..4) == 0 {
                let state = if rng.bool() { "busy" } else { "idle" };
                store.machines().set_param(name, "state", json!(state))?;
            } else {
                store
                    .machines()
                    .set_param(name, "rack", json!(rng.usize(0..50)))?;
            }
        }
        let at = Instant::now();
        if let Ok(mut c) = committed.lock() {
            c.push((store.revision(), at));
        }
    }
    let elapsed = start.elapsed();
    let writer_cpu = thread_cpu_ns() - writer_cpu0;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let committed: std::collections::HashMap<u64, Instant> = committed
        .lock()
        .map(|c| c.iter().copied().collect())
        .unwrap_or_default();
    let (mut cpu, mut messages, mut moved, mut wrong) = (0u64, 0u64, 0u64, 0);
    let mut lags: Vec<Duration> = Vec::new();
    for s in subs {
        let Ok((c, m, mv, count, got, filter)) = s.join() else {
            panic!("a subscriber panicked");
        };
        cpu += c;
        messages += m;
        moved += mv;
        if count != store.machines().count(&filter)? {
            wrong += 1;
        }
        for (rev, at) in got {
            if let Some(w) = committed.get(&rev) {
                lags.push(at.saturating_duration_since(*w));
            }
        }
    }
    lags.sort();
    println!(
        "writes: {total} in {:.2} s ({:.0}/s), writer CPU {:.1} µs/write",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        writer_cpu as f64 / 1e3 / total as f64
    );
    println!(
        "messages: {messages} ({moved} joins+leaves) to {subscribers} subscribers; final counts wrong: {wrong}"
    );
    println!(
        "subscriber CPU: {:.2} s total = {:.1} µs per delivered message, {:.2} µs per write per subscriber",
        cpu as f64 / 1e9,
        cpu as f64 / 1e3 / messages.max(1) as f64,
        cpu as f64 / 1e3 / (total * subscribers) as f64
    );
    println!(
        "lag (write acknowledged → message received): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} messages timed)",
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lags.len()
    );
    Ok(())
}
