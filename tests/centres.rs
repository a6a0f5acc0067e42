//! `Model::normalise_centres`: the segmenter only uses the centres' directions, so
//! rescaling them to unit norm keeps its outputs (to rounding) while inference skips a
//! square root per centre; a zero centre is refused and nothing changes.

use hvae::infer::model::{InferError, Model};
use hvae::shape::{Shape, TensorId};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const S: Shape = Shape::new(6, &[8], 4, 5);

fn model() -> Model<f32, Vec<f32>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut m = Model::new(S, vec![0.0f32; S.param_len()]).unwrap();
    m.init(&mut rng);
    // Centres of very different lengths (init draws them from a normal).
    let c = S.find(TensorId::Centres).unwrap().range();
    for (i, v) in m.params_mut()[c].iter_mut().enumerate() {
        *v *= [0.01f32, 3.0, 250.0, 1.0, 0.5][i / S.latent];
    }
    m
}

#[test]
fn unit_centres_keep_the_segmenter_outputs() {
    let mut m = model();
    let before = m.clone();
    m.normalise_centres().unwrap();
    let c = S.find(TensorId::Centres).unwrap().range();
    for centre in m.params()[c.clone()].chunks(S.latent) {
        let s: f32 = centre.iter().map(|v| v * v).sum();
        // Inside the fast path of the inverse norm: (s - 1)^2 <= 2 EPS / 3.
        assert!((s - 1.0).powi(2) <= f32::EPSILON * 2.0 / 3.0, "{s}");
    }
    // Nothing but the centres changed.
    let (p0, p1) = (before.params(), m.params());
    assert_eq!(p0[..c.start], p1[..c.start]);
    assert_eq!(p0[c.end..], p1[c.end..]);
    let mut w0 = vec![0.0f32; S.work_len()];
    let mut w1 = vec![0.0f32; S.work_len()];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let mut worst = 0.0f32;
    for _ in 0..200 {
        let x: Vec<f32> = (0..S.input)
            .map(|_| hvae::dist::rng::standard_normal::<f32, _>(&mut rng))
            .collect();
        let a = before.segment(&x, &mut w0).unwrap();
        let b = m.segment(&x, &mut w1).unwrap();
        assert_eq!(a.label, b.label);
        assert_eq!(a.mu, b.mu);
        for (p, q) in a.probs.iter().zip(b.probs) {
            worst = worst.max((p - q).abs());
        }
        assert!((a.cosine - b.cosine).abs() <= 2.0 * f32::EPSILON);
    }
    // kappa_s = 10: a cosine error of an ulp or two moves a probability by ~1e-6.
    assert!(worst <= 4e-6, "largest probability change {worst}");
}

#[test]
fn a_zero_centre_is_refused_and_nothing_changes() {
    let mut m = model();
    let c = S.find(TensorId::Centres).unwrap().range();
    m.params_mut()[c.start + S.latent..c.start + 2 * S.latent].fill(0.0);
    let before = m.params().to_vec();
    assert_eq!(m.normalise_centres(), Err(InferError::ZeroCentre));
    assert_eq!(
        m.params().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        before.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}
