//! `hvae` on Cortex-M: the pieces the programs in `src/bin/` share.
//!
//! - [`board`]: the two boards' UART (the protocol's byte stream) and flash writer;
//! - [`weights`]: the compiled-in model (CRC-checked), and two flash slots that
//!   `LoadWeights` fills;
//! - [`inference`]: the inference program's engine (the core's, over the weights in
//!   flash);
//! - [`learning`]: the static buffers and checkpoint slots of a learning program;
//! - [`rt`]: image and RAM figures, stack painting, the semihosting exit, an
//!   instruction counter, the panic handlers;
//! - [`golden`]: rows of the digits and the host's outputs for them, which the on-target
//!   tests and benches use.
//!
//! Programs: `cluster` (inference service), `learn` (inference and on-device training),
//! `learn_scratch` (learning a small network from a fresh initialisation),
//! `selftest` (on-target tests), `bench` (instruction counts and RAM of inference and
//! training, against the budgets). See `README.md` in this directory.
//!
//! Logs are defmt frames over semihosting (this library links `defmt-semihosting` as the
//! global logger): programs log with `defmt`'s macros, and the host decodes the frames
//! with the ELF (`host/`: `hvae-firmware-host run ELF`).
#![no_std]
#![deny(missing_docs)]

// The global logger: defmt frames to semihosting stdout (qemu's stdout, not the UART).
use defmt_semihosting as _;

pub mod board;
/// Rows of the digits and the outputs of `Model::segment` for the first of them,
/// computed on the host (`model/golden.rs`, from `model/regen.sh`): what `selftest`
/// checks the compiled-in model against and what the benches run.
#[allow(dead_code)]
pub mod golden {
    include!("../model/golden.rs");
}
pub mod inference;
pub mod learning;
pub mod rt;
pub mod weights;

/// The value of `$r: Result<_, _>`; or, on an error, the error logged with the defmt
/// format `$fmt` (one argument, the error) and the program ended as failed
/// ([`rt::exit`]): what a program cannot run without at boot.
#[macro_export]
macro_rules! or_exit {
    ($r:expr, $fmt:literal) => {
        match $r {
            Ok(v) => v,
            Err(e) => {
                ::defmt::error!($fmt, e);
                $crate::rt::exit(false)
            }
        }
    };
}
