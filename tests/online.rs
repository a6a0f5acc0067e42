//! The online trainer on a synthetic mixture of von Mises-Fisher clusters with known
//! labels: it must recover the clusters (ACC >= 0.95 after Hungarian matching), and the
//! same seed must give bit-identical training.

use hvae::shape::{Posterior, Scope, Shape};
use hvae::train::optim::state_len;
use hvae::train::trainer::{OnlineTrainer, TrainConfig};
use hvae::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const D: usize = 8;
const K: usize = 4;
const CAP: usize = 256;

/// `n` points from a mixture of `K` vMF laws on S^{D-1} (concentration 40) around
/// random well-separated directions, in random order, with their labels.
fn mixture(n: usize, seed: u64) -> (Vec<[f32; D]>, Vec<usize>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut centres = [[0f32; D]; K];
    for (k, c) in centres.iter_mut().enumerate() {
        // Orthogonal-ish directions: a basis vector plus a little noise.
        c[k * 2] = 1.0;
        for v in c.iter_mut() {
            *v += 0.2 * hvae::dist::rng::standard_normal::<f32, _>(&mut rng);
        }
        let n = c.iter().map(|v| v * v).sum::<f32>().sqrt();
        c.iter_mut().for_each(|v| *v /= n);
    }
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for i in 0..n {
        let k = (hvae::dist::rng::uniform::<f64, _>(&mut rng) * K as f64) as usize % K;
        let _ = i;
        let mut z = [0f32; D];
        Posterior::VonMisesFisher
            .sample(&centres[k], 40.0f32, &mut rng, &mut z)
            .unwrap();
        xs.push(z);
        ys.push(k);
    }
    (xs, ys)
}

/// Accuracy under the best one-to-one matching of clusters to classes (brute force over
/// the K! permutations; K = 4 here).
fn accuracy(pred: &[usize], truth: &[usize]) -> f64 {
    let mut table = [[0usize; K]; K];
    for (&p, &t) in pred.iter().zip(truth) {
        table[p][t] += 1;
    }
    let mut best = 0;
    let mut perm: Vec<usize> = (0..K).collect();
    permute(&mut perm, 0, &mut |p| {
        best = best.max((0..K).map(|c| table[c][p[c]]).sum::<usize>());
    });
    best as f64 / pred.len() as f64
}

fn permute(v: &mut Vec<usize>, i: usize, f: &mut impl FnMut(&[usize])) {
    if i == v.len() {
        f(v);
        return;
    }
    for j in i..v.len() {
        v.swap(i, j);
        permute(v, i + 1, f);
        v.swap(i, j);
    }
}

type Trainer = OnlineTrainer<f32, D, CAP, Vec<f32>, Vec<f32>>;

/// Streams the data through the trainer, one new sample per step; returns the model's
/// parameters and labels on the whole set.
fn train(posterior: Posterior, seed: u64) -> (Vec<f32>, f64) {
    let (xs, ys) = mixture(1200, 7);
    let shape = Shape::new(D, &[16], 3, K).with_posterior(posterior);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut model = Model::<f32, Vec<f32>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
    model.init(&mut rng);
    let mut cfg = TrainConfig::new(3e-3f32);
    cfg.batch = 16;
    cfg.warmup_steps = 300;
    let scratch = vec![0.0; TrainConfig::<f32>::storage_len(&shape, Scope::Full, cfg.batch, CAP)];
    let state = vec![
        0.0;
        state_len(
            cfg.optim.optimiser.kind(),
            shape.scope_range(Scope::Full).len()
        )
    ];
    let mut trainer = Trainer::new(&shape, cfg, scratch, state).unwrap();
    for x in xs.iter().take(64) {
        trainer.push(x).unwrap();
    }
    trainer.fit_normalisation(&mut model).unwrap();
    for step in 0..2000 {
        trainer.push(&xs[(64 + step) % xs.len()]).unwrap();
        let report = trainer.step(&mut model, &mut rng).unwrap();
        assert!(report.loss.total.is_finite());
    }
    let mut work = vec![0.0; shape.work_len()];
    let pred: Vec<usize> = xs
        .iter()
        .map(|x| model.segment(x, &mut work).unwrap().label)
        .collect();
    (model.params().to_vec(), accuracy(&pred, &ys))
}

#[test]
fn recovers_a_vmf_mixture_vmf_posterior() {
    let (_, acc) = train(Posterior::VonMisesFisher, 1);
    assert!(acc >= 0.95, "ACC {acc}");
}

#[test]
fn recovers_a_vmf_mixture_power_spherical_posterior() {
    let (_, acc) = train(Posterior::PowerSpherical, 2);
    assert!(acc >= 0.95, "ACC {acc}");
}

#[test]
fn same_seed_same_bits() {
    let (a, _) = train(Posterior::PowerSpherical, 5);
    let (b, _) = train(Posterior::PowerSpherical, 5);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let (c, _) = train(Posterior::PowerSpherical, 6);
    assert!(a.iter().zip(&c).any(|(x, y)| x.to_bits() != y.to_bits()));
}
