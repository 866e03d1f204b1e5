//! fleetkv: an embeddable coordination store for machine fleets.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod filter;
pub mod model;

pub use error::{Error, Result};
