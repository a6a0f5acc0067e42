//! What adapts on the board: the input normalisation and the segmenter of an `f32`
//! [`Model`] or of an int8 [`Int8`], behind one trait, so that the learner and the
//! checkpoints do not know which model runs.

use crate::AdaptError;
use hvae::infer::quant::{float_len, QuantLayout};
use hvae::{Model, ModelError, QuantModel, Segment, Shape};

/// A model whose input normalisation and segmenter can change in place.
pub trait Adaptable {
    /// The model's shape.
    fn shape(&self) -> &Shape;

    /// Segments one raw input (`D` values) with a workspace of [`Shape::work_len`].
    fn segment<'w>(&self, x: &[f32], work: &'w mut [f32]) -> Result<Segment<'w, f32>, AdaptError>;

    /// The input normalisation in use: `offset` and `scale`, `D` values each
    /// (`x_n = (x - offset) * scale`).
    fn normalisation(&self) -> (&[f32], &[f32]);

    /// Sets the input normalisation (`D` finite values each, every scale positive); on
    /// error nothing changes.
    fn set_normalisation(&mut self, offset: &[f32], scale: &[f32]) -> Result<(), AdaptError>;

    /// The segmenter's parameters ([`Shape::segmenter_len`]: `K M` centre values, `ln
    /// kappa_s`, `K` log-weights).
    fn segmenter(&self) -> &[f32];

    /// The segmenter's parameters, to move centres in place.
    fn segmenter_mut(&mut self) -> &mut [f32];

    /// Values [`Adaptable::adapted`] fills: `2 D + segmenter`.
    fn adapted_len(&self) -> usize {
        2 * self.shape().input + self.shape().segmenter_len()
    }

    /// What adaptation changes, in the order of
    /// [`Layout::adapted`](hvae::store::checkpoint::Layout::adapted): offset, scale,
    /// segmenter. `out` must be [`Adaptable::adapted_len`] long.
    fn adapted(&self, out: &mut [f32]) -> Result<(), AdaptError> {
        if out.len() != self.adapted_len() {
            return Err(AdaptError::Length);
        }
        let (offset, scale) = self.normalisation();
        let values = offset.iter().chain(scale).chain(self.segmenter());
        for (o, &v) in out.iter_mut().zip(values) {
            *o = v;
        }
        Ok(())
    }

    /// Puts back what [`Adaptable::adapted`] gave. On error nothing changes.
    fn set_adapted(&mut self, values: &[f32]) -> Result<(), AdaptError> {
        let d = self.shape().input;
        if values.len() != self.adapted_len() {
            return Err(AdaptError::Length);
        }
        if !values.iter().all(|v| v.is_finite()) {
            return Err(AdaptError::NonFinite);
        }
        let (norm, seg) = values.split_at_checked(2 * d).ok_or(AdaptError::Length)?;
        let (offset, scale) = norm.split_at_checked(d).ok_or(AdaptError::Length)?;
        self.set_normalisation(offset, scale)?;
        let dst = self.segmenter_mut();
        if dst.len() != seg.len() {
            return Err(AdaptError::Length);
        }
        copy(dst, seg);
        Ok(())
    }
}

/// `dst <- src` over their common length (the callers checked the lengths; a loop, not
/// `copy_from_slice`, so that no length-mismatch panic is linked in).
pub(crate) fn copy(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s;
    }
}

fn model_error(e: ModelError) -> AdaptError {
    match e {
        ModelError::NonFinite => AdaptError::NonFinite,
        _ => AdaptError::Length,
    }
}

impl<P: AsRef<[f32]> + AsMut<[f32]>> Adaptable for Model<f32, P> {
    fn shape(&self) -> &Shape {
        Model::shape(self)
    }

    fn segment<'w>(&self, x: &[f32], work: &'w mut [f32]) -> Result<Segment<'w, f32>, AdaptError> {
        Model::segment(self, x, work).map_err(AdaptError::Infer)
    }

    fn normalisation(&self) -> (&[f32], &[f32]) {
        let (d, no) = (self.shape().input, self.shape().norm_offset());
        let p = self.params().get(no..no + 2 * d).unwrap_or_default();
        p.split_at_checked(d).unwrap_or_default()
    }

    fn set_normalisation(&mut self, offset: &[f32], scale: &[f32]) -> Result<(), AdaptError> {
        if scale.iter().any(|&s| s <= 0.0) {
            return Err(AdaptError::NonFinite);
        }
        Model::set_normalisation(self, offset, scale).map_err(model_error)
    }

    fn segmenter(&self) -> &[f32] {
        self.segmenter_params()
    }

    fn segmenter_mut(&mut self) -> &mut [f32] {
        let s = *Model::shape(self);
        let (so, l) = (s.segmenter_offset(), s.segmenter_len());
        self.params_mut().get_mut(so..so + l).unwrap_or_default()
    }
}

/// An int8 model ([`QuantModel`]) of `D` inputs whose real values (`F` = [`float_len`] of
/// the shape: normalisation, scales, segmenter) live in RAM, beside its integer weights
/// (borrowed, e.g. from flash).
///
/// The int8 model takes its input normalisation as an offset and a multiplier `r_i =
/// scale_i / s_i`, with `s_i` the input's calibrated activation scale. This type keeps
/// the normalisation's `scale` as the source of truth, so that the values saved and
/// restored are exactly those set, and `r` is derived from them the same way every
/// time. The activation scales are not changed: a tracked normalisation keeps the
/// normalised inputs on the spread the model was calibrated for.
///
/// Each call of [`Adaptable::segment`] wraps the three vectors in a [`QuantModel`], which
/// checks them (about `F` + the weights' and integers' count of comparisons): a value
/// adaptation got wrong is an error, never a wrong answer.
#[derive(Clone, Debug)]
pub struct Int8<W, I, const D: usize, const F: usize> {
    shape: Shape,
    weights: W,
    ints: I,
    floats: [f32; F],
    scale: [f32; D],
    at: QuantLayout,
}

impl<W: AsRef<[i8]>, I: AsRef<[i32]>, const D: usize, const F: usize> Int8<W, I, D, F> {
    /// The int8 model of `shape` over its three vectors (checked as [`QuantModel::new`]
    /// does; `D` must be the shape's input size and `F` its [`float_len`]).
    pub fn new(shape: Shape, weights: W, ints: I, floats: [f32; F]) -> Result<Self, AdaptError> {
        if shape.input != D || float_len(&shape) != F {
            return Err(AdaptError::Length);
        }
        QuantModel::new(shape, weights.as_ref(), ints.as_ref(), &floats[..])
            .map_err(AdaptError::Quant)?;
        let at = QuantLayout::of(&shape);
        let mut scale = [0.0f32; D];
        let r = floats
            .get(at.input_mult..at.input_mult + D)
            .unwrap_or_default();
        let s = floats
            .get(at.act_scales..at.act_scales + D)
            .unwrap_or_default();
        for ((o, &r), &s) in scale.iter_mut().zip(r).zip(s) {
            *o = r * s;
        }
        Ok(Int8 {
            shape,
            weights,
            ints,
            floats,
            scale,
            at,
        })
    }

    /// The real values (in [`QuantLayout`] order).
    pub fn floats(&self) -> &[f32] {
        &self.floats
    }
}

impl<W: AsRef<[i8]>, I: AsRef<[i32]>, const D: usize, const F: usize> Adaptable
    for Int8<W, I, D, F>
{
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn segment<'w>(&self, x: &[f32], work: &'w mut [f32]) -> Result<Segment<'w, f32>, AdaptError> {
        let m = QuantModel::new(
            self.shape,
            self.weights.as_ref(),
            self.ints.as_ref(),
            &self.floats[..],
        )
        .map_err(AdaptError::Quant)?;
        m.segment(x, work).map_err(AdaptError::Infer)
    }

    fn normalisation(&self) -> (&[f32], &[f32]) {
        let at = self.at.offset;
        (self.floats.get(at..at + D).unwrap_or_default(), &self.scale)
    }

    fn set_normalisation(&mut self, offset: &[f32], scale: &[f32]) -> Result<(), AdaptError> {
        if offset.len() != D || scale.len() != D {
            return Err(AdaptError::Length);
        }
        let a = self.at.act_scales;
        let act = self.floats.get(a..a + D).ok_or(AdaptError::Length)?;
        let mut mult = [0.0f32; D];
        for ((m, &sc), &s) in mult.iter_mut().zip(scale).zip(act) {
            *m = sc / s;
        }
        let ok = offset
            .iter()
            .chain(scale)
            .chain(&mult)
            .all(|v| v.is_finite())
            && mult.iter().all(|&m| m > 0.0);
        if !ok {
            return Err(AdaptError::NonFinite);
        }
        let (o, r) = (self.at.offset, self.at.input_mult);
        copy(
            self.floats.get_mut(o..o + D).ok_or(AdaptError::Length)?,
            offset,
        );
        copy(
            self.floats.get_mut(r..r + D).ok_or(AdaptError::Length)?,
            &mult,
        );
        copy(&mut self.scale, scale);
        Ok(())
    }

    fn segmenter(&self) -> &[f32] {
        self.floats.get(self.at.segmenter..).unwrap_or_default()
    }

    fn segmenter_mut(&mut self) -> &mut [f32] {
        self.floats.get_mut(self.at.segmenter..).unwrap_or_default()
    }
}
