//! Leader election on a 10,000-member cluster: a fresh cluster per iteration
//! (built outside the timing), then `elect(3)` — the fence's first
//! designation, the index reads, and one atomic `patch_many`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use fleetkv::{Cluster, Machine, Role, Store};

const MEMBERS: usize = 10_000;

fn fresh() -> (Store, Cluster) {
    let s = Store::temporary().unwrap();
    let c = Cluster::init(&s, "big", None).unwrap();
    let machines = (0..MEMBERS)
        .map(|i| {
            let mut m = Machine::new(format!("node-{i:05}"));
            m.profiles.push("big".into());
            m
        })
        .collect();
    s.machines().import(machines).unwrap();
    c.set_role("node-00000", Role::Manager).unwrap();
    (s, c)
}

fn election(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster");
    g.sample_size(10);
    g.bench_function("elect_3_of_10k_fresh", |b| {
        b.iter_batched(
            fresh,
            |(s, c)| {
                assert_eq!(c.elect(3).unwrap().len(), 3);
                (s, c)
            },
            BatchSize::PerIteration,
        )
    });
    // The idempotent re-run every member makes: reads only.
    let (_s, cl) = fresh();
    cl.elect(3).unwrap();
    g.bench_function("re_elect_3_of_10k", |b| b.iter(|| cl.elect(3).unwrap()));
    g.finish();
}

criterion_group!(benches, election);
criterion_main!(benches);
