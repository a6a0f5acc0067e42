//! `hvae` on Cortex-M: the pieces the programs in `src/bin/` share.
//!
//! - [`board`]: the two boards' UART (the protocol's byte stream) and flash writer;
//! - [`weights`]: the compiled-in model (CRC-checked), and two flash slots that
//!   `LoadWeights` fills;
//! - [`service`]: the request handler of the protocol (`hvae::protocol`);
//! - [`rt`]: image and RAM figures, stack painting, the semihosting exit, an
//!   instruction counter.
//!
//! Programs: `cluster` (inference service), `selftest` (on-target tests), `bench`
//! (instruction counts and RAM of inference and training, against the budgets). See
//! `README.md` in this directory.
#![no_std]
#![deny(missing_docs)]

pub mod board;
pub mod rt;
pub mod service;
pub mod weights;
