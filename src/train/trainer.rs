//! Online training from a stream of samples, with fixed memory.
//!
//! [`OnlineTrainer`] keeps `CAP` past samples in a [`SampleMemory`]: the most recent
//! ones (a ring, the default), a uniform sample of the stream (a reservoir) or a random
//! sample of its recent part (sliding), each value stored as `E` (the scalar itself by
//! default, or one byte by [`TrainConfig::quant`]).
//! Each [`OnlineTrainer::step`] draws a mini-batch of `B` anchors from the buffer,
//! pairs each anchor with one of its nearest neighbours *inside the buffer* (cosine on
//! the raw features) — or with a noisy copy of itself — and takes one optimiser step on
//! the loss of [`crate::train::loss`]. The schedule of docs/design.md#training-schedule is
//! built in: the first `warmup_steps` steps train the VAE alone (`gamma = 0`, no
//! pairs); then the centres are initialised by spherical k-means++ on the `mu(x)` of
//! the buffer; then training is joint.
//!
//! # Memory
//! Everything lives in the trainer: the ring buffer (`CAP * D` scalars), `CAP` bytes of
//! k-means labels, the optimiser state ([`TrainConfig::optim_len`] scalars) and one scratch
//! storage of [`TrainConfig::storage_len`] scalars (gradient, marginal, workspace, batch
//! cache, batch rows, k-means buffers). [`crate::memory`] adds it up in bytes.
//!
//! # Cost of one step
//! Neighbour mining: `B * CAP * D` multiply-adds. Training: one
//! [`loss_and_grad`] on `2B` rows (about 2.3 forward passes
//! and one backward pass of the network per row) and one optimiser update over the
//! scope's parameters. The initialisation step adds `CAP` encoder passes and a bounded
//! k-means run. Nothing depends on the data's values except the posterior sampler's
//! capped rejection loop.

use crate::dist::rng::uniform_index;
use crate::infer::model::{copy_over, InferError, Model};
use crate::infer::views::{carve, prefix, prefix_mut};
use crate::shape::{Scope, Shape};
use crate::train::kmeans::{
    scratch_len as kmeans_scratch_len, spherical_kmeans, KMeansError, MAX_CLUSTERS,
};
use crate::train::loss::{
    layerwise_loss, layerwise_update, loss_and_grad, Batch, LayerwiseError, LossBuffers,
    LossConfig, LossError, LossParts, RandomDraws,
};
use crate::train::optim::{state_len_in, OptimConfig, OptimError, OptimKind, OptimState};
use crate::train::samples::{
    load_row, real_byte, real_with_byte, record_len, u64_with_byte, Policy, Quant, SampleMemory,
    Stored,
};
use crate::Real;
use rand_core::Rng;

/// Largest number of anchors per step (each brings a partner row).
pub const MAX_BATCH: usize = 64;
/// Largest neighbourhood a partner is drawn from.
pub const MAX_NEIGHBOURS: usize = 16;

/// What each anchor is paired with for the consistency term.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Consistency<T> {
    /// One of the `n` nearest neighbours in the buffer (`1..=MAX_NEIGHBOURS`).
    Neighbours(usize),
    /// A copy with Gaussian noise of this standard deviation (raw units) added.
    Noise(T),
    /// No pairs (information maximisation: set `LossConfig::entropy > 0`).
    None,
}

/// The divergence guard: a step whose loss is far above the running average of accepted
/// steps is rejected before the update (a spike in the data, a sensor fault), leaving
/// the model, the optimiser and the marginal bit-identical.
///
/// The monitored loss is `total + gamma eta ln K`, which is never negative (the balance
/// term `-eta H(p_bar)` is at least `-eta ln K`), so a ratio is meaningful.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Guard<T> {
    /// Reject a step whose monitored loss exceeds this multiple of the running average;
    /// infinity disables the test (non-finite losses are always rejected).
    pub max_loss_ratio: T,
    /// Momentum of the running average of accepted losses, in `[0, 1)`.
    pub momentum: T,
    /// Accepted steps before the ratio test is armed, at the start and again after the
    /// warm-up ends (the loss changes scale then).
    pub arm_after: u32,
    /// After this many rejections in a row, [`OnlineTrainer::needs_restore`] says the
    /// model should be restored from its last checkpoint.
    pub max_rejections: u32,
}

impl<T: Real> Default for Guard<T> {
    /// Ratio 10, momentum 0.95, armed after 20 steps, restore after 8 rejections.
    fn default() -> Self {
        Guard {
            max_loss_ratio: T::of(10.0),
            momentum: T::of(0.95),
            arm_after: 20,
            max_rejections: 8,
        }
    }
}

/// Bytes of an [`OnlineTrainer`]'s resume record ([`OnlineTrainer::write_resume`]) for
/// `shape`, a memory of `cap` rows of `d` values of `value_bytes` each, and scalars of
/// `scalar_bytes`: the memory's record, the marginal (`K` scalars), the guard (a scalar
/// and two `u32`) and one byte.
pub const fn resume_len(
    shape: &Shape,
    d: usize,
    cap: usize,
    value_bytes: usize,
    scalar_bytes: usize,
) -> usize {
    record_len(d, cap, value_bytes) + (shape.clusters + 1) * scalar_bytes + 9
}

/// The guard's running state: the average of accepted monitored losses, how many
/// accepted steps armed it, and the rejections in a row. Shared by the trainers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GuardState<T> {
    loss_avg: T,
    armed: u32,
    rejected: u32,
}

impl<T: Real> GuardState<T> {
    pub(crate) const fn new(zero: T) -> Self {
        GuardState {
            loss_avg: zero,
            armed: 0,
            rejected: 0,
        }
    }

    /// `Err(Diverged)` if `monitored` is over the limit (or not finite).
    pub(crate) fn check(&self, g: &Guard<T>, monitored: T) -> Result<(), TrainError> {
        if !monitored.is_finite()
            || (self.armed >= g.arm_after && monitored > g.max_loss_ratio * self.loss_avg)
        {
            return Err(TrainError::Diverged);
        }
        Ok(())
    }

    /// An accepted step; `rearm` when the loss changes scale (the guard starts over).
    pub(crate) fn accept(&mut self, g: &Guard<T>, monitored: T, rearm: bool) {
        if rearm {
            self.armed = 0;
        }
        self.loss_avg = if self.armed == 0 {
            monitored
        } else {
            g.momentum * self.loss_avg + (T::one() - g.momentum) * monitored
        };
        self.armed = self.armed.saturating_add(1);
    }

    /// Counts a step's outcome towards the rejections in a row.
    pub(crate) fn record<X>(&mut self, r: &Result<X, TrainError>) {
        match r {
            Ok(_) => self.rejected = 0,
            // Running out of samples is not the model's fault.
            Err(TrainError::NotEnoughSamples) => {}
            Err(_) => self.rejected = self.rejected.saturating_add(1),
        }
    }

    pub(crate) fn rejected(&self) -> u32 {
        self.rejected
    }

    /// After a restore: no rejections, the guard re-arms.
    pub(crate) fn restored(&mut self) {
        self.rejected = 0;
        self.armed = 0;
    }
}

/// The training schedule and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrainConfig<T> {
    /// Loss weights.
    pub loss: LossConfig<T>,
    /// Optimiser, clipping, weight decay.
    pub optim: OptimConfig<T>,
    /// Which parameters are trained.
    pub scope: Scope,
    /// Anchors per step (`1..=MAX_BATCH`).
    pub batch: usize,
    /// How anchors are paired.
    pub consistency: Consistency<T>,
    /// Steps of the VAE alone before the centres are initialised (0: initialise at the
    /// first step; with `SegmenterOnly` the network is assumed trained already).
    pub warmup_steps: u32,
    /// Initialise the centres by spherical k-means++ after the warm-up (false: keep the
    /// model's centres, e.g. when adapting a model trained on the host).
    pub init_centres: bool,
    /// Lloyd iterations of that initialisation.
    pub kmeans_iters: usize,
    /// Divergence guard.
    pub guard: Guard<T>,
    /// Input clipping: every feature of a training row, in the model's normalised units
    /// (after its input offset and scale), is clamped to `[-input_clip, input_clip]`
    /// before the step (and before the centre initialisation encodes the buffer); the
    /// buffer keeps the raw samples. It bounds what a finite spike in the data (a
    /// sensor glitch of 1e6 or 1e30) can do to a step, where the guard alone would have
    /// to reject every step that draws it. Infinity (the default) turns it off; about
    /// 5-10 suits standardised data. Cost: two comparisons per feature and row.
    pub input_clip: T,
    /// Which samples the memory keeps: the most recent ([`Policy::Ring`], the default),
    /// a uniform sample of the stream ([`Policy::Reservoir`]) or a random sample of its
    /// recent part ([`Policy::Sliding`]).
    pub memory: Policy,
    /// How a memory of bytes (`E = u8`) stores raw values; unused by a memory of
    /// scalars. Default: codes 0..=255 for the values 0..=255.
    pub quant: Quant<T>,
    /// The centre initialisation encodes at most this many of the memory's samples (the
    /// first ones; a reservoir's are a uniform sample of the stream), which bounds its
    /// buffer of directions ([`TrainConfig::init_rows`]). Default: all.
    pub init_samples: usize,
    /// The backward pass and the update layer by layer
    /// ([`crate::train::loss::layerwise_update`]): no gradient over the whole scope is
    /// held, only the largest block's, and no copy of the batch's rows: each is loaded
    /// from the memory of samples when a block needs it
    /// ([`TrainConfig::storage_len_layerwise`]). Clipping then acts on each block's
    /// gradient by its own norm. Not with [`Scope::SegmenterOnly`] nor with
    /// [`Consistency::Noise`] (a noisy partner is not in the memory):
    /// [`TrainError::BadConfig`]. Default: false (the whole gradient, then the
    /// optimiser).
    pub layerwise: bool,
}

impl<T: Real> TrainConfig<T> {
    /// Adam at `lr`, full scope, 8 anchors with 5 neighbours each, 200 warm-up steps,
    /// balance momentum 0.9 (small batches need a long memory for `p_bar`).
    pub fn new(lr: T) -> Self {
        TrainConfig {
            loss: LossConfig {
                balance_momentum: T::of(0.9),
                ..LossConfig::default()
            },
            optim: OptimConfig::new(crate::train::optim::Optimiser::adam(lr))
                .with_clip_norm(T::of(10.0)),
            scope: Scope::Full,
            batch: 8,
            consistency: Consistency::Neighbours(5),
            warmup_steps: 200,
            init_centres: true,
            kmeans_iters: 20,
            guard: Guard::default(),
            input_clip: T::of(f64::INFINITY),
            memory: Policy::Ring,
            init_samples: usize::MAX,
            layerwise: false,
            quant: Quant {
                lo: T::zero(),
                step: T::one(),
            },
        }
    }

    /// Samples the centre initialisation encodes with a memory of `cap`: the `cap`
    /// argument of [`TrainConfig::storage_len`] for this configuration.
    pub const fn init_rows(&self, cap: usize) -> usize {
        if cap < self.init_samples {
            cap
        } else {
            self.init_samples
        }
    }

    /// Scalars of scratch storage the trainer needs for `shape` when the centre
    /// initialisation encodes `cap` samples ([`TrainConfig::init_rows`]; all `CAP`
    /// buffered samples by default): gradient (scope size), marginal `p_bar` (`K`), workspace, batch cache
    /// and rows for `2 batch` rows, and the k-means buffers (`CAP M + K M + K (M + 1)`).
    pub const fn storage_len(shape: &Shape, scope: Scope, batch: usize, cap: usize) -> usize {
        let (m, k) = (shape.latent, shape.clusters);
        LossBuffers::<T>::storage_len(shape, scope, 2 * batch)
            + 2 * batch * shape.input
            + cap * m
            + k * m
            + kmeans_scratch_len(k, m)
    }

    /// [`TrainConfig::storage_len`] for a layer-wise trainer ([`TrainConfig::layerwise`]):
    /// the loss buffers of [`LossBuffers::storage_len_layerwise`] (the largest block's
    /// gradient and the gradient flowing between blocks, in place of the whole scope's
    /// gradient); no batch rows (a step loads each row from the memory of samples when a
    /// block needs it); the centre initialisation's buffers (`cap M + K M + K (M + 1)`)
    /// live in the block buffer, free outside an update, when they fit there, else after
    /// the loss buffers.
    pub const fn storage_len_layerwise(
        shape: &Shape,
        scope: Scope,
        batch: usize,
        cap: usize,
    ) -> usize {
        LossBuffers::<T>::storage_len_layerwise(shape, scope, 2 * batch)
            + kmeans_beside_block(shape, cap)
    }

    /// The scratch storage this configuration needs for `shape` and a memory of `cap`
    /// samples: [`TrainConfig::storage_len`] or [`TrainConfig::storage_len_layerwise`]
    /// as [`TrainConfig::layerwise`] says, for [`TrainConfig::init_rows`] of `cap`.
    pub const fn scratch_len(&self, shape: &Shape, cap: usize) -> usize {
        let rows = self.init_rows(cap);
        if self.layerwise {
            Self::storage_len_layerwise(shape, self.scope, self.batch, rows)
        } else {
            Self::storage_len(shape, self.scope, self.batch, rows)
        }
    }

    /// Scalars of the gradient at the start of the scratch storage, before the
    /// marginal: the scope's, or the largest block's when layer-wise.
    const fn grads_len(&self, shape: &Shape) -> usize {
        if self.layerwise {
            crate::train::loss::block_len(shape)
        } else {
            let r = shape.scope_range(self.scope);
            r.end - r.start
        }
    }

    /// Scalars of optimiser state the trainer needs for `shape` with optimiser `kind`
    /// ([`state_len_in`] over the scope's parameters).
    pub const fn optim_len(shape: &Shape, scope: Scope, kind: OptimKind) -> usize {
        state_len_in(kind, shape, shape.scope_range(scope))
    }

    /// Both buffers a trainer for `shape` needs ([`TrainConfig::storage_len`] and
    /// [`TrainConfig::optim_len`]), as one constant a firmware sizes its arrays with:
    ///
    /// ```
    /// use hvae::{OptimKind, Scope, Shape, TrainConfig, TrainerStorage};
    /// const SHAPE: Shape = Shape::new(6, &[16], 3, 3);
    /// const STORAGE: TrainerStorage =
    ///     TrainConfig::<f32>::storage(&SHAPE, Scope::Full, 8, 64, OptimKind::Adam);
    /// let (scratch, optim) = ([0.0f32; STORAGE.scratch], [0.0f32; STORAGE.optim]);
    /// assert_eq!(scratch.len(), TrainConfig::<f32>::storage_len(&SHAPE, Scope::Full, 8, 64));
    /// // Adam: two moments per trained parameter.
    /// assert_eq!(optim.len(), 2 * SHAPE.scope_range(Scope::Full).len());
    /// ```
    pub const fn storage(
        shape: &Shape,
        scope: Scope,
        batch: usize,
        cap: usize,
        kind: OptimKind,
    ) -> TrainerStorage {
        TrainerStorage {
            scratch: Self::storage_len(shape, scope, batch, cap),
            optim: Self::optim_len(shape, scope, kind),
        }
    }
}

/// Scalars of the centre initialisation's buffers for `cap` samples (directions,
/// centres, k-means scratch).
const fn kmeans_len(shape: &Shape, cap: usize) -> usize {
    let (m, k) = (shape.latent, shape.clusters);
    cap * m + k * m + kmeans_scratch_len(k, m)
}

/// Scalars a layer-wise trainer keeps for the centre initialisation beside its block
/// buffer: none when they fit in it.
const fn kmeans_beside_block(shape: &Shape, cap: usize) -> usize {
    let n = kmeans_len(shape, cap);
    if n > crate::train::loss::block_len(shape) {
        n
    } else {
        0
    }
}

/// Scalars of the two buffers an [`OnlineTrainer`] takes ([`TrainConfig::storage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrainerStorage {
    /// The scratch buffer: loss buffers, batch rows, the memory's directions, k-means.
    pub scratch: usize,
    /// The optimiser's state (moments).
    pub optim: usize,
}

/// What a step keeps across steps besides the model and the optimiser: the divergence
/// guard's state and the step count, with the trainer's settings (borrowed apart from
/// the optimiser and the scratch, which the update holds at the same time).
struct Tally<'a, T> {
    guard: &'a mut GuardState<T>,
    steps: &'a mut u32,
    cfg: &'a TrainConfig<T>,
}

impl<T: Real> Tally<'_, T> {
    /// A step's end, shared by the two-pass and the layer-wise update: the divergence
    /// guard on the batch's loss `parts` before anything is changed, then `update`; the
    /// marginal of `p_old` put back unless the update is made after the warm-up; the
    /// guard re-armed when the loss changes scale (the cluster terms switch on) and the
    /// step counted.
    fn guarded(
        &mut self,
        parts: LossParts<T>,
        loss_cfg: &LossConfig<T>,
        loss: &mut LossBuffers<'_, T>,
        p_old: &[T],
        (warm, initialised): (bool, bool),
        update: impl FnOnce(&mut LossBuffers<'_, T>) -> Result<T, TrainError>,
    ) -> Result<StepReport<T>, TrainError> {
        let k = p_old.len();
        let monitored = parts.total + loss_cfg.gamma * loss_cfg.eta * T::of(k as f64).ln();
        let update = self
            .guard
            .check(&self.cfg.guard, monitored)
            .and_then(|()| update(loss));
        if warm || update.is_err() {
            copy_over(loss.marginal_mut(), p_old);
        }
        let grad_norm = update?;
        let rearm = initialised || (!warm && *self.steps == self.cfg.warmup_steps);
        self.guard.accept(&self.cfg.guard, monitored, rearm);
        *self.steps = self.steps.saturating_add(1);
        Ok(StepReport {
            loss: parts,
            grad_norm,
            phase: if warm { Phase::WarmUp } else { Phase::Joint },
            initialised_centres: initialised,
            steps: *self.steps,
        })
    }
}

/// The trainer's scratch storage ([`TrainConfig::storage_len`]) as views, split once per
/// call, in this order: the loss buffers for `2 batch` rows, the batch rows
/// (`2 batch D`), the encoded directions of the buffer (`CAP M`), the k-means centres
/// (`K M`) and the k-means scratch.
struct Scratch<'a, T> {
    loss: LossBuffers<'a, T>,
    rows: &'a mut [T],
    mus: &'a mut [T],
    centres: &'a mut [T],
    kmeans: &'a mut [T],
    /// The three above are empty: the centre initialisation carves them from the
    /// loss buffers' block buffer.
    in_block: bool,
}

impl<'a, T: Real> Scratch<'a, T> {
    /// The views of `storage`; `None` unless it is [`TrainConfig::scratch_len`] long
    /// for a memory of `cap` samples (for a trainer made for another shape than the
    /// model's).
    fn split(
        storage: &'a mut [T],
        shape: &Shape,
        cfg: &TrainConfig<T>,
        cap: usize,
    ) -> Option<Self> {
        if storage.len() != cfg.scratch_len(shape, cap) {
            return None;
        }
        let (scope, batch) = (cfg.scope, cfg.batch);
        let (m, k) = (shape.latent, shape.clusters);
        let cap = cfg.init_rows(cap);
        let mut rest = storage;
        let loss = if cfg.layerwise {
            let n = LossBuffers::<T>::storage_len_layerwise(shape, scope, 2 * batch);
            LossBuffers::layerwise(shape, scope, 2 * batch, carve(&mut rest, n))?
        } else {
            let n = LossBuffers::<T>::storage_len(shape, scope, 2 * batch);
            LossBuffers::new(shape, scope, 2 * batch, carve(&mut rest, n))?
        };
        let rows = if cfg.layerwise {
            &mut []
        } else {
            carve(&mut rest, 2 * batch * shape.input)
        };
        // Layer-wise, the centre initialisation's buffers are in the block buffer when
        // they fit there (`rest` is then empty).
        let in_block = cfg.layerwise && kmeans_beside_block(shape, cap) == 0;
        Some(Scratch {
            loss,
            rows,
            mus: carve(&mut rest, cap * m),
            centres: carve(&mut rest, k * m),
            kmeans: rest,
            in_block,
        })
    }
}

/// Why a step or a push was refused. Model and optimiser state are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TrainError {
    /// A pushed sample has the wrong length or a non-finite value.
    #[error("sample has the wrong length or a non-finite value")]
    BadSample,
    /// Fewer buffered samples than a step needs (2, and `K` for the initialisation).
    #[error("not enough buffered samples for a step")]
    NotEnoughSamples,
    /// Configuration out of range (batch size, neighbours, input clip, sizes vs the
    /// model).
    #[error("training configuration out of range")]
    BadConfig,
    /// Scratch or optimiser storage has the wrong length (for the model's shape).
    #[error("trainer storage has the wrong length")]
    Storage,
    /// The loss or its gradient failed.
    #[error("loss: {0}")]
    Loss(#[from] LossError),
    /// The optimiser refused the update.
    #[error("optimiser: {0}")]
    Optim(#[from] OptimError),
    /// The centre initialisation failed.
    #[error("centre initialisation: {0}")]
    KMeans(#[from] KMeansError),
    /// The divergence guard rejected the step: its loss was more than
    /// `Guard::max_loss_ratio` times the running average.
    #[error("step rejected: loss far above its running average")]
    Diverged,
}

impl From<InferError> for TrainError {
    fn from(e: InferError) -> Self {
        TrainError::Loss(LossError::Infer(e))
    }
}

/// Where the schedule is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// VAE alone.
    WarmUp,
    /// Joint training with the cluster loss.
    Joint,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StepReport<T> {
    /// The loss parts of the batch (before the update).
    pub loss: LossParts<T>,
    /// Gradient norm before clipping.
    pub grad_norm: T,
    /// Phase of this step.
    pub phase: Phase,
    /// The centres were (re)initialised by k-means++ before this step.
    pub initialised_centres: bool,
    /// Steps taken so far, this one included.
    pub steps: u32,
}

/// Online trainer over a memory of `CAP` past `D`-dimensional samples, each value stored
/// as `E` ([`Stored`]: `T` itself, or `u8` by [`TrainConfig::quant`]). `S` is scratch
/// storage of [`TrainConfig::storage_len`] scalars and `O` optimiser state of
/// [`TrainConfig::optim_len`] scalars (arrays on a device, `Vec`s on the host).
pub struct OnlineTrainer<T, const D: usize, const CAP: usize, S, O, E = T> {
    samples: SampleMemory<E, D, CAP>,
    labels: [u8; CAP],
    scratch: S,
    optim: OptimState<O>,
    cfg: TrainConfig<T>,
    steps: u32,
    centres_ready: bool,
    guard: GuardState<T>,
}

impl<T: Real, const D: usize, const CAP: usize, S, O, E> OnlineTrainer<T, D, CAP, S, O, E>
where
    S: AsRef<[T]> + AsMut<[T]>,
    O: AsRef<[T]> + AsMut<[T]>,
    E: Stored<T>,
{
    /// A trainer for `shape` with zeroed `scratch` and `optim_state` storage. Checks every
    /// size against the configuration.
    pub fn new(
        shape: &Shape,
        cfg: TrainConfig<T>,
        scratch: S,
        optim_state: O,
    ) -> Result<Self, TrainError> {
        if shape.input != D
            || cfg.batch == 0
            || cfg.batch > MAX_BATCH
            || CAP < 2
            || CAP > u16::MAX as usize
            || matches!(cfg.consistency, Consistency::Neighbours(n) if n == 0 || n > MAX_NEIGHBOURS)
            || matches!(cfg.consistency, Consistency::Noise(s) if !s.is_finite() || s < T::zero())
            || cfg.input_clip.partial_cmp(&T::zero()) != Some(core::cmp::Ordering::Greater)
            || !cfg.quant.is_valid()
            || (cfg.layerwise
                && (cfg.scope == Scope::SegmenterOnly
                    || matches!(cfg.consistency, Consistency::Noise(_))))
        {
            return Err(TrainError::BadConfig);
        }
        cfg.optim.validate()?;
        if optim_state.as_ref().len()
            != TrainConfig::<T>::optim_len(shape, cfg.scope, cfg.optim.optimiser.kind())
        {
            return Err(TrainError::Storage);
        }
        // A uniform marginal to start the moving average from.
        let mut scratch = scratch;
        let k = T::of(shape.clusters as f64);
        Scratch::split(scratch.as_mut(), shape, &cfg, CAP)
            .ok_or(STORAGE)?
            .loss
            .marginal_mut()
            .fill(T::one() / k);
        Ok(OnlineTrainer {
            samples: SampleMemory::new(cfg.memory),
            labels: [0; CAP],
            scratch,
            optim: OptimState::new(optim_state),
            cfg,
            steps: 0,
            centres_ready: !cfg.init_centres,
            guard: GuardState::new(T::zero()),
        })
    }

    /// Offers a sample (raw units, `D` values) to the memory: with a ring it evicts the
    /// oldest when full, with a reservoir it may replace a random one or be dropped.
    /// Cost: `D` copies (or quantisations).
    pub fn push(&mut self, sample: &[T]) -> Result<(), TrainError> {
        let row: &[T; D] = sample.try_into().map_err(|_| TrainError::BadSample)?;
        if !row.iter().all(|v| v.is_finite()) {
            return Err(TrainError::BadSample);
        }
        let q = self.cfg.quant;
        self.samples.push(row.map(|x| E::store(x, &q)));
        Ok(())
    }

    /// Bytes of the trainer's state: this value (the memory of past samples, its k-means
    /// labels, the configuration and counters) and its scratch and optimiser storage.
    pub fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
            + core::mem::size_of::<T>()
                * (self.scratch.as_ref().len() + self.optim.storage().as_ref().len())
    }

    /// Samples offered to the memory so far.
    pub fn seen(&self) -> u64 {
        self.samples.seen()
    }

    /// Samples currently buffered.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when no sample is buffered.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Steps taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig<T> {
        &self.cfg
    }

    /// Steps rejected in a row (errors and guard rejections) since the last accepted one.
    pub fn rejections_in_a_row(&self) -> u32 {
        self.guard.rejected()
    }

    /// True once [`Guard::max_rejections`] steps in a row were rejected: restore the
    /// model (and optimiser) from the last checkpoint, then call
    /// [`OnlineTrainer::restored`].
    pub fn needs_restore(&self) -> bool {
        self.guard.rejected() >= self.cfg.guard.max_rejections
    }

    /// Tells the trainer that the model and optimiser were restored from a checkpoint:
    /// clears the rejection count and re-arms the guard.
    pub fn restored(&mut self) {
        self.guard.restored();
    }

    /// Bytes of the trainer's resume record for `shape` ([`OnlineTrainer::write_resume`]).
    pub const fn resume_len(shape: &Shape) -> usize {
        resume_len(shape, D, CAP, E::BYTES, core::mem::size_of::<T>())
    }

    /// Writes the trainer's resume record, in pieces, to `out`: what a checkpoint needs
    /// beyond the model, the optimiser state and the step counters for the trainer to
    /// go on exactly as if it had never stopped — the memory of past samples
    /// ([`SampleMemory::write_record`]), the cluster marginal, the divergence guard's
    /// state and whether the centres are initialised. [`OnlineTrainer::resume_len`]
    /// bytes; scalars as their exact little-endian bits.
    pub fn write_resume(&self, shape: &Shape, out: &mut dyn FnMut(&[u8])) {
        self.samples.write_record::<T>(out);
        let mut put = |v: T| {
            let mut b = [0u8; 8];
            let n = core::mem::size_of::<T>().min(8);
            for (k, x) in b.iter_mut().take(n).enumerate() {
                *x = real_byte(v, k);
            }
            out(&b[..n]);
        };
        for k in 0..shape.clusters {
            put(self.marginal(shape).get(k).copied().unwrap_or_else(T::zero));
        }
        put(self.guard.loss_avg);
        out(&self.guard.armed.to_le_bytes());
        out(&self.guard.rejected.to_le_bytes());
        out(&[u8::from(self.centres_ready)]);
    }

    /// Sets byte `at` of the resume record: all of a record's bytes, in order, restore
    /// what [`OnlineTrainer::write_resume`] wrote (then [`OnlineTrainer::resume_exact`]
    /// sets the step count). A byte past the record changes nothing.
    pub fn set_resume_byte(&mut self, shape: &Shape, at: usize, b: u8) {
        let mem = record_len(D, CAP, E::BYTES);
        let w = core::mem::size_of::<T>();
        let k = shape.clusters;
        if at < mem {
            self.samples.set_record_byte::<T>(at, b);
            return;
        }
        let at = at - mem;
        if at < k * w {
            let n = self.cfg.grads_len(shape);
            if let Some(v) = self.scratch.as_mut().get_mut(n + at / w) {
                *v = real_with_byte(*v, at % w, b);
            }
            return;
        }
        let g = &mut self.guard;
        match at - k * w {
            i if i < w => g.loss_avg = real_with_byte(g.loss_avg, i, b),
            i if i < w + 4 => g.armed = u64_with_byte(g.armed.into(), i - w, b) as u32,
            i if i < w + 8 => g.rejected = u64_with_byte(g.rejected.into(), i - w - 4, b) as u32,
            i if i == w + 8 => self.centres_ready = b != 0,
            _ => {}
        }
    }

    /// Continues from a checkpoint taken after `steps` steps whose resume record was
    /// restored ([`OnlineTrainer::set_resume_byte`]): the next step is the one that
    /// would have followed, the same bits (the guard keeps the record's state).
    pub fn resume_exact(&mut self, steps: u32) {
        self.steps = steps;
    }

    /// The optimiser state (to checkpoint it).
    pub fn optimiser(&self) -> &OptimState<O> {
        &self.optim
    }

    /// Mutable optimiser state (to restore it from a checkpoint).
    pub fn optimiser_mut(&mut self) -> &mut OptimState<O> {
        &mut self.optim
    }

    /// The moving-average cluster marginal `p_bar`.
    pub fn marginal(&self, shape: &Shape) -> &[T] {
        let n = self.cfg.grads_len(shape);
        let marginal = self.scratch.as_ref().get(n..n + shape.clusters);
        marginal.unwrap_or_default()
    }

    /// One training step on a mini-batch drawn from the buffer (see the module docs).
    /// On error the model, the optimiser state and the marginal are unchanged.
    pub fn step<P, R>(
        &mut self,
        model: &mut Model<T, P>,
        rng: &mut R,
    ) -> Result<StepReport<T>, TrainError>
    where
        P: AsRef<[T]> + AsMut<[T]>,
        R: Rng,
    {
        let r = self.step_inner(model, rng);
        self.guard.record(&r);
        r
    }

    fn step_inner<P, R>(
        &mut self,
        model: &mut Model<T, P>,
        rng: &mut R,
    ) -> Result<StepReport<T>, TrainError>
    where
        P: AsRef<[T]> + AsMut<[T]>,
        R: Rng,
    {
        let shape = *model.shape();
        let k = shape.clusters;
        if shape.input != D {
            return Err(TrainError::BadConfig);
        }
        let n_buf = self.samples.len();
        if n_buf < 2 {
            return Err(TrainError::NotEnoughSamples);
        }
        let warm = self.steps < self.cfg.warmup_steps && self.cfg.scope != Scope::SegmenterOnly;
        let mut initialised = false;
        if !warm && !self.centres_ready {
            if n_buf < k {
                return Err(TrainError::NotEnoughSamples);
            }
            self.init_centres(model, rng)?;
            initialised = true;
        }
        let b = self.cfg.batch;
        let range = shape.scope_range(self.cfg.scope);
        if self.cfg.layerwise {
            return self.step_layerwise(model, rng, warm, initialised);
        }
        let Scratch { mut loss, rows, .. } =
            Scratch::split(self.scratch.as_mut(), &shape, &self.cfg, CAP).ok_or(STORAGE)?;

        // Anchors, and their partners in rows b..2b.
        let mut pairs = [(0u16, 0u16); MAX_BATCH];
        let samples = self.samples.as_slice();
        let q = self.cfg.quant;
        let rows_d = rows.as_chunks_mut::<D>().0;
        let (anchors, partners) = rows_d.split_at_mut_checked(b).unwrap_or_default();
        let slots = anchors.iter_mut().zip(partners).zip(pairs.iter_mut());
        for (i, ((anchor, partner), pair)) in slots.enumerate() {
            // Buffered samples, at least 2 (`uniform_index` is below their count).
            let a = uniform_index(rng, n_buf);
            let Some(sample) = samples.get(a) else {
                return Err(TrainError::NotEnoughSamples);
            };
            load_row(anchor, sample, &q);
            if warm {
                continue;
            }
            *pair = (i as u16, (b + i) as u16);
            match self.cfg.consistency {
                Consistency::Neighbours(nn) => {
                    // The anchor itself if it has no neighbour (as `nearest_neighbour`).
                    let j = nearest_neighbour(samples, a, nn, rng, &q);
                    load_row(partner, samples.get(j).unwrap_or(sample), &q);
                }
                Consistency::Noise(sigma) => {
                    for (p, &x) in partner.iter_mut().zip(anchor.iter()) {
                        *p = x + sigma * crate::dist::rng::standard_normal(rng);
                    }
                }
                Consistency::None => *partner = *anchor,
            }
        }
        let (n_rows, n_pairs) = match (warm, self.cfg.consistency) {
            (true, _) => (b, 0),
            (false, Consistency::None) => (b, 0),
            (false, _) => (2 * b, b),
        };
        let rows = prefix_mut(rows, n_rows * D);
        if self.cfg.input_clip.is_finite() {
            for row in rows.as_chunks_mut::<D>().0 {
                clip_row(model, row, self.cfg.input_clip);
            }
        }
        let mut loss_cfg = self.cfg.loss;
        if warm {
            loss_cfg.gamma = T::zero();
        }
        let batch = Batch {
            inputs: rows,
            labels: &[],
            pairs: prefix(&pairs, n_pairs),
        };
        // The pass replaces the marginal; the old one is put back unless the update is
        // made after the warm-up.
        let mut p_old = [T::zero(); MAX_CLUSTERS];
        let p_old = prefix_mut(&mut p_old, k);
        copy_over(p_old, loss.marginal());
        let parts = loss_and_grad(model, &batch, &loss_cfg, &mut RandomDraws(rng), &mut loss)?;
        let (optim, ocfg) = (&mut self.optim, &self.cfg.optim);
        let mut tally = Tally {
            guard: &mut self.guard,
            steps: &mut self.steps,
            cfg: &self.cfg,
        };
        tally.guarded(
            parts,
            &loss_cfg,
            &mut loss,
            p_old,
            (warm, initialised),
            |loss| {
                // In range: the pass checked that the model has the scope's parameters.
                let params = model
                    .params_mut()
                    .get_mut(range.clone())
                    .unwrap_or_default();
                let tensors = (&shape, range);
                Ok(optim
                    .step_in(ocfg, tensors, params, loss.grads())?
                    .grad_norm)
            },
        )
    }

    /// [`OnlineTrainer::step`] layer by layer ([`TrainConfig::layerwise`]): the same
    /// draws of anchors and partners, as indices into the memory; the rows loaded from
    /// it by every pass that reads them. Not inlined: the two-pass step stays as it was
    /// in the programs that do not train layer by layer.
    #[inline(never)]
    fn step_layerwise<P, R>(
        &mut self,
        model: &mut Model<T, P>,
        rng: &mut R,
        warm: bool,
        initialised: bool,
    ) -> Result<StepReport<T>, TrainError>
    where
        P: AsRef<[T]> + AsMut<[T]>,
        R: Rng,
    {
        let shape = *model.shape();
        let k = shape.clusters;
        let b = self.cfg.batch;
        let n_buf = self.samples.len();
        let Scratch { mut loss, .. } =
            Scratch::split(self.scratch.as_mut(), &shape, &self.cfg, CAP).ok_or(STORAGE)?;
        // Anchors in rows 0..b, their partners in rows b..2b.
        let mut pairs = [(0u16, 0u16); MAX_BATCH];
        let mut idx = [0u16; 2 * MAX_BATCH];
        let samples = self.samples.as_slice();
        let q = self.cfg.quant;
        let (anchors, partners) = idx.split_at_mut_checked(MAX_BATCH).unwrap_or_default();
        let slots = anchors
            .iter_mut()
            .zip(partners.iter_mut())
            .zip(pairs.iter_mut());
        for (i, ((anchor, partner), pair)) in slots.take(b).enumerate() {
            let a = uniform_index(rng, n_buf);
            if samples.get(a).is_none() {
                return Err(TrainError::NotEnoughSamples);
            }
            *anchor = a as u16;
            if warm {
                continue;
            }
            *pair = (i as u16, (b + i) as u16);
            let j = match self.cfg.consistency {
                Consistency::Neighbours(nn) => nearest_neighbour(samples, a, nn, rng, &q),
                _ => a,
            };
            *partner = if samples.get(j).is_some() { j } else { a } as u16;
        }
        // The partners after the anchors.
        let mut order = [0u16; 2 * MAX_BATCH];
        let both = anchors.iter().take(b).chain(partners.iter().take(b));
        for (o, &i) in order.iter_mut().zip(both) {
            *o = i;
        }
        let (n_rows, n_pairs) = match (warm, self.cfg.consistency) {
            (true, _) | (false, Consistency::None) => (b, 0),
            (false, _) => (2 * b, b),
        };
        let mut norm = ([T::zero(); D], [T::zero(); D]);
        if let (Some(o), Some(s)) = (
            model.tensor(crate::shape::TensorId::NormOffset),
            model.tensor(crate::shape::TensorId::NormScale),
        ) {
            copy_over(&mut norm.0, o);
            copy_over(&mut norm.1, s);
        }
        let inputs = MemoryRows {
            samples,
            idx: prefix(&order, n_rows),
            quant: q,
            clip: self.cfg.input_clip,
            norm: &norm,
        };
        let mut loss_cfg = self.cfg.loss;
        if warm {
            loss_cfg.gamma = T::zero();
        }
        let batch = Batch {
            inputs: &[],
            labels: &[],
            pairs: prefix(&pairs, n_pairs),
        };
        let mut p_old = [T::zero(); MAX_CLUSTERS];
        let p_old = prefix_mut(&mut p_old, k);
        copy_over(p_old, loss.marginal());
        let draws = &mut RandomDraws(rng);
        let parts = layerwise_loss(model, (&inputs, &batch), &loss_cfg, draws, &mut loss)?;
        let (optim, ocfg) = (&mut self.optim, &self.cfg.optim);
        let mut tally = Tally {
            guard: &mut self.guard,
            steps: &mut self.steps,
            cfg: &self.cfg,
        };
        tally.guarded(
            parts,
            &loss_cfg,
            &mut loss,
            p_old,
            (warm, initialised),
            |loss| match layerwise_update(model, (&inputs, &batch), &loss_cfg, loss, optim, ocfg) {
                Ok(i) => Ok(i.grad_norm),
                Err(LayerwiseError::Loss(e)) => Err(e.into()),
                Err(LayerwiseError::Optim(e)) => Err(e.into()),
            },
        )
    }

    /// Sets the centres to spherical k-means++ on the `mu(x)` of every buffered sample,
    /// the mixing weights to uniform, and keeps `kappa_s`. Restarts the optimiser state
    /// (its moments describe the old centres).
    pub fn init_centres<P, R>(
        &mut self,
        model: &mut Model<T, P>,
        rng: &mut R,
    ) -> Result<(), TrainError>
    where
        P: AsRef<[T]> + AsMut<[T]>,
        R: Rng,
    {
        let shape = *model.shape();
        let (m, k) = (shape.latent, shape.clusters);
        let n_buf = self.samples.len().min(self.cfg.init_rows(CAP));
        let Scratch {
            mut loss,
            mus,
            centres,
            kmeans: km,
            in_block,
            ..
        } = Scratch::split(self.scratch.as_mut(), &shape, &self.cfg, CAP).ok_or(STORAGE)?;
        let (block, work) = loss.grads_and_work();
        let (mus, centres, km) = if in_block {
            let mut rest = block;
            let rows = self.cfg.init_rows(CAP);
            let mus = carve(&mut rest, rows * m);
            let centres = carve(&mut rest, k * m);
            (mus, centres, carve(&mut rest, kmeans_scratch_len(k, m)))
        } else {
            (mus, centres, km)
        };
        let p = model.views();
        for (x, mu) in self
            .samples
            .as_slice()
            .iter()
            .zip(mus.chunks_exact_mut(m.max(1)))
        {
            let mut row = [T::zero(); D];
            load_row(&mut row, x, &self.cfg.quant);
            if self.cfg.input_clip.is_finite() {
                clip_row(model, &mut row, self.cfg.input_clip);
            }
            model.encode_into(&p, &row, work)?;
            copy_over(mu, work.mu);
        }
        spherical_kmeans(
            prefix(mus, n_buf * m),
            m,
            k,
            self.cfg.kmeans_iters,
            rng,
            centres,
            km,
            prefix_mut(&mut self.labels, n_buf),
        )?;
        // The segmenter: centres, `ln kappa_s` (kept), log-weights.
        let mut rest = model.params_mut();
        carve(&mut rest, shape.segmenter_offset());
        copy_over(carve(&mut rest, k * m), centres);
        carve(&mut rest, 1);
        carve(&mut rest, k).fill(T::zero());
        self.optim.reset::<T>();
        self.centres_ready = true;
        Ok(())
    }
}

impl<T: Real, const D: usize, const CAP: usize, S, O> OnlineTrainer<T, D, CAP, S, O, T>
where
    S: AsRef<[T]> + AsMut<[T]>,
    O: AsRef<[T]> + AsMut<[T]>,
{
    /// Sets the model's input normalisation to the buffered samples' (the rule of
    /// [`crate::infer::normalise`], the host trainer's too), for a device that starts learning
    /// from scratch. Cost: `3 CAP D` operations.
    pub fn fit_normalisation<P>(&self, model: &mut Model<T, P>) -> Result<(), TrainError>
    where
        P: AsRef<[T]> + AsMut<[T]>,
    {
        if self.samples.len() < 2 {
            return Err(TrainError::NotEnoughSamples);
        }
        let mut offset = [T::zero(); D];
        let mut scale = [T::zero(); D];
        crate::infer::normalise::fit(
            self.samples.as_slice().iter().map(|x| &x[..]),
            &mut offset,
            &mut scale,
        )
        .map_err(|_| TrainError::BadSample)?;
        model
            .set_normalisation(&offset, &scale)
            .map_err(|_| TrainError::BadSample)
    }
}

/// The trainer's scratch does not split for the model's shape: the model is not the
/// one the trainer was made for.
const STORAGE: TrainError = TrainError::Storage;

/// Clamps `row` (raw units) so that each feature, normalised by the model's input
/// offset and scale, lies in `[-c, c]` ([`TrainConfig::input_clip`]).
fn clip_row<T: Real, P: AsRef<[T]>>(model: &Model<T, P>, row: &mut [T], c: T) {
    let (Some(offset), Some(scale)) = (
        model.tensor(crate::shape::TensorId::NormOffset),
        model.tensor(crate::shape::TensorId::NormScale),
    ) else {
        return;
    };
    clip_with(offset, scale, row, c);
}

/// A layer-wise step's rows: samples of the memory by index, loaded (and clipped to
/// [`TrainConfig::input_clip`] with the model's normalisation `norm`, offsets and
/// scales) when a pass reads them.
struct MemoryRows<'a, T, E, const D: usize> {
    samples: &'a [[E; D]],
    idx: &'a [u16],
    quant: Quant<T>,
    clip: T,
    norm: &'a ([T; D], [T; D]),
}

impl<T: Real, E: Stored<T>, const D: usize> crate::train::loss::Inputs<T>
    for MemoryRows<'_, T, E, D>
{
    fn rows(&self) -> usize {
        self.idx.len()
    }
    fn load(&self, i: usize, out: &mut [T]) {
        let Some(sample) = self
            .idx
            .get(i)
            .and_then(|&j| self.samples.get(usize::from(j)))
        else {
            return;
        };
        load_row(out, sample, &self.quant);
        if self.clip.is_finite() {
            clip_with(&self.norm.0, &self.norm.1, out, self.clip);
        }
    }
}

/// [`clip_row`] with the normalisation's `offset` and `scale`.
fn clip_with<T: Real>(offset: &[T], scale: &[T], row: &mut [T], c: T) {
    for ((x, &o), &s) in row.iter_mut().zip(offset).zip(scale) {
        let z = (*x - o) * s;
        if z > c {
            *x = o + c / s;
        } else if z < -c {
            *x = o - c / s;
        }
    }
}

/// One of the `nn` nearest rows to row `a` by cosine (excluding `a`), drawn uniformly.
/// Cost: `len * D` multiply-adds plus an insertion into a list of `nn`.
pub(crate) fn nearest_neighbour<T: Real, E: Stored<T>, const D: usize, R: Rng>(
    samples: &[[E; D]],
    a: usize,
    nn: usize,
    rng: &mut R,
    q: &Quant<T>,
) -> usize {
    let Some(xs) = samples.get(a) else {
        return a;
    };
    let mut x = [T::zero(); D];
    load_row(&mut x, xs, q);
    let x = &x;
    let mut y = [T::zero(); D];
    let nx = crate::infer::nn::dot(x, x).sqrt();
    let mut best = [(T::zero(), usize::MAX); MAX_NEIGHBOURS];
    let mut have = 0usize;
    // At most MAX_NEIGHBOURS (the configuration's bound): the indices below stay in range.
    let nn = nn
        .min(samples.len().saturating_sub(1))
        .clamp(1, MAX_NEIGHBOURS);
    for (j, ys) in samples.iter().enumerate() {
        if j == a {
            continue;
        }
        load_row(&mut y, ys, q);
        let y = &y;
        let ny = crate::infer::nn::dot(y, y).sqrt();
        let den = nx * ny;
        let cos = if den > T::zero() {
            crate::infer::nn::dot(x, y) / den
        } else {
            -T::one() - T::one()
        };
        // Insert into the sorted (descending) top-nn list (checked indexing: `pos < nn`).
        let worst = have
            .checked_sub(1)
            .and_then(|i| best.get(i))
            .map_or(cos, |w| w.0);
        if have < nn || cos > worst {
            let mut pos = if have < nn { have } else { nn - 1 };
            while let Some(&prev) = pos
                .checked_sub(1)
                .and_then(|i| best.get(i))
                .filter(|p| p.0 < cos)
            {
                if let Some(slot) = best.get_mut(pos) {
                    *slot = prev;
                }
                pos -= 1;
            }
            if let Some(slot) = best.get_mut(pos) {
                *slot = (cos, j);
            }
            if have < nn {
                have += 1;
            }
        }
    }
    if have == 0 {
        return a;
    }
    best.get(uniform_index(rng, have)).map_or(a, |b| b.1)
}
