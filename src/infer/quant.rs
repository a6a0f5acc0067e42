//! The int8 model: symmetric per-output-channel int8 weights, `i32` accumulators and
//! biases, each hidden layer's output requantised to int8 by a fixed-point multiplier
//! and shift, with no floating point inside the encoder's dense layers.
//!
//! | piece | arithmetic |
//! |---|---|
//! | input | `f32`: `q_i = round(clamp((x_i - o_i) * r_i, -127, 127))` with `r_i = scale_i / s_i` (the normalisation and the feature's quantisation in one multiply) |
//! | hidden layer `l`, ReLU | integer: `acc = b + W q` in `i32`, `q' = clamp(round(acc * m / 2^s), 0, 127)` (the ReLU folded into the clamp; [`requantize`]) |
//! | hidden layer `l`, tanh | integer: the pre-activation `p = clamp(round(acc * m / 2^s), 0, 127)`, its zero at [`TANH_ZERO`] (folded into the bias), then `q' = T_l[p]`, the layer's table of 128 values ([`TABLE_LEN`]) |
//! | direction head | integer `acc = b + Wmu q`, then `f32`: `m_j = acc_j * s_w,j`, `mu = m / ‖m‖` |
//! | concentration head | `f32`: `kappa = softplus(sum_i (w_i s_L,i) q_i + b) + 1` |
//!
//! Every activation (each input feature, each hidden unit) has its own scale `s_i`,
//! folded into the weights that read it ([`quantize`]), so a weight row's scale `s_w,j`
//! is also its accumulator's.
//! | segmenter | `f32`, the same code as the `f32` model's |
//!
//! The parameters are three flat vectors, borrowed or owned (`&[i8]`, `Vec<i8>`,
//! `[i8; N]`, ...), in this order ([`QuantLayout`]):
//!
//! - **weights** (`i8`, [`weight_len`]): each hidden layer's `h_l x h_{l-1}` weights, then
//!   the direction head's `M x h_L`, row-major; in a tanh model then each hidden layer's
//!   table `T_l` ([`TABLE_LEN`] values, indexed by the pre-activation);
//!   every value in `-127..=127`;
//! - **ints** (`i32`, [`int_len`]): each hidden layer's channels `[bias, multiplier,
//!   shift]` ([`Channel`]), then the direction head's `M` biases;
//! - **floats** (`f32`, [`float_len`]): input offset (`D`), input multiplier `r` (`D`),
//!   each hidden channel's weight scale `s_w` (`sum h`), the activation scales (`D + sum
//!   h`; these two for inspection and re-quantisation), the direction head's output
//!   scales `s_w,j` (`M`), the concentration head's weights times their inputs' scales
//!   (`h_L`) and bias (1), the segmenter as in the `f32` model
//!   ([`Shape::segmenter_len`]).
//!
//! [`quantize`] makes them from an `f32` [`Model`] and a [`Calibration`]; the int8 blob
//! ([`crate::store::blob::write_int8`]) stores them. [`QuantModel::encode`] and
//! [`QuantModel::segment`] return the `f32` model's [`Encoding`] and [`Segment`] and
//! take the same workspace (any `f32` slice of at least [`QuantModel::work_len`] values,
//! which [`Shape::work_len`] always is), so a program switches models in one line.
//! A tanh layer's units share one scale for their pre-activation and one for their
//! output (a table per layer: per unit it would be 128 bytes each); a ReLU layer's have
//! one each.
//!
//! The calibration rule (max) and the fidelity measured are in docs/design.md and
//! docs/benchmarks.md.

use crate::infer::model::{
    finish_segment, kappa_of, normalise_direction, segmenter_logits, Encoding, InferError, Model,
    Segment,
};
use crate::infer::views::{carve, carve_ref};
use crate::kernels::{self, portable::Channel};
use crate::shape::{Activation, Shape, ShapeError, MAX_HIDDEN};

pub use crate::kernels::portable::requantize;

/// Largest magnitude of a stored int8 weight or activation (symmetric: `-128` is never
/// used).
pub const QMAX: i32 = 127;

/// Largest magnitude of a quantised bias: with at most [`MAX_FAN_IN`] inputs the
/// accumulator stays inside `i32` (`2^30 + 2^16 * 127^2 < 2^31`).
pub const MAX_BIAS: i32 = 1 << 30;

/// Most inputs of an int8 layer (see [`MAX_BIAS`]).
pub const MAX_FAN_IN: usize = 1 << 16;

/// Values of a tanh layer's table: one per pre-activation `0..=127`.
///
/// A tanh layer's accumulator is requantised as a ReLU layer's is (the same kernel and
/// clamp to `0..=127`), with its zero moved to [`TANH_ZERO`] by the bias, so the
/// pre-activation has 7 bits and no kernel needs a second form.
pub const TABLE_LEN: usize = 128;

/// Where a tanh layer's pre-activation of 0 sits on its grid (`-64 ..= 63` steps).
pub const TANH_ZERO: i32 = 64;

/// The largest pre-activation a tanh layer's table resolves: `tanh(4)` is within
/// `1 / 1400` of 1, less than half of the output's step, so beyond it every value
/// is the table's end.
pub const TANH_RANGE: f64 = 4.0;

/// Why int8 parameters cannot form a model, or a model cannot be quantised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum QuantError {
    /// The shape is invalid.
    #[error("invalid shape: {0}")]
    Shape(#[from] ShapeError),
    /// A parameter vector's length disagrees with the shape ([`weight_len`],
    /// [`int_len`], [`float_len`]), or a layer has more than [`MAX_FAN_IN`] inputs.
    #[error("int8 parameter vector has the wrong length")]
    Length,
    /// A weight is `-128` (outside the symmetric range).
    #[error("int8 weight {index} is -128")]
    WeightRange {
        /// Index in the weight vector.
        index: u32,
    },
    /// A channel's multiplier is negative, its shift outside `1..=62` or its bias
    /// larger than [`MAX_BIAS`] in magnitude.
    #[error("int8 channel value {index} is out of range")]
    Channel {
        /// Index in the int vector.
        index: u32,
    },
    /// A real parameter is NaN or infinite, or a scale is not positive.
    #[error("int8 model real {index} is not finite or not positive")]
    NonFinite {
        /// Index in the float vector.
        index: u32,
    },
    /// [`quantize`]: the calibration saw no sample.
    #[error("calibration saw no sample")]
    NotCalibrated,
    /// [`quantize`]: a value does not fit its integer (a multiplier of `2^30` or more, a
    /// bias beyond [`MAX_BIAS`]).
    #[error("a quantised value does not fit its integer")]
    Range,
}

/// `i8` weights of the int8 form of `shape`: `sum_l h_l h_{l-1} + M h_L`, and in a tanh
/// model [`TABLE_LEN`] more per hidden layer.
pub const fn weight_len(shape: &Shape) -> usize {
    shape.encoder_macs() + table_len(shape)
}

/// The tanh layers' tables in the weight vector: [`TABLE_LEN`] per hidden layer of a
/// tanh model, none in a ReLU model.
pub const fn table_len(shape: &Shape) -> usize {
    let tanh = matches!(shape.activation, Activation::Tanh) as usize;
    tanh * TABLE_LEN * shape.depth()
}

/// `i32` values of the int8 form of `shape`: `3 sum h + M`.
pub const fn int_len(shape: &Shape) -> usize {
    3 * shape.hidden_sum() + shape.latent
}

/// `f32` values of the int8 form of `shape`:
/// `3 D + 2 sum h + M + h_L + 1 + segmenter`.
pub const fn float_len(shape: &Shape) -> usize {
    3 * shape.input
        + 2 * shape.hidden_sum()
        + shape.latent
        + shape.last_hidden()
        + 1
        + shape.segmenter_len()
}

/// `f32` values of workspace an int8 model of `shape` needs per call
/// ([`QuantModel::work_len`]): `M + 2 K + ceil((D + sum h) / 4)`.
pub const fn work_len(shape: &Shape) -> usize {
    shape.latent + 2 * shape.clusters + (shape.input + shape.hidden_sum()).div_ceil(4)
}

/// Where the pieces of the float vector start (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantLayout {
    /// Input offset `o` (`D`).
    pub offset: usize,
    /// Input multiplier `r` (`D`).
    pub input_mult: usize,
    /// Hidden channels' weight scales (`sum h`).
    pub weight_scales: usize,
    /// Activation scales, one per input feature and per hidden unit (`D + sum h`).
    pub act_scales: usize,
    /// Direction head's output scales (`M`).
    pub mu_scales: usize,
    /// Concentration head's weights (`h_L`), then its bias.
    pub kappa: usize,
    /// The segmenter ([`Shape::segmenter_len`]).
    pub segmenter: usize,
    /// End of the float vector ([`float_len`]).
    pub end: usize,
}

impl QuantLayout {
    /// The layout of `shape`'s float vector.
    pub const fn of(s: &Shape) -> QuantLayout {
        let offset = 0;
        let input_mult = offset + s.input;
        let weight_scales = input_mult + s.input;
        let act_scales = weight_scales + s.hidden_sum();
        let mu_scales = act_scales + s.input + s.hidden_sum();
        let kappa = mu_scales + s.latent;
        let segmenter = kappa + s.last_hidden() + 1;
        QuantLayout {
            offset,
            input_mult,
            weight_scales,
            act_scales,
            mu_scales,
            kappa,
            segmenter,
            end: segmenter + s.segmenter_len(),
        }
    }
}

/// An int8 H-VAE encoder and its (`f32`) segmenter, over three parameter vectors
/// (see the [module docs](self)): borrowed slices (`&[i8]`, ...), arrays or `Vec`s.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantModel<W, I, F> {
    shape: Shape,
    weights: W,
    ints: I,
    floats: F,
    at: QuantLayout,
}

/// The int8 layers' views of a [`QuantModel`]'s vectors.
struct Views<'a> {
    /// Hidden layers: weights and channels.
    layers: [(&'a [i8], &'a [Channel]); MAX_HIDDEN],
    /// The direction head's weights; in a tanh model the layers' tables follow them
    /// (the kernel reads its `M` rows and no further).
    mu_w: &'a [i8],
    mu_b: &'a [i32],
    offset: &'a [f32],
    input_mult: &'a [f32],
    mu_scales: &'a [f32],
    kappa_w: &'a [f32],
    kappa_b: f32,
    seg: &'a [f32],
}

impl<W: AsRef<[i8]>, I: AsRef<[i32]>, F: AsRef<[f32]>> QuantModel<W, I, F> {
    /// Wraps the three parameter vectors; checks the shape, their lengths
    /// ([`weight_len`], [`int_len`], [`float_len`]), every weight in `-127..=127`,
    /// every multiplier `>= 0`, shift in `1..=62` and bias within [`MAX_BIAS`], every
    /// real finite and every scale positive.
    pub fn new(shape: Shape, weights: W, ints: I, floats: F) -> Result<Self, QuantError> {
        shape.validate()?;
        let (w, n, f) = (weights.as_ref(), ints.as_ref(), floats.as_ref());
        if w.len() != weight_len(&shape)
            || n.len() != int_len(&shape)
            || f.len() != float_len(&shape)
            || (0..shape.depth()).any(|l| shape.encoder_layer(l).1 > MAX_FAN_IN)
            || shape.last_hidden() > MAX_FAN_IN
        {
            return Err(QuantError::Length);
        }
        check_values(
            &shape,
            w.iter().copied(),
            n.iter().copied(),
            f.iter().copied(),
        )?;
        let at = QuantLayout::of(&shape);
        Ok(QuantModel {
            shape,
            weights,
            ints,
            floats,
            at,
        })
    }

    /// The model's shape (the `f32` model's it was quantised from).
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The int8 weights.
    pub fn weights(&self) -> &[i8] {
        self.weights.as_ref()
    }

    /// The `i32` values (channels, direction biases).
    pub fn ints(&self) -> &[i32] {
        self.ints.as_ref()
    }

    /// The `f32` values.
    pub fn floats(&self) -> &[f32] {
        self.floats.as_ref()
    }

    /// Where the pieces of [`QuantModel::floats`] start.
    pub fn layout(&self) -> &QuantLayout {
        &self.at
    }

    /// The activation scales: one per input feature, then one per hidden unit.
    pub fn activation_scales(&self) -> &[f32] {
        self.floats()
            .get(self.at.act_scales..self.at.mu_scales)
            .unwrap_or_default()
    }

    /// The segmenter's parameters, laid out as in the `f32` model.
    pub fn segmenter_params(&self) -> &[f32] {
        self.floats().get(self.at.segmenter..).unwrap_or_default()
    }

    /// `f32` values of workspace one call needs: `M + 2 K` values and
    /// `ceil((D + sum h) / 4)` more for the int8 activations. At most
    /// [`Shape::work_len`], so an `f32` model's workspace serves.
    pub fn work_len(&self) -> usize {
        work_len(&self.shape)
    }

    /// The parameters by piece (lengths checked by [`QuantModel::new`]).
    fn views(&self) -> Views<'_> {
        let s = &self.shape;
        let (mut w, f) = (self.weights(), self.floats());
        let (ch, _) = self.ints().as_chunks::<3>();
        let mut ch = ch;
        let mut layers = [(&[][..], &[][..]); MAX_HIDDEN];
        for (l, e) in layers.iter_mut().enumerate().take(s.depth()) {
            let (o, i) = s.encoder_layer(l);
            *e = (carve_ref(&mut w, o * i), carve_ref(&mut ch, o));
        }
        let at = &self.at;
        let part = |a: usize, b: usize| f.get(a..b).unwrap_or_default();
        let kappa = part(at.kappa, at.segmenter);
        let (kappa_b, kappa_w) = kappa.split_last().unwrap_or((&0.0, &[]));
        Views {
            layers,
            mu_w: w,
            mu_b: self.ints().get(3 * s.hidden_sum()..).unwrap_or_default(),
            offset: part(at.offset, at.input_mult),
            input_mult: part(at.input_mult, at.weight_scales),
            mu_scales: part(at.mu_scales, at.kappa),
            kappa_w,
            kappa_b: *kappa_b,
            seg: part(at.segmenter, at.end),
        }
    }

    /// Encodes `x` (`D` raw values, as the `f32` model takes them) into the mean
    /// direction and concentration. `work`: at least [`QuantModel::work_len`] values.
    pub fn encode<'w>(
        &self,
        x: &[f32],
        work: &'w mut [f32],
    ) -> Result<Encoding<'w, f32>, InferError> {
        let v = self.views();
        let (mu, _, _, pre) = self.encode_into(&v, x, work)?;
        let (kappa, _) = kappa_of(pre)?;
        Ok(Encoding { mu, kappa })
    }

    /// Encodes `x` and applies the segmenter to its mean direction (the `f32` model's
    /// segmenter, on the int8 encoder's `mu`).
    pub fn segment<'w>(
        &self,
        x: &[f32],
        work: &'w mut [f32],
    ) -> Result<Segment<'w, f32>, InferError> {
        let v = self.views();
        let (mu, logp, p, pre) = self.encode_into(&v, x, work)?;
        let (kappa, _) = kappa_of(pre)?;
        let (m, k) = (self.shape.latent, self.shape.clusters);
        let cosine = segmenter_logits(v.seg, m, k, mu, logp);
        finish_segment(cosine, logp, p, mu, kappa)
    }

    /// The label and the cosine to the nearest centre of `x` (its novelty is `1 -
    /// cosine`): [`QuantModel::segment`]'s `label` and `cosine`, the same values and
    /// errors, without the probabilities and the concentration (the softmax's and the
    /// softplus's exponentials and logarithm are a large share of a segment call on a
    /// device; the concentration's pre-activation is still checked, as `segment` does).
    pub fn label(&self, x: &[f32], work: &mut [f32]) -> Result<(usize, f32), InferError> {
        let v = self.views();
        let (mu, logp, _, pre) = self.encode_into(&v, x, work)?;
        if !pre.is_finite() {
            return Err(InferError::NonFinite);
        }
        let (m, k) = (self.shape.latent, self.shape.clusters);
        let cosine = segmenter_logits(v.seg, m, k, mu, logp)?;
        // The largest logit, the first on exact ties (as the softmax picks it).
        let mut best = (0, logp.first().copied().unwrap_or(0.0));
        for (i, &a) in logp.iter().enumerate() {
            if a > best.1 {
                best = (i, a);
            }
        }
        Ok((best.0, cosine))
    }

    /// The int8 encoder: returns `mu`, the logits' and probabilities' regions and the
    /// concentration's pre-activation (`kappa` is [`kappa_of`] it).
    #[allow(clippy::type_complexity)]
    fn encode_into<'w>(
        &self,
        v: &Views<'_>,
        x: &[f32],
        work: &'w mut [f32],
    ) -> Result<(&'w mut [f32], &'w mut [f32], &'w mut [f32], f32), InferError> {
        let s = &self.shape;
        if x.len() != s.input {
            return Err(InferError::InputLength);
        }
        if work.len() < self.work_len() {
            return Err(InferError::BufferLength);
        }
        let mut rest = work;
        let mu = carve(&mut rest, s.latent);
        let logp = carve(&mut rest, s.clusters);
        let p = carve(&mut rest, s.clusters);
        let mut scratch = kernels::scratch_i8(rest);
        let xq = carve(&mut scratch, s.input);
        quantize_input(x, v.offset, v.input_mult, xq)?;
        let mut input: &[i8] = xq;
        for (l, &(w, ch)) in v.layers.iter().enumerate().take(s.depth()) {
            let out = carve(&mut scratch, s.hidden(l));
            // ReLU: the clamp at 0. Tanh: the same clamp of the pre-activation (its zero
            // at TANH_ZERO), then the layer's table, after the direction head's weights.
            kernels::dense_i8(w, input, ch, out, 0);
            if s.activation == Activation::Tanh {
                let at = s.latent * s.last_hidden() + l * TABLE_LEN;
                if let Some(table) = v.mu_w.get(at..).and_then(|t| t.first_chunk::<TABLE_LEN>()) {
                    for q in out.iter_mut() {
                        // `q` is in 0..=127: the mask is the index itself.
                        *q = table[usize::from(*q as u8) & (TABLE_LEN - 1)];
                    }
                }
            }
            input = out;
        }
        kernels::dense_i8_dequant(v.mu_w, input, v.mu_b, v.mu_scales, mu);
        normalise_direction(mu)?;
        let mut pre = 0.0f32;
        for (&w, &h) in v.kappa_w.iter().zip(input) {
            pre += w * f32::from(h);
        }
        Ok((mu, logp, p, pre + v.kappa_b))
    }
}

/// The value checks of [`QuantModel::new`] over the three vectors in order (their
/// lengths are checked separately): every weight in `-127..=127`, every channel's
/// multiplier `>= 0`, shift in `1..=62` and bias within [`MAX_BIAS`], every real finite
/// and every scale positive. The int8 blob's reader runs the same checks on the bytes
/// before it copies anything out.
pub(crate) fn check_values(
    shape: &Shape,
    weights: impl Iterator<Item = i8>,
    ints: impl Iterator<Item = i32>,
    floats: impl Iterator<Item = f32>,
) -> Result<(), QuantError> {
    let mut weights = weights;
    if let Some(i) = weights.position(|v| v == i8::MIN) {
        return Err(QuantError::WeightRange { index: index(i) });
    }
    let channels = 3 * shape.hidden_sum();
    let bias = |b: &i32| (-MAX_BIAS..=MAX_BIAS).contains(b);
    let mut ints = ints.enumerate();
    let bad_int = ints.find(|&(i, v)| match (i < channels, i % 3) {
        (true, 1) => v < 0,
        (true, 2) => !(1..=62).contains(&v),
        _ => !bias(&v),
    });
    if let Some((i, _)) = bad_int {
        let start = if i < channels { i - i % 3 } else { i };
        return Err(QuantError::Channel {
            index: index(start),
        });
    }
    // Scales must be positive as well as finite (the input multiplier may be any finite
    // value: a zero normalisation scale is a constant feature).
    let at = QuantLayout::of(shape);
    let positive = at.weight_scales..at.kappa;
    let mut floats = floats.enumerate();
    let bad = floats.find(|(i, v)| !v.is_finite() || (positive.contains(i) && *v <= 0.0));
    if let Some((i, _)) = bad {
        return Err(QuantError::NonFinite { index: index(i) });
    }
    Ok(())
}

/// `q_i = round(clamp((x_i - o_i) r_i, -127, 127))` (`roundf`: halves away from zero);
/// a NaN or infinite `x_i` is [`InferError::NonFiniteInput`], a finite one whose
/// product is not finite [`InferError::NonFinite`] (the first such feature's error).
///
/// With a hardware FPU: no test per feature, one sum `probe += v * 0` (zero while every
/// `v` is finite, NaN after one that is not) checked after the loop, which on error runs
/// [`quantize_input_checked`] for the error; the rounding and the clamp in integers
/// ([`round_clamp_i8`]). In soft float (Arm without a hard-float ABI: the Cortex-M0)
/// every float operation is a call, so [`quantize_input_checked`] serves (its finite
/// test and its rounding, [`round_clamp_i8_bits`], on the value's bits). The same values
/// either way (docs/device.md).
fn quantize_input(x: &[f32], offset: &[f32], mult: &[f32], q: &mut [i8]) -> Result<(), InferError> {
    if cfg!(all(target_arch = "arm", not(target_abi = "eabihf"))) {
        return quantize_input_checked(x, offset, mult, q);
    }
    let mut probe = 0.0f32;
    for (((qi, &xi), &o), &r) in q.iter_mut().zip(x).zip(offset).zip(mult) {
        let v = (xi - o) * r;
        probe += v * 0.0;
        *qi = round_clamp_i8(v);
    }
    if probe == 0.0 {
        return Ok(());
    }
    quantize_input_checked(x, offset, mult, q)
}

/// [`quantize_input`] with a test of each feature (the first non-finite one's error).
fn quantize_input_checked(
    x: &[f32],
    offset: &[f32],
    mult: &[f32],
    q: &mut [i8],
) -> Result<(), InferError> {
    for (((qi, &xi), &o), &r) in q.iter_mut().zip(x).zip(offset).zip(mult) {
        let v = (xi - o) * r;
        // `v.is_finite()` on the bits (in soft float a comparison is a call).
        if v.to_bits() & 0x7FFF_FFFF >= 0x7F80_0000 {
            return Err(if xi.is_finite() {
                InferError::NonFinite
            } else {
                InferError::NonFiniteInput
            });
        }
        *qi = round_clamp_i8_bits(v);
    }
    Ok(())
}

/// `roundf(clamp(v, -127, 127)) as i8` for a finite `v`, in integers after one
/// conversion: `t = trunc(2 v)` (exact below `2^31`, saturating above), then
/// `sign(t) min((|t| + 1) >> 1, 127)`: `floor(|v| + 1/2) = floor((floor(2 |v|) + 1) / 2)`,
/// so this is `roundf`'s half away from zero; beyond `±127` the clamp (`roundf` and the
/// clamp commute there, `±127` being integers).
#[inline(always)]
fn round_clamp_i8(v: f32) -> i8 {
    let t = (v * 2.0) as i32;
    let s = t >> 31;
    let a = (t ^ s).wrapping_sub(s) as u32;
    // At most 2^30: non-negative as `i32` (`usat` on Arm).
    let m = ((a.wrapping_add(1) >> 1) as i32).clamp(0, QMAX);
    ((m ^ s) - s) as i8
}

/// [`round_clamp_i8`] from the bits of `v` (finite), with no float operation: the
/// soft-float targets' path (each float operation is a call there). For `|v|` in
/// `[0.5, 128)` (exponent field `e` in `126..=133`), `|v| = m 2^(e - 150)` with the
/// 24-bit significand `m`, so `floor(2 |v|) = m >> (149 - e)`, then `(t + 1) >> 1`
/// clamped to 127 and the sign; below 0.5 it is 0, from 128 on 127.
#[inline(always)]
fn round_clamp_i8_bits(v: f32) -> i8 {
    let b = v.to_bits();
    let e = (b >> 23) & 0xFF;
    let mag = if e < 126 {
        0
    } else if e >= 134 {
        QMAX
    } else {
        let t = ((b & 0x7F_FFFF) | 0x80_0000) >> (149 - e);
        (((t + 1) >> 1) as i32).min(QMAX)
    };
    (if b >> 31 != 0 { -mag } else { mag }) as i8
}

/// An index as `u32` for an error.
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Values of a [`Calibration`]'s storage for `shape`: one range per input feature and
/// per hidden unit, `D + sum h`.
pub const fn calibration_len(shape: &Shape) -> usize {
    shape.input + shape.hidden_sum()
}

/// The activation ranges of an `f32` model over data, for [`quantize`]: the largest
/// magnitude of each normalised input feature and of each hidden unit's output, in a
/// caller's storage of [`calibration_len`] values (`[f32; N]` on a device, `Vec` on the
/// host).
///
/// The rule is the maximum over the calibration data (scale = max / 127); why max and
/// not a percentile or the MSE-optimal clip is in docs/design.md.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration<S> {
    /// Largest `|x_n,i|` per feature, then each hidden unit's largest output, layer
    /// after layer.
    max: S,
    /// The model's shape.
    shape: Shape,
    /// Samples observed.
    samples: usize,
}

impl<S: AsRef<[f32]> + AsMut<[f32]>> Calibration<S> {
    /// No sample seen; `storage` ([`calibration_len`] values, overwritten) holds the
    /// ranges. [`QuantError::Length`] for storage of another length.
    pub fn new(shape: &Shape, mut storage: S) -> Result<Self, QuantError> {
        if storage.as_ref().len() != calibration_len(shape) {
            return Err(QuantError::Length);
        }
        storage.as_mut().fill(0.0);
        Ok(Calibration {
            max: storage,
            shape: *shape,
            samples: 0,
        })
    }

    /// Runs `model`'s encoder on `x` (workspace `work`, [`Shape::work_len`] values)
    /// and takes its activations into the ranges. A sample the encoder rejects is not
    /// counted (its error is returned); a model of another shape is
    /// [`InferError::BufferLength`].
    pub fn observe<M: AsRef<[f32]>>(
        &mut self,
        model: &Model<f32, M>,
        x: &[f32],
        work: &mut [f32],
    ) -> Result<(), InferError> {
        if *model.shape() != self.shape {
            return Err(InferError::BufferLength);
        }
        let (xn, enc) = model.encode_activations(x, work)?;
        // The storage's order is the workspace's: the input, then the hidden layers.
        for (m, v) in self.max.as_mut().iter_mut().zip(xn.iter().chain(enc)) {
            *m = m.max(v.abs());
        }
        self.samples += 1;
        Ok(())
    }

    /// Samples observed.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The ranges: per input feature, then per hidden unit.
    pub fn maxima(&self) -> &[f32] {
        self.max.as_ref()
    }

    /// Raises every range to at least `floor` times the largest range of its activation
    /// (the input, or its hidden layer): `0` keeps one scale per feature and unit, `1`
    /// gives one scale per activation (per tensor). In between, a feature or unit of a
    /// small range keeps a finer grid than the tensor's without letting a rare one
    /// coarsen the weights that read it. `hvae export` picks the floor (docs/design.md).
    pub fn floor_ranges(&mut self, floor: f32) {
        let s = self.shape;
        let mut rest = self.max.as_mut();
        let widths = core::iter::once(s.input).chain((0..s.depth()).map(|l| s.hidden(l)));
        for w in widths {
            let part = carve(&mut rest, w);
            let top = part.iter().fold(0.0f32, |a, &v| a.max(v));
            for v in part.iter_mut() {
                *v = v.max(floor * top);
            }
        }
    }
}

/// The scale of a range: `max / 127`, `1` for a range of zero (a feature that is
/// constant at 0 or a unit that never fired; its value is 0 either way).
fn range_scale(max: f32) -> f32 {
    if max > 0.0 {
        max / QMAX as f32
    } else {
        1.0
    }
}

/// The fixed-point form of a positive real multiplier: `(m, s)` with
/// `real ≈ m / 2^s`, `m` in `[2^30, 2^31)` (31 significant bits) and `s` in `1..=62`
/// (for a real below `2^-32` the multiplier gives up low bits to keep `s <= 62`).
/// `None` for a real that is not finite and positive or is `2^30` or more.
pub fn quantize_multiplier(real: f64) -> Option<(i32, u32)> {
    if !(real.is_finite() && real > 0.0) {
        return None;
    }
    let (f, e) = libm::frexp(real); // real = f 2^e, f in [0.5, 1)
    let mut m = libm::round(f * (1u64 << 31) as f64) as i64; // in [2^30, 2^31]
    let mut s = 31 - e;
    if m == 1 << 31 {
        m >>= 1;
        s -= 1;
    }
    if s > 62 {
        let drop = s - 62;
        m = if drop >= 63 {
            0
        } else {
            (m + (1 << (drop - 1))) >> drop
        };
        s = 62;
    }
    if s < 1 {
        return None;
    }
    Some((i32::try_from(m).ok()?, u32::try_from(s).ok()?))
}

/// The int8 form of an `f32` ReLU model with the activation ranges of `cal`, into
/// `weights`, `ints` and `floats` ([`weight_len`], [`int_len`], [`float_len`]
/// long). Nothing is written on error.
///
/// Every activation has its own scale, one per input feature and per hidden unit
/// (`s_i = max_i / 127`), folded into the weights that read it: a layer's real weights
/// are `W~_ji = W_ji s_in,i`. Per output channel `j`: `s_w,j = max_i |W~_ji| / 127`
/// (`1/127` for a row of zeros), `W_q = round(W~ / s_w,j)`, `b_q = round(b_j / s_w,j)`,
/// so the accumulator's scale is `s_w,j`, and `(m, s) =`
/// [`quantize_multiplier`]`(s_w,j / s_out,j)`. The input multiplier is
/// `r_i = scale_i / s_in,i`, the direction head's output scale `s_w,j`, the
/// concentration head's weights `w_i s_L,i`. Roundings are to nearest, halves away from
/// zero, computed in `f64` from the `f32` values (each scale is stored as `f32` and
/// everything derived from it is derived from the stored value).
pub fn quantize<S: AsRef<[f32]>, C: AsRef<[f32]> + AsMut<[f32]>>(
    model: &Model<f32, S>,
    cal: &Calibration<C>,
    weights: &mut [i8],
    ints: &mut [i32],
    floats: &mut [f32],
) -> Result<(), QuantError> {
    let s = *model.shape();
    s.validate()?;
    if cal.samples == 0 {
        return Err(QuantError::NotCalibrated);
    }
    let maxima = cal.maxima();
    if weights.len() != weight_len(&s)
        || ints.len() != int_len(&s)
        || floats.len() != float_len(&s)
        || maxima.len() != calibration_len(&s)
    {
        return Err(QuantError::Length);
    }
    use crate::shape::TensorId as Id;
    let t = |id| model.tensor(id).ok_or(QuantError::Length);
    let at = QuantLayout::of(&s);
    // Two passes over the same computation: the first only checks, the second writes,
    // so that nothing is written on error.
    for write in [false, true] {
        let (mut wq, mut iq) = (&mut *weights, &mut *ints);
        let mut fl = FloatWriter {
            out: &mut *floats,
            write,
            bad: false,
        };
        let mut ranges = maxima;
        let inputs = carve_ref(&mut ranges, s.input);
        fl.put_all(inputs.iter().map(|&m| range_scale(m)), at.act_scales);
        let mut act_at = at.act_scales + s.input;
        // The tanh layers' tables at the end of the weights.
        let body = wq.len().saturating_sub(table_len(&s));
        let (body, mut tables) = wq.split_at_mut(body);
        wq = body;
        // Input: offset, multiplier r_i = scale_i / s_in,i.
        fl.put_all(t(Id::NormOffset)?.iter().copied(), at.offset);
        let r = t(Id::NormScale)?
            .iter()
            .zip(inputs)
            .map(|(&c, &m)| c / range_scale(m));
        fl.put_all(r, at.input_mult);
        let mut s_in = Ranges::Units(inputs);
        let mut ws_at = at.weight_scales;
        for l in 0..s.depth() {
            let (o, i) = s.encoder_layer(l);
            if i > MAX_FAN_IN {
                return Err(QuantError::Length);
            }
            let id = u8::try_from(l).map_err(|_| QuantError::Length)?;
            let (w, b) = (t(Id::EncoderWeight(id))?, t(Id::EncoderBias(id))?);
            let units = carve_ref(&mut ranges, o);
            // What the accumulator is requantised to: each unit's output (ReLU), or the
            // layer's pre-activation, which its table turns into the output (tanh).
            let (s_out, pre) = match s.activation {
                Activation::Relu => (Ranges::Units(units), None),
                Activation::Tanh => {
                    let t = TanhTable::of(units);
                    (Ranges::Layer(t.out_range, o), Some(t))
                }
            };
            fl.put_all(s_out.iter().map(range_scale), act_at);
            act_at += o;
            if let Some(t) = pre {
                let table = carve(&mut tables, TABLE_LEN);
                if write {
                    t.fill(table);
                }
            }
            let wl = carve(&mut wq, o * i);
            let il = carve(&mut iq, 3 * o);
            for ((((row, &bj), wrow), ch), mo) in w
                .chunks_exact(i)
                .zip(b)
                .zip(wl.chunks_exact_mut(i))
                .zip(il.chunks_exact_mut(3))
                .zip(s_out.iter())
            {
                let sw = row_scale(row, s_in);
                // A tanh pre-activation's zero at TANH_ZERO steps of its grid.
                let zero = pre.map_or(0.0, |t| f64::from(TANH_ZERO) * t.pre_scale);
                let bq = quantize_bias(f64::from(bj) + zero, f64::from(sw))?;
                let target = pre.map_or(f64::from(range_scale(mo)), |t| t.pre_scale);
                let (m, sh) =
                    quantize_multiplier(f64::from(sw) / target).ok_or(QuantError::Range)?;
                if write {
                    quantize_row(row, s_in, sw, wrow);
                    for (c, v) in ch.iter_mut().zip([bq, m, sh as i32]) {
                        *c = v;
                    }
                }
                fl.put(sw, ws_at);
                ws_at += 1;
            }
            s_in = s_out;
        }
        // Direction head: int8 weights, i32 biases, f32 output scales.
        let h = s.last_hidden();
        let (w, b) = (t(Id::MuWeight)?, t(Id::MuBias)?);
        let wl = carve(&mut wq, s.latent * h);
        for (j, ((row, &bj), wrow)) in w
            .chunks_exact(h)
            .zip(b)
            .zip(wl.chunks_exact_mut(h))
            .enumerate()
        {
            let sw = row_scale(row, s_in);
            let bq = quantize_bias(f64::from(bj), f64::from(sw))?;
            if write {
                quantize_row(row, s_in, sw, wrow);
                if let Some(v) = iq.get_mut(j) {
                    *v = bq;
                }
            }
            fl.put(sw, at.mu_scales + j);
        }
        // Concentration head, on the dequantised last layer: weights times its scales.
        let kw = t(Id::KappaWeight)?
            .iter()
            .zip(s_in.iter())
            .map(|(&w, m)| w * range_scale(m));
        fl.put_all(kw, at.kappa);
        fl.put_all(t(Id::KappaBias)?.iter().copied(), at.kappa + h);
        fl.put_all(model.segmenter_params().iter().copied(), at.segmenter);
        if !fl.ok() {
            return Err(QuantError::Range);
        }
    }
    Ok(())
}

/// The ranges of a layer's inputs: one per unit, or one for all (the units of a tanh
/// layer).
#[derive(Clone, Copy)]
enum Ranges<'a> {
    /// One per unit.
    Units(&'a [f32]),
    /// The one range of all `n` units.
    Layer(f32, usize),
}

impl<'a> Ranges<'a> {
    fn iter(self) -> impl Iterator<Item = f32> + 'a {
        let (units, layer) = match self {
            Ranges::Units(u) => (u, (0.0, 0)),
            Ranges::Layer(r, n) => (&[][..], (r, n)),
        };
        units
            .iter()
            .copied()
            .chain(core::iter::repeat_n(layer.0, layer.1))
    }
}

/// A tanh layer's int8 form: its pre-activation on a grid of `pre_scale` (the largest
/// the calibration saw, at most [`TANH_RANGE`], at 63 steps from [`TANH_ZERO`]), its
/// output on a grid of `range_scale(out_range)`, and the table from one to the other.
#[derive(Clone, Copy)]
struct TanhTable {
    pre_scale: f64,
    out_range: f32,
}

impl TanhTable {
    /// From the largest outputs `|tanh|` of the layer's units: the largest
    /// pre-activation is `atanh` of the largest of them (`tanh` is odd and increasing).
    fn of(units: &[f32]) -> TanhTable {
        let top = units.iter().fold(0.0f32, |a, &v| a.max(v));
        let pre = libm::atanh(f64::from(top).min(libm::tanh(TANH_RANGE)));
        if pre > 0.0 {
            TanhTable {
                pre_scale: pre / f64::from(QMAX - TANH_ZERO),
                out_range: libm::tanh(pre) as f32,
            }
        } else {
            // A layer that never left 0: any grid gives it 0.
            TanhTable {
                pre_scale: 1.0 / f64::from(QMAX - TANH_ZERO),
                out_range: 0.0,
            }
        }
    }

    /// `T[p] = round(tanh((p - TANH_ZERO) pre_scale) / s_out)` within `-127..=127`, for
    /// every pre-activation `p` in `0..=127`.
    fn fill(self, table: &mut [i8]) {
        let s_out = f64::from(range_scale(self.out_range));
        let lim = f64::from(QMAX);
        for (b, t) in table.iter_mut().enumerate() {
            let p = b as f64 - f64::from(TANH_ZERO);
            let v = libm::tanh(p * self.pre_scale) / s_out;
            *t = libm::round(v).clamp(-lim, lim) as i8;
        }
    }
}

/// `s_w = max_i |w_i s_i| / 127` of one row whose inputs have the ranges `ranges`
/// (`s_i = range_scale(range_i)`; `1/127` for a row of zeros, whose weights stay 0).
fn row_scale(row: &[f32], ranges: Ranges<'_>) -> f32 {
    let m = row.iter().zip(ranges.iter()).fold(0.0f64, |a, (&w, r)| {
        a.max((f64::from(w) * f64::from(range_scale(r))).abs())
    });
    if m > 0.0 {
        (m / f64::from(QMAX)) as f32
    } else {
        1.0 / QMAX as f32
    }
}

/// `round(w_i s_i / s_w)` of a row, in `-127..=127`.
fn quantize_row(row: &[f32], ranges: Ranges<'_>, sw: f32, out: &mut [i8]) {
    let lim = f64::from(QMAX);
    for ((q, &w), r) in out.iter_mut().zip(row).zip(ranges.iter()) {
        let v = f64::from(w) * f64::from(range_scale(r)) / f64::from(sw);
        *q = libm::round(v).clamp(-lim, lim) as i8;
    }
}

/// `round(b / acc_scale)` within [`MAX_BIAS`].
fn quantize_bias(b: f64, acc_scale: f64) -> Result<i32, QuantError> {
    let q = libm::round(b / acc_scale);
    if q.is_finite() && q.abs() <= f64::from(MAX_BIAS) {
        Ok(q as i32)
    } else {
        Err(QuantError::Range)
    }
}

/// Writes reals into the float vector (on the second pass) and remembers whether any
/// was not finite.
struct FloatWriter<'a> {
    out: &'a mut [f32],
    write: bool,
    bad: bool,
}

impl FloatWriter<'_> {
    fn put(&mut self, v: f32, at: usize) {
        if !v.is_finite() {
            self.bad = true;
        }
        if self.write {
            if let Some(o) = self.out.get_mut(at) {
                *o = v;
            }
        }
    }
    fn put_all(&mut self, vs: impl Iterator<Item = f32>, at: usize) {
        for (k, v) in vs.enumerate() {
            self.put(v, at + k);
        }
    }
    fn ok(&self) -> bool {
        !self.bad
    }
}

#[cfg(test)]
mod tests {
    use super::{round_clamp_i8, round_clamp_i8_bits};

    #[test]
    fn round_clamp_i8_is_roundf_of_the_clamp() {
        // Near every half and integer of [-260, 260], a sweep, and far beyond the range.
        let want = |v: f32| libm::roundf(v.clamp(-127.0, 127.0)) as i8;
        let mut n = 0;
        for k in -520i32..=520 {
            let (mut v, mut w) = (k as f32 / 2.0, k as f32 / 2.0);
            for _ in 0..8 {
                for u in [v, w] {
                    assert_eq!(round_clamp_i8(u), want(u), "{u}");
                    n += 1;
                }
                v = v.next_up();
                w = w.next_down();
            }
        }
        let mut x = -300.0f32;
        while x <= 300.0 {
            assert_eq!(round_clamp_i8(x), want(x), "{x}");
            x += 0.000_37;
            n += 1;
        }
        for u in [
            -0.0,
            0.0,
            1.0e-30,
            -1.0e-30,
            1.0e9,
            -1.0e9,
            2147483520.0,
            -2147483648.0,
            3.0e9,
            -3.0e9,
            f32::MAX,
            f32::MIN,
            0.49999997,
            -0.49999997,
            126.5,
            -126.5,
            127.49999,
            -127.49999,
        ] {
            assert_eq!(round_clamp_i8(u), want(u), "{u}");
            n += 1;
        }
        assert!(n > 1_600_000);
    }

    #[test]
    fn round_clamp_i8_bits_is_roundf_of_the_clamp() {
        // Every exponent with random significands (both signs), near every half and
        // integer of [-260, 260], and the edges.
        let want = |v: f32| libm::roundf(v.clamp(-127.0, 127.0)) as i8;
        let mut seed = 0x9e37_79b9u32;
        let mut n = 0;
        for bits in 0..=0x1FFu32 {
            if bits & 0xFF == 0xFF {
                continue;
            }
            for _ in 0..4_000 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let v =
                    f32::from_bits(((bits & 0x100) << 23) | ((bits & 0xFF) << 23) | (seed >> 9));
                assert_eq!(round_clamp_i8_bits(v), want(v), "{v}");
                n += 1;
            }
        }
        for k in -520i32..=520 {
            let (mut v, mut w) = (k as f32 / 2.0, k as f32 / 2.0);
            for _ in 0..16 {
                for u in [v, w] {
                    assert_eq!(round_clamp_i8_bits(u), want(u), "{u}");
                    assert_eq!(round_clamp_i8_bits(u), round_clamp_i8(u), "{u}");
                    n += 1;
                }
                v = v.next_up();
                w = w.next_down();
            }
        }
        for u in [
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            1.0e-45,
            f32::MAX,
            f32::MIN,
            0.49999997,
            0.5,
            127.49999,
            127.5,
            128.0,
            -127.5,
        ] {
            assert_eq!(round_clamp_i8_bits(u), want(u), "{u}");
            n += 1;
        }
        assert!(n > 2_000_000);
    }
}
