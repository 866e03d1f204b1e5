//! The write path against a model: see `harness/write_path.rs`.
#![no_main]

#[path = "../harness/write_path.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|input: harness::Input| harness::run(&input));
