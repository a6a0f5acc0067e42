//! The int8 dense kernels for Thumb-1 (Armv6-M: the Cortex-M0 and M0+; the same
//! instructions run on every M-profile core), in assembly, for bare-metal Arm without a
//! hard-float ABI.
//!
//! Four output rows per block and one input at a time: per input, one `ldrsb` of the
//! input and, per row, one `ldrsb` of the weight, a `muls` and an `add` into the row's
//! accumulator (r8-r11), then one `adds` of the shared index. The index runs from `-n8`
//! up to 0 (`n8 = n - n % 8`, the row pointers at each row's `n8`-th weight, the input
//! pointer at its `n8`-th value: the register-offset `ldrsb`, the only signed byte load
//! of Armv6-M), so the last `adds` of eight unrolled inputs ends the loop by its flags.
//! The accumulators start at the biases (the caller writes them where the kernel
//! stores its sums); the inputs after `n8`, the rows after the last block of four and
//! the requantisation ([`portable::requantize_narrow`]: only 32-bit multiplies, which
//! the M0 has) or the dequantisation (`acc as f32 * scale` by
//! [`portable::dequantize_narrow`]: integer operations, not the soft-float calls) are
//! Rust. The
//! same values as [`portable::dense_i8`] and [`portable::dense_i8_dequant`]: `i32` sums
//! modulo 2^32, equal in any order, then the same integer or `f32` steps. The counts and
//! the floor are in docs/device.md.

use super::portable::{self, Channel};
use core::mem::offset_of;

/// What the assembly reads; `w`, `ch`, `acc`, `y` and `blocks` are advanced as it goes,
/// `slow` is written.
#[repr(C)]
struct Args {
    /// The input's `n8`-th value (one past the inputs the kernel reads).
    x_end: *const i8,
    /// The block's first row.
    w: *const i8,
    /// The block's first bias: a [`Channel`] (`bstep` 12, requantised) or an `i32`
    /// (`bstep` 4).
    ch: *const i32,
    /// The block's four accumulators: the sums are stored there.
    acc: *mut i32,
    /// The block's first output (`requant`).
    y: *mut i8,
    /// `n`: the distance between two rows in bytes.
    n: usize,
    /// `n8 = n - n % 8`, at least 8: the inputs the kernel takes.
    n8: usize,
    /// Blocks of four rows, at least one.
    blocks: usize,
    /// Bytes from one bias to the next: 12 or 4.
    bstep: usize,
    /// Non-zero: requantise into `y` (`n8 == n`); zero: only the sums.
    requant: usize,
    /// The clamp's lower end.
    min: i32,
    /// Set non-zero by the kernel when a row's channel is not on its path (a negative
    /// multiplier or a shift outside `33..=62`): that row's output is not written.
    slow: usize,
}

extern "C" {
    /// `acc[r] = b[r] + w[r][0] x[0] + ... + w[r][n8 - 1] x[n8 - 1]` (wrapping) for the
    /// `4 blocks` rows described by `args` (see [`Args`]), and with `requant` their
    /// outputs.
    fn hvae_kernels_dense_i8_m0(args: *mut Args);
}

// AAPCS: r0 = args, kept in r12; the clamp's lower end on the stack. Per block: row
// pointers r0-r3 (each row's `n8`-th weight), index r4 (`-n8` up to 0), input pointer
// r5 (the input's `n8`-th value), the input r6, a weight and its product r7,
// accumulators r8-r11 (from the biases). Then the sums are stored and, with `requant`,
// each row requantised (`.Lreq`, the accumulator from its high register): channel
// pointer r6, output pointer r5, `hi = floor(acc m / 2^32)` from the 16-bit halves
// (r0-r4, r7: see `portable::requantize_narrow`), `q = ((hi >> (s - 33)) + 1) >> 1`,
// the clamp, `strb`. r4-r11 are callee-saved (the high ones through r4-r7).
core::arch::global_asm!(
    ".macro hvae_m0_req acc, k",
    "    mov r0, \\acc",
    "    ldr r1, [r6, #(12 * \\k + 4)]",
    "    ldr r2, [r6, #(12 * \\k + 8)]",
    "    subs r2, r2, #33",
    "    cmp r2, #29",
    "    bhi 8f",
    "    cmp r1, #0",
    "    blt 8f",
    "    asrs r3, r0, #16",
    "    uxth r0, r0",
    "    uxth r4, r1",
    "    lsrs r1, r1, #16",
    "    movs r7, r0",
    "    muls r7, r4, r7",
    "    lsrs r7, r7, #16",
    "    muls r4, r3, r4",
    "    muls r0, r1, r0",
    "    adds r0, r0, r7",
    "    muls r3, r1, r3",
    "    uxth r1, r4",
    "    adds r0, r0, r1",
    "    lsrs r0, r0, #16",
    "    asrs r4, r4, #16",
    "    adds r0, r0, r4",
    "    adds r0, r0, r3",
    "    asrs r0, r2",
    "    adds r0, r0, #1",
    "    asrs r0, r0, #1",
    "    cmp r0, #127",
    "    ble 6f",
    "    movs r0, #127",
    "6:",
    "    ldr r1, [sp, #0]",
    "    cmp r0, r1",
    "    bge 7f",
    "    mov r0, r1",
    "7:",
    "    strb r0, [r5, #\\k]",
    "    b 9f",
    "8:",
    "    mov r7, r12",
    "    movs r0, #1",
    "    str r0, [r7, #{slow}]",
    "9:",
    ".endm",
    ".section .text.hvae_kernels_dense_i8_m0,\"ax\",%progbits",
    ".syntax unified",
    ".thumb",
    ".globl hvae_kernels_dense_i8_m0",
    ".type hvae_kernels_dense_i8_m0,%function",
    ".p2align 2",
    ".thumb_func",
    "hvae_kernels_dense_i8_m0:",
    "    push {{r4-r7, lr}}",
    "    mov r4, r8",
    "    mov r5, r9",
    "    mov r6, r10",
    "    mov r7, r11",
    "    push {{r4-r7}}",
    "    sub sp, sp, #8",
    "    mov r12, r0",
    "    ldr r1, [r0, #{min}]",
    "    str r1, [sp, #0]",
    ".Lhvae_m0_block:",
    "    mov r7, r12",
    "    ldr r6, [r7, #{ch}]",
    "    ldr r5, [r7, #{bstep}]",
    "    ldr r0, [r6]",
    "    adds r6, r6, r5",
    "    mov r8, r0",
    "    ldr r0, [r6]",
    "    adds r6, r6, r5",
    "    mov r9, r0",
    "    ldr r0, [r6]",
    "    adds r6, r6, r5",
    "    mov r10, r0",
    "    ldr r0, [r6]",
    "    mov r11, r0",
    "    ldr r0, [r7, #{w}]",
    "    ldr r6, [r7, #{n}]",
    "    ldr r5, [r7, #{n8}]",
    "    adds r0, r0, r5",
    "    adds r1, r0, r6",
    "    adds r2, r1, r6",
    "    adds r3, r2, r6",
    "    adds r4, r3, r6",
    "    subs r4, r4, r5",
    "    str r4, [r7, #{w}]",
    "    rsbs r4, r5, #0",
    "    ldr r5, [r7, #{x_end}]",
    ".Lhvae_m0_cols:",
    ".rept 8",
    "    ldrsb r6, [r5, r4]",
    "    ldrsb r7, [r0, r4]",
    "    muls r7, r6, r7",
    "    add r8, r7",
    "    ldrsb r7, [r1, r4]",
    "    muls r7, r6, r7",
    "    add r9, r7",
    "    ldrsb r7, [r2, r4]",
    "    muls r7, r6, r7",
    "    add r10, r7",
    "    ldrsb r7, [r3, r4]",
    "    muls r7, r6, r7",
    "    add r11, r7",
    "    adds r4, r4, #1",
    ".endr",
    "    bne .Lhvae_m0_cols",
    "    mov r7, r12",
    "    ldr r6, [r7, #{acc}]",
    "    mov r0, r8",
    "    mov r1, r9",
    "    mov r2, r10",
    "    mov r3, r11",
    "    stm r6!, {{r0-r3}}",
    "    str r6, [r7, #{acc}]",
    "    ldr r6, [r7, #{ch}]",
    "    ldr r0, [r7, #{requant}]",
    "    cmp r0, #0",
    "    bne .Lhvae_m0_req",
    "    b .Lhvae_m0_next",
    ".Lhvae_m0_req:",
    "    ldr r5, [r7, #{y}]",
    "    hvae_m0_req r8, 0",
    "    hvae_m0_req r9, 1",
    "    hvae_m0_req r10, 2",
    "    hvae_m0_req r11, 3",
    "    mov r7, r12",
    "    adds r5, r5, #4",
    "    str r5, [r7, #{y}]",
    ".Lhvae_m0_next:",
    "    ldr r5, [r7, #{bstep}]",
    "    lsls r5, r5, #2",
    "    adds r6, r6, r5",
    "    str r6, [r7, #{ch}]",
    "    ldr r6, [r7, #{blocks}]",
    "    subs r6, r6, #1",
    "    str r6, [r7, #{blocks}]",
    "    beq .Lhvae_m0_done",
    "    b .Lhvae_m0_block",
    ".Lhvae_m0_done:",
    "    add sp, sp, #8",
    "    pop {{r4-r7}}",
    "    mov r8, r4",
    "    mov r9, r5",
    "    mov r10, r6",
    "    mov r11, r7",
    "    pop {{r4-r7, pc}}",
    ".size hvae_kernels_dense_i8_m0, . - hvae_kernels_dense_i8_m0",
    x_end = const offset_of!(Args, x_end),
    w = const offset_of!(Args, w),
    ch = const offset_of!(Args, ch),
    acc = const offset_of!(Args, acc),
    y = const offset_of!(Args, y),
    n = const offset_of!(Args, n),
    n8 = const offset_of!(Args, n8),
    blocks = const offset_of!(Args, blocks),
    bstep = const offset_of!(Args, bstep),
    requant = const offset_of!(Args, requant),
    min = const offset_of!(Args, min),
    slow = const offset_of!(Args, slow),
);

/// Rows per call of the assembly: its accumulators live on the stack (4 bytes a row).
const CHUNK: usize = 32;

/// How a call of the assembly ends.
enum Out<'a> {
    /// Requantised into these outputs, clamped below at this value.
    Requant(&'a mut [i8], i8),
    /// The sums only.
    Sums,
}

/// Runs the assembly on `rows` rows (`rows <= CHUNK`, a non-zero multiple of 4)
/// starting at `w` (`n = x.len() >= 8` weights a row; the caller checked `rows n <=
/// w.len()`), the biases at `ch` (`bstep` bytes apart, `rows` of them): the sums of the
/// first `n8` inputs into `acc`, and with [`Out::Requant`] (`n8 == n`, `rows` outputs)
/// the outputs of the rows on the fast path. Returns whether a row was not.
///
/// # Safety
/// `ch` points at `rows` biases `bstep` bytes apart, each followed by its multiplier and
/// shift when requantising.
#[inline(always)]
unsafe fn run(
    w: &[i8],
    x: &[i8],
    (ch, bstep): (*const i32, usize),
    rows: usize,
    acc: &mut [i32; CHUNK],
    out: Out<'_>,
) -> bool {
    let n = x.len();
    let n8 = n - n % 8;
    let (y, requant, min) = match out {
        Out::Requant(y, min) => (y.as_mut_ptr(), 1, i32::from(min)),
        Out::Sums => (core::ptr::null_mut(), 0, 0),
    };
    let mut args = Args {
        x_end: x.as_ptr().wrapping_add(n8),
        w: w.as_ptr(),
        ch,
        acc: acc.as_mut_ptr(),
        y,
        n,
        n8,
        blocks: rows / 4,
        bstep,
        requant,
        min,
        slow: 0,
    };
    // SAFETY: by the caller's contract and this function's: the kernel reads the first
    // `n8` weights of each of the `rows` rows (within the `rows n` bytes of `w`), the
    // first `n8` inputs and the `rows` biases (and channels), writes the `rows`
    // accumulators (`rows <= CHUNK`) and, with `requant`, at most `rows` outputs; it
    // uses 8 bytes of stack below the registers it saves, restores r4-r11 and the stack
    // pointer and touches no other memory.
    unsafe { hvae_kernels_dense_i8_m0(&mut args) }
    args.slow != 0
}

/// Whether the assembly takes a layer of `n` inputs and `rows` rows over `w`: at least 8
/// inputs, a block of four rows, and the weights long enough.
#[inline(always)]
fn fits(w: &[i8], n: usize, rows: usize) -> bool {
    n >= 8 && rows >= 4 && rows.checked_mul(n).is_some_and(|c| c <= w.len())
}

/// [`portable::dense_i8`], the same values, with the assembly for the blocks of four rows.
#[inline]
pub(super) fn dense_i8(w: &[i8], x: &[i8], ch: &[Channel], y: &mut [i8], min: i8) {
    let n = x.len();
    let rows = y.len().min(ch.len());
    if !fits(w, n, rows) {
        return portable::dense_i8(w, x, ch, y, min);
    }
    let mut acc = [0i32; CHUNK];
    let whole = n % 8 == 0;
    let mut done = 0;
    while done < rows {
        let k = (rows - done).min(CHUNK);
        let (Some(wc), Some(cc), Some(yc)) = (
            w.get(done * n..(done + k) * n),
            ch.get(done..done + k),
            y.get_mut(done..done + k),
        ) else {
            return;
        };
        let k4 = k - k % 4;
        let mut redo = 0..k;
        if k4 > 0 {
            let out = match whole {
                true => Out::Requant(&mut *yc, min),
                false => Out::Sums,
            };
            // SAFETY: `cc` holds `k >= k4` channels of three `i32` (12 bytes).
            let slow = unsafe { run(wc, x, (cc.as_ptr().cast(), 12), k4, &mut acc, out) };
            if whole && !slow {
                redo = k4..k;
            }
        }
        // The rows the assembly did not finish: the last `k % 4`, or all of them (inputs
        // after `n8`, or a channel off the assembly's path).
        let n8 = n - n % 8;
        let (Some(yr), Some(cr), Some(wr)) = (
            yc.get_mut(redo.clone()),
            cc.get(redo.clone()),
            wc.get(redo.start * n..),
        ) else {
            return;
        };
        for (r, ((yo, &[b, m, s]), row)) in
            yr.iter_mut().zip(cr).zip(wr.chunks_exact(n)).enumerate()
        {
            let a = match acc.get(redo.start + r) {
                Some(&a) if redo.start + r < k4 => portable::dot_i8(
                    a,
                    row.get(n8..).unwrap_or_default(),
                    x.get(n8..).unwrap_or_default(),
                ),
                _ => portable::dot_i8(b, row, x),
            };
            *yo = portable::requantize_narrow(a, m, s as u32, min);
        }
        done += k;
    }
}

/// [`portable::dense_i8_dequant`], the same bits (the same `i32` sums, then the same
/// conversion and product: [`portable::dequantize_narrow`]), with the assembly for the
/// blocks of four rows.
#[inline]
pub(super) fn dense_i8_dequant(w: &[i8], x: &[i8], bias: &[i32], scale: &[f32], y: &mut [f32]) {
    let n = x.len();
    let rows = y.len().min(bias.len()).min(scale.len());
    if !fits(w, n, rows) {
        return portable::dense_i8_dequant(w, x, bias, scale, y);
    }
    let mut acc = [0i32; CHUNK];
    let n8 = n - n % 8;
    let mut done = 0;
    while done < rows {
        let k = (rows - done).min(CHUNK);
        let (Some(wc), Some(bc), Some(sc), Some(yc)) = (
            w.get(done * n..(done + k) * n),
            bias.get(done..done + k),
            scale.get(done..done + k),
            y.get_mut(done..done + k),
        ) else {
            return;
        };
        let k4 = k - k % 4;
        if k4 > 0 {
            // SAFETY: `bc` holds `k >= k4` biases (4 bytes apart).
            unsafe { run(wc, x, (bc.as_ptr(), 4), k4, &mut acc, Out::Sums) };
        }
        for (r, (((yo, &b), &s), row)) in yc
            .iter_mut()
            .zip(bc)
            .zip(sc)
            .zip(wc.chunks_exact(n))
            .enumerate()
        {
            let a = match acc.get(r) {
                Some(&a) if r < k4 => portable::dot_i8(
                    a,
                    row.get(n8..).unwrap_or_default(),
                    x.get(n8..).unwrap_or_default(),
                ),
                _ => portable::dot_i8(b, row, x),
            };
            *yo = portable::dequantize_narrow(a, s);
        }
        done += k;
    }
}
