//! First-order optimisers for on-device training: SGD with momentum, Adam
//! (bias-corrected) and Adam with a factored second moment (Adafactor's, with or
//! without a first moment), with optional gradient clipping and L2 weight decay.
//!
//! Nothing here allocates. The optimiser state (moments and the step counter) lives in an
//! [`OptimState`] over caller-owned storage: a `[f32; N]` on the device, sized at compile
//! time with [`state_len`], or a `Vec<f32>` on the host. The parameters and gradients an
//! update sees are the slices of one [`Scope`](crate::Scope) (a contiguous range of the
//! parameter vector, [`Shape::scope_range`](crate::Shape::scope_range)), so the state is
//! sized to the scope, not to the whole model.
//!
//! ```
//! use hvae::train::optim::{state_len, OptimConfig, OptimKind, OptimState, Optimiser};
//! const N: usize = 4;
//! let mut state = OptimState::new([0.0f32; state_len(OptimKind::Adam, N)]);
//! let cfg = OptimConfig::new(Optimiser::adam(1e-2)).with_clip_norm(1.0);
//! let mut params = [1.0f32, -1.0, 0.5, 2.0];
//! let grads = [0.1f32, -0.2, 0.0, 3.0];
//! let info = state.step(&cfg, &mut params, &grads).unwrap();
//! assert!(info.clipped);
//! assert_eq!(state.steps(), 1);
//! ```
//!
//! # Update rules
//!
//! With `g` the gradient after clipping plus weight decay, `g = s * grad + wd * p` (`s` is
//! the clipping factor, 1 when not clipped; the decay is the coupled L2 form, added to the
//! gradient after clipping, as PyTorch's `weight_decay`):
//!
//! - SGD with momentum (PyTorch convention, no dampening): `v <- mu v + g`,
//!   `p <- p - lr v`.
//! - Adam (Kingma & Ba, algorithm 1), `t` the 1-based step: `m <- b1 m + (1 - b1) g`,
//!   `v <- b2 v + (1 - b2) g^2`, `m^ = m / (1 - b1^t)`, `v^ = v / (1 - b2^t)`,
//!   `p <- p - lr m^ / (sqrt(v^) + eps)`.
//! - Factored (Adafactor's second moment, Shazeer & Stern 2018, with Adam's first
//!   moment and bias correction): for a weight matrix `r x c` (a tensor of the
//!   [`Shape`] with more than one row and column) the state holds, instead of one
//!   `v` per weight, a running mean of `g^2` per row, `R_i <- b2 R_i + (1 - b2)
//!   mean_j g_ij^2`, and per column, `C_j <- b2 C_j + (1 - b2) mean_i g_ij^2`, and
//!   uses `v_ij = R_i (C_j / mean_i R_i)` (0 when `mean_i R_i` is 0): exact when the
//!   squared gradients form a rank-1 pattern, and `r + c` values instead of `r c`.
//!   A matrix of more than [`FACTOR_BAND`] values is factored per band of whole rows
//!   ([`band_rows`]), each band a matrix of its own in these formulas.
//!   Vectors (biases, the concentration head, `ln kappa_s`, the log-weights) keep a
//!   full `v`, updated with Adam's arithmetic bit for bit. `m`, `m^`, `v^` and the
//!   update as Adam's.
//! - Factored without a first moment (`b1 = 0`): the same second moment,
//!   `p <- p - lr g / (sqrt(v^) + eps)`; no `m` is stored.
//!
//! The factored kinds need the tensors of the parameters they update
//! ([`OptimState::step_in`], [`OptimState::step_part_in`]); without them every value
//! is a vector's (a full `v`), which is Adam's update (or, without a first moment,
//! RMSprop's with bias correction).
//!
//! # Failure leaves everything untouched
//!
//! [`OptimState::step`] either applies the whole update or changes nothing: on any error
//! the parameters, both moment vectors and the step counter are bit-identical to what
//! they were, and the gradient is never written. The approach: lengths and
//! hyper-parameters are checked first; the first pass over the gradient computes its norm
//! and rejects a non-finite element; a second pass computes every new parameter and
//! moment *without storing them* and rejects the step if any is non-finite (an overflow
//! of `g^2` or of the update); only then a third pass recomputes the same values (the
//! same operations in the same order, so bit-identical) and stores them.

use crate::shape::{Shape, Tensor};
use crate::Real;

/// Which optimiser, without its hyper-parameters: all that sizing the state needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OptimKind {
    /// SGD with momentum: one velocity per parameter.
    Sgd,
    /// Adam: first and second moment per parameter.
    Adam,
    /// Adam with a factored second moment: a first moment per parameter, a second
    /// moment per row and per column of each weight matrix and per value of each vector.
    Factored,
    /// A factored second moment alone (no first moment).
    FactoredRms,
}

/// Floats of optimiser state for `n` trained parameters: `n` for SGD with momentum, `2 n`
/// for Adam (saturating; a real `n` never comes close). Usable in array lengths.
/// The factored kinds without their tensors ([`OptimState::step_in`]) treat every
/// value as a vector's: `2 n` ([`OptimKind::Factored`]) and `n`
/// ([`OptimKind::FactoredRms`]); with them, see [`state_len_in`].
///
/// Bytes of state = `state_len(kind, n) * size_of::<T>()`, plus the 4-byte step counter
/// of [`OptimState`].
pub const fn state_len(kind: OptimKind, n: usize) -> usize {
    match kind {
        OptimKind::Sgd | OptimKind::FactoredRms => n,
        OptimKind::Adam | OptimKind::Factored => n.saturating_mul(2),
    }
}

/// Floats of optimiser state for the parameters `range` of a model of `shape` (a
/// [`Shape::scope_range`]), the state [`OptimState::step_in`] over them updates:
/// [`state_len`] for SGD and Adam; for the factored kinds the first moment (`n`, not
/// for [`OptimKind::FactoredRms`]) and [`second_moment_len`]. Usable in array lengths.
pub const fn state_len_in(kind: OptimKind, shape: &Shape, range: core::ops::Range<usize>) -> usize {
    let n = range.end.saturating_sub(range.start);
    match kind {
        OptimKind::Sgd | OptimKind::Adam => state_len(kind, n),
        OptimKind::Factored => n.saturating_add(second_moment_len(shape, range)),
        OptimKind::FactoredRms => second_moment_len(shape, range),
    }
}

/// Largest number of values a factored second moment spans: a weight matrix larger
/// than this is factored per band of whole rows ([`band_rows`] rows each, the last band
/// the rest), each band with its own row and column means. A layer-wise update
/// ([`crate::train::loss::layerwise_update`]) updates the encoder's input layer and the
/// decoder's output layer one band at a time, so its block buffer holds a band's
/// gradient, not the whole layer's (4 KiB of `f32` plus the bias).
pub const FACTOR_BAND: usize = 1024;

/// Rows of each band of a `rows x cols` weight matrix ([`FACTOR_BAND`]): all of them
/// when the matrix fits in one band, else as many whole rows as fit (at least one).
pub const fn band_rows(rows: usize, cols: usize) -> usize {
    if rows.saturating_mul(cols) <= FACTOR_BAND || cols == 0 {
        rows
    } else if cols >= FACTOR_BAND {
        1
    } else {
        FACTOR_BAND / cols
    }
}

/// Bands of a tensor ([`band_rows`]): 1 for a vector or a matrix within [`FACTOR_BAND`].
const fn band_count(t: &Tensor) -> usize {
    let per = band_rows(t.rows, t.cols);
    if per == 0 {
        1
    } else {
        t.rows.div_ceil(per)
    }
}

/// Band `b` of a tensor (`b < band_count(t)`): its rows as a tensor of their own.
const fn band(t: &Tensor, b: usize) -> Tensor {
    let per = band_rows(t.rows, t.cols);
    let first = b * per;
    let rows = if first + per > t.rows {
        t.rows.saturating_sub(first)
    } else {
        per
    };
    Tensor {
        offset: t.offset + first * t.cols,
        rows,
        cols: t.cols,
        ..*t
    }
}

/// Floats of a factored second moment over the parameters `range` of `shape`: `r + c`
/// for each band ([`band_rows`]) of a weight matrix `r x c` inside the range (more than
/// one row and column), one per value for the rest.
pub const fn second_moment_len(shape: &Shape, range: core::ops::Range<usize>) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < shape.tensor_count() {
        if let Some(whole) = shape.tensor(i) {
            let mut b = 0;
            while b < band_count(&whole) {
                let t = band(&whole, b);
                let (a, e) = (
                    max(t.offset, range.start),
                    min(t.offset + t.len(), range.end),
                );
                if a < e {
                    len += if is_matrix(&t) && a == t.offset && e == t.offset + t.len() {
                        t.rows + t.cols
                    } else {
                        e - a
                    };
                }
                b += 1;
            }
        }
        i += 1;
    }
    len
}

/// A tensor whose second moment is factored: more than one row and column.
const fn is_matrix(t: &Tensor) -> bool {
    t.rows > 1 && t.cols > 1
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// An optimiser and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Optimiser<T> {
    /// Stochastic gradient descent with (heavy-ball) momentum.
    Sgd {
        /// Learning rate, finite and `>= 0`.
        lr: T,
        /// Momentum in `[0, 1)`; 0 is plain SGD (the velocity is still stored).
        momentum: T,
    },
    /// Adam with bias correction.
    Adam {
        /// Learning rate (step size `alpha`), finite and `>= 0`.
        lr: T,
        /// Decay of the first moment, in `[0, 1)`.
        beta1: T,
        /// Decay of the second moment, in `[0, 1)`.
        beta2: T,
        /// Added to `sqrt(v^)`, finite and `> 0`.
        eps: T,
    },
    /// Adam with a factored second moment (see the module docs).
    Factored {
        /// Learning rate, finite and `>= 0`.
        lr: T,
        /// Decay of the first moment, in `[0, 1)`.
        beta1: T,
        /// Decay of the second moment's running means, in `[0, 1)`.
        beta2: T,
        /// Added to `sqrt(v^)`, finite and `> 0`.
        eps: T,
    },
    /// A factored second moment without a first moment (see the module docs).
    FactoredRms {
        /// Learning rate, finite and `>= 0`.
        lr: T,
        /// Decay of the second moment's running means, in `[0, 1)`.
        beta2: T,
        /// Added to `sqrt(v^)`, finite and `> 0`.
        eps: T,
    },
}

impl<T: Real> Optimiser<T> {
    /// SGD with momentum (`momentum = 0.9` is the conventional choice).
    pub const fn sgd(lr: T, momentum: T) -> Self {
        Optimiser::Sgd { lr, momentum }
    }

    /// Adam with the conventional `beta1 = 0.9`, `beta2 = 0.999`, `eps = 1e-8`.
    pub fn adam(lr: T) -> Self {
        Optimiser::Adam {
            lr,
            beta1: T::of(0.9),
            beta2: T::of(0.999),
            eps: T::of(1e-8),
        }
    }

    /// Adam with explicit hyper-parameters.
    pub const fn adam_with(lr: T, beta1: T, beta2: T, eps: T) -> Self {
        Optimiser::Adam {
            lr,
            beta1,
            beta2,
            eps,
        }
    }

    /// Adam's conventional betas and `eps` (`0.9`, `0.999`, `1e-8`) with a factored
    /// second moment.
    pub fn factored(lr: T) -> Self {
        Optimiser::Factored {
            lr,
            beta1: T::of(0.9),
            beta2: T::of(0.999),
            eps: T::of(1e-8),
        }
    }

    /// A factored second moment without a first moment, Adam's `beta2` and `eps`.
    pub fn factored_rms(lr: T) -> Self {
        Optimiser::FactoredRms {
            lr,
            beta2: T::of(0.999),
            eps: T::of(1e-8),
        }
    }

    /// The kind (sizes the state).
    pub const fn kind(&self) -> OptimKind {
        match self {
            Optimiser::Sgd { .. } => OptimKind::Sgd,
            Optimiser::Adam { .. } => OptimKind::Adam,
            Optimiser::Factored { .. } => OptimKind::Factored,
            Optimiser::FactoredRms { .. } => OptimKind::FactoredRms,
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> T {
        match *self {
            Optimiser::Sgd { lr, .. }
            | Optimiser::Adam { lr, .. }
            | Optimiser::Factored { lr, .. }
            | Optimiser::FactoredRms { lr, .. } => lr,
        }
    }

    /// The same optimiser with another learning rate (for schedules).
    pub fn with_lr(mut self, lr: T) -> Self {
        match &mut self {
            Optimiser::Sgd { lr: l, .. }
            | Optimiser::Adam { lr: l, .. }
            | Optimiser::Factored { lr: l, .. }
            | Optimiser::FactoredRms { lr: l, .. } => *l = lr,
        }
        self
    }
}

/// Everything one update needs besides the state: optimiser, clipping and weight decay.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OptimConfig<T> {
    /// The optimiser and its hyper-parameters.
    pub optimiser: Optimiser<T>,
    /// Global-norm clipping: when the gradient's Euclidean norm exceeds this (`> 0`), the
    /// gradient is scaled to have exactly this norm. `None`: no clipping.
    pub clip_norm: Option<T>,
    /// Coupled L2 weight decay `wd` (finite, `>= 0`): `wd * p` is added to the (clipped)
    /// gradient. 0: none.
    pub weight_decay: T,
}

impl<T: Real> OptimConfig<T> {
    /// No clipping, no weight decay.
    pub fn new(optimiser: Optimiser<T>) -> Self {
        OptimConfig {
            optimiser,
            clip_norm: None,
            weight_decay: T::zero(),
        }
    }

    /// The same configuration with global-norm clipping at `max`.
    pub fn with_clip_norm(self, max: T) -> Self {
        OptimConfig {
            clip_norm: Some(max),
            ..self
        }
    }

    /// The same configuration with L2 weight decay `wd`.
    pub fn with_weight_decay(self, wd: T) -> Self {
        OptimConfig {
            weight_decay: wd,
            ..self
        }
    }

    /// Checks the hyper-parameters (see the field docs for the valid ranges).
    pub fn validate(&self) -> Result<(), OptimError> {
        let zero = T::zero();
        let one = T::one();
        let nonneg = |x: T| x.is_finite() && x >= zero;
        let unit = |x: T| x >= zero && x < one;
        let ok = match self.optimiser {
            Optimiser::Sgd { lr, momentum } => nonneg(lr) && unit(momentum),
            Optimiser::Adam {
                lr,
                beta1,
                beta2,
                eps,
            }
            | Optimiser::Factored {
                lr,
                beta1,
                beta2,
                eps,
            } => nonneg(lr) && unit(beta1) && unit(beta2) && eps.is_finite() && eps > zero,
            Optimiser::FactoredRms { lr, beta2, eps } => {
                nonneg(lr) && unit(beta2) && eps.is_finite() && eps > zero
            }
        };
        let clip_ok = match self.clip_norm {
            Some(c) => c > zero,
            None => true,
        };
        if ok && clip_ok && nonneg(self.weight_decay) {
            Ok(())
        } else {
            Err(OptimError::InvalidConfig)
        }
    }
}

/// Why an update was refused. Whatever the error, parameters and state are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OptimError {
    /// `params` and `grads` differ in length, the state storage is not
    /// [`state_len`]`(kind, params.len())` floats long ([`state_len_in`] with tensors),
    /// or a block of a factored optimiser splits a weight matrix.
    #[error("parameter, gradient and optimiser state lengths do not match")]
    LengthMismatch,
    /// A hyper-parameter is out of range ([`OptimConfig::validate`]).
    #[error("optimiser hyper-parameter out of range")]
    InvalidConfig,
    /// The gradient holds a NaN or an infinity.
    #[error("gradient is not finite")]
    NonFiniteGradient,
    /// The update would make a parameter or a moment NaN or infinite (overflow).
    #[error("update would make a parameter or moment non-finite")]
    NonFiniteUpdate,
}

/// What an update did.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StepInfo<T> {
    /// Euclidean norm of the gradient before clipping (and without the weight decay).
    pub grad_norm: T,
    /// Whether the gradient was scaled down to the clipping norm.
    pub clipped: bool,
    /// The 1-based index of this step (the `t` of Adam's bias correction).
    pub step: u32,
}

/// Optimiser state over caller storage `S` (`[T; N]`, `&mut [T]`, `Vec<T>`): the moments
/// and the step counter.
///
/// Layout of the storage: SGD: the velocity, `n` floats. Adam: first moment `m` in
/// `0..n`, second moment `v` in `n..2n`. Factored: `m` in `0..n` (none without a first
/// moment), then the second moment tensor by tensor in layout order: a matrix's row
/// means (`r`) then column means (`c`), a vector's `v` (one per value). Save the storage
/// and [`OptimState::steps`] to resume training later ([`OptimState::from_parts`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OptimState<S> {
    storage: S,
    steps: u32,
}

/// The tensors of the parameters a factored optimiser updates: the model's shape and
/// the range of its parameter vector.
#[derive(Clone, Copy)]
struct Tensors<'a> {
    shape: &'a Shape,
    start: usize,
    end: usize,
}

impl<'a> Tensors<'a> {
    /// The parameters `range` of a model of `shape`.
    fn of(shape: &'a Shape, range: core::ops::Range<usize>) -> Self {
        Tensors {
            shape,
            start: range.start,
            end: range.end,
        }
    }
}

impl<S> OptimState<S> {
    /// A state over `storage`, which must hold zeros (a fresh optimiser) and be
    /// [`state_len`]`(kind, n)` floats long for the `n` parameters it will update.
    pub const fn new(storage: S) -> Self {
        OptimState { storage, steps: 0 }
    }

    /// A state resumed from saved moments and step counter.
    pub const fn from_parts(storage: S, steps: u32) -> Self {
        OptimState { storage, steps }
    }

    /// Steps applied so far (saturates at `u32::MAX`).
    pub const fn steps(&self) -> u32 {
        self.steps
    }

    /// The moments (layout in the type's docs).
    pub const fn storage(&self) -> &S {
        &self.storage
    }

    /// The moments, mutably: to restore saved ones in place (a device cannot move its
    /// static storage); see [`crate::store::checkpoint`]. Anything but a saved state gives
    /// meaningless updates.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Sets the step counter (with [`OptimState::storage_mut`], to restore a saved state).
    pub fn set_steps(&mut self, steps: u32) {
        self.steps = steps;
    }

    /// The storage and the step counter.
    pub fn into_parts(self) -> (S, u32) {
        (self.storage, self.steps)
    }

    /// Zeroes the moments and the step counter (a fresh optimiser). Cost: one pass over
    /// the storage.
    pub fn reset<T: Real>(&mut self)
    where
        S: AsMut<[T]>,
    {
        self.storage.as_mut().fill(T::zero());
        self.steps = 0;
    }

    /// One update of `params` (the scope's slice) from `grads` (same length).
    ///
    /// The gradient is read only: clipping is applied as a factor on the fly. On error
    /// nothing is changed (see the module docs for how that is guaranteed).
    ///
    /// Cost: no allocation, O(1) stack; with `n = params.len()`: one pass of `n`
    /// multiply-adds for the norm (two more only if the sum of squares overflows or
    /// underflows), then twice the per-element update (about 6 flops for SGD; 12 flops, a
    /// square root and two divisions for Adam): once to check, once to store; plus
    /// `O(log t)` multiplications for Adam's bias correction.
    pub fn step<T: Real>(
        &mut self,
        cfg: &OptimConfig<T>,
        params: &mut [T],
        grads: &[T],
    ) -> Result<StepInfo<T>, OptimError>
    where
        S: AsRef<[T]> + AsMut<[T]>,
    {
        self.whole(cfg, None, params, grads)
    }

    /// [`OptimState::step`] of the parameters `range` of a model of `shape` (a
    /// [`Shape::scope_range`]; `params` is that range): the factored kinds factor the
    /// second moment of each weight matrix in it, their storage [`state_len_in`] floats
    /// long. SGD and Adam are [`OptimState::step`]'s.
    ///
    /// Cost: [`OptimState::step`]'s (Adam's per value), and for each weight matrix two
    /// more passes over its gradient (its row and column means, once to check, once to
    /// store; the column pass strided); a walk over the shape's tensors per call.
    pub fn step_in<T: Real>(
        &mut self,
        cfg: &OptimConfig<T>,
        (shape, range): (&Shape, core::ops::Range<usize>),
        params: &mut [T],
        grads: &[T],
    ) -> Result<StepInfo<T>, OptimError>
    where
        S: AsRef<[T]> + AsMut<[T]>,
    {
        self.whole(cfg, Some(Tensors::of(shape, range)), params, grads)
    }

    /// The update of all the parameters, and the step counted.
    fn whole<T: Real>(
        &mut self,
        cfg: &OptimConfig<T>,
        tensors: Option<Tensors<'_>>,
        params: &mut [T],
        grads: &[T],
    ) -> Result<StepInfo<T>, OptimError>
    where
        S: AsRef<[T]> + AsMut<[T]>,
    {
        let n = params.len();
        let info = self.update(cfg, tensors, params, grads, 0, n)?;
        self.steps = info.step;
        Ok(info)
    }

    /// One block's share of an update over `n` parameters (a layer of a layer-wise
    /// backward pass): `params` and `grads` are parameters `at..at + params.len()` of the
    /// `n` the state was made for, updated with their moments at step
    /// [`OptimState::steps`]` + 1`, and the step counter is left alone
    /// ([`OptimState::finish_parts`] advances it once every block is through). Clipping
    /// acts on this block's gradient alone (its own norm). The same per-value arithmetic
    /// as [`OptimState::step`]: blocks that cover the parameters once, without clipping,
    /// give [`OptimState::step`]'s bits. On error nothing of the block is changed.
    ///
    /// Cost: [`OptimState::step`]'s over the block.
    pub fn step_part<T: Real>(
        &mut self,
        cfg: &OptimConfig<T>,
        params: &mut [T],
        grads: &[T],
        at: usize,
        n: usize,
    ) -> Result<StepInfo<T>, OptimError>
    where
        S: AsRef<[T]> + AsMut<[T]>,
    {
        self.update(cfg, None, params, grads, at, n)
    }

    /// [`OptimState::step_part`] of a block of the parameters `range` of a model of
    /// `shape` ([`OptimState::step_in`]; `at` counts from `range.start`, `n` is
    /// `range.len()`), as [`crate::train::loss::layerwise_update`] calls it: a block
    /// must hold each weight matrix it touches whole, or each band of it
    /// ([`band_rows`]), else [`OptimError::LengthMismatch`]. Blocks that cover the range once, without
    /// clipping, give [`OptimState::step_in`]'s bits.
    pub fn step_part_in<T: Real>(
        &mut self,
        cfg: &OptimConfig<T>,
        (shape, range): (&Shape, core::ops::Range<usize>),
        params: &mut [T],
        grads: &[T],
        at: usize,
    ) -> Result<StepInfo<T>, OptimError>
    where
        S: AsRef<[T]> + AsMut<[T]>,
    {
        let n = range.len();
        self.update(cfg, Some(Tensors::of(shape, range)), params, grads, at, n)
    }

    /// The update of a block, with or without the tensors.
    fn update<T: Real>(
        &mut self,
        cfg: &OptimConfig<T>,
        tensors: Option<Tensors<'_>>,
        params: &mut [T],
        grads: &[T],
        at: usize,
        n: usize,
    ) -> Result<StepInfo<T>, OptimError>
    where
        S: AsRef<[T]> + AsMut<[T]>,
    {
        cfg.validate()?;
        let len = params.len();
        let kind = cfg.optimiser.kind();
        let factored = matches!(kind, OptimKind::Factored | OptimKind::FactoredRms);
        let expected = match tensors {
            Some(t) if factored => {
                if t.end.checked_sub(t.start) != Some(n) {
                    return Err(OptimError::LengthMismatch);
                }
                state_len_in(kind, t.shape, t.start..t.end)
            }
            _ => state_len(kind, n),
        };
        if grads.len() != len
            || at.checked_add(len).is_none_or(|end| end > n)
            || self.storage.as_ref().len() != expected
        {
            return Err(OptimError::LengthMismatch);
        }
        let (f, r) = norm_parts(grads).ok_or(OptimError::NonFiniteGradient)?;
        let grad_norm = f * r;
        let (scale, clipped) = match cfg.clip_norm {
            Some(max) if grad_norm > max => ((max / f) / r, true),
            _ => (T::one(), false),
        };
        let wd = cfg.weight_decay;
        let step = self.steps.saturating_add(1);
        let state = self.storage.as_mut();
        match cfg.optimiser {
            Optimiser::Sgd { lr, momentum } => {
                let c = Sgd {
                    scale,
                    wd,
                    lr,
                    momentum,
                };
                let state = state
                    .get_mut(at..at + len)
                    .ok_or(OptimError::LengthMismatch)?;
                // Check pass: nothing is written.
                for ((p, g), v) in params.iter().zip(grads).zip(state.iter()) {
                    let (p, v) = c.update(*p, *g, *v);
                    if !(p.is_finite() && v.is_finite()) {
                        return Err(OptimError::NonFiniteUpdate);
                    }
                }
                for ((p, g), v) in params.iter_mut().zip(grads).zip(state.iter_mut()) {
                    (*p, *v) = c.update(*p, *g, *v);
                }
            }
            Optimiser::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let one = T::one();
                let c = Adam {
                    scale,
                    wd,
                    lr,
                    beta1,
                    beta2,
                    one_m_beta1: one - beta1,
                    one_m_beta2: one - beta2,
                    eps,
                    bc1: one - pow_u32(beta1, step),
                    bc2: one - pow_u32(beta2, step),
                };
                let (m, v) = state
                    .split_at_mut_checked(n)
                    .ok_or(OptimError::LengthMismatch)?;
                let (m, v) = (
                    m.get_mut(at..at + len).ok_or(OptimError::LengthMismatch)?,
                    v.get_mut(at..at + len).ok_or(OptimError::LengthMismatch)?,
                );
                // Check pass. The square root is the dearest part of an update on a
                // device without a hardware `sqrt` in reach, so it is skipped where a
                // bound proves the new parameter finite: `|m_hat| / (sqrt(v_hat) + eps)
                // <= |m_hat| / eps`.
                // The pass has no branch (the flags are and-ed), so that it runs in
                // vector registers where the target has them; only when some bound is
                // not finite does a second pass compute those parameters' updates.
                let lr_over_eps = lr / eps;
                let (mut moments_finite, mut bounded) = (true, true);
                for (((p, g), m), v) in params.iter().zip(grads).zip(m.iter()).zip(v.iter()) {
                    let (m_new, v_new) = c.moments(*p, *g, *m, *v);
                    moments_finite &= m_new.is_finite() & v_new.is_finite();
                    bounded &= (p.abs() + lr_over_eps * (m_new / c.bc1).abs()).is_finite();
                }
                if !moments_finite {
                    return Err(OptimError::NonFiniteUpdate);
                }
                if !bounded {
                    for (((p, g), m), v) in params.iter().zip(grads).zip(m.iter()).zip(v.iter()) {
                        let m_new = c.moments(*p, *g, *m, *v).0;
                        let bound = p.abs() + lr_over_eps * (m_new / c.bc1).abs();
                        if !bound.is_finite() && !c.update(*p, *g, *m, *v).0.is_finite() {
                            return Err(OptimError::NonFiniteUpdate);
                        }
                    }
                }
                for (((p, g), m), v) in params
                    .iter_mut()
                    .zip(grads)
                    .zip(m.iter_mut())
                    .zip(v.iter_mut())
                {
                    (*p, *m, *v) = c.update(*p, *g, *m, *v);
                }
            }
            Optimiser::Factored { .. } | Optimiser::FactoredRms { .. } => {
                let one = T::one();
                let (beta1, first) = match cfg.optimiser {
                    Optimiser::Factored { beta1, .. } => (beta1, true),
                    _ => (T::zero(), false),
                };
                let (lr, beta2, eps) = match cfg.optimiser {
                    Optimiser::Factored { lr, beta2, eps, .. }
                    | Optimiser::FactoredRms { lr, beta2, eps } => (lr, beta2, eps),
                    _ => return Err(OptimError::InvalidConfig),
                };
                let c = Factored {
                    scale,
                    wd,
                    lr,
                    beta1,
                    one_m_beta1: one - beta1,
                    beta2,
                    one_m_beta2: one - beta2,
                    eps,
                    bc1: one - pow_u32(beta1, step),
                    bc2: one - pow_u32(beta2, step),
                    first,
                };
                let (m, v) = if first {
                    let (m, v) = state
                        .split_at_mut_checked(n)
                        .ok_or(OptimError::LengthMismatch)?;
                    (
                        m.get_mut(at..at + len).ok_or(OptimError::LengthMismatch)?,
                        v,
                    )
                } else {
                    (&mut [][..], state)
                };
                let tensors = tensors.filter(|_| factored);
                // Check pass over every segment of the block: nothing is written.
                segments(tensors.as_ref(), n, at, len, |sg| {
                    let (p, g, m, v) = sg.slices(&*params, grads, &*m, &*v)?;
                    c.check(sg, p, g, m, v)
                })?;
                segments(tensors.as_ref(), n, at, len, |sg| {
                    let (p, g, m, v) = sg.slices(&mut *params, grads, &mut *m, &mut *v)?;
                    c.store(sg, p, g, m, v);
                    Ok(())
                })?;
            }
        }
        Ok(StepInfo {
            grad_norm,
            clipped,
            step,
        })
    }

    /// Ends a step made of [`OptimState::step_part`] calls: the step counter advances.
    pub fn finish_parts(&mut self) {
        self.steps = self.steps.saturating_add(1);
    }
}

/// Per-step constants of SGD.
struct Sgd<T> {
    scale: T,
    wd: T,
    lr: T,
    momentum: T,
}

impl<T: Real> Sgd<T> {
    /// New `(p, v)`. The check and the store pass both call this, so they agree bit for bit.
    #[inline(always)]
    fn update(&self, p: T, g: T, v: T) -> (T, T) {
        let g = g * self.scale + self.wd * p;
        let v = self.momentum * v + g;
        (p - self.lr * v, v)
    }
}

/// Per-step constants of Adam.
struct Adam<T> {
    scale: T,
    wd: T,
    lr: T,
    beta1: T,
    beta2: T,
    one_m_beta1: T,
    one_m_beta2: T,
    eps: T,
    /// `1 - beta1^t`.
    bc1: T,
    /// `1 - beta2^t`.
    bc2: T,
}

impl<T: Real> Adam<T> {
    /// New `(p, m, v)`. The check and the store pass both call this.
    #[inline(always)]
    fn update(&self, p: T, g: T, m: T, v: T) -> (T, T, T) {
        let (m, v) = self.moments(p, g, m, v);
        let m_hat = m / self.bc1;
        let v_hat = v / self.bc2;
        (
            p - self.lr * m_hat / (v_hat.sqrt_rounded() + self.eps),
            m,
            v,
        )
    }
}

impl<T: Real> Adam<T> {
    /// The new moments `(m, v)` alone.
    #[inline(always)]
    fn moments(&self, p: T, g: T, m: T, v: T) -> (T, T) {
        let g = g * self.scale + self.wd * p;
        (
            self.beta1 * m + self.one_m_beta1 * g,
            self.beta2 * v + self.one_m_beta2 * (g * g),
        )
    }
}

/// A run of parameters a factored optimiser updates alike: a weight matrix (`rows x
/// cols`, its second moment `rows + cols` values) or a part of a vector (`len` values,
/// one second moment each).
#[derive(Clone, Copy)]
struct Segment {
    /// First parameter, from the start of the block.
    at: usize,
    /// Parameters.
    len: usize,
    /// Rows and columns of a matrix; `(0, 0)` for a vector.
    rows: usize,
    cols: usize,
    /// First value of its second moment, from the start of the second moment.
    v_at: usize,
}

impl Segment {
    const fn is_matrix(&self) -> bool {
        self.rows > 0
    }

    const fn v_len(&self) -> usize {
        if self.is_matrix() {
            self.rows + self.cols
        } else {
            self.len
        }
    }

    /// The segment's parameters, gradient, first moment (empty without one) and second
    /// moment: shared slices for a check, mutable ones for an update.
    fn slices<'a, T, S: Cut>(
        &self,
        p: S,
        g: &'a [T],
        m: S,
        v: S,
    ) -> Result<(S, &'a [T], S, S), OptimError> {
        let r = self.at..self.at + self.len;
        let m = if m.is_empty() { m } else { m.cut(r.clone())? };
        Ok((
            p.cut(r.clone())?,
            g.cut(r)?,
            m,
            v.cut(self.v_at..self.v_at + self.v_len())?,
        ))
    }
}

/// A slice, shared or mutable, that [`Segment::slices`] cuts.
trait Cut: Sized {
    /// The values of `r`, or [`OptimError::LengthMismatch`] when the slice is shorter.
    fn cut(self, r: core::ops::Range<usize>) -> Result<Self, OptimError>;
    fn is_empty(&self) -> bool;
}

impl<T> Cut for &[T] {
    fn cut(self, r: core::ops::Range<usize>) -> Result<Self, OptimError> {
        self.get(r).ok_or(OptimError::LengthMismatch)
    }
    fn is_empty(&self) -> bool {
        <[T]>::is_empty(self)
    }
}

impl<T> Cut for &mut [T] {
    fn cut(self, r: core::ops::Range<usize>) -> Result<Self, OptimError> {
        self.get_mut(r).ok_or(OptimError::LengthMismatch)
    }
    fn is_empty(&self) -> bool {
        <[T]>::is_empty(self)
    }
}

/// Calls `f` on each segment of the block `at..at + len` of the `n` parameters
/// (`tensors`' range, or without tensors one vector; a matrix is a segment per band,
/// [`band_rows`]): a band the block holds in part is [`OptimError::LengthMismatch`],
/// found before `f` sees any segment.
fn segments(
    tensors: Option<&Tensors<'_>>,
    n: usize,
    at: usize,
    len: usize,
    mut f: impl FnMut(Segment) -> Result<(), OptimError>,
) -> Result<(), OptimError> {
    let end = at + len;
    let Some(t) = tensors else {
        return f(Segment {
            at: 0,
            len,
            rows: 0,
            cols: 0,
            v_at: at,
        });
    };
    // Two walks: the first only looks for a split band.
    for walk in 0..2 {
        let mut v_at = 0;
        let bands = (0..t.shape.tensor_count())
            .filter_map(|i| t.shape.tensor(i))
            .flat_map(|whole| (0..band_count(&whole)).map(move |b| band(&whole, b)));
        for tensor in bands {
            // The tensor's part of the range, from the range's start.
            let a = tensor.offset.max(t.start) - t.start;
            let b = (tensor.offset + tensor.len())
                .min(t.end)
                .saturating_sub(t.start);
            if a >= b {
                continue;
            }
            let matrix =
                is_matrix(&tensor) && a + t.start == tensor.offset && b == tensor.len() + a;
            // Its part of the block.
            let (x, y) = (a.max(at), b.min(end));
            if x < y {
                if matrix && (x, y) != (a, b) {
                    return Err(OptimError::LengthMismatch);
                }
                if walk == 1 {
                    f(Segment {
                        at: x - at,
                        len: y - x,
                        rows: if matrix { tensor.rows } else { 0 },
                        cols: if matrix { tensor.cols } else { 0 },
                        v_at: if matrix { v_at } else { v_at + (x - a) },
                    })?;
                }
            }
            v_at += if matrix {
                tensor.rows + tensor.cols
            } else {
                b - a
            };
        }
        if n != t.end - t.start {
            return Err(OptimError::LengthMismatch);
        }
    }
    Ok(())
}

/// Per-step constants of the factored optimisers.
struct Factored<T> {
    scale: T,
    wd: T,
    lr: T,
    beta1: T,
    one_m_beta1: T,
    beta2: T,
    one_m_beta2: T,
    eps: T,
    /// `1 - beta1^t`.
    bc1: T,
    /// `1 - beta2^t`.
    bc2: T,
    /// A first moment is kept.
    first: bool,
}

impl<T: Real> Factored<T> {
    /// The gradient after clipping and weight decay.
    #[inline(always)]
    fn grad(&self, p: T, g: T) -> T {
        g * self.scale + self.wd * p
    }

    /// The new first moment (the gradient itself without one) and the step's `m^`.
    #[inline(always)]
    fn first(&self, g: T, m: T) -> (T, T) {
        if self.first {
            let m = self.beta1 * m + self.one_m_beta1 * g;
            (m, m / self.bc1)
        } else {
            (g, g)
        }
    }

    /// A running mean of `g^2` after this step's `mean` (Adam's `v` for a vector's value).
    #[inline(always)]
    fn second(&self, v: T, mean: T) -> T {
        self.beta2 * v + self.one_m_beta2 * mean
    }

    /// The new parameter from `m^` and the uncorrected `v` (Adam's arithmetic).
    #[inline(always)]
    fn param(&self, p: T, m_hat: T, v: T) -> T {
        let v_hat = v / self.bc2;
        p - self.lr * m_hat / (v_hat.sqrt() + self.eps)
    }

    /// Row `i`'s running mean of `g^2` after this step.
    fn row(&self, (p, g): (&[T], &[T]), cols: usize, i: usize, r: T) -> T {
        let mut ss = T::zero();
        for (&p, &g) in p.iter().zip(g).skip(i * cols).take(cols) {
            let g = self.grad(p, g);
            ss += g * g;
        }
        self.second(r, ss / T::of(cols as f64))
    }

    /// Column `j`'s running mean of `g^2` after this step.
    fn col(&self, (p, g): (&[T], &[T]), (rows, cols): (usize, usize), j: usize, c: T) -> T {
        let mut ss = T::zero();
        // By index: a strided walk without `step_by`, whose zero step would be a panic.
        for i in 0..rows {
            let q = i * cols + j;
            if let (Some(&p), Some(&g)) = (p.get(q), g.get(q)) {
                let g = self.grad(p, g);
                ss += g * g;
            }
        }
        self.second(c, ss / T::of(rows as f64))
    }

    /// `v_ij = R_i (C_j / mean R)`, 0 when `mean R` is 0.
    #[inline(always)]
    fn factored_v(r: T, c: T, mean_r: T) -> T {
        if mean_r > T::zero() {
            r * (c / mean_r)
        } else {
            T::zero()
        }
    }

    /// Checks a segment's update without writing it: every new moment finite, every
    /// new parameter finite (bounded through `|m^| / eps` where that bound is finite,
    /// else computed).
    fn check(&self, sg: Segment, p: &[T], g: &[T], m: &[T], v: &[T]) -> Result<(), OptimError> {
        let lr_over_eps = self.lr / self.eps;
        let m_at = |q: usize| m.get(q).copied().unwrap_or(T::zero());
        if !sg.is_matrix() {
            for (q, ((&p, &g), &v)) in p.iter().zip(g).zip(v).enumerate() {
                let g = self.grad(p, g);
                let (m_new, m_hat) = self.first(g, m_at(q));
                let v_new = self.second(v, g * g);
                if !(m_new.is_finite() && v_new.is_finite()) {
                    return Err(OptimError::NonFiniteUpdate);
                }
                if !(p.abs() + lr_over_eps * m_hat.abs()).is_finite()
                    && !self.param(p, m_hat, v_new).is_finite()
                {
                    return Err(OptimError::NonFiniteUpdate);
                }
            }
            return Ok(());
        }
        let (rows, cols) = (sg.rows, sg.cols);
        let (rs, cs) = v.split_at_checked(rows).ok_or(OptimError::LengthMismatch)?;
        let mut sum = T::zero();
        for (i, &r) in rs.iter().enumerate() {
            let r = self.row((p, g), cols, i, r);
            if !r.is_finite() {
                return Err(OptimError::NonFiniteUpdate);
            }
            sum += r;
        }
        for (j, &c) in cs.iter().enumerate() {
            if !self.col((p, g), (rows, cols), j, c).is_finite() {
                return Err(OptimError::NonFiniteUpdate);
            }
        }
        let mean_r = sum / T::of(rows as f64);
        if !mean_r.is_finite() {
            return Err(OptimError::NonFiniteUpdate);
        }
        // Row `i`, column `j` of value `q`, counted (no division).
        let (mut i, mut j) = (0, 0);
        for (q, (&pq, &gq)) in p.iter().zip(g).enumerate() {
            let (i, j) = next_cell(&mut i, &mut j, cols);
            let gq = self.grad(pq, gq);
            let (m_new, m_hat) = self.first(gq, m_at(q));
            if !m_new.is_finite() {
                return Err(OptimError::NonFiniteUpdate);
            }
            if !(pq.abs() + lr_over_eps * m_hat.abs()).is_finite() {
                // Rare: the update itself, with this value's row and column recomputed.
                let r = self.row((p, g), cols, i, rs.get(i).copied().unwrap_or(T::zero()));
                let c = self.col(
                    (p, g),
                    (rows, cols),
                    j,
                    cs.get(j).copied().unwrap_or(T::zero()),
                );
                if !self
                    .param(pq, m_hat, Self::factored_v(r, c, mean_r))
                    .is_finite()
                {
                    return Err(OptimError::NonFiniteUpdate);
                }
            }
        }
        Ok(())
    }

    /// Writes a segment's update ([`Factored::check`]ed: the same arithmetic). A
    /// matrix's column and row means are stored first, from the gradient and the
    /// parameters before the update, then every parameter moves.
    fn store(&self, sg: Segment, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
        let first = !m.is_empty();
        if !sg.is_matrix() {
            for (q, ((p, &g), v)) in p.iter_mut().zip(g).zip(v.iter_mut()).enumerate() {
                let g = self.grad(*p, g);
                let m_old = m.get(q).copied().unwrap_or(T::zero());
                let (m_new, m_hat) = self.first(g, m_old);
                *v = self.second(*v, g * g);
                *p = self.param(*p, m_hat, *v);
                if first {
                    if let Some(mq) = m.get_mut(q) {
                        *mq = m_new;
                    }
                }
            }
            return;
        }
        let (rows, cols) = (sg.rows, sg.cols);
        // The check found the second moment `rows + cols` long.
        let Some((rs, cs)) = v.split_at_mut_checked(rows) else {
            return;
        };
        for (j, c) in cs.iter_mut().enumerate() {
            *c = self.col((p, g), (rows, cols), j, *c);
        }
        let mut sum = T::zero();
        for (i, r) in rs.iter_mut().enumerate() {
            *r = self.row((p, g), cols, i, *r);
            sum += *r;
        }
        let mean_r = sum / T::of(rows as f64);
        let (mut i, mut j) = (0, 0);
        for (q, (pq, &gq)) in p.iter_mut().zip(g).enumerate() {
            let (i, j) = next_cell(&mut i, &mut j, cols);
            let gq = self.grad(*pq, gq);
            let m_old = m.get(q).copied().unwrap_or(T::zero());
            let (m_new, m_hat) = self.first(gq, m_old);
            let (r, c) = (
                rs.get(i).copied().unwrap_or(T::zero()),
                cs.get(j).copied().unwrap_or(T::zero()),
            );
            *pq = self.param(*pq, m_hat, Self::factored_v(r, c, mean_r));
            if first {
                if let Some(mq) = m.get_mut(q) {
                    *mq = m_new;
                }
            }
        }
    }
}

/// The current cell `(i, j)` of a row-major walk over `cols` columns, and the walk moved
/// to the next one.
#[inline(always)]
fn next_cell(i: &mut usize, j: &mut usize, cols: usize) -> (usize, usize) {
    let cell = (*i, *j);
    *j += 1;
    if *j >= cols {
        *j = 0;
        *i += 1;
    }
    cell
}

/// `b^t` by binary exponentiation: plain multiplications, so bit-identical on every
/// target (unlike `powi`/`powf`, whose implementation differs between `std` and `libm`).
/// At most 64 multiplications.
fn pow_u32<T: Real>(b: T, mut t: u32) -> T {
    let mut acc = T::one();
    let mut base = b;
    while t > 0 {
        if t & 1 == 1 {
            acc *= base;
        }
        base *= base;
        t >>= 1;
    }
    acc
}

/// `(f, r)` with `||g|| = f * r`, computed without overflow, or `None` when an element is
/// not finite. The fast path (sum of squares neither overflows nor underflows) returns
/// `f = 1`; otherwise `f = max |g_i|` and `r = ||g / f||`.
fn norm_parts<T: Real>(g: &[T]) -> Option<(T, T)> {
    let mut ss = T::zero();
    for &x in g {
        ss += x * x;
    }
    // A finite sum implies every element is finite.
    if ss.is_finite() && ss >= T::of(f32::MIN_POSITIVE as f64) {
        return Some((T::one(), ss.sqrt()));
    }
    let mut amax = T::zero();
    for &x in g {
        if !x.is_finite() {
            return None;
        }
        let a = x.abs();
        if a > amax {
            amax = a;
        }
    }
    if amax == T::zero() {
        return Some((T::one(), T::zero()));
    }
    let mut s = T::zero();
    for &x in g {
        let y = x / amax;
        s += y * y;
    }
    Some((amax, s.sqrt()))
}

/// Euclidean norm of `g`, without overflow or underflow in the intermediate sum of
/// squares (the result itself overflows to infinity only if the norm exceeds the largest
/// float). NaN if an element is NaN, else infinity if an element is infinite.
///
/// Cost: one pass of `n` multiply-adds; two more passes (with a division per element)
/// only when the plain sum of squares overflows or falls below `f32::MIN_POSITIVE`.
pub fn global_norm<T: Real>(g: &[T]) -> T {
    match norm_parts(g) {
        Some((f, r)) => f * r,
        None => non_finite_norm(g),
    }
}

/// NaN if an element is NaN, else infinity.
fn non_finite_norm<T: Real>(g: &[T]) -> T {
    let inf = T::one() / T::zero();
    for &x in g {
        // Not finite and not infinite: NaN.
        if !x.is_finite() && x.abs() != inf {
            return x;
        }
    }
    inf
}

/// Scales `g` so that its global norm is `max` when it exceeds `max`, and returns the norm
/// before clipping ([`global_norm`]).
///
/// `g` is left unchanged when its norm is at most `max`, when an element is not finite
/// (the returned norm is then NaN or infinity), or when `max` is negative or NaN.
/// `max = 0` zeroes `g` (unless it is already zero).
///
/// Cost: that of [`global_norm`] plus, when clipping, one multiplication per element.
pub fn clip_global_norm<T: Real>(g: &mut [T], max: T) -> T {
    match norm_parts(g) {
        None => non_finite_norm(g),
        Some((f, r)) => {
            let norm = f * r;
            if max >= T::zero() && norm > max {
                let s = (max / f) / r;
                for x in g.iter_mut() {
                    *x *= s;
                }
            }
            norm
        }
    }
}
