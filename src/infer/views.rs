//! Typed views: a parameter vector, a gradient and a workspace split once into named
//! slices by a validated [`Shape`], so that the passes index no flat vector.
//!
//! Each view is made by [`carve`]ing its slices off the front of one buffer, in layout
//! order ([`Shape`]'s parameter layout, [`WorkLayout`](crate::infer::model::WorkLayout)'s workspace regions). The
//! length of that buffer is checked once where it enters (a [`Model`](super::model::Model)
//! checks its parameters when made, a workspace is checked against
//! [`Shape::work_len`]), so every slice has its exact length by construction: the passes
//! walk them with iterators and have no index that could be out of range, no error to
//! return for it and no panic path to link.

use crate::shape::{Scope, Shape, MAX_HIDDEN};
use crate::Real;

/// Takes the first `n` values off the front of `rest`. The buffers carved are checked
/// against the shape when they enter, so `n` is never more than is left; if it were,
/// the slice would come out empty (and the rest too) rather than panic.
pub(crate) fn carve<'a, T>(rest: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let (head, tail) = core::mem::take(rest)
        .split_at_mut_checked(n)
        .unwrap_or_default();
    *rest = tail;
    head
}

/// [`carve`] of a shared slice.
pub(crate) fn carve_ref<'a, T>(rest: &mut &'a [T], n: usize) -> &'a [T] {
    let (head, tail) = rest.split_at_checked(n).unwrap_or_default();
    *rest = tail;
    head
}

/// The first `n` values of `s` (none when it is shorter, which the callers' sizes rule
/// out): e.g. a layer's share of a gradient buffer as wide as the widest layer.
pub(crate) fn prefix_mut<T>(s: &mut [T], n: usize) -> &mut [T] {
    s.split_at_mut_checked(n).unwrap_or_default().0
}

/// [`prefix_mut`] of a shared slice.
pub(crate) fn prefix<T>(s: &[T], n: usize) -> &[T] {
    s.split_at_checked(n).unwrap_or_default().0
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
    /// Encoder hidden layers (empty past the depth).
    pub enc: [Dense<'a, T>; MAX_HIDDEN],
    /// Direction head `Wmu`, `bmu`.
    pub mu: Dense<'a, T>,
    /// Concentration head weight `wk` (`h_L`) and bias `bk`.
    pub kappa_w: &'a [T],
    pub kappa_b: T,
    /// The segmenter: centres (`K x M`), `ln kappa_s`, log-weights (`K`).
    pub seg: &'a [T],
    /// The segmenter's `ln kappa_s`.
    pub log_kappa_s: T,
    /// Decoder hidden layers, from the latent on (empty past the depth, and all of the
    /// decoder for an inference-only model).
    pub dec: [Dense<'a, T>; MAX_HIDDEN],
    /// Decoder output layer (`D x h_1`, `D`).
    pub out: Dense<'a, T>,
}

impl Shape {
    /// The tensors of `params`, a parameter vector of this (valid) shape:
    /// [`Shape::param_len`] values, or [`Shape::inference_param_len`] (no decoder).
    pub(crate) fn params<'a, T: Real>(&self, params: &'a [T]) -> Params<'a, T> {
        self.params_of(params, true)
    }

    /// [`Shape::params`] without the decoder (left empty): what inference reads, for
    /// less work per call.
    pub(crate) fn inference_params<'a, T: Real>(&self, params: &'a [T]) -> Params<'a, T> {
        self.params_of(params, false)
    }

    #[inline(always)]
    fn params_of<'a, T: Real>(&self, params: &'a [T], decoder: bool) -> Params<'a, T> {
        let d = self.input;
        let mut rest = params;
        let offset = carve_ref(&mut rest, d);
        let scale = carve_ref(&mut rest, d);
        let mut enc = [Dense::default(); MAX_HIDDEN];
        for (l, e) in enc.iter_mut().enumerate().take(self.depth()) {
            *e = Dense::carve(&mut rest, self.encoder_layer(l));
        }
        let (m, h) = (self.latent, self.last_hidden());
        let mu = Dense::carve(&mut rest, (m, h));
        let kappa_w = carve_ref(&mut rest, h);
        let kappa_b = first(carve_ref(&mut rest, 1));
        let seg = carve_ref(&mut rest, self.segmenter_len());
        let log_kappa_s = first(seg.get(self.clusters * m..).unwrap_or_default());
        let mut dec = [Dense::default(); MAX_HIDDEN];
        let mut out = Dense::default();
        if decoder {
            for (l, e) in dec.iter_mut().enumerate().take(self.depth()) {
                *e = Dense::carve(&mut rest, self.decoder_layer(l));
            }
            out = Dense::carve(&mut rest, self.decoder_layer(self.depth()));
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

    /// The regions of `work` ([`WorkLayout`](crate::infer::model::WorkLayout)); `None` when it is shorter than
    /// [`Shape::work_len`] (the rest of a longer one is left out).
    pub(crate) fn work<'a, T>(&self, work: &'a mut [T]) -> Option<Work<'a, T>> {
        if work.len() < self.work_len() {
            return None;
        }
        Some(self.regions(work, true))
    }

    /// The regions inference uses (`xn`, `enc`, `mu`, `z`, `logp`, `p`; the others
    /// left empty) of `work`, which is at least [`Shape::work_len`] long: for less
    /// work per call.
    pub(crate) fn inference_work<'a, T>(&self, work: &'a mut [T]) -> Work<'a, T> {
        self.regions(work, false)
    }

    #[inline(always)]
    fn regions<'a, T>(&self, work: &'a mut [T], backward: bool) -> Work<'a, T> {
        let (d, m, k) = (self.input, self.latent, self.clusters);
        let mut rest = work;
        let xn = carve(&mut rest, d);
        let mut enc: [&mut [T]; MAX_HIDDEN] = Default::default();
        for (l, e) in enc.iter_mut().enumerate().take(self.depth()) {
            *e = carve(&mut rest, self.hidden(l));
        }
        let mu = carve(&mut rest, m);
        let z = carve(&mut rest, m);
        let logp = carve(&mut rest, k);
        let p = carve(&mut rest, k);
        let mut work = Work {
            xn,
            enc,
            mu,
            z,
            logp,
            p,
            dec: Default::default(),
            xhat: Default::default(),
            ga: Default::default(),
            gb: Default::default(),
            gz: Default::default(),
            gmu: Default::default(),
        };
        if backward {
            for (l, e) in work.dec.iter_mut().enumerate().take(self.depth()) {
                *e = carve(&mut rest, self.decoder_layer(l).0);
            }
            let w = self.max_width();
            work.xhat = carve(&mut rest, d);
            work.ga = carve(&mut rest, w);
            work.gb = carve(&mut rest, w);
            work.gz = carve(&mut rest, m);
            work.gmu = carve(&mut rest, m);
        }
        work
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

/// The workspace of one sample by region ([`WorkLayout`](crate::infer::model::WorkLayout)): the forward pass's
/// activations and the backward pass's buffers.
#[derive(Debug)]
pub(crate) struct Work<'a, T> {
    /// Normalised input (`D`).
    pub xn: &'a mut [T],
    /// Encoder hidden activations by layer (empty past the depth).
    pub enc: [&'a mut [T]; MAX_HIDDEN],
    /// Mean direction `mu` (`M`).
    pub mu: &'a mut [T],
    /// Latent vector the decoder starts from (`M`).
    pub z: &'a mut [T],
    /// Segmenter logits, then log-probabilities (`K`).
    pub logp: &'a mut [T],
    /// Cluster probabilities (`K`).
    pub p: &'a mut [T],
    /// Decoder hidden activations by layer (empty past the depth).
    pub dec: [&'a mut [T]; MAX_HIDDEN],
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
        for s in [
            Shape::new(64, &[32], 8, 10),
            Shape::new(5, &[7, 3], 3, 2),
            Shape::new(2, &[4, 4, 4, 4], 2, 1),
        ] {
            let mut work = [0.0f32; 400];
            let w = s.work(&mut work[..s.work_len()]).unwrap();
            let l = crate::infer::model::WorkLayout::of(&s);
            let lens = [
                &w.xn, &w.mu, &w.z, &w.logp, &w.p, &w.xhat, &w.ga, &w.gb, &w.gz, &w.gmu,
            ];
            let sum: usize = lens.iter().map(|v| v.len()).sum::<usize>()
                + w.enc.iter().chain(&w.dec).map(|v| v.len()).sum::<usize>();
            assert_eq!(sum, l.end);
            assert_eq!(w.enc.iter().map(|v| v.len()).sum::<usize>(), s.hidden_sum());
            let params = [0.0f32; 8000];
            let p = s.params(&params[..s.param_len()]);
            let dense = |d: &Dense<'_, f32>| d.w.len() + d.b.len();
            let sum = 2 * s.input
                + p.enc.iter().chain(&p.dec).map(dense).sum::<usize>()
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
