//! The scalar type every kernel is generic over.
//!
//! The device runs `f32`; host tests also run `f64` so that finite-difference gradient
//! checks are not drowned in rounding noise. Everything else (exp, ln, sqrt, tanh, ...)
//! comes from nalgebra's [`RealField`], which always uses `libm` (feature `libm-force`),
//! on the host too: the host computes the same bits as the device.

use nalgebra::RealField;

/// A floating-point scalar: `f32` on the device, `f32` or `f64` on the host.
pub trait Real: RealField + Copy + Default + core::fmt::Debug + 'static {
    /// Converts from `f64` (constants, golden values), rounding to nearest.
    fn of(x: f64) -> Self;
    /// Converts from `f32` (the blob's storage format).
    fn of_f32(x: f32) -> Self;
    /// Widens to `f64`.
    fn to_f64(self) -> f64;
    /// Narrows to `f32` (the blob's storage format), rounding to nearest.
    fn to_f32(self) -> f32;
    /// Machine epsilon of the type.
    const EPS: Self;
    /// Largest finite value of the type.
    const MAX: Self;
    /// `e^x` for the inference path (softmax, the segmenter's concentration): `f32` uses
    /// [`exp_f32`] (within 1 ulp, and cheaper than libm's on a Cortex-M4F),
    /// `f64` libm's `exp`.
    fn fast_exp(self) -> Self;
    /// The square root, correctly rounded as IEEE 754 requires of every implementation:
    /// the standard library's where the `std` feature is on (the compiler may then run
    /// it over several values at once), libm's elsewhere; the same bits either way.
    fn sqrt_rounded(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn of_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    const EPS: Self = f32::EPSILON;
    const MAX: Self = f32::MAX;
    #[inline(always)]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn sqrt_rounded(self) -> Self {
        rounded::sqrt32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn of_f32(x: f32) -> Self {
        x as f64
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    const EPS: Self = f64::EPSILON;
    const MAX: Self = f64::MAX;
    #[inline(always)]
    fn fast_exp(self) -> Self {
        libm::exp(self)
    }
    #[inline(always)]
    fn sqrt_rounded(self) -> Self {
        rounded::sqrt64(self)
    }
}

/// `e^x` in single precision, within 1 ulp of the exact value for `x` in
/// `[-87.33, 88.72]` (checked against `f64` in the tests); `+inf` above, `0` below
/// (the subnormal results `e^-87.34 .. e^-103.9` are flushed to zero), NaN for NaN.
///
/// Why not libm's `expf`: within half an ulp, but a long call on a Cortex-M4F, and a
/// segment call needs one per cluster and one for the segmenter's concentration, a
/// visible share of the whole call (the counts are in docs/device.md). This is Cephes'
/// `expf`, inlined: `x = k ln 2 + r` with `|r| <= ln 2 / 2` (Cody-Waite, `k ln 2` in
/// two parts so `r` is exact), a degree-5 minimax polynomial for
/// `(e^r - 1 - r) / r²`, and `2^k` built in the exponent bits; no table, no call.
/// `e^0 = 1` exactly, so the softmax's largest term is 1. Pure `f32` arithmetic: the
/// host computes the same bits as the device.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Above, e^x overflows (`x + inf` is `inf`, and NaN for NaN).
    if x.is_nan() || x >= 88.722_83 {
        return x + f32::INFINITY;
    }
    // Below, e^x is not a normal number (`ln(2^-126)`).
    if x < -87.336_54 {
        return 0.0;
    }
    // k = round(x / ln 2): adding 1.5 * 2^23 rounds to an integer, which then sits in the
    // low mantissa bits (k in [-126, 128]).
    const SHIFT: f32 = 12_582_912.0;
    let t = x * core::f32::consts::LOG2_E + SHIFT;
    let k = t - SHIFT;
    // ln 2 = C1 + C2 with C1 = 355/512: k C1 is exact, and so is x - k C1.
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    let ki = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    if ki > 127 {
        // 2^128 is not a float: scale by 2^127 and 2.
        return y * 2.0 * f32::from_bits(254 << 23);
    }
    y * f32::from_bits(((ki + 127) as u32) << 23)
}

/// [`Real::sqrt_rounded`]'s two sources: correctly rounded either way, so the same bits.
#[cfg(feature = "std")]
mod rounded {
    pub(super) fn sqrt32(x: f32) -> f32 {
        x.sqrt()
    }
    pub(super) fn sqrt64(x: f64) -> f64 {
        x.sqrt()
    }
}
#[cfg(not(feature = "std"))]
mod rounded {
    pub(super) use libm::{sqrt as sqrt64, sqrtf as sqrt32};
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    /// Distance in units in the last place between an `f32` and the exact value.
    fn ulps(got: f32, exact: f64) -> f64 {
        let e = exact as f32;
        let ulp = (f32::from_bits(e.to_bits() + 1) - e) as f64;
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn exp_f32_is_within_one_ulp_on_a_fine_sweep() {
        // Every 61st float in the finite-result range (about 36 million values).
        let (lo, hi) = (-87.336_54f32, 88.722_83f32);
        let mut worst: f64 = 0.0;
        let mut n = 0;
        for bits in (0..u32::MAX).step_by(61) {
            let x = f32::from_bits(bits);
            if !(x >= lo && x < hi) {
                continue;
            }
            let u = ulps(exp_f32(x), (x as f64).exp());
            worst = worst.max(u);
            n += 1;
        }
        assert!(n > 10_000_000, "{n}");
        eprintln!("exp_f32: worst error {worst:.3} ulp over {n} values");
        assert!(worst <= 1.0, "worst error {worst} ulp");
    }

    #[test]
    fn exp_f32_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(1.0), core::f32::consts::E);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        // The top of the range goes through the k = 128 branch.
        let x = 88.7f32;
        assert!(ulps(exp_f32(x), (x as f64).exp()) <= 1.0);
        assert!(exp_f32(x).is_finite());
        // The ends of the range: the lowest input still gives a normal number (k = -126
        // in the exponent bits), the highest below the overflow bound is finite.
        for x in [
            -87.336_54f32,
            -87.33,
            f32::from_bits(88.722_83f32.to_bits() - 1),
        ] {
            let y = exp_f32(x);
            assert!(y >= f32::MIN_POSITIVE && y.is_finite(), "{x}: {y}");
            assert!(ulps(y, (x as f64).exp()) <= 1.0, "{x}");
        }
    }
}
