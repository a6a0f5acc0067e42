//! Dense layers and activations over nalgebra views of caller-owned slices.
//!
//! These kernels are the only matrix code in the crate: the device (sizes fixed at
//! compile time, `[f32; N]` buffers) and the host (sizes chosen at run time, `Vec`)
//! both call them, so there is one forward and one backward pass to test.
//!
//! Weights are row-major `out x in` (PyTorch's `nn.Linear` layout). nalgebra is
//! column-major, so a weight is viewed as the `in x out` matrix `Wᵀ`: the forward pass
//! `y = W x` is `Wᵀᵀ x`, a run of contiguous dot products (`gemv_tr`), which is the
//! cheapest form on a Cortex-M (one accumulator in a register per output).
//!
//! Callers guarantee the lengths (they come from a validated [`Shape`](crate::Shape));
//! every function is `O(out * in)`.

use crate::{Activation, Real};
use nalgebra::{DMatrixView, DMatrixViewMut, DVectorView, DVectorViewMut};

/// `y = W x + b`, with `W` row-major `y.len() x x.len()`.
#[inline]
pub(crate) fn dense_forward<T: Real>(w: &[T], b: &[T], x: &[T], y: &mut [T]) {
    let (n_out, n_in) = (y.len(), x.len());
    let wt = DMatrixView::from_slice(w, n_in, n_out);
    let xv = DVectorView::from_slice(x, n_in);
    let mut yv = DVectorViewMut::from_slice(y, n_out);
    yv.copy_from(&DVectorView::from_slice(b, n_out));
    yv.gemv_tr(T::one(), &wt, &xv, T::one());
}

/// Backward pass of [`dense_forward`] for upstream gradient `dy`:
/// adds `dy xᵀ` into `dw` and `dy` into `db` when given (a frozen layer passes `None`),
/// and writes `Wᵀ dy` into `dx` when given (the first layer needs no input gradient).
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

/// Dot product.
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::zero();
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// Log-softmax of `a` into `out` (same length), returning nothing; stable for any
/// finite input (the maximum is subtracted first).
#[inline]
pub(crate) fn log_softmax<T: Real>(a: &[T], out: &mut [T]) {
    let Some(&first) = a.first() else { return };
    let mut mx = first;
    for &v in a {
        if v > mx {
            mx = v;
        }
    }
    let mut s = T::zero();
    for &v in a {
        s += (v - mx).exp();
    }
    let lse = mx + s.ln();
    for (o, &v) in out.iter_mut().zip(a) {
        *o = v - lse;
    }
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
    fn stable_scalar_functions() {
        assert!((softplus(0.0f64) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(softplus(1000.0f32), 1000.0);
        assert_eq!(softplus(-1000.0f32), 0.0);
        assert_eq!(sigmoid(-1000.0f32), 0.0);
        assert_eq!(sigmoid(1000.0f32), 1.0);
        let mut out = [0.0f32; 3];
        log_softmax(&[1000.0f32, 0.0, -1000.0], &mut out);
        assert_eq!(out[0], 0.0);
        assert!(out.iter().all(|v| !v.is_nan()));
    }
}
