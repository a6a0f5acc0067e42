//! Storage and formats: a model's weights as bytes, and a learning device's state in
//! flash.
//!
//! | module | what it holds |
//! |---|---|
//! | [`blob`] | the versioned weight blob (wire, flash, files) |
//! | [`checkpoint`] | weights, optimiser state and step counts in two slots of NOR flash |
//! | [`record`] | fixed-length byte records of the state a checkpoint keeps beside them |
#![cfg_attr(
    feature = "alloc",
    doc = "| `ram_flash` | [`RamFlash`]: NOR flash in memory for host tests and simulated devices (feature `alloc`) |"
)]

pub mod blob;
pub mod checkpoint;
#[cfg(feature = "alloc")]
mod ram_flash;
pub mod record;

#[cfg(feature = "alloc")]
pub use ram_flash::RamFlash;
