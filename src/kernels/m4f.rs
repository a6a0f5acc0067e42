//! The `f32` dense kernel for the Cortex-M4F (and any Arm core with a hard-float ABI and
//! VFP registers `s0`-`s31`), in assembly: eight output rows per block, eight inputs per
//! iteration, each row's eight weights loaded by one `vldm` and the eight inputs by one
//! `vldm` for all eight rows.
//!
//! Bit-identical to [`portable::dense_forward`]: each accumulator starts at its bias and
//! takes `acc = acc + w_j x_j` for `j` in input order, with `vmla.f32`, which rounds the
//! product and then the sum (not fused), the same two roundings as Rust's `a + w * x`
//! (which LLVM compiles to the same instruction here). The ReLU is `v > 0 ? v : +0`
//! (`vcmp` and a conditional move; NaN fails the comparison), as [`Activation::of`].
//! Rows past the last block of eight take the portable kernel's one-row loop (the same
//! sums); tanh is applied after the block (the portable [`Activation::of`]).

use super::portable;
use crate::Activation;
use core::mem::offset_of;

/// What the assembly reads besides the weight, bias and output pointers; `first` is
/// written (the first output before the activation).
#[repr(C)]
struct Args {
    /// The input, `n` values.
    x: *const f32,
    /// `4 n`: the distance between two rows of weights in bytes.
    row_bytes: usize,
    /// `n / 8`: iterations of eight inputs.
    chunks: usize,
    /// `n % 8`: inputs after them.
    rest: usize,
    /// Non-zero: apply the ReLU as the outputs are stored.
    relu: usize,
    /// Blocks of eight rows, at least one.
    blocks: usize,
    /// Set by the kernel: row 0's sum before the activation.
    first: f32,
}

extern "C" {
    /// `y[r] = act(b[r] + w[r][0] x[0] + w[r][1] x[1] + ...)` for the `8 blocks` rows of
    /// `w` (row-major, `n` values a row; `b` and `y` `8 blocks` values).
    fn hvae_kernels_dense8_f32(w: *const f32, b: *const f32, y: *mut f32, args: *mut Args);
}

// AAPCS: r0 = w, r1 = b, r2 = y, r3 = args. Row pointers r4-r11 (row 7's end is the
// next block's row 0), input cursor r12, loop counters lr and r3 (blocks). Accumulators
// s0-s7, inputs s8-s15, one row's weights s16-s23 or s24-s31. s16-s31 and r4-r11 are
// callee-saved.
core::arch::global_asm!(
    ".section .text.hvae_kernels_dense8_f32,\"ax\",%progbits",
    ".syntax unified",
    ".thumb",
    ".fpu fpv4-sp-d16",
    ".globl hvae_kernels_dense8_f32",
    ".type hvae_kernels_dense8_f32,%function",
    ".p2align 2",
    ".thumb_func",
    "hvae_kernels_dense8_f32:",
    "    push {{r4-r11, lr}}",
    "    vpush {{s16-s31}}",
    "    mov r4, r0",
    "    mov r0, r3",
    "    ldr r3, [r0, #{blocks}]",
    ".Lhvae_dense8_block:",
    "    ldr r12, [r0, #{x}]",
    "    ldr lr, [r0, #{row_bytes}]",
    "    add r5, r4, lr",
    "    add r6, r5, lr",
    "    add r7, r6, lr",
    "    add r8, r7, lr",
    "    add r9, r8, lr",
    "    add r10, r9, lr",
    "    add r11, r10, lr",
    "    vldmia r1!, {{s0-s7}}",
    "    ldr lr, [r0, #{chunks}]",
    "    cmp lr, #0",
    "    beq .Lhvae_dense8_rest",
    ".Lhvae_dense8_chunk:",
    "    vldmia r12!, {{s8-s15}}",
    "    vldmia r4!, {{s16-s23}}",
    "    vmla.f32 s0, s16, s8",
    "    vmla.f32 s0, s17, s9",
    "    vmla.f32 s0, s18, s10",
    "    vmla.f32 s0, s19, s11",
    "    vmla.f32 s0, s20, s12",
    "    vmla.f32 s0, s21, s13",
    "    vmla.f32 s0, s22, s14",
    "    vmla.f32 s0, s23, s15",
    "    vldmia r5!, {{s24-s31}}",
    "    vmla.f32 s1, s24, s8",
    "    vmla.f32 s1, s25, s9",
    "    vmla.f32 s1, s26, s10",
    "    vmla.f32 s1, s27, s11",
    "    vmla.f32 s1, s28, s12",
    "    vmla.f32 s1, s29, s13",
    "    vmla.f32 s1, s30, s14",
    "    vmla.f32 s1, s31, s15",
    "    vldmia r6!, {{s16-s23}}",
    "    vmla.f32 s2, s16, s8",
    "    vmla.f32 s2, s17, s9",
    "    vmla.f32 s2, s18, s10",
    "    vmla.f32 s2, s19, s11",
    "    vmla.f32 s2, s20, s12",
    "    vmla.f32 s2, s21, s13",
    "    vmla.f32 s2, s22, s14",
    "    vmla.f32 s2, s23, s15",
    "    vldmia r7!, {{s24-s31}}",
    "    vmla.f32 s3, s24, s8",
    "    vmla.f32 s3, s25, s9",
    "    vmla.f32 s3, s26, s10",
    "    vmla.f32 s3, s27, s11",
    "    vmla.f32 s3, s28, s12",
    "    vmla.f32 s3, s29, s13",
    "    vmla.f32 s3, s30, s14",
    "    vmla.f32 s3, s31, s15",
    "    vldmia r8!, {{s16-s23}}",
    "    vmla.f32 s4, s16, s8",
    "    vmla.f32 s4, s17, s9",
    "    vmla.f32 s4, s18, s10",
    "    vmla.f32 s4, s19, s11",
    "    vmla.f32 s4, s20, s12",
    "    vmla.f32 s4, s21, s13",
    "    vmla.f32 s4, s22, s14",
    "    vmla.f32 s4, s23, s15",
    "    vldmia r9!, {{s24-s31}}",
    "    vmla.f32 s5, s24, s8",
    "    vmla.f32 s5, s25, s9",
    "    vmla.f32 s5, s26, s10",
    "    vmla.f32 s5, s27, s11",
    "    vmla.f32 s5, s28, s12",
    "    vmla.f32 s5, s29, s13",
    "    vmla.f32 s5, s30, s14",
    "    vmla.f32 s5, s31, s15",
    "    vldmia r10!, {{s16-s23}}",
    "    vmla.f32 s6, s16, s8",
    "    vmla.f32 s6, s17, s9",
    "    vmla.f32 s6, s18, s10",
    "    vmla.f32 s6, s19, s11",
    "    vmla.f32 s6, s20, s12",
    "    vmla.f32 s6, s21, s13",
    "    vmla.f32 s6, s22, s14",
    "    vmla.f32 s6, s23, s15",
    "    vldmia r11!, {{s24-s31}}",
    "    vmla.f32 s7, s24, s8",
    "    vmla.f32 s7, s25, s9",
    "    vmla.f32 s7, s26, s10",
    "    vmla.f32 s7, s27, s11",
    "    vmla.f32 s7, s28, s12",
    "    vmla.f32 s7, s29, s13",
    "    vmla.f32 s7, s30, s14",
    "    vmla.f32 s7, s31, s15",
    "    subs lr, lr, #1",
    "    bne .Lhvae_dense8_chunk",
    ".Lhvae_dense8_rest:",
    "    ldr lr, [r0, #{rest}]",
    "    cmp lr, #0",
    "    beq .Lhvae_dense8_sums",
    ".Lhvae_dense8_one:",
    "    vldmia r12!, {{s8}}",
    "    vldmia r4!, {{s16}}",
    "    vldmia r5!, {{s17}}",
    "    vldmia r6!, {{s18}}",
    "    vldmia r7!, {{s19}}",
    "    vldmia r8!, {{s20}}",
    "    vldmia r9!, {{s21}}",
    "    vldmia r10!, {{s22}}",
    "    vldmia r11!, {{s23}}",
    "    vmla.f32 s0, s16, s8",
    "    vmla.f32 s1, s17, s8",
    "    vmla.f32 s2, s18, s8",
    "    vmla.f32 s3, s19, s8",
    "    vmla.f32 s4, s20, s8",
    "    vmla.f32 s5, s21, s8",
    "    vmla.f32 s6, s22, s8",
    "    vmla.f32 s7, s23, s8",
    "    subs lr, lr, #1",
    "    bne .Lhvae_dense8_one",
    ".Lhvae_dense8_sums:",
    // The first block: row 0's sum before the activation.
    "    ldr lr, [r0, #{blocks}]",
    "    cmp r3, lr",
    "    it eq",
    "    vstreq s0, [r0, #{first}]",
    "    ldr lr, [r0, #{relu}]",
    "    cmp lr, #0",
    "    beq .Lhvae_dense8_store",
    "    mov lr, #0",
    "    vmov s8, lr",
    "    vcmp.f32 s0, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s0, s8",
    "    vcmp.f32 s1, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s1, s8",
    "    vcmp.f32 s2, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s2, s8",
    "    vcmp.f32 s3, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s3, s8",
    "    vcmp.f32 s4, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s4, s8",
    "    vcmp.f32 s5, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s5, s8",
    "    vcmp.f32 s6, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s6, s8",
    "    vcmp.f32 s7, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s7, s8",
    ".Lhvae_dense8_store:",
    "    vstmia r2!, {{s0-s7}}",
    "    mov r4, r11",
    "    subs r3, r3, #1",
    "    bne .Lhvae_dense8_block",
    "    vpop {{s16-s31}}",
    "    pop {{r4-r11, pc}}",
    ".size hvae_kernels_dense8_f32, . - hvae_kernels_dense8_f32",
    x = const offset_of!(Args, x),
    row_bytes = const offset_of!(Args, row_bytes),
    chunks = const offset_of!(Args, chunks),
    rest = const offset_of!(Args, rest),
    relu = const offset_of!(Args, relu),
    blocks = const offset_of!(Args, blocks),
    first = const offset_of!(Args, first),
);

/// [`portable::dense_forward`] for `f32`, the same bits, with the assembly for the blocks
/// of eight rows. Lengths as the portable kernel's callers guarantee them (`w` is
/// `y.len() x x.len()`, `b` as long as `y`); with others no output is out of bounds and
/// the rows that fit are computed.
#[inline]
pub(super) fn dense_forward(
    w: &[f32],
    b: &[f32],
    x: &[f32],
    y: &mut [f32],
    act: Option<Activation>,
) -> f32 {
    let f = |v: f32| match act {
        Some(a) => a.of(v),
        None => v,
    };
    let n = x.len();
    if n == 0 {
        for (yo, &bo) in y.iter_mut().zip(b) {
            *yo = f(bo);
        }
        return b.first().copied().unwrap_or(0.0);
    }
    let blocks = y.len().min(b.len()).min(w.len() / n) / 8;
    let rows = 8 * blocks;
    let (Some((yq, yr)), Some((_, br)), Some((_, wr))) = (
        y.split_at_mut_checked(rows),
        b.split_at_checked(rows),
        w.split_at_checked(rows * n),
    ) else {
        return portable::dense_rows(w, b, x, y, &f);
    };
    if blocks == 0 {
        return portable::dense_rows(wr, br, x, yr, &f);
    }
    let mut args = Args {
        x: x.as_ptr(),
        row_bytes: 4 * n,
        chunks: n / 8,
        rest: n % 8,
        relu: usize::from(act == Some(Activation::Relu)),
        blocks,
        first: 0.0,
    };
    // SAFETY: the kernel reads `8 blocks n` values of `w` (`rows n <= w.len()`), `8 blocks`
    // of `b` (`rows <= b.len()`) and `n` of `x`, and writes `8 blocks` of `y` (`yq` is
    // `rows` long) and `args.first`; it reads and writes nothing else, restores the
    // callee-saved registers (r4-r11, s16-s31) and leaves the stack as it found it.
    unsafe {
        hvae_kernels_dense8_f32(w.as_ptr(), b.as_ptr(), yq.as_mut_ptr(), &mut args);
    }
    if act == Some(Activation::Tanh) {
        for v in yq.iter_mut() {
            *v = f(*v);
        }
    }
    portable::dense_rows(wr, br, x, yr, &f);
    args.first
}
