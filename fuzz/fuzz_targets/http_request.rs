//! The server's request handling: see `harness/http_request.rs`.
#![no_main]

#[path = "../harness/http_request.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|input: harness::Input| harness::run(&input));
