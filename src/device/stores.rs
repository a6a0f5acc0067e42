//! Stores for engines that need no device of their own: [`SlotsOnly`] (no training
//! buffers) and, for host tests and simulated devices, [`HeapStore`] (feature `alloc`).

use super::{Resources, Store};
use crate::store::checkpoint::Checkpoints;
#[cfg(feature = "alloc")]
use crate::store::{checkpoint::CheckpointError, RamFlash};
#[cfg(feature = "alloc")]
use alloc::{vec, vec::Vec};
use core::marker::PhantomData;
use embedded_storage::nor_flash::NorFlash;

/// The store of an engine without training buffers (one that serves, or adapts with
/// online k-means): every request for buffers is refused; the checkpoint slots, when
/// it has them; the memory figures `M` measures.
#[derive(Debug)]
pub struct SlotsOnly<F: NorFlash, M = Unmeasured> {
    /// The checkpoint slots, if any.
    pub checkpoints: Option<Checkpoints<F>>,
    measures: PhantomData<M>,
}

impl<F: NorFlash, M> SlotsOnly<F, M> {
    /// The store with `checkpoints`.
    pub const fn new(checkpoints: Option<Checkpoints<F>>) -> Self {
        SlotsOnly {
            checkpoints,
            measures: PhantomData,
        }
    }
}

impl<F: NorFlash, M: Measures> Store for SlotsOnly<F, M> {
    type Buf = &'static mut [f32];
    type Flash = F;
    fn take(&mut self, _scratch: usize, _optim: usize) -> Option<(Self::Buf, Self::Buf)> {
        None
    }
    fn checkpoints(&mut self) -> Option<&mut Checkpoints<F>> {
        self.checkpoints.as_mut()
    }
    fn resources(&mut self) -> Resources {
        M::resources()
    }
}

/// Where a store's memory figures come from ([`Store::resources`]): a board measures
/// its image, static RAM and peak stack.
pub trait Measures {
    /// The figures now.
    fn resources() -> Resources;
}

/// Nothing measured: every figure 0.
#[derive(Debug)]
pub struct Unmeasured;

impl Measures for Unmeasured {
    fn resources() -> Resources {
        Resources::default()
    }
}

/// Heap buffers of at most `scratch` and `optim` scalars (a device's static sizes), and
/// two checkpoint slots in a [`RamFlash`] of pages of `ERASE` bytes.
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct HeapStore<const ERASE: usize> {
    scratch: usize,
    optim: usize,
    /// The checkpoint slots.
    pub checkpoints: Checkpoints<RamFlash<ERASE>>,
}

#[cfg(feature = "alloc")]
impl<const ERASE: usize> HeapStore<ERASE> {
    /// A store that hands out at most `scratch` scratch and `optim` optimiser scalars,
    /// with two checkpoint slots of `slot` bytes in a blank flash.
    pub fn new(scratch: usize, optim: usize, slot: usize) -> Result<Self, CheckpointError> {
        Ok(HeapStore {
            scratch,
            optim,
            checkpoints: blank_slots(slot)?,
        })
    }
}

/// Two checkpoint slots of `slot` bytes in a blank [`RamFlash`] of pages of `ERASE`
/// bytes (a simulated device's flash).
#[cfg(feature = "alloc")]
pub fn blank_slots<const ERASE: usize>(
    slot: usize,
) -> Result<Checkpoints<RamFlash<ERASE>>, CheckpointError> {
    Checkpoints::new(RamFlash::blank(2 * slot), 0, slot as u32)
}

#[cfg(feature = "alloc")]
impl<const ERASE: usize> Store for HeapStore<ERASE> {
    type Buf = Vec<f32>;
    type Flash = RamFlash<ERASE>;
    fn take(&mut self, scratch: usize, optim: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        (scratch <= self.scratch && optim <= self.optim)
            .then(|| (vec![0.0; scratch], vec![0.0; optim]))
    }
    fn checkpoints(&mut self) -> Option<&mut Checkpoints<RamFlash<ERASE>>> {
        Some(&mut self.checkpoints)
    }
}
