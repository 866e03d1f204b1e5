//! Replays the checked-in seeds of the `http_request` fuzz target on stable
//! (`fuzz/seeds/http_request/`) through the target's own harness: DRP-shaped
//! errors, no 500, indexes intact. The long runs are `cargo fuzz` (see
//! `fuzz/README.md`).

#[path = "../fuzz/harness/http_request.rs"]
mod harness;

#[path = "../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn http_request_seeds_answer_in_drp_shape() {
    let n = replay::each_seed("http_request", |input: harness::Input| harness::run(&input));
    harness::remove_creds_dir();
    assert!(n >= 10, "only {n} seeds replayed");
}
