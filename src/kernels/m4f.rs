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
//!
//! int8 ([`dense_i8`], [`dense_i8_dequant`]): the DSP extension's `sxtb16` and `smlad`
//! (Armv7E-M, which every M4F and M7 is; `.arch armv7e-m` for the assembler). The input
//! is sign-extended to 16-bit lanes once on the stack; then two rows at a time, eight
//! inputs per step, each weight word split into its even and odd bytes and multiplied
//! two products at a time, then requantised as [`portable::requantize`] (or, for the
//! dequantised head, converted to `f32` and multiplied by the row's scale). The same
//! values as [`portable::dense_i8`] and [`portable::dense_i8_dequant`]: `i32` sums modulo
//! 2^32, equal in any order, then the same integer or `f32` steps. The counts and the
//! floor are in docs/device.md.

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
    // One row of a block: its eight weights into s16-s23 from `row`, the eight
    // products added to `acc` in input order.
    ".macro hvae_dense8_row row, acc",
    "    vldmia \\row!, {{s16-s23}}",
    "    vmla.f32 \\acc, s16, s8",
    "    vmla.f32 \\acc, s17, s9",
    "    vmla.f32 \\acc, s18, s10",
    "    vmla.f32 \\acc, s19, s11",
    "    vmla.f32 \\acc, s20, s12",
    "    vmla.f32 \\acc, s21, s13",
    "    vmla.f32 \\acc, s22, s14",
    "    vmla.f32 \\acc, s23, s15",
    ".endm",
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
    "    hvae_dense8_row r4, s0",
    "    hvae_dense8_row r5, s1",
    "    hvae_dense8_row r6, s2",
    "    hvae_dense8_row r7, s3",
    "    hvae_dense8_row r8, s4",
    "    hvae_dense8_row r9, s5",
    "    hvae_dense8_row r10, s6",
    "    hvae_dense8_row r11, s7",
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
    ".irp acc, s0, s1, s2, s3, s4, s5, s6, s7",
    "    vcmp.f32 \\acc, #0",
    "    vmrs APSR_nzcv, fpscr",
    "    it le",
    "    vmovle.f32 \\acc, s24",
    ".endr",
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

/// What the int8 assembly reads; `ch`, `y` and `pairs` are advanced as it goes.
#[repr(C)]
struct ArgsI8 {
    /// The input, `n` values.
    x: *const i8,
    /// The input after its blocks of eight: `x + 8 blocks`.
    xt: *const i8,
    /// The first row's weights, 4-byte aligned (`n` a multiple of 4: every row is).
    w: *const i8,
    /// The first pair's channels ([`portable::Channel`], `bstep` 12) or biases (`bstep` 4).
    ch: *const i32,
    /// Where the first pair's outputs go: `i8` (requantised) or `f32` (dequantised).
    y: *mut u8,
    /// `n`: the distance between two rows in bytes.
    n: usize,
    /// `n / 8`.
    blocks: usize,
    /// `n / 32`: iterations of four blocks.
    quads: usize,
    /// `(n / 8) % 4`: blocks after them.
    ones: usize,
    /// `n % 8`: inputs after the blocks.
    tail: usize,
    /// `ones + tail`: non-zero when there is anything after the blocks of 32 inputs.
    more: usize,
    /// Pairs of rows, at least one.
    pairs: usize,
    /// Bytes from one row's bias to the next's: 12 (channels) or 4 (biases).
    bstep: usize,
    /// Non-zero: requantise to `i8`; zero: store `acc as f32 * scale` (`f32`).
    requant: usize,
    /// The clamp's lower end (`min` of [`portable::requantize`]).
    min: i32,
    /// Without `requant`: the first pair's output scales (`f32`); advanced as it goes.
    scale: *const f32,
}

extern "C" {
    /// The int8 layer of `2 pairs` rows described by `args` (see [`ArgsI8`]).
    fn hvae_kernels_dense_i8(args: *mut ArgsI8);
}

// AAPCS: r0 = args, kept in lr. The input's blocks of eight values are first sign-extended
// to 16 bits on the stack (16 bytes a block, four words: (x0, x2), (x1, x3), (x4, x6),
// (x5, x7), the order `sxtb16` and `sxtb16 ror 8` give a weight word's lanes). Then two
// rows at a time: expanded input cursor r0, rows r1 and r2, loop counter r3, four input
// words r4-r7, two weight words r8-r9 (one `ldrd`), the sign-extended lanes r10 (and in
// place), accumulators r11 and r12 (starting at the biases). `smlad` adds two 16-bit
// products to an accumulator modulo 2^32, as the portable kernel's wrapping sums. Then
// the requantisation, rows 0 and 1: `p = acc m` (`smull`, high word in r10 / r11); for a
// shift `s` in 33..=62, `q = ((hi >> (s - 33)) + 1) >> 1` (the rounded `p >> s`: the low
// word cannot change it); other shifts take the general path (the 64-bit sum and shift
// of `requantize`, wrapping as it does, saturated to 32 bits); then `usat` to [0, 127]
// when `min` is 0 (ReLU), else `max(q, min)` and `ssat` to `[-128, 127]` (`min >= -128`,
// so the two give `requantize`'s clamp). The dequantised head instead converts both
// accumulators to `f32` (`vcvt.f32.s32`, round to nearest) and multiplies them by their
// rows' scales (`vmul.f32`), as the portable kernel's `acc as f32 * scale`.
core::arch::global_asm!(
    ".section .text.hvae_kernels_dense_i8,\"ax\",%progbits",
    ".syntax unified",
    ".thumb",
    ".arch armv7e-m",
    ".fpu fpv4-sp-d16",
    // Eight inputs of two rows: the widened inputs from the stack (r0), the weights
    // of the rows at r1 and r2 into the sums r11 and r12.
    ".macro hvae_i8_step",
    "    ldm r0!, {{r4-r7}}",
    "    ldrd r8, r9, [r1], #8",
    "    sxtb16 r10, r8",
    "    sxtb16 r8, r8, ror #8",
    "    smlad r11, r10, r4, r11",
    "    smlad r11, r8, r5, r11",
    "    sxtb16 r10, r9",
    "    sxtb16 r9, r9, ror #8",
    "    smlad r11, r10, r6, r11",
    "    smlad r11, r9, r7, r11",
    "    ldrd r8, r9, [r2], #8",
    "    sxtb16 r10, r8",
    "    sxtb16 r8, r8, ror #8",
    "    smlad r12, r10, r4, r12",
    "    smlad r12, r8, r5, r12",
    "    sxtb16 r10, r9",
    "    sxtb16 r9, r9, ror #8",
    "    smlad r12, r10, r6, r12",
    "    smlad r12, r9, r7, r12",
    ".endm",
    // Row `k`'s sum `acc` requantised with its multiplier `m` and shift `sh` (`lo`,
    // `hi`: the product) and stored, the out-of-range shifts and the floor out of line.
    ".macro hvae_i8_req k, lo, hi, acc, m, sh",
    "    smull \\lo, \\hi, \\acc, \\m",
    "    subs \\sh, \\sh, #33",
    "    cmp \\sh, #29",
    "    bhi .Lhvae_i8_slow\\k",
    "    asr \\hi, \\hi, \\sh",
    "    add \\hi, \\hi, #1",
    "    asr \\hi, \\hi, #1",
    ".Lhvae_i8_clamp\\k:",
    "    cbnz r0, .Lhvae_i8_min\\k",
    "    usat \\hi, #7, \\hi",
    ".Lhvae_i8_store\\k:",
    "    strb \\hi, [r3], #1",
    ".endm",
    ".macro hvae_i8_min k, hi",
    ".Lhvae_i8_min\\k:",
    "    cmp \\hi, r0",
    "    it lt",
    "    movlt \\hi, r0",
    "    ssat \\hi, #8, \\hi",
    "    b .Lhvae_i8_store\\k",
    ".endm",
    ".macro hvae_i8_slow k, lo, hi, acc, m, sh",
    ".Lhvae_i8_slow\\k:",
    "    add \\sh, \\sh, #33",
    "    and \\sh, \\sh, #63",
    "    sub \\m, \\sh, #1",
    "    and \\m, \\m, #63",
    "    subs \\acc, \\m, #32",
    "    bpl .Lhvae_i8_halfhi\\k",
    "    movs \\acc, #1",
    "    lsl \\acc, \\acc, \\m",
    "    adds \\lo, \\lo, \\acc",
    "    adc \\hi, \\hi, #0",
    "    b .Lhvae_i8_shift\\k",
    ".Lhvae_i8_halfhi\\k:",
    "    movs \\m, #1",
    "    lsl \\m, \\m, \\acc",
    "    add \\hi, \\hi, \\m",
    ".Lhvae_i8_shift\\k:",
    "    subs \\acc, \\sh, #32",
    "    bpl .Lhvae_i8_shhi\\k",
    "    lsr \\lo, \\lo, \\sh",
    "    rsb \\m, \\sh, #32",
    "    lsl \\m, \\hi, \\m",
    "    orr \\lo, \\lo, \\m",
    "    asr \\hi, \\hi, \\sh",
    "    b .Lhvae_i8_sat\\k",
    ".Lhvae_i8_shhi\\k:",
    "    asr \\lo, \\hi, \\acc",
    "    asr \\hi, \\hi, #31",
    ".Lhvae_i8_sat\\k:",
    "    cmp \\hi, \\lo, asr #31",
    "    beq .Lhvae_i8_fits\\k",
    "    mvn \\lo, #0x80000000",
    "    eor \\lo, \\lo, \\hi, asr #31",
    ".Lhvae_i8_fits\\k:",
    "    mov \\hi, \\lo",
    "    b .Lhvae_i8_clamp\\k",
    ".endm",
    ".globl hvae_kernels_dense_i8",
    ".type hvae_kernels_dense_i8,%function",
    ".p2align 2",
    ".thumb_func",
    "hvae_kernels_dense_i8:",
    "    push {{r4-r11, lr}}",
    "    mov lr, r0",
    "    ldr r1, [lr, #{blocks}]",
    "    sub sp, sp, r1, lsl #4",
    "    ldr r2, [lr, #{x}]",
    "    mov r0, sp",
    "    cmp r1, #0",
    "    beq .Lhvae_i8_rows",
    ".Lhvae_i8_expand:",
    "    ldr r4, [r2], #4",
    "    ldr r5, [r2], #4",
    "    sxtb16 r6, r4",
    "    sxtb16 r7, r4, ror #8",
    "    sxtb16 r8, r5",
    "    sxtb16 r9, r5, ror #8",
    "    stm r0!, {{r6-r9}}",
    "    subs r1, r1, #1",
    "    bne .Lhvae_i8_expand",
    ".Lhvae_i8_rows:",
    "    ldr r1, [lr, #{w}]",
    ".Lhvae_i8_pair:",
    "    ldr r3, [lr, #{n}]",
    "    add r2, r1, r3",
    "    ldr r10, [lr, #{ch}]",
    "    ldr r3, [lr, #{bstep}]",
    "    ldr r11, [r10]",
    "    ldr r12, [r10, r3]",
    "    mov r0, sp",
    "    ldr r3, [lr, #{quads}]",
    "    cmp r3, #0",
    "    beq .Lhvae_i8_ones",
    ".Lhvae_i8_quad:",
    "    hvae_i8_step",
    "    hvae_i8_step",
    "    hvae_i8_step",
    "    hvae_i8_step",
    "    subs r3, r3, #1",
    "    bne .Lhvae_i8_quad",
    ".Lhvae_i8_ones:",
    "    ldr r3, [lr, #{more}]",
    "    cmp r3, #0",
    "    beq .Lhvae_i8_sums",
    "    ldr r3, [lr, #{ones}]",
    "    cmp r3, #0",
    "    beq .Lhvae_i8_tail",
    ".Lhvae_i8_one:",
    "    hvae_i8_step",
    "    subs r3, r3, #1",
    "    bne .Lhvae_i8_one",
    ".Lhvae_i8_tail:",
    "    ldr r3, [lr, #{tail}]",
    "    cmp r3, #0",
    "    beq .Lhvae_i8_sums",
    "    ldr r0, [lr, #{xt}]",
    ".Lhvae_i8_tail1:",
    "    ldrsb r4, [r0], #1",
    "    ldrsb r8, [r1], #1",
    "    ldrsb r9, [r2], #1",
    "    mla r11, r8, r4, r11",
    "    mla r12, r9, r4, r12",
    "    subs r3, r3, #1",
    "    bne .Lhvae_i8_tail1",
    ".Lhvae_i8_sums:",
    "    ldr r3, [lr, #{y}]",
    "    ldr r0, [lr, #{requant}]",
    "    ldr r10, [lr, #{ch}]",
    "    cmp r0, #0",
    "    bne .Lhvae_i8_requant",
    "    ldr r0, [lr, #{scale}]",
    "    vmov s0, s1, r11, r12",
    "    vcvt.f32.s32 s0, s0",
    "    vcvt.f32.s32 s1, s1",
    "    vldmia r0!, {{s2-s3}}",
    "    vmul.f32 s0, s0, s2",
    "    vmul.f32 s1, s1, s3",
    "    vstmia r3!, {{s0-s1}}",
    "    str r0, [lr, #{scale}]",
    "    add r10, r10, #8",
    "    str r10, [lr, #{ch}]",
    "    b .Lhvae_i8_next",
    ".Lhvae_i8_requant:",
    "    ldm r10!, {{r4-r9}}",
    "    str r10, [lr, #{ch}]",
    "    ldr r0, [lr, #{min}]",
    "    hvae_i8_req 0, r4, r10, r11, r5, r6",
    "    hvae_i8_req 1, r7, r11, r12, r8, r9",
    ".Lhvae_i8_next:",
    "    str r3, [lr, #{y}]",
    "    mov r1, r2",
    "    ldr r3, [lr, #{pairs}]",
    "    subs r3, r3, #1",
    "    str r3, [lr, #{pairs}]",
    "    bne .Lhvae_i8_pair",
    "    ldr r1, [lr, #{blocks}]",
    "    add sp, sp, r1, lsl #4",
    "    pop {{r4-r11, pc}}",
    "    hvae_i8_min 0, r10",
    "    hvae_i8_min 1, r11",
    "    hvae_i8_slow 0, r4, r10, r11, r5, r6",
    "    hvae_i8_slow 1, r7, r11, r12, r8, r9",
    ".size hvae_kernels_dense_i8, . - hvae_kernels_dense_i8",
    x = const offset_of!(ArgsI8, x),
    xt = const offset_of!(ArgsI8, xt),
    w = const offset_of!(ArgsI8, w),
    ch = const offset_of!(ArgsI8, ch),
    y = const offset_of!(ArgsI8, y),
    n = const offset_of!(ArgsI8, n),
    blocks = const offset_of!(ArgsI8, blocks),
    quads = const offset_of!(ArgsI8, quads),
    ones = const offset_of!(ArgsI8, ones),
    tail = const offset_of!(ArgsI8, tail),
    more = const offset_of!(ArgsI8, more),
    pairs = const offset_of!(ArgsI8, pairs),
    bstep = const offset_of!(ArgsI8, bstep),
    requant = const offset_of!(ArgsI8, requant),
    min = const offset_of!(ArgsI8, min),
    scale = const offset_of!(ArgsI8, scale),
);

/// Most inputs the int8 kernel takes: it sign-extends them on the stack (2 bytes each);
/// wider layers take the portable kernel.
const MAX_I8_INPUTS: usize = 512;

/// The rows of an int8 layer (the portable kernel's: as many as the outputs, the
/// channels and the whole weight rows allow) and whether the assembly takes their pairs:
/// at least one pair, `1..=MAX_I8_INPUTS` inputs, a multiple of 4, and the weights 4-byte
/// aligned (so every row is: `ldrd` needs it).
#[inline(always)]
fn i8_rows(w: &[i8], n: usize, rows: usize) -> (usize, bool) {
    let rows = if n == 0 { rows } else { rows.min(w.len() / n) };
    let asm = rows >= 2
        && (1..=MAX_I8_INPUTS).contains(&n)
        && n.is_multiple_of(4)
        && (w.as_ptr() as usize).is_multiple_of(4);
    (rows, asm)
}

/// How the int8 assembly writes its outputs.
#[derive(Clone, Copy)]
enum Out {
    /// Requantised to `i8`, clamped below at this value.
    Requant(i8),
    /// As `f32`: the accumulator converted, times the row's scale (these, one per row).
    Dequant(*const f32),
}

/// Runs the int8 assembly on the `2 (rows / 2)` first rows of `w` (`n = x.len()` inputs
/// each) with the biases at `ch` (`bstep` bytes apart), writing to `y` as `out` says.
///
/// # Safety
/// `i8_rows` allowed it for `w`, `x.len()` and `rows`; `ch` points at `rows` biases
/// `bstep` bytes apart (with the multiplier and shift after each for `Out::Requant`);
/// `y` has room for `rows` outputs (`f32`, 4-byte aligned, for `Out::Dequant`, whose
/// pointer has `rows` scales).
#[inline(always)]
unsafe fn run_i8(
    w: &[i8],
    x: &[i8],
    (ch, bstep): (*const i32, usize),
    y: *mut u8,
    rows: usize,
    out: Out,
) {
    let n = x.len();
    let mut args = ArgsI8 {
        x: x.as_ptr(),
        xt: x.as_ptr().wrapping_add(n - n % 8),
        w: w.as_ptr(),
        ch,
        y,
        n,
        blocks: n / 8,
        quads: n / 32,
        ones: (n / 8) % 4,
        tail: n % 8,
        more: (n / 8) % 4 + n % 8,
        pairs: rows / 2,
        bstep,
        requant: usize::from(matches!(out, Out::Requant(_))),
        min: match out {
            Out::Requant(min) => i32::from(min),
            Out::Dequant(_) => 0,
        },
        scale: match out {
            Out::Requant(_) => core::ptr::null(),
            Out::Dequant(scale) => scale,
        },
    };
    // SAFETY: by the caller's contract the kernel reads `2 pairs n` weights (from a
    // 4-byte aligned start, rows of a multiple of 4 bytes), `n` inputs, the pairs'
    // channels or biases (and scales), and writes their outputs; it uses s0-s3
    // (caller-saved); below the stack pointer it uses
    // `16 (n / 8) <= 1024` bytes, which it releases; it restores r4-r11 and the stack
    // pointer.
    unsafe { hvae_kernels_dense_i8(&mut args) }
}

/// [`portable::dense_i8`], the same values (integer arithmetic: the sums modulo 2^32 in
/// any order are the same), with the assembly for pairs of rows.
#[inline]
pub(super) fn dense_i8(w: &[i8], x: &[i8], ch: &[portable::Channel], y: &mut [i8], min: i8) {
    let n = x.len();
    let (rows, asm) = i8_rows(w, n, y.len().min(ch.len()));
    if !asm {
        return portable::dense_i8(w, x, ch, y, min);
    }
    // SAFETY: `i8_rows` allowed it; `ch` holds `rows` channels of three `i32` (12
    // bytes); `y` holds `rows` outputs.
    unsafe {
        run_i8(
            w,
            x,
            (ch.as_ptr().cast(), 12),
            y.as_mut_ptr().cast(),
            rows,
            Out::Requant(min),
        );
    }
    if rows % 2 == 1 {
        let last = rows - 1;
        let row = w.get(last * n..rows * n).unwrap_or_default();
        if let (Some(yo), Some(&[b, m, s])) = (y.get_mut(last), ch.get(last)) {
            *yo = portable::requantize(portable::dot_i8(b, row, x), m, s as u32, min);
        }
    }
}

/// [`portable::dense_i8_dequant`], the same bits (the same `i32` accumulators, then the
/// same conversion, `vcvt.f32.s32` rounding to nearest as Rust's `as f32`, and product,
/// `vmul.f32`), with the assembly for pairs of rows.
#[inline]
pub(super) fn dense_i8_dequant(w: &[i8], x: &[i8], bias: &[i32], scale: &[f32], y: &mut [f32]) {
    let n = x.len();
    let (rows, asm) = i8_rows(w, n, y.len().min(bias.len()).min(scale.len()));
    if !asm {
        return portable::dense_i8_dequant(w, x, bias, scale, y);
    }
    // SAFETY: `i8_rows` allowed it; `bias` and `scale` hold `rows` values (4 bytes
    // apart); `y` holds `rows` `f32`.
    unsafe {
        let out = Out::Dequant(scale.as_ptr());
        run_i8(w, x, (bias.as_ptr(), 4), y.as_mut_ptr().cast(), rows, out);
    }
    if rows % 2 == 1 {
        let last = rows - 1;
        let row = w.get(last * n..rows * n).unwrap_or_default();
        if let (Some(yo), Some(&b), Some(&sc)) = (y.get_mut(last), bias.get(last), scale.get(last))
        {
            *yo = portable::dot_i8(b, row, x) as f32 * sc;
        }
    }
}
