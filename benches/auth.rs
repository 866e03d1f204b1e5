//! Token verification: `verify_token` plus one claims `check`, the cost every
//! scoped operation pays before it touches the store.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetkv::{Claim, Profile, Store};

fn auth(c: &mut Criterion) {
    let s = Store::temporary().unwrap();
    s.profiles().create(Profile::new("example")).unwrap();
    let extra: Vec<Claim> = vec!["machines/*/*".parse().unwrap()];
    let token = s
        .generate_profile_token_with("example", Duration::from_secs(3600), &extra)
        .unwrap();
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_and_check", |b| {
        b.iter(|| {
            let t = s.verify_token(black_box(&token)).unwrap();
            t.check("profiles", "param-set", black_box("example"))
                .unwrap();
        })
    });
    g.bench_function("check", |b| {
        let t = s.verify_token(&token).unwrap();
        b.iter(|| {
            t.check("profiles", "param-set", black_box("example"))
                .unwrap()
        })
    });
    g.bench_function("generate_profile_token", |b| {
        b.iter(|| {
            s.generate_profile_token(black_box("example"), Duration::from_secs(60))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
