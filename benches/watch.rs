//! Watch fan-out (1,000 events to 100 subscribers) and the wake-up latency
//! of an in-process `count_wait` barrier (write → waiter returns).

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fleetkv::{CountCondition, Filter, Machine, Profile, Store};
use serde_json::json;

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch");
    g.sample_size(10);
    g.bench_function("fanout_1000_events_100_subscribers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = Store::temporary().unwrap();
                let from = s.revision() + 1;
                let ready = Arc::new(Barrier::new(101));
                let subs: Vec<_> = (0..100)
                    .map(|_| {
                        let s = s.clone();
                        let ready = ready.clone();
                        thread::spawn(move || {
                            let mut w = s.watch(None, None, Some(from)).unwrap();
                            ready.wait();
                            let mut n = 0;
                            while n < 1000 {
                                if w.next_timeout(Duration::from_secs(30)).unwrap().is_some() {
                                    n += 1;
                                }
                            }
                        })
                    })
                    .collect();
                ready.wait();
                let t = Instant::now();
                for i in 0..1000 {
                    s.machines().create(Machine::new(format!("m{i}"))).unwrap();
                }
                for h in subs {
                    h.join().unwrap();
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn wake_up(c: &mut Criterion) {
    let mut g = c.benchmark_group("count_wait");
    let s = Store::temporary().unwrap();
    s.profiles().create(Profile::new("c")).unwrap();
    for i in 0..100 {
        let mut m = Machine::new(format!("m{i}"));
        m.profiles.push("c".into());
        s.machines().create(m).unwrap();
    }
    let f = Filter::parse("Profiles Eq c done Eq true").unwrap();
    g.bench_function("wake_up_latency", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let flag = json!(i % 2 == 0);
                let want = if i % 2 == 0 {
                    CountCondition::AtLeast(1)
                } else {
                    CountCondition::Exactly(0)
                };
                let (tx, rx) = mpsc::channel();
                let waiter = {
                    let (s, f) = (s.clone(), f.clone());
                    thread::spawn(move || {
                        tx.send(()).unwrap();
                        s.count_wait(&f, want, Duration::from_secs(30)).unwrap();
                        Instant::now()
                    })
                };
                rx.recv().unwrap();
                thread::sleep(Duration::from_millis(1));
                let t = Instant::now();
                s.machines().set_param("m7", "done", flag).unwrap();
                total += waiter.join().unwrap() - t;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, fan_out, wake_up);
criterion_main!(benches);
