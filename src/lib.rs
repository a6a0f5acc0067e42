#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![doc = include_str!("../README.md")]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod real;
pub use real::Real;
pub mod shape;
pub use shape::{Activation, Likelihood, Posterior, Scope, Shape};
pub mod adapt;
pub mod blob;
pub mod checkpoint;
#[cfg(feature = "device")]
pub mod device;
pub mod kmeans;
pub mod loss;
pub mod memory;
pub mod model;
mod nn;
pub mod normalise;
pub mod optim;
#[cfg(feature = "protocol")]
pub mod protocol;
pub mod rng;
pub mod special;
pub mod sphere;
pub mod trainer;
