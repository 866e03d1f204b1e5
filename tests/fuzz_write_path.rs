//! Replays the checked-in seeds of the `write_path` fuzz target on stable
//! (`fuzz/seeds/write_path/`), through the target's own harness, so that
//! `cargo test` checks the write path against the model. The long runs are
//! `cargo fuzz` (see `fuzz/README.md`).

#[path = "../fuzz/harness/write_path.rs"]
mod harness;

#[path = "../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn write_path_seeds_agree_with_the_model() {
    let n = replay::each_seed("write_path", |input: harness::Input| harness::run(&input));
    assert!(n >= 10, "only {n} seeds replayed");
}
