//! Adapting the clusters on a device whose encoder stays frozen in flash.
//!
//! [`OnlineTrainer`](crate::train::trainer::OnlineTrainer) with
//! [`Scope::SegmenterOnly`] keeps raw samples (`D` values each) and the whole parameter
//! vector in RAM. When only the segmenter learns, neither is needed: the encoder's
//! output `mu(x)` of a sample never changes, so [`SegmenterAdapter`] keeps the `M`-value
//! directions of the last `CAP` samples, a RAM copy of the segmenter's
//! [`Shape::segmenter_len`] parameters, and its optimiser state, while the model (the
//! encoder) can be a `static` in flash. For a model the size of the digits model that
//! is a few KiB instead of the general trainer's tens of KiB ([`AdapterMemory`] counts
//! the bytes; the figures are in docs/benchmarks.md).
//!
//! The loss is [`segmenter_loss_and_grad`]: the cluster terms of
//! [`loss_and_grad`](crate::train::loss::loss_and_grad) with `SegmenterOnly`, on the stored
//! directions (no reconstruction, no KL, no draw); neighbours for the consistency term
//! are mined among the stored directions by cosine. The divergence guard, the k-means++
//! initialisation and the optimiser are the general trainer's.
//!
//! # Cost
//! [`SegmenterAdapter::push`]: one encoder and segmenter pass (the same as
//! [`Model::segment`], whose result it returns). [`SegmenterAdapter::step`]: neighbour
//! mining `B CAP M` multiply-adds, the loss `2B (3 K M + 6 K)`, and one optimiser update
//! of `K M + K + 1` parameters; the first step after construction with
//! `init_centres` adds a bounded spherical k-means over the buffer.
//!
//! ```
//! use hvae::train::adapt::{adapter_storage_len, SegmenterAdapter};
//! use hvae::infer::model::Model;
//! use hvae::train::optim::{state_len, OptimKind};
//! use hvae::train::trainer::TrainConfig;
//! use hvae::{Scope, Shape};
//! use rand_core::SeedableRng;
//!
//! const SHAPE: Shape = Shape::new(6, &[16], 3, 3).checked();
//! const BATCH: usize = 8;
//! const STORE: usize = adapter_storage_len(&SHAPE, BATCH);
//! const STATE: usize = state_len(OptimKind::Adam, SHAPE.segmenter_len());
//!
//! let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
//! let mut model = Model::from_array(SHAPE, [0.0f32; SHAPE.param_len()]);
//! model.init(&mut rng);
//! let model = model; // from here on read-only: it could live in flash
//!
//! let mut cfg = TrainConfig::new(1e-2);
//! cfg.scope = Scope::SegmenterOnly;
//! cfg.batch = BATCH;
//! let mut adapter: SegmenterAdapter<f32, 3, 32, _, _> =
//!     SegmenterAdapter::new(&model, cfg, [0.0f32; STORE], [0.0f32; STATE]).unwrap();
//! let mut work = [0.0f32; SHAPE.work_len()];
//! for i in 0..60 {
//!     let g = (i % 3) as f32;
//!     let x = [g, 1.0 - g, 0.5, g * g, 0.0, 1.0];
//!     // Label the sample with the current clusters and keep its direction.
//!     let seg = adapter.push(&model, &x, &mut work).unwrap();
//!     assert!(seg.label < 3);
//!     if adapter.len() >= 8 {
//!         adapter.step(&mut rng).unwrap();
//!     }
//! }
//! ```

use crate::dist::rng::uniform_index;
use crate::infer::model::{Model, Segment};
use crate::shape::{Scope, Shape};
use crate::train::kmeans::{scratch_len as kmeans_scratch_len, spherical_kmeans};
use crate::train::loss::{cache_len, segmenter_loss_and_grad, Batch};
use crate::train::optim::{state_len, OptimState};
use crate::train::trainer::{
    nearest_neighbour, Consistency, GuardState, Phase, StepReport, TrainConfig, TrainError,
    MAX_BATCH,
};
use crate::Real;
use heapless::HistoryBuf;
use rand_core::Rng;

/// Scalars of storage a [`SegmenterAdapter`] needs for `shape` and `batch` anchors: the
/// segmenter parameters and their gradient (`2 (K M + K + 1)`), the marginal (`K`), and
/// a region used in turn by a step (the loss cache for `2 batch` rows and the batch's
/// directions, `2 batch M`) and by the k-means initialisation (`K M` +
/// [`kmeans_scratch_len`]), whichever is longer.
pub const fn adapter_storage_len(shape: &Shape, batch: usize) -> usize {
    2 * shape.segmenter_len() + shape.clusters + shared_len(shape, batch)
}

/// The region a step and the k-means initialisation take turns in.
const fn shared_len(shape: &Shape, batch: usize) -> usize {
    let (m, k) = (shape.latent, shape.clusters);
    let step = cache_len(shape, 2 * batch) + 2 * batch * m;
    let kmeans = k * m + kmeans_scratch_len(k, m);
    if step > kmeans {
        step
    } else {
        kmeans
    }
}

/// Bytes a [`SegmenterAdapter`] of `f32`s and the inference it serves need in RAM, by
/// purpose (the model's parameters are not counted: they stay in flash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AdapterMemory {
    /// The stored directions (`CAP M` scalars) and k-means labels (`CAP` bytes).
    pub directions: usize,
    /// [`adapter_storage_len`] scalars.
    pub storage: usize,
    /// Optimiser state ([`state_len`] of the segmenter) and its step counter.
    pub optimiser: usize,
    /// One model workspace ([`Shape::work_len`]) for [`SegmenterAdapter::push`].
    pub workspace: usize,
    /// The adapter's own fields: shape, configuration, guard, counters.
    pub bookkeeping: usize,
}

impl AdapterMemory {
    /// The figures for `shape`, `batch` anchors, `cap` stored directions and optimiser
    /// `kind`, with scalars of type `T`.
    pub const fn of<T>(
        shape: &Shape,
        batch: usize,
        cap: usize,
        kind: crate::train::optim::OptimKind,
    ) -> AdapterMemory {
        let s = core::mem::size_of::<T>();
        AdapterMemory {
            directions: s * cap * shape.latent + cap,
            storage: s * adapter_storage_len(shape, batch),
            optimiser: s * state_len(kind, shape.segmenter_len()) + 4,
            workspace: s * shape.work_len(),
            bookkeeping: core::mem::size_of::<Shape>()
                + core::mem::size_of::<TrainConfig<T>>()
                + core::mem::size_of::<GuardState<T>>()
                + 2 * core::mem::size_of::<u32>(),
        }
    }

    /// Sum of every part.
    pub const fn total(&self) -> usize {
        self.directions + self.storage + self.optimiser + self.workspace + self.bookkeeping
    }
}

/// Adapts a RAM copy of a model's segmenter to the directions `mu(x)` of the last `CAP`
/// samples, with the encoder frozen (see the module docs). `M` is the latent size, `S`
/// storage of [`adapter_storage_len`] scalars, `O` optimiser state of [`state_len`]
/// scalars for [`Shape::segmenter_len`] parameters.
pub struct SegmenterAdapter<T, const M: usize, const CAP: usize, S, O> {
    shape: Shape,
    directions: HistoryBuf<[T; M], CAP>,
    labels: [u8; CAP],
    store: S,
    optim: OptimState<O>,
    cfg: TrainConfig<T>,
    steps: u32,
    centres_ready: bool,
    guard: GuardState<T>,
}

impl<T: Real, const M: usize, const CAP: usize, S, O> SegmenterAdapter<T, M, CAP, S, O>
where
    S: AsRef<[T]> + AsMut<[T]>,
    O: AsRef<[T]> + AsMut<[T]>,
{
    /// An adapter starting from `model`'s segmenter. `cfg.scope` must be
    /// [`Scope::SegmenterOnly`] and `cfg.consistency` neighbours or none (a noisy copy
    /// of an input cannot be encoded without the input); `cfg.warmup_steps` is ignored.
    /// With `cfg.init_centres` the first step re-initialises the centres by k-means++
    /// on the buffered directions (for new data); without, the model's centres are
    /// adapted as they are.
    pub fn new<P: AsRef<[T]>>(
        model: &Model<T, P>,
        cfg: TrainConfig<T>,
        mut store: S,
        optim_state: O,
    ) -> Result<Self, TrainError> {
        let shape = *model.shape();
        if shape.latent != M
            || cfg.scope != Scope::SegmenterOnly
            || cfg.batch == 0
            || cfg.batch > MAX_BATCH
            || CAP < 2
            || CAP > u16::MAX as usize
            || matches!(cfg.consistency, Consistency::Noise(_))
            || matches!(cfg.consistency, Consistency::Neighbours(n) if n == 0 || n > crate::train::trainer::MAX_NEIGHBOURS)
        {
            return Err(TrainError::BadConfig);
        }
        cfg.optim.validate()?;
        let l = shape.segmenter_len();
        if store.as_ref().len() != adapter_storage_len(&shape, cfg.batch)
            || optim_state.as_ref().len() != state_len(cfg.optim.optimiser.kind(), l)
        {
            return Err(TrainError::Storage);
        }
        let k = shape.clusters;
        let s = store.as_mut();
        s[..l].copy_from_slice(model.segmenter_params());
        // A uniform marginal to start the moving average from.
        s[2 * l..2 * l + k].fill(T::one() / T::of(k as f64));
        Ok(SegmenterAdapter {
            shape,
            directions: HistoryBuf::new(),
            labels: [0; CAP],
            store,
            optim: OptimState::new(optim_state),
            cfg,
            steps: 0,
            centres_ready: !cfg.init_centres,
            guard: GuardState::new(T::zero()),
        })
    }

    /// The adapted segmenter parameters (centres, `ln kappa_s`, log-weights).
    pub fn segmenter(&self) -> &[T] {
        &self.store.as_ref()[..self.shape.segmenter_len()]
    }

    /// Replaces the adapted segmenter (e.g. restored from a checkpoint). Rejects a
    /// wrong length or non-finite values, changing nothing.
    pub fn set_segmenter(&mut self, seg: &[T]) -> Result<(), TrainError> {
        let l = self.shape.segmenter_len();
        if seg.len() != l || !seg.iter().all(|v| v.is_finite()) {
            return Err(TrainError::BadSample);
        }
        self.store.as_mut()[..l].copy_from_slice(seg);
        Ok(())
    }

    /// Copies the adapted segmenter into `model` (a RAM model, or the host's).
    pub fn write_to<P: AsRef<[T]> + AsMut<[T]>>(
        &self,
        model: &mut Model<T, P>,
    ) -> Result<(), TrainError> {
        if *model.shape() != self.shape {
            return Err(TrainError::BadConfig);
        }
        let so = self.shape.segmenter_offset();
        let l = self.shape.segmenter_len();
        model.params_mut()[so..so + l].copy_from_slice(self.segmenter());
        Ok(())
    }

    /// Segments `x` with `model`'s encoder and the adapted segmenter (no learning).
    pub fn segment<'w, P: AsRef<[T]>>(
        &self,
        model: &Model<T, P>,
        x: &[T],
        work: &'w mut [T],
    ) -> Result<Segment<'w, T>, TrainError> {
        if *model.shape() != self.shape {
            return Err(TrainError::BadConfig);
        }
        Ok(model.segment_with(self.segmenter(), x, work)?)
    }

    /// Segments `x` (raw units) like [`SegmenterAdapter::segment`] and keeps its
    /// direction for training, evicting the oldest when full. A sample that cannot be
    /// encoded (wrong length, non-finite values) is rejected and nothing is stored.
    pub fn push<'w, P: AsRef<[T]>>(
        &mut self,
        model: &Model<T, P>,
        x: &[T],
        work: &'w mut [T],
    ) -> Result<Segment<'w, T>, TrainError> {
        let seg = self.segment(model, x, work)?;
        let row: [T; M] = seg.mu.try_into().map_err(|_| TrainError::BadSample)?;
        self.directions.write(row);
        Ok(seg)
    }

    /// Keeps a direction `mu` (`M` values of unit norm, from [`Model::encode`]).
    pub fn push_direction(&mut self, mu: &[T]) -> Result<(), TrainError> {
        let row: [T; M] = mu.try_into().map_err(|_| TrainError::BadSample)?;
        let n2 = crate::infer::nn::dot(&row, &row);
        if !row.iter().all(|v| v.is_finite()) || (n2 - T::one()).abs() > T::of(1e-3) {
            return Err(TrainError::BadSample);
        }
        self.directions.write(row);
        Ok(())
    }

    /// Directions buffered.
    pub fn len(&self) -> usize {
        self.directions.len()
    }

    /// True when no direction is buffered.
    pub fn is_empty(&self) -> bool {
        self.directions.is_empty()
    }

    /// Steps taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The moving-average cluster marginal `p_bar`.
    pub fn marginal(&self) -> &[T] {
        let l = self.shape.segmenter_len();
        &self.store.as_ref()[2 * l..2 * l + self.shape.clusters]
    }

    /// Steps rejected in a row since the last accepted one.
    pub fn rejections_in_a_row(&self) -> u32 {
        self.guard.rejected()
    }

    /// True once [`Guard::max_rejections`](crate::train::trainer::Guard::max_rejections)
    /// steps in a row were rejected: restore the segmenter and the optimiser from the
    /// last checkpoint, then call [`SegmenterAdapter::restored`].
    pub fn needs_restore(&self) -> bool {
        self.guard.rejected() >= self.cfg.guard.max_rejections
    }

    /// The segmenter and optimiser were restored: clears the rejections, re-arms the
    /// guard.
    pub fn restored(&mut self) {
        self.guard.restored();
    }

    /// The optimiser state (to checkpoint it).
    pub fn optimiser(&self) -> &OptimState<O> {
        &self.optim
    }

    /// Mutable optimiser state (to restore it).
    pub fn optimiser_mut(&mut self) -> &mut OptimState<O> {
        &mut self.optim
    }

    /// One step on a mini-batch of buffered directions. On error the segmenter, the
    /// optimiser state and the marginal are unchanged.
    pub fn step<R: Rng>(&mut self, rng: &mut R) -> Result<StepReport<T>, TrainError> {
        let r = self.step_inner(rng);
        self.guard.record(&r);
        r
    }

    fn step_inner<R: Rng>(&mut self, rng: &mut R) -> Result<StepReport<T>, TrainError> {
        let shape = self.shape;
        let (m, k) = (shape.latent, shape.clusters);
        let n_buf = self.directions.len();
        if n_buf < 2 {
            return Err(TrainError::NotEnoughSamples);
        }
        let mut initialised = false;
        if !self.centres_ready {
            if n_buf < k {
                return Err(TrainError::NotEnoughSamples);
            }
            self.init_centres(rng)?;
            initialised = true;
        }
        let b = self.cfg.batch;
        let l = shape.segmenter_len();
        let store = self.store.as_mut();
        let (seg, rest) = store.split_at_mut(l);
        let (grads, rest) = rest.split_at_mut(l);
        let (p_bar, rest) = rest.split_at_mut(k);
        let (cache, rest) = rest.split_at_mut(cache_len(&shape, 2 * b));
        let rows = &mut rest[..2 * b * m];

        let mut pairs = [(0u16, 0u16); MAX_BATCH];
        let dirs = self.directions.as_slice();
        for i in 0..b {
            let a = uniform_index(rng, n_buf);
            rows[i * m..(i + 1) * m].copy_from_slice(&dirs[a]);
            pairs[i] = (i as u16, (b + i) as u16);
            let j = match self.cfg.consistency {
                Consistency::Neighbours(nn) => {
                    let q = crate::train::samples::Quant {
                        lo: T::zero(),
                        step: T::one(),
                    };
                    nearest_neighbour(dirs, a, nn, rng, &q)
                }
                _ => a,
            };
            rows[(b + i) * m..(b + i + 1) * m].copy_from_slice(&dirs[j]);
        }
        let (n_rows, n_pairs) = match self.cfg.consistency {
            Consistency::Neighbours(_) => (2 * b, b),
            _ => (b, 0),
        };
        let batch = Batch {
            inputs: &rows[..n_rows * m],
            labels: &[],
            pairs: &pairs[..n_pairs],
        };
        let loss_cfg = self.cfg.loss;
        let mut p_new = [T::zero(); crate::train::kmeans::MAX_CLUSTERS];
        p_new[..k].copy_from_slice(p_bar);
        let parts = segmenter_loss_and_grad(
            &shape,
            seg,
            &batch,
            &loss_cfg,
            &mut p_new[..k],
            cache,
            grads,
        )?;
        // The cluster loss alone can approach zero (agreeing neighbours, a balanced
        // marginal), where a ratio test would trip on noise: the monitored loss gets a
        // floor of `gamma`, so only a rise of several nats per pair is a spike.
        let monitored =
            parts.total + loss_cfg.gamma * (loss_cfg.eta * T::of(k as f64).ln() + T::one());
        self.guard.check(&self.cfg.guard, monitored)?;
        let info = self.optim.step(&self.cfg.optim, seg, grads)?;
        p_bar.copy_from_slice(&p_new[..k]);
        self.guard.accept(&self.cfg.guard, monitored, initialised);
        self.steps = self.steps.saturating_add(1);
        Ok(StepReport {
            loss: parts,
            grad_norm: info.grad_norm,
            phase: Phase::Joint,
            initialised_centres: initialised,
            steps: self.steps,
        })
    }

    /// Sets the centres to spherical k-means++ of the buffered directions and the
    /// mixing weights to uniform, keeping `kappa_s`; restarts the optimiser state.
    pub fn init_centres<R: Rng>(&mut self, rng: &mut R) -> Result<(), TrainError> {
        let shape = self.shape;
        let (m, k) = (shape.latent, shape.clusters);
        let n_buf = self.directions.len();
        let l = shape.segmenter_len();
        let store = self.store.as_mut();
        // The step's region is free between steps.
        let (front, rest) = store.split_at_mut(2 * l + k);
        let (centres, km) = rest.split_at_mut(k * m);
        spherical_kmeans(
            self.directions.as_slice().as_flattened(),
            m,
            k,
            self.cfg.kmeans_iters,
            rng,
            centres,
            km,
            &mut self.labels[..n_buf],
        )?;
        front[..k * m].copy_from_slice(centres);
        front[k * m + 1..l].fill(T::zero());
        self.optim.reset::<T>();
        self.centres_ready = true;
        Ok(())
    }
}
