//! fleetkv: an embeddable coordination store for machine fleets.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod filter;
pub(crate) mod index;
pub mod model;
#[cfg(feature = "server")]
pub mod server;
pub mod store;

pub use error::{Error, Result};
pub use filter::Filter;
pub use model::{Kind, Machine, ParamDef, Profile, GLOBAL_PROFILE};
pub use store::{ListOptions, Options, Query, Store};
