//! von Mises-Fisher on `S^{M-1}`: normaliser, KL, and Wood's sampler with its
//! reparameterisation gradient.
//!
//! With `nu = M/2 - 1` and the normalised Bessel function
//! `Ĩ_nu(k) = Gamma(nu + 1) (2/k)^nu I_nu(k)` (`= 1` at `k = 0`), the constants of the
//! normaliser cancel analytically:
//! `log C_M(k) = nu ln k - (M/2) ln(2 pi) - ln I_nu(k) = -ln|S^{M-1}| - ln Ĩ_nu(k)`, and
//! `KL(vMF || U) = k A + log C_M(k) + ln|S^{M-1}| = k A - ln Ĩ_nu(k)`, which
//! `special::bessel_terms` evaluates without the cancellation of its two large parts.

use super::WDraw;
use crate::dist::rng::{beta, uniform};
use crate::dist::special::{bessel_terms, log_sphere_area, order, positive};
use crate::Real;
use rand_core::Rng;

use super::SampleError;

/// Most proposals of Wood's rejection sampler per draw.
///
/// The acceptance rate is above 0.6 over `M` in `2..=64`, `kappa` in `[1e-3, 1e4]`
/// (lowest, 0.66, for `M = 2` at large `kappa`; `tests/dist_samplers.rs` computes it by
/// quadrature), so 64 proposals all fail with probability below `0.4^64 = 3e-26`; the
/// sampler then returns [`SampleError::RejectionCap`] instead of looping on.
pub const WOOD_MAX_TRIES: u32 = 64;

pub(super) fn log_normalizer<T: Real>(m: usize, k: T) -> T {
    -log_sphere_area::<T>(m) - bessel_terms(order::<T>(m), k).ln_itilde
}

/// `k w + log C_M(k)`, written as `k (w - 1) + (k + log C_M(k))` so that the two large
/// terms (`~ +-k`) cancel analytically: `k + log C = -ln|S| - (ln Ĩ - k)`.
pub(super) fn log_density<T: Real>(m: usize, k: T, w: T) -> T {
    let t = bessel_terms(order::<T>(m), k);
    k * (w - T::of(1.0)) - log_sphere_area::<T>(m) - t.ln_itilde_mx
}

pub(super) fn kl_to_uniform<T: Real>(m: usize, k: T) -> T {
    bessel_terms(order::<T>(m), k).kl
}

/// `dKL/dk = k (1 - A^2) - (M-1) A = k dA/dk` (A satisfies
/// `A' = 1 - A^2 - (M-1) A / k`); `dA/dk` comes without cancellation.
pub(super) fn dkl_dkappa<T: Real>(m: usize, k: T) -> T {
    k * bessel_terms(order::<T>(m), k).da
}

/// Wood's constants for `m1 = M - 1`: `s = sqrt(4k^2 + m1^2)`, `b = m1/(2k + s)`.
fn wood_b<T: Real>(m1: T, k: T) -> (T, T) {
    let s = (T::of(2.0) * k).hypot(m1);
    (s, m1 / (T::of(2.0) * k + s))
}

/// `dw/dk` of Wood's map `w = (1 - (1+b) eps)/(1 - (1-b) eps)` at fixed `eps`:
/// `dw/db = -2 eps (1 - eps) / D^2`, `db/dk = -2 b / s`.
fn wood_dw_dk<T: Real>(b: T, s: T, eps: T, ome: T, dd: T) -> T {
    T::of(4.0) * b * eps * ome / (s * dd * dd)
}

pub(super) fn sample_w<T: Real, R: Rng + ?Sized>(
    m: usize,
    k: T,
    rng: &mut R,
) -> Result<WDraw<T>, SampleError> {
    if m == 3 {
        return Ok(exact_s2(k, rng));
    }
    let one = T::of(1.0);
    let two = T::of(2.0);
    let m1 = T::of((m - 1) as f64);
    let (s, b) = wood_b(m1, k);
    let a = (m1 + two * k + s) / T::of(4.0);
    let d = T::of(4.0) * a * b / (one + b) - m1 * m1.ln();
    let half = m1 / two;
    for _ in 0..WOOD_MAX_TRIES {
        let (eps, ome) = beta(half, half, rng)?;
        let u: T = uniform(rng);
        // D = 1 - (1 - b) eps, written as a sum of positive terms.
        let dd = ome + b * eps;
        let t = two * a * b / dd;
        if m1 * t.ln() - t + d >= u.ln() {
            // 1 - w = 2 b eps / D and 1 + w = 2 (1 - eps) / D, both without cancellation.
            return Ok(WDraw::from_parts(
                two * b * eps / dd,
                two * ome / dd,
                wood_dw_dk(b, s, eps, ome, dd),
            ));
        }
    }
    Err(SampleError::RejectionCap)
}

/// `M = 3`: the exact inverse CDF `w = 1 + ln(u + (1-u) e^{-2k}) / k`, one uniform, no
/// rejection. With `L = ln(u + (1-u) e^{-2k})` and `q = (1-u) e^{-2k} / e^L`,
/// `dw/dk = ((1 - w) - 2 q) / k` at fixed `u`.
///
/// `L` is `ln1p((1-u) expm1(-2k))` for `k <= 1/2` (no cancellation near `L = 0`) and a
/// log-sum-exp of `ln u` and `ln(1-u) - 2k` above (no underflow of `e^{-2k}` mattering).
/// For `kappa` below about `1e-2` the two terms of `dw/dk` cancel and lose about
/// `log10(1/kappa)` digits; the model keeps `kappa >= 1`.
fn exact_s2<T: Real, R: Rng + ?Sized>(k: T, rng: &mut R) -> WDraw<T> {
    let one = T::of(1.0);
    let two = T::of(2.0);
    let u: T = uniform(rng);
    let omu = one - u;
    let l = if k <= T::of(0.5) {
        (omu * (-two * k).exp_m1()).ln_1p()
    } else {
        let (p, q) = (u.ln(), omu.ln() - two * k);
        let (hi, lo) = if p > q { (p, q) } else { (q, p) };
        hi + (lo - hi).exp().ln_1p()
    };
    let omw = -l / k;
    let opw = two + l / k;
    // q = 1 / (1 + u e^{2k} / (1 - u)); the exponential may overflow to +inf (q = 0).
    let q = one / (one + (two * k + u.ln() - omu.ln()).exp());
    WDraw::from_parts(omw, opw, (omw - two * q) / k)
}

/// See [`crate::Posterior::rejection_score`].
pub(super) fn rejection_score<T: Real>(m: usize, k: T, w: T) -> T {
    if m == 3 || !positive(k) {
        return T::of(0.0);
    }
    let one = T::of(1.0);
    let two = T::of(2.0);
    let m = m.max(2);
    let m1 = T::of((m - 1) as f64);
    let (s, b) = wood_b(m1, k);
    let omw = one - w;
    let opw = one + w;
    // Invert Wood's map: eps = (1 - w) / ((1 - w) + b (1 + w)).
    let den = omw + b * opw;
    let eps = omw / den;
    let ome = b * opw / den;
    let dd = ome + b * eps;
    let dw = wood_dw_dk(b, s, eps, ome, dd);
    let a = bessel_terms(order::<T>(m), k).a;
    let m3 = T::of(m as f64 - 3.0);
    // d/dk ln q_w(w(eps, k); k) with q_w ∝ e^{kw} (1-w^2)^{(M-3)/2} / Z(k), d ln Z/dk = A.
    let dlogq = (w - a) + (k - m3 * w / (omw * opw).max(T::EPS)) * dw;
    // d/dk ln|dw/deps|, |dw/deps| = 2b / D^2, db/dk = -2b/s, dD/dk = eps db/dk.
    let djac = -two / s + T::of(4.0) * b * eps / (s * dd);
    dlogq + djac
}
