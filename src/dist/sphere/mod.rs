//! The two posterior families on the unit sphere `S^{M-1}`: von Mises-Fisher and Power
//! Spherical (docs/design.md#posteriors), as methods on [`Posterior`].
//!
//! Both are rotation-symmetric about their mean direction `mu`, so every quantity except
//! the density depends only on `M` and the concentration `kappa`, and a draw is built in
//! three steps shared by both families:
//! 1. the cosine `w = mu . z` from the family's marginal law (vMF: Wood's rejection
//!    sampler, exact inverse CDF for `M = 3`; PS: `w = 2T - 1`, `T ~ Beta`), together
//!    with `dw/dkappa` at fixed noise (the reparameterisation gradient);
//! 2. a uniform tangent direction `v` on `S^{M-2}` (normalised Gaussian) and
//!    `x = (w, sqrt(1 - w^2) v)`;
//! 3. the Householder reflection `H = I - 2 u u^T / (u . u)`, `u = e1 - mu`, which maps
//!    `e1` to `mu`: `z = H x`. [`reflect_backward`] is its backward pass.
//!
//! The scalar functions take `kappa >= 0` (negative values are treated as 0, NaN gives
//! NaN) and `M >= 2` (smaller `M` is treated as 2).

mod power;
mod vmf;

use crate::dist::rng::{normal_pair, VariateError};
use crate::dist::special::{is_nan, log_sphere_area, nan};
use crate::infer::nn::dot;
use crate::{Posterior, Real};
use rand_core::Rng;

pub use vmf::WOOD_MAX_TRIES;

/// One reparameterised draw: `w = mu . z` and `dw/dkappa` with the noise held fixed.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Draw<T> {
    /// Cosine between the draw and the mean direction.
    pub w: T,
    /// Derivative of `w` with respect to `kappa` at fixed noise.
    pub dw_dkappa: T,
}

/// Why a draw could not be made. On every error the output `z` is left untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SampleError {
    /// `mu` and `z` differ in length.
    #[error("mean direction and output differ in length")]
    Length,
    /// The ambient size `M` (the length of `mu`) is below 2.
    #[error("ambient size must be at least 2")]
    Dimension,
    /// `mu` has a non-finite entry.
    #[error("mean direction has a non-finite entry")]
    Direction,
    /// `kappa` is not a finite positive number.
    #[error("concentration must be finite and positive")]
    Kappa,
    /// A rejection loop hit its cap (Wood: [`WOOD_MAX_TRIES`]; Gamma variates:
    /// [`crate::dist::rng::GAMMA_MAX_TRIES`]). Probability below `1e-25` per draw.
    #[error("rejection sampler hit its iteration cap")]
    RejectionCap,
    /// The incomplete-beta continued fraction behind the Power Spherical gradient did not
    /// converge within [`crate::dist::special::CF_CAP`] terms (never observed).
    #[error("continued fraction did not converge")]
    NoConvergence,
}

impl From<VariateError> for SampleError {
    fn from(e: VariateError) -> Self {
        match e {
            VariateError::BadShape => SampleError::Kappa,
            VariateError::RejectionCap => SampleError::RejectionCap,
        }
    }
}

/// A draw of the cosine with `1 - w` and `1 + w` kept to full relative precision (the
/// tangent scale `sqrt(1 - w^2)` is formed from them: at `kappa = 1e4` in `f32`, `1 - w`
/// is about `1e-4` and would lose three digits if recomputed from `w`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WDraw<T> {
    pub w: T,
    pub omw: T,
    pub opw: T,
    pub dw_dk: T,
}

impl<T: Real> WDraw<T> {
    /// Builds the draw from `1 - w` and `1 + w`, taking `w` from the smaller of the two so
    /// that it is as accurate as they are.
    pub(crate) fn from_parts(omw: T, opw: T, dw_dk: T) -> Self {
        let one = T::of(1.0);
        let w = if omw < opw { one - omw } else { opw - one };
        WDraw { w, omw, opw, dw_dk }
    }
}

/// `kappa` clamped to `[0, inf)`, NaN kept.
fn clamp_kappa<T: Real>(kappa: T) -> T {
    if is_nan(kappa) {
        kappa
    } else {
        kappa.max(T::of(0.0))
    }
}

impl Posterior {
    /// Log normalising constant of the density on `S^{M-1}` (with respect to the surface
    /// measure): vMF `log C_M(kappa) = nu ln kappa - (M/2) ln(2 pi) - ln I_nu(kappa)`,
    /// PS `-ln N(kappa)`.
    pub fn log_normalizer<T: Real>(self, m: usize, kappa: T) -> T {
        let k = clamp_kappa(kappa);
        match self {
            Posterior::VonMisesFisher => vmf::log_normalizer(m, k),
            Posterior::PowerSpherical => power::log_normalizer(m, k),
        }
    }

    /// Log density at `z` of the law with mean direction `mu` (both unit vectors of the
    /// same length `M >= 2`; NaN when the lengths differ or `M < 2`).
    pub fn log_density<T: Real>(self, mu: &[T], kappa: T, z: &[T]) -> T {
        if mu.len() != z.len() || mu.len() < 2 {
            return nan();
        }
        let m = mu.len();
        let k = clamp_kappa(kappa);
        let w = dot(mu, z);
        match self {
            Posterior::VonMisesFisher => vmf::log_density(m, k, w),
            Posterior::PowerSpherical => power::log_density(m, k, w),
        }
    }

    /// Differential entropy (with respect to the surface measure).
    pub fn entropy<T: Real>(self, m: usize, kappa: T) -> T {
        let k = clamp_kappa(kappa);
        match self {
            Posterior::VonMisesFisher => log_sphere_area::<T>(m) - vmf::kl_to_uniform(m, k),
            Posterior::PowerSpherical => power::entropy(m, k),
        }
    }

    /// `KL(q || uniform on S^{M-1})` (independent of `mu`; 0 at `kappa = 0`).
    pub fn kl_to_uniform<T: Real>(self, m: usize, kappa: T) -> T {
        let k = clamp_kappa(kappa);
        match self {
            Posterior::VonMisesFisher => vmf::kl_to_uniform(m, k),
            Posterior::PowerSpherical => power::kl_to_uniform(m, k),
        }
    }

    /// `d KL(q || uniform) / d kappa`: vMF `kappa (1 - A^2) - (M-1) A` (computed as
    /// `kappa dA/dkappa` without its cancellation), PS
    /// `kappa (psi'(alpha) - psi'(alpha + beta))`.
    pub fn dkl_dkappa<T: Real>(self, m: usize, kappa: T) -> T {
        let k = clamp_kappa(kappa);
        match self {
            Posterior::VonMisesFisher => vmf::dkl_dkappa(m, k),
            Posterior::PowerSpherical => power::dkl_dkappa(m, k),
        }
    }

    /// `E[mu . z]`: `A_M(kappa)` (vMF) or `kappa / (M - 1 + kappa)` (PS).
    pub fn mean_cosine<T: Real>(self, m: usize, kappa: T) -> T {
        let k = clamp_kappa(kappa);
        match self {
            Posterior::VonMisesFisher => crate::dist::special::bessel_ratio(m, k),
            Posterior::PowerSpherical => {
                let m1 = T::of(m.max(2) as f64 - 1.0);
                k / (m1 + k)
            }
        }
    }

    /// The score that turns the pathwise `dw/dkappa` into an unbiased estimator for
    /// Wood's rejection sampler (Naesseth et al. 2017, the `g_cor` term of the S-VAE
    /// paper): for a loss `f(z)`,
    /// `d E[f] / d kappa = E[ df/dw * dw/dkappa + (f - c) * score ]` for any constant
    /// baseline `c` (the score has mean zero; a baseline such as a running mean of `f`
    /// keeps the variance down).
    ///
    /// `score = d/dkappa ln[q_w(h(eps, kappa)) |dh/deps|]` at the accepted proposal `eps`,
    /// which is recovered from `w`. It is 0 where no correction is needed: the Power
    /// Spherical family and the exact `M = 3` vMF sampler. Cheap (one Bessel ratio), but
    /// the caller needs the per-sample loss value. It is computed from `w`, so in `f32`
    /// at large `kappa` (where `1 - w` keeps only `eps / (1 - w)` relative precision) it
    /// is correspondingly rough.
    pub fn rejection_score<T: Real>(self, m: usize, kappa: T, w: T) -> T {
        match self {
            Posterior::VonMisesFisher => vmf::rejection_score(m, clamp_kappa(kappa), w),
            Posterior::PowerSpherical => T::of(0.0),
        }
    }

    /// Draws only the cosine `w = mu . z` (and `dw/dkappa`) from the family's marginal
    /// law on `[-1, 1]`, with the same random stream [`Posterior::sample`] uses first.
    pub fn sample_w<T: Real, R: Rng + ?Sized>(
        self,
        m: usize,
        kappa: T,
        rng: &mut R,
    ) -> Result<Draw<T>, SampleError> {
        if m < 2 {
            return Err(SampleError::Dimension);
        }
        check_kappa(kappa)?;
        let d = self.draw_w(m, kappa, rng)?;
        Ok(Draw {
            w: d.w,
            dw_dkappa: d.dw_dk,
        })
    }

    fn draw_w<T: Real, R: Rng + ?Sized>(
        self,
        m: usize,
        kappa: T,
        rng: &mut R,
    ) -> Result<WDraw<T>, SampleError> {
        match self {
            Posterior::VonMisesFisher => vmf::sample_w(m, kappa, rng),
            Posterior::PowerSpherical => power::sample_w(m, kappa, rng),
        }
    }

    /// Draws `z ~ q(. | mu, kappa)` into `z` by reparameterisation and returns
    /// `w = mu . z` with `dw/dkappa` at fixed noise.
    ///
    /// `mu` must be a unit vector (the caller normalised it); `z.len()` must equal
    /// `mu.len() = M >= 2`. Errors (lengths, `M < 2`, non-finite `mu`, `kappa` not finite
    /// and positive, a rejection cap) leave `z` untouched. The random stream is:
    /// the cosine first (see [`Posterior::sample_w`]), then `M - 1` normals in pairs for
    /// the tangent direction.
    ///
    /// vMF gradient: `dw/dkappa` is Wood's map `w(eps, b(kappa))` differentiated with
    /// `eps` fixed, the pathwise estimator of the S-VAE reference. It omits the
    /// rejection-correction term and so under-estimates `dE[w]/dkappa`, most at small
    /// `M` (`tests/dist_gradients.rs` measures it; figures in docs/benchmarks.md);
    /// [`Posterior::rejection_score`] gives the correction. The `M = 3` exact
    /// inverse-CDF path and the Power Spherical gradient are unbiased.
    pub fn sample<T: Real, R: Rng + ?Sized>(
        self,
        mu: &[T],
        kappa: T,
        rng: &mut R,
        z: &mut [T],
    ) -> Result<Draw<T>, SampleError> {
        if mu.len() != z.len() {
            return Err(SampleError::Length);
        }
        let m = mu.len();
        if m < 2 {
            return Err(SampleError::Dimension);
        }
        if mu.iter().any(|v| !v.is_finite()) {
            return Err(SampleError::Direction);
        }
        check_kappa(kappa)?;
        let d = self.draw_w(m, kappa, rng)?;
        fill_tangent(rng, d, z);
        reflect(mu, z);
        Ok(Draw {
            w: d.w,
            dw_dkappa: d.dw_dk,
        })
    }
}

fn check_kappa<T: Real>(kappa: T) -> Result<(), SampleError> {
    if is_nan(kappa) || !kappa.is_finite() || kappa <= T::of(0.0) {
        Err(SampleError::Kappa)
    } else {
        Ok(())
    }
}

/// Writes `x = (w, sqrt(1 - w^2) v)` with `v` uniform on `S^{M-2}` into `z`.
fn fill_tangent<T: Real, R: Rng + ?Sized>(rng: &mut R, d: WDraw<T>, z: &mut [T]) {
    let (head, tail) = z.split_at_mut(1);
    head[0] = d.w;
    let mut chunks = tail.chunks_exact_mut(2);
    for pair in &mut chunks {
        let (a, b) = normal_pair::<T, R>(rng);
        pair[0] = a;
        pair[1] = b;
    }
    for last in chunks.into_remainder() {
        *last = normal_pair::<T, R>(rng).0;
    }
    let n2 = dot(tail, tail);
    let r = (d.omw * d.opw).max(T::of(0.0)).sqrt();
    if n2 > T::of(0.0) && n2.is_finite() {
        let scale = r / n2.sqrt();
        tail.iter_mut().for_each(|v| *v *= scale);
    } else {
        // All normals exactly 0 (never seen; Box-Muller's cosine is not exactly 0 in
        // floating point): any fixed tangent direction keeps z on the sphere.
        tail.iter_mut().for_each(|v| *v = T::of(0.0));
        if let Some(first) = tail.first_mut() {
            *first = r;
        }
    }
}

/// `u . u` for `u = e1 - mu`, formed without the cancellation of `2 - 2 mu_0`.
fn householder_norm2<T: Real>(mu: &[T]) -> T {
    let mut it = mu.iter();
    let head = it.next().map_or(T::of(1.0), |&m0| T::of(1.0) - m0);
    it.fold(head * head, |s, &v| s + v * v)
}

/// True when `mu` is numerically `e1`: `|e1 - mu|^2 <= eps` (`|e1 - mu| <= 3.5e-4` in
/// `f32`, `1.5e-8` in `f64`). The reflection is then replaced by the identity, which
/// points the draw at most that far from `mu`, instead of dividing by a vanishing `u . u`.
/// The map is discontinuous at `mu = e1` in any case (the reflection does not tend to the
/// identity), so the threshold only moves the discontinuity; it caps the mu-gradient of
/// [`reflect_backward`] at about `8 |grad_z| / sqrt(eps)`.
fn is_identity<T: Real>(uu: T) -> bool {
    // Written so that a NaN norm also counts as the identity.
    uu.partial_cmp(&T::EPS) != Some(core::cmp::Ordering::Greater)
}

/// `z <- H z` with `H = I - 2 u u^T / (u . u)`, `u = e1 - mu`: turns a draw around `e1`
/// into the same draw around `mu` (the last step of [`Posterior::sample`]; public so that
/// recorded draws can be replayed exactly). `mu` and `z` must have the same length
/// (extra entries of the longer one are ignored).
pub fn reflect<T: Real>(mu: &[T], z: &mut [T]) {
    let uu = householder_norm2(mu);
    if is_identity(uu) {
        return;
    }
    let ux = u_dot(mu, z);
    let f = T::of(2.0) * ux / uu;
    for (i, (zi, &mi)) in z.iter_mut().zip(mu).enumerate() {
        *zi -= f * u_at(mi, i);
    }
}

/// Component `i` of `u = e1 - mu`.
fn u_at<T: Real>(mu_i: T, i: usize) -> T {
    if i == 0 {
        T::of(1.0) - mu_i
    } else {
        -mu_i
    }
}

/// `u . v` for `u = e1 - mu`.
fn u_dot<T: Real>(mu: &[T], v: &[T]) -> T {
    mu.iter()
        .zip(v)
        .enumerate()
        .fold(T::of(0.0), |s, (i, (&m, &x))| s + u_at(m, i) * x)
}

/// Backward pass of `z = H(mu) x(w, v)`, `x = (w, sqrt(1 - w^2) v)`, with the tangent
/// direction `v` held fixed: **adds** `dL/dmu` into `grad_mu` and returns `dL/dw`, given
/// `grad_z = dL/dz` (the caller then has `dL/dkappa = dL/dw * draw.dw_dkappa`).
///
/// `mu` is the raw vector that entered `u = e1 - mu` (no renormalisation is
/// differentiated here), `z` the draw and `w` its cosine. `x` is recovered as `H z`
/// (`H` is an involution), so nothing else needs to be stored. The `mu` gradient is
/// the exact derivative of the reflection (what the S-VAE reference obtains by automatic
/// differentiation through it): with `s = u.u`, `c = u.x`, `g = grad_z`,
/// `dL/dmu = (2/s) [(g.u) x + c g] - (4 c (g.u) / s^2) u`. When `mu` is numerically `e1`
/// the forward map used the identity and no `mu` gradient is added.
///
/// `dL/dw = (Hg)_0 - w (Hg)_{1:} . x_{1:} / (1 - w^2)` with `1 - w^2` taken as
/// `|x_{1:}|^2` (consistent with `z`) and clamped below at `eps`: the true derivative of
/// `sqrt(1 - w^2)` is unbounded as `w -> +-1`; the clamp keeps the tangent term below
/// `|g| / sqrt(eps)` and makes it vanish, not NaN, at `w = +-1` exactly.
///
/// All four slices must have the same length `M >= 2`; otherwise NaN is returned and
/// `grad_mu` is left untouched.
pub fn reflect_backward<T: Real>(mu: &[T], z: &[T], w: T, grad_z: &[T], grad_mu: &mut [T]) -> T {
    let m = mu.len();
    if m < 2 || z.len() != m || grad_z.len() != m || grad_mu.len() != m {
        return nan();
    }
    let two = T::of(2.0);
    let uu = householder_norm2(mu);
    let identity = is_identity(uu);
    // x = H z and Hg = H grad_z, component-wise on the fly.
    let (fz, fg, uz, ug) = if identity {
        (T::of(0.0), T::of(0.0), T::of(0.0), T::of(0.0))
    } else {
        let uz = u_dot(mu, z);
        let ug = u_dot(mu, grad_z);
        (two * uz / uu, two * ug / uu, uz, ug)
    };
    // `get` (0 past the end, which the length check rules out): no panic path linked in.
    let at = |v: &[T], i: usize| v.get(i).copied().unwrap_or(T::of(0.0));
    let x_at = |i: usize| at(z, i) - fz * u_at(at(mu, i), i);
    let hg_at = |i: usize| at(grad_z, i) - fg * u_at(at(mu, i), i);
    let (mut hgx, mut r2) = (T::of(0.0), T::of(0.0));
    for i in 1..m {
        let xi = x_at(i);
        hgx += hg_at(i) * xi;
        r2 += xi * xi;
    }
    let dldw = hg_at(0) - w * hgx / r2.max(T::EPS);
    if !identity {
        // c = u . x = u . (H z) = (H u) . z = -u . z.
        let c = -uz;
        let a = two / uu;
        let b = T::of(4.0) * c * ug / (uu * uu);
        for (i, ((gm, &gzi), &mi)) in grad_mu.iter_mut().zip(grad_z).zip(mu).enumerate() {
            *gm += a * (ug * x_at(i) + c * gzi) - b * u_at(mi, i);
        }
    }
    dldw
}
