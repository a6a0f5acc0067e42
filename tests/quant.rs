//! The int8 model: hand-computed requantisation and kernel examples, the integer
//! encoder against an independent scalar reference (bit for bit), refusals of bad
//! parameters, and agreement with the `f32` model it was quantised from.

use hvae::infer::quant::{
    self, calibration_len, float_len, int_len, quantize, quantize_multiplier, requantize,
    weight_len, Calibration, QuantLayout, QuantModel,
};
use hvae::kernels::portable::{dense_i8, dense_i8_dequant, dot_i8};
use hvae::{Activation, InferError, Model, QuantError, Shape};

type VecModel<T> = Model<T, Vec<T>>;

fn fresh(shape: Shape, rng: &mut Xoshiro256PlusPlus) -> VecModel<f32> {
    let mut m = Model::new(shape, vec![0.0f32; shape.param_len()]).unwrap();
    m.init(rng);
    m
}
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

#[test]
fn requantize_by_hand() {
    let half = 1 << 30; // 2^30 / 2^31 = 0.5
    assert_eq!(requantize(100, half, 31, -127), 50);
    // 1.5 and -1.5: halves round up (towards +inf).
    assert_eq!(requantize(3, half, 31, -127), 2);
    assert_eq!(requantize(-3, half, 31, -127), -1);
    // 2.5 -> 3, -2.5 -> -2.
    assert_eq!(requantize(5, half, 31, -127), 3);
    assert_eq!(requantize(-5, half, 31, -127), -2);
    // Clamps: 1000 * 1 -> 127; the ReLU's clamp at 0; symmetric at -127.
    assert_eq!(requantize(1000, half, 30, -127), 127);
    assert_eq!(requantize(-5, half, 30, 0), 0);
    assert_eq!(requantize(-1000, half, 30, -127), -127);
    // 0.75 * 2^-3: 40 * 0.09375 = 3.75 -> 4.
    assert_eq!(requantize(40, 3 << 29, 34, -127), 4);
    // The extremes do not overflow i64.
    assert_eq!(requantize(i32::MAX, i32::MAX, 62, -127), 1);
    assert_eq!(requantize(i32::MIN, i32::MAX, 62, -127), -1);
}

#[test]
fn multiplier_by_hand() {
    assert_eq!(quantize_multiplier(0.5), Some((1 << 30, 31)));
    assert_eq!(quantize_multiplier(1.0), Some((1 << 30, 30)));
    assert_eq!(quantize_multiplier(0.75), Some((3 << 29, 31)));
    // 0.1 = 0.8 * 2^-3: m = round(0.8 * 2^31) = 1717986918, s = 34.
    assert_eq!(quantize_multiplier(0.1), Some((1_717_986_918, 34)));
    // 2^-40: the shift stops at 62 and the multiplier gives up 8 bits.
    assert_eq!(quantize_multiplier(libm_pow2(-40)), Some((1 << 22, 62)));
    assert_eq!(quantize_multiplier(0.0), None);
    assert_eq!(quantize_multiplier(-1.0), None);
    assert_eq!(quantize_multiplier(f64::NAN), None);
    assert_eq!(quantize_multiplier(libm_pow2(30)), None);
    // Every result represents the real within half a unit of the multiplier.
    for k in 1..2000 {
        let r = k as f64 * 0.000_731;
        let (m, s) = quantize_multiplier(r).unwrap();
        assert!((1 << 30..=i32::MAX).contains(&m), "{r}");
        let back = m as f64 / libm_pow2(s as i32);
        assert!((back - r).abs() <= 0.5 / libm_pow2(s as i32), "{r}");
    }
}

fn libm_pow2(e: i32) -> f64 {
    2f64.powi(e)
}

#[test]
fn dense_i8_by_hand() {
    let w: [i8; 6] = [1, 2, 3, -127, 0, 127];
    let x: [i8; 3] = [10, -20, 30];
    assert_eq!(dot_i8(5, &w[..3], &x), 5 + 10 - 40 + 90);
    let ch = [[5, 1 << 30, 31], [0, 1 << 30, 31]];
    let mut y = [0i8; 2];
    // 65 / 2 = 32.5 -> 33; 2540 / 2 = 1270 -> 127.
    dense_i8(&w, &x, &ch, &mut y, 0);
    assert_eq!(y, [33, 127]);
    // A negative accumulator: ReLU clamp vs symmetric clamp.
    let ch = [[-201, 1 << 30, 31], [-5000, 1 << 30, 31]];
    dense_i8(&w, &x, &ch, &mut y, 0);
    assert_eq!(y, [0, 0]);
    dense_i8(&w, &x, &ch, &mut y, -127);
    // (60 - 201) / 2 = -70.5 -> -70; (2540 - 5000) / 2 = -1230 -> -127.
    assert_eq!(y, [-70, -127]);
    let mut r = [0f32; 2];
    dense_i8_dequant(&w, &x, &[5, 0], &[0.5, 0.25], &mut r);
    assert_eq!(r, [32.5, 635.0]);
    // Longer than one block of four, with a remainder.
    let w: Vec<i8> = (0..11).map(|i| (i * 23 % 255 - 127) as i8).collect();
    let x: Vec<i8> = (0..11).map(|i| (i * 37 % 255 - 127) as i8).collect();
    let want: i32 = w
        .iter()
        .zip(&x)
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum::<i32>()
        - 7;
    assert_eq!(dot_i8(-7, &w, &x), want);
}

fn trained_like(shape: Shape, seed: u64) -> VecModel<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut m = fresh(shape, &mut rng);
    // Non-zero biases and a normalisation, so that every piece is exercised.
    let mut r = Xoshiro256PlusPlus::seed_from_u64(seed + 1);
    for t in shape.tensors() {
        use hvae::shape::TensorId as Id;
        if matches!(t.id, Id::EncoderBias(_) | Id::MuBias | Id::KappaWeight) {
            for v in &mut m.params_mut()[t.range()] {
                *v = hvae::dist::rng::standard_normal::<f32, _>(&mut r) * 0.1;
            }
        }
    }
    let d = shape.input;
    let off: Vec<f32> = (0..d).map(|i| (i % 5) as f32 * 0.1).collect();
    let sc: Vec<f32> = (0..d).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect();
    m.set_normalisation(&off, &sc).unwrap();
    m.normalise_centres().unwrap();
    m
}

fn data(d: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut r = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n * d)
        .map(|_| hvae::dist::rng::standard_normal::<f32, _>(&mut r))
        .collect()
}

type Owned = QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>;

/// The three zeroed vectors of `s`'s int8 form.
fn vectors(s: &Shape) -> (Vec<i8>, Vec<i32>, Vec<f32>) {
    (
        vec![0; weight_len(s)],
        vec![0; int_len(s)],
        vec![0.0; float_len(s)],
    )
}

fn quantised(m: &VecModel<f32>, xs: &[f32]) -> Owned {
    let s = *m.shape();
    let mut cal = Calibration::new(&s, vec![0f32; calibration_len(&s)]).unwrap();
    let mut work = vec![0f32; s.work_len()];
    for x in xs.chunks_exact(s.input) {
        cal.observe(m, x, &mut work).unwrap();
    }
    let (mut w, mut i, mut f) = vectors(&s);
    quantize(m, &cal, &mut w, &mut i, &mut f).unwrap();
    QuantModel::new(s, w, i, f).unwrap()
}

/// The int8 encoder written out plainly, from the documented formulas (indices as in
/// the formulas, not the kernels' iterators).
#[allow(clippy::needless_range_loop)]
fn reference(q: &Owned, x: &[f32]) -> (Vec<f32>, f32) {
    let s = *q.shape();
    let at = QuantLayout::of(&s);
    let f = q.floats();
    let mut h: Vec<i8> = (0..s.input)
        .map(|i| {
            let v = (x[i] - f[at.offset + i]) * f[at.input_mult + i];
            libm::roundf(v.clamp(-127.0, 127.0)) as i8
        })
        .collect();
    let (mut wo, mut io) = (0, 0);
    for l in 0..s.depth() {
        let (o, n) = s.encoder_layer(l);
        h = (0..o)
            .map(|r| {
                let [b, m, sh] = [q.ints()[io], q.ints()[io + 1], q.ints()[io + 2]];
                io += 3;
                let mut acc = b as i64;
                for c in 0..n {
                    acc += q.weights()[wo + r * n + c] as i64 * h[c] as i64;
                }
                let p = acc * m as i64;
                let v = (p + (1i64 << (sh - 1))) >> sh;
                match s.activation {
                    Activation::Relu => v.clamp(0, 127) as i8,
                    // The layer's table, after every weight, indexed by the clamped
                    // pre-activation.
                    Activation::Tanh => {
                        let table = s.encoder_macs() + 128 * l;
                        q.weights()[table + v.clamp(0, 127) as usize]
                    }
                }
            })
            .collect();
        wo += o * n;
    }
    let (m, n) = (s.latent, s.last_hidden());
    let mut mu: Vec<f32> = (0..m)
        .map(|r| {
            let mut acc = q.ints()[io + r] as i64;
            for c in 0..n {
                acc += q.weights()[wo + r * n + c] as i64 * h[c] as i64;
            }
            acc as i32 as f32 * f[at.mu_scales + r]
        })
        .collect();
    let norm = mu.iter().map(|v| v * v).sum::<f32>().sqrt();
    for v in &mut mu {
        *v /= norm;
    }
    let mut pre = 0f32;
    for c in 0..n {
        pre += f[at.kappa + c] * h[c] as f32;
    }
    pre += f[at.kappa + n];
    let sp = if pre > 0.0 {
        pre + (-pre).exp().ln_1p()
    } else {
        pre.exp().ln_1p()
    };
    (mu, (sp + 1.0).min(1.0e4))
}

#[test]
fn int8_encoder_matches_the_written_out_reference_bit_for_bit() {
    let tanh = Activation::Tanh;
    for (shape, seed) in [
        (Shape::new(64, &[32], 8, 10), 1),
        (Shape::new(13, &[9, 6], 3, 4), 2),
        (Shape::new(5, &[7, 3, 4, 2], 2, 3), 3),
        (Shape::new(64, &[32], 8, 10).with_activation(tanh), 4),
        (Shape::new(13, &[9, 6], 3, 4).with_activation(tanh), 5),
        (Shape::new(5, &[7, 3, 4, 2], 2, 3).with_activation(tanh), 6),
    ] {
        let m = trained_like(shape, seed);
        let xs = data(shape.input, 200, seed + 10);
        let q = quantised(&m, &xs);
        let mut work = vec![0f32; q.work_len()];
        for x in xs.chunks_exact(shape.input).take(50) {
            let e = q.encode(x, &mut work).unwrap();
            let (mu, kappa) = reference(&q, x);
            let got: Vec<u32> = e.mu.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = mu.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{shape:?}");
            assert_eq!(e.kappa.to_bits(), kappa.to_bits(), "{shape:?}");
        }
    }
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn int8_model_follows_the_f32_model() {
    follows(Shape::new(64, &[32], 8, 10));
    follows(Shape::new(64, &[32], 8, 10).with_activation(Activation::Tanh));
}

fn follows(shape: Shape) {
    let m = trained_like(shape, 7);
    let xs = data(64, 500, 8);
    let q = quantised(&m, &xs);
    // One workspace serves both models.
    let mut w32 = vec![0f32; shape.work_len()];
    let mut w8 = vec![0f32; shape.work_len()];
    assert!(q.work_len() <= shape.work_len());
    let (mut worst, mut sum) = (1f32, 0f32);
    for x in xs.chunks_exact(64) {
        let a = m.segment(x, &mut w32).unwrap();
        let b = q.segment(x, &mut w8).unwrap();
        let c = cos(a.mu, b.mu);
        worst = worst.min(c);
        sum += c;
        assert!(
            (a.kappa - b.kappa).abs() <= 0.05 * a.kappa,
            "{} {}",
            a.kappa,
            b.kappa
        );
        let pa: f32 = a.probs.iter().sum();
        let pb: f32 = b.probs.iter().sum();
        assert!((pa - pb).abs() < 1e-5);
    }
    // The label alone: the segment's label and cosine.
    for x in xs.chunks_exact(64) {
        let s = q.segment(x, &mut w8).unwrap();
        let (label, cosine) = (s.label, s.cosine.to_bits());
        let l = q.label(x, &mut w8).unwrap();
        assert_eq!((l.0, l.1.to_bits()), (label, cosine));
    }
    assert!(worst >= 0.99, "worst cosine {worst}");
    assert!(sum / 500.0 >= 0.999, "mean cosine {}", sum / 500.0);
}

#[test]
fn calibration_takes_the_maxima() {
    let shape = Shape::new(3, &[2], 2, 1);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut m = fresh(shape, &mut rng);
    let p = m.params_mut();
    // Layer weights (2 x 3) and biases (2), then the direction head's (2 x 2, 2).
    let w0 = shape.encoder_offset();
    p[w0..w0 + 14].copy_from_slice(&[
        1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 1.0, 0.1, 0.2,
    ]);
    assert_eq!(calibration_len(&shape), 5);
    assert_eq!(
        Calibration::new(&shape, vec![0f32; 4]).unwrap_err(),
        QuantError::Length
    );
    let mut cal = Calibration::new(&shape, vec![7f32; 5]).unwrap();
    assert_eq!(cal.samples(), 0);
    let mut work = vec![0f32; shape.work_len()];
    cal.observe(&m, &[2.0, -3.0, 1.0], &mut work).unwrap();
    cal.observe(&m, &[-6.0, 1.0, 0.0], &mut work).unwrap();
    assert_eq!(
        cal.observe(&m, &[f32::NAN, 1.0, 0.0], &mut work),
        Err(InferError::NonFiniteInput)
    );
    assert_eq!(cal.samples(), 2);
    // Per feature max |x|: 6, 3, 1; the layer: relu(x0 + 0.5) -> 2.5, relu(-x1) -> 3.
    assert_eq!(cal.maxima(), &[6.0, 3.0, 1.0, 2.5, 3.0]);
    // A model of another size.
    let other = fresh(Shape::new(4, &[2], 2, 1), &mut rng);
    assert_eq!(
        cal.observe(&other, &[1.0; 4], &mut vec![0f32; 400]),
        Err(InferError::BufferLength)
    );
    // The quantisation by hand: the input scales 6/127, 3/127, 1/127 fold into the
    // weights, so row 0 ([1, 0, 0]) becomes [6/127, 0, 0]: s_w = 6/127^2, W_q = [127, 0,
    // 0], b_q = round(0.5 / s_w) = round(1344.08) = 1344, multiplier s_w / (2.5/127) =
    // 6/317.5; row 1 ([0, -1, 0]): W_q = [0, -127, 0], b_q = 0, multiplier 3/381 = 1/127.
    let (mut w, mut n, mut f) = vectors(&shape);
    quantize(&m, &cal, &mut w, &mut n, &mut f).unwrap();
    assert_eq!(&w[..6], &[127, 0, 0, 0, -127, 0]);
    assert_eq!((n[0], n[3]), (1344, 0));
    let real = |k: usize| n[k] as f64 / 2f64.powi(n[k + 1]);
    assert!((real(1) - 6.0 / 317.5).abs() < 1e-8, "{}", real(1));
    assert!((real(4) - 1.0 / 127.0).abs() < 1e-8, "{}", real(4));
    let at = QuantLayout::of(&shape);
    // r_i = scale_i / s_i with the identity normalisation.
    assert_eq!(
        &f[at.input_mult..at.input_mult + 3],
        &[127.0 / 6.0, 127.0 / 3.0, 127.0]
    );
    let q = QuantModel::new(shape, w, n, f).unwrap();
    assert_eq!(q.activation_scales().len(), 5);
    // The same weights with tanh: the layer's outputs reach tanh(5.5) (x0 + 0.5 at -6)
    // and tanh(3); beyond tanh(4) a table resolves nothing more, so the layer's
    // pre-activation grid is P = 4/63 (63 steps above its zero at 64) and its output's
    // tanh(4)/127, one for both units. Each row's multiplier is s_w / P, its bias
    // round((b + 64 P) / s_w); the table (after the 6 + 4 weights) is
    // T[p] = round(127 tanh((p - 64) P) / tanh(4)).
    let t = Model::new(shape.with_activation(Activation::Tanh), m.params().to_vec()).unwrap();
    let s = *t.shape();
    let mut tc = Calibration::new(&s, vec![0f32; 5]).unwrap();
    for x in [[2.0, -3.0, 1.0], [-6.0, 1.0, 0.0]] {
        tc.observe(&t, &x, &mut work).unwrap();
    }
    assert_eq!(tc.maxima()[3..], [5.5f32.tanh(), 3f32.tanh()]);
    assert_eq!(weight_len(&s), 10 + 128);
    let (mut w, mut n, mut f) = vectors(&s);
    quantize(&t, &tc, &mut w, &mut n, &mut f).unwrap();
    assert_eq!(&w[..6], &[127, 0, 0, 0, -127, 0]);
    let p = 4.0 / 63.0;
    for (k, sw, b) in [(0, 6.0 / 127.0 / 127.0, 0.5), (3, 3.0 / 127.0 / 127.0, 0.0)] {
        let mult = n[k + 1] as f64 / 2f64.powi(n[k + 2]);
        assert!((mult - sw / p).abs() < 1e-8, "{k}: {mult}");
        let bias = ((b + 64.0 * p) / sw).round() as i32;
        assert!((n[k] - bias).abs() <= 1, "{k}: {} {bias}", n[k]);
    }
    assert_eq!((n[0], n[3]), (12267, 21847));
    let table = &w[10..];
    let want = |q: usize| (127.0 * ((q as f64 - 64.0) * p).tanh() / 4f64.tanh()).round();
    for (q, &t) in table.iter().enumerate() {
        assert_eq!(t, want(q).clamp(-127.0, 127.0) as i8, "{q}");
    }
    assert_eq!(
        (table[0], table[64], table[65], table[127]),
        (-127, 0, 8, 127)
    );
    let out = 4f32.tanh() / 127.0;
    for &v in &f[at.act_scales + 3..at.act_scales + 5] {
        assert!((v - out).abs() <= 1e-9, "{v} {out}");
    }
    assert!(QuantModel::new(s, w, n, f).is_ok());
    // An empty calibration.
    let r = quantize(
        &m,
        &Calibration::new(&shape, vec![0f32; 5]).unwrap(),
        &mut vec![0; weight_len(&shape)],
        &mut vec![0; int_len(&shape)],
        &mut vec![0.0; float_len(&shape)],
    );
    assert_eq!(r, Err(QuantError::NotCalibrated));
}

#[test]
fn new_refuses_bad_parameters() {
    let shape = Shape::new(13, &[9, 6], 3, 4);
    let m = trained_like(shape, 3);
    let q = quantised(&m, &data(13, 50, 4));
    let (w, i, f) = (q.weights().to_vec(), q.ints().to_vec(), q.floats().to_vec());
    let new =
        |w: &[i8], i: &[i32], f: &[f32]| QuantModel::new(shape, w.to_vec(), i.to_vec(), f.to_vec());
    assert!(new(&w, &i, &f).is_ok());
    let mut b = w.clone();
    b[17] = -128;
    assert_eq!(new(&b, &i, &f), Err(QuantError::WeightRange { index: 17 }));
    // Channels are [bias, multiplier, shift]: shifts 0 and 63, a negative multiplier,
    // and a bias of 63 (fine).
    for (k, v) in [(2, 0), (5, 63), (4, -1), (6, 63)] {
        let mut b = i.clone();
        b[k] = v;
        if k == 6 {
            assert!(new(&w, &b, &f).is_ok());
        } else {
            assert_eq!(
                new(&w, &b, &f),
                Err(QuantError::Channel {
                    index: (k / 3 * 3) as u32
                })
            );
        }
    }
    let mut b = i.clone();
    let last = b.len() - 1; // a direction bias
    b[last] = (1 << 30) + 1;
    assert_eq!(
        new(&w, &b, &f),
        Err(QuantError::Channel { index: last as u32 })
    );
    let at = QuantLayout::of(&shape);
    for k in [
        0,
        at.weight_scales,
        at.act_scales,
        at.mu_scales,
        at.kappa,
        at.segmenter,
    ] {
        let mut b = f.clone();
        b[k] = f32::NAN;
        assert_eq!(
            new(&w, &i, &b),
            Err(QuantError::NonFinite { index: k as u32 })
        );
    }
    for k in [at.weight_scales, at.act_scales + 1, at.mu_scales] {
        let mut b = f.clone();
        b[k] = 0.0;
        assert_eq!(
            new(&w, &i, &b),
            Err(QuantError::NonFinite { index: k as u32 })
        );
    }
    // A zero input multiplier (a constant feature) is fine.
    let mut b = f.clone();
    b[at.input_mult] = 0.0;
    assert!(new(&w, &i, &b).is_ok());
    assert_eq!(new(&w[1..], &i, &f), Err(QuantError::Length));
    assert_eq!(new(&w, &i[1..], &f), Err(QuantError::Length));
    assert_eq!(new(&w, &i, &f[1..]), Err(QuantError::Length));
    // A tanh model of the same sizes: a table per hidden layer is missing.
    assert_eq!(
        QuantModel::new(shape.with_activation(Activation::Tanh), w, i, f),
        Err(QuantError::Length)
    );
}

#[test]
fn bad_input_and_buffers_are_typed_errors() {
    let shape = Shape::new(13, &[9, 6], 3, 4);
    let m = trained_like(shape, 3);
    let q = quantised(&m, &data(13, 50, 4));
    let x = data(13, 1, 5);
    let mut work = vec![0f32; q.work_len()];
    assert!(q.segment(&x, &mut work).is_ok());
    let with = |i: usize, v: f32, x: &[f32]| {
        let mut x = x.to_vec();
        x[i] = v;
        x
    };
    let (inf, nan) = (with(4, f32::INFINITY, &x), with(4, f32::NAN, &x));
    // A finite input whose normalised value is not: NonFinite (the first bad feature's
    // error, before a non-finite input).
    let mut floats = q.floats().to_vec();
    floats[QuantLayout::of(&shape).input_mult + 2] = 4.0;
    let wide = QuantModel::new(shape, q.weights(), q.ints(), &floats[..]).unwrap();
    let huge = with(2, 1.0e38, &x);
    let huge_nan = with(7, f32::NAN, &huge);
    let huge_inf = with(1, f32::INFINITY, &huge_nan);
    use InferError::{BufferLength, InputLength, NonFinite, NonFiniteInput};
    // Each call's error, and the one it must be.
    let refused = [
        (q.segment(&x, &mut work[1..]).err(), BufferLength),
        (q.encode(&x[1..], &mut work).err(), InputLength),
        (q.encode(&inf, &mut work).err(), NonFiniteInput),
        (q.segment(&nan, &mut work).err(), NonFiniteInput),
        (q.label(&nan, &mut work).err(), NonFiniteInput),
        (wide.encode(&huge, &mut work).err(), NonFinite),
        (wide.label(&huge_nan, &mut work).err(), NonFinite),
        (wide.segment(&huge_inf, &mut work).err(), NonFiniteInput),
    ];
    for (i, (got, want)) in refused.into_iter().enumerate() {
        assert_eq!(got, Some(want), "call {i}");
    }
    // Far outside the calibrated range: clamped, not wrapped.
    let big: Vec<f32> = x.iter().map(|v| v * 1.0e6).collect();
    let e = q.encode(&big, &mut work).unwrap();
    assert!((e.mu.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
    // The borrowed form is the same model.
    let b = QuantModel::new(shape, q.weights(), q.ints(), q.floats()).unwrap();
    let mut w2 = vec![0f32; q.work_len()];
    assert_eq!(
        b.segment(&x, &mut w2).unwrap().label,
        q.segment(&x, &mut work).unwrap().label
    );
    let _ = quant::QMAX;
}
