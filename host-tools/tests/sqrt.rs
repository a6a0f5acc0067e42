//! `Real::sqrt_rounded` is the standard library's square root where the core's `std`
//! feature is on (the host tool's build) and libm's elsewhere (the device's). Both are
//! correctly rounded, so the three must agree bit for bit: `sqrt_rounded`, libm's and
//! the standard library's, checked here over a sweep of every `f32` and `f64` class
//! (zeros, subnormals, normals, the largest values, infinities, NaN), whichever source
//! this build's `sqrt_rounded` has.

use hvae::Real;

/// libm's, through nalgebra (`libm-force`), the device's square root.
fn libm_sqrt<T: Real>(x: T) -> T {
    nalgebra::ComplexField::sqrt(x)
}

/// The same bits, or both NaN (of whatever payload).
macro_rules! same {
    ($a:expr, $b:expr) => {
        $a.to_bits() == $b.to_bits() || ($a.is_nan() && $b.is_nan())
    };
}

#[test]
fn f32_square_root_is_libms_and_stds_bit_for_bit() {
    // Every 257th bit pattern: all exponents, both signs, many mantissas.
    for bits in (0..=u32::MAX)
        .step_by(257)
        .chain([0, 0x8000_0000, 1, 0x7F7F_FFFF])
    {
        let x = f32::from_bits(bits);
        let (ours, libm, std) = (x.sqrt_rounded(), libm_sqrt(x), x.sqrt());
        assert!(
            same!(ours, libm) && same!(ours, std),
            "{x:e} ({bits:#010x}): {ours:e} against libm's {libm:e}, std's {std:e}"
        );
    }
}

#[test]
fn f64_square_root_is_libms_and_stds_bit_for_bit() {
    let step = u64::MAX / 1_000_003;
    for i in 0..1_000_003u64 {
        let bits = i.wrapping_mul(step) ^ (i >> 3);
        let x = f64::from_bits(bits);
        let (ours, libm, std) = (x.sqrt_rounded(), libm_sqrt(x), x.sqrt());
        assert!(
            same!(ours, libm) && same!(ours, std),
            "{x:e} ({bits:#018x}): {ours:e} against libm's {libm:e}, std's {std:e}"
        );
    }
}
