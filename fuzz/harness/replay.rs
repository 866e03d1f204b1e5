//! Replays a fuzz target's seed directory on stable: each file decoded the
//! way `libfuzzer_sys::fuzz_target!` decodes a typed input
//! (`Arbitrary::arbitrary_take_rest`), then run.

use arbitrary::{Arbitrary, Unstructured};

/// Runs `run` on every seed of `target` (in name order); returns how many.
pub fn each_seed<T: for<'a> Arbitrary<'a> + std::fmt::Debug>(
    target: &str,
    run: impl Fn(T),
) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    let mut n = 0;
    for f in files {
        let bytes = std::fs::read(&f).expect("seed");
        let Ok(input) = T::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        run(input);
        n += 1;
    }
    n
}
