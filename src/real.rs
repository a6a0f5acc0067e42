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
}
