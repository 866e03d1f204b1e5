//! Linearizability in CI: bounded runs of `examples/linearizability.rs` —
//! 64 and 200 concurrent HTTP clients read, write, compare-and-set (param
//! CAS and JSON Patch `test`) and count against the real `fleetkv serve`
//! (durable writes, the default), which is killed with SIGKILL and
//! restarted on the same data directory and port mid-run; stateright's
//! `LinearizabilityTester` must find every group's history linearizable,
//! with each request whose answer never came left open. See the example's
//! documentation for the model.

#[allow(dead_code)] // the example's `main` and its flags
#[path = "../examples/linearizability.rs"]
mod harness;

use std::path::PathBuf;

use harness::{Config, Stop};

fn config(clients: usize, ops: u64, kills: usize, seed: u64) -> Config {
    Config {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_fleetkv")),
        clients,
        team: 4,
        machines: 3,
        group_ops: 100,
        stop: Stop::Ops(ops),
        kills,
        server_flags: Vec::new(),
        seed,
        check_threads: 2,
        first_violation: true,
        etcd: None,
    }
}

fn run_and_check(cfg: &Config) {
    let f = harness::run(cfg).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{f}");
    if let Some(why) = f.shortfall(cfg) {
        panic!("{why}");
    }
}

#[test]
fn sixty_four_clients_with_two_kills_are_linearizable() {
    run_and_check(&config(64, 6_000, 2, 64));
}

#[test]
fn two_hundred_clients_with_two_kills_are_linearizable() {
    run_and_check(&config(200, 8_000, 2, 200));
}
