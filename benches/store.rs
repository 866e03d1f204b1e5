//! Core store operations on a temporary store: create, get, patch, and param
//! compare-and-set uncontended and with 8 threads contending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetkv::{Error, Machine, Profile, Store};
use serde_json::json;

fn fleet(n: usize) -> Store {
    let s = Store::temporary().unwrap();
    s.profiles().create(Profile::new("example")).unwrap();
    for i in 0..n {
        let mut m = Machine::new(format!("node-{i:06}"));
        m.profiles.push("example".into());
        m.params.insert("rack".into(), json!(i % 40));
        s.machines().create(m).unwrap();
    }
    s
}

fn store_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let s = fleet(10_000);
    let counter = AtomicU64::new(0);
    g.bench_function("create", |b| {
        b.iter(|| {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            let mut m = Machine::new(format!("new-{i}"));
            m.profiles.push("example".into());
            s.machines().create(m).unwrap()
        })
    });
    g.bench_function("get", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % 10_000;
            s.machines().get(&format!("Name:node-{i:06}")).unwrap()
        })
    });
    g.bench_function("patch", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            s.machines()
                .patch(
                    "node-000042",
                    &json!([{"op": "replace", "path": "/Params/rack", "value": i}]),
                )
                .unwrap()
        })
    });
    g.bench_function("cas_uncontended", |b| {
        let mut cur = s
            .machines()
            .get_param("node-000043", "rack", false)
            .unwrap();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            s.machines()
                .set_param_if("node-000043", "rack", cur.as_ref(), json!(i))
                .unwrap();
            cur = Some(json!(i));
        })
    });
    // 8 threads race CAS-retry increments of one param; the figure is
    // successful increments per second across all threads.
    g.bench_function("cas_contended_8_threads", |b| {
        b.iter_custom(|iters| {
            let threads = 8u64;
            let each = iters.div_ceil(threads);
            let barrier = Arc::new(Barrier::new(threads as usize + 1));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let s = s.clone();
                    let barrier = barrier.clone();
                    thread::spawn(move || {
                        barrier.wait();
                        for _ in 0..each {
                            loop {
                                let cur = s.profiles().get_param("example", "n", false).unwrap();
                                let next = cur.as_ref().and_then(|v| v.as_u64()).unwrap_or(0) + 1;
                                match s.profiles().set_param_if(
                                    "example",
                                    "n",
                                    cur.as_ref(),
                                    json!(next),
                                ) {
                                    Ok(_) => break,
                                    Err(Error::Conflict { .. }) => continue,
                                    Err(e) => panic!("{e}"),
                                }
                            }
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for h in handles {
                h.join().unwrap();
            }
            // Normalise to `iters` increments.
            start
                .elapsed()
                .mul_f64(iters as f64 / (each * threads) as f64)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = store_ops
}
criterion_main!(benches);
