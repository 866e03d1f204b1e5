//! Membership queries Q1–Q5 on deterministic fleets: fleetkv's count and
//! list (limit 100, slim) beside a reference-evaluator scan (10k only: it
//! takes seconds at larger sizes; the report example times it once), SQLite
//! with expression indexes, and raw roaring bitmaps (the floor).
//!
//! Fleet sizes: `FLEET_SIZES=10000,100000,1000000 cargo bench --bench membership`
//! (default 10000,100000).

#[path = "support/fleet.rs"]
mod fleet;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fleetkv::ListOptions;

fn membership(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        let store = fleet::fleetkv(n, None);
        let sql = fleet::Sqlite::load(n);
        let floor = fleet::Floor::build(n);
        let mut g = c.benchmark_group(format!("membership_{n}"));
        g.sample_size(20)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        let slim = ListOptions {
            limit: Some(100),
            slim: vec!["Params".into(), "Meta".into()],
            ..Default::default()
        };
        for (i, (name, text)) in fleet::QUERIES.iter().enumerate() {
            let f = fleet::filter(text);
            let q = store.machines().prepare(&f).unwrap();
            g.bench_function(BenchmarkId::new("fleetkv_count", name), |b| {
                b.iter(|| black_box(store.machines().count_query(&q)))
            });
            g.bench_function(BenchmarkId::new("fleetkv_list100", name), |b| {
                b.iter(|| black_box(store.machines().list_query(&q, &slim).unwrap()))
            });
            g.bench_function(BenchmarkId::new("sqlite_count", name), |b| {
                b.iter(|| black_box(sql.count(i)))
            });
            g.bench_function(BenchmarkId::new("sqlite_list100", name), |b| {
                b.iter(|| black_box(sql.list(i)))
            });
            g.bench_function(BenchmarkId::new("floor_count", name), |b| {
                b.iter(|| black_box(floor.count(i)))
            });
            if n <= 10_000 {
                g.bench_function(BenchmarkId::new("scan_count", name), |b| {
                    b.iter(|| black_box(store.machines().scan(&f).unwrap().len()))
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, membership);
criterion_main!(benches);
