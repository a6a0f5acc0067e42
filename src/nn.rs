//! Dense layers and activations over caller-owned slices.
//!
//! These kernels are the only matrix code in the crate: the device (sizes fixed at
//! compile time, `[f32; N]` buffers) and the host (sizes chosen at run time, `Vec`)
//! both call them, so there is one forward and one backward pass to test.
//!
//! Weights are row-major `out x in` (PyTorch's `nn.Linear` layout), so the forward pass
//! is a run of contiguous dot products: a plain loop, blocked and unrolled by hand,
//! which takes 40% fewer instructions than nalgebra's `gemv` on a Cortex-M4F whatever
//! the optimisation level (measured by the firmware's `bench`). The backward products
//! are nalgebra's `ger`/`gemv` on views of the same weights (faster on the host).
//!
//! Callers guarantee the lengths (they come from a validated [`Shape`](crate::Shape));
//! every function is `O(out * in)`.

use crate::{Activation, Real};
use nalgebra::{DMatrixView, DMatrixViewMut, DVectorView, DVectorViewMut};

/// `y = W x + b`, with `W` row-major `y.len() x x.len()`.
///
/// The forward pass is most of the device's inference time, so it is written for the
/// Cortex-M4F rather than left to nalgebra: four output rows at a time (four
/// accumulators in registers, each input loaded once for four rows) and four inputs per
/// iteration, spelled out so that the loop is unrolled at any optimisation level
/// (firmware is built for size). That is 43 instructions per 16 multiply-adds on the
/// M4F (`vldr` + `vmla.f32`). Each output is still the sum `b + w_0 x_0 + w_1 x_1 + ...`
/// in input order, so the result does not depend on the blocking.
#[inline]
pub(crate) fn dense_forward<T: Real>(w: &[T], b: &[T], x: &[T], y: &mut [T]) {
    let n = x.len();
    if n == 0 {
        y.copy_from_slice(b);
        return;
    }
    let (xq, xr) = x.as_chunks::<4>();
    let mut y4 = y.chunks_exact_mut(4);
    let b4 = b.chunks_exact(4);
    let w4 = w.chunks_exact(4 * n);
    let (b_rest, w_rest) = (b4.remainder(), w4.remainder());
    // Four rows at a time.
    for ((yq, bq), wq) in (&mut y4).zip(b4).zip(w4) {
        let (w0, rest) = wq.split_at(n);
        let (w1, rest) = rest.split_at(n);
        let (w2, w3) = rest.split_at(n);
        let (mut a0, mut a1, mut a2, mut a3) = (bq[0], bq[1], bq[2], bq[3]);
        let (q0, r0) = w0.as_chunks::<4>();
        let (q1, r1) = w1.as_chunks::<4>();
        let (q2, r2) = w2.as_chunks::<4>();
        let (q3, r3) = w3.as_chunks::<4>();
        for ((((xs, p0), p1), p2), p3) in xq.iter().zip(q0).zip(q1).zip(q2).zip(q3) {
            a0 += p0[0] * xs[0];
            a1 += p1[0] * xs[0];
            a2 += p2[0] * xs[0];
            a3 += p3[0] * xs[0];
            a0 += p0[1] * xs[1];
            a1 += p1[1] * xs[1];
            a2 += p2[1] * xs[1];
            a3 += p3[1] * xs[1];
            a0 += p0[2] * xs[2];
            a1 += p1[2] * xs[2];
            a2 += p2[2] * xs[2];
            a3 += p3[2] * xs[2];
            a0 += p0[3] * xs[3];
            a1 += p1[3] * xs[3];
            a2 += p2[3] * xs[3];
            a3 += p3[3] * xs[3];
        }
        for ((((&xj, &p0), &p1), &p2), &p3) in xr.iter().zip(r0).zip(r1).zip(r2).zip(r3) {
            a0 += p0 * xj;
            a1 += p1 * xj;
            a2 += p2 * xj;
            a3 += p3 * xj;
        }
        yq[0] = a0;
        yq[1] = a1;
        yq[2] = a2;
        yq[3] = a3;
    }
    // The last rows (fewer than four), one at a time.
    for ((yo, &bo), wr) in y4
        .into_remainder()
        .iter_mut()
        .zip(b_rest)
        .zip(w_rest.chunks_exact(n))
    {
        let mut a = bo;
        let (q, r) = wr.as_chunks::<4>();
        for (xs, p) in xq.iter().zip(q) {
            a += p[0] * xs[0];
            a += p[1] * xs[1];
            a += p[2] * xs[2];
            a += p[3] * xs[3];
        }
        for (&xj, &p) in xr.iter().zip(r) {
            a += p * xj;
        }
        *yo = a;
    }
}

/// Backward pass of [`dense_forward`] for upstream gradient `dy`:
/// adds `dy xᵀ` into `dw` and `dy` into `db` when given (a frozen layer passes `None`),
/// and writes `Wᵀ dy` into `dx` when given (the first layer needs no input gradient).
/// nalgebra's `ger` and `gemv` on views of the row-major weights: on the host they are
/// vectorised and beat plain `axpy` loops by 40% in training; on the device the
/// backward pass is a smaller share of a training step than the forward pass.
#[inline]
pub(crate) fn dense_backward<T: Real>(
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
        let wt = DMatrixView::from_slice(w, n_in, n_out);
        let mut dxv = DVectorViewMut::from_slice(dx, n_in);
        dxv.gemv(T::one(), &wt, &dyv, T::zero());
    }
}

impl Activation {
    /// Applies the nonlinearity in place.
    #[inline]
    pub(crate) fn apply<T: Real>(self, y: &mut [T]) {
        match self {
            Activation::Relu => {
                // Written so that NaN maps to 0 as well.
                for v in y {
                    *v = if *v > T::zero() { *v } else { T::zero() };
                }
            }
            Activation::Tanh => {
                for v in y {
                    *v = v.tanh();
                }
            }
        }
    }

    /// Multiplies `dy` in place by the derivative, written in terms of the layer's
    /// *output* `y` (so the pre-activation need not be kept): ReLU `y > 0`, tanh `1 - y²`.
    #[inline]
    pub(crate) fn backward<T: Real>(self, y: &[T], dy: &mut [T]) {
        match self {
            Activation::Relu => {
                for (d, &v) in dy.iter_mut().zip(y) {
                    *d = if v > T::zero() { *d } else { T::zero() };
                }
            }
            Activation::Tanh => {
                for (d, &v) in dy.iter_mut().zip(y) {
                    *d *= T::one() - v * v;
                }
            }
        }
    }
}

/// `ln(1 + e^x)` without overflow.
#[inline]
pub(crate) fn softplus<T: Real>(x: T) -> T {
    if x > T::zero() {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// `1 / (1 + e^-x)` without overflow.
#[inline]
pub(crate) fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Dot product, summed in order (four values per iteration, unrolled at any
/// optimisation level; the same bits as the plain loop).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let (aq, ar) = a.as_chunks::<4>();
    let (bq, br) = b.as_chunks::<4>();
    let mut s = T::zero();
    if aq.len() == bq.len() {
        for (x, y) in aq.iter().zip(bq) {
            s += x[0] * y[0];
            s += x[1] * y[1];
            s += x[2] * y[2];
            s += x[3] * y[3];
        }
        for (&x, &y) in ar.iter().zip(br) {
            s += x * y;
        }
    } else {
        // Different lengths: the shorter one decides, as with `zip`.
        for (&x, &y) in a.iter().zip(b) {
            s += x * y;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matches_hand_computation() {
        // W = [[1, 2, 3], [4, 5, 6]] (2 x 3, row-major), b = [0.5, -1]
        let w = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [0.5, -1.0];
        let x = [1.0, -1.0, 2.0];
        let mut y = [0.0; 2];
        dense_forward(&w, &b, &x, &mut y);
        assert_eq!(y, [1.0 - 2.0 + 6.0 + 0.5, 4.0 - 5.0 + 12.0 - 1.0]);

        let dy = [1.0, 2.0];
        let mut dw = [0.0; 6];
        let mut db = [0.0; 2];
        let mut dx = [0.0; 3];
        dense_backward(&w, &x, &dy, Some((&mut dw, &mut db)), Some(&mut dx));
        assert_eq!(dw, [1.0, -1.0, 2.0, 2.0, -2.0, 4.0]);
        assert_eq!(db, [1.0, 2.0]);
        assert_eq!(dx, [1.0 + 8.0, 2.0 + 10.0, 3.0 + 12.0]);
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
        for n_out in 1..=9 {
            for n_in in 0..=11 {
                let w: std::vec::Vec<f32> = (0..n_out * n_in).map(|_| next()).collect();
                let b: std::vec::Vec<f32> = (0..n_out).map(|_| next()).collect();
                let x: std::vec::Vec<f32> = (0..n_in).map(|_| next()).collect();
                let mut y = std::vec![f32::NAN; n_out];
                dense_forward(&w, &b, &x, &mut y);
                for o in 0..n_out {
                    let mut want = b[o];
                    for i in 0..n_in {
                        want += w[o * n_in + i] * x[i];
                    }
                    assert_eq!(y[o].to_bits(), want.to_bits(), "{n_out}x{n_in} row {o}");
                }
            }
        }
    }

    #[test]
    fn stable_scalar_functions() {
        assert!((softplus(0.0f64) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(softplus(1000.0f32), 1000.0);
        assert_eq!(softplus(-1000.0f32), 0.0);
        assert_eq!(sigmoid(-1000.0f32), 0.0);
        assert_eq!(sigmoid(1000.0f32), 1.0);
        // Softmax of extreme logits: finite, exact where it can be.
        let mut a = [1000.0f32, 0.0, -1000.0];
        let mut p = [0.0f32; 3];
        crate::model::softmax_from_logits(&mut a, &mut p);
        assert_eq!(p, [1.0, 0.0, 0.0]);
        assert_eq!(a[0], 0.0);
        assert_eq!(a[1], -1000.0);
        assert!(a.iter().all(|v| v.is_finite()));
        // Ordinary ones against the definition (f64).
        let mut a = [0.3f64, -1.2, 2.0, 0.0];
        let mut p = [0.0f64; 4];
        let z: f64 = [0.3f64, -1.2, 2.0, 0.0].iter().map(|v| v.exp()).sum();
        crate::model::softmax_from_logits(&mut a, &mut p);
        for (i, v) in [0.3f64, -1.2, 2.0, 0.0].iter().enumerate() {
            assert!((p[i] - v.exp() / z).abs() < 1e-15);
            assert!((a[i] - (v - z.ln())).abs() < 1e-15);
        }
    }
}
