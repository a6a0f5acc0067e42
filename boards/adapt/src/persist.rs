//! What a model learned on the board, kept across resets: its normalisation and its
//! segmenter ([`Adaptable::adapted`]) in two A/B checkpoint slots of NOR flash
//! ([`Checkpoints`]: sequence number, CRC, commit word; a power cut during a save leaves
//! the previous checkpoint loadable, a corrupt slot is skipped).
//!
//! The checkpoint's layout is [`Layout::adapted`] of the model's shape and identity (the
//! CRC of its weight blob): a checkpoint of another shape, or adapted on other weights
//! of the same shape (the board flashed with a retrained model), is never restored; the
//! model then starts from its compiled-in values, and the next save overwrites the
//! older slot.

use crate::model::Adaptable;
use crate::AdaptError;
use embedded_storage::nor_flash::NorFlash;
use hvae::store::checkpoint::{Checkpoints, Layout, Loaded, Saved};
use hvae::Shape;

/// What [`Persist::restore`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Restored {
    /// The model took the values of this checkpoint.
    From(Loaded),
    /// No valid checkpoint of this model (blank flash, corrupt slots, another model's):
    /// the model keeps its compiled-in values.
    None,
}

/// The adapted values of one model (`N` = [`Adaptable::adapted_len`]) in two slots at the
/// start of a flash region.
#[derive(Debug)]
pub struct Persist<F, const N: usize> {
    slots: Checkpoints<F>,
    layout: Layout,
}

impl<F: NorFlash, const N: usize> Persist<F, N> {
    /// Bytes of one slot for a model of `shape`: the record rounded up to whole erase
    /// sectors of `F`. The region given to [`Persist::new`] must hold two.
    pub const fn slot_len(shape: &Shape) -> usize {
        Layout::adapted::<f32>(*shape, 0).slot_len(F::WRITE_SIZE, F::ERASE_SIZE)
    }

    /// Two slots of [`Persist::slot_len`] at offset 0 of `flash` (its whole capacity
    /// belongs to them), for the model of `shape` whose weights are named by `identity`.
    /// Reads nothing. `Length` when `N` is not `2 D` + the segmenter's length;
    /// `Checkpoint(Geometry)` when the flash is too small.
    pub fn new(flash: F, shape: Shape, identity: u32) -> Result<Self, AdaptError> {
        let layout = Layout::adapted::<f32>(shape, identity);
        if layout.params() != N {
            return Err(AdaptError::Length);
        }
        let slot = u32::try_from(Self::slot_len(&shape)).map_err(|_| AdaptError::Length)?;
        let slots = Checkpoints::new(flash, 0, slot).map_err(AdaptError::Checkpoint)?;
        Ok(Persist { slots, layout })
    }

    /// At boot: the newest valid checkpoint of this model into `model`, or
    /// [`Restored::None`] (the model unchanged).
    pub fn restore<M: Adaptable>(&mut self, model: &mut M) -> Result<Restored, AdaptError> {
        let mut values = [0.0f32; N];
        let loaded = self
            .slots
            .load(&self.layout, &mut values, &mut [])
            .map_err(AdaptError::Checkpoint)?;
        let Some(l) = loaded else {
            return Ok(Restored::None);
        };
        model.set_adapted(&values)?;
        Ok(Restored::From(l))
    }

    /// Saves `model`'s adapted values with the count of windows it learned from (kept
    /// as the checkpoint's step counter) into the slot not holding the newest
    /// checkpoint, and reads it back.
    pub fn save<M: Adaptable>(&mut self, model: &M, windows: u32) -> Result<Saved, AdaptError> {
        let mut values = [0.0f32; N];
        model.adapted(&mut values)?;
        self.slots
            .save(&self.layout, &values, &[], 0, windows)
            .map_err(AdaptError::Checkpoint)
    }

    /// The flash driver back.
    pub fn into_inner(self) -> F {
        self.slots.into_inner()
    }
}
