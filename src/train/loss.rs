//! The training loss of one batch and its hand-written gradient.
//!
//! ```text
//! L = mean_i [-ln p(x_i|z_i)] + beta mean_i KL(q(.|x_i) || U) + gamma L_seg
//! L_seg = mean_pairs[-ln(p_i . p_j)]            (consistency: neighbours or noisy copies)
//!       + lambda mean_i H(p_i)                  (low per-sample entropy; 0 by default)
//!       - eta H(p_bar)                          (balance; p_bar a moving average)
//!         or + eta sum_q max(0, ln(f / K) - ln p_bar_q)   (balance floor f > 0)
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

use crate::dist::sphere::{reflect_backward, Draw, SampleError};
use crate::infer::model::{segmenter_logits, softmax_from_logits, InferError, Model, WorkLayout};
use crate::infer::nn::{dense_backward, dot, inv_norm, sigmoid, softplus};
use crate::shape::{Likelihood, Posterior, Scope, Shape};
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
    /// The form of the balance term. `0` (default): the entropy `-eta H(p_bar)`, which
    /// pulls every cluster towards a share of `1 / K`. `f` in `(0, 1]`: a floor, `eta
    /// sum_q max(0, ln(f / K) - ln p_bar_q)`, which only keeps each cluster's share from
    /// falling below `f / K` and leaves the sizes above it free (classes of unequal
    /// sizes).
    pub balance_floor: T,
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
    /// neighbour-consistency setting of docs/design.md#loss, for host-sized batches.
    fn default() -> Self {
        LossConfig {
            beta: T::one(),
            gamma: T::of(2.0),
            eta: T::of(2.0),
            entropy: T::zero(),
            sigma: T::one(),
            balance_momentum: T::zero(),
            balance_floor: T::zero(),
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
    /// The balance reward: the entropy of the moving-average marginal `H(p_bar)`, or
    /// with a balance floor minus its hinge `sum_q max(0, ln(f / K) - ln p_bar_q)`.
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
    /// The [`LossBuffers`] were made for another shape, or for fewer rows than the
    /// batch has; or a buffer of [`segmenter_loss_and_grad`] has the wrong length.
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
        crate::dist::sphere::reflect(mu, z);
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

/// The buffers of a loss pass over one [`Scope`] for batches of up to `rows` rows, as
/// views of one caller-owned slice of [`LossBuffers::storage_len`] scalars, split once
/// when made: the gradient over the scope's parameters, the moving marginal `p_bar`
/// (`K`), the workspace ([`Shape::work_len`]) and the per-row cache ([`cache_len`]).
/// Only [`LossBuffers::new`] makes one, so every view has its length.
#[derive(Debug)]
pub struct LossBuffers<'a, T> {
    shape: Shape,
    scope: Scope,
    rows: usize,
    grads: &'a mut [T],
    p_bar: &'a mut [T],
    work: &'a mut [T],
    cache: &'a mut [T],
}

impl<'a, T> LossBuffers<'a, T> {
    /// Scalars of the storage of buffers for `shape`, `scope` and batches of up to `rows`
    /// rows.
    pub const fn storage_len(shape: &Shape, scope: Scope, rows: usize) -> usize {
        let r = shape.scope_range(scope);
        (r.end - r.start) + shape.clusters + shape.work_len() + cache_len(shape, rows)
    }

    /// Splits `storage` ([`LossBuffers::storage_len`] scalars, any contents) into the
    /// buffers; `None` when its length differs.
    pub fn new(shape: &Shape, scope: Scope, rows: usize, storage: &'a mut [T]) -> Option<Self> {
        if storage.len() != Self::storage_len(shape, scope, rows) {
            return None;
        }
        let (grads, rest) = storage.split_at_mut_checked(shape.scope_range(scope).len())?;
        let (p_bar, rest) = rest.split_at_mut_checked(shape.clusters)?;
        let (work, cache) = rest.split_at_mut_checked(shape.work_len())?;
        Some(LossBuffers {
            shape: *shape,
            scope,
            rows,
            grads,
            p_bar,
            work,
            cache,
        })
    }

    /// The scope the gradient covers.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The gradient of the last successful pass over the scope's parameters
    /// ([`Shape::scope_range`]).
    pub fn grads(&self) -> &[T] {
        self.grads
    }

    /// The moving-average marginal `p_bar` (`K` values): read on entry, replaced by a
    /// successful pass.
    pub fn marginal(&self) -> &[T] {
        self.p_bar
    }

    /// The marginal, to set it before a pass (or put it back after one).
    pub fn marginal_mut(&mut self) -> &mut [T] {
        self.p_bar
    }

    /// The workspace ([`Shape::work_len`] scalars), free between passes.
    pub(crate) fn work_mut(&mut self) -> &mut [T] {
        self.work
    }
}

/// Computes the loss of `batch` and writes its gradient with respect to the parameters
/// of the buffers' scope into their gradient (overwritten).
///
/// The buffers' marginal holds the previous moving-average `p_bar` on entry (ignored
/// when `rho = 0`) and receives the new one, only on success. With
/// [`Scope::SegmenterOnly`] the segmenter is applied to `mu(x)` (no draw, no
/// reconstruction or KL term) and only the cluster terms are formed.
///
/// [`LossError::BufferLength`] when the buffers were made for another shape than the
/// model's or for fewer rows than the batch has. On error nothing but the workspace,
/// the cache and the gradient is written.
pub fn loss_and_grad<T: Real, S: AsRef<[T]>, D: DrawSource<T>>(
    model: &Model<T, S>,
    batch: &Batch<'_, T>,
    cfg: &LossConfig<T>,
    draws: &mut D,
    bufs: &mut LossBuffers<'_, T>,
) -> Result<LossParts<T>, LossError> {
    let s = *model.shape();
    let (d, m, k) = (s.input, s.latent, s.clusters);
    let bsz = batch_rows(batch, d, k)?;
    let scope = bufs.scope;
    if scope != Scope::SegmenterOnly && !model.has_decoder() {
        return Err(LossError::Infer(InferError::NoDecoder));
    }
    if bufs.shape != s || bsz > bufs.rows {
        return Err(LossError::BufferLength);
    }
    let range = s.scope_range(scope);
    let LossBuffers {
        grads,
        p_bar,
        work,
        cache,
        ..
    } = bufs;
    let (grads, p_bar, work, cache) = (&mut **grads, &mut **p_bar, &mut **work, &mut **cache);
    let row = cache_row(&s);
    let lay = WorkLayout::of(&s);
    let bf = T::of(bsz as f64);
    let mut parts = LossParts::<T>::default();
    grads.fill(T::zero());

    // Sweep 1: encode, draw, segment; keep z, p, w, dw/dkappa per row.
    for i in 0..bsz {
        let x = row_of(batch.inputs, d, i)?;
        let enc = model.encode_into(x, work)?;
        let (z, da, p, scalars) = cache_row_mut(cache, row, m, k, i)?;
        // The cluster terms accumulate into `da`: start from zero, not from the last call.
        da.fill(T::zero());
        let mu = work.get(lay.mu..lay.mu + m).ok_or(SHORT)?;
        let draw = if scope == Scope::SegmenterOnly {
            z.copy_from_slice(mu);
            Draw {
                w: T::one(),
                dw_dkappa: T::zero(),
            }
        } else {
            draws.draw(s.posterior, mu, enc.kappa, z)?
        };
        let [w_slot, dwdk_slot] = scalars else {
            return Err(SHORT);
        };
        (*w_slot, *dwdk_slot) = (draw.w, draw.dw_dkappa);
        let (front, back) = work.split_at_mut_checked(lay.logp).ok_or(SHORT)?;
        let logits = back.get_mut(..k).ok_or(SHORT)?;
        let input = match cfg.cluster_input {
            ClusterInput::Mean => front.get(lay.mu..lay.mu + m).ok_or(SHORT)?,
            ClusterInput::Draw => &*z,
        };
        model.segmenter_logits(input, logits)?;
        softmax_from_logits(logits, p);
    }

    cluster_terms(cache, &s, bsz, batch, cfg, p_bar, &mut parts)?;

    // Sweep 2: recompute each row's encoder, back-propagate everything.
    let so = s.segmenter_offset();
    let seg = model.segmenter_params();
    let kappa_s = seg.get(k * m).ok_or(SHORT)?.fast_exp();
    for i in 0..bsz {
        let x = row_of(batch.inputs, d, i)?;
        let enc = model.encode_into(x, work)?;
        let (z, da, _, scalars) = cache_row_mut(cache, row, m, k, i)?;
        let (z, da) = (&*z, &*da);
        let &mut [w, dwdk] = scalars else {
            return Err(SHORT);
        };
        work.get_mut(lay.z..lay.z + m)
            .ok_or(SHORT)?
            .copy_from_slice(z);
        work.get_mut(lay.gz..lay.gz + m)
            .ok_or(SHORT)?
            .fill(T::zero());
        if scope != Scope::SegmenterOnly {
            parts.recon +=
                reconstruction_backward(model, x, scope, bsz, cfg, work, grads, range.start)?;
        }
        let on_mean = cfg.cluster_input == ClusterInput::Mean;
        if scope == Scope::SegmenterOnly || !on_mean {
            // z is the draw (or mu itself when no draw is made).
            let gz = work.get_mut(lay.gz..lay.gz + m).ok_or(SHORT)?;
            segmenter_backward(seg, so, z, da, kappa_s, grads, range.start, Some(gz))?;
        }
        if scope == Scope::SegmenterOnly {
            continue;
        }
        // Through the reparameterisation: dL/dmu (unit vector) and dL/dw.
        let (front, back) = work.split_at_mut_checked(lay.gmu).ok_or(SHORT)?;
        let gmu = back.get_mut(..m).ok_or(SHORT)?;
        gmu.fill(T::zero());
        let mu = front.get(lay.mu..lay.mu + m).ok_or(SHORT)?;
        let dldw = reflect_backward(
            mu,
            front.get(lay.z..lay.z + m).ok_or(SHORT)?,
            w,
            front.get(lay.gz..lay.gz + m).ok_or(SHORT)?,
            gmu,
        );
        if on_mean {
            segmenter_backward(seg, so, mu, da, kappa_s, grads, range.start, Some(gmu))?;
        }
        parts.kl += s.posterior.kl_to_uniform(m, enc.kappa) / bf;
        let dkappa = dldw * dwdk + cfg.beta * s.posterior.dkl_dkappa(m, enc.kappa) / bf;
        let dpre = if enc.clamped {
            T::zero()
        } else {
            dkappa * sigmoid(enc.pre)
        };
        encoder_backward(model, &enc, dpre, work, grads, range.start)?;
    }

    parts.total = parts.recon
        + cfg.beta * parts.kl
        + cfg.gamma
            * (parts.consistency + cfg.entropy * parts.entropy - cfg.eta * parts.balance
                + parts.supervised);
    check_finite(&parts, grads)?;
    copy_over(p_bar, cache.get(bsz * row..bsz * row + k).ok_or(SHORT)?);
    Ok(parts)
}

/// Copies `src` over the start of `dst`, as far as both go: for views whose lengths
/// agree by construction ([`LossBuffers`]), without the panic path of
/// `copy_from_slice` (the compiler cannot see the agreement).
pub(crate) fn copy_over<T: Copy>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s;
    }
}

/// The error of a slice out of range in the training math. The lengths were checked
/// against a validated shape on entry, so it does not happen; checked slicing returns
/// it instead of linking a panic into the firmware (`learn` has no panic site in the
/// core; the firmware's tests check that).
const SHORT: LossError = LossError::BufferLength;

/// Row `i` of `xs` (rows of `width` values).
fn row_of<T>(xs: &[T], width: usize, i: usize) -> Result<&[T], LossError> {
    xs.get(i * width..(i + 1) * width).ok_or(SHORT)
}

/// Row `i` of the cache (one [`cache_row`]): `z` (`M`), `da` (`K`), `p` (`K`) and the
/// two scalars `w`, `dw/dkappa`.
#[allow(clippy::type_complexity)]
fn cache_row_mut<T>(
    cache: &mut [T],
    row: usize,
    m: usize,
    k: usize,
    i: usize,
) -> Result<(&mut [T], &mut [T], &mut [T], &mut [T]), LossError> {
    let r = cache.get_mut(i * row..(i + 1) * row).ok_or(SHORT)?;
    let (z, r) = r.split_at_mut_checked(m).ok_or(SHORT)?;
    let (da, r) = r.split_at_mut_checked(k).ok_or(SHORT)?;
    let (p, scalars) = r.split_at_mut_checked(k).ok_or(SHORT)?;
    Ok((z, da, p, scalars))
}

/// The cluster loss of a batch of latent mean directions and its gradient with respect
/// to the segmenter parameters only, for a segmenter adapted on a frozen encoder
/// ([`crate::train::adapt::SegmenterAdapter`]): `batch.inputs` holds `B` rows of `M` values
/// (`mu(x_i)`, as [`crate::infer::model::Model::encode`] gives them), `seg` the segmenter
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
        return Err(LossError::Infer(
            crate::infer::model::InferError::NonFiniteInput,
        ));
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
        let mu = row_of(batch.inputs, m, i)?;
        let (z, da, p, _) = cache_row_mut(cache, row, m, k, i)?;
        z.copy_from_slice(mu);
        // The logits go through `da`, which the cluster terms then overwrite from zero.
        segmenter_logits(seg, m, k, mu, da)?;
        softmax_from_logits(da, p);
        da.fill(T::zero());
    }
    cluster_terms(cache, &s, bsz, batch, cfg, p_bar, &mut parts)?;
    let kappa_s = seg.get(k * m).ok_or(SHORT)?.fast_exp();
    let so = s.segmenter_offset();
    for i in 0..bsz {
        let (z, da, _, _) = cache_row_mut(cache, row, m, k, i)?;
        // dL/dz is not needed: the encoder is frozen.
        segmenter_backward(seg, so, z, da, kappa_s, grads, so, None)?;
    }
    parts.total = cfg.gamma
        * (parts.consistency + cfg.entropy * parts.entropy - cfg.eta * parts.balance
            + parts.supervised);
    check_finite(&parts, grads)?;
    p_bar.copy_from_slice(cache.get(bsz * row..bsz * row + k).ok_or(SHORT)?);
    Ok(parts)
}

/// Rows of `batch` (inputs of `width` values each), checking the labels (`< k`) and the
/// pair indices against them.
fn batch_rows<T>(batch: &Batch<'_, T>, width: usize, k: usize) -> Result<usize, LossError> {
    let bsz = batch.inputs.len().checked_div(width).unwrap_or(0);
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
) -> Result<(), LossError> {
    let (m, k) = (s.latent, s.clusters);
    let row = cache_row(s);
    let bf = T::of(bsz as f64);
    let g = cfg.gamma;
    let t = tiny::<T>();
    // Checked reads and updates of one cache value (see `SHORT`).
    let at = |cache: &[T], i: usize| cache.get(i).copied().ok_or(SHORT);
    let add = |cache: &mut [T], i: usize, v: T| -> Result<(), LossError> {
        *cache.get_mut(i).ok_or(SHORT)? += v;
        Ok(())
    };
    if !batch.pairs.is_empty() {
        let np = T::of(batch.pairs.len() as f64);
        for &(i, j) in batch.pairs {
            let (i, j) = (i as usize, j as usize);
            let sdot = {
                let pi = cache
                    .get(i * row + m + k..i * row + m + 2 * k)
                    .ok_or(SHORT)?;
                let pj = cache
                    .get(j * row + m + k..j * row + m + 2 * k)
                    .ok_or(SHORT)?;
                dot(pi, pj).max(t)
            };
            parts.consistency += -sdot.ln() / np;
            let c = -g / (sdot * np);
            for q in 0..k {
                let pj = at(cache, j * row + m + k + q)?;
                let pi = at(cache, i * row + m + k + q)?;
                add(cache, i * row + m + q, c * pj)?;
                add(cache, j * row + m + q, c * pi)?;
            }
        }
    }
    if cfg.entropy != T::zero() {
        for i in 0..bsz {
            let (_, da, p, _) = cache_row_mut(cache, row, m, k, i)?;
            let mut h = T::zero();
            for (d, &pq) in da.iter_mut().zip(p.iter()) {
                let lp = pq.max(t).ln();
                h -= pq * lp;
                *d -= g * cfg.entropy * (lp + T::one()) / bf;
            }
            parts.entropy += h / bf;
        }
    }
    let rho = cfg.balance_momentum;
    // p_bar_new = rho p_bar + (1 - rho) mean_i p_i, staged after the rows in the cache.
    {
        let (rows, pb) = cache.split_at_mut_checked(bsz * row).ok_or(SHORT)?;
        let pb = pb.get_mut(..k).ok_or(SHORT)?;
        for (v, &prev) in pb.iter_mut().zip(p_bar) {
            *v = if rho == T::zero() {
                T::zero()
            } else {
                rho * prev
            };
        }
        for i in 0..bsz {
            let (_, _, p, _) = cache_row_mut(rows, row, m, k, i)?;
            for (v, &pq) in pb.iter_mut().zip(p.iter()) {
                *v += (T::one() - rho) * pq / bf;
            }
        }
        // `-balance` and its derivative in `p_bar_q`: the negative entropy (`ln v + 1`)
        // or the hinge (`-1 / v` below the floor, 0 above).
        let floor = cfg.balance_floor;
        let ln_floor = (floor / T::of(k as f64)).max(t).ln();
        let slope = |v: T| {
            if floor == T::zero() {
                v.max(t).ln() + T::one()
            } else if v.max(t).ln() < ln_floor {
                -T::one() / v.max(t)
            } else {
                T::zero()
            }
        };
        let mut h = T::zero();
        for &v in pb.iter() {
            let lv = v.max(t).ln();
            h -= if floor == T::zero() {
                v * lv
            } else {
                (ln_floor - lv).max(T::zero())
            };
        }
        parts.balance = h;
        if cfg.eta != T::zero() {
            for i in 0..bsz {
                let (_, da, _, _) = cache_row_mut(rows, row, m, k, i)?;
                for (d, &v) in da.iter_mut().zip(pb.iter()) {
                    *d += g * cfg.eta * (T::one() - rho) / bf * slope(v);
                }
            }
        }
    }
    // Softmax Jacobian: da_q = p_q (g_q - sum_r p_r g_r); then cross-entropy in logits.
    let n_lab = batch.labels.iter().flatten().count();
    for i in 0..bsz {
        let (_, da, p, _) = cache_row_mut(cache, row, m, k, i)?;
        let mean = dot(da, p);
        for (d, &pq) in da.iter_mut().zip(p.iter()) {
            *d = pq * (*d - mean);
        }
        if let Some(Some(y)) = batch.labels.get(i) {
            let nl = T::of(n_lab as f64);
            let y = *y as usize;
            parts.supervised -= p.get(y).ok_or(SHORT)?.max(t).ln() / nl;
            for (q, (d, &pq)) in da.iter_mut().zip(p.iter()).enumerate() {
                let onehot = if q == y { T::one() } else { T::zero() };
                *d += g * (pq - onehot) / nl;
            }
        }
    }
    Ok(())
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
) -> Result<T, LossError> {
    let s = *model.shape();
    let lay = WorkLayout::of(&s);
    let d = s.input;
    let bf = T::of(bsz as f64);
    model.decoder_forward(work)?;
    let mut loss = T::zero();
    // dL/dxhat into ga.
    let (front, back) = work.split_at_mut_checked(lay.ga).ok_or(SHORT)?;
    let ga = back.get_mut(..d).ok_or(SHORT)?;
    let xhat = front.get(lay.xhat..lay.xhat + d).ok_or(SHORT)?;
    let xn = front.get(lay.xn..lay.xn + d).ok_or(SHORT)?;
    for (((g, &a), &xnq), &xq) in ga.iter_mut().zip(xhat).zip(xn).zip(x) {
        let (l, gq) = match s.likelihood {
            Likelihood::Gaussian => {
                let e = a - xnq;
                let s2 = cfg.sigma * cfg.sigma;
                (e * e / (s2 + s2), e / s2)
            }
            // -ln Bernoulli(x | sigmoid(a)) = softplus(a) - x a
            Likelihood::Bernoulli => (softplus(a) - xq * a, sigmoid(a) - xq),
        };
        loss += l;
        *g = gq / bf;
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
        let prev = *act.get(layer - 1).ok_or(SHORT)?;
        *act.get_mut(layer).ok_or(SHORT)? = prev + s.decoder_layer(layer - 1).0;
    }
    let mut cur_is_a = true; // the upstream gradient lives in ga (true) or gb
    for layer in (0..=s.depth()).rev() {
        let (no, ni) = s.decoder_layer(layer);
        let (off, out_at) = (
            *offs.get(layer).ok_or(SHORT)?,
            *act.get(layer).ok_or(SHORT)?,
        );
        let w = p.get(off..off + no * ni).ok_or(SHORT)?;
        let (front, ga, gb, back) = gradient_regions(work, &lay)?;
        let gz = back.get_mut(..s.latent).ok_or(SHORT)?;
        let (dy, dx_buf) = if cur_is_a { (ga, gb) } else { (gb, ga) };
        let dy = dy.get_mut(..no).ok_or(SHORT)?;
        if layer < s.depth() {
            let y = front
                .get(lay.dec + out_at..lay.dec + out_at + no)
                .ok_or(SHORT)?;
            s.activation.backward(y, dy);
        }
        let input = if layer == 0 {
            front.get(lay.z..lay.z + s.latent)
        } else {
            let in_at = *act.get(layer - 1).ok_or(SHORT)?;
            front.get(lay.dec + in_at..lay.dec + in_at + ni)
        };
        let input = input.ok_or(SHORT)?;
        let pg = if train_decoder {
            let g = gslot(grads, start, off, no * ni + no);
            g.and_then(|g| g.split_at_mut_checked(no * ni))
        } else {
            None
        };
        let dx = dx_buf.get_mut(..ni).ok_or(SHORT)?;
        dense_backward(w, input, dy, pg, Some(&mut *dx));
        if layer == 0 {
            // dL/dz from the decoder: accumulated into gz via dx_buf.
            for (a, &b) in gz.iter_mut().zip(dx.iter()) {
                *a += b;
            }
        }
        cur_is_a = !cur_is_a;
    }
    Ok(loss / bf)
}

/// The gradient regions of the workspace: everything before `ga`, then `ga`, `gb` and
/// everything from `gz` on.
#[allow(clippy::type_complexity)]
fn gradient_regions<'w, T>(
    work: &'w mut [T],
    lay: &WorkLayout,
) -> Result<(&'w [T], &'w mut [T], &'w mut [T], &'w mut [T]), LossError> {
    let (front, back) = work.split_at_mut_checked(lay.ga).ok_or(SHORT)?;
    let (ga, back) = back.split_at_mut_checked(lay.gb - lay.ga).ok_or(SHORT)?;
    let (gb, back) = back.split_at_mut_checked(lay.gz - lay.gb).ok_or(SHORT)?;
    Ok((front, ga, gb, back))
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
) -> Result<(), LossError> {
    let (m, k) = (z.len(), da.len());
    let centres = seg.get(..k * m).ok_or(SHORT)?;
    let mut dlogk = T::zero();
    for (c, (ck, &dac)) in centres.chunks(m.max(1)).zip(da).enumerate() {
        // The forward pass has checked every centre's norm.
        let inv = inv_norm(ck).unwrap_or(T::zero());
        let cos = dot(ck, z) * inv;
        dlogk += dac * kappa_s * cos;
        // d cos / d c = (z - ĉ cos) / ||c||; d cos / d z = ĉ.
        if let Some(gc) = gslot(grads, start, so + c * m, m) {
            for ((g, &zq), &cq) in gc.iter_mut().zip(z).zip(ck) {
                *g += dac * kappa_s * (zq - cq * inv * cos) * inv;
            }
        }
        if let Some(gz) = gz.as_deref_mut() {
            for (g, &cq) in gz.iter_mut().zip(ck) {
                *g += dac * kappa_s * cq * inv;
            }
        }
    }
    if let Some((g0, gw)) = gslot(grads, start, so + k * m, 1 + k).and_then(|g| g.split_first_mut())
    {
        *g0 += dlogk;
        for (g, &dac) in gw.iter_mut().zip(da) {
            *g += dac;
        }
    }
    Ok(())
}

/// Encoder backward for one row, given `dL/dmu` in `work.gmu` and `dL/d(kappa
/// pre-activation)` as `dpre`. Adds the encoder's gradients.
fn encoder_backward<T: Real, S: AsRef<[T]>>(
    model: &Model<T, S>,
    enc: &crate::infer::model::EncoderOut<T>,
    dpre: T,
    work: &mut [T],
    grads: &mut [T],
    start: usize,
) -> Result<(), LossError> {
    let s = *model.shape();
    let lay = WorkLayout::of(&s);
    let m = s.latent;
    let p = model.params();
    let (front, ga, gb, back) = gradient_regions(work, &lay)?;
    let gmu = back
        .get(lay.gmu - lay.gz..lay.gmu - lay.gz + m)
        .ok_or(SHORT)?;
    let mu = front.get(lay.mu..lay.mu + m).ok_or(SHORT)?;
    // mu = m / ||m||: dL/dm = (g - mu (mu . g)) / ||m||, into ga.
    let proj = dot(mu, gmu);
    for ((g, &gq), &mq) in ga.iter_mut().zip(gmu).zip(mu) {
        *g = (gq - mq * proj) / enc.norm;
    }
    // Layer offsets and activation offsets.
    let mut offs = [0usize; crate::shape::MAX_HIDDEN];
    let mut act = [0usize; crate::shape::MAX_HIDDEN + 1];
    let mut off = s.encoder_offset();
    for layer in 0..s.depth() {
        let (o, i) = s.encoder_layer(layer);
        *offs.get_mut(layer).ok_or(SHORT)? = off;
        off += o * i + o;
        let prev = *act.get(layer).ok_or(SHORT)?;
        *act.get_mut(layer + 1).ok_or(SHORT)? = prev + o;
    }
    let hl = s.last_hidden();
    let last = *act.get(s.depth()).ok_or(SHORT)?;
    let h = front
        .get(lay.enc + last - hl..lay.enc + last)
        .ok_or(SHORT)?;
    // Direction head: y = Wmu h + bmu; dL/dh into gb.
    let wmu = p.get(off..off + m * hl).ok_or(SHORT)?;
    let pg = gslot(grads, start, off, m * hl + m).and_then(|g| g.split_at_mut_checked(m * hl));
    let (ga_m, gb_h) = (ga.get(..m).ok_or(SHORT)?, gb.get_mut(..hl).ok_or(SHORT)?);
    dense_backward(wmu, h, ga_m, pg, Some(gb_h));
    off += m * hl + m;
    // Concentration head: pre = wk . h + bk.
    let wk = p.get(off..off + hl).ok_or(SHORT)?;
    if let Some((g, gbias)) =
        gslot(grads, start, off, hl + 1).and_then(|g| g.split_at_mut_checked(hl))
    {
        for (gq, &hq) in g.iter_mut().zip(h) {
            *gq += dpre * hq;
        }
        if let Some(gb0) = gbias.first_mut() {
            *gb0 += dpre;
        }
    }
    for (g, &wq) in gb.iter_mut().zip(wk) {
        *g += dpre * wq;
    }
    // Hidden layers, last to first; the upstream gradient alternates gb -> ga -> gb ...
    let mut cur_is_b = true;
    for layer in (0..s.depth()).rev() {
        let (o, i) = s.encoder_layer(layer);
        let (off, out_at) = (
            *offs.get(layer).ok_or(SHORT)?,
            *act.get(layer).ok_or(SHORT)?,
        );
        let w = p.get(off..off + o * i).ok_or(SHORT)?;
        let (dy, dx_buf) = if cur_is_b {
            (&mut *gb, &mut *ga)
        } else {
            (&mut *ga, &mut *gb)
        };
        let dy = dy.get_mut(..o).ok_or(SHORT)?;
        let y = front
            .get(lay.enc + out_at..lay.enc + out_at + o)
            .ok_or(SHORT)?;
        s.activation.backward(y, dy);
        let input = if layer == 0 {
            front.get(lay.xn..lay.xn + s.input)
        } else {
            let in_at = *act.get(layer - 1).ok_or(SHORT)?;
            front.get(lay.enc + in_at..lay.enc + out_at)
        };
        let input = input.ok_or(SHORT)?;
        let pg = gslot(grads, start, off, o * i + o).and_then(|g| g.split_at_mut_checked(o * i));
        let dx = if layer == 0 {
            None
        } else {
            Some(dx_buf.get_mut(..i).ok_or(SHORT)?)
        };
        dense_backward(w, input, dy, pg, dx);
        cur_is_b = !cur_is_b;
    }
    Ok(())
}
