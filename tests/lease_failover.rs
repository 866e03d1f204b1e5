//! The seed extended (issue #19), once: `examples/seed_failover.rs` — a
//! manager and 12 member processes on one `fleetkv serve`, each member
//! holding a lease it keeps alive; three leaders won by `cluster campaign`;
//! one leader's process group killed with SIGKILL. Within TTL + one renewal
//! interval (plus process start-up slack) its slot is released, a waiting
//! member takes it with a higher fencing token, a write fenced with the dead
//! leader's token is refused, and the manager's membership stream shows the
//! leader leave and the new one join.

#[allow(dead_code)] // the example's `main` and its flags
#[path = "../examples/seed_failover.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

#[test]
fn a_killed_leader_is_replaced_and_fenced_out() {
    let cfg = harness::Config {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_fleetkv")),
        ttl: 3,
        members: 12,
        leaders: 3,
    };
    let r = harness::run(&cfg).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{r:?}");
    // TTL + one renewal interval, and slack for a loaded CI machine.
    let bound = Duration::from_secs(3) + Duration::from_secs(1) + Duration::from_secs(3);
    assert!(r.left_after <= bound, "{r:?}");
    assert!(r.joined_after <= bound, "{r:?}");
    assert!(r.new_token > r.old_token);
}
