//! Crash testing in CI: a bounded run of `examples/crash_harness.rs` —
//! a child of this binary runs a seeded random workload on a durable store
//! and reports each acknowledged write; it is killed with SIGKILL at random
//! moments, and after every kill the reopened store must hold exactly the
//! acknowledged writes (plus, whole or not at all, the one in flight), with
//! indexes equal to a rebuild and a change log without gaps. See the
//! example's documentation for what each cycle checks.

#[allow(dead_code)] // the example's `main` and figures it prints
#[path = "../examples/crash_harness.rs"]
mod harness;

use std::process::Command;

/// Cycles per CI run (the example runs a thousand).
const CYCLES: u64 = 60;

#[test]
fn acknowledged_writes_survive_sigkill_and_nothing_is_half_applied() {
    // In a child: run the workload until killed.
    harness::child_if_asked();
    // A fixed seed unless one is given, so a failure can be rerun.
    let seed = std::env::var("FLEETKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(17);
    let exe = std::env::current_exe().unwrap();
    let cfg = harness::Config {
        cycles: CYCLES,
        seed,
        dir: None,
        command: Box::new(move || {
            let mut c = Command::new(&exe);
            c.args([
                "acknowledged_writes_survive_sigkill_and_nothing_is_half_applied",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ]);
            c
        }),
        verbose: false,
    };
    let figures = harness::run(&cfg).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{figures}");
    // The run must have tested something: writes acknowledged and checked,
    // kills that found a write in flight, and reopens from a checkpoint.
    assert_eq!(figures.cycles, CYCLES);
    assert!(
        figures.acked >= CYCLES,
        "{} writes acknowledged",
        figures.acked
    );
    assert!(figures.in_flight > 0, "no kill found a write in flight");
    assert!(
        figures.recovery.keys().any(|k| k.starts_with("checkpoint")),
        "no reopen used a checkpoint: {:?}",
        figures.recovery
    );
}
