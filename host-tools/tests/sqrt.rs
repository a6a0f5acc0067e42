//! `Real::sqrt_rounded` with the core's `std` feature on (as the host tool builds it)
//! is the standard library's square root; the device's is libm's. Both are correctly
//! rounded, so they must agree bit for bit: checked here over a sweep of every `f32`
//! and `f64` class (zeros, subnormals, normals, the largest values, infinities, NaN).

use hvae::Real;

/// libm's, through nalgebra (`libm-force`), the device's square root.
fn libm_sqrt<T: Real>(x: T) -> T {
    nalgebra::ComplexField::sqrt(x)
}

#[test]
fn f32_square_root_is_libms_bit_for_bit() {
    // Every 257th bit pattern: all exponents, both signs, many mantissas.
    for bits in (0..=u32::MAX)
        .step_by(257)
        .chain([0, 0x8000_0000, 1, 0x7F7F_FFFF])
    {
        let x = f32::from_bits(bits);
        let (ours, libm) = (x.sqrt_rounded(), libm_sqrt(x));
        assert!(
            ours.to_bits() == libm.to_bits() || (ours.is_nan() && libm.is_nan()),
            "{x:e} ({bits:#010x}): {ours:e} against {libm:e}"
        );
    }
}

#[test]
fn f64_square_root_is_libms_bit_for_bit() {
    let step = u64::MAX / 1_000_003;
    for i in 0..1_000_003u64 {
        let bits = i.wrapping_mul(step) ^ (i >> 3);
        let x = f64::from_bits(bits);
        let (ours, libm) = (x.sqrt_rounded(), libm_sqrt(x));
        assert!(
            ours.to_bits() == libm.to_bits() || (ours.is_nan() && libm.is_nan()),
            "{x:e} ({bits:#018x}): {ours:e} against {libm:e}"
        );
    }
}
