//! First-order optimisers for on-device training: SGD with momentum and Adam
//! (bias-corrected), with optional global-norm gradient clipping and L2 weight decay.
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

use crate::Real;

/// Which optimiser, without its hyper-parameters: all that sizing the state needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OptimKind {
    /// SGD with momentum: one velocity per parameter.
    Sgd,
    /// Adam: first and second moment per parameter.
    Adam,
}

/// Floats of optimiser state for `n` trained parameters: `n` for SGD with momentum, `2 n`
/// for Adam (saturating; a real `n` never comes close). Usable in array lengths.
///
/// Bytes of state = `state_len(kind, n) * size_of::<T>()`, plus the 4-byte step counter
/// of [`OptimState`].
pub const fn state_len(kind: OptimKind, n: usize) -> usize {
    match kind {
        OptimKind::Sgd => n,
        OptimKind::Adam => n.saturating_mul(2),
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

    /// The kind (sizes the state).
    pub const fn kind(&self) -> OptimKind {
        match self {
            Optimiser::Sgd { .. } => OptimKind::Sgd,
            Optimiser::Adam { .. } => OptimKind::Adam,
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> T {
        match *self {
            Optimiser::Sgd { lr, .. } | Optimiser::Adam { lr, .. } => lr,
        }
    }

    /// The same optimiser with another learning rate (for schedules).
    pub fn with_lr(self, lr: T) -> Self {
        match self {
            Optimiser::Sgd { momentum, .. } => Optimiser::Sgd { lr, momentum },
            Optimiser::Adam {
                beta1, beta2, eps, ..
            } => Optimiser::Adam {
                lr,
                beta1,
                beta2,
                eps,
            },
        }
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
            } => nonneg(lr) && unit(beta1) && unit(beta2) && eps.is_finite() && eps > zero,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OptimError {
    /// `params` and `grads` differ in length, or the state storage is not
    /// [`state_len`]`(kind, params.len())` floats long.
    LengthMismatch,
    /// A hyper-parameter is out of range ([`OptimConfig::validate`]).
    InvalidConfig,
    /// The gradient holds a NaN or an infinity.
    NonFiniteGradient,
    /// The update would make a parameter or a moment NaN or infinite (overflow).
    NonFiniteUpdate,
}

impl core::fmt::Display for OptimError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            OptimError::LengthMismatch => {
                "parameter, gradient and optimiser state lengths do not match"
            }
            OptimError::InvalidConfig => "optimiser hyper-parameter out of range",
            OptimError::NonFiniteGradient => "gradient is not finite",
            OptimError::NonFiniteUpdate => "update would make a parameter or moment non-finite",
        })
    }
}

impl core::error::Error for OptimError {}

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
/// `0..n`, second moment `v` in `n..2n`. Save the storage and [`OptimState::steps`] to
/// resume training later ([`OptimState::from_parts`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OptimState<S> {
    storage: S,
    steps: u32,
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
        let n = params.len();
        let info = self.step_part(cfg, params, grads, 0, n)?;
        self.steps = info.step;
        Ok(info)
    }

    /// One block's share of an update over `n` parameters (a layer of a layer-wise
    /// backward pass, [`crate::train::loss::layerwise_update`]): `params` and `grads` are
    /// parameters `at..at + params.len()` of the `n` the state was made for, updated
    /// with their moments at step [`OptimState::steps`]` + 1`, and the step counter is
    /// left alone ([`OptimState::finish_parts`] advances it once every block is
    /// through). Clipping acts on this block's gradient alone (its own norm). The same
    /// per-value arithmetic as [`OptimState::step`]: blocks that cover the parameters
    /// once, without clipping, give [`OptimState::step`]'s bits. On error nothing of the
    /// block is changed.
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
        cfg.validate()?;
        let len = params.len();
        let kind = cfg.optimiser.kind();
        if grads.len() != len
            || at.checked_add(len).is_none_or(|end| end > n)
            || self.storage.as_ref().len() != state_len(kind, n)
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
        (p - self.lr * m_hat / (v_hat.sqrt() + self.eps), m, v)
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
