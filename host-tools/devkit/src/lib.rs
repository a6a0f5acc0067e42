//! The host side of hvae's devices, one copy for both host programs: `hvae`
//! (`host-tools`: `device::qemu`'s error messages) and `hvae-firmware-host`
//! (`firmware/host`: `run`, `decode`, the probe).
//!
//! | module | job |
//! |---|---|
//! | [`defmt_log`] | the firmware's defmt log as text lines |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod defmt_log;
