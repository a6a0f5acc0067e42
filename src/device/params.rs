//! Where an engine's weights live: in RAM, where training changes them in place and a
//! load is staged and then copied over them, or in flash, where a load fills the slot
//! not in use while the other keeps serving (an inference device whose RAM cannot hold
//! the weights).

use crate::protocol::ErrorCode;

/// The parameter vector of an [`Engine`](super::Engine)'s model.
pub trait Params: AsRef<[f32]> {
    /// The parameters, writable, when they live in RAM (the engine trains them, and
    /// copies loaded weights over them); `None` when they live in flash.
    fn writable(&mut self) -> Option<&mut [f32]>;

    /// The flash slots that loaded weights are written into, when the parameters live
    /// in flash; `None` (the default) for parameters in RAM.
    fn slots(&mut self) -> Option<&mut dyn Slots> {
        None
    }
}

/// Two flash slots of weights: the one in use, and the one a `LoadWeights` blob fills
/// as it arrives. The weights in use change only in [`Slots::commit`]; a load that fails
/// before it leaves them as they were (and the next one starts again with
/// [`Slots::begin`]). Loaded weights are in flash once committed: they survive a reset.
pub trait Slots {
    /// Starts a new blob: prepares (erases) the slot not in use.
    fn begin(&mut self) -> Result<(), ErrorCode>;
    /// Stores word `index` of the blob after its header: an `f32` parameter's bits, or a
    /// word of an int8 blob ([`Int8Weights`](super::Int8Weights)); words past the ones
    /// the slot holds (the decoder, for an inference-only device) are not kept.
    fn put(&mut self, index: usize, word: u32) -> Result<(), ErrorCode>;
    /// Seals the filled slot (the whole blob checked out, its CRC `crc`) and switches
    /// the parameters to it.
    fn commit(&mut self, crc: u32) -> Result<(), ErrorCode>;
}

impl Params for &mut [f32] {
    fn writable(&mut self) -> Option<&mut [f32]> {
        Some(self)
    }
}

impl<const N: usize> Params for [f32; N] {
    fn writable(&mut self) -> Option<&mut [f32]> {
        Some(self)
    }
}

#[cfg(feature = "alloc")]
impl Params for alloc::vec::Vec<f32> {
    fn writable(&mut self) -> Option<&mut [f32]> {
        Some(self)
    }
}
