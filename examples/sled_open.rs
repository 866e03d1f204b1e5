//! The floor under one `fleetkv machines count` process: a process that
//! only opens a store's sled directory (as fleetkv configures it), reads one
//! key and closes, with the `fleetkv` binary's allocator.
//!
//! `cargo build --release --example sled_open`, then
//! `target/release/examples/sled_open DIR`; `membership_report --cli`
//! times it beside each count process when it is built.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: sled_open DIR (a fleetkv store's directory)")?;
    let db = sled::Config::new().path(dir).open()?;
    // The store's revision: the first key every open reads.
    let rev = db.get(b"s:rev")?;
    println!("{}", rev.map_or(0, |v| v.len()));
    Ok(())
}
