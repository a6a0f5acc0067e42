#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! hvae core (placeholder doc, replaced by README).

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod real;
pub use real::Real;
pub mod shape;
pub use shape::{Activation, Likelihood, Posterior, Scope, Shape};
