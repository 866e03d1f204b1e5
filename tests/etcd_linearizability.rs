//! Linearizability over etcd in CI (issue 15): a bounded run of
//! `examples/linearizability.rs` against three `fleetkv serve --etcd` over
//! one three-member etcd 3.4 cluster. Each client sends each request to
//! the next server, so reads meet writes made through the others; a
//! fleetkv server and the etcd leader are killed with SIGKILL and
//! restarted, a server is paused. stateright's `LinearizabilityTester`
//! must find every group's history linearizable.
//!
//! A server answers a count from its own indexes, which may lag another
//! server's write, so plain reads are not linearizable across servers (the
//! ignored test below; see the example's documentation). Two runs check
//! the two ways a client gets linearizable reads: passing `?min_revision=`
//! of what it has seen (session reads), and asking the server for its read
//! barrier, `?linearizable=true`.

#[allow(dead_code)] // the example's `main` and its flags
#[path = "../examples/linearizability.rs"]
mod harness;

use std::path::PathBuf;

use harness::{Config, EtcdTopology, Reads, Stop};

fn config(reads: Reads) -> Config {
    Config {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_fleetkv")),
        clients: 32,
        team: 4,
        machines: 3,
        group_ops: 100,
        stop: Stop::Ops(1_500),
        kills: 1,
        server_flags: Vec::new(),
        seed: 15,
        check_threads: 2,
        first_violation: true,
        etcd: Some(EtcdTopology {
            members: 3,
            servers: 3,
            member_kills: 1,
            pauses: 1,
            reads,
        }),
    }
}

fn run_and_check(cfg: &Config) {
    let f = harness::run(cfg).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{f}");
    if let Some(why) = f.shortfall(cfg) {
        panic!("{why}");
    }
    assert_eq!(f.leader_kills, 1, "the first etcd kill hits the leader");
}

#[test]
fn three_servers_over_three_etcd_members_with_kills_are_linearizable_with_session_reads() {
    run_and_check(&config(Reads::Session));
}

#[test]
fn three_servers_over_three_etcd_members_with_kills_are_linearizable_with_the_read_barrier() {
    run_and_check(&config(Reads::Linearizable));
}

/// What a client that passes no revision gets: a count on one server may
/// miss a write another server has answered (the server answers from its
/// indexes, which follow etcd's watch). Kept to show it: run with
/// `--ignored`, it fails.
#[test]
#[ignore = "plain reads are not linearizable across servers, by design: see the module doc"]
fn three_servers_over_three_etcd_members_are_linearizable_with_plain_reads() {
    run_and_check(&config(Reads::Plain));
}
