//! Dense layers and activations over caller-owned slices.
//!
//! The layer above the kernels: the dense layers' forward and backward passes are
//! [`crate::kernels`]' (re-exported here; which kernel runs is the kernels module's
//! choice); this module holds the activations' derivatives and the small vector
//! functions (dot products, norms, softplus, sigmoid). The device (sizes fixed at compile time,
//! `[f32; N]` buffers) and the host (sizes chosen at run time, `Vec`) both call them, so
//! there is one forward and one backward pass to test.
//!
//! Weights are row-major `out x in` (PyTorch's `nn.Linear` layout).
//!
//! Callers guarantee the lengths (they come from a validated [`Shape`](crate::Shape));
//! every function is `O(out * in)`.

pub(crate) use crate::kernels::{dense_backward, dense_forward2};
use crate::{Activation, Real};

impl Activation {
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

/// `1 / ||v||`, or `None` when the norm is zero or not finite.
///
/// Vectors stored at unit norm skip the square root (`hvae train` stores the segmenter's
/// centres so; see [`Model::normalise_centres`]): for
/// `s = ||v||² = 1 + e` with `e² <= 2 EPS / 3`, one Newton step from 1, `1 - e/2`, is
/// within `3e²/8 <= EPS/4` of `1/sqrt(s)`, half an ulp (one ulp after rounding; the
/// square root and reciprocal round twice, 1.5 ulp), while a software `sqrtf` on a
/// Cortex-M4F would cost one costly call per centre in every `segment`.
/// Any other norm takes the square root.
///
/// [`Model::normalise_centres`]: crate::infer::model::Model::normalise_centres
#[inline]
pub(crate) fn inv_norm<T: Real>(v: &[T]) -> Option<T> {
    inv_sqrt(dot(v, v))
}

/// `1 / sqrt(s)` for a squared norm `s`, as [`inv_norm`] (with its fast path near 1).
#[inline]
pub(crate) fn inv_sqrt<T: Real>(s: T) -> Option<T> {
    // Exact for s in [1/2, 2] (Sterbenz), so the test below sees the true distance.
    let e = s - T::one();
    if e * e <= T::EPS * T::of(2.0 / 3.0) {
        return Some(T::one() - e * T::of(0.5));
    }
    let n = s.sqrt();
    if !n.is_finite() || n <= T::EPS * T::EPS {
        return None;
    }
    Some(T::one() / n)
}

/// `(a . a, a . b)` in one pass, each summed in order (the same bits as two [`dot`]s).
/// A plain loop: the segmenter of a latent space of 8 uses [`sq_and_dot8`] instead, with
/// its direction in registers, and this general form is kept small (it is linked into
/// every inference image next to that one).
#[inline]
pub(crate) fn sq_and_dot<T: Real>(a: &[T], b: &[T]) -> (T, T) {
    if a.len() != b.len() {
        return (dot(a, a), dot(a, b));
    }
    let (mut s, mut d) = (T::zero(), T::zero());
    for (&x, &y) in a.iter().zip(b) {
        s += x * x;
        d += x * y;
    }
    (s, d)
}

/// `(s + x . x, d + x . y)` for eight values, summed in order: [`sq_and_dot`] of one
/// chunk, spelled out. A caller that keeps `y` in a local (the segmenter's direction,
/// for a latent space of 8) has it in registers across calls.
#[inline(always)]
pub(crate) fn sq_and_dot8<T: Real>(x: &[T; 8], y: &[T; 8], (mut s, mut d): (T, T)) -> (T, T) {
    s += x[0] * x[0];
    d += x[0] * y[0];
    s += x[1] * x[1];
    d += x[1] * y[1];
    s += x[2] * x[2];
    d += x[2] * y[2];
    s += x[3] * x[3];
    d += x[3] * y[3];
    s += x[4] * x[4];
    d += x[4] * y[4];
    s += x[5] * x[5];
    d += x[5] * y[5];
    s += x[6] * x[6];
    d += x[6] * y[6];
    s += x[7] * x[7];
    d += x[7] * y[7];
    (s, d)
}

/// `(a . a, a . b0, a . b1)` in one pass: [`sq_and_dot`] against two vectors, `a`
/// loaded and squared once (the segmenter's centres against two directions). The same
/// bits as [`sq_and_dot`] on each.
#[inline]
pub(crate) fn sq_and_dot2<T: Real>(a: &[T], b0: &[T], b1: &[T]) -> (T, T, T) {
    if a.len() != b0.len() || a.len() != b1.len() {
        let (s, d0) = sq_and_dot(a, b0);
        return (s, d0, dot(a, b1));
    }
    let (aq, ar) = a.as_chunks::<8>();
    let (bq, br) = b0.as_chunks::<8>();
    let (cq, cr) = b1.as_chunks::<8>();
    let (mut s, mut d, mut e) = (T::zero(), T::zero(), T::zero());
    for ((x, y), z) in aq.iter().zip(bq).zip(cq) {
        (s, d, e) = sq_and_dot2_8(x, y, z, (s, d, e));
    }
    for ((&x, &y), &z) in ar.iter().zip(br).zip(cr) {
        s += x * x;
        d += x * y;
        e += x * z;
    }
    (s, d, e)
}

/// `(s + x . x, d + x . y, e + x . z)` for eight values, summed in order:
/// [`sq_and_dot2`] of one chunk, spelled out (see [`sq_and_dot8`]).
#[inline(always)]
pub(crate) fn sq_and_dot2_8<T: Real>(
    x: &[T; 8],
    y: &[T; 8],
    z: &[T; 8],
    (mut s, mut d, mut e): (T, T, T),
) -> (T, T, T) {
    s += x[0] * x[0];
    d += x[0] * y[0];
    e += x[0] * z[0];
    s += x[1] * x[1];
    d += x[1] * y[1];
    e += x[1] * z[1];
    s += x[2] * x[2];
    d += x[2] * y[2];
    e += x[2] * z[2];
    s += x[3] * x[3];
    d += x[3] * y[3];
    e += x[3] * z[3];
    s += x[4] * x[4];
    d += x[4] * y[4];
    e += x[4] * z[4];
    s += x[5] * x[5];
    d += x[5] * y[5];
    e += x[5] * z[5];
    s += x[6] * x[6];
    d += x[6] * y[6];
    e += x[6] * z[6];
    s += x[7] * x[7];
    d += x[7] * y[7];
    e += x[7] * z[7];
    (s, d, e)
}

/// Dot product, summed in order (eight values per iteration, unrolled; the same bits
/// as the plain loop).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::zero();
    if a.len() == b.len() {
        let (aq, ar) = a.as_chunks::<8>();
        let (bq, br) = b.as_chunks::<8>();
        for (x, y) in aq.iter().zip(bq) {
            s += x[0] * y[0];
            s += x[1] * y[1];
            s += x[2] * y[2];
            s += x[3] * y[3];
            s += x[4] * y[4];
            s += x[5] * y[5];
            s += x[6] * y[6];
            s += x[7] * y[7];
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
    use crate::kernels::dense_forward;

    #[test]
    fn dense_matches_hand_computation() {
        // W = [[1, 2, 3], [4, 5, 6]] (2 x 3, row-major), b = [0.5, -1]
        let w = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [0.5, -1.0];
        let x = [1.0, -1.0, 2.0];
        let mut y = [0.0; 2];
        dense_forward(&w, &b, &x, &mut y, None);
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
    fn inverse_norm_is_within_an_ulp_on_both_paths() {
        // Squared norms around 1 (the fast path, |s - 1| up to ~2^-11.8 in f32), across
        // its edge, and far from it, compared with f64. The fast path is within one ulp
        // (half from the truncated series, half from rounding); the square root path
        // rounds twice (the root, then the reciprocal), within 1.5 ulp.
        let (mut worst_fast, mut worst_root, mut fast) = (0.0f64, 0.0f64, 0);
        for i in -3000i32..=3000 {
            for s in [
                1.0 + i as f32 * 1e-7,
                1.0 + i as f32 * 2e-4,
                2f32.powi(i % 60),
            ] {
                let got = inv_sqrt(s).unwrap() as f64;
                let want = 1.0 / (s as f64).sqrt();
                let up = f32::from_bits((want as f32).to_bits() + 1);
                let err = (got - want).abs() / (up - want as f32) as f64;
                let e = (s - 1.0) as f64;
                if e * e <= f32::EPSILON as f64 * 2.0 / 3.0 {
                    fast += 1;
                    worst_fast = worst_fast.max(err);
                } else {
                    worst_root = worst_root.max(err);
                }
            }
        }
        assert!(worst_fast <= 1.0, "fast path: {worst_fast} ulp");
        assert!(worst_root <= 1.5, "square root path: {worst_root} ulp");
        assert!(fast > 5000, "the fast path was taken {fast} times");
        assert_eq!(inv_sqrt(0.0f32), None);
        assert_eq!(inv_sqrt(f32::NAN), None);
        assert_eq!(inv_sqrt(f32::INFINITY), None);
        assert_eq!(inv_norm(&[3.0f64, 4.0]), Some(0.2));
        // A unit vector's squared norm as f32 computes it takes the fast path.
        let v = [0.6f32, 0.0, -0.8];
        let e = dot(&v, &v) - 1.0;
        assert!(e * e <= f32::EPSILON * 2.0 / 3.0);
    }

    #[test]
    fn fused_square_and_dot_are_plain_dots() {
        // Up to two chunks of eight and every remainder.
        for n in 0..=17 {
            let a: std::vec::Vec<f32> = (0..n).map(|i| 0.3 * i as f32 - 1.1).collect();
            let b: std::vec::Vec<f32> = (0..n).map(|i| 0.7 - 0.2 * i as f32).collect();
            let c: std::vec::Vec<f32> = (0..n).map(|i| 0.11 * (i * i) as f32 - 0.5).collect();
            // The plain loop, summed in order.
            let plain = |u: &[f32], v: &[f32]| u.iter().zip(v).fold(0.0f32, |s, (x, y)| s + x * y);
            assert_eq!(dot(&a, &b).to_bits(), plain(&a, &b).to_bits(), "{n}");
            let (s, d) = sq_and_dot(&a, &b);
            assert_eq!(s.to_bits(), plain(&a, &a).to_bits());
            assert_eq!(d.to_bits(), plain(&a, &b).to_bits());
            if let (Ok(a8), Ok(b8)) = (<&[f32; 8]>::try_from(&a[..]), <&[f32; 8]>::try_from(&b[..]))
            {
                // The segmenter's form for a latent space of 8.
                let (s8, d8) = sq_and_dot8(a8, b8, (0.0, 0.0));
                assert_eq!((s8.to_bits(), d8.to_bits()), (s.to_bits(), d.to_bits()));
                let c8 = <&[f32; 8]>::try_from(&c[..]).unwrap();
                let (s8, d8, e8) = sq_and_dot2_8(a8, b8, c8, (0.0, 0.0, 0.0));
                assert_eq!((s8.to_bits(), d8.to_bits()), (s.to_bits(), d.to_bits()));
                assert_eq!(e8.to_bits(), plain(&a, &c).to_bits());
            }
            let (s2, d0, d1) = sq_and_dot2(&a, &b, &c);
            assert_eq!(s2.to_bits(), s.to_bits());
            assert_eq!(d0.to_bits(), d.to_bits());
            assert_eq!(d1.to_bits(), plain(&a, &c).to_bits());
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
        assert_eq!(crate::infer::model::softmax_from_logits(&mut a, &mut p), 0);
        assert_eq!(p, [1.0, 0.0, 0.0]);
        assert_eq!(a[0], 0.0);
        assert_eq!(a[1], -1000.0);
        assert!(a.iter().all(|v| v.is_finite()));
        // Ordinary ones against the definition (f64).
        let mut a = [0.3f64, -1.2, 2.0, 0.0];
        let mut p = [0.0f64; 4];
        let z: f64 = [0.3f64, -1.2, 2.0, 0.0].iter().map(|v| v.exp()).sum();
        assert_eq!(crate::infer::model::softmax_from_logits(&mut a, &mut p), 2);
        for (i, v) in [0.3f64, -1.2, 2.0, 0.0].iter().enumerate() {
            assert!((p[i] - v.exp() / z).abs() < 1e-15);
            assert!((a[i] - (v - z.ln())).abs() < 1e-15);
        }
        // The label is the first of exactly tied maxima.
        let mut a = [0.5f32, 2.0, -1.0, 2.0];
        let mut p = [0.0f32; 4];
        assert_eq!(crate::infer::model::softmax_from_logits(&mut a, &mut p), 1);
    }
}
