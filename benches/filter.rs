//! Filter parsing and binding: the three-triple cluster filter (target: at
//! least 1,000,000 parses per second) and a nested boolean filter.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetkv::filter::{Filter, ParamTypes};
use fleetkv::model::Kind;

struct Types;

impl ParamTypes for Types {
    fn schema_type(&self, name: &str) -> Option<&str> {
        match name {
            "cluster/manager" | "cluster/leader" => Some("boolean"),
            _ => None,
        }
    }
}

const TRIPLES: &str = "cluster/manager Eq false cluster/leader Eq true Profiles Eq cluster-7";
const NESTED: &str =
    "Profiles In cluster-1,cluster-2 And Not (cluster/leader Eq true Or Meta.icon Eq anchor)";
const QUERY: &str =
    "Params.cluster/manager=Eq(false)&Params.cluster/leader=Eq(true)&Profiles=Eq(cluster-7)";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse/triples", |b| {
        b.iter(|| Filter::parse(black_box(TRIPLES)))
    });
    g.bench_function("parse+bind/triples", |b| {
        b.iter(|| Filter::parse(black_box(TRIPLES)).and_then(|f| f.bind(Kind::Machine, &Types)))
    });
    g.bench_function("parse/nested", |b| {
        b.iter(|| Filter::parse(black_box(NESTED)))
    });
    g.bench_function("parse+bind/nested", |b| {
        b.iter(|| Filter::parse(black_box(NESTED)).and_then(|f| f.bind(Kind::Machine, &Types)))
    });
    g.bench_function("from_query/triples", |b| {
        b.iter(|| Filter::from_query(black_box(QUERY)))
    });
    let f = Filter::parse(NESTED).expect("bench filter parses");
    g.bench_function("display/nested", |b| b.iter(|| black_box(&f).to_string()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
