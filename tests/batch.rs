//! `Model::segment_batch` / `encode_batch`: every sample gets the same bits as
//! `segment` / `encode` on it alone, whether the samples go through the encoder two at
//! a time (two workspaces) or one at a time, and a bad sample fails alone.

use hvae::infer::model::{InferError, Model};
use hvae::Shape;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The digits model's sizes, and odd ones that leave remainders everywhere in the
/// blocked kernels (13 inputs: a chunk of 8 and 5 alone, three of 4 and 1 in pairs; 19
/// rows: two blocks of 8 and 3; 11; M = 5).
const SHAPES: [Shape; 3] = [
    Shape::new(64, &[32], 8, 10),
    Shape::new(13, &[19, 11], 5, 3),
    Shape::new(3, &[2], 2, 2),
];

fn model(s: Shape, seed: u64) -> Model<f32, Vec<f32>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut m = Model::new(s, vec![0.0f32; s.param_len()]).unwrap();
    m.init(&mut rng);
    // A non-trivial input normalisation.
    let d = s.input;
    let off: Vec<f32> = (0..d).map(|i| 0.1 * i as f32 - 0.4).collect();
    let sc: Vec<f32> = (0..d).map(|i| 0.5 + 0.03 * i as f32).collect();
    m.set_normalisation(&off, &sc).unwrap();
    m
}

fn samples(s: &Shape, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n * s.input)
        .map(|_| 3.0 * hvae::dist::rng::standard_normal::<f32, _>(&mut rng))
        .collect()
}

/// One sample's segment output as bits (label, probabilities, cosine, mu, kappa).
fn seg_bits(r: Result<hvae::Segment<'_, f32>, InferError>) -> Result<Vec<u32>, InferError> {
    r.map(|s| {
        let mut v = vec![s.label as u32, s.cosine.to_bits(), s.kappa.to_bits()];
        v.extend(s.probs.iter().chain(s.mu).map(|x| x.to_bits()));
        v
    })
}

fn enc_bits(r: Result<hvae::Encoding<'_, f32>, InferError>) -> Result<Vec<u32>, InferError> {
    r.map(|e| {
        let mut v = vec![e.kappa.to_bits()];
        v.extend(e.mu.iter().map(|x| x.to_bits()));
        v
    })
}

#[test]
fn batches_give_the_bits_of_single_calls() {
    for (si, s) in SHAPES.iter().enumerate() {
        let m = model(*s, 10 + si as u64);
        let wl = s.work_len();
        assert_eq!(m.work_len(), wl);
        for n in 0..=7 {
            let mut xs = samples(s, n, 100 + n as u64);
            // Sample 2 (when there is one) is bad: NaN; sample 5 has an infinity.
            if n > 2 {
                xs[2 * s.input + s.input / 2] = f32::NAN;
            }
            if n > 5 {
                xs[5 * s.input] = f32::NEG_INFINITY;
            }
            let mut single = vec![0.0f32; wl];
            let want_seg: Vec<_> = xs
                .chunks(s.input)
                .map(|x| seg_bits(m.segment(x, &mut single)))
                .collect();
            let want_enc: Vec<_> = xs
                .chunks(s.input)
                .map(|x| enc_bits(m.encode(x, &mut single)))
                .collect();
            for bad in [2, 5] {
                if bad < n {
                    assert_eq!(want_seg[bad], Err(InferError::NonFiniteInput));
                }
            }
            // One workspace (one at a time), two (pairs), and more than two.
            for work_len in [wl, 2 * wl, 2 * wl + 7] {
                let mut work = vec![0.0f32; work_len];
                let mut got = Vec::new();
                m.segment_batch(&xs, &mut work, |i, r| got.push((i, seg_bits(r))))
                    .unwrap();
                let idx: Vec<usize> = got.iter().map(|g| g.0).collect();
                assert_eq!(idx, (0..n).collect::<Vec<_>>(), "order, shape {si}");
                for (i, (_, g)) in got.iter().enumerate() {
                    assert_eq!(
                        *g, want_seg[i],
                        "shape {si}, n {n}, sample {i}, work {work_len}"
                    );
                }
                let mut got = Vec::new();
                m.encode_batch(&xs, &mut work, |i, r| got.push((i, enc_bits(r))))
                    .unwrap();
                for (i, (j, g)) in got.iter().enumerate() {
                    assert_eq!(i, *j);
                    assert_eq!(
                        *g, want_enc[i],
                        "shape {si}, n {n}, sample {i}, work {work_len}"
                    );
                }
                assert_eq!(got.len(), n);
            }
        }
    }
}

#[test]
fn batch_errors_change_nothing_and_call_nothing() {
    let s = SHAPES[0];
    let m = model(s, 1);
    let before = m.clone();
    let xs = samples(&s, 3, 2);
    let mut work = vec![0.0f32; 2 * s.work_len()];
    let mut calls = 0;
    // Not a whole number of samples.
    assert_eq!(
        m.segment_batch(&xs[..s.input * 2 + 1], &mut work, |_, _| calls += 1),
        Err(InferError::InputLength)
    );
    // A workspace shorter than one sample's.
    assert_eq!(
        m.encode_batch(&xs, &mut work[..s.work_len() - 1], |_, _| calls += 1),
        Err(InferError::BufferLength)
    );
    // Segmenter parameters of the wrong length.
    assert_eq!(
        m.segment_batch_with(&[0.0; 3], &xs, &mut work, |_, _| calls += 1),
        Err(InferError::BufferLength)
    );
    assert_eq!(calls, 0);
    assert_eq!(m, before);
}
