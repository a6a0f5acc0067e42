//! `ln Gamma`, digamma, trigamma, and their differences `f(a + b) - f(a)`.
//!
//! One generic recipe for all of them: shift the argument up with the recurrence
//! (`Gamma(x + 1) = x Gamma(x)`) until it is at least [`SHIFT`], then use the asymptotic
//! (Stirling) series, whose terms up to `x^-13` are below `1e-15` relative there. The
//! differences are computed as sums of positive (or small) pieces, never as the
//! difference of two large values: the Power Spherical entropy and KL at `kappa = 1e4`
//! need `ln Gamma(alpha + beta) - ln Gamma(alpha)` with `ln Gamma(alpha)` near `8e4`,
//! which `f32` cannot subtract to 1e-4.

use crate::Real;

/// Arguments at or above this use the asymptotic series directly.
const SHIFT: f64 = 10.0;

/// Stirling series for `ln Gamma`: coefficients of `x^-(2n-1)`, `B_2n / (2n (2n-1))`.
const LN_GAMMA_SERIES: [f64; 7] = [
    1.0 / 12.0,
    -1.0 / 360.0,
    1.0 / 1260.0,
    -1.0 / 1680.0,
    1.0 / 1188.0,
    -691.0 / 360_360.0,
    1.0 / 156.0,
];

/// Digamma series: coefficients of `x^-2n`, `B_2n / (2n)` (subtracted).
const DIGAMMA_SERIES: [f64; 7] = [
    1.0 / 12.0,
    -1.0 / 120.0,
    1.0 / 252.0,
    -1.0 / 240.0,
    1.0 / 132.0,
    -691.0 / 32_760.0,
    1.0 / 12.0,
];

/// Trigamma series: coefficients of `x^-(2n+1)`, `B_2n`.
const TRIGAMMA_SERIES: [f64; 7] = [
    1.0 / 6.0,
    -1.0 / 30.0,
    1.0 / 42.0,
    -1.0 / 30.0,
    5.0 / 66.0,
    -691.0 / 2730.0,
    7.0 / 6.0,
];

/// `sum_n c[n] y^n` by Horner, `y` small.
fn poly<T: Real>(c: &[f64], y: T) -> T {
    c.iter()
        .rev()
        .fold(T::of(0.0), |acc, &cn| acc * y + T::of(cn))
}

/// Asymptotic part of `ln Gamma(x)` beyond `(x - 1/2) ln x - x + ln(2 pi)/2`, `x >= SHIFT`.
fn ln_gamma_tail<T: Real>(x: T) -> T {
    let r = T::of(1.0) / x;
    poly(&LN_GAMMA_SERIES, r * r) * r
}

/// Asymptotic part of `psi(x)` beyond `ln x - 1/(2x)`, `x >= SHIFT` (to be subtracted).
fn digamma_tail<T: Real>(x: T) -> T {
    let r = T::of(1.0) / x;
    poly(&DIGAMMA_SERIES, r * r) * r * r
}

/// Asymptotic part of `psi'(x)` beyond `1/x + 1/(2x^2)`, `x >= SHIFT`.
fn trigamma_tail<T: Real>(x: T) -> T {
    let r = T::of(1.0) / x;
    poly(&TRIGAMMA_SERIES, r * r) * r * r * r
}

/// Number of unit shifts that bring `x` to at least [`SHIFT`] (at most 10 for `x > 0`).
fn shifts<T: Real>(x: T) -> usize {
    let mut n = 0;
    let mut y = x;
    while y < T::of(SHIFT) && n < 16 {
        y += T::of(1.0);
        n += 1;
    }
    n
}

/// `ln Gamma(x)` for `x > 0`.
///
/// For `x >= 10` the relative error is a few ulp. Below, the shift leaves an absolute
/// error of a few ulp of `ln Gamma(x + 10)` (about `2e-6` in `f32`, `1e-14` in `f64`),
/// which is what matters near the zeros at `x = 1` and `x = 2` (both returned exactly).
/// Returns `+inf` for `x <= 0` (the pole at 0; negative arguments are not supported) and
/// NaN for NaN.
pub fn ln_gamma<T: Real>(x: T) -> T {
    if is_nan(x) {
        return x;
    }
    if x <= T::of(0.0) {
        return T::MAX + T::MAX;
    }
    // The zeros are exact (the generic path leaves a few ulp of ln Gamma(11) there, which
    // would spoil ln I_0 and ln I_1 at small arguments).
    if x == T::of(1.0) || x == T::of(2.0) {
        return T::of(0.0);
    }
    let n = shifts(x);
    let mut prod = T::of(1.0);
    let mut y = x;
    for _ in 0..n {
        prod *= y;
        y += T::of(1.0);
    }
    let half = T::of(0.5);
    let stirling = (y - half) * y.ln() - y + T::of(0.918_938_533_204_672_7) + ln_gamma_tail(y);
    stirling - prod.ln()
}

/// Digamma `psi(x) = d/dx ln Gamma(x)` for `x > 0`.
///
/// Relative error a few ulp except near the zero at `x = 1.4616...`, where the absolute
/// error is a few ulp of `ln 10`. Returns `-inf` for `x <= 0` and NaN for NaN.
pub fn digamma<T: Real>(x: T) -> T {
    if is_nan(x) {
        return x;
    }
    if x <= T::of(0.0) {
        return -(T::MAX + T::MAX);
    }
    let mut acc = T::of(0.0);
    let mut y = x;
    for _ in 0..shifts(x) {
        acc += T::of(1.0) / y;
        y += T::of(1.0);
    }
    y.ln() - T::of(0.5) / y - digamma_tail(y) - acc
}

/// Trigamma `psi'(x)` for `x > 0` (positive; relative error a few ulp). Returns `+inf`
/// for `x <= 0` and NaN for NaN.
pub fn trigamma<T: Real>(x: T) -> T {
    if is_nan(x) {
        return x;
    }
    if x <= T::of(0.0) {
        return T::MAX + T::MAX;
    }
    let mut acc = T::of(0.0);
    let mut y = x;
    for _ in 0..shifts(x) {
        acc += T::of(1.0) / (y * y);
        y += T::of(1.0);
    }
    let r = T::of(1.0) / y;
    acc + r + T::of(0.5) * r * r + trigamma_tail(y)
}

/// `ln Gamma(a + b) - ln Gamma(a)` for `a, b > 0`, without cancellation between two
/// large values: accurate to a few ulp of the result (and of `b ln a` where the result
/// crosses zero). Returns NaN for non-positive or NaN arguments.
pub fn ln_gamma_ratio<T: Real>(a: T, b: T) -> T {
    if !(positive(a) && positive(b)) {
        return nan();
    }
    // Shifted part: ln Gamma(a+n) = ln Gamma(a) + sum ln(a+i), same for a+b.
    let (shifted, x) = shift_up(a, |x| (b / x).ln_1p());
    let c = x + b;
    // Stirling difference rearranged: (c-1/2)ln c - (x-1/2)ln x - b
    //   = b ln c + (x - 1/2) ln(1 + b/x) - b.
    let half = T::of(0.5);
    let lead = b * c.ln() + (x - half) * (b / x).ln_1p() - b;
    lead + (ln_gamma_tail(c) - ln_gamma_tail(x)) - shifted
}

/// `psi(a + b) - psi(a)` for `a, b > 0` (positive), accurate to a few ulp. Returns NaN for
/// non-positive or NaN arguments.
pub fn digamma_diff<T: Real>(a: T, b: T) -> T {
    if !(positive(a) && positive(b)) {
        return nan();
    }
    // 1/x - 1/(x+b), written without the subtraction.
    let (acc, x) = shift_up(a, |x| (b / (x + b)) / x);
    let c = x + b;
    let half = T::of(0.5);
    acc + (b / x).ln_1p() + half * (b / c) / x + (digamma_tail(x) - digamma_tail(c))
}

/// `psi'(a) - psi'(a + b)` for `a, b > 0` (positive), accurate to a few ulp. Returns NaN
/// for non-positive or NaN arguments.
pub fn trigamma_diff<T: Real>(a: T, b: T) -> T {
    if !(positive(a) && positive(b)) {
        return nan();
    }
    // 1/x^2 - 1/(x+b)^2 = b (2x + b) / (x^2 (x+b)^2), as ratios that cannot overflow.
    let (acc, x) = shift_up(a, |x| {
        let c = x + b;
        (b / c) * ((x + c) / c) / (x * x)
    });
    let c = x + b;
    let half = T::of(0.5);
    let first = (b / c) / x; // 1/x - 1/c
    let second = half * first * ((x + c) / c) / x; // (1/x^2 - 1/c^2) / 2
    acc + first + second + (trigamma_tail(x) - trigamma_tail(c))
}

/// The recurrence's share of a difference at `a`: the sum of `term(x)` over
/// `x = a, a + 1, ...` for the [`shifts`] that bring `a` where the asymptotic series hold,
/// and that shifted `x`.
fn shift_up<T: Real>(a: T, term: impl Fn(T) -> T) -> (T, T) {
    let mut acc = T::of(0.0);
    let mut x = a;
    for _ in 0..shifts(a) {
        acc += term(x);
        x += T::of(1.0);
    }
    (acc, x)
}

/// Quiet NaN of `T`.
pub(crate) fn nan<T: Real>() -> T {
    T::of(f64::NAN)
}

/// True for NaN (the only value that is unordered with itself).
pub(crate) fn is_nan<T: Real>(x: T) -> bool {
    x.partial_cmp(&x).is_none()
}

/// True for `x > 0` (false for NaN), so that argument checks read `!positive(x)`.
pub(crate) fn positive<T: Real>(x: T) -> bool {
    x > T::of(0.0)
}
