//! The dense kernels: the forward pass `y = act(W x + b)` of inference and training and
//! its backward pass, and the only module of the crate where `unsafe` code is allowed.
//!
//! | kernel | where | what |
//! |---|---|---|
//! | [`portable`] | every target, every [`Real`] | Rust, blocked and unrolled by hand (forward); nalgebra's `ger` and blocks of sixteen inputs (backward); the reference |
//! | [`portable::dense_forward_t`], [`portable::dense_grads_rows`] | every target (training on a host) | the forward pass on transposed weights and the parameter gradient of a whole batch, blocks of sixteen outputs or weights in vector registers: the same sums in the same order |
//! | [`portable::dense_i8`] | every target | the int8 layer: `i32` dot products of int8 weights and activations, requantised by a fixed-point multiplier and shift |
//! | `m4f` (private) | `f32` on bare-metal Arm with a hard-float ABI (`thumbv7em-none-eabihf`: the Cortex-M4F) | assembly: `vldm` of eight values, `vmla.f32` |
//! | `m4f` (private), int8 | the same targets (Armv7E-M: the DSP extension comes with the M4F's FPU) | assembly: `sxtb16` and `smlad` (two 16-bit products per instruction), two rows at a time |
//! | `m0` (private), int8 | bare-metal Arm without a hard-float ABI (`thumbv6m-none-eabi`: the Cortex-M0; Thumb-1 runs on every M-profile core) | assembly: `ldrsb`, `muls` and `add` per product, four rows at a time; the requantisation with 32-bit multiplies |
//!
//! [`dense_forward`], [`dense_forward2`] and [`dense_backward`] choose the kernel for
//! the target and the scalar type; every kernel computes the same floating-point
//! operations in the same order as the portable one, so the results are the same bits
//! whichever runs (the portable kernel is tested on the host; the target's against it on
//! the device under qemu, by the firmware's `selftest`). [`dense_i8`] and
//! [`dense_i8_dequant`] do the same for int8 layers, whose integer sums are the same in
//! any order. Nothing outside this module knows which one runs; [`KERNEL`] and
//! [`KERNEL_I8`] name them for logs and benchmarks.
//!
//! The assembly is selected by `target_arch`, `target_abi` and `target_os`: Arm's
//! floating-point target features are not stable `cfg`s, and a hard-float ABI implies
//! the VFP registers and instructions the kernel uses (`s0`-`s31`, `vldm`, `vmla.f32`).

use crate::{Activation, Real};

pub mod portable;

#[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
mod m4f;

#[cfg(all(target_arch = "arm", target_abi = "eabi", target_os = "none"))]
mod m0;

/// The name of the `f32` dense kernel this build runs: `"portable"` or `"arm-vfp-asm"`.
pub const KERNEL: &str = if cfg!(all(
    target_arch = "arm",
    target_abi = "eabihf",
    target_os = "none"
)) {
    "arm-vfp-asm"
} else {
    "portable"
};

/// The name of the int8 dense kernel this build runs: `"portable"`, `"arm-dsp-asm"` or
/// `"thumb1-asm"`.
pub const KERNEL_I8: &str = if cfg!(all(
    target_arch = "arm",
    target_abi = "eabihf",
    target_os = "none"
)) {
    "arm-dsp-asm"
} else if cfg!(all(
    target_arch = "arm",
    target_abi = "eabi",
    target_os = "none"
)) {
    "thumb1-asm"
} else {
    "portable"
};

/// `y = act(W x + b)`, `W` row-major `y.len() x x.len()`, `b` as long as `y`; returns the
/// first output before the activation (zero without outputs). See
/// [`portable::dense_forward`] for what it computes: every kernel gives the same bits.
#[inline]
pub fn dense_forward<T: Real>(
    w: &[T],
    b: &[T],
    x: &[T],
    y: &mut [T],
    act: Option<Activation>,
) -> T {
    #[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
    if let (Some(w), Some(b), Some(x)) = (as_f32(w), as_f32(b), as_f32(x)) {
        if let Some(y) = as_f32_mut(&mut *y) {
            return T::of_f32(m4f::dense_forward(w, b, x, y, act));
        }
    }
    portable::dense_forward(w, b, x, y, act)
}

/// [`dense_forward`] of two inputs, `y0 = act(W x0 + b)` and `y1 = act(W x1 + b)`;
/// returns both first outputs before the activation. The portable kernel loads each
/// weight once for both; the assembly kernel, which takes fewer instructions per
/// multiply-add alone than the portable one in pairs, runs once per input. The same bits
/// as two calls of [`dense_forward`].
#[inline]
pub fn dense_forward2<T: Real>(
    w: &[T],
    b: &[T],
    (x0, x1): (&[T], &[T]),
    (y0, y1): (&mut [T], &mut [T]),
    act: Option<Activation>,
) -> (T, T) {
    #[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
    if core::any::TypeId::of::<T>() == core::any::TypeId::of::<f32>() {
        return (
            dense_forward(w, b, x0, y0, act),
            dense_forward(w, b, x1, y1, act),
        );
    }
    portable::dense_forward2(w, b, (x0, x1), (y0, y1), act)
}

/// [`dense_forward`] with the weights transposed (`wt` = `Wᵀ`, row-major `x.len() x
/// y.len()`): the same sums in the same order, so the same bits, with the outputs
/// worked on side by side (vector registers on the host). The portable kernel on every
/// target: see [`portable::dense_forward_t`]. Training on the host reads its forward
/// passes' weights this way (`LossBuffers::with_batch_kernels`, with the `alloc` feature).
#[inline]
pub fn dense_forward_t<T: Real>(
    wt: &[T],
    b: &[T],
    x: &[T],
    y: &mut [T],
    act: Option<Activation>,
) -> T {
    portable::dense_forward_t(wt, b, x, y, act)
}

/// The parameter gradients of a dense layer over a batch of recorded rows (`dy` then
/// the layer's input, per row): the same sums in the same order as one
/// [`dense_backward`] per row, so the same bits, each gradient value loaded and stored
/// once per batch. The portable kernel on every target: see
/// [`portable::dense_grads_rows`].
#[inline]
pub fn dense_grads_rows<T: Real>(records: &[T], n_in: usize, dw: &mut [T], db: &mut [T]) {
    portable::dense_grads_rows(records, n_in, dw, db)
}

/// `v` as `f32` when `T` is `f32`.
#[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
#[inline(always)]
fn as_f32<T: Real>(v: &[T]) -> Option<&[f32]> {
    if core::any::TypeId::of::<T>() != core::any::TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: `T` is `f32` (the same `TypeId`), so `v` is a valid `[f32]` of the same
    // length, borrowed for the same lifetime.
    Some(unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) })
}

/// `v` as `f32` when `T` is `f32`.
#[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
#[inline(always)]
fn as_f32_mut<T: Real>(v: &mut [T]) -> Option<&mut [f32]> {
    if core::any::TypeId::of::<T>() != core::any::TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: `T` is `f32` (the same `TypeId`), so `v` is a valid `[f32]` of the same
    // length; the caller's unique borrow moves into the result.
    Some(unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len()) })
}

/// The backward pass of [`dense_forward`] (before the activation's derivative): adds
/// `dy xᵀ` into `dw` and `dy` into `db` when given, and writes `Wᵀ dy` into `dx` when
/// given. See [`portable::dense_backward`] for what it computes: every kernel gives the
/// same bits.
#[inline]
pub fn dense_backward<T: Real>(
    w: &[T],
    x: &[T],
    dy: &[T],
    param_grads: Option<(&mut [T], &mut [T])>,
    dx: Option<&mut [T]>,
) {
    #[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
    if let (Some(w), Some(x), Some(dy)) = (as_f32(w), as_f32(x), as_f32(dy)) {
        let param_grads = match param_grads {
            Some((dw, db)) => match (as_f32_mut(dw), as_f32_mut(db)) {
                (Some(dw), Some(db)) => Some((dw, db)),
                _ => None,
            },
            None => None,
        };
        return m4f::dense_backward(w, x, dy, param_grads, dx.and_then(as_f32_mut));
    }
    portable::dense_backward(w, x, dy, param_grads, dx)
}

/// Calls the int8 kernel `$f` of the target: the M4F's or the M0's assembly, else the
/// portable one.
macro_rules! int8_kernel {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(all(target_arch = "arm", target_abi = "eabihf", target_os = "none"))]
        return m4f::$f($($arg),*);
        #[cfg(all(target_arch = "arm", target_abi = "eabi", target_os = "none"))]
        return m0::$f($($arg),*);
        #[cfg(not(all(
            target_arch = "arm",
            any(target_abi = "eabihf", target_abi = "eabi"),
            target_os = "none"
        )))]
        portable::$f($($arg),*)
    }};
}

/// The int8 dense layer `y = requantize(W x + b)`: see [`portable::dense_i8`] for what it
/// computes (integer arithmetic only, so every kernel gives the same values).
#[inline]
pub fn dense_i8(w: &[i8], x: &[i8], ch: &[portable::Channel], y: &mut [i8], min: i8) {
    int8_kernel!(dense_i8(w, x, ch, y, min))
}

/// The int8 dense layer with real outputs `y = (W x + b) * scale`: see
/// [`portable::dense_i8_dequant`] (every kernel gives the same bits: the same `i32`
/// sums, then the same conversion and product).
#[inline]
pub fn dense_i8_dequant(w: &[i8], x: &[i8], bias: &[i32], scale: &[f32], y: &mut [f32]) {
    int8_kernel!(dense_i8_dequant(w, x, bias, scale, y))
}

/// The bytes of an `f32` workspace as `i8` scratch (four per value): the int8 model's
/// activations live in the same caller-owned `f32` workspace as the `f32` model's, so a
/// program switches models without changing its buffers.
#[inline]
pub(crate) fn scratch_i8(v: &mut [f32]) -> &mut [i8] {
    let len = core::mem::size_of_val(v);
    // SAFETY: `v` is a valid, exclusively borrowed region of `len` bytes; `i8` has size
    // and alignment 1 and every bit pattern is a valid `i8` (and, for the `f32` the
    // caller sees again after the borrow ends, a valid `f32`); the unique borrow moves
    // into the result for the same lifetime.
    unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<i8>(), len) }
}

impl Activation {
    /// The nonlinearity of one value (ReLU maps NaN to 0 as well).
    #[inline(always)]
    pub(crate) fn of<T: Real>(self, v: T) -> T {
        match self {
            Activation::Relu => {
                if v > T::zero() {
                    v
                } else {
                    T::zero()
                }
            }
            Activation::Tanh => v.tanh(),
        }
    }
}
