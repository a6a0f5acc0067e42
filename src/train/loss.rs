//! The training loss of one batch and its hand-written gradient.
//!
//! ```text
//! L = mean_i [-ln p(x_i|z_i)] + beta mean_i KL(q(.|x_i) || U) + gamma L_seg + zeta L_nce
//! L_seg = omega mean_pairs[-ln(p_i . p_j)]      (consistency: neighbours or noisy copies)
//!       + lambda mean_i H(p_i)                  (low per-sample entropy; 0 by default)
//!       - eta H(p_bar)                          (balance; p_bar a moving average)
//!         or + eta KL(p_bar || pi)              (balance towards given shares pi)
//!         or + eta sum_q max(0, ln(f / K) - ln p_bar_q)   (balance floor f > 0)
//!       + mean_labelled[-ln p_{y_i}]            (cross-entropy where a label is given)
//!       + delta mean_i[-ln f(u_i)]              (density; 0 by default)
//! f(u) = sum_c pi_c C_M(kappa_s) exp(kappa_s ĉ_c . u),   pi = softmax(ln pi)
//! L_nce = mean_(i,j)[-u_i . u_j / tau + ln sum_(k != i) exp(u_i . u_k / tau)]
//!                                               (neighbour contrast; 0 by default)
//! ```
//!
//! The neighbour contrast takes every pair both ways (`(i, j)` and `(j, i)`) and the
//! batch's other rows as the negatives of each (InfoNCE on the mean directions `u_i`):
//! it draws neighbours together on the sphere and pushes the rest apart, a neighbour
//! embedding like t-SNE's or UMAP's learnt by the encoder, so that the latent the
//! centres are placed in keeps the neighbourhood graph and not only what
//! reconstructs. It is not scaled by `gamma`: it acts in the warm-up as well. It needs
//! every row's `u_i` at once, kept in the buffers of `LossBuffers::with_batch_kernels`
//! (feature `alloc`).
//!
//! The density term reads the segmenter as a von Mises-Fisher mixture on the sphere
//! (centres `ĉ_c`, one concentration `kappa_s`, mixing weights from its log-weights,
//! normalised here): its responsibilities are exactly the segmenter's `p_i`, so the
//! term is the mixture's negative log-likelihood of the cluster input `u_i` (the
//! VaDE-style prior: cluster shapes from the latent's density rather than the neighbour
//! lists; measured on the host's suite it does not help, docs/benchmarks.md, so it is
//! off by default). `-ln f(u) = -lse_c(a_c) - ln C_M(kappa_s) +
//! lse_c(ln pi_c)` with the logits `a_c`; its gradient is `-p_c` in each logit, `pi_c`
//! in each log-weight and `kappa_s A_M(kappa_s)` in `ln kappa_s`.
//!
//! The balance towards given shares (`pi`, set in the buffers with
//! [`LossBuffers::set_balance_prior`], a host's build) is for a model trained towards
//! targets whose cluster sizes are known and unequal (a Gaussian mixture's partition):
//! the entropy would pull every share towards `1 / K`, away from the targets. Its
//! derivative in `p_bar_q` is `ln p_bar_q + 1 - ln pi_q`, the entropy's shifted per
//! cluster. With the consistency weight `omega` at 0 such a model follows its targets
//! alone (1 by default).
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
use crate::infer::model::{
    copy_over, normalise_into, segmenter_logits, softmax_from_logits, EncoderOut, InferError, Model,
};
use crate::infer::nn::{dense_backward, dot, inv_norm, sigmoid, softplus};
use crate::infer::views::{
    carve, carve_ref, last_hidden, prefix, prefix_mut, Dense, DenseMut, Grads, Params, Work,
};
use crate::kernels::dense_grads_rows;
use crate::kernels::portable::transpose;
use crate::shape::{Likelihood, Posterior, Scope, Shape, MAX_HIDDEN};
use crate::train::optim::{band_rows, OptimConfig, OptimError, OptimState};
use crate::{Activation, Real};

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
    /// Weight `delta` of the density term, the negative log-likelihood of the cluster
    /// input under the segmenter's von Mises-Fisher mixture (0 by default: off).
    pub density: T,
    /// Weight `zeta` of the neighbour-contrast term on the mean directions (0 by default:
    /// off). Not scaled by `gamma`, so it shapes the latent in the warm-up too; without
    /// effect with [`Scope::SegmenterOnly`] (it trains the encoder). Needs the buffers of
    /// `LossBuffers::with_batch_kernels` (a host's build, feature `alloc`).
    pub contrast: T,
    /// Temperature `tau` of the neighbour-contrast term, at least 0.05 (a smaller one
    /// can make the pass fail as not finite in `f32`).
    pub temperature: T,
    /// Weight `omega` of the consistency term within the cluster loss (1 by default; 0
    /// leaves a model with targets to follow them alone).
    pub consistency: T,
}

/// The neighbour contrast's default temperature ([`LossConfig::temperature`]).
pub const CONTRAST_TEMPERATURE: f64 = 1.0;

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
    /// `beta = 1`, `gamma = 2`, `eta = 2`, `lambda = 0`, `sigma = 1`, `rho = 0`,
    /// `omega = 1`: the neighbour-consistency setting of docs/design.md#loss, for
    /// host-sized batches.
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
            density: T::zero(),
            contrast: T::zero(),
            temperature: T::of(CONTRAST_TEMPERATURE),
            consistency: T::one(),
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
    /// `recon + beta kl + gamma (omega consistency + lambda entropy - eta balance +
    /// supervised + delta density) + zeta contrast`.
    pub total: T,
    /// Mean negative log-likelihood (without its constant).
    pub recon: T,
    /// Mean KL to the uniform prior.
    pub kl: T,
    /// Mean `-ln(p_i . p_j)` over the pairs.
    pub consistency: T,
    /// Mean per-sample entropy `H(p_i)`.
    pub entropy: T,
    /// The balance reward: the entropy of the moving-average marginal `H(p_bar)`; with
    /// balance shares `pi` ([`LossBuffers::set_balance_prior`]) `-KL(p_bar || pi)`; or
    /// with a balance floor minus its hinge `sum_q max(0, ln(f / K) - ln p_bar_q)`.
    pub balance: T,
    /// Mean cross-entropy over labelled samples.
    pub supervised: T,
    /// Mean negative log-likelihood of the cluster input under the segmenter's
    /// mixture, `mean_i[-ln f(u_i)]` (0 when its weight is 0).
    pub density: T,
    /// Mean neighbour-contrast loss over the pairs taken both ways (0 when its weight
    /// is 0).
    pub contrast: T,
}

/// Why a loss or gradient could not be formed. Nothing is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LossError {
    /// Empty batch, `inputs.len()` not a multiple of `D`, labels not `B` long, a label
    /// `>= K`, or a pair index `>= B`.
    #[error("malformed batch (sizes, labels or pairs)")]
    BadBatch,
    /// The [`LossBuffers`] were made for another shape, or for fewer rows than the
    /// batch has, or without room for the neighbour contrast that the configuration
    /// turns on ([`LossConfig::contrast`]); or a buffer of [`segmenter_loss_and_grad`]
    /// has the wrong length.
    #[error("a training buffer has the wrong length")]
    BufferLength,
    /// Encoding a sample failed.
    #[error("encoding failed: {0}")]
    Infer(#[from] InferError),
    /// Drawing from the posterior failed.
    #[error("posterior sampling failed: {0}")]
    Sample(#[from] SampleError),
    /// The loss or a gradient is NaN or infinite.
    #[error("loss or gradient is not finite")]
    NonFinite,
    /// Balance shares ([`LossBuffers::set_balance_prior`]) that are not all positive and
    /// finite.
    #[error("balance shares must be positive and finite")]
    BadShares,
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

/// Scalars the neighbour contrast ([`LossConfig::contrast`]) keeps for a batch of
/// `batch` rows: each row's mean direction and the term's gradient in it (`2 M` per
/// row) and the rows' Gram matrix (`batch x batch`), in the buffers of
/// `LossBuffers::with_batch_kernels` (feature `alloc`).
pub const fn contrast_len(shape: &Shape, batch: usize) -> usize {
    (2 * shape.latent + batch) * batch
}

/// Scalars `LossBuffers::with_batch_kernels` (feature `alloc`) keep per batch of `batch`
/// rows for each row's encoder outputs between the two sweeps of a pass: the normalised
/// input (`D`), the hidden activations, the mean direction (`M`), and the concentration,
/// the norm before normalisation, the pre-activation and whether the clamp hit.
pub const fn encoded_len(shape: &Shape, batch: usize) -> usize {
    encoded_row(shape) * batch
}

/// [`encoded_len`] of one row.
const fn encoded_row(shape: &Shape) -> usize {
    shape.input + shape.hidden_sum() + shape.latent + 4
}

/// Keeps row `r`'s encoder outputs (in `work` and `enc`) in `encoded`, when it has room.
fn save_encoded<T: Real>(
    encoded: &mut [T],
    s: &Shape,
    r: usize,
    work: &Work<'_, T>,
    enc: &EncoderOut<T>,
) {
    let kept = row_mut(encoded, encoded_row(s), r);
    let (xn, rest) = kept.split_at_mut(work.xn.len().min(kept.len()));
    let (h, rest) = rest.split_at_mut(work.enc.len().min(rest.len()));
    let (mu, tail) = rest.split_at_mut(work.mu.len().min(rest.len()));
    copy_over(xn, work.xn);
    copy_over(h, work.enc);
    copy_over(mu, work.mu);
    let flag = if enc.clamped { T::one() } else { T::zero() };
    copy_over(tail, &[enc.kappa, enc.norm, enc.pre, flag]);
}

/// Row `r`'s encoder outputs kept by [`save_encoded`], written back into `work`;
/// `None` when `encoded` has none (the row is then encoded again).
fn load_encoded<T: Real>(
    encoded: &[T],
    s: &Shape,
    r: usize,
    work: &mut Work<'_, T>,
) -> Option<EncoderOut<T>> {
    let kept = encoded.get(r * encoded_row(s)..(r + 1) * encoded_row(s))?;
    let (head, tail) = kept.split_at_checked(kept.len().checked_sub(4)?)?;
    let (xn, rest) = head.split_at_checked(work.xn.len())?;
    let (h, mu) = rest.split_at_checked(work.enc.len())?;
    copy_over(work.xn, xn);
    copy_over(work.enc, h);
    copy_over(work.mu, mu);
    let &[kappa, norm, pre, flag] = tail else {
        return None;
    };
    Some(EncoderOut {
        kappa,
        norm,
        pre,
        clamped: flag != T::zero(),
    })
}

/// Smallest probability used inside a logarithm (keeps `ln` finite when a softmax
/// underflows; far below any probability that matters).
fn tiny<T: Real>() -> T {
    T::of(1e-30).max(T::EPS * T::EPS * T::EPS)
}

/// The cache of [`cache_len`] scalars for `rows` rows by quantity, each a column of
/// rows: `z` (`M` per row), `da` and `p` (`K` per row), the draw's `w` and `dw/dkappa`,
/// and the new marginal (`K`).
#[derive(Debug)]
struct Cache<'a, T> {
    z: &'a mut [T],
    da: &'a mut [T],
    p: &'a mut [T],
    draws: &'a mut [[T; 2]],
    p_new: &'a mut [T],
}

impl<'a, T> Cache<'a, T> {
    /// The columns of `cache` (at least [`cache_len`] for `rows` rows).
    fn split(shape: &Shape, rows: usize, cache: &'a mut [T]) -> Self {
        let (m, k) = (shape.latent, shape.clusters);
        let mut rest = cache;
        Cache {
            z: carve(&mut rest, rows * m),
            da: carve(&mut rest, rows * k),
            p: carve(&mut rest, rows * k),
            draws: carve(&mut rest, 2 * rows).as_chunks_mut::<2>().0,
            p_new: carve(&mut rest, k),
        }
    }
}

/// The rows of `s`, `width` values each (at least 1 for a valid shape).
fn rows<T>(s: &[T], width: usize) -> core::slice::ChunksExact<'_, T> {
    s.chunks_exact(width.max(1))
}

/// [`rows`], mutable.
fn rows_mut<T>(s: &mut [T], width: usize) -> core::slice::ChunksExactMut<'_, T> {
    s.chunks_exact_mut(width.max(1))
}

/// Row `i` of `s` (rows of `width`); the batch's row indices are checked on entry
/// ([`batch_rows`]), so it is never past the end (it would be empty).
fn row<T>(s: &[T], width: usize, i: usize) -> &[T] {
    s.get(i * width..(i + 1) * width).unwrap_or_default()
}

/// [`row`], mutable.
fn row_mut<T>(s: &mut [T], width: usize, i: usize) -> &mut [T] {
    s.get_mut(i * width..(i + 1) * width).unwrap_or_default()
}

/// Dense layers of a shape, in the order of their records: the encoder's hidden
/// layers, the direction head, the decoder's hidden layers and its output layer.
const fn layers(s: &Shape) -> usize {
    2 * s.depth() + 2
}

/// `(out, in)` of dense layer `k` ([`layers`]'s order).
const fn layer_dims(s: &Shape, k: usize) -> (usize, usize) {
    let depth = s.depth();
    if k < depth {
        s.encoder_layer(k)
    } else if k == depth {
        (s.latent, s.last_hidden())
    } else {
        s.decoder_layer(k - depth - 1)
    }
}

/// Scalars of the records of the backward pass for `rows` rows: per row and dense layer,
/// its `dy` and its input (`LossBuffers::with_batch_kernels`, with the `alloc` feature).
pub const fn record_len(shape: &Shape, rows: usize) -> usize {
    let (mut n, mut k) = (0, 0);
    while k < layers(shape) {
        let (o, i) = layer_dims(shape, k);
        n += o + i;
        k += 1;
    }
    n * rows
}

/// The records of the backward pass (empty without the batch kernels), at one row.
struct Records<'r, T> {
    store: &'r mut [T],
    shape: Shape,
    rows: usize,
    row: usize,
}

impl<T: Real> Records<'_, T> {
    /// Layer `k`'s records: `rows` of `out + in` values.
    fn layer(&mut self, k: usize) -> Option<&mut [T]> {
        let (mut at, mut j) = (0, 0);
        while j < k {
            let (o, i) = layer_dims(&self.shape, j);
            at += (o + i) * self.rows;
            j += 1;
        }
        let (o, i) = layer_dims(&self.shape, k);
        self.store.get_mut(at..at + (o + i) * self.rows)
    }

    /// The backward pass of dense layer `k` (weights `w`) on this row: the parameter
    /// gradient added into `g` at once, or, with records, `dy` and `x` recorded for
    /// [`Records::flush`]; the input gradient into `dx` when given.
    fn backward(
        &mut self,
        k: usize,
        w: &[T],
        x: &[T],
        dy: &[T],
        g: &mut Option<DenseMut<'_, T>>,
        dx: Option<&mut [T]>,
    ) {
        let row = self.row;
        // Only a host's build makes buffers with records (`alloc`).
        let rec = match g {
            Some(_) if cfg!(feature = "alloc") => self
                .layer(k)
                .and_then(|l| l.chunks_exact_mut(dy.len() + x.len()).nth(row)),
            _ => None,
        };
        match rec {
            Some(rec) => {
                let (rd, rx) = rec.split_at_mut(dy.len());
                copy_over(rd, dy);
                copy_over(rx, x);
                dense_backward(w, x, dy, None, dx);
            }
            None => dense_backward(w, x, dy, g.as_mut().map(DenseMut::both), dx),
        }
    }

    /// The parameter gradients of the first `rows` recorded rows of every layer added
    /// into `g` (nothing without records).
    fn flush(&mut self, rows: usize, g: &mut Grads<'_, T>) {
        if !cfg!(feature = "alloc") {
            return;
        }
        let depth = self.shape.depth();
        for k in 0..layers(&self.shape) {
            let grads = if k < depth {
                g.enc.get_mut(k)
            } else if k == depth {
                Some(&mut g.mu)
            } else if k < 2 * depth + 1 {
                g.dec.get_mut(k - depth - 1)
            } else {
                Some(&mut g.out)
            };
            let (o, i) = layer_dims(&self.shape, k);
            if let (Some(Some(gl)), Some(rec)) = (grads, self.layer(k)) {
                let rec = rec.get(..rows * (o + i)).unwrap_or_default();
                dense_grads_rows(rec, i, gl.w, gl.b);
            }
        }
    }
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
    work: Work<'a, T>,
    cache: Cache<'a, T>,
    /// The parameters with the weights transposed, rewritten by every pass and read by
    /// its forward passes ([`LossBuffers::with_batch_kernels`]); empty otherwise.
    transposed: &'a mut [T],
    /// Each dense layer's rows of the backward pass (`dy` and the layer's input), whose
    /// parameter gradients are summed once the batch is through
    /// ([`LossBuffers::with_batch_kernels`]); empty otherwise.
    records: &'a mut [T],
    /// The gradient flowing down between two blocks of a layer-wise pass, one row of
    /// [`flow_width`] per batch row ([`LossBuffers::layerwise`]); empty otherwise.
    flow: &'a mut [T],
    /// One input row of a layer-wise pass, loaded from its [`Inputs`] (`D` values;
    /// empty otherwise).
    row: &'a mut [T],
    /// Each row's mean direction, the neighbour contrast's gradient in it and the rows'
    /// Gram matrix ([`contrast_len`], [`LossBuffers::with_batch_kernels`]); empty
    /// otherwise.
    contrast: &'a mut [T],
    /// The shares the balance term pulls the marginal towards (`K` values,
    /// [`LossBuffers::set_balance_prior`]; empty in a device's buffers).
    prior: &'a mut [T],
    /// Each row's encoder outputs from a pass's first sweep, read back by its second
    /// instead of encoding the row again ([`encoded_len`],
    /// [`LossBuffers::with_batch_kernels`]); empty otherwise.
    encoded: &'a mut [T],
    /// Whether `prior` holds shares (else the balance is the entropy or the floor).
    prior_set: bool,
    /// The batch mean of `lse_c(a_ic)` of the last [`layerwise_loss`] (the density term's
    /// share that does not go through the logits).
    lse_mean: T,
}

impl<'a, T> LossBuffers<'a, T> {
    /// Scalars of the storage of buffers for `shape`, `scope` and batches of up to `rows`
    /// rows.
    pub const fn storage_len(shape: &Shape, scope: Scope, rows: usize) -> usize {
        let r = shape.scope_range(scope);
        (r.end - r.start) + shape.clusters + shape.work_len() + cache_len(shape, rows)
    }

    /// Scalars of the storage of [`LossBuffers::with_batch_kernels`] (`alloc`): those of
    /// [`LossBuffers::storage_len`], a copy of the parameters ([`Shape::param_len`]),
    /// [`record_len`], [`contrast_len`] and [`encoded_len`] for `rows` rows, and `K`
    /// balance shares.
    #[cfg(feature = "alloc")]
    pub const fn storage_len_batch_kernels(shape: &Shape, scope: Scope, rows: usize) -> usize {
        Self::storage_len(shape, scope, rows)
            + shape.param_len()
            + record_len(shape, rows)
            + contrast_len(shape, rows)
            + encoded_len(shape, rows)
            + shape.clusters
    }

    /// Splits `storage` ([`LossBuffers::storage_len`] scalars, any contents) into the
    /// buffers; `None` when its length differs.
    pub fn new(shape: &Shape, scope: Scope, rows: usize, storage: &'a mut [T]) -> Option<Self>
    where
        T: Real,
    {
        if storage.len() != Self::storage_len(shape, scope, rows) {
            return None;
        }
        let grads = shape.scope_range(scope).len();
        Self::split(
            shape,
            (scope, grads),
            rows,
            storage,
            (&mut [], &mut [], &mut []),
        )
    }

    /// Scalars of the storage of [`LossBuffers::layerwise`]: [`LossBuffers::storage_len`]
    /// with, in place of the gradient over the scope, the largest block's
    /// ([`block_len`]), a row of [`flow_width`] per batch row and one input row (`D`).
    pub const fn storage_len_layerwise(shape: &Shape, scope: Scope, rows: usize) -> usize {
        let r = shape.scope_range(scope);
        Self::storage_len(shape, scope, rows) - (r.end - r.start)
            + block_len(shape)
            + rows * flow_width(shape)
            + shape.input
    }

    /// The buffers of a layer-wise pass ([`layerwise_loss`], then [`layerwise_update`]):
    /// no gradient over the whole scope, but one of the largest block ([`block_len`]),
    /// which each block's gradient fills in turn, and the gradient flowing down between
    /// blocks, per row. `storage` has [`LossBuffers::storage_len_layerwise`] scalars
    /// (any contents); `None` when its length differs, or for
    /// [`Scope::SegmenterOnly`] (no network to go down).
    pub fn layerwise(shape: &Shape, scope: Scope, rows: usize, storage: &'a mut [T]) -> Option<Self>
    where
        T: Real,
    {
        if scope == Scope::SegmenterOnly
            || storage.len() != Self::storage_len_layerwise(shape, scope, rows)
        {
            return None;
        }
        let mut rest = storage;
        let plain_len = Self::storage_len_layerwise(shape, scope, rows)
            - rows * flow_width(shape)
            - shape.input;
        let plain = carve(&mut rest, plain_len);
        let flow = carve(&mut rest, rows * flow_width(shape));
        let mut b = Self::split(
            shape,
            (scope, block_len(shape)),
            rows,
            plain,
            (&mut [], &mut [], flow),
        )?;
        b.row = rest;
        Some(b)
    }

    /// [`LossBuffers::new`] with room for the batch kernels (feature `alloc`: a host's
    /// build; a device's links none of their code), which give the same loss and
    /// gradient bit for bit and run faster on a host with vector units (they cost
    /// [`Shape::param_len`] + [`record_len`] + [`contrast_len`] scalars more): a copy of
    /// the parameters in which every dense layer's weights are transposed (`in x out`),
    /// made at the start of each pass of a model with its decoder and read by its forward
    /// passes ([`crate::kernels::dense_forward_t`]: each layer's outputs summed side by
    /// side);
    /// and each dense layer's rows of the backward pass, whose parameter gradients are
    /// summed once the batch is through ([`crate::kernels::dense_grads_rows`]: each
    /// gradient value loaded and stored once per batch, not once per row); and each
    /// row's encoder outputs, which the backward sweep reads back where the plain
    /// buffers encode the row a second time ([`encoded_len`]). They also
    /// hold what the neighbour contrast needs ([`LossConfig::contrast`]) and room for
    /// balance shares ([`LossBuffers::set_balance_prior`]). `storage` has
    /// [`LossBuffers::storage_len_batch_kernels`] scalars.
    #[cfg(feature = "alloc")]
    pub fn with_batch_kernels(
        shape: &Shape,
        scope: Scope,
        rows: usize,
        storage: &'a mut [T],
    ) -> Option<Self>
    where
        T: Real,
    {
        if storage.len() != Self::storage_len_batch_kernels(shape, scope, rows) {
            return None;
        }
        let mut rest = storage;
        let plain = carve(&mut rest, Self::storage_len(shape, scope, rows));
        let transposed = carve(&mut rest, shape.param_len());
        let records = carve(&mut rest, record_len(shape, rows));
        let prior = carve(&mut rest, shape.clusters);
        let encoded = carve(&mut rest, encoded_len(shape, rows));
        let grads = shape.scope_range(scope).len();
        let mut b = Self::split(
            shape,
            (scope, grads),
            rows,
            plain,
            (transposed, records, &mut []),
        )?;
        b.contrast = rest;
        b.prior = prior;
        b.encoded = encoded;
        Some(b)
    }

    /// The views of `storage` (a gradient of `grads` scalars, the marginal, the
    /// workspace and the cache), `transposed`, `records` and `flow`.
    #[allow(clippy::type_complexity)]
    fn split(
        shape: &Shape,
        (scope, grads): (Scope, usize),
        rows: usize,
        storage: &'a mut [T],
        (transposed, records, flow): (&'a mut [T], &'a mut [T], &'a mut [T]),
    ) -> Option<Self>
    where
        T: Real,
    {
        let mut rest = storage;
        let grads = carve(&mut rest, grads);
        let p_bar = carve(&mut rest, shape.clusters);
        let work = shape.work(carve(&mut rest, shape.work_len()))?;
        Some(LossBuffers {
            shape: *shape,
            scope,
            rows,
            grads,
            p_bar,
            work,
            cache: Cache::split(shape, rows, rest),
            transposed,
            records,
            flow,
            row: &mut [],
            contrast: &mut [],
            prior: &mut [],
            encoded: &mut [],
            prior_set: false,
            lse_mean: T::zero(),
        })
    }

    /// The scope the gradient covers.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The gradient of the last successful pass over the scope's parameters
    /// ([`Shape::scope_range`]); for layer-wise buffers ([`LossBuffers::layerwise`]),
    /// the block buffer, which holds the last block's gradient at its start.
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

    /// Makes the balance term pull the marginal towards the shares `pi` (`K` positive,
    /// finite values, stored normalised to sum to 1): `eta KL(p_bar || pi)` in place of
    /// the entropy (with [`LossConfig::balance_floor`] 0). [`LossError::BufferLength`]
    /// when the buffers have no room for them (only those of
    /// `LossBuffers::with_batch_kernels`, feature `alloc`, do) or `pi` is not `K` long,
    /// [`LossError::BadShares`] when a share is not positive and finite; the buffers
    /// are then unchanged.
    pub fn set_balance_prior(&mut self, pi: &[T]) -> Result<(), LossError>
    where
        T: Real,
    {
        if pi.len() != self.prior.len() || pi.len() != self.shape.clusters {
            return Err(LossError::BufferLength);
        }
        if !pi.iter().all(|&v| v.is_finite() && v > T::zero()) {
            return Err(LossError::BadShares);
        }
        let sum = pi.iter().fold(T::zero(), |a, &v| a + v);
        for (p, &v) in self.prior.iter_mut().zip(pi) {
            *p = v / sum;
        }
        self.prior_set = true;
        Ok(())
    }

    /// The shares the balance term pulls the marginal towards, when set.
    pub fn balance_prior(&self) -> Option<&[T]> {
        self.prior_set.then_some(&*self.prior)
    }

    /// The gradient (or block) buffer and the workspace, both free between passes.
    pub(crate) fn grads_and_work(&mut self) -> (&mut [T], &mut Work<'a, T>) {
        (&mut *self.grads, &mut self.work)
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
    let contrast_on = cfg.contrast != T::zero() && scope != Scope::SegmenterOnly;
    if bufs.shape != s
        || bsz > bufs.rows
        || !bufs.flow.is_empty()
        || (contrast_on && bufs.contrast.len() < contrast_len(&s, bsz))
    {
        return Err(LossError::BufferLength);
    }
    let bufs_rows = bufs.rows;
    let LossBuffers {
        grads,
        p_bar,
        work,
        cache,
        transposed,
        records,
        contrast,
        prior,
        prior_set,
        encoded,
        ..
    } = bufs;
    // Only a host's build keeps the encoder outputs between the sweeps (`alloc`).
    let encoded: &mut [T] = if cfg!(feature = "alloc") {
        encoded
    } else {
        &mut []
    };
    let mut rest = &mut contrast[..];
    let (dirs, gdirs) = if contrast_on {
        (carve(&mut rest, bsz * m), carve(&mut rest, bsz * m))
    } else {
        (&mut [][..], &mut [][..])
    };
    let gram = rest;
    let p = model.views();
    // What the forward passes read: the transposed copy when the buffers have one (the
    // same bits), else the parameters themselves.
    // Only a host's build makes buffers with the copy (`alloc`).
    let pt = match scope {
        _ if !cfg!(feature = "alloc") => None,
        Scope::SegmenterOnly => None,
        _ => model.transposed_views(transposed),
    };
    let pt = pt.as_ref();
    let bf = T::of(bsz as f64);
    let mut parts = LossParts::<T>::default();
    let mut lse_sum = T::zero();
    grads.fill(T::zero());

    // Sweep 1: encode, draw, segment; keep z, p, w, dw/dkappa per row.
    let cached = rows_mut(cache.z, m)
        .zip(rows_mut(cache.da, k))
        .zip(rows_mut(cache.p, k))
        .zip(cache.draws.iter_mut());
    for (r, (x, (((z, da), pr), slots))) in rows(batch.inputs, d).zip(cached).enumerate() {
        let enc = encode(model, (&p, pt), x, work)?;
        save_encoded(encoded, &s, r, work, &enc);
        if let Some(u) = dirs.get_mut(r * m..(r + 1) * m) {
            copy_over(u, work.mu);
        }
        // The cluster terms accumulate into `da`: start from zero, not from the last call.
        da.fill(T::zero());
        let draw = if scope == Scope::SegmenterOnly {
            copy_over(z, work.mu);
            Draw {
                w: T::one(),
                dw_dkappa: T::zero(),
            }
        } else {
            draws.draw(s.posterior, work.mu, enc.kappa, z)?
        };
        *slots = [draw.w, draw.dw_dkappa];
        let input: &[T] = match cfg.cluster_input {
            ClusterInput::Mean => work.mu,
            ClusterInput::Draw => z,
        };
        segmenter_logits(p.seg, m, k, input, work.logp)?;
        let a0 = work.logp.first().copied().unwrap_or(T::zero());
        softmax_from_logits(work.logp, pr);
        // lse_c(a_c) = a_0 - ln p_0 (the logits are now log-probabilities).
        lse_sum += a0 - work.logp.first().copied().unwrap_or(T::zero());
    }

    let prior = prior_set.then_some(&**prior);
    cluster_terms(cache, &s, bsz, batch, cfg, (p_bar, prior), &mut parts);
    if contrast_on {
        parts.contrast = contrast_terms(dirs, gdirs, gram, m, batch.pairs, cfg.temperature);
    }

    // Sweep 2: recompute each row's encoder, back-propagate everything.
    let kappa_s = p.log_kappa_s.fast_exp();
    let mut g = s.grads(scope, grads);
    let mut rec = Records {
        store: records,
        shape: s,
        rows: bufs_rows,
        row: 0,
    };
    // By index: each row's input and cache are one `row` away.
    for r in 0..bsz {
        let (x, z, da) = (
            row(batch.inputs, d, r),
            row(cache.z, m, r),
            row(cache.da, k, r),
        );
        let [w, dwdk] = cache.draws.get(r).copied().unwrap_or_default();
        rec.row = r;
        let enc = match load_encoded(encoded, &s, r, work) {
            Some(enc) => enc,
            None => encode(model, (&p, pt), x, work)?,
        };
        copy_over(work.z, z);
        work.gz.fill(T::zero());
        if scope != Scope::SegmenterOnly {
            let pp = (&p, pt);
            parts.recon += reconstruction_backward(model, pp, x, bsz, cfg, work, &mut g, &mut rec);
        }
        let on_mean = cfg.cluster_input == ClusterInput::Mean;
        if scope == Scope::SegmenterOnly || !on_mean {
            // z is the draw (or mu itself when no draw is made).
            let gz = Some(&mut *work.gz);
            segmenter_backward(p.seg, z, da, kappa_s, g.seg.as_deref_mut(), gz);
        }
        if scope == Scope::SegmenterOnly {
            continue;
        }
        // Through the reparameterisation: dL/dmu (unit vector) and dL/dw.
        work.gmu.fill(T::zero());
        let dldw = reflect_backward(work.mu, work.z, w, work.gz, work.gmu);
        if on_mean {
            let gmu = Some(&mut *work.gmu);
            segmenter_backward(p.seg, work.mu, da, kappa_s, g.seg.as_deref_mut(), gmu);
        }
        if let Some(gu) = gdirs.get(r * m..(r + 1) * m) {
            for (g, &v) in work.gmu.iter_mut().zip(gu) {
                *g += cfg.contrast * v;
            }
        }
        parts.kl += s.posterior.kl_to_uniform(m, enc.kappa) / bf;
        let dkappa = dldw * dwdk + cfg.beta * s.posterior.dkl_dkappa(m, enc.kappa) / bf;
        let dpre = if enc.clamped {
            T::zero()
        } else {
            dkappa * sigmoid(enc.pre)
        };
        encoder_backward(&s, &p, &enc, dpre, work, &mut g, &mut rec);
    }
    rec.flush(bsz, &mut g);
    if cfg.density != T::zero() {
        parts.density = density_tail(p.seg, m, k, lse_sum / bf, cfg, g.seg.as_deref_mut());
    }

    parts.total = parts.recon
        + cfg.beta * parts.kl
        + cluster_total(&parts, cfg)
        + cfg.contrast * parts.contrast;
    check_finite(&parts, grads)?;
    copy_over(p_bar, cache.p_new);
    Ok(parts)
}

/// `out[j] = u . v_(from + j)` for the rows `v` of `vt` (`n` rows transposed: `u.len() x
/// n`), each summed in feature order from zero (the bits of [`dot`]), side by side.
fn dots_transposed<T: Real>(u: &[T], vt: &[T], n: usize, from: usize, out: &mut [T]) {
    out.fill(T::zero());
    for (&v, col) in u.iter().zip(rows(vt, n)) {
        for (o, &w) in out.iter_mut().zip(col.get(from..).unwrap_or_default()) {
            *o += v * w;
        }
    }
}

/// Features of a row's contrast gradient summed at once, in registers.
const LANES: usize = 16;

/// The neighbour contrast of the `n` rows whose mean directions are `dirs` (`M` values
/// a row): returns `mean[-u_a . u_b / tau + ln sum_(k != a) exp(u_a . u_k / tau)]` over
/// every pair taken both ways, and writes its gradient with respect to each row's
/// direction into `grad` (the same layout).
///
/// `gram` (`n x n`) first holds `E_ak = exp((u_a . u_k - 1) / tau)` (symmetric, `0` on
/// the diagonal: every logit is at most `1 / tau`, so shifted by that bound none
/// overflows, and only for `tau` below about 2/87 can a row's sum underflow to 0, which
/// makes the pass fail as not finite), then in place the symmetric coefficients
/// `((f_a + f_k) E_ak - P_ak - P_ka) / (tau 2|pairs|)`, with `f_a = c_a / sum_k E_ak`
/// (`c_a` the pairs row `a` is in) and `P` the pairs, whose product with the directions
/// is the gradient. Cost: `O(n^2 M)` and `n (n - 1) / 2` exponentials; no pairs (or a
/// batch of one row) give 0 and a zero gradient.
fn contrast_terms<T: Real>(
    dirs: &[T],
    grad: &mut [T],
    gram: &mut [T],
    m: usize,
    pairs: &[(u16, u16)],
    tau: T,
) -> T {
    grad.fill(T::zero());
    let n = dirs.len().checked_div(m).unwrap_or(0);
    let Some(gram) = gram.get_mut(..n * n) else {
        return T::zero();
    };
    if pairs.is_empty() || n < 2 || grad.len() != n * m {
        return T::zero();
    }
    // Every index below is within `n x n` by construction: read and written through
    // `get`, so that a device build links no bounds check that could panic.
    let at = |a: usize, k: usize| a * n + k;
    let inv_tau = T::one() / tau;
    // `grad` holds the directions transposed (`M x n`) until the gradient is formed:
    // the cosines of a row with every later row are then summed side by side, each
    // still in feature order from zero (the bits of `dot`).
    transpose(dirs, n, m, grad);
    for (a, (grow, ua)) in rows_mut(gram, n).zip(rows(dirs, m)).enumerate() {
        let later = grow.get_mut(a + 1..).unwrap_or_default();
        dots_transposed(ua, grad, n, a + 1, later);
        // The logits, then their exponentials in a loop of their own (which the
        // compiler can run several values at a time; the same bits either way).
        for g in later.iter_mut() {
            *g = (*g - T::one()) * inv_tau;
        }
        for g in later.iter_mut() {
            *g = g.fast_exp();
        }
        if let Some(g) = grow.get_mut(a) {
            *g = T::zero();
        }
    }
    grad.fill(T::zero());
    mirror_upper(gram, n);
    // Each pair's own logit, taken both ways.
    let mut total = T::zero();
    for &(i, j) in pairs {
        let s = dot(row(dirs, m, i as usize), row(dirs, m, j as usize)) * inv_tau;
        total -= s + s;
    }
    // Each row's log-sum-exp, and `f_a` kept on the diagonal (read back below).
    for (a, erow) in rows_mut(gram, n).enumerate() {
        let anchored = pairs
            .iter()
            .map(|&(i, j)| usize::from(i as usize == a) + usize::from(j as usize == a))
            .sum::<usize>();
        let c = T::of(anchored as f64);
        let sum = erow.iter().fold(T::zero(), |acc, &e| acc + e);
        if anchored > 0 {
            total += c * (inv_tau + sum.ln());
        }
        if let Some(d) = erow.get_mut(a) {
            *d = c / sum;
        }
    }
    let scale = T::one() / T::of(2.0 * pairs.len() as f64);
    let c = scale * inv_tau;
    let diag = |g: &[T], a: usize| g.get(at(a, a)).copied().unwrap_or(T::zero());
    for a in 0..n {
        let fa = diag(gram, a);
        for k in a + 1..n {
            let fk = diag(gram, k);
            if let Some(v) = gram.get_mut(at(a, k)) {
                *v = c * (fa + fk) * *v;
            }
        }
    }
    for a in 0..n {
        if let Some(d) = gram.get_mut(at(a, a)) {
            *d = T::zero();
        }
    }
    mirror_upper(gram, n);
    for &(i, j) in pairs {
        let (i, j) = (i as usize, j as usize);
        for idx in [at(i, j), at(j, i)] {
            if let Some(v) = gram.get_mut(idx) {
                *v -= c + c;
            }
        }
    }
    // Each row's gradient, sixteen features at a time in registers (the sums in row
    // order from zero, as through memory: the same bits).
    for (g, crow) in rows_mut(grad, m).zip(rows(gram, n)) {
        for (c, gc) in g.chunks_mut(LANES).enumerate() {
            let at = c * LANES;
            let mut acc = [T::zero(); LANES];
            for (&w, u) in crow.iter().zip(rows(dirs, m)) {
                let u = u.get(at..).unwrap_or_default();
                if let Some(u) = u.first_chunk::<LANES>() {
                    for (a, &x) in acc.iter_mut().zip(u) {
                        *a += w * x;
                    }
                } else {
                    for (a, &x) in acc.iter_mut().zip(u) {
                        *a += w * x;
                    }
                }
            }
            for (g, a) in gc.iter_mut().zip(acc) {
                *g = a;
            }
        }
    }
    total * scale
}

/// Copies the upper triangle of the `n x n` matrix `g` onto its lower triangle.
fn mirror_upper<T: Copy>(g: &mut [T], n: usize) {
    for a in 0..n {
        for k in a + 1..n {
            if let Some(&v) = g.get(a * n + k) {
                if let Some(lower) = g.get_mut(k * n + a) {
                    *lower = v;
                }
            }
        }
    }
}

/// The input rows of a layer-wise pass, loaded on demand: [`layerwise_update`] reads each
/// row once per block, so a caller whose rows are in a memory of samples need not keep
/// a copy of the batch (the trainer loads them from its memory of bytes).
pub trait Inputs<T> {
    /// Rows in the batch (at least 1, at most `u16::MAX`).
    fn rows(&self) -> usize;
    /// Writes row `i < rows()` (raw units, `D` values) into `out`; the same values at
    /// every call.
    fn load(&self, i: usize, out: &mut [T]);
}

/// Rows of `width` values, one after the other in `data`.
#[derive(Clone, Copy, Debug)]
pub struct FlatRows<'a, T> {
    /// The rows, row-major.
    pub data: &'a [T],
    /// Values per row (`D`).
    pub width: usize,
}

impl<T: Copy> Inputs<T> for FlatRows<'_, T> {
    fn rows(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }
    fn load(&self, i: usize, out: &mut [T]) {
        copy_over(out, row(self.data, self.width, i));
    }
}

/// The rows of `inputs`, checked (at least 1, at most `u16::MAX`), with the labels and
/// pairs of `batch` checked against them (its `inputs` are not read).
fn input_rows<T, I: Inputs<T> + ?Sized>(
    inputs: &I,
    batch: &Batch<'_, T>,
    k: usize,
) -> Result<usize, LossError> {
    let bsz = inputs.rows();
    if bsz == 0 || bsz > u16::MAX as usize {
        return Err(LossError::BadBatch);
    }
    check_labels_pairs(batch, bsz, k)?;
    Ok(bsz)
}

/// Scalars of the largest block of a layer-wise update ([`layerwise_update`]): each
/// dense layer of the encoder and the decoder (weights and biases) is a block, the
/// encoder's input layer and the decoder's output layer one per band of the factored
/// optimiser ([`band_rows`]; the last band with the bias), and the heads with the
/// segmenter (the direction and concentration heads, the centres, `ln
/// kappa_s` and the log-weights: contiguous in the parameter vector) are one.
pub const fn block_len(shape: &Shape) -> usize {
    let mut n = head_len(shape);
    let mut l = 0;
    while l <= shape.depth() {
        let (o, i) = shape.decoder_layer(l);
        let rows = if l == shape.depth() {
            band_rows(o, i)
        } else {
            o
        };
        if rows * i + o > n {
            n = rows * i + o;
        }
        if l < shape.depth() {
            let (o, i) = shape.encoder_layer(l);
            let rows = if l == 0 { band_rows(o, i) } else { o };
            if rows * i + o > n {
                n = rows * i + o;
            }
        }
        l += 1;
    }
    n
}

/// Scalars of the block of the heads and the segmenter.
const fn head_len(s: &Shape) -> usize {
    let (m, h) = (s.latent, s.last_hidden());
    m * h + m + h + 1 + s.segmenter_len()
}

/// Scalars per batch row of the gradient flowing down between two blocks of a layer-wise
/// pass: the widest hidden layer, or the latent (`dL/dz`).
pub const fn flow_width(shape: &Shape) -> usize {
    let mut w = shape.latent;
    let mut l = 0;
    while l < shape.depth() {
        if shape.hidden(l) > w {
            w = shape.hidden(l);
        }
        l += 1;
    }
    w
}

/// The first sweep of a layer-wise pass: the loss of the batch of `inputs` (with the
/// labels and pairs of `batch`, whose `inputs` are not read), each row's draw, cluster
/// probabilities and `dL/da` kept in the buffers' cache for [`layerwise_update`], the
/// new marginal into the buffers' (only on success); no gradient yet. The same loss
/// parts, bit for bit, as [`loss_and_grad`] on the same draws.
///
/// `bufs` from [`LossBuffers::layerwise`], else [`LossError::BufferLength`].
/// Cost: one forward pass of the whole network per row, and the cluster terms.
pub fn layerwise_loss<T: Real, S: AsRef<[T]>, D: DrawSource<T>, I: Inputs<T> + ?Sized>(
    model: &Model<T, S>,
    (inputs, batch): (&I, &Batch<'_, T>),
    cfg: &LossConfig<T>,
    draws: &mut D,
    bufs: &mut LossBuffers<'_, T>,
) -> Result<LossParts<T>, LossError> {
    let s = *model.shape();
    let (m, k) = (s.latent, s.clusters);
    let bsz = input_rows(inputs, batch, k)?;
    if !model.has_decoder() {
        return Err(LossError::Infer(InferError::NoDecoder));
    }
    // The layer-wise buffers keep no mean directions for the neighbour contrast.
    if bufs.shape != s || bsz > bufs.rows || bufs.flow.is_empty() || cfg.contrast != T::zero() {
        return Err(LossError::BufferLength);
    }
    let LossBuffers {
        p_bar,
        work,
        cache,
        row: x,
        ..
    } = bufs;
    let p = model.views();
    let bf = T::of(bsz as f64);
    let mut parts = LossParts::<T>::default();
    let mut lse_sum = T::zero();
    // By index: the rows of the cache are each one `row_mut` away.
    for r in 0..bsz {
        let (z, da, pr) = (
            row_mut(cache.z, m, r),
            row_mut(cache.da, k, r),
            row_mut(cache.p, k, r),
        );
        let Some(slots) = cache.draws.get_mut(r) else {
            return Err(LossError::BufferLength);
        };
        inputs.load(r, x);
        let x: &[T] = x;
        let enc = model.encode_into(&p, x, work)?;
        da.fill(T::zero());
        let draw = draws.draw(s.posterior, work.mu, enc.kappa, z)?;
        *slots = [draw.w, draw.dw_dkappa];
        let input: &[T] = match cfg.cluster_input {
            ClusterInput::Mean => work.mu,
            ClusterInput::Draw => z,
        };
        segmenter_logits(p.seg, m, k, input, work.logp)?;
        let a0 = work.logp.first().copied().unwrap_or(T::zero());
        softmax_from_logits(work.logp, pr);
        lse_sum += a0 - work.logp.first().copied().unwrap_or(T::zero());
        copy_over(work.z, z);
        model.decoder_forward::<false>(&p, work);
        parts.recon += output_grad(s.likelihood, cfg, bf, x, (work.ga, work.xhat, work.xn)) / bf;
        parts.kl += s.posterior.kl_to_uniform(m, enc.kappa) / bf;
    }
    cluster_terms(cache, &s, bsz, batch, cfg, (p_bar, None), &mut parts);
    if cfg.density != T::zero() {
        parts.density = density_tail(p.seg, m, k, lse_sum / bf, cfg, None);
    }
    bufs.lse_mean = lse_sum / bf;
    parts.total = parts.recon + cfg.beta * parts.kl + cluster_total(&parts, cfg);
    check_finite(&parts, &[])?;
    copy_over(bufs.p_bar, bufs.cache.p_new);
    Ok(parts)
}

/// What a layer-wise update did.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LayerwiseInfo<T> {
    /// Euclidean norm of the whole gradient (the blocks' norms combined), before
    /// clipping.
    pub grad_norm: T,
    /// Some block's gradient was scaled down to the clipping norm.
    pub clipped: bool,
}

/// Why a layer-wise update stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LayerwiseError {
    /// Re-encoding a row failed.
    Loss(LossError),
    /// The optimiser refused a block's update (a non-finite gradient or update).
    Optim(OptimError),
}

/// The second sweep of a layer-wise pass, after [`layerwise_loss`] on the same batch
/// (`inputs` and `batch`) and buffers: the backward pass and the optimiser's update, one block at a time from
/// the top (the decoder's output layer, its hidden layers last to first, the heads with
/// the segmenter, the encoder's hidden layers last to first; the decoder's output layer
/// and the encoder's input layer band by band, [`block_len`]). For each block, every
/// row's gradient of the block is added into the buffers' block buffer (the same
/// kernels and order as [`loss_and_grad`]), the gradient flowing to the block below is
/// computed with the block's weights before they change and kept per row, then
/// `optim` updates the block in place ([`OptimState::step_part_in`]); the step counter
/// advances once at the end. No gradient of the whole scope is ever held: without
/// clipping the result is bit for bit [`loss_and_grad`] then [`OptimState::step`].
///
/// Clipping (`ocfg.clip_norm`) acts on each block's gradient by its own norm (a
/// global norm needs the whole gradient before any update).
///
/// A band's pass recomputes the layer's output with the bands above it already
/// updated and uses only its own rows, which are not: the rows of an elementwise
/// likelihood's gradient (the decoder's output) and of the activation's derivative (the
/// encoder's input layer, which sends no gradient further down) are the step's. The
/// gradient flowing below the decoder's output layer is computed in its first band's
/// pass, before any of its weights change.
///
/// `scope` is the buffers': Full updates every block; EncoderAndSegmenter goes
/// through the decoder (its gradient flows down) without updating it. On error the
/// blocks above the failing one are updated, it and those below are not, and the step
/// counter does not advance (a failure is an encoder that no longer encodes a row, or a
/// non-finite gradient; the divergence guard's restore is the remedy).
///
/// Cost: for each row, a decoder forward pass per decoder block and an encoder forward
/// pass per encoder block (the activations are recomputed, not kept; a band is a
/// block), one backward pass, and the optimiser over every trained parameter once.
pub fn layerwise_update<T: Real, S, O, I: Inputs<T> + ?Sized>(
    model: &mut Model<T, S>,
    (inputs, batch): (&I, &Batch<'_, T>),
    cfg: &LossConfig<T>,
    bufs: &mut LossBuffers<'_, T>,
    optim: &mut OptimState<O>,
    ocfg: &OptimConfig<T>,
) -> Result<LayerwiseInfo<T>, LayerwiseError>
where
    S: AsRef<[T]> + AsMut<[T]>,
    O: AsRef<[T]> + AsMut<[T]>,
{
    let s = *model.shape();
    let (m, k, depth) = (s.latent, s.clusters, s.depth());
    let bsz = input_rows(inputs, batch, k).map_err(LayerwiseError::Loss)?;
    if bufs.shape != s || bsz > bufs.rows || bufs.flow.is_empty() || !model.has_decoder() {
        return Err(LayerwiseError::Loss(LossError::BufferLength));
    }
    let scope = bufs.scope;
    let range = s.scope_range(scope);
    let fw = flow_width(&s);
    let bf = T::of(bsz as f64);
    let mut sum_sq = T::zero();
    let mut clipped = false;
    // The block at parameter offset `at` (its gradient `grads`) updated in place.
    let mut update = |model: &mut Model<T, S>, grads: &[T], at: usize| {
        let params = model
            .params_mut()
            .get_mut(at..at + grads.len())
            .unwrap_or_default();
        let info = optim
            .step_part_in(ocfg, (&s, range.clone()), params, grads, at - range.start)
            .map_err(LayerwiseError::Optim)?;
        sum_sq += info.grad_norm * info.grad_norm;
        clipped |= info.clipped;
        Ok::<(), LayerwiseError>(())
    };
    // The decoder: its output layer (band by band), then its hidden layers, last to first.
    let train_dec = scope == Scope::Full;
    for l in (0..=depth).rev() {
        let (o, i) = s.decoder_layer(l);
        let banded = train_dec && l == depth;
        for band in LayerBand::of(o, i, banded) {
            {
                let LossBuffers {
                    grads,
                    work,
                    cache,
                    flow,
                    row: x,
                    ..
                } = &mut *bufs;
                let (gw, gb) = band.grads(grads, i);
                let p = model.views();
                let dec = s.dense_layers(p.dec, true);
                let layer = if l == depth {
                    p.out
                } else {
                    dec.get(l).copied().unwrap_or_default()
                };
                for r in 0..bsz {
                    let (z, f) = (row(cache.z, m, r), row_mut(flow, fw, r));
                    if l == depth {
                        inputs.load(r, x);
                    }
                    let x: &[T] = x;
                    copy_over(work.z, z);
                    model.decoder_forward::<false>(&p, work);
                    let acts = s.activations(&*work.dec, true);
                    let input: &[T] = match l.checked_sub(1) {
                        None => work.z,
                        Some(below) => acts.get(below).copied().unwrap_or_default(),
                    };
                    if l == depth {
                        // The band's rows of the output are the ones not updated yet:
                        // an elementwise likelihood's gradient there is the step's.
                        normalise_into(&p, x, work.xn);
                        output_grad(s.likelihood, cfg, bf, x, (work.ga, work.xhat, work.xn));
                    } else {
                        let dy = prefix_mut(work.ga, o);
                        copy_over(dy, f);
                        s.activation
                            .backward(acts.get(l).copied().unwrap_or_default(), dy);
                    }
                    let dy = prefix(work.ga, o);
                    let dx = prefix_mut(work.gb, i);
                    let g = train_dec.then_some((&mut *gw, &mut *gb));
                    if band.whole() {
                        dense_backward(layer.w, input, dy, g, Some(&mut *dx));
                    } else {
                        let (w, dy_band) = (band.rows_of(layer.w, i), band.rows_of(dy, 1));
                        dense_backward(w, input, dy_band, g, None);
                        if band.first() {
                            // The flow below, from the weights before any band changes.
                            dense_backward(layer.w, input, dy, None, Some(&mut *dx));
                        }
                    }
                    if !band.first() {
                        continue;
                    }
                    if l == 0 {
                        // dL/dz, as the two-pass form adds it into a zeroed `gz`.
                        for (fq, &v) in f.iter_mut().zip(dx.iter()) {
                            *fq = T::zero() + v;
                        }
                    } else {
                        copy_over(f, dx);
                    }
                }
            }
            if train_dec {
                let at = s.decoder_layer_offset(l) + band.start * i;
                update(model, band.block(bufs.grads, i), at)?;
            }
        }
    }
    // The heads and the segmenter.
    let h = s.last_hidden();
    let head_at = s.segmenter_offset() - (m * h + m + h + 1);
    {
        let LossBuffers {
            grads,
            work,
            cache,
            flow,
            lse_mean,
            row: x,
            ..
        } = &mut *bufs;
        let mut block = prefix_mut(grads, head_len(&s));
        block.fill(T::zero());
        let gmu_w = carve(&mut block, m * h);
        let gmu_b = carve(&mut block, m);
        let gk_w = carve(&mut block, h);
        let gk_b = carve(&mut block, 1);
        let gseg = block;
        let p = model.views();
        let kappa_s = p.log_kappa_s.fast_exp();
        let on_mean = cfg.cluster_input == ClusterInput::Mean;
        for r in 0..bsz {
            let (z, da, f) = (
                row(cache.z, m, r),
                row(cache.da, k, r),
                row_mut(flow, fw, r),
            );
            let [w, dwdk] = cache.draws.get(r).copied().unwrap_or_default();
            inputs.load(r, x);
            let x: &[T] = x;
            let enc = model
                .encode_into(&p, x, work)
                .map_err(|e| LayerwiseError::Loss(e.into()))?;
            copy_over(work.z, z);
            copy_over(work.gz, f);
            if !on_mean {
                segmenter_backward(p.seg, z, da, kappa_s, Some(&mut *gseg), Some(&mut *work.gz));
            }
            work.gmu.fill(T::zero());
            let dldw = reflect_backward(work.mu, work.z, w, work.gz, work.gmu);
            if on_mean {
                let gmu = Some(&mut *work.gmu);
                segmenter_backward(p.seg, work.mu, da, kappa_s, Some(&mut *gseg), gmu);
            }
            let dkappa = dldw * dwdk + cfg.beta * s.posterior.dkl_dkappa(m, enc.kappa) / bf;
            let dpre = if enc.clamped {
                T::zero()
            } else {
                dkappa * sigmoid(enc.pre)
            };
            // mu = m / ||m||: dL/dm into ga; the direction head's input gradient into gb.
            let proj = dot(work.mu, work.gmu);
            for ((gq, &gm), &mq) in work.ga.iter_mut().zip(&*work.gmu).zip(&*work.mu) {
                *gq = (gm - mq * proj) / enc.norm;
            }
            let acts = s.activations(&*work.enc, false);
            let hl = last_hidden(&acts, depth);
            let dx = prefix_mut(work.gb, h);
            let g = Some((&mut *gmu_w, &mut *gmu_b));
            dense_backward(p.mu.w, hl, prefix(work.ga, m), g, Some(&mut *dx));
            for (gq, &hq) in gk_w.iter_mut().zip(hl) {
                *gq += dpre * hq;
            }
            if let Some(gb0) = gk_b.first_mut() {
                *gb0 += dpre;
            }
            for (gq, &wq) in dx.iter_mut().zip(p.kappa_w) {
                *gq += dpre * wq;
            }
            copy_over(f, dx);
        }
        if cfg.density != T::zero() {
            density_tail(p.seg, m, k, *lse_mean, cfg, Some(gseg));
        }
    }
    update(model, prefix(bufs.grads, head_len(&s)), head_at)?;
    // The encoder's hidden layers, last to first (the input layer band by band).
    for l in (0..depth).rev() {
        let (o, i) = s.encoder_layer(l);
        for band in LayerBand::of(o, i, l == 0) {
            {
                let LossBuffers {
                    grads,
                    work,
                    flow,
                    row: x,
                    ..
                } = &mut *bufs;
                let (gw, gb) = band.grads(grads, i);
                let p = model.views();
                let enc = s.dense_layers(p.enc, false);
                let layer = enc.get(l).copied().unwrap_or_default();
                for r in 0..bsz {
                    let f = row_mut(flow, fw, r);
                    inputs.load(r, x);
                    encoder_hidden(&s, &p, x, work, l);
                    let acts = s.activations(&*work.enc, false);
                    let input: &[T] = match l.checked_sub(1) {
                        None => work.xn,
                        Some(below) => acts.get(below).copied().unwrap_or_default(),
                    };
                    let dy = prefix_mut(work.ga, o);
                    copy_over(dy, f);
                    s.activation
                        .backward(acts.get(l).copied().unwrap_or_default(), dy);
                    // Only the input layer has bands, and it has no flow below: the
                    // flow it reads stays as the layer above left it.
                    let (w, dy) = (band.rows_of(layer.w, i), band.rows_of(work.ga, 1));
                    let dx = (l > 0).then(|| prefix_mut(work.gb, i));
                    let has_dx = dx.is_some();
                    dense_backward(w, input, dy, Some((&mut *gw, &mut *gb)), dx);
                    if has_dx {
                        copy_over(f, prefix(work.gb, i));
                    }
                }
            }
            let at = s.encoder_layer_offset(l) + band.start * i;
            update(model, band.block(bufs.grads, i), at)?;
        }
    }
    optim.finish_parts();
    Ok(LayerwiseInfo {
        grad_norm: sum_sq.sqrt(),
        clipped,
    })
}

/// The rows `start..end` of a dense layer of `o` outputs that one block of a layer-wise
/// update trains: all of them, or a band of the factored optimiser's
/// ([`band_rows`]). The block buffer holds the layer's bias gradient after
/// `band_rows * i` values, and each band's weight gradient just before it, so the last
/// band's weights and the whole bias are one contiguous block, as in the parameters.
#[derive(Clone, Copy)]
struct LayerBand {
    start: usize,
    end: usize,
    /// Rows of every band but the last (which may have fewer).
    per: usize,
    /// Outputs of the layer.
    o: usize,
}

impl LayerBand {
    /// The bands of a layer of `o` outputs and `i` inputs: the factored optimiser's when
    /// `banded`, else one band of all the rows.
    fn of(o: usize, i: usize, banded: bool) -> impl Iterator<Item = LayerBand> {
        let per = if banded {
            band_rows(o, i).max(1)
        } else {
            o.max(1)
        };
        (0..o.div_ceil(per)).map(move |b| LayerBand {
            start: b * per,
            end: (b * per + per).min(o),
            per,
            o,
        })
    }

    /// The first band (the bias gradient is zeroed with it; the flow below is computed
    /// in its pass, before any weight of the layer changes).
    fn first(&self) -> bool {
        self.start == 0
    }

    /// All the layer's rows.
    fn whole(&self) -> bool {
        self.start == 0 && self.end == self.o
    }

    /// Where the band's weight gradient starts in the block buffer, for `i` inputs: just
    /// before the bias gradient.
    fn lead(&self, i: usize) -> usize {
        (self.per - (self.end - self.start)) * i
    }

    /// The band's rows of a row-major slice of `width` values a row.
    fn rows_of<'s, T>(&self, s: &'s [T], width: usize) -> &'s [T] {
        s.get(self.start * width..self.end * width)
            .unwrap_or_default()
    }

    /// The band's weight gradient (zeroed) and the layer's bias gradient (zeroed with
    /// the first band, then kept: each band adds its rows).
    fn grads<'g, T: Real>(&self, grads: &'g mut [T], i: usize) -> (&'g mut [T], &'g mut [T]) {
        let block = grads
            .get_mut(self.lead(i)..self.per * i + self.o)
            .unwrap_or_default();
        let (gw, gb) = block
            .split_at_mut_checked((self.end - self.start) * i)
            .unwrap_or_default();
        gw.fill(T::zero());
        if self.first() {
            gb.fill(T::zero());
        }
        let gb = gb.get_mut(self.start..self.end).unwrap_or_default();
        (gw, gb)
    }

    /// The gradient of the band's block: its weights, and after the last band's the
    /// whole bias.
    fn block<'g, T>(&self, grads: &'g [T], i: usize) -> &'g [T] {
        let end = if self.end == self.o {
            self.per * i + self.o
        } else {
            self.per * i
        };
        grads.get(self.lead(i)..end).unwrap_or_default()
    }
}

/// The encoder's normalisation and hidden layers `0..=last` on `x` (parameters `p`), into
/// `work.xn` and `work.enc`, as [`Model::encode_into`] computes them.
fn encoder_hidden<T: Real>(
    s: &Shape,
    p: &Params<'_, T>,
    x: &[T],
    work: &mut Work<'_, T>,
    last: usize,
) {
    normalise_into(p, x, work.xn);
    let act = Some(s.activation);
    let (mut layers, mut outs) = (p.enc, &mut *work.enc);
    let mut input: &[T] = work.xn;
    for l in 0..=last.min(s.depth().saturating_sub(1)) {
        let (o, i) = s.encoder_layer(l);
        let (wt, b) = (carve_ref(&mut layers, o * i), carve_ref(&mut layers, o));
        let out = carve(&mut outs, o);
        p.dense::<false>(wt, b, input, out, act);
        input = out;
    }
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
    let mut cache = Cache::split(&s, bsz, cache);
    let mut parts = LossParts::<T>::default();
    grads.fill(T::zero());
    let cached = rows_mut(cache.z, m)
        .zip(rows_mut(cache.da, k))
        .zip(rows_mut(cache.p, k));
    let mut lse_sum = T::zero();
    for (mu, ((z, da), pr)) in rows(batch.inputs, m).zip(cached) {
        copy_over(z, mu);
        // The logits go through `da`, which the cluster terms then overwrite from zero.
        segmenter_logits(seg, m, k, mu, da)?;
        let a0 = da.first().copied().unwrap_or(T::zero());
        softmax_from_logits(da, pr);
        lse_sum += a0 - da.first().copied().unwrap_or(T::zero());
        da.fill(T::zero());
    }
    cluster_terms(&mut cache, &s, bsz, batch, cfg, (p_bar, None), &mut parts);
    // In range: the length was checked above.
    let kappa_s = seg.get(k * m).copied().unwrap_or(T::zero()).fast_exp();
    for (z, da) in rows(cache.z, m).zip(rows(cache.da, k)) {
        // dL/dz is not needed: the encoder is frozen.
        segmenter_backward(seg, z, da, kappa_s, Some(&mut *grads), None);
    }
    if cfg.density != T::zero() {
        let bf = T::of(bsz as f64);
        parts.density = density_tail(seg, m, k, lse_sum / bf, cfg, Some(&mut *grads));
    }
    parts.total = cluster_total(&parts, cfg);
    check_finite(&parts, grads)?;
    copy_over(p_bar, cache.p_new);
    Ok(parts)
}

/// `gamma (omega consistency + lambda entropy - eta balance + supervised + delta
/// density)`.
fn cluster_total<T: Real>(parts: &LossParts<T>, cfg: &LossConfig<T>) -> T {
    cfg.gamma
        * (cfg.consistency * parts.consistency + cfg.entropy * parts.entropy
            - cfg.eta * parts.balance
            + parts.supervised
            + cfg.density * parts.density)
}

/// The parts of the density term that do not go through the logits: returns
/// `mean_i[-ln f(u_i)] = -lse_mean - ln C_M(kappa_s) + lse_c(ln pi_c)` (`lse_mean` the
/// batch mean of `lse_c(a_ic)`) and adds `gamma delta` times its gradient in `ln
/// kappa_s` (`kappa_s A_M(kappa_s)`) and in the log-weights (`softmax(ln pi)`) into the
/// segmenter's gradient `gseg`, when it is trained. The logits' share (`-p_ic / B`) is
/// added by [`cluster_terms`].
fn density_tail<T: Real>(
    seg: &[T],
    m: usize,
    k: usize,
    lse_mean: T,
    cfg: &LossConfig<T>,
    gseg: Option<&mut [T]>,
) -> T {
    use crate::dist::special::{bessel_ratio, log_bessel_i};
    let (ln_kappa, log_w) = match seg.get(k * m..).and_then(<[T]>::split_first) {
        Some((&l, w)) => (l, w),
        None => return T::zero(),
    };
    let kappa = ln_kappa.fast_exp();
    // ln C_M(kappa) = nu ln kappa - (nu + 1) ln 2 pi - ln I_nu(kappa), nu = M/2 - 1.
    let nu = T::of(m as f64 * 0.5 - 1.0);
    let two_pi = T::pi() + T::pi();
    let ln_c = nu * ln_kappa - (nu + T::one()) * two_pi.ln() - log_bessel_i(nu, kappa);
    let mx = log_w.iter().copied().fold(-T::MAX, T::max);
    let sum = log_w.iter().fold(T::zero(), |acc, &w| acc + (w - mx).exp());
    let lse_w = mx + sum.ln();
    if let Some((g0, gw)) = gseg
        .and_then(|g| g.get_mut(k * m..))
        .and_then(<[T]>::split_first_mut)
    {
        let c = cfg.gamma * cfg.density;
        *g0 += c * kappa * bessel_ratio(m, kappa);
        for (g, &w) in gw.iter_mut().zip(log_w) {
            *g += c * (w - mx).exp() / sum;
        }
    }
    -lse_mean - ln_c + lse_w
}

/// Rows of `batch` (inputs of `width` values each), checking the labels (`< k`) and the
/// pair indices against them.
fn batch_rows<T>(batch: &Batch<'_, T>, width: usize, k: usize) -> Result<usize, LossError> {
    let bsz = batch.inputs.len().checked_div(width).unwrap_or(0);
    if bsz == 0 || !batch.inputs.len().is_multiple_of(width) || bsz > u16::MAX as usize {
        return Err(LossError::BadBatch);
    }
    check_labels_pairs(batch, bsz, k)?;
    Ok(bsz)
}

/// The labels (none, or `bsz` each `< k`) and the pair indices (`< bsz`) of `batch`.
fn check_labels_pairs<T>(batch: &Batch<'_, T>, bsz: usize, k: usize) -> Result<(), LossError> {
    if !(batch.labels.is_empty() || batch.labels.len() == bsz)
        || batch.labels.iter().flatten().any(|&y| y as usize >= k)
        || batch
            .pairs
            .iter()
            .any(|&(i, j)| i as usize >= bsz || j as usize >= bsz)
    {
        return Err(LossError::BadBatch);
    }
    Ok(())
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
        parts.density,
        parts.contrast,
    ]
    .iter()
    .all(|v| v.is_finite());
    if !finite || !grads.iter().all(|v| v.is_finite()) {
        return Err(LossError::NonFinite);
    }
    Ok(())
}

/// The cluster terms of a batch of `bsz` rows whose probabilities `p_i` are in the
/// cache: adds their values to `parts` and writes `dL/da_i` (the gradient with respect
/// to row `i`'s segmenter logits) into the cache's `da`, and the new moving marginal
/// into its `p_new`; the balance pulls towards `prior`'s shares when there are some.
/// Shared by [`loss_and_grad`] and [`segmenter_loss_and_grad`].
fn cluster_terms<T: Real>(
    cache: &mut Cache<'_, T>,
    s: &Shape,
    bsz: usize,
    batch: &Batch<'_, T>,
    cfg: &LossConfig<T>,
    (p_bar, prior): (&[T], Option<&[T]>),
    parts: &mut LossParts<T>,
) {
    let k = s.clusters;
    let bf = T::of(bsz as f64);
    let g = cfg.gamma;
    let t = tiny::<T>();
    let Cache { da, p, p_new, .. } = cache;
    let (da, p, pb) = (&mut **da, &**p, &mut **p_new);
    if !batch.pairs.is_empty() {
        let np = T::of(batch.pairs.len() as f64);
        for &(i, j) in batch.pairs {
            let (pi, pj) = (row(p, k, i as usize), row(p, k, j as usize));
            let sdot = dot(pi, pj).max(t);
            parts.consistency += -sdot.ln() / np;
            let c = -g * cfg.consistency / (sdot * np);
            // Row i's share, then row j's (the same row twice when i = j: each value
            // still gets row i's term first).
            for (d, &pq) in row_mut(da, k, i as usize).iter_mut().zip(pj) {
                *d += c * pq;
            }
            for (d, &pq) in row_mut(da, k, j as usize).iter_mut().zip(pi) {
                *d += c * pq;
            }
        }
    }
    if cfg.entropy != T::zero() {
        for (da, pr) in rows_mut(da, k).zip(rows(p, k)).take(bsz) {
            let mut h = T::zero();
            for (d, &pq) in da.iter_mut().zip(pr) {
                let lp = pq.max(t).ln();
                h -= pq * lp;
                *d -= g * cfg.entropy * (lp + T::one()) / bf;
            }
            parts.entropy += h / bf;
        }
    }
    let rho = cfg.balance_momentum;
    // p_bar_new = rho p_bar + (1 - rho) mean_i p_i, staged in the cache.
    for (v, &prev) in pb.iter_mut().zip(p_bar) {
        *v = if rho == T::zero() {
            T::zero()
        } else {
            rho * prev
        };
    }
    for pr in rows(p, k).take(bsz) {
        for (v, &pq) in pb.iter_mut().zip(pr) {
            *v += (T::one() - rho) * pq / bf;
        }
    }
    // `-balance` and its derivative in `p_bar_q`: the negative entropy (`ln v + 1`),
    // the divergence from the prior's shares (`ln v + 1 - ln pi_q`) or the hinge (`-1 /
    // v` below the floor, 0 above).
    let floor = cfg.balance_floor;
    let ln_floor = (floor / T::of(k as f64)).max(t).ln();
    let ln_prior = |q: usize| {
        prior
            .and_then(|pi| pi.get(q))
            .map_or(T::zero(), |&v| v.max(t).ln())
    };
    // Each cluster's term and slope once, the slope then added to every row's.
    let scale = g * cfg.eta * (T::one() - rho) / bf;
    let mut h = T::zero();
    for (q, &v) in pb.iter().enumerate() {
        let lv = v.max(t).ln();
        let (term, slope) = if floor == T::zero() {
            let lp = ln_prior(q);
            (v * (lv - lp), lv + T::one() - lp)
        } else {
            let hinge = (ln_floor - lv).max(T::zero());
            (
                hinge,
                if lv < ln_floor {
                    -T::one() / v.max(t)
                } else {
                    T::zero()
                },
            )
        };
        h -= term;
        if cfg.eta != T::zero() {
            for d in rows_mut(da, k).take(bsz).filter_map(|da| da.get_mut(q)) {
                *d += scale * slope;
            }
        }
    }
    parts.balance = h;
    // Softmax Jacobian: da_q = p_q (g_q - sum_r p_r g_r); then cross-entropy in logits.
    let n_lab = batch.labels.iter().flatten().count();
    for (i, (da, pr)) in rows_mut(da, k).zip(rows(p, k)).take(bsz).enumerate() {
        let mean = dot(da, pr);
        for (d, &pq) in da.iter_mut().zip(pr) {
            *d = pq * (*d - mean);
        }
        if let Some(Some(y)) = batch.labels.get(i) {
            let nl = T::of(n_lab as f64);
            let y = *y as usize;
            let mut py = T::zero();
            for (q, (d, &pq)) in da.iter_mut().zip(pr).enumerate() {
                let onehot = if q == y {
                    py = pq;
                    T::one()
                } else {
                    T::zero()
                };
                *d += g * (pq - onehot) / nl;
            }
            parts.supervised -= py.max(t).ln() / nl;
        }
        // The density term in the logits: d(-lse_c a_c)/da_q = -p_q, per row / B.
        if cfg.density != T::zero() {
            for (d, &pq) in da.iter_mut().zip(pr) {
                *d -= g * cfg.density * pq / bf;
            }
        }
    }
}

/// The encoder's forward pass of one row: on the transposed copy `pt` when there is one
/// (the same bits), else on the parameters `p`.
fn encode<T: Real, S: AsRef<[T]>>(
    model: &Model<T, S>,
    (p, pt): (&Params<'_, T>, Option<&Params<'_, T>>),
    x: &[T],
    work: &mut Work<'_, T>,
) -> Result<EncoderOut<T>, InferError> {
    match pt {
        Some(pt) => model.encode_layers::<true>(pt, x, work),
        None => model.encode_into(p, x, work),
    }
}

/// Decoder forward from `work.z` (on the transposed copy `pt` when there is one, else on
/// `p`), the reconstruction loss of one row (returned, already divided by `B`), and its
/// backward pass (parameters `p`): decoder gradients (if in scope) and `dL/dz` added
/// into `work.gz`.
#[allow(clippy::too_many_arguments)]
fn reconstruction_backward<T: Real, S: AsRef<[T]>>(
    model: &Model<T, S>,
    (p, pt): (&Params<'_, T>, Option<&Params<'_, T>>),
    x: &[T],
    bsz: usize,
    cfg: &LossConfig<T>,
    work: &mut Work<'_, T>,
    g: &mut Grads<'_, T>,
    rec: &mut Records<'_, T>,
) -> T {
    let s = *model.shape();
    let bf = T::of(bsz as f64);
    match pt {
        Some(pt) => model.decoder_forward::<true>(pt, work),
        None => model.decoder_forward::<false>(p, work),
    }
    let loss = output_grad(s.likelihood, cfg, bf, x, (work.ga, work.xhat, work.xn));
    let depth = s.depth();
    // The output layer: its upstream gradient is in ga, its input gradient goes to gb.
    let (no, ni) = s.decoder_layer(depth);
    let (dec, acts) = (s.dense_layers(p.dec, true), s.activations(&*work.dec, true));
    rec.backward(
        layers(&s) - 1,
        p.out.w,
        last_hidden(&acts, depth),
        prefix_mut(work.ga, no),
        &mut g.out,
        Some(prefix_mut(work.gb, ni)),
    );
    // The hidden layers, last to first; layer 0 reads z.
    let dx = hidden_layers_backward(
        &s,
        (&dec, depth + 1),
        &mut g.dec,
        &acts,
        work.z,
        (&mut *work.ga, &mut *work.gb),
        true,
        rec,
    );
    // dL/dz from the decoder: layer 0's input gradient, added into gz.
    for (a, &b) in work.gz.iter_mut().zip(dx.iter()) {
        *a += b;
    }
    loss / bf
}

/// The reconstruction loss of one row (summed over the outputs, not divided by `bf`)
/// from the decoder's output `xhat` and the normalised input `xn`, and `dL/dxhat / bf`
/// into `ga`.
fn output_grad<T: Real>(
    likelihood: Likelihood,
    cfg: &LossConfig<T>,
    bf: T,
    x: &[T],
    (ga, xhat, xn): (&mut [T], &[T], &[T]),
) -> T {
    let mut loss = T::zero();
    let out = ga.iter_mut().zip(xhat).zip(xn).zip(x);
    for (((gq, &a), &xnq), &xq) in out {
        let (l, dq) = match likelihood {
            Likelihood::Gaussian => {
                let e = a - xnq;
                let s2 = cfg.sigma * cfg.sigma;
                (e * e / (s2 + s2), e / s2)
            }
            // -ln Bernoulli(x | sigmoid(a)) = softplus(a) - x a
            Likelihood::Bernoulli => (softplus(a) - xq * a, sigmoid(a) - xq),
        };
        loss += l;
        *gq = dq / bf;
    }
    loss
}

/// Backward through the hidden layers of the encoder or the decoder, last to first
/// (`layers`, `grads`, `acts`: each layer's parameters, gradients and output; layer
/// `l > 0` reads layer `l - 1`'s output, layer 0 reads `input`). The upstream gradient
/// starts in `gb` and alternates gb -> ga -> gb ...; layer 0's input gradient, when
/// `input_grad`, goes into the buffer returned. `first` is layer 0's index in the
/// records ([`layers`]' order).
#[allow(clippy::too_many_arguments)]
fn hidden_layers_backward<'g, T: Real>(
    s: &Shape,
    (layers, first): (&[Dense<'_, T>; MAX_HIDDEN], usize),
    grads: &mut [Option<DenseMut<'_, T>>; MAX_HIDDEN],
    acts: &[&[T]; MAX_HIDDEN],
    input: &[T],
    (ga, gb): (&'g mut [T], &'g mut [T]),
    input_grad: bool,
    rec: &mut Records<'_, T>,
) -> &'g mut [T] {
    let [p0, p_rest @ ..] = layers;
    let [g0, g_rest @ ..] = grads;
    let [y0, y_rest @ ..] = acts;
    let mut cur_is_b = true;
    let upper = p_rest.iter().zip(g_rest.iter_mut());
    let ios = acts.iter().zip(y_rest);
    let upper = upper.zip(ios).take(s.depth().saturating_sub(1)).enumerate();
    for (l, ((layer, gl), (x, y))) in upper.rev() {
        let (dy, dx) = if cur_is_b {
            (&mut *gb, &mut *ga)
        } else {
            (&mut *ga, &mut *gb)
        };
        let io = (*x, *y, dy, Some(dx));
        hidden_backward(s.activation, (layer, first + l + 1), gl, io, rec);
        cur_is_b = !cur_is_b;
    }
    let (dy, dx) = if cur_is_b { (gb, ga) } else { (ga, gb) };
    let dx0 = if input_grad { Some(&mut *dx) } else { None };
    hidden_backward(s.activation, (p0, first), g0, (input, y0, dy, dx0), rec);
    dx
}

/// Backward through one hidden layer (parameters `layer`, layer `k` of the records,
/// gradient `g`, input `input`, output `y`): the upstream gradient in `dy` through the
/// activation, the parameter gradients added (or recorded), the input gradient written
/// into `dx` when given.
#[allow(clippy::type_complexity)]
fn hidden_backward<T: Real>(
    act: Activation,
    (layer, k): (&Dense<'_, T>, usize),
    g: &mut Option<DenseMut<'_, T>>,
    (input, y, dy, dx): (&[T], &[T], &mut [T], Option<&mut [T]>),
    rec: &mut Records<'_, T>,
) {
    let dy = prefix_mut(dy, y.len());
    act.backward(y, dy);
    let dx = dx.map(|dx| prefix_mut(dx, input.len()));
    rec.backward(k, layer.w, input, dy, g, dx);
}

/// Backward through the segmenter logits of one row, `a_c = kappa_s ĉ_c . z + ln pi_c`
/// with segmenter parameters `seg`: given `dL/da` in `da`, adds `dL/dparams` into
/// `gseg` (the segmenter's gradient, when trained) and, if asked, `dL/dz` into `gz`.
fn segmenter_backward<T: Real>(
    seg: &[T],
    z: &[T],
    da: &[T],
    kappa_s: T,
    gseg: Option<&mut [T]>,
    mut gz: Option<&mut [T]>,
) {
    let (m, k) = (z.len(), da.len());
    let centres = seg.split_at_checked(k * m).unwrap_or_default().0;
    // The centres' gradient by centre, and the rest (`ln kappa_s`, log-weights).
    let (mut gcs, mut tail) = (None, None);
    if let Some(mut g) = gseg {
        gcs = Some(rows_mut(carve(&mut g, k * m), m));
        tail = Some(g);
    }
    let mut dlogk = T::zero();
    for (ck, &dac) in rows(centres, m).zip(da) {
        // The forward pass has checked every centre's norm.
        let inv = inv_norm(ck).unwrap_or(T::zero());
        let cos = dot(ck, z) * inv;
        dlogk += dac * kappa_s * cos;
        // d cos / d c = (z - ĉ cos) / ||c||; d cos / d z = ĉ.
        if let Some(gc) = gcs.as_mut().and_then(Iterator::next) {
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
    if let Some((g0, gw)) = tail.and_then(|g| g.split_first_mut()) {
        *g0 += dlogk;
        for (g, &dac) in gw.iter_mut().zip(da) {
            *g += dac;
        }
    }
}

/// Encoder backward for one row, given `dL/dmu` in `work.gmu` and `dL/d(kappa
/// pre-activation)` as `dpre`. Adds the encoder's gradients.
fn encoder_backward<T: Real>(
    s: &Shape,
    p: &Params<'_, T>,
    enc: &crate::infer::model::EncoderOut<T>,
    dpre: T,
    work: &mut Work<'_, T>,
    g: &mut Grads<'_, T>,
    rec: &mut Records<'_, T>,
) {
    let (m, depth) = (s.latent, s.depth());
    // mu = m / ||m||: dL/dm = (g - mu (mu . g)) / ||m||, into ga.
    let proj = dot(work.mu, work.gmu);
    for ((gq, &gm), &mq) in work.ga.iter_mut().zip(&*work.gmu).zip(&*work.mu) {
        *gq = (gm - mq * proj) / enc.norm;
    }
    let (enc_layers, acts) = (
        s.dense_layers(p.enc, false),
        s.activations(&*work.enc, false),
    );
    let h = last_hidden(&acts, depth);
    // Direction head: y = Wmu h + bmu; dL/dh into gb.
    rec.backward(
        depth,
        p.mu.w,
        h,
        prefix_mut(work.ga, m),
        &mut g.mu,
        Some(prefix_mut(work.gb, h.len())),
    );
    // Concentration head: pre = wk . h + bk.
    if let Some(gk) = g.kappa.as_mut() {
        for (gq, &hq) in gk.w.iter_mut().zip(h) {
            *gq += dpre * hq;
        }
        if let Some(gb0) = gk.b.first_mut() {
            *gb0 += dpre;
        }
    }
    for (gq, &wq) in work.gb.iter_mut().zip(p.kappa_w) {
        *gq += dpre * wq;
    }
    // Hidden layers, last to first; layer 0 reads the normalised input and needs no
    // input gradient.
    hidden_layers_backward(
        s,
        (&enc_layers, 0),
        &mut g.enc,
        &acts,
        work.xn,
        (&mut *work.ga, &mut *work.gb),
        false,
        rec,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// 9 unit rows of 20 values: a block of sixteen and four after it.
    fn rows_9x20() -> Vec<f32> {
        let v = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 500.0;
        let mut dirs: Vec<f32> = (0..9 * 20).map(v).collect();
        for r in dirs.chunks_exact_mut(20) {
            let s = dot(r, r).sqrt();
            r.iter_mut().for_each(|x| *x /= s);
        }
        dirs
    }

    #[test]
    fn transposed_dots_are_the_bits_of_dot() {
        let (n, m) = (9, 20);
        let dirs = rows_9x20();
        let mut vt = vec![0f32; n * m];
        transpose(&dirs, n, m, &mut vt);
        let u = &dirs[2 * m..3 * m];
        let mut out = vec![f32::NAN; n - 3];
        dots_transposed(u, &vt, n, 3, &mut out);
        let want: Vec<f32> = dirs.chunks_exact(m).skip(3).map(|r| dot(u, r)).collect();
        assert_eq!(bits(&out), bits(&want));
        // The comparison can tell: summed from the last feature back, a dot differs.
        let back = |r: &[f32]| u.iter().zip(r).rev().fold(0.0f32, |s, (a, b)| s + a * b);
        let rows = dirs.chunks_exact(m).skip(3);
        assert!(rows
            .clone()
            .any(|r| back(r).to_bits() != dot(u, r).to_bits()));
    }

    /// The contrast's gradient is its coefficients' product with the directions (the
    /// coefficients are left in `gram`), each value summed over the rows in order from
    /// zero: in registers, the bits of the sums through memory.
    #[test]
    fn contrast_gradient_sums_the_rows_in_order() {
        let (n, m) = (9, 20);
        let dirs = rows_9x20();
        let pairs = [(0u16, 3u16), (1, 2), (4, 8), (3, 0), (7, 5)];
        let (mut grad, mut gram) = (vec![0f32; n * m], vec![0f32; n * n]);
        let value = contrast_terms(&dirs, &mut grad, &mut gram, m, &pairs, 0.7);
        assert!(value.is_finite() && value > 0.0);
        let product = |order: &[usize]| -> Vec<f32> {
            (0..n * m)
                .map(|i| {
                    let (a, f) = (i / m, i % m);
                    order
                        .iter()
                        .fold(0.0, |s, &k| s + gram[a * n + k] * dirs[k * m + f])
                })
                .collect()
        };
        let forward: Vec<usize> = (0..n).collect();
        assert_eq!(bits(&grad), bits(&product(&forward)));
        assert!(grad.iter().any(|&g| g != 0.0));
        // The comparison can tell: summed from the last row back, a value differs.
        let backward: Vec<usize> = (0..n).rev().collect();
        assert_ne!(bits(&grad), bits(&product(&backward)));
    }
}
