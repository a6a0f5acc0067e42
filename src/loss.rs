//! The training loss of one batch and its hand-written gradient.
//!
//! ```text
//! L = mean_i [-ln p(x_i|z_i)] + beta mean_i KL(q(.|x_i) || U) + gamma L_seg
//! L_seg = mean_pairs[-ln(p_i . p_j)]            (consistency: neighbours or noisy copies)
//!       + lambda mean_i H(p_i)                  (low per-sample entropy; 0 by default)
//!       - eta H(p_bar)                          (balance; p_bar a moving average)
//!       + mean_labelled[-ln p_{y_i}]            (cross-entropy where a label is given)
//! ```
//!
//! `p_i` is the segmenter applied to `mu(x_i)` ([`ClusterInput::Mean`], the default) or to
//! the posterior draw `z_i` ([`ClusterInput::Draw`]). The balance
//! term uses `p_bar = rho p_bar_prev + (1 - rho) mean_i p_i`: with small on-device
//! batches `rho` near 1 keeps a long memory, and the gradient flows only through the
//! current batch's share. The information-maximisation variant is `lambda > 0` with no
//! pairs; the noise-consistency variant pairs each sample with a noisy copy of itself.
//!
//! The pass is two sweeps over the batch: the first encodes, draws `z_i` and evaluates
//! the segmenter (the cluster terms couple samples, so their gradient needs every
//! `p_i`); the second recomputes each sample's encoder activations (cheaper in memory
//! than keeping them) and back-propagates. Cost: about `B` forward passes of the whole
//! network, plus `B` encoder passes, plus `B` backward passes; memory: a workspace of
//! [`Shape::work_len`] plus [`cache_len`] per batch.

use crate::model::{segmenter_logits, softmax_from_logits, InferError, Model, WorkLayout};
use crate::nn::{dense_backward, dot, inv_norm, sigmoid, softplus};
use crate::shape::{Likelihood, Posterior, Scope, Shape};
use crate::sphere::{reflect_backward, Draw, SampleError};
use crate::Real;

/// Weights and constants of the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LossConfig<T> {
    /// Weight of the KL term (`beta`, 1 in the classical VAE).
    pub beta: T,
    /// Weight of the cluster loss (`gamma`).
    pub gamma: T,
    /// Weight of the balance term (`eta`).
    pub eta: T,
    /// Weight of the mean per-sample entropy (`lambda`).
    pub entropy: T,
    /// Standard deviation of the Gaussian likelihood, in normalised units.
    pub sigma: T,
    /// Momentum `rho` of the moving-average marginal `p_bar` in `[0, 1)`.
    pub balance_momentum: T,
    /// What the segmenter sees in training.
    pub cluster_input: ClusterInput,
}

/// The latent vector the segmenter is applied to in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClusterInput {
    /// The mean direction `mu(x)`, as at inference (default): the cluster terms see the
    /// same vector the deployed model labels, and their gradient does not carry the
    /// posterior's sampling noise, which at the low `kappa` of early training is large
    /// enough to collapse clusters.
    Mean,
    /// The posterior draw `z`, as in the textbook mixture-prior VAE.
    Draw,
}

impl<T: Real> Default for LossConfig<T> {
    /// `beta = 1`, `gamma = 2`, `eta = 2`, `lambda = 0`, `sigma = 1`, `rho = 0`: the
    /// neighbour-consistency setting of DESIGN section 2, for host-sized batches.
    fn default() -> Self {
        LossConfig {
            beta: T::one(),
            gamma: T::of(2.0),
            eta: T::of(2.0),
            entropy: T::zero(),
            sigma: T::one(),
            balance_momentum: T::zero(),
            cluster_input: ClusterInput::Mean,
        }
    }
}

/// One batch: `B` inputs, optional labels, and the consistency pairs.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a, T> {
    /// `B x D` inputs, row-major, raw (the model normalises them).
    pub inputs: &'a [T],
    /// Empty, or `B` labels (`None` = unlabelled).
    pub labels: &'a [Option<u8>],
    /// Pairs `(i, j)` of batch rows whose cluster probabilities should agree.
    pub pairs: &'a [(u16, u16)],
}

/// The loss of one batch, by part (each already a batch mean, unweighted).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LossParts<T> {
    /// `recon + beta kl + gamma (consistency + lambda entropy - eta balance + supervised)`.
    pub total: T,
    /// Mean negative log-likelihood (without its constant).
    pub recon: T,
    /// Mean KL to the uniform prior.
    pub kl: T,
    /// Mean `-ln(p_i . p_j)` over the pairs.
    pub consistency: T,
    /// Mean per-sample entropy `H(p_i)`.
    pub entropy: T,
    /// Entropy of the moving-average marginal `H(p_bar)`.
    pub balance: T,
    /// Mean cross-entropy over labelled samples.
    pub supervised: T,
}

/// Why a loss or gradient could not be formed. Nothing is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LossError {
    /// Empty batch, `inputs.len()` not a multiple of `D`, labels not `B` long, a label
    /// `>= K`, or a pair index `>= B`.
    BadBatch,
    /// A buffer (workspace, cache, gradient, marginal) has the wrong length.
    BufferLength,
    /// Encoding a sample failed.
    Infer(InferError),
    /// Drawing from the posterior failed.
    Sample(SampleError),
    /// The loss or a gradient is NaN or infinite.
    NonFinite,
}

impl core::fmt::Display for LossError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LossError::BadBatch => f.write_str("malformed batch (sizes, labels or pairs)"),
            LossError::BufferLength => f.write_str("a training buffer has the wrong length"),
            LossError::Infer(e) => write!(f, "encoding failed: {e}"),
            LossError::Sample(e) => write!(f, "posterior sampling failed: {e}"),
            LossError::NonFinite => f.write_str("loss or gradient is not finite"),
        }
    }
}

impl core::error::Error for LossError {}

impl From<InferError> for LossError {
    fn from(e: InferError) -> Self {
        LossError::Infer(e)
    }
}

impl From<SampleError> for LossError {
    fn from(e: SampleError) -> Self {
        LossError::Sample(e)
    }
}

/// Where the posterior draws come from: a random generator in training
/// ([`RandomDraws`]), or fixed noise in gradient checks and reference comparisons.
pub trait DrawSource<T: Real> {
    /// Writes a reparameterised draw from `posterior(mu, kappa)` into `z` and returns
    /// `w = mu . z` with `dw/dkappa` at fixed noise.
    fn draw(
        &mut self,
        posterior: Posterior,
        mu: &[T],
        kappa: T,
        z: &mut [T],
    ) -> Result<Draw<T>, SampleError>;
}

/// Draws from the posterior with a caller-owned random generator.
#[derive(Debug)]
pub struct RandomDraws<'r, R>(pub &'r mut R);

impl<T: Real, R: rand_core::Rng> DrawSource<T> for RandomDraws<'_, R> {
    fn draw(
        &mut self,
        posterior: Posterior,
        mu: &[T],
        kappa: T,
        z: &mut [T],
    ) -> Result<Draw<T>, SampleError> {
        posterior.sample(mu, kappa, self.0, z)
    }
}

/// Replays recorded draws, one per batch row in order: row `i`'s draw is
/// `z = H(mu) (w_i, sqrt(1 - w_i^2) v_i)` with `v_i` (`M - 1` values, unit norm) and
/// `dw/dkappa` as given. Used to compare the device with the host, and the core with an
/// independent reference, on identical posterior draws.
#[derive(Debug)]
pub struct ReplayDraws<'a, T> {
    /// `(w, dw/dkappa)` per row.
    pub draws: &'a [(T, T)],
    /// Tangent directions `v`, `M - 1` per row.
    pub tangents: &'a [T],
    /// Next row to replay.
    pub next: usize,
}

impl<T: Real> DrawSource<T> for ReplayDraws<'_, T> {
    fn draw(
        &mut self,
        _posterior: Posterior,
        mu: &[T],
        _kappa: T,
        z: &mut [T],
    ) -> Result<Draw<T>, SampleError> {
        let m = mu.len();
        if z.len() != m || m < 2 {
            return Err(SampleError::Length);
        }
        let i = self.next;
        let (&(w, dw_dkappa), v) = match (
            self.draws.get(i),
            self.tangents.get(i * (m - 1)..(i + 1) * (m - 1)),
        ) {
            (Some(d), Some(v)) => (d, v),
            _ => return Err(SampleError::Length),
        };
        self.next += 1;
        let r = (T::one() - w * w).max(T::zero()).sqrt();
        z[0] = w;
        for (zi, &vi) in z[1..].iter_mut().zip(v) {
            *zi = r * vi;
        }
        crate::sphere::reflect(mu, z);
        Ok(Draw { w, dw_dkappa })
    }
}

/// Scalars per batch row kept between the two sweeps: `z` (`M`), the gradient with
/// respect to the segmenter logits (`K`), the probabilities (`K`), `w`, `dw/dkappa`.
pub const fn cache_row(shape: &Shape) -> usize {
    shape.latent + 2 * shape.clusters + 2
}

/// Cache scalars for a batch of `batch` rows: one [`cache_row`] per row plus the new
/// marginal `p_bar` (`K`), staged there until the gradient is known to be finite.
pub const fn cache_len(shape: &Shape, batch: usize) -> usize {
    cache_row(shape) * batch + shape.clusters
}

/// Smallest probability used inside a logarithm (keeps `ln` finite when a softmax
/// underflows; far below any probability that matters).
fn tiny<T: Real>() -> T {
    T::of(1e-30).max(T::EPS * T::EPS * T::EPS)
}

/// Computes the loss of `batch` and writes its gradient with respect to the parameters
/// in `scope` into `grads` (`shape.scope_range(scope).len()` values, overwritten).
///
/// `p_bar` holds the previous moving-average marginal on entry (`K` values; ignored
/// when `rho = 0`) and receives the new one; `p_bar` is written only on success. With
/// [`Scope::SegmenterOnly`] the segmenter is applied to `mu(x)` (no draw, no
/// reconstruction or KL term) and only the cluster terms are formed.
///
/// On error nothing but the scratch buffers (`work`, `cache`, `grads`) is written.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grad<T: Real, S: AsRef<[T]>, D: DrawSource<T>>(
    model: &Model<T, S>,
    batch: &Batch<'_, T>,
    cfg: &LossConfig<T>,
    scope: Scope,
    draws: &mut D,
    p_bar: &mut [T],
    work: &mut [T],
    cache: &mut [T],
    grads: &mut [T],
) -> Result<LossParts<T>, LossError> {
    let s = *model.shape();
    let (d, m, k) = (s.input, s.latent, s.clusters);
    let bsz = batch_rows(batch, d, k)?;
    if scope != Scope::SegmenterOnly && !model.has_decoder() {
        return Err(LossError::Infer(InferError::NoDecoder));
    }
    let range = s.scope_range(scope);
    if work.len() < s.work_len()
        || cache.len() < cache_len(&s, bsz)
        || grads.len() != range.len()
        || p_bar.len() != k
    {
        return Err(LossError::BufferLength);
    }
    let row = cache_row(&s);
    let lay = WorkLayout::of(&s);
    let bf = T::of(bsz as f64);
    let mut parts = LossParts::<T>::default();
    grads.fill(T::zero());

    // Sweep 1: encode, draw, segment; keep z, p, w, dw/dkappa per row.
    for i in 0..bsz {
        let x = &batch.inputs[i * d..(i + 1) * d];
        let enc = model.encode_into(x, work)?;
        let r = &mut cache[i * row..(i + 1) * row];
        let (z, r) = r.split_at_mut(m);
        let (da, r) = r.split_at_mut(k);
        // The cluster terms accumulate into `da`: start from zero, not from the last call.
        da.fill(T::zero());
        let (p, r) = r.split_at_mut(k);
        let mu = &work[lay.mu..lay.mu + m];
        let draw = if scope == Scope::SegmenterOnly {
            z.copy_from_slice(mu);
            Draw {
                w: T::one(),
                dw_dkappa: T::zero(),
            }
        } else {
            draws.draw(s.posterior, mu, enc.kappa, z)?
        };
        r[0] = draw.w;
        r[1] = draw.dw_dkappa;
        let (front, back) = work.split_at_mut(lay.logp);
        let logits = &mut back[..k];
        let input = match cfg.cluster_input {
            ClusterInput::Mean => &front[lay.mu..lay.mu + m],
            ClusterInput::Draw => &*z,
        };
        model.segmenter_logits(input, logits)?;
        softmax_from_logits(logits, p);
    }

    cluster_terms(cache, &s, bsz, batch, cfg, p_bar, &mut parts);

    // Sweep 2: recompute each row's encoder, back-propagate everything.
    let so = s.segmenter_offset();
    let seg = model.segmenter_params();
    let kappa_s = seg[k * m].fast_exp();
    for i in 0..bsz {
        let x = &batch.inputs[i * d..(i + 1) * d];
        let enc = model.encode_into(x, work)?;
        let r = &cache[i * row..(i + 1) * row];
        let (z, da, w, dwdk) = (&r[..m], &r[m..m + k], r[m + 2 * k], r[m + 2 * k + 1]);
        work[lay.z..lay.z + m].copy_from_slice(z);
        work[lay.gz..lay.gz + m].fill(T::zero());
        if scope != Scope::SegmenterOnly {
            parts.recon +=
                reconstruction_backward(model, x, scope, bsz, cfg, work, grads, range.start);
        }
        let on_mean = cfg.cluster_input == ClusterInput::Mean;
        if scope == Scope::SegmenterOnly || !on_mean {
            // z is the draw (or mu itself when no draw is made).
            let gz = &mut work[lay.gz..lay.gz + m];
            segmenter_backward(seg, so, z, da, kappa_s, grads, range.start, Some(gz));
        }
        if scope == Scope::SegmenterOnly {
            continue;
        }
        // Through the reparameterisation: dL/dmu (unit vector) and dL/dw.
        let (front, back) = work.split_at_mut(lay.gmu);
        let gmu = &mut back[..m];
        gmu.fill(T::zero());
        let dldw = reflect_backward(
            &front[lay.mu..lay.mu + m],
            &front[lay.z..lay.z + m],
            w,
            &front[lay.gz..lay.gz + m],
            gmu,
        );
        if on_mean {
            let mu = &front[lay.mu..lay.mu + m];
            segmenter_backward(seg, so, mu, da, kappa_s, grads, range.start, Some(gmu));
        }
        parts.kl += s.posterior.kl_to_uniform(m, enc.kappa) / bf;
        let dkappa = dldw * dwdk + cfg.beta * s.posterior.dkl_dkappa(m, enc.kappa) / bf;
        let dpre = if enc.clamped {
            T::zero()
        } else {
            dkappa * sigmoid(enc.pre)
        };
        encoder_backward(model, &enc, dpre, work, grads, range.start);
    }

    parts.total = parts.recon
        + cfg.beta * parts.kl
        + cfg.gamma
            * (parts.consistency + cfg.entropy * parts.entropy - cfg.eta * parts.balance
                + parts.supervised);
    check_finite(&parts, grads)?;
    p_bar.copy_from_slice(&cache[bsz * row..bsz * row + k]);
    Ok(parts)
}

/// The cluster loss of a batch of latent mean directions and its gradient with respect
/// to the segmenter parameters only, for a segmenter adapted on a frozen encoder
/// ([`crate::adapt::SegmenterAdapter`]): `batch.inputs` holds `B` rows of `M` values
/// (`mu(x_i)`, as [`crate::model::Model::encode`] gives them), `seg` the segmenter
/// parameters ([`Shape::segmenter_len`] values), `grads` receives the gradient (same
/// length, overwritten). Equal to [`loss_and_grad`] with [`Scope::SegmenterOnly`] on
/// inputs whose encodings are these rows, without running the encoder.
///
/// `p_bar`, `cache` ([`cache_len`] for `B` rows) and the error behaviour are as in
/// [`loss_and_grad`]. Cost: `B (3 K M + 6 K)` multiply-adds plus `B K` exponentials.
pub fn segmenter_loss_and_grad<T: Real>(
    shape: &Shape,
    seg: &[T],
    batch: &Batch<'_, T>,
    cfg: &LossConfig<T>,
    p_bar: &mut [T],
    cache: &mut [T],
    grads: &mut [T],
) -> Result<LossParts<T>, LossError> {
    let s = *shape;
    let (m, k) = (s.latent, s.clusters);
    let bsz = batch_rows(batch, m, k)?;
    if !batch.inputs.iter().all(|v| v.is_finite()) {
        return Err(LossError::Infer(crate::model::InferError::NonFiniteInput));
    }
    if seg.len() != s.segmenter_len()
        || cache.len() < cache_len(&s, bsz)
        || grads.len() != s.segmenter_len()
        || p_bar.len() != k
    {
        return Err(LossError::BufferLength);
    }
    let row = cache_row(&s);
    let mut parts = LossParts::<T>::default();
    grads.fill(T::zero());
    for i in 0..bsz {
        let mu = &batch.inputs[i * m..(i + 1) * m];
        let r = &mut cache[i * row..(i + 1) * row];
        let (z, r) = r.split_at_mut(m);
        let (da, r) = r.split_at_mut(k);
        let (p, _) = r.split_at_mut(k);
        z.copy_from_slice(mu);
        // The logits go through `da`, which the cluster terms then overwrite from zero.
        segmenter_logits(seg, m, k, mu, da)?;
        softmax_from_logits(da, p);
        da.fill(T::zero());
    }
    cluster_terms(cache, &s, bsz, batch, cfg, p_bar, &mut parts);
    let kappa_s = seg[k * m].fast_exp();
    let so = s.segmenter_offset();
    for i in 0..bsz {
        let r = &cache[i * row..(i + 1) * row];
        let (z, da) = (&r[..m], &r[m..m + k]);
        // dL/dz is not needed: the encoder is frozen.
        segmenter_backward(seg, so, z, da, kappa_s, grads, so, None);
    }
    parts.total = cfg.gamma
        * (parts.consistency + cfg.entropy * parts.entropy - cfg.eta * parts.balance
            + parts.supervised);
    check_finite(&parts, grads)?;
    p_bar.copy_from_slice(&cache[bsz * row..bsz * row + k]);
    Ok(parts)
}

/// Rows of `batch` (inputs of `width` values each), checking the labels (`< k`) and the
/// pair indices against them.
fn batch_rows<T>(batch: &Batch<'_, T>, width: usize, k: usize) -> Result<usize, LossError> {
    let bsz = batch.inputs.len() / width;
    if bsz == 0 || !batch.inputs.len().is_multiple_of(width) || bsz > u16::MAX as usize {
        return Err(LossError::BadBatch);
    }
    if !(batch.labels.is_empty() || batch.labels.len() == bsz)
        || batch.labels.iter().flatten().any(|&y| y as usize >= k)
        || batch
            .pairs
            .iter()
            .any(|&(i, j)| i as usize >= bsz || j as usize >= bsz)
    {
        return Err(LossError::BadBatch);
    }
    Ok(bsz)
}

/// `NonFinite` unless every loss part and every gradient value is finite.
fn check_finite<T: Real>(parts: &LossParts<T>, grads: &[T]) -> Result<(), LossError> {
    let finite = [
        parts.total,
        parts.recon,
        parts.kl,
        parts.consistency,
        parts.entropy,
        parts.balance,
        parts.supervised,
    ]
    .iter()
    .all(|v| v.is_finite());
    if !finite || !grads.iter().all(|v| v.is_finite()) {
        return Err(LossError::NonFinite);
    }
    Ok(())
}

/// The cluster terms of a batch whose rows' probabilities `p_i` are in the cache (one
/// [`cache_row`] per row: `z`, `da`, `p`, ...): adds their values to `parts` and writes
/// `dL/da_i` (the gradient with respect to row `i`'s segmenter logits) into the `da`
/// slots, and the new moving marginal after the rows. Shared by [`loss_and_grad`] and
/// [`segmenter_loss_and_grad`].
fn cluster_terms<T: Real>(
    cache: &mut [T],
    s: &Shape,
    bsz: usize,
    batch: &Batch<'_, T>,
    cfg: &LossConfig<T>,
    p_bar: &[T],
    parts: &mut LossParts<T>,
) {
    let (m, k) = (s.latent, s.clusters);
    let row = cache_row(s);
    let bf = T::of(bsz as f64);
    let g = cfg.gamma;
    let t = tiny::<T>();
    if !batch.pairs.is_empty() {
        let np = T::of(batch.pairs.len() as f64);
        for &(i, j) in batch.pairs {
            let (i, j) = (i as usize, j as usize);
            let sdot = {
                let pi = &cache[i * row + m + k..i * row + m + 2 * k];
                let pj = &cache[j * row + m + k..j * row + m + 2 * k];
                dot(pi, pj).max(t)
            };
            parts.consistency += -sdot.ln() / np;
            let c = -g / (sdot * np);
            for q in 0..k {
                let pj = cache[j * row + m + k + q];
                let pi = cache[i * row + m + k + q];
                cache[i * row + m + q] += c * pj;
                cache[j * row + m + q] += c * pi;
            }
        }
    }
    if cfg.entropy != T::zero() {
        for i in 0..bsz {
            let (da, p) = cache[i * row + m..i * row + m + 2 * k].split_at_mut(k);
            let mut h = T::zero();
            for q in 0..k {
                let lp = p[q].max(t).ln();
                h -= p[q] * lp;
                da[q] -= g * cfg.entropy * (lp + T::one()) / bf;
            }
            parts.entropy += h / bf;
        }
    }
    let rho = cfg.balance_momentum;
    // p_bar_new = rho p_bar + (1 - rho) mean_i p_i, staged after the rows in the cache.
    {
        let (rows, pb) = cache.split_at_mut(bsz * row);
        let pb = &mut pb[..k];
        for q in 0..k {
            pb[q] = if rho == T::zero() {
                T::zero()
            } else {
                rho * p_bar[q]
            };
        }
        for i in 0..bsz {
            for q in 0..k {
                pb[q] += (T::one() - rho) * rows[i * row + m + k + q] / bf;
            }
        }
        let mut h = T::zero();
        for &v in pb.iter() {
            h -= v * v.max(t).ln();
        }
        parts.balance = h;
        if cfg.eta != T::zero() {
            for i in 0..bsz {
                for q in 0..k {
                    let lp = pb[q].max(t).ln();
                    rows[i * row + m + q] += g * cfg.eta * (T::one() - rho) / bf * (lp + T::one());
                }
            }
        }
    }
    // Softmax Jacobian: da_q = p_q (g_q - sum_r p_r g_r); then cross-entropy in logits.
    let n_lab = batch.labels.iter().flatten().count();
    for i in 0..bsz {
        let (da, p) = cache[i * row + m..i * row + m + 2 * k].split_at_mut(k);
        let mean = dot(da, p);
        for q in 0..k {
            da[q] = p[q] * (da[q] - mean);
        }
        if let Some(Some(y)) = batch.labels.get(i) {
            let nl = T::of(n_lab as f64);
            let y = *y as usize;
            parts.supervised -= p[y].max(t).ln() / nl;
            for q in 0..k {
                let onehot = if q == y { T::one() } else { T::zero() };
                da[q] += g * (p[q] - onehot) / nl;
            }
        }
    }
}

/// Gradient slice for parameters `offset..offset + len` within a scope starting at
/// `start`, or `None` when those parameters are outside the scope (frozen).
fn gslot<T>(grads: &mut [T], start: usize, offset: usize, len: usize) -> Option<&mut [T]> {
    let a = offset.checked_sub(start)?;
    grads.get_mut(a..a + len)
}

/// Decoder forward from `work.z`, the reconstruction loss of one row (returned, already
/// divided by `B`), and its backward pass: decoder gradients (if in scope) and
/// `dL/dz` added into `work.gz`.
#[allow(clippy::too_many_arguments)]
fn reconstruction_backward<T: Real, S: AsRef<[T]>>(
    model: &Model<T, S>,
    x: &[T],
    scope: Scope,
    bsz: usize,
    cfg: &LossConfig<T>,
    work: &mut [T],
    grads: &mut [T],
    start: usize,
) -> T {
    let s = *model.shape();
    let lay = WorkLayout::of(&s);
    let d = s.input;
    let bf = T::of(bsz as f64);
    if model.decoder_forward(work).is_err() {
        // Unreachable with a validated shape and workspace; a non-finite loss makes the
        // step fail without changing anything.
        return T::zero() / T::zero();
    }
    let mut loss = T::zero();
    // dL/dxhat into ga.
    for q in 0..d {
        let a = work[lay.xhat + q];
        let (l, gq) = match s.likelihood {
            Likelihood::Gaussian => {
                let e = a - work[lay.xn + q];
                let s2 = cfg.sigma * cfg.sigma;
                (e * e / (s2 + s2), e / s2)
            }
            // -ln Bernoulli(x | sigmoid(a)) = softplus(a) - x a
            Likelihood::Bernoulli => (softplus(a) - x[q] * a, sigmoid(a) - x[q]),
        };
        loss += l;
        work[lay.ga + q] = gq / bf;
    }
    let p = model.params();
    let train_decoder = scope == Scope::Full;
    // Offsets of each decoder layer, walked backwards.
    let mut offs = [0usize; crate::shape::MAX_HIDDEN + 1];
    let mut off = s.decoder_offset();
    for (layer, o) in offs.iter_mut().enumerate().take(s.depth() + 1) {
        *o = off;
        let (no, ni) = s.decoder_layer(layer);
        off += no * ni + no;
    }
    // Activation offsets within the dec region: layer l's output starts at act[l].
    let mut act = [0usize; crate::shape::MAX_HIDDEN + 1];
    for layer in 1..=s.depth() {
        act[layer] = act[layer - 1] + s.decoder_layer(layer - 1).0;
    }
    let mut cur_is_a = true; // the upstream gradient lives in ga (true) or gb
    for layer in (0..=s.depth()).rev() {
        let (no, ni) = s.decoder_layer(layer);
        let w = &p[offs[layer]..offs[layer] + no * ni];
        let (front, back) = work.split_at_mut(lay.ga);
        let (ga, back) = back.split_at_mut(lay.gb - lay.ga);
        let (gb, back) = back.split_at_mut(lay.gz - lay.gb);
        let gz = &mut back[..s.latent];
        let (dy, dx_buf) = if cur_is_a {
            (&mut ga[..no], &mut gb[..])
        } else {
            (&mut gb[..no], &mut ga[..])
        };
        if layer < s.depth() {
            let y = &front[lay.dec + act[layer]..lay.dec + act[layer] + no];
            s.activation.backward(y, dy);
        }
        let input = if layer == 0 {
            &front[lay.z..lay.z + s.latent]
        } else {
            &front[lay.dec + act[layer - 1]..lay.dec + act[layer - 1] + ni]
        };
        let pg = if train_decoder {
            let g = gslot(grads, start, offs[layer], no * ni + no);
            g.map(|g| g.split_at_mut(no * ni))
        } else {
            None
        };
        if layer == 0 {
            // dL/dz from the decoder: accumulate into gz via dx_buf then add.
            dense_backward(w, input, dy, pg, Some(&mut dx_buf[..ni]));
            for (a, &b) in gz.iter_mut().zip(dx_buf.iter()) {
                *a += b;
            }
        } else {
            dense_backward(w, input, dy, pg, Some(&mut dx_buf[..ni]));
        }
        cur_is_a = !cur_is_a;
    }
    loss / bf
}

/// Segmenter backward for one row: `da = dL/dlogits`, logits `a_c = kappa_s ĉ_c . z +
/// ln pi_c`. Adds the segmenter gradients and `dL/dz` (into `gz`).
/// Backward through the segmenter logits of one row: adds `dL/dparams` of the segmenter
/// `seg` (at absolute offset `so` of the parameter vector, for a gradient over a scope
/// starting at `start`) and, if asked, `dL/dz` into `gz`, given `dL/da` in `da`.
#[allow(clippy::too_many_arguments)]
fn segmenter_backward<T: Real>(
    seg: &[T],
    so: usize,
    z: &[T],
    da: &[T],
    kappa_s: T,
    grads: &mut [T],
    start: usize,
    mut gz: Option<&mut [T]>,
) {
    let (m, k) = (z.len(), da.len());
    let p = seg;
    let mut dlogk = T::zero();
    for c in 0..k {
        let ck = &p[c * m..(c + 1) * m];
        // The forward pass has checked every centre's norm.
        let inv = inv_norm(ck).unwrap_or(T::zero());
        let cos = dot(ck, z) * inv;
        dlogk += da[c] * kappa_s * cos;
        // d cos / d c = (z - ĉ cos) / ||c||; d cos / d z = ĉ.
        if let Some(gc) = gslot(grads, start, so + c * m, m) {
            for q in 0..m {
                gc[q] += da[c] * kappa_s * (z[q] - ck[q] * inv * cos) * inv;
            }
        }
        if let Some(gz) = gz.as_deref_mut() {
            for q in 0..m {
                gz[q] += da[c] * kappa_s * ck[q] * inv;
            }
        }
    }
    if let Some(g) = gslot(grads, start, so + k * m, 1 + k) {
        g[0] += dlogk;
        for c in 0..k {
            g[1 + c] += da[c];
        }
    }
}

/// Encoder backward for one row, given `dL/dmu` in `work.gmu` and `dL/d(kappa
/// pre-activation)` as `dpre`. Adds the encoder's gradients.
fn encoder_backward<T: Real, S: AsRef<[T]>>(
    model: &Model<T, S>,
    enc: &crate::model::EncoderOut<T>,
    dpre: T,
    work: &mut [T],
    grads: &mut [T],
    start: usize,
) {
    let s = *model.shape();
    let lay = WorkLayout::of(&s);
    let m = s.latent;
    let p = model.params();
    let (front, back) = work.split_at_mut(lay.ga);
    let (ga, back) = back.split_at_mut(lay.gb - lay.ga);
    let (gb, back) = back.split_at_mut(lay.gz - lay.gb);
    let gmu = &back[lay.gmu - lay.gz..lay.gmu - lay.gz + m];
    let mu = &front[lay.mu..lay.mu + m];
    // mu = m / ||m||: dL/dm = (g - mu (mu . g)) / ||m||, into ga.
    let proj = dot(mu, gmu);
    for q in 0..m {
        ga[q] = (gmu[q] - mu[q] * proj) / enc.norm;
    }
    // Layer offsets and activation offsets.
    let mut offs = [0usize; crate::shape::MAX_HIDDEN];
    let mut act = [0usize; crate::shape::MAX_HIDDEN + 1];
    let mut off = s.encoder_offset();
    for layer in 0..s.depth() {
        offs[layer] = off;
        let (o, i) = s.encoder_layer(layer);
        off += o * i + o;
        act[layer + 1] = act[layer] + o;
    }
    let hl = s.last_hidden();
    let h = &front[lay.enc + act[s.depth()] - hl..lay.enc + act[s.depth()]];
    // Direction head: y = Wmu h + bmu; dL/dh into gb.
    let wmu = &p[off..off + m * hl];
    let pg = gslot(grads, start, off, m * hl + m).map(|g| g.split_at_mut(m * hl));
    dense_backward(wmu, h, &ga[..m], pg, Some(&mut gb[..hl]));
    off += m * hl + m;
    // Concentration head: pre = wk . h + bk.
    let wk = &p[off..off + hl];
    if let Some(g) = gslot(grads, start, off, hl + 1) {
        for q in 0..hl {
            g[q] += dpre * h[q];
        }
        g[hl] += dpre;
    }
    for q in 0..hl {
        gb[q] += dpre * wk[q];
    }
    // Hidden layers, last to first; the upstream gradient alternates gb -> ga -> gb ...
    let mut cur_is_b = true;
    for layer in (0..s.depth()).rev() {
        let (o, i) = s.encoder_layer(layer);
        let w = &p[offs[layer]..offs[layer] + o * i];
        let (dy, dx_buf) = if cur_is_b {
            (&mut gb[..o], &mut ga[..])
        } else {
            (&mut ga[..o], &mut gb[..])
        };
        let y = &front[lay.enc + act[layer]..lay.enc + act[layer] + o];
        s.activation.backward(y, dy);
        let input = if layer == 0 {
            &front[lay.xn..lay.xn + s.input]
        } else {
            &front[lay.enc + act[layer - 1]..lay.enc + act[layer]]
        };
        let pg = gslot(grads, start, offs[layer], o * i + o).map(|g| g.split_at_mut(o * i));
        let dx = if layer == 0 {
            None
        } else {
            Some(&mut dx_buf[..i])
        };
        dense_backward(w, input, dy, pg, dx);
        cur_is_b = !cur_is_b;
    }
}
