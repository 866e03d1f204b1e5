//! Runs the store's test suites on every storage engine: a test written as
//! `fn name(e: Engine)` and listed in `on_each_engine!` becomes
//! `on_sled::name` and `in_memory::name`.

use fleetkv::{Options, Store};

/// A storage engine to open a test's store on.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    /// sled in a temporary directory ([`Store::temporary_with`]).
    Sled,
    /// The in-memory engine ([`Store::in_memory_with`]).
    Memory,
}

impl Engine {
    /// A new, empty store.
    pub fn store(self) -> Store {
        self.store_with(Options::default()).unwrap()
    }

    /// A new, empty store opened with `options`.
    pub fn store_with(self, options: Options) -> fleetkv::Result<Store> {
        match self {
            Engine::Sled => Store::temporary_with(options),
            Engine::Memory => Store::in_memory_with(options),
        }
    }
}

/// One `#[test]` per engine for each listed `fn(Engine)`.
macro_rules! on_each_engine {
    ($($test:ident),* $(,)?) => {
        mod on_sled {
            $(#[test]
            fn $test() {
                super::$test(super::engines::Engine::Sled)
            })*
        }
        mod in_memory {
            $(#[test]
            fn $test() {
                super::$test(super::engines::Engine::Memory)
            })*
        }
    };
}
