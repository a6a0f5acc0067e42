//! Power Spherical on `S^{M-1}` (De Cao & Aziz 2020): density `(1 + mu.z)^k / N`,
//! `w = 2T - 1` with `T ~ Beta(alpha, beta)`, `alpha = (M-1)/2 + k`, `beta = (M-1)/2`.
//!
//! `ln N = (alpha + beta) ln 2 + ln Gamma(alpha) - ln Gamma(alpha + beta) + beta ln pi`.
//! Every expression below uses `L(a, b) = ln Gamma(a + b) - ln Gamma(a)` and the digamma
//! and trigamma differences from `special`, which never subtract two large values
//! (`ln Gamma(alpha)` is about `8e4` at `k = 1e4`).

use super::{SampleError, WDraw};
use crate::dist::rng::beta;
use crate::dist::special::{beta_quantile_da, digamma_diff, ln_gamma_ratio, trigamma_diff};
use crate::Real;
use rand_core::Rng;

/// `(M - 1, beta, alpha)` for `M >= 2` (smaller `M` treated as 2).
fn shapes<T: Real>(m: usize, k: T) -> (T, T, T) {
    let m1 = T::of(m.max(2) as f64 - 1.0);
    let b = m1 * T::of(0.5);
    (m1, b, b + k)
}

/// `ln N - k ln 2 = (M-1) ln 2 - L(alpha, beta) + beta ln pi`.
fn ln_n_minus_k_ln2<T: Real>(m1: T, b: T, a: T) -> T {
    m1 * T::ln_2() - ln_gamma_ratio(a, b) + b * T::pi().ln()
}

pub(super) fn log_normalizer<T: Real>(m: usize, k: T) -> T {
    let (m1, b, a) = shapes(m, k);
    -(k * T::ln_2() + ln_n_minus_k_ln2(m1, b, a))
}

/// `k ln(1 + w) - ln N = k ln((1 + w)/2) - (ln N - k ln 2)`.
pub(super) fn log_density<T: Real>(m: usize, k: T, w: T) -> T {
    let (m1, b, a) = shapes(m, k);
    let lw = ((w - T::of(1.0)) * T::of(0.5)).ln_1p();
    // k = 0 gives the uniform law even at w = -1 (0 * -inf would be NaN).
    let kl = if k > T::of(0.0) { k * lw } else { T::of(0.0) };
    kl - ln_n_minus_k_ln2(m1, b, a)
}

/// `H = ln N - k (ln 2 + psi(alpha) - psi(alpha + beta))
///    = (ln N - k ln 2) + k (psi(alpha + beta) - psi(alpha))`.
pub(super) fn entropy<T: Real>(m: usize, k: T) -> T {
    let (m1, b, a) = shapes(m, k);
    let dig = if k > T::of(0.0) {
        k * digamma_diff(a, b)
    } else {
        T::of(0.0)
    };
    ln_n_minus_k_ln2(m1, b, a) + dig
}

/// Gauss-Legendre nodes and weights on `[-1, 1]` (10 points, positive half).
const GL_X: [f64; 5] = [
    0.14887433898163122,
    0.4333953941292472,
    0.6794095682990244,
    0.8650633666889845,
    0.9739065285171717,
];
const GL_W: [f64; 5] = [
    0.2955242247147528,
    0.2692667193099965,
    0.219086362515982,
    0.1494513491505804,
    0.06667134430868814,
];

/// Below `max(KL_SMALL, beta)` the KL is integrated from its derivative instead.
const KL_SMALL: f64 = 0.5;

/// `KL(PS || U) = ln|S^{M-1}| - H`.
///
/// The entropy of the uniform law is `H(0)`, and by Legendre's duplication formula the
/// constants cancel: `KL = L(alpha, beta) - L(beta, beta) - k (psi(alpha + beta) - psi(alpha))`
/// (no large cancellation for large `k`). For small `k` the terms (each about
/// `beta ln(2 beta)`) cancel down to `KL ~ k^2 / (4 beta)`, so for `k < max(1/2, beta)`
/// `KL = int_0^k s g(s) ds` with `g(s) = psi'(beta + s) - psi'(2 beta + s)` (the
/// derivative below), by 10-point Gauss-Legendre: `g`'s nearest pole is at
/// `s = -beta <= -k` (and `-1/2 <= -k` for the smallest beta), at least twice the half
/// length of the interval away from its centre, which bounds the quadrature error by
/// about `(3 + sqrt 8)^-20 = 5e-16` relative.
pub(super) fn kl_to_uniform<T: Real>(m: usize, k: T) -> T {
    let (_, b, a) = shapes(m, k);
    if k < b.max(T::of(KL_SMALL)) {
        // k^2 int_0^1 t g(k t) dt, nodes mapped from [-1, 1] to [0, 1].
        let half = T::of(0.5);
        let mut acc = T::of(0.0);
        for (&x, &wt) in GL_X.iter().zip(GL_W.iter()) {
            for t in [
                half * (T::of(1.0) - T::of(x)),
                half * (T::of(1.0) + T::of(x)),
            ] {
                acc += T::of(wt) * t * trigamma_diff(b + k * t, b);
            }
        }
        k * k * half * acc
    } else {
        ln_gamma_ratio(a, b) - ln_gamma_ratio(b, b) - k * digamma_diff(a, b)
    }
}

/// `dKL/dk = k (psi'(alpha) - psi'(alpha + beta))`.
pub(super) fn dkl_dkappa<T: Real>(m: usize, k: T) -> T {
    let (_, b, a) = shapes(m, k);
    if k > T::of(0.0) {
        k * trigamma_diff(a, b)
    } else {
        T::of(0.0)
    }
}

/// `w = 2T - 1`, `T ~ Beta(alpha, beta)` (two Gamma variates), and
/// `dw/dk = 2 dT/dalpha` by implicit reparameterisation at fixed `F(T)`.
pub(super) fn sample_w<T: Real, R: Rng + ?Sized>(
    m: usize,
    k: T,
    rng: &mut R,
) -> Result<WDraw<T>, SampleError> {
    let (_, b, a) = shapes(m, k);
    let (t, omt) = beta(a, b, rng)?;
    let dt = beta_quantile_da(a, b, t, omt).ok_or(SampleError::NoConvergence)?;
    let two = T::of(2.0);
    Ok(WDraw::from_parts(two * omt, two * t, two * dt))
}
