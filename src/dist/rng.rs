//! Random variates with bounded work: uniform, normal, Gamma and Beta.
//!
//! Every function is a deterministic function of the generator's state, takes any
//! [`rand_core::Rng`] (rand_core 0.10's infallible generator trait) and never loops
//! without a cap:
//! - [`uniform`] and [`standard_normal`] (Box-Muller) have no loop at all;
//! - [`gamma`] uses Marsaglia-Tsang rejection, capped at [`GAMMA_MAX_TRIES`] proposals.
//!   Each proposal is accepted with probability above 0.95 for every shape (the shape is
//!   boosted to at least 1), so the cap is reached with probability below
//!   `0.05^64 = 5e-84`; if it is, [`VariateError::RejectionCap`] is returned instead of
//!   spinning.
//!
//! `f32` variates use one 32-bit word per uniform, `f64` variates one 64-bit word.

use crate::dist::special::is_nan;
use crate::Real;
use rand_core::Rng;

/// Most Marsaglia-Tsang proposals per Gamma variate.
pub const GAMMA_MAX_TRIES: u32 = 64;

/// Why a variate could not be drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VariateError {
    /// A shape parameter was not a finite positive number.
    #[error("shape parameter must be finite and positive")]
    BadShape,
    /// The rejection loop hit its cap ([`GAMMA_MAX_TRIES`]); probability below `1e-80`.
    #[error("rejection sampler hit its iteration cap")]
    RejectionCap,
}

/// True when `T` carries more than `f32` precision (then 64-bit words are used).
fn is_wide<T: Real>() -> bool {
    T::EPS < T::of(1e-10)
}

/// Uniform on the open interval `(0, 1)`: never exactly 0 or 1, so `ln u` and
/// `ln(1 - u)` are always finite.
///
/// `f32`: `(k + 1/2) 2^-23` with `k` the top 23 bits of a 32-bit word; `f64`:
/// `(k + 1/2) 2^-52` from the top 52 bits of a 64-bit word. Both are exact in their type
/// (one bit fewer than the significand keeps `1 - 2^-24` from rounding up to 1).
pub fn uniform<T: Real, R: Rng + ?Sized>(rng: &mut R) -> T {
    if is_wide::<T>() {
        let k = rng.next_u64() >> 12;
        T::of((k as f64 + 0.5) * (1.0 / (1u64 << 52) as f64))
    } else {
        let k = rng.next_u32() >> 9;
        T::of_f32(narrow_uniform(k))
    }
}

/// Uniform index in `0..n` from one 32-bit word (Lemire's multiply-shift: the bias is
/// below `n / 2^32`); 0 when `n` is 0. Used by the trainers and the host's shuffles.
#[inline]
pub fn uniform_index<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize
}

/// [`uniform_index`] from one 64-bit word (bias below `n / 2^64`), as k-means++ draws
/// its centres.
#[inline]
pub fn uniform_index_u64<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// `(k + 1/2) 2^-23` in `f32` arithmetic, for `k < 2^23`: every step is exact (`k` and
/// `k + 1/2` fit the 24-bit significand, the scaling is a power of two), so it is the
/// same value as in `f64`, without the software double precision a Cortex-M pays.
#[inline]
fn narrow_uniform(k: u32) -> f32 {
    (k as f32 + 0.5) * (1.0 / (1u32 << 23) as f32)
}

/// Two independent standard normal variates (Box-Muller, two uniforms).
pub fn normal_pair<T: Real, R: Rng + ?Sized>(rng: &mut R) -> (T, T) {
    let u1: T = uniform(rng);
    let u2: T = uniform(rng);
    let r = (T::of(-2.0) * u1.ln()).sqrt();
    let (s, c) = (T::two_pi() * u2).sin_cos();
    (r * c, r * s)
}

/// One standard normal variate (Box-Muller; the second value of the pair is dropped, so
/// this costs two uniforms).
pub fn standard_normal<T: Real, R: Rng + ?Sized>(rng: &mut R) -> T {
    normal_pair::<T, R>(rng).0
}

/// Marsaglia-Tsang for `shape >= 1`.
fn gamma_ge1<T: Real, R: Rng + ?Sized>(shape: T, rng: &mut R) -> Result<T, VariateError> {
    let one = T::of(1.0);
    let d = shape - T::of(1.0 / 3.0);
    let c = one / (T::of(9.0) * d).sqrt();
    for _ in 0..GAMMA_MAX_TRIES {
        let x: T = standard_normal(rng);
        let v = one + c * x;
        if v <= T::of(0.0) {
            continue;
        }
        let v = v * v * v;
        let u: T = uniform(rng);
        let x2 = x * x;
        // Squeeze first (no logarithm), then the exact test.
        if u < one - T::of(0.0331) * x2 * x2 || u.ln() < T::of(0.5) * x2 + d * (one - v + v.ln()) {
            return Ok(d * v);
        }
    }
    Err(VariateError::RejectionCap)
}

fn check_shape<T: Real>(shape: T) -> Result<(), VariateError> {
    if is_nan(shape) || !shape.is_finite() || shape <= T::of(0.0) {
        Err(VariateError::BadShape)
    } else {
        Ok(())
    }
}

/// Natural log of a Gamma(`shape`, 1) variate. For `shape < 1` it is drawn as
/// `ln G(shape + 1) + ln(u) / shape`, which stays finite where `G` itself would underflow.
fn ln_gamma_variate<T: Real, R: Rng + ?Sized>(shape: T, rng: &mut R) -> Result<T, VariateError> {
    check_shape(shape)?;
    if shape >= T::of(1.0) {
        Ok(gamma_ge1(shape, rng)?.ln())
    } else {
        let g = gamma_ge1(shape + T::of(1.0), rng)?;
        let u: T = uniform(rng);
        Ok(g.ln() + u.ln() / shape)
    }
}

/// A Gamma(`shape`, 1) variate (mean `shape`), `shape > 0`.
///
/// Marsaglia-Tsang (2000) with at most [`GAMMA_MAX_TRIES`] proposals; `shape < 1` uses
/// `G(shape + 1) * u^(1/shape)`, which underflows to 0 only for shapes below about
/// `0.01` (`f32`).
pub fn gamma<T: Real, R: Rng + ?Sized>(shape: T, rng: &mut R) -> Result<T, VariateError> {
    check_shape(shape)?;
    if shape >= T::of(1.0) {
        gamma_ge1(shape, rng)
    } else {
        let g = gamma_ge1(shape + T::of(1.0), rng)?;
        let u: T = uniform(rng);
        Ok(g * (u.ln() / shape).exp())
    }
}

/// A Beta(`a`, `b`) variate `x` returned as `(x, 1 - x)`, both to full relative precision
/// (`1 - x` is not formed by subtraction, which matters when `x` is close to 1).
///
/// Drawn as `G_a / (G_a + G_b)` from two independent Gamma variates (`G_a` first); with
/// a shape below 1 the ratio is formed from their logarithms so that tiny shapes cannot
/// produce `0/0`.
pub fn beta<T: Real, R: Rng + ?Sized>(a: T, b: T, rng: &mut R) -> Result<(T, T), VariateError> {
    check_shape(a)?;
    check_shape(b)?;
    let one = T::of(1.0);
    if a >= one && b >= one {
        let ga = gamma_ge1(a, rng)?;
        let gb = gamma_ge1(b, rng)?;
        let s = ga + gb;
        Ok((ga / s, gb / s))
    } else {
        let la = ln_gamma_variate(a, rng)?;
        let lb = ln_gamma_variate(b, rng)?;
        // x = 1 / (1 + e^{lb - la}), 1 - x = 1 / (1 + e^{la - lb}).
        Ok((one / (one + (lb - la).exp()), one / (one + (la - lb).exp())))
    }
}

#[cfg(test)]
mod tests {
    use super::narrow_uniform;

    /// The `f32` scaling gives the `f64` route's value for every one of the 2^23 words.
    #[test]
    fn narrow_uniform_is_the_f64_value_for_every_word() {
        for k in 0..(1u32 << 23) {
            let wide = ((k as f64 + 0.5) * (1.0 / (1u32 << 23) as f64)) as f32;
            assert_eq!(narrow_uniform(k).to_bits(), wide.to_bits(), "k = {k}");
        }
        assert!(narrow_uniform(0) > 0.0 && narrow_uniform((1 << 23) - 1) < 1.0);
    }
}
