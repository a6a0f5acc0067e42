//! The online trainer on a synthetic mixture of von Mises-Fisher clusters with known
//! labels: it must recover the clusters (ACC >= 0.95 after Hungarian matching), and the
//! same seed must give bit-identical training.

use hvae::shape::{Posterior, Scope, Shape};
use hvae::train::trainer::{OnlineTrainer, TrainConfig};
use hvae::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

mod mixture;

use mixture::{accuracy, mixture, D, K};

const CAP: usize = 256;

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
    let state =
        vec![0.0; TrainConfig::<f32>::optim_len(&shape, Scope::Full, cfg.optim.optimiser.kind())];
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
