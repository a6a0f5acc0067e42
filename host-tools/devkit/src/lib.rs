//! The host side of hvae's devices, one copy for both host programs: `hvae`
//! (`host-tools`: `validate`, `device-train`, `demo`) and `hvae-firmware-host`
//! (`firmware/host`: `run`, `decode`, the conformance probe).
//!
//! | module | job |
//! |---|---|
//! | [`link`] | a byte stream with receive timeouts (reader thread + channel) |
//! | [`client`] | requests and responses: framing, re-sync, weights in chunks and pages, faults as one-line errors |
//! | [`qemu`] | start a firmware ELF under qemu: run it to its end, or connect to its UART |
//! | [`defmt_log`] | the firmware's defmt log as text lines |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod defmt_log;
pub mod link;
pub mod qemu;

pub use client::{Device, DeviceError, DeviceSegment, Timeouts};
pub use link::Link;
pub use qemu::{Launch, Machine, Qemu};
