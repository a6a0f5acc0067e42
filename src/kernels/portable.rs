//! The portable dense kernels, in Rust, for every target and every [`Real`]: the
//! reference the target kernels are bit-identical to.

use crate::{Activation, Real};
use nalgebra::{DMatrixViewMut, DVectorView};

/// `y = W x + b`, with `W` row-major `y.len() x x.len()`.
///
/// The forward pass is most of the device's inference time, so it is written for the
/// Cortex-M4F rather than left to nalgebra: eight output rows at a time (eight
/// accumulators in registers, each input loaded once for eight rows) and eight inputs
/// per iteration, spelled out so that the loop is unrolled at any optimisation level
/// (firmware is built for size): on the M4F one `vldr` + `vmla.f32` per weight, one
/// `vldr` per input for eight rows, plus the row pointers and the loop (the counts are
/// in docs/device.md). Rows past the last block of eight are done one at a time. `act`
/// is applied as each output is stored (no second pass). Each output is still the sum
/// `b + w_0 x_0 + w_1 x_1 + ...` in input order, so the result does not depend on the
/// blocking.
///
/// Returns the first output before the activation (zero without outputs). Once a
/// product is NaN or infinite, the sum stays so (`inf + finite = inf`,
/// `inf - inf = NaN`, `NaN` absorbs), and a non-finite `x_j` makes every product
/// `w_ij x_j` non-finite (`0 * inf` is NaN): with finite weights, the first output is
/// non-finite whenever any input is. The encoder checks its input with this one
/// comparison instead of a pass over the input.
#[inline]
pub fn dense_forward<T: Real>(
    w: &[T],
    b: &[T],
    x: &[T],
    y: &mut [T],
    act: Option<Activation>,
) -> T {
    let n = x.len();
    let f = |v: T| match act {
        Some(a) => a.of(v),
        None => v,
    };
    if n == 0 {
        for (yo, &bo) in y.iter_mut().zip(b) {
            *yo = f(bo);
        }
        return b.first().copied().unwrap_or(T::zero());
    }
    // The first output's pre-activation (set by the first block or the first single row).
    let mut first = None;
    let (xq, xr) = x.as_chunks::<8>();
    let mut yb = y.chunks_exact_mut(8);
    let bb = b.chunks_exact(8);
    let wb = w.chunks_exact(8 * n);
    let (b_rest, w_rest) = (bb.remainder(), wb.remainder());
    // 8 rows at a time.
    for ((yq, bq), wq) in (&mut yb).zip(bb).zip(wb) {
        // A block is `8 n` values, so this always splits; checked rather than indexed,
        // so that no panic path is linked in, and with a correct answer either way.
        let Some([w0, w1, w2, w3, w4, w5, w6, w7]) = rows8(wq, n) else {
            first.get_or_insert(dense_rows(wq, bq, x, yq, &f));
            continue;
        };
        let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) =
            (bq[0], bq[1], bq[2], bq[3], bq[4], bq[5], bq[6], bq[7]);
        let (q0, r0) = w0.as_chunks::<8>();
        let (q1, r1) = w1.as_chunks::<8>();
        let (q2, r2) = w2.as_chunks::<8>();
        let (q3, r3) = w3.as_chunks::<8>();
        let (q4, r4) = w4.as_chunks::<8>();
        let (q5, r5) = w5.as_chunks::<8>();
        let (q6, r6) = w6.as_chunks::<8>();
        let (q7, r7) = w7.as_chunks::<8>();
        for ((((((((xs, p0), p1), p2), p3), p4), p5), p6), p7) in xq
            .iter()
            .zip(q0)
            .zip(q1)
            .zip(q2)
            .zip(q3)
            .zip(q4)
            .zip(q5)
            .zip(q6)
            .zip(q7)
        {
            a0 += p0[0] * xs[0];
            a1 += p1[0] * xs[0];
            a2 += p2[0] * xs[0];
            a3 += p3[0] * xs[0];
            a4 += p4[0] * xs[0];
            a5 += p5[0] * xs[0];
            a6 += p6[0] * xs[0];
            a7 += p7[0] * xs[0];
            a0 += p0[1] * xs[1];
            a1 += p1[1] * xs[1];
            a2 += p2[1] * xs[1];
            a3 += p3[1] * xs[1];
            a4 += p4[1] * xs[1];
            a5 += p5[1] * xs[1];
            a6 += p6[1] * xs[1];
            a7 += p7[1] * xs[1];
            a0 += p0[2] * xs[2];
            a1 += p1[2] * xs[2];
            a2 += p2[2] * xs[2];
            a3 += p3[2] * xs[2];
            a4 += p4[2] * xs[2];
            a5 += p5[2] * xs[2];
            a6 += p6[2] * xs[2];
            a7 += p7[2] * xs[2];
            a0 += p0[3] * xs[3];
            a1 += p1[3] * xs[3];
            a2 += p2[3] * xs[3];
            a3 += p3[3] * xs[3];
            a4 += p4[3] * xs[3];
            a5 += p5[3] * xs[3];
            a6 += p6[3] * xs[3];
            a7 += p7[3] * xs[3];
            a0 += p0[4] * xs[4];
            a1 += p1[4] * xs[4];
            a2 += p2[4] * xs[4];
            a3 += p3[4] * xs[4];
            a4 += p4[4] * xs[4];
            a5 += p5[4] * xs[4];
            a6 += p6[4] * xs[4];
            a7 += p7[4] * xs[4];
            a0 += p0[5] * xs[5];
            a1 += p1[5] * xs[5];
            a2 += p2[5] * xs[5];
            a3 += p3[5] * xs[5];
            a4 += p4[5] * xs[5];
            a5 += p5[5] * xs[5];
            a6 += p6[5] * xs[5];
            a7 += p7[5] * xs[5];
            a0 += p0[6] * xs[6];
            a1 += p1[6] * xs[6];
            a2 += p2[6] * xs[6];
            a3 += p3[6] * xs[6];
            a4 += p4[6] * xs[6];
            a5 += p5[6] * xs[6];
            a6 += p6[6] * xs[6];
            a7 += p7[6] * xs[6];
            a0 += p0[7] * xs[7];
            a1 += p1[7] * xs[7];
            a2 += p2[7] * xs[7];
            a3 += p3[7] * xs[7];
            a4 += p4[7] * xs[7];
            a5 += p5[7] * xs[7];
            a6 += p6[7] * xs[7];
            a7 += p7[7] * xs[7];
        }
        for ((((((((&xj, &p0), &p1), &p2), &p3), &p4), &p5), &p6), &p7) in xr
            .iter()
            .zip(r0)
            .zip(r1)
            .zip(r2)
            .zip(r3)
            .zip(r4)
            .zip(r5)
            .zip(r6)
            .zip(r7)
        {
            a0 += p0 * xj;
            a1 += p1 * xj;
            a2 += p2 * xj;
            a3 += p3 * xj;
            a4 += p4 * xj;
            a5 += p5 * xj;
            a6 += p6 * xj;
            a7 += p7 * xj;
        }
        first.get_or_insert(a0);
        yq[0] = f(a0);
        yq[1] = f(a1);
        yq[2] = f(a2);
        yq[3] = f(a3);
        yq[4] = f(a4);
        yq[5] = f(a5);
        yq[6] = f(a6);
        yq[7] = f(a7);
    }
    // The last rows (fewer than eight), one at a time.
    for ((yo, &bo), wr) in yb
        .into_remainder()
        .iter_mut()
        .zip(b_rest)
        .zip(w_rest.chunks_exact(n))
    {
        let mut a = bo;
        let (q, r) = wr.as_chunks::<8>();
        for (xs, p) in xq.iter().zip(q) {
            a += p[0] * xs[0];
            a += p[1] * xs[1];
            a += p[2] * xs[2];
            a += p[3] * xs[3];
            a += p[4] * xs[4];
            a += p[5] * xs[5];
            a += p[6] * xs[6];
            a += p[7] * xs[7];
        }
        for (&xj, &p) in xr.iter().zip(r) {
            a += p * xj;
        }
        first.get_or_insert(a);
        *yo = f(a);
    }
    first.unwrap_or(T::zero())
}

/// `y = f(W x + b)` one row at a time (`W` row-major `y.len() x x.len()`, `x` not
/// empty), each output the same sum in the same order as [`dense_forward`]'s; returns
/// the first output before `f`. The blocked loops' way out for a block that does not
/// split into eight rows, which their blocks' length rules out.
#[cold]
pub(super) fn dense_rows<T: Real>(
    w: &[T],
    b: &[T],
    x: &[T],
    y: &mut [T],
    f: &impl Fn(T) -> T,
) -> T {
    let mut first = None;
    for ((yo, &bo), wr) in y.iter_mut().zip(b).zip(w.chunks(x.len().max(1))) {
        let mut a = bo;
        for (&xj, &p) in x.iter().zip(wr) {
            a += p * xj;
        }
        first.get_or_insert(a);
        *yo = f(a);
    }
    first.unwrap_or(T::zero())
}

/// The eight rows of `n` values of a block `wq` (`8 n` values).
#[inline(always)]
fn rows8<T>(wq: &[T], n: usize) -> Option<[&[T]; 8]> {
    let (w0, rest) = wq.split_at_checked(n)?;
    let (w1, rest) = rest.split_at_checked(n)?;
    let (w2, rest) = rest.split_at_checked(n)?;
    let (w3, rest) = rest.split_at_checked(n)?;
    let (w4, rest) = rest.split_at_checked(n)?;
    let (w5, rest) = rest.split_at_checked(n)?;
    let (w6, w7) = rest.split_at_checked(n)?;
    Some([w0, w1, w2, w3, w4, w5, w6, w7])
}

/// [`dense_forward`] of two inputs at once, `y0 = W x0 + b` and `y1 = W x1 + b`, each
/// weight loaded once for both, so on a Cortex-M4F the loop takes fewer instructions
/// per multiply-add than two calls (eight rows by four inputs by two inputs per
/// iteration: 16 accumulators and 8 input values in registers, two spilled; counts in
/// docs/device.md). Every output is the same sum in the same order as
/// [`dense_forward`]'s, so the results are the same bits. Returns both first outputs
/// before the activation, as [`dense_forward`] does. `x1` is as long as `x0`, `y1` as
/// `y0`.
#[inline]
pub fn dense_forward2<T: Real>(
    w: &[T],
    b: &[T],
    (x0, x1): (&[T], &[T]),
    (y0, y1): (&mut [T], &mut [T]),
    act: Option<Activation>,
) -> (T, T) {
    let n = x0.len();
    let f = |v: T| match act {
        Some(a) => a.of(v),
        None => v,
    };
    if n == 0 || x1.len() != n || y1.len() != y0.len() {
        return (
            dense_forward(w, b, x0, y0, act),
            dense_forward(w, b, x1, y1, act),
        );
    }
    let (xq, xr) = x0.as_chunks::<4>();
    let (zq, zr) = x1.as_chunks::<4>();
    let mut first = None;
    let mut yab = y0.chunks_exact_mut(8);
    let mut ybb = y1.chunks_exact_mut(8);
    let bb = b.chunks_exact(8);
    // Checked (no panic path in the firmware); `8 n` fits whenever `W` does, and
    // otherwise the one-input path serves.
    let Some(block) = n.checked_mul(8).filter(|&c| c > 0) else {
        return (
            dense_forward(w, b, x0, y0, act),
            dense_forward(w, b, x1, y1, act),
        );
    };
    let wb = w.chunks_exact(block);
    let (b_rest, w_rest) = (bb.remainder(), wb.remainder());
    // 8 rows at a time, both inputs.
    for (((ya, yb), bq), wq) in (&mut yab).zip(&mut ybb).zip(bb).zip(wb) {
        // Always splits (see `dense_forward`).
        let Some([w0, w1, w2, w3, w4, w5, w6, w7]) = rows8(wq, n) else {
            let a = dense_rows(wq, bq, x0, ya, &f);
            first.get_or_insert((a, dense_rows(wq, bq, x1, yb, &f)));
            continue;
        };
        let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) =
            (bq[0], bq[1], bq[2], bq[3], bq[4], bq[5], bq[6], bq[7]);
        let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5, mut c6, mut c7) =
            (bq[0], bq[1], bq[2], bq[3], bq[4], bq[5], bq[6], bq[7]);
        let (q0, r0) = w0.as_chunks::<4>();
        let (q1, r1) = w1.as_chunks::<4>();
        let (q2, r2) = w2.as_chunks::<4>();
        let (q3, r3) = w3.as_chunks::<4>();
        let (q4, r4) = w4.as_chunks::<4>();
        let (q5, r5) = w5.as_chunks::<4>();
        let (q6, r6) = w6.as_chunks::<4>();
        let (q7, r7) = w7.as_chunks::<4>();
        for (((((((((xs, zs), p0), p1), p2), p3), p4), p5), p6), p7) in xq
            .iter()
            .zip(zq)
            .zip(q0)
            .zip(q1)
            .zip(q2)
            .zip(q3)
            .zip(q4)
            .zip(q5)
            .zip(q6)
            .zip(q7)
        {
            a0 += p0[0] * xs[0];
            c0 += p0[0] * zs[0];
            a1 += p1[0] * xs[0];
            c1 += p1[0] * zs[0];
            a2 += p2[0] * xs[0];
            c2 += p2[0] * zs[0];
            a3 += p3[0] * xs[0];
            c3 += p3[0] * zs[0];
            a4 += p4[0] * xs[0];
            c4 += p4[0] * zs[0];
            a5 += p5[0] * xs[0];
            c5 += p5[0] * zs[0];
            a6 += p6[0] * xs[0];
            c6 += p6[0] * zs[0];
            a7 += p7[0] * xs[0];
            c7 += p7[0] * zs[0];
            a0 += p0[1] * xs[1];
            c0 += p0[1] * zs[1];
            a1 += p1[1] * xs[1];
            c1 += p1[1] * zs[1];
            a2 += p2[1] * xs[1];
            c2 += p2[1] * zs[1];
            a3 += p3[1] * xs[1];
            c3 += p3[1] * zs[1];
            a4 += p4[1] * xs[1];
            c4 += p4[1] * zs[1];
            a5 += p5[1] * xs[1];
            c5 += p5[1] * zs[1];
            a6 += p6[1] * xs[1];
            c6 += p6[1] * zs[1];
            a7 += p7[1] * xs[1];
            c7 += p7[1] * zs[1];
            a0 += p0[2] * xs[2];
            c0 += p0[2] * zs[2];
            a1 += p1[2] * xs[2];
            c1 += p1[2] * zs[2];
            a2 += p2[2] * xs[2];
            c2 += p2[2] * zs[2];
            a3 += p3[2] * xs[2];
            c3 += p3[2] * zs[2];
            a4 += p4[2] * xs[2];
            c4 += p4[2] * zs[2];
            a5 += p5[2] * xs[2];
            c5 += p5[2] * zs[2];
            a6 += p6[2] * xs[2];
            c6 += p6[2] * zs[2];
            a7 += p7[2] * xs[2];
            c7 += p7[2] * zs[2];
            a0 += p0[3] * xs[3];
            c0 += p0[3] * zs[3];
            a1 += p1[3] * xs[3];
            c1 += p1[3] * zs[3];
            a2 += p2[3] * xs[3];
            c2 += p2[3] * zs[3];
            a3 += p3[3] * xs[3];
            c3 += p3[3] * zs[3];
            a4 += p4[3] * xs[3];
            c4 += p4[3] * zs[3];
            a5 += p5[3] * xs[3];
            c5 += p5[3] * zs[3];
            a6 += p6[3] * xs[3];
            c6 += p6[3] * zs[3];
            a7 += p7[3] * xs[3];
            c7 += p7[3] * zs[3];
        }
        for (((((((((&xj, &zj), &p0), &p1), &p2), &p3), &p4), &p5), &p6), &p7) in xr
            .iter()
            .zip(zr)
            .zip(r0)
            .zip(r1)
            .zip(r2)
            .zip(r3)
            .zip(r4)
            .zip(r5)
            .zip(r6)
            .zip(r7)
        {
            a0 += p0 * xj;
            c0 += p0 * zj;
            a1 += p1 * xj;
            c1 += p1 * zj;
            a2 += p2 * xj;
            c2 += p2 * zj;
            a3 += p3 * xj;
            c3 += p3 * zj;
            a4 += p4 * xj;
            c4 += p4 * zj;
            a5 += p5 * xj;
            c5 += p5 * zj;
            a6 += p6 * xj;
            c6 += p6 * zj;
            a7 += p7 * xj;
            c7 += p7 * zj;
        }
        first.get_or_insert((a0, c0));
        ya[0] = f(a0);
        yb[0] = f(c0);
        ya[1] = f(a1);
        yb[1] = f(c1);
        ya[2] = f(a2);
        yb[2] = f(c2);
        ya[3] = f(a3);
        yb[3] = f(c3);
        ya[4] = f(a4);
        yb[4] = f(c4);
        ya[5] = f(a5);
        yb[5] = f(c5);
        ya[6] = f(a6);
        yb[6] = f(c6);
        ya[7] = f(a7);
        yb[7] = f(c7);
    }
    // The last rows (fewer than eight), one at a time, both inputs.
    for (((ya, yb), &bo), wr) in yab
        .into_remainder()
        .iter_mut()
        .zip(ybb.into_remainder().iter_mut())
        .zip(b_rest)
        .zip(w_rest.chunks_exact(n))
    {
        let (mut a, mut c) = (bo, bo);
        let (q, r) = wr.as_chunks::<4>();
        for ((xs, zs), p) in xq.iter().zip(zq).zip(q) {
            a += p[0] * xs[0];
            c += p[0] * zs[0];
            a += p[1] * xs[1];
            c += p[1] * zs[1];
            a += p[2] * xs[2];
            c += p[2] * zs[2];
            a += p[3] * xs[3];
            c += p[3] * zs[3];
        }
        for ((&xj, &zj), &p) in xr.iter().zip(zr).zip(r) {
            a += p * xj;
            c += p * zj;
        }
        first.get_or_insert((a, c));
        *ya = f(a);
        *yb = f(c);
    }
    first.unwrap_or((T::zero(), T::zero()))
}

/// Outputs summed side by side by [`dense_forward_t`].
const T_BLOCK: usize = 16;

/// [`dense_forward`] with the weights transposed: `wt` is `Wᵀ`, row-major `x.len() x
/// y.len()` (the weights of input `j` to every output, side by side; [`transpose`]
/// makes it). Each output is the same sum in the same order as [`dense_forward`]'s,
/// `b + w_0 x_0 + w_1 x_1 + ...`, so the results are the same bits; what changes is
/// the order in which the outputs are worked on: sixteen at a time, each input's
/// sixteen weights contiguous, so that the sixteen sums advance together in vector
/// registers where the target has them (the row-major kernel reads each output's
/// weights as a row and sums one output per accumulator). Outputs past the last block
/// of sixteen are done one at a time. Returns the first output before the activation
/// (zero without outputs), as [`dense_forward`] does.
#[inline]
pub fn dense_forward_t<T: Real>(
    wt: &[T],
    b: &[T],
    x: &[T],
    y: &mut [T],
    act: Option<Activation>,
) -> T {
    let m = y.len();
    let f = |v: T| match act {
        Some(a) => a.of(v),
        None => v,
    };
    // The rows of `Wᵀ`, one per input (`m` values each).
    let rows = wt.chunks_exact(m.max(1)).zip(x);
    let (yq, yr) = y.as_chunks_mut::<T_BLOCK>();
    let (bq, br) = b.as_chunks::<T_BLOCK>();
    let mut first = None;
    for (blk, (yo, bo)) in yq.iter_mut().zip(bq).enumerate() {
        let mut acc = *bo;
        for (wr, &xj) in rows.clone() {
            // Every row has `m` values, so the block is always there.
            if let Some(wq) = wr.as_chunks::<T_BLOCK>().0.get(blk) {
                for (a, &w) in acc.iter_mut().zip(wq) {
                    *a += w * xj;
                }
            }
        }
        first.get_or_insert(acc[0]);
        for (yv, &a) in yo.iter_mut().zip(&acc) {
            *yv = f(a);
        }
    }
    let done = yq.len() * T_BLOCK;
    for (o, (yo, &bo)) in yr.iter_mut().zip(br).enumerate() {
        let mut a = bo;
        for (wr, &xj) in rows.clone() {
            if let Some(&w) = wr.get(done + o) {
                a += w * xj;
            }
        }
        first.get_or_insert(a);
        *yo = f(a);
    }
    first.unwrap_or(T::zero())
}

/// `wt = Wᵀ` for `W` row-major `n_out x n_in` (`wt` row-major `n_in x n_out`); values
/// past either length are left alone.
pub fn transpose<T: Copy>(w: &[T], n_out: usize, n_in: usize, wt: &mut [T]) {
    for (o, wr) in w.chunks_exact(n_in.max(1)).take(n_out).enumerate() {
        for (t, &v) in wt.iter_mut().skip(o).step_by(n_out.max(1)).zip(wr) {
            *t = v;
        }
    }
}

/// Backward pass of [`dense_forward`] for upstream gradient `dy`:
/// adds `dy xᵀ` into `dw` and `dy` into `db` when given (a frozen layer passes `None`),
/// and writes `Wᵀ dy` into `dx` when given (the first layer needs no input gradient).
/// The parameter gradient is nalgebra's `ger` on a view of the row-major weights
/// (vectorised on the host); the input gradient keeps sixteen values in registers over
/// every output. What they compute, value by value, and what the target kernels repeat: for each output `o`, `dw[o][i] =
/// dw[o][i] + dy[o] x[i]`; `dx[i] = W[0][i] dy[0]`, then `dx[i] = dx[i] + W[o][i] dy[o]`
/// for `o = 1, 2, ...` in order (each product rounded, then the sum; zeros when there
/// are no outputs).
#[inline]
pub fn dense_backward<T: Real>(
    w: &[T],
    x: &[T],
    dy: &[T],
    param_grads: Option<(&mut [T], &mut [T])>,
    dx: Option<&mut [T]>,
) {
    let (n_out, n_in) = (dy.len(), x.len());
    let dyv = DVectorView::from_slice(dy, n_out);
    if let Some((dw, db)) = param_grads {
        let mut dwt = DMatrixViewMut::from_slice(dw, n_in, n_out);
        dwt.ger(T::one(), &DVectorView::from_slice(x, n_in), &dyv, T::one());
        for (g, &d) in db.iter_mut().zip(dy) {
            *g += d;
        }
    }
    if let Some(dx) = dx {
        input_grad(w, dy, dx);
    }
}

/// `dx = Wᵀ dy` as [`dense_backward`] defines it (`dx[i] = W[0][i] dy[0]`, then `dx[i]
/// + W[o][i] dy[o]` for `o = 1, 2, ...`; zeros without outputs), sixteen inputs at a time
/// kept in registers over every output (one store of each `dx` value, not one per output).
fn input_grad<T: Real>(w: &[T], dy: &[T], dx: &mut [T]) {
    let n_in = dx.len();
    let mut rows = w.chunks_exact(n_in.max(1)).zip(dy);
    let Some((w0, &d0)) = rows.next() else {
        dx.fill(T::zero());
        return;
    };
    let (dq, dr) = dx.as_chunks_mut::<T_BLOCK>();
    let (w0q, w0r) = w0.as_chunks::<T_BLOCK>();
    for (blk, (acc, w0b)) in dq.iter_mut().zip(w0q).enumerate() {
        let mut a = [T::zero(); T_BLOCK];
        for (g, &wi) in a.iter_mut().zip(w0b) {
            *g = d0 * wi;
        }
        for (wr, &d) in rows.clone() {
            if let Some(wq) = wr.as_chunks::<T_BLOCK>().0.get(blk) {
                for (g, &wi) in a.iter_mut().zip(wq) {
                    *g += d * wi;
                }
            }
        }
        *acc = a;
    }
    let done = dq.len() * T_BLOCK;
    for (i, (g, &wi)) in dr.iter_mut().zip(w0r).enumerate() {
        let mut a = d0 * wi;
        for (wr, &d) in rows.clone() {
            if let Some(&wj) = wr.get(done + i) {
                a += d * wj;
            }
        }
        *g = a;
    }
}

/// The parameter gradients of a dense layer over a batch, as [`dense_backward`] adds them
/// row after row: `records` holds one record per row, `dy` (`db.len()` values) then the
/// layer's input `x` (`n_in` values), and for each row in order `dw[o][i] = dw[o][i] +
/// dy[o] x[i]` and `db[o] = db[o] + dy[o]`: the same sums in the same order, so the same
/// bits as one [`dense_backward`] per row. Sixteen weights of an output row at a time
/// stay in registers while every row's products are added (one load and one store of
/// each gradient value per batch, not per row). `dw` is row-major `db.len() x n_in`.
pub fn dense_grads_rows<T: Real>(records: &[T], n_in: usize, dw: &mut [T], db: &mut [T]) {
    let n_out = db.len();
    let rec = n_out + n_in;
    if rec == 0 || n_in == 0 {
        for (dy, _) in records.chunks_exact(rec.max(1)).map(|r| r.split_at(n_out)) {
            for (g, &d) in db.iter_mut().zip(dy) {
                *g += d;
            }
        }
        return;
    }
    let rows = || records.chunks_exact(rec).map(|r| r.split_at(n_out));
    // Two output rows at a time (sixteen weights of each: eight sums in flight), then
    // the last one alone.
    let mut pairs = dw.chunks_exact_mut(2 * n_in);
    for (pair, dwp) in (&mut pairs).enumerate() {
        let (w0, w1) = dwp.split_at_mut(n_in);
        let (o0, o1) = (2 * pair, 2 * pair + 1);
        let ((q0, r0), (q1, r1)) = (w0.as_chunks_mut::<T_BLOCK>(), w1.as_chunks_mut::<T_BLOCK>());
        for (blk, (acc0, acc1)) in q0.iter_mut().zip(q1.iter_mut()).enumerate() {
            let (mut a0, mut a1) = (*acc0, *acc1);
            for (dy, x) in rows() {
                let (Some(&d0), Some(&d1)) = (dy.get(o0), dy.get(o1)) else {
                    continue;
                };
                let Some(xq) = x.as_chunks::<T_BLOCK>().0.get(blk) else {
                    continue;
                };
                for ((g0, g1), &xi) in a0.iter_mut().zip(a1.iter_mut()).zip(xq) {
                    *g0 += d0 * xi;
                    *g1 += d1 * xi;
                }
            }
            (*acc0, *acc1) = (a0, a1);
        }
        let done = q0.len() * T_BLOCK;
        for (o, rest) in [(o0, r0), (o1, r1)] {
            grads_tail(rows(), o, done, rest);
        }
    }
    let last = n_out - n_out % 2;
    if let Some(w) = pairs.into_remainder().get_mut(..n_in) {
        grads_tail(rows(), last, 0, w);
    }
    for (dy, _) in rows() {
        for (g, &d) in db.iter_mut().zip(dy) {
            *g += d;
        }
    }
}

/// [`dense_grads_rows`] for the weights `g` of output `o` from input `from` on, one at
/// a time, over the rows `(dy, x)`.
fn grads_tail<'r, T: Real + 'r>(
    rows: impl Iterator<Item = (&'r [T], &'r [T])> + Clone,
    o: usize,
    from: usize,
    g: &mut [T],
) {
    for (i, gi) in g.iter_mut().enumerate() {
        for (dy, x) in rows.clone() {
            if let (Some(&d), Some(&xi)) = (dy.get(o), x.get(from + i)) {
                *gi += d * xi;
            }
        }
    }
}

/// One output channel of an int8 layer: `[bias, multiplier, shift]`.
///
/// `bias` is at the accumulator's scale (`s_w s_x`); the output is
/// [`requantize`]`(acc, multiplier, shift, min)`.
pub type Channel = [i32; 3];

/// The requantisation of an int32 accumulator to int8: `round(acc * mult / 2^shift)`,
/// clamped to `[min, 127]`.
///
/// Exactly: `p = acc * mult` in `i64` (at most `2^62` in magnitude, no overflow),
/// `q = (p + 2^(shift - 1)) >> shift` with an arithmetic shift (round half up, towards
/// `+inf`), then the clamp. `shift` is `1..=62` (the int8 blob and
/// [`QuantModel::new`](crate::infer::quant::QuantModel::new) refuse others; outside that
/// range the shifts wrap modulo 64 instead of panicking). `min` is `-127`, or `0` for a
/// layer followed by a ReLU (the ReLU folded into the clamp). The same integer
/// operations on every target.
#[inline(always)]
pub fn requantize(acc: i32, mult: i32, shift: u32, min: i8) -> i8 {
    let p = i64::from(acc) * i64::from(mult);
    let half = 1i64.wrapping_shl(shift.wrapping_sub(1));
    let q = p.wrapping_add(half).wrapping_shr(shift);
    q.max(i64::from(min)).min(127) as i8
}

/// [`requantize`] with 32-bit multiplies only (the Cortex-M0 has no 64-bit product):
/// the same value for every input.
///
/// For `mult >= 0` and `shift` in `33..=62` (what [`quantize_multiplier`] gives; other
/// channels take [`requantize`]): the high word `hi = floor(acc mult / 2^32)` from the
/// four products of the 16-bit halves (`acc = a_h 2^16 + a_l`, `mult = m_h 2^16 + m_l`,
/// `a_l` and `m_l` unsigned): `hi = a_h m_h + floor((a_h m_l + a_l m_h + floor(a_l m_l /
/// 2^16)) / 2^16)`, every term and partial sum inside `i32` or `u32`; then `q =
/// ((hi >> (shift - 33)) + 1) >> 1`, which is `floor((p + 2^(shift - 1)) / 2^shift)`
/// for `p = acc mult` (the low word cannot change it: `shift > 32`), and the clamp.
///
/// [`quantize_multiplier`]: crate::infer::quant::quantize_multiplier
#[inline(always)]
pub fn requantize_narrow(acc: i32, mult: i32, shift: u32, min: i8) -> i8 {
    if mult < 0 || !(33..=62).contains(&shift) {
        return requantize(acc, mult, shift, min);
    }
    let (al, ah) = (acc as u32 & 0xFFFF, acc >> 16);
    let (ml, mh) = (mult as u32 & 0xFFFF, mult >> 16);
    // |a_h m_l| < 2^31; a_l m_h + (a_l m_l >> 16) <= 2^31 - 2^15; a_h m_h < 2^30; the
    // low half of a_h m_l plus that sum is below 2^32 (unsigned).
    let ll = al * ml;
    let m1 = ah * ml as i32;
    let m2 = al * mh as u32 + (ll >> 16);
    let carry = ((m1 as u32 & 0xFFFF) + m2) >> 16;
    let hi = ah * mh + (m1 >> 16) + carry as i32;
    let q = ((hi >> (shift - 33)) + 1) >> 1;
    q.max(i32::from(min)).min(127) as i8
}

/// `acc as f32 * scale`, the same bits, with 32-bit integer operations on the common
/// path (soft-float targets: the Cortex-M0's dequantised head).
///
/// For `0 < |acc| < 2^24` (so `acc as f32` is exact) and a normal `scale`: the 24-bit
/// significands `m_a` (`|acc|` shifted up to 24 bits) and `m_s`, their 48-bit product
/// from four 16-bit partial products, rounded to 24 bits to nearest, ties to even (IEEE's
/// rounding of the product), the exponent from `scale`'s and `|acc|`'s length; a result
/// that would overflow, and every other input, take `acc as f32 * scale` itself. No
/// result on the path is subnormal (`|acc| >= 1` and `scale` normal).
#[inline]
pub fn dequantize_narrow(acc: i32, scale: f32) -> f32 {
    let sb = scale.to_bits();
    let es = (sb >> 23) & 0xFF;
    let a = acc.unsigned_abs();
    if a == 0 || a >= 1 << 24 || es == 0 || es == 0xFF {
        return acc as f32 * scale;
    }
    // |acc| = m_a 2^(8 - lz), scale = ±m_s 2^(es - 150).
    let lz = a.leading_zeros();
    let ma = a << (lz - 8);
    let ms = (sb & 0x7F_FFFF) | 0x80_0000;
    let (xh, xl) = (ma >> 16, ma & 0xFFFF);
    let (sh, sl) = (ms >> 16, ms & 0xFFFF);
    // P = m_a m_s = hi 2^32 + lo, in [2^46, 2^48).
    let ll = xl * sl;
    let mid = xl * sh + xh * sl;
    let lo = ll.wrapping_add(mid << 16);
    let hi = xh * sh + (mid >> 16) + u32::from(lo < ll);
    let top = hi >> 15;
    let (mant, rem, half) = if top != 0 {
        ((hi << 8) | (lo >> 24), lo & 0xFF_FFFF, 0x80_0000)
    } else {
        ((hi << 9) | (lo >> 23), lo & 0x7F_FFFF, 0x40_0000)
    };
    let up = rem > half || (rem == half && mant & 1 == 1);
    // The biased exponent of `mant` (in [2^23, 2^24]; 2^24 carries into it): at least 1.
    let e = es + top + 31 - lz;
    let bits = ((e - 1) << 23) + mant + u32::from(up);
    if bits >= 0x7F80_0000 {
        return acc as f32 * scale;
    }
    f32::from_bits(bits | ((acc as u32 ^ sb) & 0x8000_0000))
}

/// `bias + sum_j w_j x_j` in `i32`, in input order, with wrapping additions (the int8
/// export keeps `|bias| <= 2^30` and at most `2^16` inputs, so no sum wraps; see
/// docs/design.md). Four products per iteration.
#[inline(always)]
pub fn dot_i8(bias: i32, w: &[i8], x: &[i8]) -> i32 {
    let mut a = bias;
    let (wq, wr) = w.as_chunks::<4>();
    let (xq, xr) = x.as_chunks::<4>();
    for (p, q) in wq.iter().zip(xq) {
        let s = i32::from(p[0]) * i32::from(q[0])
            + i32::from(p[1]) * i32::from(q[1])
            + i32::from(p[2]) * i32::from(q[2])
            + i32::from(p[3]) * i32::from(q[3]);
        a = a.wrapping_add(s);
    }
    for (&p, &q) in wr.iter().zip(xr) {
        a = a.wrapping_add(i32::from(p) * i32::from(q));
    }
    a
}

/// An int8 dense layer: `y_i = requantize(b_i + W_i . x, m_i, s_i, min)` for each
/// output `i`, `W` row-major `y.len() x x.len()` (symmetric int8 weights), `ch` one
/// [`Channel`] per output; `min` is `0` for a ReLU layer, `-127` otherwise. No floating
/// point. A product of two int8 values is at most `2^14` in magnitude and four of them
/// are summed before the accumulator takes them, so the partial sums never wrap.
#[inline]
pub fn dense_i8(w: &[i8], x: &[i8], ch: &[Channel], y: &mut [i8], min: i8) {
    let n = x.len().max(1);
    for ((yo, &[b, m, s]), wr) in y.iter_mut().zip(ch).zip(w.chunks_exact(n)) {
        let acc = dot_i8(b, wr, x);
        *yo = requantize(acc, m, s as u32, min);
    }
}

/// An int8 dense layer whose outputs stay real: `y_i = (b_i + W_i . x) * scale_i`, the
/// `i32` accumulator converted to `f32` (round to nearest) and multiplied by the
/// channel's scale (`s_w,i s_x`) in `f32`. The direction head of the int8 encoder,
/// whose output is normalised to unit length anyway.
#[inline]
pub fn dense_i8_dequant(w: &[i8], x: &[i8], bias: &[i32], scale: &[f32], y: &mut [f32]) {
    let n = x.len().max(1);
    for (((yo, &b), &sc), wr) in y.iter_mut().zip(bias).zip(scale).zip(w.chunks_exact(n)) {
        *yo = dot_i8(b, wr, x) as f32 * sc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantize_narrow_is_the_product() {
        let mut seed = 0x2545_f491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let accs = [
            0,
            1,
            -1,
            2,
            3,
            (1 << 24) - 1,
            -(1 << 24) + 1,
            1 << 24,
            -(1 << 24),
            12345,
            i32::MAX,
            i32::MIN,
        ];
        let scales = [
            1.0f32,
            -1.0,
            0.5,
            1.0e-3,
            3.0e5,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1.0e-40,
            f32::MAX,
            f32::MAX / 2.0,
            1.0e30,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0e-38,
            f32::from_bits(0x3F80_0001),
            f32::from_bits(0x3FFF_FFFF),
        ];
        let same = |a: i32, s: f32| {
            let (got, want) = (dequantize_narrow(a, s), a as f32 * s);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{a} {s:e}: {got:e} {want:e}"
            );
        };
        for &a in &accs {
            for &s in &scales {
                same(a, s);
            }
        }
        for _ in 0..3_000_000 {
            let r = next();
            let a = next() as i32 >> (r % 32);
            let s = f32::from_bits(next());
            same(a, s);
            // Scales of the int8 export's range, and ties (few significand bits).
            let s = f32::from_bits((next() & 0x807F_FFFF) | (((r >> 8) % 60 + 90) << 23));
            same(a, s);
            same(a & !0xFF, f32::from_bits(s.to_bits() & !0xFFF));
        }
    }

    #[test]
    fn requantize_narrow_is_requantize() {
        // Extremes and random accumulators, multipliers and shifts (every shift 0..=63,
        // negative multipliers: the fallback), every clamp.
        let mut seed = 0x9e37_79b9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let edges = [
            i32::MIN,
            i32::MIN + 1,
            -65537,
            -65536,
            -65535,
            -1,
            0,
            1,
            65535,
            65536,
            i32::MAX,
        ];
        let mults = [
            0,
            1,
            0xFFFF,
            0x1_0000,
            1 << 30,
            (1 << 30) + 12345,
            i32::MAX,
            -1,
            i32::MIN,
        ];
        let mut n = 0;
        for &acc in &edges {
            for &m in &mults {
                for s in 0..64 {
                    for min in [0i8, -127, -128, 5, 127] {
                        assert_eq!(
                            requantize_narrow(acc, m, s, min),
                            requantize(acc, m, s, min),
                            "{acc} {m} {s} {min}"
                        );
                        n += 1;
                    }
                }
            }
        }
        for _ in 0..2_000_000 {
            let r = next();
            let acc = next() as i32 >> (r % 32);
            let m = if r & 0x100 == 0 {
                (next() >> 1) as i32
            } else {
                next() as i32
            };
            let s = if r & 0x200 == 0 {
                33 + (r >> 10) % 30
            } else {
                r >> 26
            };
            let min = [0i8, -127][(r >> 9) as usize & 1];
            assert_eq!(
                requantize_narrow(acc, m, s, min),
                requantize(acc, m, s, min),
                "{acc} {m} {s} {min}"
            );
            n += 1;
        }
        assert!(n > 2_000_000);
    }

    #[test]
    fn batch_gradients_are_the_row_by_row_sums() {
        // `dense_grads_rows` over a batch must give the bits of one `dense_backward`
        // per row, and `dense_backward`'s input gradient the sequential sums, for widths
        // on and off the blocks of sixteen.
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for (n_out, n_in, rows) in [
            (1, 1, 1),
            (3, 17, 5),
            (32, 64, 12),
            (64, 32, 7),
            (17, 33, 3),
        ] {
            let start: std::vec::Vec<f32> = (0..n_out * n_in + n_out).map(|_| next()).collect();
            let records: std::vec::Vec<f32> = (0..rows * (n_out + n_in)).map(|_| next()).collect();
            let (mut dw, mut db) = (
                start[..n_out * n_in].to_vec(),
                start[n_out * n_in..].to_vec(),
            );
            let w = std::vec![0f32; n_out * n_in];
            for r in records.chunks_exact(n_out + n_in) {
                let (dy, x) = r.split_at(n_out);
                dense_backward(&w, x, dy, Some((&mut dw, &mut db)), None);
            }
            // The input gradient: `W[0][i] dy[0]`, then `+ W[o][i] dy[o]` in order.
            let wr: std::vec::Vec<f32> = (0..n_out * n_in).map(|_| next()).collect();
            let dy: std::vec::Vec<f32> = (0..n_out).map(|_| next()).collect();
            let want: std::vec::Vec<f32> = (0..n_in)
                .map(|i| {
                    let mut a = wr[i] * dy[0];
                    for o in 1..n_out {
                        a += wr[o * n_in + i] * dy[o];
                    }
                    a
                })
                .collect();
            let mut dx = std::vec![f32::NAN; n_in];
            dense_backward(&wr, &want, &dy, None, Some(&mut dx));
            assert_eq!(
                dx.iter().map(|f| f.to_bits()).collect::<std::vec::Vec<_>>(),
                want.iter()
                    .map(|f| f.to_bits())
                    .collect::<std::vec::Vec<_>>(),
                "input gradient {n_out}x{n_in}"
            );
            let (mut dw2, mut db2) = (
                start[..n_out * n_in].to_vec(),
                start[n_out * n_in..].to_vec(),
            );
            dense_grads_rows(&records, n_in, &mut dw2, &mut db2);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<std::vec::Vec<_>>();
            assert_eq!(bits(&dw2), bits(&dw), "{n_out}x{n_in}, {rows} rows");
            assert_eq!(bits(&db2), bits(&db), "{n_out}x{n_in}, {rows} rows");
            assert_ne!(bits(&db2), bits(&start[n_out * n_in..]));
        }
    }

    #[test]
    fn blocked_dense_is_the_sequential_sum_for_every_size() {
        // Every mix of full blocks and remainders (rows and inputs): each output must
        // be bit-identical to `b + w_0 x_0 + w_1 x_1 + ...` summed in input order.
        let mut seed = 0x2545_f491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for n_out in (1..=17).chain([31, 32, 33, 48]) {
            for n_in in 0..=19 {
                let w: std::vec::Vec<f32> = (0..n_out * n_in).map(|_| next()).collect();
                let b: std::vec::Vec<f32> = (0..n_out).map(|_| next()).collect();
                let x: std::vec::Vec<f32> = (0..n_in).map(|_| next()).collect();
                let z: std::vec::Vec<f32> = (0..n_in).map(|_| next()).collect();
                let sequential = |x: &[f32]| -> std::vec::Vec<f32> {
                    (0..n_out)
                        .map(|o| {
                            let mut want = b[o];
                            for i in 0..n_in {
                                want += w[o * n_in + i] * x[i];
                            }
                            want
                        })
                        .collect()
                };
                let (want_x, want_z) = (sequential(&x), sequential(&z));
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<std::vec::Vec<_>>();
                let mut y = std::vec![f32::NAN; n_out];
                let first = dense_forward(&w, &b, &x, &mut y, None);
                assert_eq!(bits(&y), bits(&want_x), "{n_out}x{n_in}");
                assert_eq!(first.to_bits(), want_x[0].to_bits());
                // Two inputs at once: the same sums.
                let (mut y0, mut y1) = (std::vec![f32::NAN; n_out], std::vec![f32::NAN; n_out]);
                let (f0, f1) = dense_forward2(&w, &b, (&x, &z), (&mut y0, &mut y1), None);
                assert_eq!(bits(&y0), bits(&want_x), "pair {n_out}x{n_in}");
                assert_eq!(bits(&y1), bits(&want_z), "pair {n_out}x{n_in}");
                assert_eq!(
                    (f0.to_bits(), f1.to_bits()),
                    (want_x[0].to_bits(), want_z[0].to_bits())
                );
                // The transposed weights: the same sums.
                let mut wt = std::vec![f32::NAN; n_out * n_in];
                transpose(&w, n_out, n_in, &mut wt);
                let mut yt = std::vec![f32::NAN; n_out];
                let first_t = dense_forward_t(&wt, &b, &x, &mut yt, None);
                assert_eq!(bits(&yt), bits(&want_x), "transposed {n_out}x{n_in}");
                assert_eq!(first_t.to_bits(), want_x[0].to_bits());
                // The fused activation is the activation of the same sums; the first
                // output is returned before it.
                for act in [Activation::Relu, Activation::Tanh] {
                    let act_of =
                        |v: &[f32]| v.iter().map(|&f| act.of(f)).collect::<std::vec::Vec<_>>();
                    let mut ya = std::vec![f32::NAN; n_out];
                    let first = dense_forward(&w, &b, &x, &mut ya, Some(act));
                    assert_eq!(bits(&ya), bits(&act_of(&want_x)));
                    assert_eq!(first.to_bits(), want_x[0].to_bits());
                    let mut yt = std::vec![f32::NAN; n_out];
                    let first_t = dense_forward_t(&wt, &b, &x, &mut yt, Some(act));
                    assert_eq!(bits(&yt), bits(&act_of(&want_x)));
                    assert_eq!(first_t.to_bits(), want_x[0].to_bits());
                    let (mut y0, mut y1) = (std::vec![f32::NAN; n_out], std::vec![f32::NAN; n_out]);
                    let (f0, _) = dense_forward2(&w, &b, (&x, &z), (&mut y0, &mut y1), Some(act));
                    assert_eq!(bits(&y0), bits(&act_of(&want_x)));
                    assert_eq!(bits(&y1), bits(&act_of(&want_z)));
                    assert_eq!(f0.to_bits(), want_x[0].to_bits());
                }
            }
        }
    }
}
