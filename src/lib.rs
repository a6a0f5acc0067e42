#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![doc = include_str!("../README.md")]
//!
//! # Module map
//!
//! The modules stand in layers; each uses only the ones above it in this table.
//!
//! | layer | module | what it holds |
//! |---|---|---|
//! | ground | [`real`], [`shape`] | the scalar type every kernel is generic over; a model's sizes and where each tensor lives in the flat parameter vector |
//! | kernels | [`kernels`] | the dense layer `y = act(W x + b)`: the portable kernel and the target kernels (assembly), the only module where `unsafe` is allowed |
//! | distributions | [`dist`] | random variates ([`dist::rng`]), special functions ([`dist::special`]), the posteriors on the sphere ([`dist::sphere`]) |
//! | inference | [`infer`] | the [`Model`] and its dense kernels, the input normalisation |
//! | training | [`train`] | the loss and its gradient, optimisers, spherical k-means, the [`OnlineTrainer`] and the [`SegmenterAdapter`] |
//! | storage and formats | [`store`], [`memory`] | the weight blob ([`store::blob`]), [`Checkpoints`] in NOR flash, the RAM a model needs |
//! | device | `protocol`, `device` | messages and frames between host and device (feature `protocol`); the device `Engine` and its server (feature `device`) |
//!
//! The types most programs need are re-exported here: [`Model`], [`Shape`],
//! [`OnlineTrainer`], [`TrainConfig`], [`Checkpoints`], ...

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod dist;
pub mod infer;
#[allow(unsafe_code)]
pub mod kernels;
pub mod memory;
pub mod real;
pub mod shape;
pub mod store;
pub mod train;

#[cfg(feature = "device")]
pub mod device;
#[cfg(feature = "protocol")]
pub mod protocol;

#[cfg(feature = "device")]
pub use device::Engine;
#[cfg(feature = "alloc")]
pub use infer::model::VecModel;
pub use infer::model::{ArrayModel, Encoding, InferError, Model, ModelError, Segment};
pub use infer::quant::{QuantError, QuantModel};
pub use memory::Memory;
pub use real::Real;
pub use shape::{Activation, Likelihood, Posterior, Scope, Shape, ShapeError};
pub use store::blob::BlobError;
pub use store::checkpoint::{CheckpointError, Checkpoints};
pub use train::adapt::SegmenterAdapter;
pub use train::optim::{OptimConfig, OptimKind, OptimState, Optimiser};
pub use train::trainer::{OnlineTrainer, TrainConfig, TrainError, TrainerStorage};
