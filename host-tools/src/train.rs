//! Training on the host: optimiser steps over a data set held in memory.
//!
//! The schedule is the core's (`docs/design.md#training-schedule`) with the host's
//! advantages: the normalisation is fitted on the whole training set, and the nearest
//! neighbours of the cluster loss are mined over the whole set ([`NeighbourSpace`])
//! instead of inside a ring buffer. Every number is computed by the core: the loss and
//! its gradient ([`hvae::train::loss::loss_and_grad`]), the optimiser ([`hvae::train::optim`]), the
//! normalisation ([`hvae::infer::normalise`]) and the centre initialisation
//! ([`hvae::train::kmeans::spherical_kmeans`]).
//!
//! A step takes `batch / 2` anchors (in a shuffled order, reshuffled after each pass)
//! and pairs each with one of its `neighbours` nearest neighbours, drawn at random
//! (`batch` rows in all). Warm-up steps train the VAE alone, without the cluster terms:
//! on `batch / 2` anchors and their partners when the neighbour contrast is on (the
//! default, [`CONTRAST`]), else on `batch` anchors with no pairs. Deterministic: the
//! seed fixes every random number.

use hvae::dist::rng::uniform_index;
use hvae::shape::{Scope, Shape, TensorId};
use hvae::train::kmeans::{scratch_len, spherical_kmeans};
use hvae::train::loss::{loss_and_grad, Batch, LossBuffers, LossConfig, LossParts, RandomDraws};
use hvae::train::optim::{state_len, OptimConfig, OptimState, Optimiser};
use hvae::Model;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// How the choice between the model and the GMM candidate scores a partition against
/// the inputs' nearest neighbours ([`FitConfig::choice_score`]; `hvae train
/// --choice-score`, whose help the variants' lines are):
/// [`crate::select::normalised_association`] or [`crate::select::neighbour_agreement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "tool", derive(clap::ValueEnum))]
pub enum ChoiceScore {
    /// Each cluster's share of its rows' neighbour pairs that stay in it, averaged over
    /// the clusters (the normalised association of spectral clustering): a large
    /// cluster counts as much as a small one, so growing or merging clusters does not
    /// raise the score by itself.
    Association,
    /// The share of all neighbour pairs in one cluster: weighted by the clusters'
    /// sizes, it rates a partition higher when its large clusters swallow their borders.
    Agreement,
}

/// How the choice between the model and the GMM candidate scores their partitions by
/// default: [`ChoiceScore::Association`] (docs/benchmarks.md, "The choice scored per
/// cluster").
pub const CHOICE_SCORE: ChoiceScore = ChoiceScore::Association;

/// Where the neighbours of the consistency term are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighbourSpace {
    /// Cosine on the raw features.
    Raw,
    /// Cosine on the features after the model's input normalisation.
    Normalised,
    /// Both views of the features: the rows nearest by the sum of their ranks under
    /// the raw cosine and under the normalised cosine ([`mine_neighbours_both`]).
    Both,
}

/// The weight of the neighbour contrast in a default training ([`LossConfig::contrast`],
/// at its default temperature): the encoder learns to keep each row's neighbours near
/// on the sphere in the warm-up and the joint phase (docs/benchmarks.md, "The
/// neighbour contrast"). A stronger or sharper contrast clusters the suite no better,
/// and its int8 models lose fidelity: an encoder that tells nearby rows further apart
/// turns the int8 rounding into larger moves of `mu` ("The contrast's weight and
/// temperature").
pub const CONTRAST: f32 = 2.0;

/// How a default training places the centres after the warm-up: the partition, among
/// spherical k-means runs on the mean directions and on the normalised inputs, that
/// agrees best with the input neighbourhoods (docs/benchmarks.md, "The centres from the
/// partition that agrees best"). Its seeds land at one level where k-means on the mean
/// directions alone lands at two or three.
pub const CENTRE_INIT: CentreInit = CentreInit::Selected;

/// Runs of spherical k-means in each space behind a default training's centre
/// initialisation ([`FitConfig::kmeans_restarts`], [`CENTRE_INIT`]).
pub const KMEANS_RESTARTS: usize = 5;

/// The least optimiser steps of a default training ([`FitConfig::min_steps`]).
pub const MIN_STEPS: usize = 0;

/// The most optimiser steps of a default training ([`FitConfig::max_steps`]; 0: no
/// bound).
pub const MAX_STEPS: usize = 3500;

/// Hyper-parameters of [`fit`].
#[derive(Clone, Debug)]
pub struct FitConfig {
    /// Epochs in all (warm-up included); used when `steps` is 0.
    pub epochs: usize,
    /// Epochs of the VAE alone before the centres are initialised; used when `steps`
    /// is 0.
    pub warmup_epochs: usize,
    /// Optimiser steps in all (warm-up included); 0 to count in epochs instead.
    pub steps: usize,
    /// Optimiser steps of the VAE alone (with `steps`).
    pub warmup_steps: usize,
    /// With `steps` 0: the least optimiser steps in all. A data set so small that the
    /// epochs give fewer trains for a whole multiple of them (warm-up and joint phase
    /// alike) that reaches this; 0: the epochs as given.
    pub min_steps: usize,
    /// With `steps` 0: the most optimiser steps in all (0: no bound). A data set so
    /// large that the epochs give more trains for this many, warm-up and joint phase
    /// shortened in the same proportion; applied after `min_steps`.
    pub max_steps: usize,
    /// Rows per step (half anchors, half their neighbours, in the joint phase).
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Global-norm gradient clipping.
    pub clip: f32,
    /// Seed of every random number (initialisation, shuffling, neighbours, draws).
    pub seed: u64,
    /// A partner is drawn from this many nearest neighbours.
    pub neighbours: usize,
    /// Where the neighbours are mined.
    pub neighbour_space: NeighbourSpace,
    /// Loss weights.
    pub loss: LossConfig<f32>,
    /// Use the labels for a cross-entropy term.
    pub supervised: bool,
    /// Lloyd iterations of the centre initialisation.
    pub kmeans_iters: usize,
    /// Runs of spherical k-means behind the centre initialisation: with
    /// [`CentreInit::Latent`] the best by its objective is kept, with
    /// [`CentreInit::Selected`] this many in each space are candidates.
    pub kmeans_restarts: usize,
    /// How the centres are initialised after the warm-up.
    pub init: CentreInit,
    /// Weight of the KL term in the warm-up alone (`None`: `loss.beta` throughout).
    pub warmup_beta: Option<f32>,
    /// With [`CentreInit::Gmm`]: the mixture's partition as targets of the
    /// cross-entropy term for the rest of training (pseudo-labels).
    pub gmm_targets: bool,
    /// With `gmm_targets`: only rows whose most likely component has at least this
    /// posterior probability get a target (0: every row).
    pub gmm_confidence: f32,
    /// Length of the joint phase of the GMM candidate that
    /// [`crate::select::fit_with_gmm_candidate`] trains beside the model as configured,
    /// as a share of the configured joint phase (in `(0, 1]`; 1 by default). A
    /// shorter one costs less: docs/benchmarks.md has what it does to the suite.
    pub gmm_joint_share: f32,
    /// Runs of the mixture fit behind [`CentreInit::Gmm`], the best by likelihood kept.
    pub gmm_runs: usize,
    /// With `gmm_targets`: the weight of the consistency term while the model is
    /// trained towards the mixture's partition, in place of `loss.consistency`
    /// ([`GMM_CONSISTENCY`]: 0, the model follows the mixture alone).
    pub gmm_consistency: f32,
    /// With `gmm_targets`: the balance term pulls the cluster shares towards the
    /// mixture's (`true`, the default) rather than towards equal shares.
    pub gmm_shares: bool,
    /// At the end of the joint phase, the least lead in `choice_score` with which the
    /// model as configured is kept over the GMM candidate ([`CHOICE_LEAD`]; at 0, any
    /// lead or a tie).
    pub choice_lead: f64,
    /// Nearest neighbours (Euclidean, normalised inputs) against which the choice
    /// between the model and the GMM candidate scores their partitions
    /// ([`crate::select::fit_with_gmm_candidate`]).
    pub choice_neighbours: usize,
    /// How the choice scores a partition against those neighbours ([`CHOICE_SCORE`]).
    pub choice_score: ChoiceScore,
    /// Where [`crate::select::fit_with_gmm_candidate`] looks at both models to make its
    /// choice early, in order ([`CHOICE_LOOKS`]; none, or a share of 1: only at the end).
    pub choice_looks: Vec<ChoiceLook>,
    /// Full covariances in the mixture behind [`CentreInit::Gmm`] where the data allow
    /// ([`full_covariance_fits`]), diagonal ones elsewhere; `false`: diagonal always.
    pub gmm_full: bool,
}

/// How the centres are initialised after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CentreInit {
    /// Spherical k-means++ on the mean directions (best of `kmeans_restarts` runs by
    /// its objective).
    Latent,
    /// Candidate partitions from spherical k-means on the mean directions and on the
    /// normalised inputs (`kmeans_restarts` runs of each); the one that agrees best
    /// with the input neighbourhoods (times the balance of its cluster sizes,
    /// [`crate::select::agreement`]) gives the centres: the normalised mean direction
    /// of each of its clusters.
    Selected,
    /// A Gaussian mixture with diagonal covariances fitted to the normalised inputs
    /// ([`diagonal_gmm`]): each of its clusters gives a centre (the normalised mean
    /// direction of its rows) and a mixing weight (its share of the rows). The latent
    /// the warm-up shapes loses the inputs' Gaussian-mixture structure (measured:
    /// re-clustering it never recovers a mixture fitted on the inputs); this carries it
    /// over into the segmenter.
    Gmm,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 100,
            warmup_epochs: 20,
            steps: 0,
            warmup_steps: 0,
            min_steps: MIN_STEPS,
            max_steps: MAX_STEPS,
            batch: 64,
            lr: 2e-3,
            clip: 10.0,
            seed: 0,
            neighbours: 10,
            neighbour_space: NeighbourSpace::Both,
            loss: LossConfig {
                gamma: 6.0,
                contrast: CONTRAST,
                ..LossConfig::default()
            },
            supervised: false,
            kmeans_iters: 50,
            kmeans_restarts: KMEANS_RESTARTS,
            init: CENTRE_INIT,
            warmup_beta: None,
            gmm_targets: false,
            gmm_confidence: 0.0,
            gmm_joint_share: 1.0,
            gmm_runs: GMM_RUNS,
            gmm_consistency: GMM_CONSISTENCY,
            gmm_shares: true,
            choice_lead: CHOICE_LEAD,
            choice_neighbours: CHOICE_NEIGHBOURS,
            choice_score: CHOICE_SCORE,
            choice_looks: CHOICE_LOOKS.to_vec(),
            gmm_full: false,
        }
    }
}

impl FitConfig {
    /// `(warm-up steps, steps in all)` for `n` rows.
    pub fn schedule(&self, n: usize) -> (usize, usize) {
        if self.steps > 0 {
            return (self.warmup_steps.min(self.steps), self.steps);
        }
        // Each phase's steps an epoch (its round, counted in epochs here) times its epochs.
        let warm = self.round_len(n, 0, true) * self.warmup_epochs;
        let joint = self.round_len(n, 0, false) * self.epochs.saturating_sub(self.warmup_epochs);
        let times = self.min_steps.div_ceil((warm + joint).max(1)).max(1);
        let (warm, total) = (warm * times, (warm + joint) * times);
        if self.max_steps == 0 || total <= self.max_steps {
            return (warm, total);
        }
        // Both phases in proportion, the warm-up rounded to the nearest whole step (at
        // most `max_steps`: `warm <= total`).
        let (w, m, t) = (warm as u128, self.max_steps as u128, total as u128);
        (((w * m + t / 2) / t) as usize, self.max_steps)
    }

    /// Steps in one round of a fit of `n` rows whose schedule has `total` steps: an
    /// epoch of the warm-up (`warm`) or of the joint phase, or a hundredth of a schedule
    /// counted in steps. A fit reports its [`EpochStats`] once a round.
    pub fn round_len(&self, n: usize, total: usize, warm: bool) -> usize {
        if self.steps > 0 {
            (total / 100).max(1)
        } else if warm {
            n.div_ceil(self.batch.max(1))
        } else {
            n.div_ceil((self.batch / 2).max(1))
        }
    }

    /// The rounds a fit of `n` rows reports ([`EpochStats`]): the warm-up's and the
    /// joint phase's, a last shorter one of each included (the epochs, unless
    /// `min_steps` or `max_steps` changed the schedule).
    pub fn rounds(&self, n: usize) -> usize {
        let (warm, total) = self.schedule(n);
        warm.div_ceil(self.round_len(n, total, true))
            + (total - warm).div_ceil(self.round_len(n, total, false))
    }
}

/// Mean loss parts of one epoch.
#[derive(Clone, Copy, Debug)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Which of [`fit_branches`]' branches trained it (0 for the warm-up, and for every
    /// run of one model).
    pub branch: usize,
    /// Which restart trained it (0-based, in the order of
    /// [`crate::select::restart_seed`]; 0 for every run of one model).
    pub restart: usize,
    /// True in the warm-up.
    pub warmup: bool,
    /// Mean of each loss part over the epoch's steps.
    pub loss: LossParts<f32>,
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The data does not fit the shape, or the configuration is out of range.
    #[error("{0}")]
    Config(String),
    /// A step failed (non-finite numbers: lower the learning rate).
    #[error("training step {step} failed: {source}")]
    Step {
        /// Step index.
        step: usize,
        /// The core's error.
        source: hvae::train::loss::LossError,
    },
    /// The optimiser refused an update.
    #[error("optimiser: {0}")]
    Optim(#[from] hvae::train::optim::OptimError),
    /// The centre initialisation failed.
    #[error("centre initialisation: {0}")]
    KMeans(#[from] hvae::train::kmeans::KMeansError),
    /// Encoding failed after training.
    #[error("encoding: {0}")]
    Infer(#[from] hvae::InferError),
}

/// What a training may be given rather than fit on its own rows: for rows that are a
/// projection of the data ([`crate::pca`]), the data's own neighbours, and one scale for
/// every feature so that the projection's proportions are kept. The default fits both
/// on the rows trained on, as [`fit`] does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prepared<'a> {
    /// Each row's neighbours, `n x k` row indices as [`mine_for`] gives them (`k` =
    /// [`neighbours_per_row`] of [`FitConfig::neighbours`]), mined elsewhere; `None`:
    /// mined on the rows trained on.
    pub neighbours: Option<&'a [u32]>,
    /// One scale for every feature ([`shared_scale`]): the features keep their relative
    /// spreads (offsets stay per feature).
    pub shared_scale: bool,
}

/// What one training runs on: the model's shape, the rows, their labels, the
/// configuration and what it is given beside the rows.
#[derive(Clone, Copy, Debug)]
pub struct FitJob<'a> {
    /// The model's shape.
    pub shape: Shape,
    /// The training rows (`n x shape.input` values).
    pub x: &'a [f32],
    /// Class labels, one per row, when the training is supervised.
    pub labels: Option<&'a [u8]>,
    /// The training configuration.
    pub cfg: &'a FitConfig,
    /// What the training is given rather than fit on `x` (the default: nothing).
    pub prepared: Prepared<'a>,
}

impl<'a> FitJob<'a> {
    /// Unlabelled rows `x`, nothing given: what [`fit`] trains on without labels.
    pub fn new(shape: Shape, x: &'a [f32], cfg: &'a FitConfig) -> Self {
        FitJob {
            shape,
            x,
            labels: None,
            cfg,
            prepared: Prepared::default(),
        }
    }
}

/// The one scale [`Prepared::shared_scale`] gives every feature, from the per-feature
/// rule's `scale`: the reciprocal of the root mean square of the features' spreads
/// (`1 / scale`), so that the features' variances average about 1, as they would after
/// the per-feature rule, without changing their proportions.
pub fn shared_scale(scale: &[f32]) -> f32 {
    let mean_square = scale.iter().map(|s| 1.0 / (s * s)).sum::<f32>() / scale.len() as f32;
    1.0 / mean_square.sqrt()
}

/// The `k` nearest neighbours of every row of `x` (`n x d`, raw units) in `space`
/// ([`mine_neighbours`], [`mine_neighbours_both`]; the normalisation by the core's rule).
pub fn mine_for(
    space: NeighbourSpace,
    x: &[f32],
    d: usize,
    k: usize,
) -> Result<Vec<u32>, FitError> {
    Ok(match space {
        NeighbourSpace::Raw => mine_neighbours(x, d, k),
        NeighbourSpace::Normalised => mine_neighbours(&normalise_rows(x, d)?, d, k),
        NeighbourSpace::Both => mine_neighbours_both(x, &normalise_rows(x, d)?, d, k),
    })
}

/// [`fit_normalisation`], its error a training's.
pub(crate) fn fit_normalisation_for_training(
    x: &[f32],
    d: usize,
) -> Result<(Vec<f32>, Vec<f32>), FitError> {
    fit_normalisation(x, d).map_err(|e| FitError::Config(format!("normalisation: {e}")))
}

/// The rows of `x` (`d` columns) in the units of the normalisation fitted on them.
pub(crate) fn normalise_rows(x: &[f32], d: usize) -> Result<Vec<f32>, FitError> {
    let (offset, scale) = fit_normalisation_for_training(x, d)?;
    Ok(normalised(x, &offset, &scale))
}

/// Per-feature offset and scale of `x` (`n x d`) by the core's rule
/// ([`hvae::infer::normalise`]): the same normalisation a device fits to its buffer.
pub fn fit_normalisation(
    x: &[f32],
    d: usize,
) -> Result<(Vec<f32>, Vec<f32>), hvae::infer::normalise::NormaliseError> {
    let mut offset = vec![0f32; d];
    let mut scale = vec![0f32; d];
    hvae::infer::normalise::fit(x.chunks_exact(d), &mut offset, &mut scale)?;
    Ok((offset, scale))
}

/// The rows of `x` (`d` columns) scaled to unit length; a row of zeros stays zero.
fn unit_rows(x: &[f32], d: usize) -> Vec<f32> {
    x.chunks_exact(d)
        .flat_map(|r| {
            let nr = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            let s = if nr > 0.0 { 1.0 / nr } else { 0.0 };
            r.iter().map(move |v| v * s)
        })
        .collect()
}

/// The cosine of the unit row `i` of `rows` (`d` columns) with every other row, in row
/// order: `(j, cosine)`, each a sum in feature order.
pub(crate) fn cosines_with_others(
    rows: &[f32],
    d: usize,
    i: usize,
) -> impl Iterator<Item = (usize, f32)> + '_ {
    let xi = &rows[i * d..(i + 1) * d];
    rows.chunks_exact(d)
        .enumerate()
        .filter(move |&(j, _)| j != i)
        .map(move |(j, r)| (j, xi.iter().zip(r).map(|(a, b)| a * b).sum()))
}

/// How many neighbours each of `n` rows gets when `k` are asked for: `k`, at most the
/// `n - 1` other rows, at least one (the neighbour searches' rule, and what a given
/// neighbour list must hold).
pub fn neighbours_per_row(k: usize, n: usize) -> usize {
    k.min(n.saturating_sub(1)).max(1)
}

/// The `k` nearest neighbours of every row by cosine (excluding itself), `n x k` row
/// indices, nearest first. Exact: `n^2 d / 2` multiply-adds, computed in blocks so that
/// memory stays `O(n k + n d)`.
pub fn mine_neighbours(x: &[f32], d: usize, k: usize) -> Vec<u32> {
    let n = x.len() / d;
    let k = neighbours_per_row(k, n);
    let unit = unit_rows(x, d);
    let mut out = vec![0u32; n * k];
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for i in 0..n {
        best.clear();
        for (j, c) in cosines_with_others(&unit, d, i) {
            if best.len() < k || c > best[best.len() - 1].0 {
                let pos = best.partition_point(|&(b, _)| b >= c);
                best.insert(pos, (c, j as u32));
                best.truncate(k);
            }
        }
        for (o, &(_, j)) in out[i * k..].iter_mut().zip(&best) {
            *o = j;
        }
    }
    out
}

/// The `k` nearest neighbours of every row under two views at once (`a` and `b`, both
/// `n x d`): each other row is ranked by cosine in each view, and the rows with the
/// smallest sum of the two ranks are kept (ties to the smaller row index), nearest
/// first. A neighbour must be near in both views, which keeps the neighbourhoods of
/// data whose raw units mislead (one large column) and of data whose normalisation
/// misleads (near-constant features blown up) mostly right. `O(n^2 d)` for the cosines,
/// then per row a partial sort of each view's first 128 rows, and the whole
/// ranking (`O(n log n)`) only for a row whose neighbours those do not settle.
pub fn mine_neighbours_both(a: &[f32], b: &[f32], d: usize, k: usize) -> Vec<u32> {
    let n = a.len() / d;
    let k = neighbours_per_row(k, n);
    // Each view's unit rows transposed (`d x n`): the cosines of one row with every
    // other are then summed side by side, each still in feature order.
    let (ua, ub) = (
        transposed(&unit_rows(a, d), d),
        transposed(&unit_rows(b, d), d),
    );
    // A row's rank sum is at least the rank it has in either view, so when the `k`
    // smallest sums among the rows in the first `top` of both views are below `top`,
    // no other row can reach them: the neighbours come from the two views' first `top`
    // (ranked exactly by a partial sort) and the whole ranking is needed only when not.
    let top = (2 * k).max(TOP_RANKS).min(n);
    let mut out = vec![0u32; n * k];
    let mut ranks = [vec![0u32; n], vec![0u32; n]];
    let mut keys: Vec<u64> = Vec::with_capacity(n);
    let mut sums: Vec<u64> = Vec::with_capacity(n);
    let mut sims = vec![0f32; n];
    for i in 0..n {
        for first in [top, n] {
            for (u, rank) in [&ua, &ub].into_iter().zip(ranks.iter_mut()) {
                ranked(u, n, i, first, &mut sims, &mut keys);
                rank.fill(u32::MAX);
                for (r, &key) in keys.iter().enumerate() {
                    rank[key as u32 as usize] = r as u32;
                }
            }
            // Ascending rank sum, ties to the smaller index: one key each.
            sums.clear();
            sums.extend(
                (0..n)
                    .filter(|&j| j != i && ranks[0][j] != u32::MAX && ranks[1][j] != u32::MAX)
                    .map(|j| (u64::from(ranks[0][j] + ranks[1][j]) << 32) | j as u64),
            );
            smallest(&mut sums, k);
            let exact = sums.len() == k && sums.last().is_some_and(|&s| s >> 32 < first as u64);
            if exact || first == n {
                break;
            }
        }
        for (o, &key) in out[i * k..(i + 1) * k].iter_mut().zip(&sums) {
            *o = key as u32;
        }
    }
    out
}

/// The first `first` of all rows by descending cosine with row `i` (of the unit rows
/// transposed, `ut`; row `i` itself last, ties to the smaller index), in order, as
/// `key = (!order(cosine) << 32) | row` in `keys`.
fn ranked(ut: &[f32], n: usize, i: usize, first: usize, sims: &mut [f32], keys: &mut Vec<u64>) {
    cosines_of(ut, n, i, sims);
    sims[i] = f32::NEG_INFINITY;
    keys.clear();
    keys.extend(
        sims.iter()
            .enumerate()
            .map(|(j, &s)| (u64::from(!total_order(s)) << 32) | j as u64),
    );
    smallest(keys, first);
}

/// The `k` smallest of `keys`, in order.
fn smallest(keys: &mut Vec<u64>, k: usize) {
    if keys.len() > k && k > 0 {
        keys.select_nth_unstable(k - 1);
        keys.truncate(k);
    }
    keys.sort_unstable();
}

/// Rows of each view ranked exactly per row by [`mine_neighbours_both`] before it falls
/// back to ranking them all.
const TOP_RANKS: usize = 128;

/// `x` (`n x d`, row-major) transposed to `d x n`.
pub(crate) fn transposed<T: Copy + Default>(x: &[T], d: usize) -> Vec<T> {
    let mut t = vec![T::default(); x.len()];
    hvae::kernels::portable::transpose(x, x.len() / d.max(1), d, &mut t);
    t
}

/// The dot products of row `i` of `ut` (the rows transposed, `d x n`) with every row,
/// into `sims`: each the sum of the products in feature order, from the value an
/// empty `f32` sum starts at (the bits of `Iterator::sum` over the products).
fn cosines_of(ut: &[f32], n: usize, i: usize, sims: &mut [f32]) {
    let start: f32 = std::iter::empty::<f32>().sum();
    sims.fill(start);
    for col in ut.chunks_exact(n) {
        let xi = col[i];
        for (s, &v) in sims.iter_mut().zip(col) {
            *s += xi * v;
        }
    }
}

/// `x`'s place in `f32::total_cmp`'s order as an unsigned integer.
pub(crate) fn total_order(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Trains a model of `shape` on `x` (`n x D`, raw units). `labels` (class indices
/// `< K`) are used only with `cfg.supervised`. `progress` is called after every epoch
/// with the epoch's mean loss parts and the model as it stands.
/// The centres of the result are at unit norm ([`Model::normalise_centres`]).
pub fn fit(
    shape: Shape,
    x: &[f32],
    labels: Option<&[u8]>,
    cfg: &FitConfig,
    progress: impl FnMut(&EpochStats, &Model<f32, Vec<f32>>),
) -> Result<Model<f32, Vec<f32>>, FitError> {
    let mut run = Run::start(FitJob {
        labels,
        ..FitJob::new(shape, x, cfg)
    })?;
    run.train(cfg, run.total, progress)?;
    run.finish(cfg)
}

/// How one branch of [`fit_branches`] places its centres after the shared warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Branch {
    /// See [`FitConfig::init`].
    pub init: CentreInit,
    /// See [`FitConfig::gmm_targets`].
    pub gmm_targets: bool,
    /// The branch's joint phase as a share of the configured one (1: all of it; at
    /// least one step).
    pub joint_share: f32,
}

impl Branch {
    /// The branch `cfg` itself asks for.
    pub fn of(cfg: &FitConfig) -> Self {
        Branch {
            init: cfg.init,
            gmm_targets: cfg.gmm_targets,
            joint_share: 1.0,
        }
    }
}

/// A choice among [`fit_branches`]' branches made part of the way through their joint
/// phases: each time the first branch has trained a share `at[i]` of its joint phase
/// (rounded to whole rounds), `decide` sees the look's index and every branch's model
/// as it stands, and may name the one branch to train on; the others stop there. When
/// no look names one, every branch trains to its end.
pub struct EarlyChoice<'c> {
    /// Where the looks are, as shares of the configured joint phase, in increasing
    /// order (a look at a share of 1 or more, or at the end of the shortest branch or
    /// later, and every one after it, is not made).
    pub at: &'c [f32],
    /// The branch to train on alone, or `None` to look again (or train every branch to
    /// its end after the last look).
    pub decide: &'c mut Decide<'c>,
}

/// What makes an [`EarlyChoice`]: the look's index into [`EarlyChoice::at`] and each
/// branch's model at that point in, the branch to keep (if any) out.
pub type Decide<'c> =
    dyn FnMut(usize, &[Model<f32, Vec<f32>>]) -> Result<Option<usize>, FitError> + 'c;

/// What [`fit_branches`] trains.
pub struct Branches {
    /// One model per branch: trained to the end of its joint phase, or, for a branch an
    /// early choice left behind, to the point of that choice.
    pub models: Vec<Model<f32, Vec<f32>>>,
    /// The branch an [`EarlyChoice`] kept, when it kept one.
    pub kept_early: Option<usize>,
}

/// Trains one model per branch from one warm-up: the VAE's warm-up (and everything
/// before it: the initial weights, the normalisation, the neighbours) does not depend
/// on how the centres are placed after it, so it runs once and each branch continues
/// from a copy of its state (weights, optimiser moments, marginal, random stream,
/// shuffled order). With `job.prepared` at its default, each model trained to its end is
/// bit for bit the one [`fit`] trains with `job.cfg` and the branch's `init` and
/// `gmm_targets`, whether or not an `early` choice was asked for: a run paused and
/// continued takes the same steps.
/// `progress` sees the warm-up, then each branch's epochs as that branch trains them,
/// tagged with [`EpochStats::branch`]: every branch's up to where an early choice was
/// made, then the kept branch's (or every branch's, one branch after the other).
pub fn fit_branches(
    job: FitJob<'_>,
    branches: &[Branch],
    early: Option<EarlyChoice<'_>>,
    mut progress: impl FnMut(&EpochStats, &Model<f32, Vec<f32>>),
) -> Result<Branches, FitError> {
    let cfg = job.cfg;
    let mut warm = Run::start(job)?;
    warm.train(cfg, warm.warm_steps, &mut progress)?;
    let configs: Vec<FitConfig> = branches
        .iter()
        .map(|b| FitConfig {
            init: b.init,
            gmm_targets: b.gmm_targets,
            ..cfg.clone()
        })
        .collect();
    let mut runs: Vec<Run<'_>> = branches
        .iter()
        .map(|b| {
            let mut run = warm.clone();
            if b.joint_share < 1.0 {
                let joint = run.total - run.warm_steps;
                let share = (joint as f64 * f64::from(b.joint_share.max(0.0))).round() as usize;
                run.total = run.warm_steps + share.clamp(1, joint.max(1));
            }
            run
        })
        .collect();
    let mut kept_early = None;
    let mut paused = Vec::new();
    if let Some(e) = early {
        // A share of 1 is the end, whose choice is not an early one (rounding could put
        // its step before the end of a short last round).
        for (look, &at) in e.at.iter().enumerate().take_while(|&(_, &at)| at < 1.0) {
            let Some(pause) = runs.first().map(|first| first.joint_step_at(cfg, at)) else {
                break;
            };
            if !runs.iter().all(|r| pause < r.total) {
                break;
            }
            for (b, (run, c)) in runs.iter_mut().zip(&configs).enumerate() {
                run.train(c, pause, |s, m| {
                    progress(&EpochStats { branch: b, ..*s }, m)
                })?;
            }
            paused = runs
                .iter()
                .zip(&configs)
                .map(|(r, c)| r.clone().finish(c))
                .collect::<Result<_, _>>()?;
            kept_early = (e.decide)(look, &paused)?.filter(|&k| k < runs.len());
            if kept_early.is_some() {
                break;
            }
        }
    }
    let mut models = Vec::with_capacity(branches.len());
    let mut paused = paused.into_iter();
    for (b, (mut run, c)) in runs.into_iter().zip(&configs).enumerate() {
        let left = paused.next();
        if let (Some(k), Some(m)) = (kept_early, left) {
            if k != b {
                models.push(m);
                continue;
            }
        }
        let total = run.total;
        run.train(c, total, |s, m| {
            progress(&EpochStats { branch: b, ..*s }, m)
        })?;
        models.push(run.finish(c)?);
    }
    Ok(Branches { models, kept_early })
}

/// A training run that can stop after any step and be copied: everything
/// [`fit`]'s steps read and write between two steps.
#[derive(Clone)]
struct Run<'d> {
    shape: Shape,
    x: &'d [f32],
    labels: Option<Vec<Option<u8>>>,
    model: Model<f32, Vec<f32>>,
    rng: Xoshiro256PlusPlus,
    offset: Vec<f32>,
    scale: Vec<f32>,
    neighbours: Vec<u32>,
    state: OptimState<Vec<f32>>,
    /// The loss's moving-average marginal, the one value of [`LossBuffers`] that
    /// lives across steps.
    marginal: Vec<f32>,
    order: Vec<usize>,
    cursor: usize,
    pseudo: Option<Vec<Option<u8>>>,
    round: usize,
    step: usize,
    warm_steps: usize,
    total: usize,
    /// The shares the balance term pulls towards (the mixture's, with `gmm_targets` and
    /// `gmm_shares`), set into each pass's buffers.
    shares: Option<Vec<f32>>,
}

impl<'d> Run<'d> {
    /// Checks the inputs and sets up the model before its first step.
    fn start(job: FitJob<'d>) -> Result<Self, FitError> {
        let FitJob {
            shape,
            x,
            labels,
            cfg,
            prepared,
        } = job;
        shape
            .validate()
            .map_err(|e| FitError::Config(e.to_string()))?;
        let d = shape.input;
        let n = x.len() / d;
        if !x.len().is_multiple_of(d) || n < 2 {
            return Err(FitError::Config(format!(
                "need at least 2 rows of {d} values"
            )));
        }
        if n < shape.clusters {
            return Err(FitError::Config(format!(
                "{} clusters but only {n} rows",
                shape.clusters
            )));
        }
        if cfg.batch < 2 || cfg.batch > 2 * hvae::train::trainer::MAX_BATCH || cfg.epochs == 0 {
            return Err(FitError::Config(
                "batch must be in 2..=128 and epochs >= 1".into(),
            ));
        }
        let labels = if cfg.supervised {
            let l = labels
                .ok_or_else(|| FitError::Config("--supervised needs a label column".into()))?;
            if l.len() != n {
                return Err(FitError::Config("one label per row needed".into()));
            }
            Some(l.iter().map(|&y| Some(y)).collect::<Vec<Option<u8>>>())
        } else {
            None
        };

        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let mut model = Model::<f32, Vec<f32>>::with_shape(shape, &mut rng)
            .map_err(|e| FitError::Config(e.to_string()))?;
        let (offset, mut scale) = fit_normalisation_for_training(x, d)?;
        if prepared.shared_scale {
            let one = shared_scale(&scale);
            scale.fill(one);
        }
        model
            .set_normalisation(&offset, &scale)
            .map_err(|e| FitError::Config(e.to_string()))?;
        let neighbours = match prepared.neighbours {
            Some(given) => {
                let k = neighbours_per_row(cfg.neighbours, n);
                if given.len() != n * k || given.iter().any(|&j| j as usize >= n) {
                    return Err(FitError::Config(format!(
                        "{} neighbour indices given where {n} rows of {k} were needed",
                        given.len()
                    )));
                }
                given.to_vec()
            }
            None => mine_for(cfg.neighbour_space, x, d, cfg.neighbours)?,
        };
        let range = shape.scope_range(Scope::Full);
        let opt = OptimConfig::new(Optimiser::adam(cfg.lr));
        let state = OptimState::new(vec![0f32; state_len(opt.optimiser.kind(), range.len())]);
        let (warm_steps, total) = cfg.schedule(n);
        Ok(Run {
            shape,
            x,
            labels,
            model,
            rng,
            offset,
            scale,
            neighbours,
            state,
            marginal: vec![1.0 / shape.clusters as f32; shape.clusters],
            order: (0..n).collect(),
            cursor: n,
            pseudo: None,
            round: 0,
            step: 0,
            warm_steps,
            total,
            shares: None,
        })
    }

    /// Steps in one round of the warm-up or of the joint phase ([`FitConfig::round_len`]).
    fn round_len(&self, cfg: &FitConfig, warm: bool) -> usize {
        cfg.round_len(self.x.len() / self.shape.input, self.total, warm)
    }

    /// The step a share `at` of the joint phase into it, rounded to whole rounds (at
    /// least one).
    fn joint_step_at(&self, cfg: &FitConfig, at: f32) -> usize {
        let round = self.round_len(cfg, false);
        let joint = self.total.saturating_sub(self.warm_steps);
        let rounds = (joint as f64 * f64::from(at.max(0.0)) / round as f64).round() as usize;
        self.warm_steps + rounds.max(1) * round
    }

    /// Runs the steps from where the run stands up to step `until` (exclusive); the
    /// centres are placed by `cfg.init` when the warm-up ends.
    fn train(
        &mut self,
        cfg: &FitConfig,
        until: usize,
        mut progress: impl FnMut(&EpochStats, &Model<f32, Vec<f32>>),
    ) -> Result<(), FitError> {
        let (shape, x) = (self.shape, self.x);
        let d = shape.input;
        let n = x.len() / d;
        let nn = self.neighbours.len() / n;
        let (warm_steps, total) = (self.warm_steps, self.total);
        let range = shape.scope_range(Scope::Full);
        let opt = OptimConfig::new(Optimiser::adam(cfg.lr)).with_clip_norm(cfg.clip);
        // The forward passes read the weights transposed: the same bits, vectorised.
        let len = LossBuffers::<f32>::storage_len_batch_kernels(&shape, Scope::Full, cfg.batch);
        let mut store = vec![0f32; len];
        let mut bufs = LossBuffers::with_batch_kernels(&shape, Scope::Full, cfg.batch, &mut store)
            .expect("storage of LossBuffers::storage_len_batch_kernels");
        bufs.marginal_mut().copy_from_slice(&self.marginal);
        let mut rows = vec![0f32; cfg.batch * d];
        let mut row_labels: Vec<Option<u8>> = Vec::with_capacity(cfg.batch);
        let mut pairs: Vec<(u16, u16)> = Vec::with_capacity(cfg.batch / 2);
        // A run stops only at the end of a round (the warm-up's last step ends one),
        // so every round's sum starts empty here.
        let mut sum = LossParts::<f32>::default();
        let mut in_round = 0;

        for step in self.step..until.min(total) {
            let warm = step < warm_steps;
            if step == warm_steps {
                self.place_centres(cfg)?;
            }
            // The buffers are made anew for each stretch of steps; the shares, once the
            // centres are placed, go into them before the first step that needs them.
            if let (Some(shares), None) = (&self.shares, bufs.balance_prior()) {
                bufs.set_balance_prior(shares)
                    .map_err(|source| FitError::Step { step, source })?;
            }
            // The neighbour contrast needs pairs in the warm-up as well.
            let paired = !warm || cfg.loss.contrast != 0.0;
            let anchors = if paired { cfg.batch / 2 } else { cfg.batch };
            if self.cursor + anchors > n {
                shuffle(&mut self.order, &mut self.rng);
                self.cursor = 0;
            }
            let chunk = &self.order[self.cursor..(self.cursor + anchors).min(n)];
            self.cursor += anchors;
            let mut loss_cfg = cfg.loss;
            if self.pseudo.is_some() {
                loss_cfg.consistency = cfg.gmm_consistency;
            }
            if warm {
                loss_cfg.gamma = 0.0;
                if let Some(b) = cfg.warmup_beta {
                    loss_cfg.beta = b;
                }
            }
            pairs.clear();
            row_labels.clear();
            let a = chunk.len();
            let (labels, pseudo) = (&self.labels, &self.pseudo);
            let label_of = |r: usize| labels.as_ref().or(pseudo.as_ref()).and_then(|l| l[r]);
            for (i, &r) in chunk.iter().enumerate() {
                rows[i * d..(i + 1) * d].copy_from_slice(&x[r * d..(r + 1) * d]);
                row_labels.push(if warm { None } else { label_of(r) });
            }
            let mut used = a;
            if paired {
                for (i, &r) in chunk.iter().enumerate() {
                    let j = self.neighbours[r * nn + uniform_index(&mut self.rng, nn)] as usize;
                    rows[(a + i) * d..(a + i + 1) * d].copy_from_slice(&x[j * d..(j + 1) * d]);
                    row_labels.push(if warm { None } else { label_of(j) });
                    pairs.push((i as u16, (a + i) as u16));
                }
                used = 2 * a;
            }
            if row_labels.iter().all(Option::is_none) {
                row_labels.clear();
            }
            let batch = Batch {
                inputs: &rows[..used * d],
                labels: &row_labels,
                pairs: &pairs,
            };
            let parts = loss_and_grad(
                &self.model,
                &batch,
                &loss_cfg,
                &mut RandomDraws(&mut self.rng),
                &mut bufs,
            )
            .map_err(|source| FitError::Step { step, source })?;
            self.state.step(
                &opt,
                &mut self.model.params_mut()[range.clone()],
                bufs.grads(),
            )?;
            add(&mut sum, &parts);
            in_round += 1;
            self.step = step + 1;
            let last_of_phase = step + 1 == warm_steps || step + 1 == total;
            if in_round == self.round_len(cfg, warm) || last_of_phase {
                self.round += 1;
                let stats = EpochStats {
                    epoch: self.round,
                    branch: 0,
                    restart: 0,
                    warmup: warm,
                    loss: scale_parts(sum, 1.0 / in_round as f32),
                };
                progress(&stats, &self.model);
                sum = LossParts::default();
                in_round = 0;
            }
        }
        self.marginal.copy_from_slice(bufs.marginal());
        Ok(())
    }

    /// The centres (and with [`CentreInit::Gmm`] the log-weights and targets) at the
    /// end of the warm-up.
    fn place_centres(&mut self, cfg: &FitConfig) -> Result<(), FitError> {
        let (shape, x) = (self.shape, self.x);
        let d = shape.input;
        match cfg.init {
            CentreInit::Latent => init_centres(
                &mut self.model,
                x,
                cfg.kmeans_iters,
                cfg.kmeans_restarts,
                &mut self.rng,
            ),
            CentreInit::Selected => init_selected(
                &mut self.model,
                x,
                &normalised(x, &self.offset, &self.scale),
                &self.neighbours,
                cfg,
                &mut self.rng,
            ),
            CentreInit::Gmm => {
                let xn = normalised(x, &self.offset, &self.scale);
                let n = xn.len() / d;
                let full = cfg.gmm_full && full_covariance_fits(n, d);
                let (parts, confidence) = gmm_posterior(
                    &xn,
                    d,
                    shape.clusters,
                    cfg.gmm_runs.max(1),
                    full,
                    &mut self.rng,
                );
                let mus = encode_all(&self.model, x)?;
                let (centres, weights) =
                    partition_centres(&mus, shape.latent, shape.clusters, &parts);
                if cfg.gmm_targets && self.labels.is_none() {
                    self.pseudo = Some(
                        parts
                            .iter()
                            .zip(&confidence)
                            .map(|(&l, &p)| {
                                (cfg.gmm_confidence <= 0.0 || p >= f64::from(cfg.gmm_confidence))
                                    .then_some(l as u8)
                            })
                            .collect(),
                    );
                }
                set_centres(&mut self.model, &centres);
                set_log_weights(&mut self.model, &weights);
                if self.pseudo.is_some() && cfg.gmm_shares {
                    // A component no row is most likely under keeps a share of half a
                    // row: the balance's logarithm stays finite.
                    let floor = 0.5 / n.max(1) as f32;
                    self.shares = Some(weights.iter().map(|&w| w.max(floor)).collect());
                }
                Ok(())
            }
        }
    }

    /// The trained model, its centres at unit norm (the same segmenter, and no square
    /// root per centre on the device).
    fn finish(mut self, cfg: &FitConfig) -> Result<Model<f32, Vec<f32>>, FitError> {
        if self.warm_steps >= self.total {
            init_centres(
                &mut self.model,
                self.x,
                cfg.kmeans_iters,
                cfg.kmeans_restarts,
                &mut self.rng,
            )?;
        }
        self.model.normalise_centres()?;
        Ok(self.model)
    }
}

/// `x` after the normalisation `(x - offset) * scale`.
pub fn normalised(x: &[f32], offset: &[f32], scale: &[f32]) -> Vec<f32> {
    x.chunks_exact(offset.len())
        .flat_map(|r| {
            r.iter()
                .zip(offset)
                .zip(scale)
                .map(|((v, o), s)| (v - o) * s)
        })
        .collect()
}

/// The mean direction of every row, `n x M`.
fn encode_all(model: &Model<f32, Vec<f32>>, x: &[f32]) -> Result<Vec<f32>, FitError> {
    let shape = *model.shape();
    let mut work = vec![0f32; shape.work_len()];
    let mut mus = Vec::with_capacity(x.len() / shape.input * shape.latent);
    for row in x.chunks_exact(shape.input) {
        mus.extend_from_slice(model.encode(row, &mut work)?.mu);
    }
    Ok(mus)
}

/// The centres of [`CentreInit::Selected`].
fn init_selected(
    model: &mut Model<f32, Vec<f32>>,
    x: &[f32],
    xn: &[f32],
    neighbours: &[u32],
    cfg: &FitConfig,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<(), FitError> {
    let shape = *model.shape();
    let (m, k, d) = (shape.latent, shape.clusters, shape.input);
    let n = x.len() / d;
    let mus = encode_all(model, x)?;
    let mut best: Option<(f64, Vec<u8>)> = None;
    for (points, dim) in [(&mus[..], m), (xn, d)] {
        let mut centres = vec![0f32; k * dim];
        let mut scratch = vec![0f32; scratch_len(k, dim)];
        let mut labels = vec![0u8; n];
        for _ in 0..cfg.kmeans_restarts.max(1) {
            // A row of zeros (all features at their mean) has no direction: such data
            // leave only the latent candidates.
            if spherical_kmeans(
                points,
                dim,
                k,
                cfg.kmeans_iters,
                rng,
                &mut centres,
                &mut scratch,
                &mut labels,
            )
            .is_err()
            {
                break;
            }
            let l: Vec<usize> = labels.iter().map(|&v| usize::from(v)).collect();
            let score = crate::select::agreement(&l, neighbours, k);
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, labels.clone()));
            }
        }
    }
    let Some((_, labels)) = best else {
        return init_centres(model, x, cfg.kmeans_iters, 1, rng);
    };
    let labels: Vec<usize> = labels.iter().map(|&l| usize::from(l)).collect();
    set_centres(model, &partition_centres(&mus, m, k, &labels).0);
    Ok(())
}

/// The centres of a partition of the rows (`labels`, one in `0..k` per row of the mean
/// directions `mus`, `M` columns): each cluster's normalised mean direction (an empty
/// cluster starts on some row's direction), and each cluster's share of the rows.
fn partition_centres(mus: &[f32], m: usize, k: usize, labels: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let mut centres = vec![0f32; k * m];
    let mut counts = vec![0f32; k];
    for (mu, &l) in mus.chunks_exact(m).zip(labels) {
        counts[l] += 1.0;
        for (c, v) in centres[l * m..].iter_mut().zip(mu) {
            *c += v;
        }
    }
    for (c, fallback) in centres.chunks_exact_mut(m).zip(mus.chunks_exact(m)) {
        let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 1e-6 {
            c.iter_mut().for_each(|v| *v /= norm);
        } else {
            c.copy_from_slice(fallback);
        }
    }
    let n = labels.len().max(1) as f32;
    (centres, counts.iter().map(|c| c / n).collect())
}

/// Neighbours of the choice between the model and the GMM candidate by default
/// ([`FitConfig::choice_neighbours`]).
pub const CHOICE_NEIGHBOURS: usize = 20;

/// One look of the early choice between the model and the GMM candidate: at a share
/// `at` of the joint phase, the model whose score ([`FitConfig::choice_score`]) leads
/// the other's by at least `margin` is kept and trains on alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChoiceLook {
    /// Where, as a share of the joint phase, in `(0, 1]` (1: at the end, no early look).
    pub at: f32,
    /// The lead in score that makes the choice there, in `[0, 1]`.
    pub margin: f64,
}

/// The early choice's looks by default ([`FitConfig::choice_looks`]): at a sixteenth
/// of the joint phase, an eighth and a quarter, each with [`default_margin`]'s lead.
pub const CHOICE_LOOKS: [ChoiceLook; 3] = [
    ChoiceLook {
        at: 0.0625,
        margin: default_margin(0.0625),
    },
    ChoiceLook {
        at: 0.125,
        margin: default_margin(0.125),
    },
    ChoiceLook {
        at: 0.25,
        margin: default_margin(0.25),
    },
];

/// The lead in score that makes the early choice at share `at` of the joint phase
/// by default: 0.05 below an eighth, 0.04 below a quarter, 0.02 from a quarter on
/// (each above the largest lead that a pick differing from the end's had at that
/// share on the suite's tuned half: docs/benchmarks.md, "The choice made early").
pub const fn default_margin(at: f32) -> f64 {
    if at < 0.125 {
        0.05
    } else if at < 0.25 {
        0.04
    } else {
        0.02
    }
}

/// Runs of [`diagonal_gmm`] behind [`CentreInit::Gmm`] by default (the best by
/// likelihood kept; [`FitConfig::gmm_runs`]).
pub const GMM_RUNS: usize = 10;

/// The consistency term's weight while a model is trained towards the mixture's
/// partition by default ([`FitConfig::gmm_consistency`]): none, so that the GMM
/// candidate's clusters are the mixture's (docs/benchmarks.md: with the term, the
/// neighbours pull the model off the mixture's boundaries).
pub const GMM_CONSISTENCY: f32 = 0.0;

/// The model as configured is kept over the GMM candidate at the end of the joint
/// phase only when its score ([`FitConfig::choice_score`]) leads by at least this
/// ([`FitConfig::choice_lead`]): the candidate's partition is the mixture's on every
/// seed, the model's score varies between seeds by about this much (either score).
pub const CHOICE_LEAD: f64 = 0.005;

/// A Gaussian mixture of `k` components with diagonal covariances fitted by EM to the
/// rows of `x` (`d` columns), the best of `runs` runs by log-likelihood; returns each
/// row's most likely component. A run starts from k-means++ seeds and at most 20 Lloyd
/// iterations, then EM iterations; every variance is floored at `1e-4` (as
/// scikit-learn's `reg_covar`), so a component on constant features stays finite. The
/// runs are compared after [`GMM_SCREEN_ITERS`] EM iterations on at most
/// [`GMM_SCREEN_ROWS`] evenly spaced rows; the best goes on, on every row, to at most
/// 100 iterations in all, stopping when the mean log-likelihood gains less than `1e-4`.
pub fn diagonal_gmm(x: &[f32], d: usize, k: usize, runs: usize, rng: &mut impl Rng) -> Vec<usize> {
    diagonal_gmm_posterior(x, d, k, runs, rng).0
}

/// [`diagonal_gmm`]'s labels and each row's posterior probability of its label.
pub fn diagonal_gmm_posterior(
    x: &[f32],
    d: usize,
    k: usize,
    runs: usize,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<f64>) {
    gmm_posterior(x, d, k, runs, false, rng)
}

/// Whether a mixture of full covariances is fitted to `n` rows of `d` features: at
/// least 10 rows per feature (scikit-learn's rule in the suite's baselines) and at most
/// [`FULL_COVARIANCE_MAX_DIM`] features (each E step costs `n k d^2`).
pub fn full_covariance_fits(n: usize, d: usize) -> bool {
    n >= 10 * d && d <= FULL_COVARIANCE_MAX_DIM
}

/// Most features a full-covariance mixture is fitted to ([`full_covariance_fits`]).
pub const FULL_COVARIANCE_MAX_DIM: usize = 32;

/// [`diagonal_gmm_posterior`], with full covariances when `full`.
pub fn gmm_posterior(
    x: &[f32],
    d: usize,
    k: usize,
    runs: usize,
    full: bool,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<f64>) {
    let n = x.len() / d.max(1);
    if n == 0 || k == 0 {
        return (vec![0; n], vec![1.0; n]);
    }
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    // The runs are compared on evenly spaced rows when there are many.
    let m = n.min(GMM_SCREEN_ROWS.max(k));
    let sub: Option<Vec<f64>> = (m < n).then(|| {
        (0..m)
            .flat_map(|i| x[i * n / m * d..(i * n / m + 1) * d].iter().copied())
            .collect()
    });
    let screened = sub.as_deref().unwrap_or(&x);
    let run = |rng: &mut _| {
        let mut em = Em::start(screened, m, d, k, rng);
        em.iterate(screened, d, k, full, GMM_SCREEN_ITERS);
        em
    };
    let mut em = run(rng);
    for _ in 1..runs {
        let next = run(rng);
        if next.ll > em.ll {
            em = next;
        }
    }
    if let Some(sub) = &sub {
        em = em.carried(sub, &x, d, k, full);
    }
    em.iterate(&x, d, k, full, GMM_MAX_ITERS);
    em.labels(k)
}

/// EM iterations each run of the mixture fit has before the runs are compared
/// ([`diagonal_gmm`]): only the best goes on to convergence, so the runs cost little
/// more than one.
pub const GMM_SCREEN_ITERS: usize = 20;

/// Most rows the runs of the mixture fit are compared on ([`diagonal_gmm`]); more rows
/// are subsampled evenly (row `i n / 512` for `i` in `0..512`).
pub const GMM_SCREEN_ROWS: usize = 512;

/// Most EM iterations of a run of the mixture fit, its screening included.
const GMM_MAX_ITERS: usize = 100;

/// The squared Euclidean distances of `v` (`d` values) to every mean, into `dists` (`k`),
/// from the means transposed (`d x k`): summed side by side, each in feature order from
/// the value an empty sum starts at (the bits of `Iterator::sum` over the squares).
fn squared_distances(v: &[f64], means_t: &[f64], dists: &mut [f64]) {
    let k = dists.len();
    dists.fill(std::iter::empty::<f64>().sum());
    for (&v, col) in v.iter().zip(means_t.chunks_exact(k)) {
        for (e, &m) in dists.iter_mut().zip(col) {
            *e += (v - m) * (v - m);
        }
    }
}

/// One run of the mixture fit ([`gmm_posterior`]): its responsibilities (`n x k`), the
/// mean log-likelihood of its last E step, its EM iterations so far.
struct Em {
    resp: Vec<f64>,
    ll: f64,
    iters: usize,
    converged: bool,
}

impl Em {
    /// k-means++ seeds and at most 20 Lloyd iterations (fewer once no label moves): the
    /// hard responsibilities EM starts from.
    fn start(x: &[f64], n: usize, d: usize, k: usize, rng: &mut impl Rng) -> Self {
        let row = |i: usize| &x[i * d..(i + 1) * d];
        // A row's squared distance to one mean (which is its own transpose, `d x 1`).
        let sq = |a: &[f64], mean: &[f64]| {
            let mut e = [0f64];
            squared_distances(a, mean, &mut e);
            e[0]
        };
        // k-means++ seeds.
        let mut means = vec![0f64; k * d];
        means[..d].copy_from_slice(row(uniform_index(rng, n)));
        let mut dist: Vec<f64> = (0..n).map(|i| sq(row(i), &means[..d])).collect();
        for c in 1..k {
            let total: f64 = dist.iter().sum();
            let mut u = f64::from(rng.next_u32()) / f64::from(u32::MAX) * total;
            let mut pick = n - 1;
            for (i, &v) in dist.iter().enumerate() {
                if u < v {
                    pick = i;
                    break;
                }
                u -= v;
            }
            means[c * d..(c + 1) * d].copy_from_slice(row(pick));
            for (i, v) in dist.iter_mut().enumerate() {
                *v = v.min(sq(row(i), &means[c * d..(c + 1) * d]));
            }
        }
        // Lloyd iterations.
        let mut labels = vec![0usize; n];
        let mut dists = vec![0f64; k];
        for iter in 0..20 {
            let means_t = transposed(&means, d);
            let mut moved = false;
            for (i, l) in labels.iter_mut().enumerate() {
                squared_distances(row(i), &means_t, &mut dists);
                let nearest = dists
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(c, _)| c);
                moved |= nearest != *l;
                *l = nearest;
            }
            // The means are those of these labels already: every further iteration
            // would give them again.
            if iter > 0 && !moved {
                break;
            }
            let mut sums = vec![0f64; k * d];
            let mut counts = vec![0f64; k];
            for (i, &l) in labels.iter().enumerate() {
                counts[l] += 1.0;
                for (s, v) in sums[l * d..].iter_mut().zip(row(i)) {
                    *s += v;
                }
            }
            for c in 0..k {
                if counts[c] > 0.0 {
                    for (m, s) in means[c * d..(c + 1) * d].iter_mut().zip(&sums[c * d..]) {
                        *m = s / counts[c];
                    }
                }
            }
        }
        let mut resp = vec![0f64; n * k];
        for (i, &l) in labels.iter().enumerate() {
            resp[i * k + l] = 1.0;
        }
        Em {
            resp,
            ll: f64::NEG_INFINITY,
            iters: 0,
            converged: false,
        }
    }

    /// EM iterations until `until` in all (at most [`GMM_MAX_ITERS`]) or until the mean
    /// log-likelihood gains less than `1e-4`.
    fn iterate(&mut self, x: &[f64], d: usize, k: usize, full: bool, until: usize) {
        let mut mixture = Mixture::new(d, k);
        while !self.converged && self.iters < until.min(GMM_MAX_ITERS) {
            self.iters += 1;
            mixture.m_step(x, d, k, full, &self.resp);
            let ll = mixture.e_step(x, d, k, &mut self.resp);
            self.converged = ll - self.ll < 1e-4;
            self.ll = ll;
        }
    }

    /// This run carried over from its rows `from` to the rows `to`: the mixture of an
    /// M step on `from` and its responsibilities on `to`.
    fn carried(&self, from: &[f64], to: &[f64], d: usize, k: usize, full: bool) -> Self {
        let mut mixture = Mixture::new(d, k);
        mixture.m_step(from, d, k, full, &self.resp);
        let mut resp = vec![0f64; to.len() / d * k];
        mixture.e_step(to, d, k, &mut resp);
        Em {
            resp,
            ll: f64::NEG_INFINITY,
            iters: self.iters,
            converged: false,
        }
    }

    /// Each row's most likely component and its posterior probability.
    fn labels(&self, k: usize) -> (Vec<usize>, Vec<f64>) {
        let resp = &self.resp;
        let labels: Vec<usize> = resp
            .chunks_exact(k)
            .map(|r| {
                (0..k)
                    .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
                    .unwrap_or(0)
            })
            .collect();
        let posterior = resp
            .chunks_exact(k)
            .zip(&labels)
            .map(|(r, &l)| r[l])
            .collect();
        (labels, posterior)
    }
}

/// A mixture's components as an M step leaves them, with what the E step needs.
struct Mixture {
    /// Each component's mean (`k x d`).
    means: Vec<f64>,
    /// Each component's variances (`k x d`; the M step's sums on the way).
    vars: Vec<f64>,
    /// Each component's total responsibility (the M step's).
    ncs: Vec<f64>,
    /// Each component's log-weight.
    logw: Vec<f64>,
    /// Feature-major (`d x k`) means and inverse variances, made once per M step for
    /// the E step.
    means_t: Vec<f64>,
    inv_vars_t: Vec<f64>,
    /// Each component's log-weight with its normalising constant.
    base: Vec<f64>,
    /// With `full`: each component's covariance's Cholesky factor (row-major lower
    /// triangle, `d x d`) and the log of its determinant.
    chol: Vec<Option<(Vec<f64>, f64)>>,
}

impl Mixture {
    fn new(d: usize, k: usize) -> Self {
        Mixture {
            means: vec![0f64; k * d],
            vars: vec![1f64; k * d],
            ncs: vec![0f64; k],
            logw: vec![0f64; k],
            means_t: vec![0f64; d * k],
            inv_vars_t: vec![0f64; d * k],
            base: vec![0f64; k],
            chol: vec![None; k],
        }
    }

    /// The components of the responsibilities `resp` (`n x k`) of the rows `x`; every
    /// variance is floored at `1e-4` (as scikit-learn's `reg_covar`), so a component on
    /// constant features stays finite.
    fn m_step(&mut self, x: &[f64], d: usize, k: usize, full: bool, resp: &[f64]) {
        const FLOOR: f64 = 1e-4;
        let n = resp.len() / k;
        let row = |i: usize| &x[i * d..(i + 1) * d];
        let Mixture {
            means,
            vars,
            ncs,
            logw,
            means_t,
            inv_vars_t,
            base,
            chol,
        } = self;
        // M step: every component's weighted sums in one pass over the rows (each sum
        // still in row order), then the weighted squared deviations in another.
        ncs.fill(0.0);
        means.fill(0.0);
        vars.fill(0.0);
        for i in 0..n {
            for (c, &r) in resp[i * k..(i + 1) * k].iter().enumerate() {
                ncs[c] += r;
                if r != 0.0 {
                    for (m, v) in means[c * d..(c + 1) * d].iter_mut().zip(row(i)) {
                        *m += r * v;
                    }
                }
            }
        }
        for (c, nc) in ncs.iter_mut().enumerate() {
            *nc += 1e-10;
            logw[c] = (*nc / n as f64).ln();
            means[c * d..(c + 1) * d].iter_mut().for_each(|m| *m /= *nc);
        }
        for i in 0..n {
            for (c, &r) in resp[i * k..(i + 1) * k].iter().enumerate() {
                if r != 0.0 {
                    let (mc, vc) = (&means[c * d..(c + 1) * d], &mut vars[c * d..(c + 1) * d]);
                    for ((s, m), v) in vc.iter_mut().zip(mc).zip(row(i)) {
                        *s += r * (v - m) * (v - m);
                    }
                }
            }
        }
        for (c, &nc) in ncs.iter().enumerate() {
            vars[c * d..(c + 1) * d]
                .iter_mut()
                .for_each(|v| *v = *v / nc + FLOOR);
            if full {
                chol[c] = full_cholesky(x, n, d, k, c, resp, &means[c * d..(c + 1) * d], nc, FLOOR);
            }
        }
        // ln N(x; m, diag(s)) = base_c - (1/2) sum_j (x_j - m_j)^2 / s_j, with base_c =
        // ln w_c - (1/2) sum_j (ln s_j + ln 2 pi).
        for c in 0..k {
            let vc = &vars[c * d..(c + 1) * d];
            let ln_det: f64 = vc.iter().map(|v| v.ln()).sum();
            base[c] = logw[c] - 0.5 * (ln_det + d as f64 * std::f64::consts::TAU.ln());
            for (j, (&m, &v)) in means[c * d..(c + 1) * d].iter().zip(vc).enumerate() {
                means_t[j * k + c] = m;
                inv_vars_t[j * k + c] = 1.0 / v;
            }
        }
    }

    /// The responsibilities of the rows `x` under these components; returns the mean
    /// log-likelihood.
    fn e_step(&self, x: &[f64], d: usize, k: usize, resp: &mut [f64]) -> f64 {
        let n = resp.len() / k;
        let row = |i: usize| &x[i * d..(i + 1) * d];
        let mut quad = vec![0f64; k];
        let mut diff = vec![0f64; d];
        let mut ll = 0.0;
        for i in 0..n {
            let ri = &mut resp[i * k..(i + 1) * k];
            // Every component's quadratic form, feature by feature (each sum in feature
            // order), the components side by side: independent sums that the processor
            // overlaps.
            quad.fill(0.0);
            for (j, &v) in row(i).iter().enumerate() {
                let at = j * k..(j + 1) * k;
                for ((q, &m), &iv) in quad
                    .iter_mut()
                    .zip(&self.means_t[at.clone()])
                    .zip(&self.inv_vars_t[at])
                {
                    *q += (v - m) * (v - m) * iv;
                }
            }
            for ((l, &b), &q) in ri.iter_mut().zip(&self.base).zip(&quad) {
                *l = b - 0.5 * q;
            }
            // A component with a full covariance: its own density instead.
            for (c, (lo, logdet)) in self
                .chol
                .iter()
                .enumerate()
                .filter_map(|(c, f)| Some((c, f.as_ref()?)))
            {
                let mc = &self.means[c * d..(c + 1) * d];
                // Solve L y = x - mu: the quadratic form is |y|^2.
                let mut quad = 0.0;
                for a in 0..d {
                    let mut v = row(i)[a] - mc[a];
                    for b in 0..a {
                        v -= lo[a * d + b] * diff[b];
                    }
                    diff[a] = v / lo[a * d + a];
                    quad += diff[a] * diff[a];
                }
                ri[c] =
                    self.logw[c] - 0.5 * (quad + logdet + d as f64 * std::f64::consts::TAU.ln());
            }
            let mx = ri.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            ri.iter_mut().for_each(|l| *l = (*l - mx).exp());
            let sum: f64 = ri.iter().sum();
            ll += mx + sum.ln();
            ri.iter_mut().for_each(|l| *l /= sum);
        }
        ll / n as f64
    }
}

/// The Cholesky factor of component `c`'s covariance `sum_i r_ic (x_i - mu)(x_i - mu)^T /
/// n_c + floor I` (row-major lower triangle) and its log-determinant; `None` when it is
/// not positive definite (the component then keeps its diagonal).
#[allow(clippy::too_many_arguments)]
fn full_cholesky(
    x: &[f64],
    n: usize,
    d: usize,
    k: usize,
    c: usize,
    resp: &[f64],
    mean: &[f64],
    nc: f64,
    floor: f64,
) -> Option<(Vec<f64>, f64)> {
    let mut cov = nalgebra::DMatrix::<f64>::zeros(d, d);
    let mut diff = nalgebra::DVector::<f64>::zeros(d);
    for i in 0..n {
        let r = resp[i * k + c];
        if r == 0.0 {
            continue;
        }
        for (a, (v, m)) in x[i * d..(i + 1) * d].iter().zip(mean).enumerate() {
            diff[a] = v - m;
        }
        cov.syger(r, &diff, &diff, 1.0);
    }
    cov /= nc;
    for a in 0..d {
        cov[(a, a)] += floor;
    }
    // The lower triangle is what `syger` filled; make it symmetric for the factorisation.
    cov.fill_upper_triangle_with_lower_triangle();
    let l = cov.cholesky()?.unpack();
    let logdet = 2.0 * (0..d).map(|a| l[(a, a)].ln()).sum::<f64>();
    let mut lo = vec![0f64; d * d];
    for a in 0..d {
        for b in 0..=a {
            lo[a * d + b] = l[(a, b)];
        }
    }
    Some((lo, logdet))
}

/// Where tensor `id` of `model` lies in its parameters (empty when it has none).
fn range_of(model: &Model<f32, Vec<f32>>, id: TensorId) -> std::ops::Range<usize> {
    model.shape().find(id).map(|t| t.range()).unwrap_or(0..0)
}

fn set_centres(model: &mut Model<f32, Vec<f32>>, centres: &[f32]) {
    let c = range_of(model, TensorId::Centres);
    let w = range_of(model, TensorId::LogWeights);
    let p = model.params_mut();
    p[c].copy_from_slice(centres);
    p[w].fill(0.0);
}

/// The segmenter's log-weights := `ln share` (each share at least `1e-3`).
fn set_log_weights(model: &mut Model<f32, Vec<f32>>, shares: &[f32]) {
    let w = range_of(model, TensorId::LogWeights);
    for (p, &s) in model.params_mut()[w].iter_mut().zip(shares) {
        *p = s.max(1e-3).ln();
    }
}

/// Centres := the best (by mean cosine) of `restarts` spherical k-means++ runs on every
/// sample's `mu(x)`; mixing weights uniform.
fn init_centres(
    model: &mut Model<f32, Vec<f32>>,
    x: &[f32],
    iters: usize,
    restarts: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<(), FitError> {
    let shape = *model.shape();
    let (m, k) = (shape.latent, shape.clusters);
    let mus = encode_all(model, x)?;
    let mut centres = vec![0f32; k * m];
    let mut best = vec![0f32; k * m];
    let mut best_objective = f32::NEG_INFINITY;
    let mut scratch = vec![0f32; scratch_len(k, m)];
    let mut labels = vec![0u8; mus.len() / m];
    for _ in 0..restarts.max(1) {
        let info = spherical_kmeans(
            &mus,
            m,
            k,
            iters,
            rng,
            &mut centres,
            &mut scratch,
            &mut labels,
        )?;
        if info.objective > best_objective {
            best_objective = info.objective;
            best.copy_from_slice(&centres);
        }
    }
    set_centres(model, &best);
    Ok(())
}

/// Fisher-Yates.
fn shuffle(v: &mut [usize], rng: &mut impl Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, uniform_index(rng, i + 1));
    }
}

fn add(a: &mut LossParts<f32>, b: &LossParts<f32>) {
    a.total += b.total;
    a.recon += b.recon;
    a.kl += b.kl;
    a.consistency += b.consistency;
    a.entropy += b.entropy;
    a.balance += b.balance;
    a.supervised += b.supervised;
    a.density += b.density;
    a.contrast += b.contrast;
}

fn scale_parts(mut a: LossParts<f32>, s: f32) -> LossParts<f32> {
    a.total *= s;
    a.recon *= s;
    a.kl *= s;
    a.consistency *= s;
    a.entropy *= s;
    a.balance *= s;
    a.supervised *= s;
    a.density *= s;
    a.contrast *= s;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `squared_distances` gives each mean's distance with the bits of the plain sum in
    /// feature order, on values whose sum in another order has other bits.
    #[test]
    fn squared_distances_are_the_bits_of_the_plain_sum() {
        let (d, k) = (7, 5);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut value = || f64::from(rng.next_u32()) / f64::from(u32::MAX) * 10.0 - 5.0;
        let v: Vec<f64> = (0..d).map(|_| value()).collect();
        let means: Vec<f64> = (0..k * d).map(|_| value() * 1e3).collect();
        let mut dists = vec![f64::NAN; k];
        squared_distances(&v, &transposed(&means, d), &mut dists);
        let mut reordered = 0;
        for (c, &got) in dists.iter().enumerate() {
            let sq = |i: usize| (v[i] - means[c * d + i]) * (v[i] - means[c * d + i]);
            let plain: f64 = (0..d).map(sq).sum();
            assert_eq!(got.to_bits(), plain.to_bits(), "mean {c}");
            let reversed: f64 = (0..d).rev().map(sq).sum();
            reordered += usize::from(reversed.to_bits() != plain.to_bits());
        }
        assert!(reordered > 0, "the data cannot tell the order of the sum");
    }

    /// The Lloyd start of a mixture run on three blobs far apart: every row in its blob's
    /// run, one cluster per blob, hard responsibilities.
    #[test]
    fn em_start_finds_separated_blobs() {
        let (n, d, k) = (90, 3, 3);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let centre = if j == i % k { 20.0 } else { 0.0 };
                x.push(centre + f64::from(rng.next_u32()) / f64::from(u32::MAX) - 0.5);
            }
        }
        for seed in 0..8 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let em = Em::start(&x, n, d, k, &mut rng);
            assert_eq!(em.resp.len(), n * k);
            let label = |i: usize| {
                let r = &em.resp[i * k..(i + 1) * k];
                assert_eq!(r.iter().sum::<f64>(), 1.0);
                r.iter().position(|&p| p == 1.0).unwrap()
            };
            let firsts: Vec<usize> = (0..k).map(label).collect();
            let mut distinct = firsts.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), k, "seed {seed}: blobs share a cluster");
            for i in 0..n {
                assert_eq!(label(i), firsts[i % k], "seed {seed}, row {i}");
            }
        }
    }
}
