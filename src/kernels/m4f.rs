//! The `f32` dense kernels for the Cortex-M4F (and any bare-metal Arm core with a
//! hard-float ABI, whose VFP has `s0`-`s31`), in assembly. The `.fpu` directive names
//! the M4F's FPU for the assembler (module-level assembly does not see the target's
//! features); every instruction used exists from VFPv2 on.
//!
//! Forward: eight output rows per block, eight inputs per iteration, each row's eight
//! weights loaded by one `vldm` and the eight inputs by one `vldm` for all eight rows.
//! Bit-identical to [`portable::dense_forward`]: each accumulator starts at its bias and
//! takes `acc = acc + w_j x_j` for `j` in input order, with `vmla.f32`, which rounds the
//! product and then the sum (not fused, unlike `vfma`), the same two roundings as Rust's
//! `acc + w * x` (which LLVM compiles to the same instruction here). The ReLU is
//! `v > 0 ? v : +0` (`vcmp` and a conditional move; NaN fails the comparison), as
//! [`Activation::of`]. Rows past the last block of eight take the portable kernel's
//! one-row loop (the same sums); tanh is applied after the block (the portable
//! [`Activation::of`]).
//!
//! Backward: an `axpy` per row, `y = y + a x` with `vmla.f32` (or `y = a x` with
//! `vmul.f32` for the first row of `dx`), eight values per `vldm`/`vstm`: the products
//! and sums of [`portable::dense_backward`], in its order.

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
    /// `n / 8`: iterations of eight inputs, at least one.
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
    /// `y[r] = act(b[r] + w[r][0] x[0] + w[r][1] x[1] + ...)` for the `8 blocks` rows
    /// (row-major, `n` values a row) that end at `w_end`, the biases that end at `b_end`
    /// and the outputs that end at `y_end`; the blocks are done from the last to the
    /// first.
    fn hvae_kernels_dense8_f32(
        w_end: *const f32,
        b_end: *const f32,
        y_end: *mut f32,
        args: *mut Args,
    );
}

// AAPCS: r0 = w_end, r1 = b_end, r2 = y_end, r3 = args (then r0; r3 counts the blocks).
// The blocks go backwards, so that the last one done is the first, whose row 0's sum is
// `first` (stored by every block, the last store wins). Row pointers r4-r11: a block's
// row 0 is 16 rows before where its row 7 ended in the block after it (r11 starts one
// block past the end). Input cursor r12, loop counter lr. Accumulators s0-s7, inputs
// s8-s15, one row's weights s16-s23, +0 in s24 (the ReLU's zero). r4-r11 and s16-s24
// are callee-saved.
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
    "    vpush {{s16-s24}}",
    "    ldr lr, [r3, #{row_bytes}]",
    "    add r11, r0, lr, lsl #3",
    "    mov r0, r3",
    "    ldr r3, [r0, #{blocks}]",
    "    mov r4, #0",
    "    vmov s24, r4",
    ".Lhvae_dense8_block:",
    "    ldr r12, [r0, #{x}]",
    "    ldr lr, [r0, #{row_bytes}]",
    "    sub r4, r11, lr, lsl #4",
    "    add r5, r4, lr",
    "    add r6, r5, lr",
    "    add r7, r6, lr",
    "    add r8, r7, lr",
    "    add r9, r8, lr",
    "    add r10, r9, lr",
    "    add r11, r10, lr",
    "    vldmdb r1!, {{s0-s7}}",
    "    ldr lr, [r0, #{chunks}]",
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
    "    vldmia r5!, {{s16-s23}}",
    "    vmla.f32 s1, s16, s8",
    "    vmla.f32 s1, s17, s9",
    "    vmla.f32 s1, s18, s10",
    "    vmla.f32 s1, s19, s11",
    "    vmla.f32 s1, s20, s12",
    "    vmla.f32 s1, s21, s13",
    "    vmla.f32 s1, s22, s14",
    "    vmla.f32 s1, s23, s15",
    "    vldmia r6!, {{s16-s23}}",
    "    vmla.f32 s2, s16, s8",
    "    vmla.f32 s2, s17, s9",
    "    vmla.f32 s2, s18, s10",
    "    vmla.f32 s2, s19, s11",
    "    vmla.f32 s2, s20, s12",
    "    vmla.f32 s2, s21, s13",
    "    vmla.f32 s2, s22, s14",
    "    vmla.f32 s2, s23, s15",
    "    vldmia r7!, {{s16-s23}}",
    "    vmla.f32 s3, s16, s8",
    "    vmla.f32 s3, s17, s9",
    "    vmla.f32 s3, s18, s10",
    "    vmla.f32 s3, s19, s11",
    "    vmla.f32 s3, s20, s12",
    "    vmla.f32 s3, s21, s13",
    "    vmla.f32 s3, s22, s14",
    "    vmla.f32 s3, s23, s15",
    "    vldmia r8!, {{s16-s23}}",
    "    vmla.f32 s4, s16, s8",
    "    vmla.f32 s4, s17, s9",
    "    vmla.f32 s4, s18, s10",
    "    vmla.f32 s4, s19, s11",
    "    vmla.f32 s4, s20, s12",
    "    vmla.f32 s4, s21, s13",
    "    vmla.f32 s4, s22, s14",
    "    vmla.f32 s4, s23, s15",
    "    vldmia r9!, {{s16-s23}}",
    "    vmla.f32 s5, s16, s8",
    "    vmla.f32 s5, s17, s9",
    "    vmla.f32 s5, s18, s10",
    "    vmla.f32 s5, s19, s11",
    "    vmla.f32 s5, s20, s12",
    "    vmla.f32 s5, s21, s13",
    "    vmla.f32 s5, s22, s14",
    "    vmla.f32 s5, s23, s15",
    "    vldmia r10!, {{s16-s23}}",
    "    vmla.f32 s6, s16, s8",
    "    vmla.f32 s6, s17, s9",
    "    vmla.f32 s6, s18, s10",
    "    vmla.f32 s6, s19, s11",
    "    vmla.f32 s6, s20, s12",
    "    vmla.f32 s6, s21, s13",
    "    vmla.f32 s6, s22, s14",
    "    vmla.f32 s6, s23, s15",
    "    vldmia r11!, {{s16-s23}}",
    "    vmla.f32 s7, s16, s8",
    "    vmla.f32 s7, s17, s9",
    "    vmla.f32 s7, s18, s10",
    "    vmla.f32 s7, s19, s11",
    "    vmla.f32 s7, s20, s12",
    "    vmla.f32 s7, s21, s13",
    "    vmla.f32 s7, s22, s14",
    "    vmla.f32 s7, s23, s15",
    "    subs lr, lr, #1",
    "    bne .Lhvae_dense8_chunk",
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
    "    vstr s0, [r0, #{first}]",
    "    ldr lr, [r0, #{relu}]",
    "    cmp lr, #0",
    "    beq .Lhvae_dense8_store",
    "    vcmp.f32 s0, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s0, s24",
    "    vcmp.f32 s1, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s1, s24",
    "    vcmp.f32 s2, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s2, s24",
    "    vcmp.f32 s3, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s3, s24",
    "    vcmp.f32 s4, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s4, s24",
    "    vcmp.f32 s5, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s5, s24",
    "    vcmp.f32 s6, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s6, s24",
    "    vcmp.f32 s7, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 s7, s24",
    ".Lhvae_dense8_store:",
    "    vstmdb r2!, {{s0-s7}}",
    "    subs r3, r3, #1",
    "    bne .Lhvae_dense8_block",
    "    vpop {{s16-s24}}",
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

extern "C" {
    /// `y[i] = y[i] + a x[i]` (`init` zero) or `y[i] = a x[i]` (`init` non-zero) for
    /// `i < n`.
    fn hvae_kernels_axpy_f32(y: *mut f32, x: *const f32, n: usize, init: usize, a: f32);
}

// AAPCS (hard-float): r0 = y, r1 = x, r2 = n, r3 = init, s0 = a. Chunks of eight in r12
// (the flags of `lsrs` decide whether there is one), the rest in r2; y in s8-s15, x in
// s16-s23 (callee-saved, pushed).
core::arch::global_asm!(
    ".section .text.hvae_kernels_axpy_f32,\"ax\",%progbits",
    ".syntax unified",
    ".thumb",
    ".fpu fpv4-sp-d16",
    ".globl hvae_kernels_axpy_f32",
    ".type hvae_kernels_axpy_f32,%function",
    ".p2align 2",
    ".thumb_func",
    "hvae_kernels_axpy_f32:",
    "    vpush {{s16-s23}}",
    "    and r12, r2, #7",
    "    lsrs r2, r2, #3",
    "    cbnz r3, .Lhvae_ax_start",
    "    beq .Lhvae_axpy_rest",
    ".Lhvae_axpy_chunk:",
    "    vldmia r1!, {{s16-s23}}",
    "    vldm r0, {{s8-s15}}",
    "    vmla.f32 s8, s16, s0",
    "    vmla.f32 s9, s17, s0",
    "    vmla.f32 s10, s18, s0",
    "    vmla.f32 s11, s19, s0",
    "    vmla.f32 s12, s20, s0",
    "    vmla.f32 s13, s21, s0",
    "    vmla.f32 s14, s22, s0",
    "    vmla.f32 s15, s23, s0",
    "    vstmia r0!, {{s8-s15}}",
    "    subs r2, r2, #1",
    "    bne .Lhvae_axpy_chunk",
    ".Lhvae_axpy_rest:",
    "    cmp r12, #0",
    "    beq .Lhvae_axpy_done",
    ".Lhvae_axpy_one:",
    "    vldmia r1!, {{s16}}",
    "    vldr s8, [r0]",
    "    vmla.f32 s8, s16, s0",
    "    vstmia r0!, {{s8}}",
    "    subs r12, r12, #1",
    "    bne .Lhvae_axpy_one",
    ".Lhvae_axpy_done:",
    "    vpop {{s16-s23}}",
    "    bx lr",
    ".Lhvae_ax_start:",
    "    beq .Lhvae_ax_rest",
    ".Lhvae_ax_chunk:",
    "    vldmia r1!, {{s16-s23}}",
    "    vmul.f32 s8, s16, s0",
    "    vmul.f32 s9, s17, s0",
    "    vmul.f32 s10, s18, s0",
    "    vmul.f32 s11, s19, s0",
    "    vmul.f32 s12, s20, s0",
    "    vmul.f32 s13, s21, s0",
    "    vmul.f32 s14, s22, s0",
    "    vmul.f32 s15, s23, s0",
    "    vstmia r0!, {{s8-s15}}",
    "    subs r2, r2, #1",
    "    bne .Lhvae_ax_chunk",
    ".Lhvae_ax_rest:",
    "    cmp r12, #0",
    "    beq .Lhvae_axpy_done",
    ".Lhvae_ax_one:",
    "    vldmia r1!, {{s16}}",
    "    vmul.f32 s8, s16, s0",
    "    vstmia r0!, {{s8}}",
    "    subs r12, r12, #1",
    "    bne .Lhvae_ax_one",
    "    b .Lhvae_axpy_done",
    ".size hvae_kernels_axpy_f32, . - hvae_kernels_axpy_f32",
);

/// [`portable::dense_forward`] for `f32`, the same bits, with the assembly for the blocks
/// of eight rows. Lengths as the portable kernel's callers guarantee them (`w` is
/// `y.len() x x.len()`, `b` as long as `y`); with others no output is out of bounds and
/// the rows that fit are computed.
#[inline(always)]
pub(super) fn dense_forward(
    w: &[f32],
    b: &[f32],
    x: &[f32],
    y: &mut [f32],
    act: Option<Activation>,
) -> f32 {
    // The common case on its own short path: whole blocks, no tanh.
    let (n, rows) = (x.len(), y.len());
    if n >= 8
        && rows % 8 == 0
        && rows > 0
        && b.len() == rows
        && rows.checked_mul(n) == Some(w.len())
        && act != Some(Activation::Tanh)
    {
        return blocks(w, b, x, y, act == Some(Activation::Relu));
    }
    dense_general(w, b, x, y, act)
}

/// The assembly on whole blocks: `y.len()` a non-zero multiple of 8, `b` as long as
/// `y`, `w` `y.len() x x.len()`, `x` at least 8 values (the caller checks). Returns the
/// first output before the activation.
#[inline(always)]
fn blocks(w: &[f32], b: &[f32], x: &[f32], y: &mut [f32], relu: bool) -> f32 {
    let n = x.len();
    let mut args = Args {
        x: x.as_ptr(),
        row_bytes: 4 * n,
        chunks: n / 8,
        rest: n % 8,
        relu: usize::from(relu),
        blocks: y.len() / 8,
        first: 0.0,
    };
    // SAFETY: with the lengths the caller checked, the kernel reads the `8 blocks n`
    // values of `w`, the `8 blocks` of `b` and the `n` of `x`, and writes the `8 blocks`
    // of `y` (each pointer is one past the end of its slice, and the kernel steps back
    // from it) and `args.first`; it reads and writes nothing else, restores the
    // callee-saved registers (r4-r11, s16-s24) and leaves the stack as it found it.
    unsafe {
        hvae_kernels_dense8_f32(
            w.as_ptr_range().end,
            b.as_ptr_range().end,
            y.as_mut_ptr_range().end,
            &mut args,
        );
    }
    args.first
}

/// [`dense_forward`] for every other case: tanh (applied after the assembly), rows past
/// the last block of eight (the portable one-row loop), fewer than eight inputs (the
/// one-row loop), lengths that do not fit.
#[inline(never)]
fn dense_general(w: &[f32], b: &[f32], x: &[f32], y: &mut [f32], act: Option<Activation>) -> f32 {
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
    let rows = if n < 8 {
        0
    } else {
        8 * (y.len().min(b.len()).min(w.len() / n) / 8)
    };
    let (Some((yq, yr)), Some((bq, br)), Some((wq, wr))) = (
        y.split_at_mut_checked(rows),
        b.split_at_checked(rows),
        w.split_at_checked(rows * n),
    ) else {
        return portable::dense_rows(w, b, x, y, &f);
    };
    if rows == 0 {
        return portable::dense_rows(wr, br, x, yr, &f);
    }
    let first = blocks(wq, bq, x, yq, act == Some(Activation::Relu));
    if act == Some(Activation::Tanh) {
        for v in yq.iter_mut() {
            *v = f(*v);
        }
    }
    if !yr.is_empty() {
        portable::dense_rows(wr, br, x, yr, &f);
    }
    first
}

/// `y = y + a x` (or `y = a x` with `init`), value by value, over the shorter of `y`
/// and `x`.
#[inline(always)]
fn axpy(y: &mut [f32], x: &[f32], a: f32, init: bool) {
    let n = y.len().min(x.len());
    // SAFETY: the kernel reads `n` values of `x` and reads and writes `n` of `y`, both at
    // least `n` long; it restores s16-s23 and the stack.
    unsafe {
        hvae_kernels_axpy_f32(y.as_mut_ptr(), x.as_ptr(), n, usize::from(init), a);
    }
}

/// [`portable::dense_backward`] for `f32`, the same bits (the products and sums it lists,
/// in its order), with the assembly `axpy` per row. Lengths as the portable kernel's
/// callers guarantee them (`w` and `dw` `dy.len() x x.len()`, `db` as long as `dy`, `dx`
/// as `x`); with others the portable kernel runs.
#[inline]
pub(super) fn dense_backward(
    w: &[f32],
    x: &[f32],
    dy: &[f32],
    param_grads: Option<(&mut [f32], &mut [f32])>,
    dx: Option<&mut [f32]>,
) {
    let (n_out, n_in) = (dy.len(), x.len());
    let fits = |v: usize| n_in.checked_mul(n_out) == Some(v);
    let lengths = fits(w.len())
        && param_grads
            .as_ref()
            .is_none_or(|(dw, db)| fits(dw.len()) && db.len() == n_out)
        && dx.as_ref().is_none_or(|dx| dx.len() == n_in);
    if !lengths || n_in == 0 {
        return portable::dense_backward(w, x, dy, param_grads, dx);
    }
    if let Some((dw, db)) = param_grads {
        for (row, &d) in dw.chunks_exact_mut(n_in).zip(dy) {
            axpy(row, x, d, false);
        }
        for (g, &d) in db.iter_mut().zip(dy) {
            *g += d;
        }
    }
    if let Some(dx) = dx {
        if n_out == 0 {
            dx.fill(0.0);
        }
        for (o, (row, &d)) in w.chunks_exact(n_in).zip(dy).enumerate() {
            axpy(dx, row, d, o == 0);
        }
    }
}
