//! Typed views: a parameter vector, a gradient and a workspace split once into named
//! slices by a validated [`Shape`], so that the passes index no flat vector.
//!
//! Each view is made by [`carve`]ing its slices off the front of one buffer, in layout
//! order ([`Shape`]'s parameter layout, [`WorkLayout`]'s workspace regions). The
//! length of that buffer is checked once where it enters (a [`Model`](super::model::Model)
//! checks its parameters when made, a workspace is checked against
//! [`Shape::work_len`]), so every slice has its exact length by construction: the passes
//! walk them with iterators and have no index that could be out of range, no error to
//! return for it and no panic path to link.

use crate::infer::model::WorkLayout;
use crate::shape::{Scope, Shape, MAX_HIDDEN};
use crate::Real;

/// Takes the first `n` values off the front of `rest`. The buffers carved are checked
/// against the shape when they enter, so `n` is never more than is left; if it were,
/// the slice would come out short (all that is left) rather than panic.
pub(crate) fn carve<'a, T>(rest: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let all = core::mem::take(rest);
    let (head, tail) = all.split_at_mut(n.min(all.len()));
    *rest = tail;
    head
}

/// [`carve`] of a shared slice.
pub(crate) fn carve_ref<'a, T>(rest: &mut &'a [T], n: usize) -> &'a [T] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

/// The first `n` values of `s` (none when it is shorter, which the callers' sizes rule
/// out): e.g. a layer's share of a gradient buffer as wide as the widest layer.
pub(crate) fn prefix_mut<T>(s: &mut [T], n: usize) -> &mut [T] {
    s.split_at_mut_checked(n).unwrap_or_default().0
}

/// The last `n` values of `s` (all of it when shorter).
pub(crate) fn suffix<T>(s: &[T], n: usize) -> &[T] {
    s.get(s.len().saturating_sub(n)..).unwrap_or_default()
}

/// [`prefix_mut`] of a shared slice.
pub(crate) fn prefix<T>(s: &[T], n: usize) -> &[T] {
    s.split_at_checked(n).unwrap_or_default().0
}

/// The last hidden layer's activations (`h_L`) of a network `depth` layers deep, from
/// the activations by layer ([`Shape::activations`]).
pub(crate) fn last_hidden<'s, T>(acts: &[&'s [T]; MAX_HIDDEN], depth: usize) -> &'s [T] {
    let last = depth.checked_sub(1).and_then(|l| acts.get(l));
    last.map_or(&[], |h| h)
}

/// The weights (`out x in`, row-major) and biases (`out`) of one dense layer.
#[derive(Debug)]
pub(crate) struct Dense<'a, T> {
    pub w: &'a [T],
    pub b: &'a [T],
}

impl<T> Clone for Dense<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Dense<'_, T> {}

impl<T> Default for Dense<'_, T> {
    fn default() -> Self {
        Dense { w: &[], b: &[] }
    }
}

impl<'a, T> Dense<'a, T> {
    /// The layer of `(out, in)` off the front of `rest`.
    fn carve(rest: &mut &'a [T], (o, i): (usize, usize)) -> Self {
        let w = carve_ref(rest, o * i);
        Dense {
            w,
            b: carve_ref(rest, o),
        }
    }
}

/// A model's parameter vector by tensor ([`Shape`]'s layout).
#[derive(Debug)]
pub(crate) struct Params<'a, T> {
    /// Per-feature input offset and scale (`D` each).
    pub offset: &'a [T],
    pub scale: &'a [T],
    /// Encoder hidden layers, each weights then biases ([`Shape::dense_layers`]).
    pub enc: &'a [T],
    /// Direction head `Wmu`, `bmu`.
    pub mu: Dense<'a, T>,
    /// Concentration head weight `wk` (`h_L`) and bias `bk`.
    pub kappa_w: &'a [T],
    pub kappa_b: T,
    /// The segmenter: centres (`K x M`), `ln kappa_s`, log-weights (`K`).
    pub seg: &'a [T],
    /// The segmenter's `ln kappa_s`.
    pub log_kappa_s: T,
    /// Decoder hidden layers, from the latent on, each weights then biases (empty for
    /// an inference-only model).
    pub dec: &'a [T],
    /// Decoder output layer (`D x h_1`, `D`).
    pub out: Dense<'a, T>,
}

impl<T: Real> Params<'_, T> {
    /// One dense layer's forward pass `y = act(W x + b)` with weights `w` off this view:
    /// [`crate::kernels::dense_forward_t`] when they are `TRANSPOSED` (`in x out`, a view
    /// of [`crate::infer::model::Model::transposed_views`]), else
    /// [`crate::kernels::dense_forward`] (the same bits); returns the first output before
    /// the activation. A constant, so that inference links the row-major kernel alone.
    #[inline(always)]
    pub(crate) fn dense<const TRANSPOSED: bool>(
        &self,
        w: &[T],
        b: &[T],
        x: &[T],
        y: &mut [T],
        act: Option<crate::Activation>,
    ) -> T {
        if TRANSPOSED {
            crate::kernels::dense_forward_t(w, b, x, y, act)
        } else {
            crate::kernels::dense_forward(w, b, x, y, act)
        }
    }
}

impl Shape {
    /// The hidden layers of the encoder's (`decoder` false) or the decoder's block of
    /// hidden layers ([`Params::enc`], [`Params::dec`]), in order (empty past the depth).
    pub(crate) fn dense_layers<'a, T>(
        &self,
        block: &'a [T],
        decoder: bool,
    ) -> [Dense<'a, T>; MAX_HIDDEN] {
        let mut rest = block;
        let mut layers = [Dense::default(); MAX_HIDDEN];
        for (l, e) in layers.iter_mut().enumerate().take(self.depth()) {
            let shape = if decoder {
                self.decoder_layer(l)
            } else {
                self.encoder_layer(l)
            };
            *e = Dense::carve(&mut rest, shape);
        }
        layers
    }

    /// The outputs of the hidden layers in the encoder's (`decoder` false) or the
    /// decoder's activations ([`Work::enc`], [`Work::dec`]), in order (empty past the
    /// depth).
    pub(crate) fn activations<'a, T>(
        &self,
        region: &'a [T],
        decoder: bool,
    ) -> [&'a [T]; MAX_HIDDEN] {
        let mut rest = region;
        let mut acts = [&[][..]; MAX_HIDDEN];
        for (l, e) in acts.iter_mut().enumerate().take(self.depth()) {
            let width = if decoder {
                self.decoder_layer(l).0
            } else {
                self.hidden(l)
            };
            *e = carve_ref(&mut rest, width);
        }
        acts
    }

    /// The regions of `work` ([`WorkLayout`]); `None` when it is shorter than
    /// [`Shape::work_len`] (the rest of a longer one is left out).
    pub(crate) fn work<'a, T>(&self, work: &'a mut [T]) -> Option<Work<'a, T>> {
        if work.len() < self.work_len() {
            return None;
        }
        Some(WorkLayout::of(self).regions(work, true))
    }

    /// The tensors of a gradient over `scope` ([`Shape::scope_range`] long): those
    /// outside the scope are `None`.
    pub(crate) fn grads<'a, T>(&self, scope: Scope, grads: &'a mut [T]) -> Grads<'a, T> {
        let mut rest = grads;
        let mut g = Grads::default();
        if scope != Scope::SegmenterOnly {
            for (l, e) in g.enc.iter_mut().enumerate().take(self.depth()) {
                *e = Some(DenseMut::carve(&mut rest, self.encoder_layer(l)));
            }
            let (m, h) = (self.latent, self.last_hidden());
            g.mu = Some(DenseMut::carve(&mut rest, (m, h)));
            g.kappa = Some(DenseMut::carve(&mut rest, (1, h)));
        }
        g.seg = Some(carve(&mut rest, self.segmenter_len()));
        if scope == Scope::Full {
            for (l, e) in g.dec.iter_mut().enumerate().take(self.depth()) {
                *e = Some(DenseMut::carve(&mut rest, self.decoder_layer(l)));
            }
            g.out = Some(DenseMut::carve(&mut rest, self.decoder_layer(self.depth())));
        }
        g
    }
}

/// Where the tensors of a parameter vector start ([`Shape`]'s layout), for splitting
/// it by differences of offsets, computed once (a [`Model`](super::model::Model) keeps
/// its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParamLayout {
    /// The encoder's hidden layers.
    enc: usize,
    mu_w: usize,
    mu_b: usize,
    kappa_w: usize,
    kappa_b: usize,
    seg: usize,
    log_kappa_s: usize,
    /// The decoder's hidden layers.
    dec: usize,
    out_w: usize,
    out_b: usize,
    end: usize,
}

impl ParamLayout {
    /// The layout of a (valid) shape.
    pub(crate) const fn of(s: &Shape) -> ParamLayout {
        let (m, h, k) = (s.latent, s.last_hidden(), s.clusters);
        let seg = s.segmenter_offset();
        let kappa_b = seg - 1;
        let kappa_w = kappa_b - h;
        let mu_b = kappa_w - m;
        let mu_w = mu_b - m * h;
        let (o, i) = s.decoder_layer(s.depth());
        let end = s.param_len();
        ParamLayout {
            enc: s.encoder_offset(),
            mu_w,
            mu_b,
            kappa_w,
            kappa_b,
            seg,
            log_kappa_s: seg + k * m,
            dec: s.decoder_offset(),
            out_w: end - (o * i + o),
            out_b: end - o,
            end,
        }
    }

    /// The tensors of `params`, a parameter vector of the shape ([`Shape::param_len`]
    /// values, or [`Shape::inference_param_len`] for no decoder), without the decoder
    /// unless `decoder`.
    #[inline(always)]
    pub(crate) fn params<'a, T: Real>(&self, params: &'a [T], decoder: bool) -> Params<'a, T> {
        let l = self;
        let mut rest = params;
        let norm = carve_ref(&mut rest, l.enc);
        let (offset, scale) = norm.split_at_checked(l.enc / 2).unwrap_or_default();
        let enc = carve_ref(&mut rest, l.mu_w - l.enc);
        let mu = Dense {
            w: carve_ref(&mut rest, l.mu_b - l.mu_w),
            b: carve_ref(&mut rest, l.kappa_w - l.mu_b),
        };
        let kappa_w = carve_ref(&mut rest, l.kappa_b - l.kappa_w);
        let kappa_b = first(carve_ref(&mut rest, l.seg - l.kappa_b));
        let seg = carve_ref(&mut rest, l.dec - l.seg);
        let log_kappa_s = first(seg.get(l.log_kappa_s - l.seg..).unwrap_or_default());
        let (mut dec, mut out) = (&[][..], Dense::default());
        if decoder {
            dec = carve_ref(&mut rest, l.out_w - l.dec);
            out = Dense {
                w: carve_ref(&mut rest, l.out_b - l.out_w),
                b: carve_ref(&mut rest, l.end - l.out_b),
            };
        }
        Params {
            offset,
            scale,
            enc,
            mu,
            kappa_w,
            kappa_b,
            seg,
            log_kappa_s,
            dec,
            out,
        }
    }
}

impl WorkLayout {
    /// The regions of `work` (at least [`WorkLayout::end`] long), the backward pass's
    /// only when `backward`.
    #[inline(always)]
    pub(crate) fn regions<'a, T>(&self, work: &'a mut [T], backward: bool) -> Work<'a, T> {
        let l = self;
        let mut rest = work;
        let mut work = Work {
            xn: carve(&mut rest, l.enc - l.xn),
            enc: carve(&mut rest, l.mu - l.enc),
            mu: carve(&mut rest, l.z - l.mu),
            z: carve(&mut rest, l.logp - l.z),
            logp: carve(&mut rest, l.p - l.logp),
            p: carve(&mut rest, l.dec - l.p),
            dec: Default::default(),
            xhat: Default::default(),
            ga: Default::default(),
            gb: Default::default(),
            gz: Default::default(),
            gmu: Default::default(),
        };
        if backward {
            work.dec = carve(&mut rest, l.xhat - l.dec);
            work.xhat = carve(&mut rest, l.ga - l.xhat);
            work.ga = carve(&mut rest, l.gb - l.ga);
            work.gb = carve(&mut rest, l.gz - l.gb);
            work.gz = carve(&mut rest, l.gmu - l.gz);
            work.gmu = carve(&mut rest, l.end - l.gmu);
        }
        work
    }
}

/// The first value of `s`, zero for none.
fn first<T: Real>(s: &[T]) -> T {
    s.first().copied().unwrap_or(T::zero())
}

/// The gradient of one dense layer: weights and biases.
#[derive(Debug)]
pub(crate) struct DenseMut<'a, T> {
    pub w: &'a mut [T],
    pub b: &'a mut [T],
}

impl<'a, T> DenseMut<'a, T> {
    fn carve(rest: &mut &'a mut [T], (o, i): (usize, usize)) -> Self {
        let w = carve(rest, o * i);
        DenseMut {
            w,
            b: carve(rest, o),
        }
    }

    /// Both, as [`dense_backward`](super::nn::dense_backward) takes them.
    pub fn both(&mut self) -> (&mut [T], &mut [T]) {
        (&mut *self.w, &mut *self.b)
    }
}

/// A gradient by tensor, as [`Params`]; `None` for the tensors a scope leaves frozen.
#[derive(Debug)]
pub(crate) struct Grads<'a, T> {
    pub enc: [Option<DenseMut<'a, T>>; MAX_HIDDEN],
    pub mu: Option<DenseMut<'a, T>>,
    /// Concentration head: weight `wk` and bias `bk` (one value).
    pub kappa: Option<DenseMut<'a, T>>,
    /// Segmenter: centres, `ln kappa_s`, log-weights.
    pub seg: Option<&'a mut [T]>,
    pub dec: [Option<DenseMut<'a, T>>; MAX_HIDDEN],
    pub out: Option<DenseMut<'a, T>>,
}

impl<T> Default for Grads<'_, T> {
    fn default() -> Self {
        Grads {
            enc: Default::default(),
            mu: None,
            kappa: None,
            seg: None,
            dec: Default::default(),
            out: None,
        }
    }
}

/// The workspace of one sample by region ([`WorkLayout`]): the forward pass's
/// activations and the backward pass's buffers.
#[derive(Debug)]
pub(crate) struct Work<'a, T> {
    /// Normalised input (`D`).
    pub xn: &'a mut [T],
    /// Encoder hidden activations, layer after layer ([`Shape::activations`]).
    pub enc: &'a mut [T],
    /// Mean direction `mu` (`M`).
    pub mu: &'a mut [T],
    /// Latent vector the decoder starts from (`M`).
    pub z: &'a mut [T],
    /// Segmenter logits, then log-probabilities (`K`).
    pub logp: &'a mut [T],
    /// Cluster probabilities (`K`).
    pub p: &'a mut [T],
    /// Decoder hidden activations, layer after layer.
    pub dec: &'a mut [T],
    /// Decoder output (`D`).
    pub xhat: &'a mut [T],
    /// Two gradient buffers as wide as the widest layer.
    pub ga: &'a mut [T],
    pub gb: &'a mut [T],
    /// `dL/dz` and `dL/dmu` (`M` each).
    pub gz: &'a mut [T],
    pub gmu: &'a mut [T],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_cover_their_buffers_exactly() {
        for s in crate::shape::TEST_SHAPES {
            let mut work = [0.0f32; 400];
            let w = s.work(&mut work[..s.work_len()]).unwrap();
            let l = WorkLayout::of(&s);
            let lens = [
                &w.xn, &w.enc, &w.mu, &w.z, &w.logp, &w.p, &w.dec, &w.xhat, &w.ga, &w.gb, &w.gz,
                &w.gmu,
            ];
            let sum: usize = lens.iter().map(|v| v.len()).sum::<usize>();
            assert_eq!(sum, l.end);
            let acts = s.activations(&*w.enc, false);
            assert_eq!(acts.iter().map(|v| v.len()).sum::<usize>(), s.hidden_sum());
            let acts = s.activations(&*w.dec, true);
            assert_eq!(acts.iter().map(|v| v.len()).sum::<usize>(), s.hidden_sum());
            let params = [0.0f32; 8000];
            let p = ParamLayout::of(&s).params(&params[..s.param_len()], true);
            let dense = |d: &Dense<'_, f32>| d.w.len() + d.b.len();
            let layers = s
                .dense_layers(p.enc, false)
                .iter()
                .map(dense)
                .sum::<usize>();
            assert_eq!(layers, p.enc.len());
            let layers = s.dense_layers(p.dec, true).iter().map(dense).sum::<usize>();
            assert_eq!(layers, p.dec.len());
            let sum = 2 * s.input
                + p.enc.len()
                + p.dec.len()
                + dense(&p.mu)
                + p.kappa_w.len()
                + 1
                + p.seg.len()
                + dense(&p.out);
            assert_eq!(sum, s.param_len());
            assert_eq!(p.seg.len(), s.segmenter_len());
            let mut g = [0.0f32; 8000];
            for scope in [
                Scope::Full,
                Scope::EncoderAndSegmenter,
                Scope::SegmenterOnly,
            ] {
                let n = s.scope_range(scope).len();
                let g = s.grads(scope, &mut g[..n]);
                let dense =
                    |d: &Option<DenseMut<'_, f32>>| d.as_ref().map_or(0, |d| d.w.len() + d.b.len());
                let sum = g.enc.iter().chain(&g.dec).map(dense).sum::<usize>()
                    + dense(&g.mu)
                    + dense(&g.kappa)
                    + dense(&g.out)
                    + g.seg.as_ref().map_or(0, |v| v.len());
                assert_eq!(sum, n, "{scope:?}");
            }
        }
    }
}
