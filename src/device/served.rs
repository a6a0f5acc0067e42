//! What an engine serves: the `f32` [`Model`] (over any [`Params`]: in RAM, trained in
//! place, or in flash slots) or the int8 [`QuantModel`] in flash slots
//! ([`Int8Weights`]). The engine's dispatch is the same for both; [`Served`] says what
//! differs: the answers, the blob format a load takes, and whether there is an `f32`
//! parameter vector to train, read back and checkpoint.

use super::{Params, Slots};
use crate::infer::model::Model;
use crate::infer::quant::{self, QuantModel};
use crate::protocol::answer::Answers;
use crate::protocol::{BlobFormat, F32Blob, Int8Blob};
use crate::shape::Shape;

/// A model an [`Engine`](super::Engine) serves.
pub trait Served {
    /// The blob format `LoadWeights` takes.
    type Blob: BlobFormat;
    /// The `f32` parameters, when the model is the `f32` one (`[f32; 0]` otherwise).
    type Params: Params;
    /// The model's shape.
    fn shape(&self) -> &Shape;
    /// The values the device holds (`Info`'s `params_held`).
    fn held(&self) -> usize;
    /// Workspace values one call needs.
    fn work_len(&self) -> usize;
    /// The `f32` model (trained, read back, checkpointed), or `None`.
    fn f32(&self) -> Option<&Model<f32, Self::Params>>;
    /// The `f32` model, writable, or `None`.
    fn f32_mut(&mut self) -> Option<&mut Model<f32, Self::Params>>;
    /// The flash slots a load fills, when the weights live in flash.
    fn slots(&mut self) -> Option<&mut dyn Slots>;
    /// The model that answers `Segment` and `Encode` requests
    /// ([`crate::protocol::answer`]).
    type Answers: Answers;
    /// [`Served::Answers`].
    fn answers(&self) -> &Self::Answers;
}

impl<P: Params> Served for Model<f32, P> {
    type Blob = F32Blob;
    type Params = P;
    fn shape(&self) -> &Shape {
        Model::shape(self)
    }
    fn held(&self) -> usize {
        self.params().len()
    }
    fn work_len(&self) -> usize {
        Model::work_len(self)
    }
    #[inline(always)]
    fn f32(&self) -> Option<&Model<f32, P>> {
        Some(self)
    }
    #[inline(always)]
    fn f32_mut(&mut self) -> Option<&mut Model<f32, P>> {
        Some(self)
    }
    #[inline(always)]
    fn slots(&mut self) -> Option<&mut dyn Slots> {
        self.storage_mut().slots()
    }
    type Answers = Self;
    #[inline(always)]
    fn answers(&self) -> &Self {
        self
    }
}

/// The int8 weights an engine serves ([`Int8`]): the [`QuantModel`] in use and, when
/// they live in flash, the two slots an int8 blob ([`crate::store::blob::VERSION_INT8`])
/// fills as it arrives. [`Slots::put`] gets the blob's words after the header (the int8
/// weights four to a word, the last one padded with zeros; the `i32` channels; the
/// `f32` reals; each as the blob stores it, little-endian: [`int8_words`] of them), and
/// [`Slots::commit`] forms the new model with [`QuantModel::new`] from the filled slot:
/// when it refuses the values (as the [`ErrorCode`] of its [`QuantError`]), the slot is
/// not sealed and the model in use stays.
///
/// A [`QuantModel`] itself is int8 weights without slots (compiled in: `LoadWeights`
/// is then `Internal`, so such an engine leaves `CAP_LOAD` out).
///
/// [`ErrorCode`]: crate::protocol::ErrorCode
/// [`QuantError`]: crate::infer::quant::QuantError
pub trait Int8Weights {
    /// The int8 weights.
    type W: AsRef<[i8]>;
    /// The `i32` values.
    type I: AsRef<[i32]>;
    /// The `f32` values.
    type F: AsRef<[f32]>;
    /// The model in use.
    fn model(&self) -> &QuantModel<Self::W, Self::I, Self::F>;
    /// The flash slots an int8 blob is loaded into; `None` (the default) for weights
    /// without slots.
    fn slots(&mut self) -> Option<&mut dyn Slots> {
        None
    }
}

impl<W: AsRef<[i8]>, I: AsRef<[i32]>, F: AsRef<[f32]>> Int8Weights for QuantModel<W, I, F> {
    type W = W;
    type I = I;
    type F = F;
    fn model(&self) -> &QuantModel<W, I, F> {
        self
    }
}

/// Words of the int8 blob of `shape` after its header, before its CRC: the weights (four
/// to a word, padded), the ints and the floats (what [`Int8Weights`] slots hold).
pub const fn int8_words(shape: &Shape) -> usize {
    quant::weight_len(shape).div_ceil(4) + quant::int_len(shape) + quant::float_len(shape)
}

/// The int8 model an engine serves, over its [`Int8Weights`].
#[derive(Debug)]
pub struct Int8<T>(pub T);

impl<T: Int8Weights> Served for Int8<T> {
    type Blob = Int8Blob;
    type Params = [f32; 0];
    fn shape(&self) -> &Shape {
        self.0.model().shape()
    }
    fn held(&self) -> usize {
        let m = self.0.model();
        m.weights().len() + m.ints().len() + m.floats().len()
    }
    fn work_len(&self) -> usize {
        self.0.model().work_len()
    }
    fn f32(&self) -> Option<&Model<f32, [f32; 0]>> {
        None
    }
    fn f32_mut(&mut self) -> Option<&mut Model<f32, [f32; 0]>> {
        None
    }
    fn slots(&mut self) -> Option<&mut dyn Slots> {
        self.0.slots()
    }
    type Answers = QuantModel<T::W, T::I, T::F>;
    fn answers(&self) -> &Self::Answers {
        self.0.model()
    }
}
