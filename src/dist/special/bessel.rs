//! Modified Bessel functions of the first kind, as the von Mises-Fisher family needs them.
//!
//! Everything is computed from one of two representations, chosen by `x`:
//!
//! - `x < SERIES_MAX`: the power series of the normalised function
//!   `Ĩ_nu(x) = Gamma(nu + 1) (2/x)^nu I_nu(x) = sum_j y^j / (j! (nu+1)_j)`, `y = x^2/4`.
//!   All terms are positive, so the sum is accurate to a few ulp; at most about 45 terms
//!   (`nu = 0`, `x = 30`, `f64`) and never overflows `f32` (`Ĩ <= e^30`).
//! - `x >= SERIES_MAX`: the uniform (Debye) expansion in `p = sqrt(nu^2 + x^2) >= 30`,
//!   with 12 correction terms in `f64` (error below `1e-14` in `ln I`, `4e-14` in
//!   `1 - A`, `6e-13` in `dA/dx`) and 6 in `f32` (below `1e-10`).
//!
//! From these come `ln I_nu`, the ratio `A = I_{nu+1}/I_nu`, `1 - A`, `dA/dx` and the vMF
//! KL term `x A - ln Ĩ`, each in a form without catastrophic cancellation:
//! - `dA/dx = 1 - A^2 - (2 nu + 1) A / x` cancels badly (it is `~ (nu + 1/2)/x^2` from
//!   terms of size 1). In the series region it is a ratio of positive series: the
//!   numerator `I_nu I_{nu+2} - I_{nu+1}^2 + I_nu I_{nu+1}/x` has the product series
//!   `sum_k C_k (2 nu + 1)/(2k + 2) (x/2)^{2 nu + 2 + 2k}` (all terms positive); in the
//!   Debye region it is the second derivative of the expansion.
//! - `1 - A` (`~ (nu + 1/2)/x`) comes from the derivative of the Debye expansion,
//!   `A = x/(p + nu) - x/(2 p^2) + (ln S)'`, so that `1 - A` is a sum of positive terms.

use super::debye::V;
use super::gamma::ln_gamma;
use crate::Real;

/// Below this `x` the power series is used, above it the Debye expansion.
const SERIES_MAX: f64 = 30.0;

/// Most series terms (the series needs at most about 45 at `x < 30` in `f64`).
const SERIES_CAP: usize = 96;

/// Everything the vMF family needs from `I_nu(x)` at one point.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BesselTerms<T> {
    /// `ln I_nu(x)`.
    pub ln_i: T,
    /// `ln Ĩ_nu(x) = ln I_nu(x) - nu ln(x/2) + ln Gamma(nu + 1)` (`>= 0`).
    pub ln_itilde: T,
    /// `ln Ĩ_nu(x) - x`, without the cancellation of the two (`ln Ĩ ~ x` for large `x`).
    pub ln_itilde_mx: T,
    /// `A = I_{nu+1}(x) / I_nu(x)`.
    pub a: T,
    /// `dA/dx`.
    pub da: T,
    /// `x A - ln Ĩ_nu(x)` (the vMF KL to the uniform law, for `nu = M/2 - 1`).
    pub kl: T,
}

/// All [`BesselTerms`] at order `nu >= 0` and `x >= 0` (callers clamp).
pub(crate) fn bessel_terms<T: Real>(nu: T, x: T) -> BesselTerms<T> {
    if x < T::of(SERIES_MAX) {
        series(nu, x)
    } else {
        debye(nu, x)
    }
}

fn series<T: Real>(nu: T, x: T) -> BesselTerms<T> {
    let one = T::of(1.0);
    let two = T::of(2.0);
    let b = nu + one;
    let y = x * x / T::of(4.0);
    // s0 = Ĩ_nu - 1, s1 = Ĩ_{nu+1}, num = numerator of dA/dx (see the module docs),
    // normalised by (x/2)^{2 nu} / Gamma(nu+1)^2.
    let mut t0 = one;
    let mut s0 = T::of(0.0);
    let mut t1 = one;
    let mut s1 = one;
    let mut e = (two * nu + one) / (two * b * b * (nu + two)) * y;
    let mut num = one / (two * b) + e;
    for j in 1..SERIES_CAP {
        let jf = T::of(j as f64);
        t0 *= y / (jf * (b + jf - one));
        s0 += t0;
        t1 *= y / (jf * (b + jf));
        s1 += t1;
        // e_k -> e_{k+1} with k = j - 1.
        let k = jf - one;
        e *= y * (two * nu + T::of(3.0) + two * k) * (two * nu + T::of(4.0) + two * k)
            / ((k + two) * (nu + k + two) * (nu + k + T::of(3.0)) * (two * nu + k + T::of(3.0)));
        num += e;
        // Terms only shrink once past their peak (j > y / b roughly); stop when all
        // three are negligible.
        if t0 <= T::EPS * s0 && t1 <= T::EPS * s1 && e <= T::EPS * num {
            break;
        }
    }
    let itilde = one + s0;
    let ln_itilde = s0.ln_1p();
    let a = x / (two * b) * s1 / itilde;
    let ln_i = if x > T::of(0.0) {
        nu_ln(nu, x / two) - ln_gamma(b) + ln_itilde
    } else if nu > T::of(0.0) {
        -(T::MAX + T::MAX)
    } else {
        T::of(0.0)
    };
    BesselTerms {
        ln_i,
        ln_itilde,
        ln_itilde_mx: ln_itilde - x,
        a,
        da: num / itilde / itilde,
        kl: x * a - ln_itilde,
    }
}

/// `nu ln(v)`, exactly 0 when `nu = 0` (even if `ln v` is infinite).
fn nu_ln<T: Real>(nu: T, v: T) -> T {
    if nu == T::of(0.0) {
        T::of(0.0)
    } else {
        nu * v.ln()
    }
}

/// Value, first and second derivative of `sum_j c[j] s^j`.
fn poly3<T: Real>(c: &[f64], s: T) -> (T, T, T) {
    let zero = T::of(0.0);
    c.iter()
        .rev()
        .fold((zero, zero, zero), |(p, dp, d2p), &cj| {
            (p * s + T::of(cj), dp * s + p, d2p * s + T::of(2.0) * dp)
        })
}

fn debye<T: Real>(nu: T, x: T) -> BesselTerms<T> {
    let one = T::of(1.0);
    let two = T::of(2.0);
    let half = T::of(0.5);
    let p = x.hypot(nu);
    let s = (nu / p) * (nu / p);
    // f32 needs 6 terms for 1e-10 at p >= 30; f64 needs all 12.
    let terms = if T::EPS > T::of(1e-10) { 6 } else { V.len() };
    // S - 1, S' and S'' with respect to x, S = 1 + sum_k v_k(s) / p^k.
    let (mut sm1, mut ds, mut d2s) = (T::of(0.0), T::of(0.0), T::of(0.0));
    let rp = one / p;
    let mut rpk = one; // p^-k
    for (i, c) in V.iter().take(terms).enumerate() {
        let k = T::of((i + 1) as f64);
        rpk *= rp;
        let (v, dv, d2v) = poly3(c, s);
        // With t = nu/p: d/dx [v(s) p^-k] = -x w(s) p^-(k+2), w = t v'(t) + k v
        // = 2 s v'(s) + k v, and t w'(t) = 2 s w'(s).
        let w = two * s * dv + k * v;
        let dw = two * dv + two * s * d2v + k * dv;
        let tw = two * s * dw;
        let r2 = rpk * rp * rp;
        sm1 += v * rpk;
        ds -= x * w * r2;
        d2s += -w * r2 + (x * rp) * (x * rp) * r2 * (tw + (k + two) * w);
    }
    let sum = one + sm1;
    let dl = ds / sum;
    let d2l = d2s / sum - dl * dl;
    let ln_s = sm1.ln_1p();
    let pn = p + nu;
    let a = x / pn - x * half * rp * rp + dl;
    // 1 - x/(p + nu) = (nu + nu^2/(p + x)) / (p + nu): all terms positive.
    let one_minus_a = (nu + nu * nu / (p + x)) / pn + x * half * rp * rp - dl;
    let da = nu * rp / pn + half * ((x - nu) * rp) * ((x + nu) * rp) * rp * rp + d2l;
    let half_ln_2pi_p = half * (T::two_pi() * p).ln();
    let ln_gamma_b = ln_gamma(nu + one);
    let nu_ln_half_pn = nu_ln(nu, pn * half);
    let ln_i = p + nu_ln(nu, x / pn) - half_ln_2pi_p + ln_s;
    let ln_itilde_mx = nu * nu / (p + x) - nu_ln_half_pn - half_ln_2pi_p + ln_s + ln_gamma_b;
    let ln_itilde = x + ln_itilde_mx;
    // x A - ln Ĩ with x - p = -nu^2/(x + p) taken out analytically.
    let kl =
        -nu * nu / (x + p) - x * one_minus_a + nu_ln_half_pn + half_ln_2pi_p - ln_s - ln_gamma_b;
    BesselTerms {
        ln_i,
        ln_itilde,
        ln_itilde_mx,
        a,
        da,
        kl,
    }
}
