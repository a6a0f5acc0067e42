//! The model: parameters in one flat vector ([`Shape`] layout) and the inference API.
//!
//! A [`Model`] owns its parameter storage `S`: `[f32; N]` on a device (so a model can be
//! a `static`, built by the `const fn` [`Model::from_array`]), `Vec<T>` on the host.
//! Every call takes a caller-owned workspace of [`Shape::work_len`] scalars, so nothing
//! is allocated and the stack use is fixed.
//!
//! Cost of one call, in multiply-accumulates: `encode` = encoder
//! (`sum_l h_l h_{l-1} + (M + 1) h_L`), `segment` = `encode` + `2 K M`,
//! `reconstruct` = `encode` + decoder. No loops depend on the data.

use crate::infer::nn::{
    dense_forward2, dot, inv_norm, inv_sqrt, softplus, sq_and_dot, sq_and_dot2, sq_and_dot2_8,
    sq_and_dot8,
};
use crate::infer::views::{carve, carve_ref, suffix, ParamLayout, Params, Work};
use crate::kernels::portable::transpose;
use crate::shape::{Shape, ShapeError, KAPPA_MAX};
use crate::Real;
use core::marker::PhantomData;

/// Why an inference call failed. The model is never changed by inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InferError {
    /// The input does not have `D` values.
    #[error("input length differs from the model's input size")]
    InputLength,
    /// An input value is NaN or infinite.
    #[error("input contains NaN or infinity")]
    NonFiniteInput,
    /// The workspace is shorter than [`Shape::work_len`], or an output slice has the
    /// wrong length.
    #[error("workspace or output buffer has the wrong length")]
    BufferLength,
    /// The direction head produced a zero (or non-finite) vector: `mu` is undefined.
    #[error("direction head produced a zero vector")]
    ZeroDirection,
    /// A segmenter centre has zero norm.
    #[error("a cluster centre has zero norm")]
    ZeroCentre,
    /// The model was built without decoder weights (inference only).
    #[error("the model has no decoder weights (inference-only)")]
    NoDecoder,
    /// An intermediate value overflowed (weights too large for the input).
    #[error("a computed value is not finite")]
    NonFinite,
}

/// Why parameters cannot form a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModelError {
    /// The shape is invalid.
    #[error("invalid shape: {0}")]
    Shape(#[from] ShapeError),
    /// The parameter vector's length is neither [`Shape::param_len`] nor
    /// [`Shape::inference_param_len`].
    #[error("parameter vector has the wrong length")]
    ParamLength,
    /// A parameter is NaN or infinite.
    #[error("a parameter is not finite")]
    NonFinite,
}

/// Offsets of the workspace regions for one sample's forward and backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WorkLayout {
    pub xn: usize,
    pub enc: usize,
    pub mu: usize,
    pub z: usize,
    pub logp: usize,
    pub p: usize,
    pub dec: usize,
    pub xhat: usize,
    pub ga: usize,
    pub gb: usize,
    pub gz: usize,
    pub gmu: usize,
    pub end: usize,
}

impl WorkLayout {
    pub(crate) const fn of(s: &Shape) -> WorkLayout {
        let d = s.input;
        let hs = s.hidden_sum();
        let m = s.latent;
        let k = s.clusters;
        let w = s.max_width();
        let xn = 0;
        let enc = xn + d;
        let mu = enc + hs;
        let z = mu + m;
        let logp = z + m;
        let p = logp + k;
        let dec = p + k;
        let xhat = dec + hs;
        let ga = xhat + d;
        let gb = ga + w;
        let gz = gb + w;
        let gmu = gz + m;
        let end = gmu + m;
        WorkLayout {
            xn,
            enc,
            mu,
            z,
            logp,
            p,
            dec,
            xhat,
            ga,
            gb,
            gz,
            gmu,
            end,
        }
    }
}

impl Shape {
    /// Scalars of workspace that every model call needs (one sample's activations and
    /// backward buffers): `2 D + 2 sum(h) + 4 M + 2 K + 2 max_width`.
    pub const fn work_len(&self) -> usize {
        WorkLayout::of(self).end
    }
}

/// What the encoder says about one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Encoding<'w, T> {
    /// Mean direction `mu(x)`, unit norm (`M` values, borrowed from the workspace).
    pub mu: &'w [T],
    /// Posterior concentration `kappa(x)` in `[1, KAPPA_MAX]`.
    pub kappa: T,
}

/// The segmenter's verdict on one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment<'w, T> {
    /// Most probable cluster, `argmax_k p(k | mu(x))`: the largest logit (the first on
    /// exact ties).
    pub label: usize,
    /// Cluster probabilities `p(k | mu(x))` (`K` values, borrowed from the workspace).
    pub probs: &'w [T],
    /// Cosine between `mu(x)` and the nearest centre, in `[-1, 1]`.
    pub cosine: T,
    /// Mean direction `mu(x)`.
    pub mu: &'w [T],
    /// Posterior concentration `kappa(x)`.
    pub kappa: T,
}

impl<T: Real> Segment<'_, T> {
    /// Novelty score `1 - cosine` in `[0, 2]`: 0 on a centre, larger for inputs far from
    /// every cluster.
    pub fn novelty(&self) -> T {
        T::one() - self.cosine
    }
}

/// An H-VAE: shape plus flat parameters (see [`Shape`] for the layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Model<T, S> {
    shape: Shape,
    params: S,
    /// Offsets derived from `shape`, computed once rather than in every call (a
    /// noticeable share of a `segment` on a Cortex-M4F; figures in docs/device.md).
    at: Offsets,
    _scalar: PhantomData<T>,
}

/// Where things are, for a [`Model`] of a given shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offsets {
    work: WorkLayout,
    params: ParamLayout,
    /// Start of the segmenter's parameters.
    segmenter: usize,
}

impl Offsets {
    const fn of(s: &Shape) -> Offsets {
        Offsets {
            work: WorkLayout::of(s),
            params: ParamLayout::of(s),
            segmenter: s.segmenter_offset(),
        }
    }
}

/// A model whose sizes are fixed at compile time, e.g. a `static`.
pub type ArrayModel<const P: usize> = Model<f32, [f32; P]>;

/// A model whose sizes are chosen at run time (host).
#[cfg(feature = "alloc")]
pub type VecModel<T = f32> = Model<T, alloc::vec::Vec<T>>;

impl<T: Real, const P: usize> Model<T, [T; P]> {
    /// A model in a `static` or `const`. `P` is [`Shape::param_len`], or
    /// [`Shape::inference_param_len`] for an inference-only model without decoder
    /// weights. Panics — at compile time when evaluated in a `const` context — if the
    /// shape is invalid or `P` is neither; use [`Model::new`] for a run-time check.
    pub const fn from_array(shape: Shape, params: [T; P]) -> Self {
        assert!(shape.validate().is_ok(), "invalid hvae::Shape");
        assert!(
            shape.param_len() == P || shape.inference_param_len() == P,
            "parameter array length is neither shape.param_len() nor shape.inference_param_len()"
        );
        Model {
            shape,
            params,
            at: Offsets::of(&shape),
            _scalar: PhantomData,
        }
    }
}

impl<T: Real, S: AsRef<[T]>> Model<T, S> {
    /// Wraps parameter storage; checks the shape, the length ([`Shape::param_len`], or
    /// [`Shape::inference_param_len`] for an inference-only model) and that every value
    /// is finite.
    pub fn new(shape: Shape, params: S) -> Result<Self, ModelError> {
        shape.validate()?;
        let p = params.as_ref();
        if p.len() != shape.param_len() && p.len() != shape.inference_param_len() {
            return Err(ModelError::ParamLength);
        }
        if !p.iter().all(|v| v.is_finite()) {
            return Err(ModelError::NonFinite);
        }
        Ok(Model {
            shape,
            params,
            at: Offsets::of(&shape),
            _scalar: PhantomData,
        })
    }

    /// The model's shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Scalars of workspace one call needs: [`Shape::work_len`], kept by the model.
    pub fn work_len(&self) -> usize {
        self.at.work.end
    }

    /// True when the decoder's weights are present (needed by `reconstruct` and by
    /// training in the `Full` and `EncoderAndSegmenter` scopes).
    pub fn has_decoder(&self) -> bool {
        self.params.as_ref().len() == self.shape.param_len()
    }

    /// All parameters, in layout order.
    pub fn params(&self) -> &[T] {
        self.params.as_ref()
    }

    /// The parameter storage.
    pub fn into_inner(self) -> S {
        self.params
    }

    /// The values of one tensor.
    pub fn tensor(&self, id: crate::shape::TensorId) -> Option<&[T]> {
        let t = self.shape.find(id)?;
        self.params.as_ref().get(t.range())
    }

    /// Encodes `x` into the posterior's mean direction and concentration.
    pub fn encode<'w>(&self, x: &[T], work: &'w mut [T]) -> Result<Encoding<'w, T>, InferError> {
        self.check_input(x)?;
        let mut w = self.work(work)?;
        let kappa = self.encode_into(&self.inference_views(), x, &mut w)?.kappa;
        Ok(Encoding { mu: w.mu, kappa })
    }

    /// Encodes `x` and applies the segmenter to its mean direction.
    pub fn segment<'w>(&self, x: &[T], work: &'w mut [T]) -> Result<Segment<'w, T>, InferError> {
        let p = self.inference_views();
        self.segment_views(&p, p.seg, x, work)
    }

    /// The segmenter's parameters (centres, `ln kappa_s`, log-weights:
    /// [`Shape::segmenter_len`] values), a slice of [`Model::params`].
    pub fn segmenter_params(&self) -> &[T] {
        let so = self.at.segmenter;
        // Always in range (the length was validated with the shape); an empty slice
        // otherwise, which the segmenter rejects, rather than a panic.
        let seg = self
            .params
            .as_ref()
            .get(so..so + self.shape.segmenter_len());
        seg.unwrap_or(&[])
    }

    /// [`Model::segment`] with the segmenter parameters `seg` ([`Shape::segmenter_len`]
    /// values, laid out as in the model) instead of the model's own: the encoder can
    /// stay in flash while a [`SegmenterAdapter`](crate::train::adapt::SegmenterAdapter) keeps
    /// adapting its own copy of the segmenter in RAM. Same cost as [`Model::segment`].
    pub fn segment_with<'w>(
        &self,
        seg: &[T],
        x: &[T],
        work: &'w mut [T],
    ) -> Result<Segment<'w, T>, InferError> {
        self.segment_views(&self.inference_views(), seg, x, work)
    }

    /// [`Model::segment_with`] on the model's parameters `p`.
    fn segment_views<'w>(
        &self,
        p: &Params<'_, T>,
        seg: &[T],
        x: &[T],
        work: &'w mut [T],
    ) -> Result<Segment<'w, T>, InferError> {
        if seg.len() != self.shape.segmenter_len() {
            return Err(InferError::BufferLength);
        }
        self.check_input(x)?;
        let mut w = self.work(work)?;
        let kappa = self.encode_into(p, x, &mut w)?.kappa;
        let Work { mu, logp, p, .. } = w;
        let (m, k) = (self.shape.latent, self.shape.clusters);
        let cosine = segmenter_logits(seg, m, k, mu, logp);
        finish_segment(cosine, logp, p, mu, kappa)
    }

    /// Encodes and segments every sample of `xs` (`n D` values, one sample after the
    /// other), handing each result to `each(i, result)` in order; a sample that fails
    /// gets its error and the others go on. The results are the same bits as
    /// [`Model::segment`] on each sample.
    ///
    /// With room for two samples in `work` (`2 Shape::work_len()` scalars) the samples
    /// go through the encoder two at a time, every weight loaded once for both: on a
    /// Cortex-M4F that takes fewer instructions per sample than one at a time (firmware
    /// `bench`; docs/device.md), for one more workspace and more code.
    /// With room for one, one at a time. Cost: `n` [`Model::segment`]s.
    ///
    /// Errors (nothing is processed): `xs` is not a whole number of samples
    /// ([`InferError::InputLength`]), `work` is shorter than one workspace
    /// ([`InferError::BufferLength`]).
    pub fn segment_batch<F>(&self, xs: &[T], work: &mut [T], each: F) -> Result<(), InferError>
    where
        F: FnMut(usize, Result<Segment<'_, T>, InferError>),
    {
        self.segment_batch_with(self.segmenter_params(), xs, work, each)
    }

    /// [`Model::segment_batch`] with the segmenter parameters `seg` (see
    /// [`Model::segment_with`]).
    pub fn segment_batch_with<F>(
        &self,
        seg: &[T],
        xs: &[T],
        work: &mut [T],
        mut each: F,
    ) -> Result<(), InferError>
    where
        F: FnMut(usize, Result<Segment<'_, T>, InferError>),
    {
        if seg.len() != self.shape.segmenter_len() {
            return Err(InferError::BufferLength);
        }
        self.batch(xs, work, |(i, r0, w0), b| match b {
            None => each(i, r0.and_then(|e| self.segment_encoded(seg, e.kappa, w0))),
            Some((j, r1, w1)) => match (r0, r1) {
                (Ok(e0), Ok(e1)) => {
                    let (s0, s1) = self.segment_encoded2(seg, (e0.kappa, w0), (e1.kappa, w1));
                    each(i, s0);
                    each(j, s1);
                }
                (r0, r1) => {
                    each(i, r0.and_then(|e| self.segment_encoded(seg, e.kappa, w0)));
                    each(j, r1.and_then(|e| self.segment_encoded(seg, e.kappa, w1)));
                }
            },
        })
    }

    /// Encodes every sample of `xs` (`n D` values, one after the other), handing each
    /// result to `each(i, result)` in order: [`Model::segment_batch`] without the
    /// segmenter (same workspace rules and errors). The results are the same bits as
    /// [`Model::encode`] on each sample.
    pub fn encode_batch<F>(&self, xs: &[T], work: &mut [T], mut each: F) -> Result<(), InferError>
    where
        F: FnMut(usize, Result<Encoding<'_, T>, InferError>),
    {
        let mut one = |i: usize, r: Result<EncoderOut<T>, InferError>, w: &mut Work<'_, T>| {
            each(
                i,
                r.map(|e| Encoding {
                    mu: &*w.mu,
                    kappa: e.kappa,
                }),
            )
        };
        self.batch(xs, work, |(i, r0, w0), b| {
            one(i, r0, w0);
            if let Some((j, r1, w1)) = b {
                one(j, r1, w1);
            }
        })
    }

    /// Runs the encoder over the samples of `xs`, two at a time when `work` holds two
    /// workspaces, and hands each sample's index, encoder result and workspace to `f`
    /// (the second of a pair as `Some`).
    #[allow(clippy::type_complexity)]
    fn batch<F>(&self, xs: &[T], work: &mut [T], mut f: F) -> Result<(), InferError>
    where
        F: FnMut(
            (usize, Result<EncoderOut<T>, InferError>, &mut Work<'_, T>),
            Option<(usize, Result<EncoderOut<T>, InferError>, &mut Work<'_, T>)>,
        ),
    {
        let d = self.shape.input;
        if d == 0 || !xs.len().is_multiple_of(d) {
            return Err(InferError::InputLength);
        }
        let wl = self.at.work.end;
        let (w0, rest) = work
            .split_at_mut_checked(wl)
            .ok_or(InferError::BufferLength)?;
        let mut w0 = self.at.work.regions(w0, false);
        let p = self.inference_views();
        let mut rows = xs.chunks_exact(d).enumerate();
        let Some(w1) = rest.get_mut(..wl) else {
            for (i, x) in rows {
                let r = self.encode_into(&p, x, &mut w0);
                f((i, r, &mut w0), None);
            }
            return Ok(());
        };
        let mut w1 = self.at.work.regions(w1, false);
        while let Some((i, x0)) = rows.next() {
            match rows.next() {
                Some((j, x1)) => {
                    let (r0, r1) = self.encode_pair_into(&p, (x0, x1), (&mut w0, &mut w1));
                    f((i, r0, &mut w0), Some((j, r1, &mut w1)));
                }
                None => {
                    let r = self.encode_into(&p, x0, &mut w0);
                    f((i, r, &mut w0), None);
                }
            }
        }
        Ok(())
    }

    /// The segmenter on an encoded workspace (`mu` in place): logits, probabilities,
    /// label.
    fn segment_encoded<'w>(
        &self,
        seg: &[T],
        kappa: T,
        w: &'w mut Work<'_, T>,
    ) -> Result<Segment<'w, T>, InferError> {
        let (m, k) = (self.shape.latent, self.shape.clusters);
        let Work { mu, logp, p, .. } = w;
        let cosine = segmenter_logits(seg, m, k, mu, logp);
        finish_segment(cosine, logp, p, mu, kappa)
    }

    /// [`Model::segment_encoded`] of two encoded workspaces, with
    /// [`segmenter_logits2`]; the same bits as two calls.
    #[allow(clippy::type_complexity)]
    fn segment_encoded2<'a, 'b>(
        &self,
        seg: &[T],
        (kappa0, w0): (T, &'a mut Work<'_, T>),
        (kappa1, w1): (T, &'b mut Work<'_, T>),
    ) -> (
        Result<Segment<'a, T>, InferError>,
        Result<Segment<'b, T>, InferError>,
    ) {
        let (m, k) = (self.shape.latent, self.shape.clusters);
        let Work {
            mu: mu0,
            logp: logp0,
            p: p0,
            ..
        } = w0;
        let Work {
            mu: mu1,
            logp: logp1,
            p: p1,
            ..
        } = w1;
        let (c0, c1) = segmenter_logits2(seg, m, k, (mu0, mu1), (logp0, logp1));
        (
            finish_segment(c0, logp0, p0, mu0, kappa0),
            finish_segment(c1, logp1, p1, mu1, kappa1),
        )
    }

    /// Decodes the mean direction of `x` back to input space (normalised units for the
    /// Gaussian likelihood, probabilities for Bernoulli) into `out` (`D` values).
    pub fn reconstruct(&self, x: &[T], work: &mut [T], out: &mut [T]) -> Result<(), InferError> {
        if out.len() != self.shape.input {
            return Err(InferError::BufferLength);
        }
        if !self.has_decoder() {
            return Err(InferError::NoDecoder);
        }
        self.check_input(x)?;
        let mut w = self.shape.work(work).ok_or(InferError::BufferLength)?;
        let p = self.views();
        self.encode_into(&p, x, &mut w)?;
        copy_over(w.z, w.mu);
        self.decoder_forward::<false>(&p, &mut w);
        let xhat = &*w.xhat;
        if !xhat.iter().all(|v| v.is_finite()) {
            return Err(InferError::NonFinite);
        }
        match self.shape.likelihood {
            crate::Likelihood::Gaussian => copy_over(out, xhat),
            crate::Likelihood::Bernoulli => {
                for (o, &v) in out.iter_mut().zip(xhat) {
                    *o = crate::infer::nn::sigmoid(v);
                }
            }
        }
        Ok(())
    }

    /// The model's parameters by tensor.
    pub(crate) fn views(&self) -> Params<'_, T> {
        self.at.params.params(self.params.as_ref(), true)
    }

    /// The parameters as the forward passes of training read them from `copy`
    /// ([`Shape::param_len`] values, overwritten): the model's parameters with every
    /// dense layer's weights transposed (`in x out`), for [`Model::encode_layers`] and
    /// [`Model::decoder_forward`] with `TRANSPOSED`, whose layers then run
    /// [`crate::kernels::dense_forward_t`] (the same bits as
    /// [`crate::kernels::dense_forward`]). `None` without the decoder or when `copy`
    /// has another length.
    pub(crate) fn transposed_views<'c>(&self, copy: &'c mut [T]) -> Option<Params<'c, T>> {
        let (s, params) = (&self.shape, self.params.as_ref());
        if !self.has_decoder() || copy.len() != params.len() {
            return None;
        }
        copy.copy_from_slice(params);
        // The encoder's hidden layers and the direction head, then the decoder's hidden
        // layers and its output layer, each block weights then biases.
        let (m, h) = (s.latent, s.last_hidden());
        let encoder = (0..s.depth()).map(|l| s.encoder_layer(l)).chain([(m, h)]);
        let decoder = (0..=s.depth()).map(|l| s.decoder_layer(l));
        transpose_block(params, copy, s.encoder_offset(), encoder)?;
        transpose_block(params, copy, s.decoder_offset(), decoder)?;
        Some(self.at.params.params(copy, true))
    }

    /// [`Model::views`] without the decoder.
    fn inference_views(&self) -> Params<'_, T> {
        self.at.params.params(self.params.as_ref(), false)
    }

    /// The inference regions of a caller's workspace; [`InferError::BufferLength`]
    /// when it is shorter than [`Shape::work_len`].
    fn work<'w>(&self, work: &'w mut [T]) -> Result<Work<'w, T>, InferError> {
        if work.len() < self.at.work.end {
            return Err(InferError::BufferLength);
        }
        Ok(self.at.work.regions(work, false))
    }

    /// `x` has `D` values.
    fn check_input(&self, x: &[T]) -> Result<(), InferError> {
        if x.len() != self.shape.input {
            return Err(InferError::InputLength);
        }
        Ok(())
    }

    /// Runs the encoder (parameters `p`) on `x`, leaving the normalised input, the
    /// hidden activations and `mu` in the workspace. Returns `kappa` and the norm of the
    /// raw direction `m` and the concentration pre-activation (both needed by the
    /// backward pass).
    pub(crate) fn encode_into(
        &self,
        p: &Params<'_, T>,
        x: &[T],
        w: &mut Work<'_, T>,
    ) -> Result<EncoderOut<T>, InferError> {
        self.encode_layers::<false>(p, x, w)
    }

    /// [`Model::encode_into`], with `p`'s dense weights `TRANSPOSED` or not
    /// ([`Model::transposed_views`]).
    pub(crate) fn encode_layers<const TRANSPOSED: bool>(
        &self,
        p: &Params<'_, T>,
        x: &[T],
        w: &mut Work<'_, T>,
    ) -> Result<EncoderOut<T>, InferError> {
        self.check_input(x)?;
        normalise_into(p, x, w.xn);
        let act = Some(self.shape.activation);
        // Layer after layer: its weights and biases off the block, its output off the
        // activations.
        let (mut layers, mut outs) = (p.enc, &mut *w.enc);
        let mut input: &[T] = w.xn;
        let mut first = None;
        for l in 0..self.shape.depth() {
            let (o, i) = self.shape.encoder_layer(l);
            let (wt, b) = (carve_ref(&mut layers, o * i), carve_ref(&mut layers, o));
            let out = carve(&mut outs, o);
            let pre = p.dense::<TRANSPOSED>(wt, b, input, out, act);
            first.get_or_insert(pre);
            input = out;
        }
        let pre = p.dense::<TRANSPOSED>(p.mu.w, p.mu.b, input, w.mu, None);
        check_first(first.unwrap_or(pre), x)?;
        encoder_head(p, input, w.mu)
    }

    /// Encodes `x` and returns the normalised input (`D` values) and the hidden layers'
    /// outputs (`sum h` values, layer after layer) left in `work`: what calibration
    /// measures.
    pub(crate) fn encode_activations<'w>(
        &self,
        x: &[T],
        work: &'w mut [T],
    ) -> Result<(&'w [T], &'w [T]), InferError> {
        let mut w = self.work(work)?;
        self.encode_into(&self.inference_views(), x, &mut w)?;
        Ok((w.xn, w.enc))
    }

    /// [`Model::encode_into`] of two inputs, `x0` into `w0` and `x1` into `w1`, with
    /// [`dense_forward2`] (every weight loaded once for both); the same bits as two calls.
    #[allow(clippy::type_complexity)]
    fn encode_pair_into(
        &self,
        p: &Params<'_, T>,
        (x0, x1): (&[T], &[T]),
        (w0, w1): (&mut Work<'_, T>, &mut Work<'_, T>),
    ) -> (
        Result<EncoderOut<T>, InferError>,
        Result<EncoderOut<T>, InferError>,
    ) {
        if self.check_input(x0).and(self.check_input(x1)).is_err() {
            return (Err(InferError::InputLength), Err(InferError::InputLength));
        }
        let first = self.dense_pair_into(p, (x0, x1), (&mut *w0, &mut *w1));
        // The last hidden layer's outputs end the activations.
        let hl = self.shape.last_hidden();
        (
            check_first(first.0, x0).and_then(|()| encoder_head(p, suffix(w0.enc, hl), w0.mu)),
            check_first(first.1, x1).and_then(|()| encoder_head(p, suffix(w1.enc, hl), w1.mu)),
        )
    }

    /// The normalisation and the dense layers of [`Model::encode_pair_into`]; returns
    /// the first layer's first outputs before the activation.
    #[inline(never)]
    fn dense_pair_into(
        &self,
        p: &Params<'_, T>,
        (x0, x1): (&[T], &[T]),
        (w0, w1): (&mut Work<'_, T>, &mut Work<'_, T>),
    ) -> (T, T) {
        normalise_pair_into(p, (x0, x1), (w0.xn, w1.xn));
        let act = Some(self.shape.activation);
        let (mut layers, mut outs0, mut outs1) = (p.enc, &mut *w0.enc, &mut *w1.enc);
        let (mut in0, mut in1): (&[T], &[T]) = (w0.xn, w1.xn);
        let mut first = None;
        for l in 0..self.shape.depth() {
            let (o, i) = self.shape.encoder_layer(l);
            let (wt, b) = (carve_ref(&mut layers, o * i), carve_ref(&mut layers, o));
            let (o0, o1) = (carve(&mut outs0, o), carve(&mut outs1, o));
            let pre = dense_forward2(wt, b, (in0, in1), (&mut *o0, &mut *o1), act);
            first.get_or_insert(pre);
            (in0, in1) = (o0, o1);
        }
        let pre = dense_forward2(p.mu.w, p.mu.b, (in0, in1), (w0.mu, w1.mu), None);
        first.unwrap_or(pre)
    }

    /// Decoder forward (parameters `p`) from the `z` region of the workspace into the
    /// `xhat` region (logits for Bernoulli), keeping the hidden activations, with `p`'s
    /// dense weights `TRANSPOSED` or not ([`Model::transposed_views`]). The model has its
    /// decoder (the callers check).
    pub(crate) fn decoder_forward<const TRANSPOSED: bool>(
        &self,
        p: &Params<'_, T>,
        w: &mut Work<'_, T>,
    ) {
        let act = Some(self.shape.activation);
        let (mut layers, mut outs) = (p.dec, &mut *w.dec);
        let mut input: &[T] = w.z;
        for l in 0..self.shape.depth() {
            let (o, i) = self.shape.decoder_layer(l);
            let (wt, b) = (carve_ref(&mut layers, o * i), carve_ref(&mut layers, o));
            let out = carve(&mut outs, o);
            p.dense::<TRANSPOSED>(wt, b, input, out, act);
            input = out;
        }
        p.dense::<TRANSPOSED>(p.out.w, p.out.b, input, w.xhat, None);
    }
}

/// The weights of the dense layers `layers` (`(out, in)` each, weights then biases,
/// from `start` on) transposed from `params` into `copy`; `None` past either end.
fn transpose_block<T: Copy>(
    params: &[T],
    copy: &mut [T],
    start: usize,
    layers: impl Iterator<Item = (usize, usize)>,
) -> Option<()> {
    let mut at = start;
    for (o, i) in layers {
        let end = at + o * i;
        transpose(params.get(at..end)?, o, i, copy.get_mut(at..end)?);
        at = end + o;
    }
    Some(())
}

/// The rest of the encoder after its dense layers, from the last hidden layer `h`:
/// `mu` normalised in place, the concentration head.
fn encoder_head<T: Real>(
    p: &Params<'_, T>,
    h: &[T],
    mu: &mut [T],
) -> Result<EncoderOut<T>, InferError> {
    let norm = normalise_direction(mu)?;
    let pre = dot(p.kappa_w, h) + p.kappa_b;
    let (kappa, clamped) = kappa_of(pre)?;
    Ok(EncoderOut {
        kappa,
        norm,
        pre,
        clamped,
    })
}

/// `mu = m / ||m||` in place (the direction head's output `m`); returns `||m||`.
/// [`InferError::ZeroDirection`] on a zero or non-finite norm. Shared by the `f32` and
/// the int8 encoders.
pub(crate) fn normalise_direction<T: Real>(mu: &mut [T]) -> Result<T, InferError> {
    let norm = dot(mu, mu).sqrt();
    if !norm.is_finite() || norm <= T::EPS * T::EPS {
        return Err(InferError::ZeroDirection);
    }
    for v in mu.iter_mut() {
        *v /= norm;
    }
    Ok(norm)
}

/// The concentration from its pre-activation: `softplus(pre) + 1`, clamped to
/// [`KAPPA_MAX`]; returns it and whether the clamp hit. Shared by the `f32` and the
/// int8 encoders.
pub(crate) fn kappa_of<T: Real>(pre: T) -> Result<(T, bool), InferError> {
    if !pre.is_finite() {
        return Err(InferError::NonFinite);
    }
    let kmax = T::of(KAPPA_MAX);
    let raw = softplus(pre) + T::one();
    let clamped = raw > kmax;
    Ok((if clamped { kmax } else { raw }, clamped))
}

/// Normalises `x` with the stored per-feature offset and scale into `xn`. The input is
/// checked for NaN and infinity after the first layer ([`check_first`]), not here.
pub(crate) fn normalise_into<T: Real>(p: &Params<'_, T>, x: &[T], xn: &mut [T]) {
    // Four values per iteration, spelled out (the firmware is built for size).
    let (xq, xr) = x.as_chunks::<4>();
    let (oq, or) = p.offset.as_chunks::<4>();
    let (sq, sr) = p.scale.as_chunks::<4>();
    let (nq, nr) = xn.as_chunks_mut::<4>();
    for (((n, xs), os), ss) in nq.iter_mut().zip(xq).zip(oq).zip(sq) {
        n[0] = (xs[0] - os[0]) * ss[0];
        n[1] = (xs[1] - os[1]) * ss[1];
        n[2] = (xs[2] - os[2]) * ss[2];
        n[3] = (xs[3] - os[3]) * ss[3];
    }
    for (((n, &xi), &o), &sc) in nr.iter_mut().zip(xr).zip(or).zip(sr) {
        *n = (xi - o) * sc;
    }
}

/// [`normalise_into`] of two inputs, each offset and scale loaded once.
fn normalise_pair_into<T: Real>(
    p: &Params<'_, T>,
    (x0, x1): (&[T], &[T]),
    (n0, n1): (&mut [T], &mut [T]),
) {
    let (aq, ar) = x0.as_chunks::<4>();
    let (bq, br) = x1.as_chunks::<4>();
    let (oq, or) = p.offset.as_chunks::<4>();
    let (sq, sr) = p.scale.as_chunks::<4>();
    let (mq, mr) = n0.as_chunks_mut::<4>();
    let (nq, nr) = n1.as_chunks_mut::<4>();
    for (((((m, n), a), b), os), ss) in mq.iter_mut().zip(nq).zip(aq).zip(bq).zip(oq).zip(sq) {
        m[0] = (a[0] - os[0]) * ss[0];
        n[0] = (b[0] - os[0]) * ss[0];
        m[1] = (a[1] - os[1]) * ss[1];
        n[1] = (b[1] - os[1]) * ss[1];
        m[2] = (a[2] - os[2]) * ss[2];
        n[2] = (b[2] - os[2]) * ss[2];
        m[3] = (a[3] - os[3]) * ss[3];
        n[3] = (b[3] - os[3]) * ss[3];
    }
    for (((((m, n), &a), &b), &o), &sc) in mr.iter_mut().zip(nr).zip(ar).zip(br).zip(or).zip(sr) {
        *m = (a - o) * sc;
        *n = (b - o) * sc;
    }
}

/// Copies `src` over the start of `dst`, as far as both go: for views whose lengths
/// agree by construction, without the panic path of `copy_from_slice` (the compiler
/// cannot see the agreement).
pub(crate) fn copy_over<T: Copy>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s;
    }
}
#[cfg(feature = "alloc")]
impl<T: Real> Model<T, alloc::vec::Vec<T>> {
    /// A heap-backed model with freshly initialised parameters ([`Model::init`]).
    pub fn with_shape<R: rand_core::Rng>(shape: Shape, rng: &mut R) -> Result<Self, ModelError> {
        shape.validate()?;
        let mut m = Model {
            shape,
            params: alloc::vec![T::zero(); shape.param_len()],
            at: Offsets::of(&shape),
            _scalar: PhantomData,
        };
        m.init(rng);
        Ok(m)
    }
}

impl<T: Real, S: AsRef<[T]>> Model<T, S> {
    #[cfg(feature = "device")]
    /// The same model over the storage `f` makes of this one's (a writable view of
    /// parameters that may be read-only); `None` when `f` gives none or storage of
    /// another length. Nothing is checked again: the values are the same.
    pub(crate) fn view<'a, Q: AsRef<[T]>>(
        &'a mut self,
        f: impl FnOnce(&'a mut S) -> Option<Q>,
    ) -> Option<Model<T, Q>> {
        let n = self.params.as_ref().len();
        let params = f(&mut self.params).filter(|q| q.as_ref().len() == n)?;
        Some(Model {
            shape: self.shape,
            params,
            at: self.at,
            _scalar: PhantomData,
        })
    }

    /// The parameters' storage (e.g. where a device's weights live).
    pub fn storage(&self) -> &S {
        &self.params
    }

    #[cfg(feature = "device")]
    /// The parameters' storage (for the device engine's weights in flash slots, whose
    /// commit switches the storage to another slot of the same length).
    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.params
    }
}

impl<T: Real, S: AsRef<[T]> + AsMut<[T]>> Model<T, S> {
    /// Mutable access to the parameters (for optimisers and loaders). Keeping them
    /// finite is the caller's job; [`Model::new`] and the trainers check.
    pub fn params_mut(&mut self) -> &mut [T] {
        self.params.as_mut()
    }

    /// Fresh parameters: identity normalisation; He-uniform weights for ReLU layers
    /// (Glorot-uniform for tanh) and zero biases; the concentration head starts at
    /// `kappa = 10` (bias `softplus^-1(9)`, zero weight) so the first draws are neither
    /// uniform nor degenerate; centres uniform on the sphere; `kappa_s = 10`; uniform
    /// mixing weights. Deterministic for a given generator state. Cost: one uniform or
    /// normal variate per parameter.
    pub fn init<R: rand_core::Rng>(&mut self, rng: &mut R) {
        let s = self.shape;
        let p = self.params.as_mut();
        for t in s.tensors() {
            let Some(v) = p.get_mut(t.range()) else {
                continue;
            };
            use crate::shape::TensorId as Id;
            match t.id {
                Id::NormOffset => v.fill(T::zero()),
                Id::NormScale => v.fill(T::one()),
                Id::EncoderWeight(_) | Id::MuWeight | Id::DecoderWeight(_) => {
                    let (fan_out, fan_in) = (T::of(t.rows as f64), T::of(t.cols as f64));
                    let limit = match s.activation {
                        crate::Activation::Relu => (T::of(6.0) / fan_in).sqrt(),
                        crate::Activation::Tanh => (T::of(6.0) / (fan_in + fan_out)).sqrt(),
                    };
                    for w in v.iter_mut() {
                        let u: T = crate::dist::rng::uniform(rng);
                        *w = (u + u - T::one()) * limit;
                    }
                }
                Id::KappaWeight
                | Id::LogWeights
                | Id::EncoderBias(_)
                | Id::MuBias
                | Id::DecoderBias(_) => v.fill(T::zero()),
                // softplus(b) + 1 = 10  =>  b = ln(e^9 - 1)
                Id::KappaBias => v.fill(T::of(libm::log(libm::expm1(9.0)))),
                Id::Centres => {
                    for w in v.iter_mut() {
                        *w = crate::dist::rng::standard_normal(rng);
                    }
                }
                Id::LogKappaS => v.fill(T::of(core::f64::consts::LN_10)),
            }
        }
    }

    /// Rescales every segmenter centre to unit norm. The segmenter only uses their
    /// directions, so the outputs stay the same (to rounding), and inference on unit
    /// centres needs no square root per centre (a software square root on a
    /// Cortex-M4F). `hvae train` stores its models so (`hvae import` keeps imported
    /// weights bit for bit). A zero or non-finite centre is an error and nothing is
    /// changed. Cost: `2 K M`
    /// multiply-adds and at most `K` square roots.
    pub fn normalise_centres(&mut self) -> Result<(), InferError> {
        let (m, k) = (self.shape.latent, self.shape.clusters);
        let so = self.shape.segmenter_offset();
        let centres = &mut self.params.as_mut()[so..so + k * m];
        if centres.chunks_exact(m).any(|c| inv_norm(c).is_none()) {
            return Err(InferError::ZeroCentre);
        }
        for c in centres.chunks_exact_mut(m) {
            // Divide by the norm (not multiply by `inv_norm`'s reciprocal): the result's
            // squared norm is then within a few ulps of 1, inside the fast path.
            let n = dot(c, c).sqrt();
            for v in c.iter_mut() {
                *v /= n;
            }
        }
        Ok(())
    }

    /// Sets the stored input normalisation (`x_n = (x - offset) * scale`).
    pub fn set_normalisation(&mut self, offset: &[T], scale: &[T]) -> Result<(), ModelError> {
        let d = self.shape.input;
        if offset.len() != d || scale.len() != d {
            return Err(ModelError::ParamLength);
        }
        if !offset.iter().chain(scale).all(|v| v.is_finite()) {
            return Err(ModelError::NonFinite);
        }
        let no = self.shape.norm_offset();
        // Checked, and copied by loops, so that no panic path is linked into a device
        // program that adapts its normalisation (the lengths were checked above).
        let (o, s) = self
            .params
            .as_mut()
            .get_mut(no..no + 2 * d)
            .and_then(|p| p.split_at_mut_checked(d))
            .ok_or(ModelError::ParamLength)?;
        for (dst, &v) in o.iter_mut().zip(offset) {
            *dst = v;
        }
        for (dst, &v) in s.iter_mut().zip(scale) {
            *dst = v;
        }
        Ok(())
    }
}

/// The segmenter's output from its logits (`logp`, `K` values) and largest cosine (or
/// the error that stopped it): the probabilities into `probs` (`K` values) and the label.
pub(crate) fn finish_segment<'w, T: Real>(
    cosine: Result<T, InferError>,
    logp: &[T],
    probs: &'w mut [T],
    mu: &'w [T],
    kappa: T,
) -> Result<Segment<'w, T>, InferError> {
    let cosine = cosine?;
    // Finite logits (checked by the segmenter) give finite probabilities: every
    // exponent is <= 0 and the sum is >= 1.
    let (label, _, _) = softmax(logp, probs);
    Ok(Segment {
        label,
        probs,
        cosine,
        mu,
        kappa,
    })
}

/// The input check after the first layer: a NaN or infinite input makes the first
/// layer's first output non-finite (see `dense_forward`; `(x - o) s` keeps a non-finite
/// value non-finite), so one comparison replaces one per input. Which error it is needs
/// a look at the input (only on this error path).
fn check_first<T: Real>(first: T, x: &[T]) -> Result<(), InferError> {
    if first.is_finite() {
        Ok(())
    } else if x.iter().all(|v| v.is_finite()) {
        Err(InferError::NonFinite)
    } else {
        Err(InferError::NonFiniteInput)
    }
}

/// Scalars of the encoder's forward pass that its backward pass needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EncoderOut<T> {
    pub kappa: T,
    /// `||m||` before normalisation.
    pub norm: T,
    /// Concentration pre-activation.
    pub pre: T,
    /// `kappa` hit `KAPPA_MAX` (its gradient is zero).
    pub clamped: bool,
}

/// `p = softmax(a)`; `a` is overwritten with the log-probabilities `log_softmax(a)`.
/// Returns the index of the largest logit (the first on exact ties), 0 for no logits.
/// The probabilities are [`softmax`]'s.
pub(crate) fn softmax_from_logits<T: Real>(a: &mut [T], p: &mut [T]) -> usize {
    let (best, mx, sum) = softmax(a, p);
    // sum >= 1: the largest logit contributes e^0.
    let ln_sum = sum.ln();
    for v in a.iter_mut() {
        *v = *v - mx - ln_sum;
    }
    best
}

/// `p = softmax(a)` (`a` unchanged); returns the index of the largest logit (the first
/// on exact ties; 0 for no logits), the largest logit and the sum of the exponentials.
/// One exponential per value (`p_k = e^(a_k - max) / sum`, not `exp(log p_k)`): on a
/// device they are a large share of a segment call, and inference needs no logarithm.
pub(crate) fn softmax<T: Real>(a: &[T], p: &mut [T]) -> (usize, T, T) {
    let Some(&first) = a.first() else {
        return (0, T::zero(), T::zero());
    };
    let (mut mx, mut best) = (first, 0);
    for (i, &v) in a.iter().enumerate() {
        if v > mx {
            (mx, best) = (v, i);
        }
    }
    let mut sum = T::zero();
    for (e, &v) in p.iter_mut().zip(a) {
        *e = (v - mx).fast_exp();
        sum += *e;
    }
    for e in p.iter_mut() {
        *e /= sum;
    }
    (best, mx, sum)
}

/// Segmenter logits `a_k = kappa_s ĉ_k . z + ln pi_k` of the segmenter parameters `seg`
/// (`K` centres of `M` values, `ln kappa_s`, `K` log-weights) into `logits` (`K`
/// values); returns the largest cosine `max_k ĉ_k . z`. The one implementation of the
/// segmenter's forward pass, for models and adapters alike.
pub(crate) fn segmenter_logits<T: Real>(
    seg: &[T],
    m: usize,
    k: usize,
    z: &[T],
    logits: &mut [T],
) -> Result<T, InferError> {
    let parts = seg
        .split_at_checked(k * m)
        .and_then(|(c, rest)| Some((c, rest.split_first()?)));
    let Some((centres, (&ln_kappa_s, log_w))) = parts else {
        return Err(InferError::BufferLength);
    };
    if m == 0 || log_w.len() != k || z.len() != m || logits.len() < k {
        return Err(InferError::BufferLength);
    }
    let kappa_s = ln_kappa_s.fast_exp();
    let mut best = -T::one() - T::one();
    let mut probe = T::zero();
    // A latent space of 8 (the digits model): `z` stays in registers for all the
    // centres instead of being loaded again for each (the same sums, in order).
    let z8 = <&[T; 8]>::try_from(z).ok().copied();
    for ((ck, &lw), a) in centres.chunks_exact(m).zip(log_w).zip(logits.iter_mut()) {
        let (sq, d) = match (z8, <&[T; 8]>::try_from(ck)) {
            (Some(z8), Ok(c8)) => sq_and_dot8(c8, &z8, (T::zero(), T::zero())),
            _ => sq_and_dot(ck, z),
        };
        let inv = inv_sqrt(sq).ok_or(InferError::ZeroCentre)?;
        let cos = d * inv;
        if cos > best {
            best = cos;
        }
        *a = kappa_s * cos + lw;
        // NaN if the logit is not finite (as in `encode_into`).
        probe += *a * T::zero();
    }
    if probe != T::zero() {
        return Err(InferError::NonFinite);
    }
    Ok(best)
}

/// [`segmenter_logits`] of two directions at once, each centre loaded and its norm
/// computed once for both; the same bits as two calls.
#[allow(clippy::type_complexity)]
fn segmenter_logits2<T: Real>(
    seg: &[T],
    m: usize,
    k: usize,
    (z0, z1): (&[T], &[T]),
    (l0, l1): (&mut [T], &mut [T]),
) -> (Result<T, InferError>, Result<T, InferError>) {
    let parts = seg
        .split_at_checked(k * m)
        .and_then(|(c, rest)| Some((c, rest.split_first()?)));
    let Some((centres, (&ln_kappa_s, log_w))) = parts else {
        return (Err(InferError::BufferLength), Err(InferError::BufferLength));
    };
    if m == 0 || log_w.len() != k || z0.len() != m || z1.len() != m || l0.len() < k || l1.len() < k
    {
        return (Err(InferError::BufferLength), Err(InferError::BufferLength));
    }
    let kappa_s = ln_kappa_s.fast_exp();
    // A latent space of 8: both directions stay in registers (as in `segmenter_logits`).
    let z8 = <&[T; 8]>::try_from(z0)
        .ok()
        .copied()
        .zip(<&[T; 8]>::try_from(z1).ok().copied());
    let (mut best0, mut best1) = (-T::one() - T::one(), -T::one() - T::one());
    let (mut probe0, mut probe1) = (T::zero(), T::zero());
    for (((ck, &lw), a0), a1) in centres
        .chunks_exact(m)
        .zip(log_w)
        .zip(l0.iter_mut())
        .zip(l1.iter_mut())
    {
        let (sq, d0, d1) = match (z8, <&[T; 8]>::try_from(ck)) {
            (Some((z0, z1)), Ok(c8)) => {
                sq_and_dot2_8(c8, &z0, &z1, (T::zero(), T::zero(), T::zero()))
            }
            _ => sq_and_dot2(ck, z0, z1),
        };
        let Some(inv) = inv_sqrt(sq) else {
            return (Err(InferError::ZeroCentre), Err(InferError::ZeroCentre));
        };
        let (cos0, cos1) = (d0 * inv, d1 * inv);
        if cos0 > best0 {
            best0 = cos0;
        }
        if cos1 > best1 {
            best1 = cos1;
        }
        *a0 = kappa_s * cos0 + lw;
        *a1 = kappa_s * cos1 + lw;
        probe0 += *a0 * T::zero();
        probe1 += *a1 * T::zero();
    }
    let check = |probe: T, best: T| {
        if probe == T::zero() {
            Ok(best)
        } else {
            Err(InferError::NonFinite)
        }
    };
    (check(probe0, best0), check(probe1, best1))
}
