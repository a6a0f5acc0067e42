//! The regularised incomplete beta function and its derivative in the first shape, for
//! the Power Spherical sampler's implicit reparameterisation.
//!
//! Both go through the continued fraction (DLMF 8.17.22)
//! `I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 1/(1 + d_1/(1 + d_2/(1 + ...)))`,
//! evaluated by the modified Lentz method, either directly or for
//! `I_x(a, b) = 1 - I_{1-x}(b, a)`. The derivative is carried through the same
//! recurrence in forward mode (a dual number per quantity), so it costs about twice the
//! value and stops under the same test.
//!
//! Which fraction: the textbook rule (direct when `x < (a+1)/(a+b+2)`) is right for
//! convergence when `a ~ b`, but when `a >> b` (the Power Spherical case at large
//! `kappa`, with `x` close to 1) the direct fraction both converges slowly near that
//! boundary and cancels: its odd terms are `~ -x`, so partial denominators `1 - x(...)`
//! of size `1/a` are formed from terms of size 1 and `f32` loses `log10(a/b)` digits.
//! The switch is therefore moved towards the direct side by
//! `1.5 sqrt(min(a, b) + 1) (a - b)/(a + b)` (in units of `x (a+b+2) - (a+1)`), found by
//! sweeping both fractions' `dX/da` in `f32` against `f64` over `b` in `0.5..=31.5`,
//! `a - b` in `1..=1e4` and quantiles `1e-4..1 - 1e-4`: the constant 1.5 minimises the
//! worst `f32` error (2e-4, against 1e-4 for an oracle choosing per point, 5e-4 for the
//! textbook rule and 3e-3 for the constant 2). Near the switch neither fraction is
//! perfectly conditioned when `a >> b`; `tests/dist_special.rs` measures the `f32` error of
//! [`beta_quantile_da`] on Beta draws at 3e-4 worst and 2e-5 at the 99th percentile. The
//! `f64` work stays within 64 terms (unit test below).
//!
//! Convergence is declared when two consecutive Lentz factors are within `2 eps` of 1
//! (for `a >> b` the even terms are `O(1/a^2)` and a single small factor proves
//! nothing); the value and derivative are then evaluated backward (see `cf`). Work is
//! bounded by [`CF_CAP`] forward terms and `2 CF_CAP + 8` backward ones.

use super::gamma::{digamma_diff, ln_gamma, ln_gamma_ratio, nan, positive};
use crate::Real;

/// Most continued-fraction terms before giving up: twice the bound the unit test below
/// checks for every Power Spherical shape.
pub const CF_CAP: usize = 128;

/// A value and its derivative with respect to one parameter.
#[derive(Clone, Copy, Debug)]
struct Dual<T> {
    v: T,
    d: T,
}

impl<T: Real> Dual<T> {
    fn new(v: T, d: T) -> Self {
        Dual { v, d }
    }
    fn add_one(self) -> Self {
        Dual::new(self.v + T::of(1.0), self.d)
    }
    fn mul(self, o: Self) -> Self {
        Dual::new(self.v * o.v, self.d * o.v + self.v * o.d)
    }
    fn recip(self) -> Self {
        let r = T::of(1.0) / self.v;
        Dual::new(r, -self.d * r * r)
    }
}

/// Which shape parameter the derivative is taken with respect to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wrt {
    First,
    Second,
}

/// Term `m` of the fraction, `d_m`, with its derivative with respect to `a` or `b`.
fn term<T: Real>(m: usize, a: T, b: T, x: T, wrt: Wrt) -> Dual<T> {
    let one = T::of(1.0);
    let two = T::of(2.0);
    let four = T::of(4.0);
    let k = T::of((m / 2) as f64);
    let (num, dnum, den, dden) = if m % 2 == 1 {
        let num = -(a + k) * (a + b + k) * x;
        let den = (a + two * k) * (a + two * k + one);
        match wrt {
            Wrt::First => (
                num,
                -x * (two * a + b + two * k),
                den,
                two * a + four * k + one,
            ),
            Wrt::Second => (num, -(a + k) * x, den, T::of(0.0)),
        }
    } else {
        let num = k * (b - k) * x;
        let den = (a + two * k - one) * (a + two * k);
        match wrt {
            Wrt::First => (num, T::of(0.0), den, two * a + four * k - one),
            Wrt::Second => (num, k * x, den, T::of(0.0)),
        }
    };
    Dual::new(num / den, (dnum * den - num * dden) / (den * den))
}

/// A denominator of exactly zero is replaced by this (Lentz's device; it does not occur
/// for the shapes used here, but nothing may divide by zero).
fn guard<T: Real>(v: T) -> T {
    let tiny = T::of(1e-30);
    if v.abs() < tiny {
        tiny
    } else {
        v
    }
}

/// Number of terms after which the fraction has converged (forward modified Lentz on the
/// value alone), or `None` past [`CF_CAP`].
fn terms_needed<T: Real>(a: T, b: T, x: T) -> Option<usize> {
    let one = T::of(1.0);
    let tol = T::of(2.0) * T::EPS;
    let (mut c, mut dd) = (one, T::of(0.0));
    let mut settled = false;
    for m in 1..=CF_CAP {
        let d = term(m, a, b, x, Wrt::First).v;
        dd = one / guard(one + d * dd);
        c = guard(one + d / c);
        let small = (c * dd - one).abs() <= tol;
        if small && settled {
            return Some(m);
        }
        settled = small;
    }
    None
}

/// The continued fraction `K(a, b, x) = 1/(1 + d_1/(1 + ...))` and its derivative with
/// respect to `a` or `b`, or `None` when it has not converged within [`CF_CAP`] terms.
///
/// A forward Lentz pass on the value finds how many terms are needed (`n`); the value
/// and derivative are then evaluated backward from term `2n + 8` (the margin covers a
/// slowly converging tail that the forward test may have cut short). Backward evaluation
/// matters for the derivative: carried forward through Lentz's two running products, it
/// is the small difference of two large, opposite contributions at every step, and in
/// `f32` that noise reached 2.6e-2 relative; backward, each step contracts the error.
fn cf<T: Real>(a: T, b: T, x: T, wrt: Wrt) -> Option<Dual<T>> {
    let n = 2 * terms_needed(a, b, x)? + 8;
    let mut t = Dual::new(T::of(1.0), T::of(0.0));
    for m in (1..=n).rev() {
        t.v = guard(t.v);
        t = term(m, a, b, x, wrt).mul(t.recip()).add_one();
    }
    t.v = guard(t.v);
    Some(t.recip())
}

/// True when the direct fraction is the better one at `(a, b, x)` (see the module notes).
fn use_direct<T: Real>(a: T, b: T, x: T) -> bool {
    let one = T::of(1.0);
    let delta = x * (a + b + T::of(2.0)) - (a + one);
    let theta = -T::of(1.5) * (a.min(b) + one).sqrt() * (a - b) / (a + b);
    delta < theta
}

/// `ln(x^a (1-x)^b / (a B(a, b)))`, the continued fraction's prefactor, with `omx = 1-x`.
fn ln_front<T: Real>(a: T, b: T, x: T, omx: T) -> T {
    let (s, l) = if a < b { (a, b) } else { (b, a) };
    // ln B(a, b) = ln Gamma(s) - (ln Gamma(l + s) - ln Gamma(l)), no large cancellation.
    let ln_beta = ln_gamma(s) - ln_gamma_ratio(l, s);
    a * x.ln() + b * omx.ln() - a.ln() - ln_beta
}

/// Regularised incomplete beta function `I_x(a, b)` (the Beta(a, b) CDF at `x`) for
/// `a, b > 0`. `x` is clamped to `[0, 1]`; NaN or non-positive shapes give NaN, and so
/// does the (never observed) failure of the continued fraction to converge within
/// [`CF_CAP`] terms.
pub fn beta_inc<T: Real>(a: T, b: T, x: T) -> T {
    if !(positive(a) && positive(b) && x.is_finite()) {
        return nan();
    }
    let one = T::of(1.0);
    if x <= T::of(0.0) {
        return T::of(0.0);
    }
    if x >= one {
        return one;
    }
    let omx = one - x;
    if use_direct(a, b, x) {
        match cf(a, b, x, Wrt::First) {
            Some(k) => ln_front(a, b, x, omx).exp() * k.v,
            None => nan(),
        }
    } else {
        match cf(b, a, omx, Wrt::First) {
            Some(k) => one - ln_front(b, a, omx, x).exp() * k.v,
            None => nan(),
        }
    }
}

/// `dX/da` at fixed `F = I_X(a, b)`: the implicit reparameterisation gradient
/// `-(dI_x/da) / f(x)` of a Beta(a, b) draw `X` (`f` the Beta density), i.e. the
/// derivative of the quantile function in its first shape at fixed probability.
/// `omx = 1 - x` is passed separately because a sampler knows it more accurately than
/// `1 - x` can be formed when `x` is close to 1. `None` when the continued fraction did
/// not converge within [`CF_CAP`] terms (never observed; see the module notes), or for
/// arguments outside `a, b > 0`, `0 < x < 1`.
///
/// Dividing `dI/da` by the density analytically leaves
/// `-x(1-x)/a [K (ln x + psi(a+b) - psi(a) - 1/a) + dK/da]` (direct fraction) or
/// `x(1-x)/b [K' (ln x + psi(a+b) - psi(a)) + dK'/da]` (fraction of `I_{1-x}(b, a)`),
/// so neither the density nor `B(a, b)` is ever formed: nothing overflows.
pub fn beta_quantile_da<T: Real>(a: T, b: T, x: T, omx: T) -> Option<T> {
    let one = T::of(1.0);
    if !(positive(a) && positive(b) && positive(x) && positive(omx)) {
        return None;
    }
    let ln_x = if x > T::of(0.5) {
        (-omx).ln_1p()
    } else {
        x.ln()
    };
    let ell = ln_x + digamma_diff(a, b);
    if use_direct(a, b, x) {
        let k = cf(a, b, x, Wrt::First)?;
        Some(-x * omx / a * (k.v * (ell - one / a) + k.d))
    } else {
        let k = cf(b, a, omx, Wrt::Second)?;
        Some(x * omx / b * (k.v * ell + k.d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    /// Calls `f(a, b, x, 1 - x)` at every Power Spherical shape (`b = (M-1)/2`, M in
    /// 2..=64; `a - b` log-spaced over [1e-3, 1e4], 29 values) and 20 Beta(a, b) draws
    /// each (the points the sampler meets), drawn with `seed`.
    fn power_spherical_draws(seed: u64, mut f: impl FnMut(f64, f64, f64, f64)) {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        for m in 2..=64 {
            let b = (m as f64 - 1.0) / 2.0;
            for i in 0..29 {
                let a = b + 10f64.powf(-3.0 + 7.0 * i as f64 / 28.0);
                for _ in 0..20 {
                    let (x, omx) = crate::dist::rng::beta(a, b, &mut rng).unwrap();
                    f(a, b, x, omx);
                }
            }
        }
    }

    /// The forward pass needs at most 64 terms in `f64` over every Power Spherical shape
    /// ([`power_spherical_draws`]), so [`CF_CAP`] = 128 leaves a factor of 2.
    #[test]
    fn forward_terms_stay_well_below_the_cap() {
        let mut most = 0;
        power_spherical_draws(2, |a, b, x, omx| {
            let n = if use_direct(a, b, x) {
                terms_needed(a, b, x)
            } else {
                terms_needed(b, a, omx)
            };
            most = most.max(n.expect("no convergence"));
        });
        assert!(most <= 64, "{most} terms");
    }

    /// The Power Spherical gradient kernel `dX/da` at fixed probability, `f32` against
    /// `f64` at the same (rounded) inputs, at every point of [`power_spherical_draws`].
    /// The continued fraction must converge everywhere (`None` would be a failure) in
    /// both precisions.
    ///
    /// Tolerance: `f32` relative error at most 1e-3 everywhere and 1e-4 for 99% of the
    /// points. Where `a >> b` the draw sits near `x = 1` and each continued fraction
    /// cancels in the far left tail of `x` (see the notes above), which is where the
    /// worst points are; a gradient that is 1e-3 off on one draw in a hundred is far
    /// below the Monte Carlo noise of the estimator itself.
    #[test]
    fn beta_quantile_gradient_f32_against_f64() {
        let mut errs = Vec::new();
        let mut worst = (0.0f64, String::new());
        power_spherical_draws(4, |a, b, x, omx| {
            let (a32, b32, x32, o32) = (a as f32, b as f32, x as f32, omx as f32);
            let want = beta_quantile_da(a32 as f64, b32 as f64, x32 as f64, o32 as f64)
                .expect("f64 continued fraction did not converge");
            let got = beta_quantile_da(a32, b32, x32, o32)
                .expect("f32 continued fraction did not converge") as f64;
            let e = (got - want).abs() / want.abs();
            errs.push(e);
            if e > worst.0 {
                worst = (e, format!("a={a} b={b} x={x} 1-x={omx}"));
            }
        });
        errs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p99 = errs[errs.len() * 99 / 100];
        eprintln!(
            "beta_quantile_da f32: median {:.1e}, 99th percentile {p99:.1e}, worst {:.1e} at {}",
            errs[errs.len() / 2],
            worst.0,
            worst.1
        );
        assert!(worst.0 <= 1e-3, "worst {worst:?}");
        assert!(p99 <= 1e-4);
    }
}
