//! The segmenter adapter (encoder frozen, only the clusters learn, in a few KiB):
//! its loss and gradient are the general loss's `SegmenterOnly` ones; it clusters a
//! vMF mixture from scratch on a frozen encoder; its RAM fits the 8 KiB budget for the
//! digits model; bad input changes nothing; the same seed gives the same bits.

use hvae::shape::{Posterior, Scope, Shape};
use hvae::train::adapt::{adapter_storage_len, AdapterMemory, SegmenterAdapter};
use hvae::train::loss::{
    cache_len, loss_and_grad, segmenter_loss_and_grad, Batch, LossBuffers, LossConfig,
};
use hvae::train::optim::{state_len, OptimKind};
use hvae::train::trainer::{Consistency, OnlineTrainer, TrainConfig, TrainError};
use hvae::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

mod mixture;

use mixture::{accuracy, mixture, D, K};

/// A model whose encoder learned the mixture as a plain VAE (no cluster loss: the
/// whole run is warm-up), with its centres then scrambled: the adapter has to find the
/// clusters itself.
fn frozen_encoder(xs: &[[f32; D]]) -> Model<f32, Vec<f32>> {
    const CAP: usize = 256;
    let shape = Shape::new(D, &[16], 3, K);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    let mut model = Model::<f32, Vec<f32>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
    model.init(&mut rng);
    let mut cfg = TrainConfig::new(3e-3f32);
    cfg.batch = 16;
    cfg.warmup_steps = u32::MAX;
    let scratch = vec![0.0; TrainConfig::<f32>::storage_len(&shape, Scope::Full, 16, CAP)];
    let state = vec![0.0; state_len(OptimKind::Adam, shape.scope_range(Scope::Full).len())];
    let mut trainer: OnlineTrainer<f32, D, CAP, _, _> =
        OnlineTrainer::new(&shape, cfg, scratch, state).unwrap();
    for x in xs.iter().take(64) {
        trainer.push(x).unwrap();
    }
    trainer.fit_normalisation(&mut model).unwrap();
    for step in 0..800 {
        trainer.push(&xs[(64 + step) % xs.len()]).unwrap();
        trainer.step(&mut model, &mut rng).unwrap();
    }
    let so = shape.segmenter_offset();
    for (i, c) in model.params_mut()[so..so + K * 3].iter_mut().enumerate() {
        *c = [0.3, -0.7, 0.2, 0.5, 0.1, -0.4][i % 6];
    }
    model
}

type Adapter = SegmenterAdapter<f32, 3, 128, Vec<f32>, Vec<f32>>;

fn adapter_config() -> TrainConfig<f32> {
    let mut cfg = TrainConfig::new(1e-2f32);
    cfg.scope = Scope::SegmenterOnly;
    cfg.batch = 16;
    cfg
}

fn adapt(model: &Model<f32, Vec<f32>>, xs: &[[f32; D]], seed: u64) -> Adapter {
    let cfg = adapter_config();
    let shape = *model.shape();
    let mut adapter = Adapter::new(
        model,
        cfg,
        vec![0.0; adapter_storage_len(&shape, cfg.batch)],
        vec![0.0; state_len(OptimKind::Adam, shape.segmenter_len())],
    )
    .unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut work = vec![0.0; shape.work_len()];
    let mut rejected = 0;
    for (i, x) in xs.iter().cycle().take(1500).enumerate() {
        adapter.push(model, x, &mut work).unwrap();
        if i >= 32 {
            match adapter.step(&mut rng) {
                Ok(r) => assert!(r.loss.total.is_finite()),
                // The guard may reject a rare spike; the stream goes on.
                Err(TrainError::Diverged) => rejected += 1,
                Err(e) => panic!("step {i}: {e}"),
            }
        }
    }
    // A clean stream: the guard must not get in the way.
    assert!(rejected <= 15, "{rejected} of 1468 steps rejected");
    adapter
}

#[test]
fn adapter_loss_is_the_segmenter_only_loss() {
    adapter_matches_segmenter_only(0.0);
}

#[test]
fn adapter_loss_is_the_segmenter_only_loss_with_the_density_term() {
    adapter_matches_segmenter_only(0.7);
}

fn adapter_matches_segmenter_only(density: f64) {
    // f64, random parameters: the adapter's loss on mu(x_i) must be the general loss
    // with SegmenterOnly on x_i, and its gradient the same numbers.
    let shape = Shape::new(5, &[7], 4, 3);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let mut model = Model::<f64, Vec<f64>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
    model.init(&mut rng);
    for v in model.params_mut().iter_mut() {
        *v += 0.3 * hvae::dist::rng::standard_normal::<f64, _>(&mut rng);
    }
    let b = 6;
    let inputs: Vec<f64> = (0..b * 5)
        .map(|_| hvae::dist::rng::standard_normal::<f64, _>(&mut rng))
        .collect();
    let mut work = vec![0.0; shape.work_len()];
    let mut mus = Vec::new();
    for x in inputs.chunks(5) {
        mus.extend_from_slice(model.encode(x, &mut work).unwrap().mu);
    }
    let labels = [None, Some(2u8), None, Some(0), None, None];
    let pairs = [(0u16, 1u16), (2, 3), (4, 5), (1, 4)];
    let cfg = LossConfig {
        entropy: 0.3,
        balance_momentum: 0.6,
        density,
        ..LossConfig::default()
    };
    let l = shape.segmenter_len();
    let mut pb = [0.2, 0.3, 0.5];
    let mut gb = vec![0.0; l];
    let mut cache = vec![7.0; cache_len(&shape, b)];
    let mut store = vec![7.0; LossBuffers::<f64>::storage_len(&shape, Scope::SegmenterOnly, b)];
    let mut bufs = LossBuffers::new(&shape, Scope::SegmenterOnly, b, &mut store).unwrap();
    bufs.marginal_mut().copy_from_slice(&pb);
    let general = loss_and_grad(
        &model,
        &Batch {
            inputs: &inputs,
            labels: &labels,
            pairs: &pairs,
        },
        &cfg,
        &mut hvae::train::loss::RandomDraws(&mut rng),
        &mut bufs,
    )
    .unwrap();
    let (pa, ga) = (bufs.marginal(), bufs.grads());
    let adapted = segmenter_loss_and_grad(
        &shape,
        model.segmenter_params(),
        &Batch {
            inputs: &mus,
            labels: &labels,
            pairs: &pairs,
        },
        &cfg,
        &mut pb,
        &mut cache,
        &mut gb,
    )
    .unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + a.abs());
    assert!(
        close(general.total, adapted.total),
        "{general:?} vs {adapted:?}"
    );
    assert!(close(general.consistency, adapted.consistency));
    assert!(close(general.entropy, adapted.entropy));
    assert!(close(general.balance, adapted.balance));
    assert!(close(general.supervised, adapted.supervised));
    assert!(close(general.density, adapted.density));
    assert_eq!(general.density == 0.0, density == 0.0);
    for q in 0..3 {
        assert!(close(pa[q], pb[q]));
    }
    for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
        assert!(close(*a, *b), "gradient {i}: {a} vs {b}");
    }
    assert!(
        ga.iter().any(|g| g.abs() > 1e-3),
        "a zero gradient proves nothing"
    );
}

#[test]
fn adapter_clusters_a_mixture_on_a_frozen_encoder() {
    let (xs, ys) = mixture(1200, 7);
    let model = frozen_encoder(&xs);
    let frozen = model.params().to_vec();
    let mut work = vec![0.0; model.shape().work_len()];
    let before: Vec<usize> = xs
        .iter()
        .map(|x| model.segment(x, &mut work).unwrap().label)
        .collect();
    let acc_before = accuracy(&before, &ys);
    let adapter = adapt(&model, &xs, 3);
    let after: Vec<usize> = xs
        .iter()
        .map(|x| adapter.segment(&model, x, &mut work).unwrap().label)
        .collect();
    let acc = accuracy(&after, &ys);
    println!("ACC with scrambled centres {acc_before:.4}, after adapting {acc:.4}");
    assert!(acc >= 0.95, "ACC {acc}");
    assert!(
        acc_before < 0.8,
        "the scrambled segmenter already clustered: {acc_before}"
    );
    // The model was never written.
    assert_eq!(model.params(), &frozen[..]);
    // Copying the adapted segmenter into a model gives the same labels.
    let mut copy = model.clone();
    adapter.write_to(&mut copy).unwrap();
    for x in xs.iter().take(50) {
        let a = adapter.segment(&model, x, &mut work).unwrap().label;
        assert_eq!(copy.segment(x, &mut work).unwrap().label, a);
    }
}

#[test]
fn same_seed_same_bits() {
    let (xs, _) = mixture(300, 9);
    let model = frozen_encoder(&xs);
    let a = adapt(&model, &xs, 5);
    let b = adapt(&model, &xs, 5);
    let c = adapt(&model, &xs, 6);
    let bits = |x: &Adapter| {
        x.segmenter()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_ne!(bits(&a), bits(&c));
}

#[test]
fn digits_adapter_fits_in_eight_kib() {
    // The device budget: SegmenterOnly training of the digits model
    // (64-32-8, K = 10) in at most 8 KiB of RAM, the encoder in flash.
    const DIGITS: Shape = Shape::new(64, &[32], 8, 10).with_posterior(Posterior::PowerSpherical);
    const BATCH: usize = 8;
    const CAP: usize = 64;
    const STORE: usize = adapter_storage_len(&DIGITS, BATCH);
    const STATE: usize = state_len(OptimKind::Adam, DIGITS.segmenter_len());
    let mem = AdapterMemory::of::<f32>(&DIGITS, BATCH, CAP, OptimKind::Adam);
    println!("{mem:?} total {} bytes", mem.total());
    assert!(mem.total() <= 8 * 1024, "{mem:?}");
    // The figures are the real sizes: the adapter with array storage and a workspace.
    type A = SegmenterAdapter<f32, 8, CAP, [f32; STORE], [f32; STATE]>;
    let real = core::mem::size_of::<A>() + 4 * DIGITS.work_len();
    // Up to a few bytes of alignment padding.
    assert!(real <= mem.total() + 16, "{real} vs {}", mem.total());
    assert!(real + 16 >= mem.total(), "{real} vs {}", mem.total());
}

#[test]
fn bad_input_changes_nothing() {
    let shape = Shape::new(D, &[16], 3, K);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut model = Model::<f32, Vec<f32>>::new(shape, vec![0.0; shape.param_len()]).unwrap();
    model.init(&mut rng);
    let cfg = adapter_config();
    let store = || vec![0.0; adapter_storage_len(&shape, cfg.batch)];
    let state = || vec![0.0; state_len(OptimKind::Adam, shape.segmenter_len())];
    // Configurations it cannot serve.
    let mut noise = cfg;
    noise.consistency = Consistency::Noise(0.1);
    assert_eq!(
        Adapter::new(&model, noise, store(), state()).err(),
        Some(TrainError::BadConfig)
    );
    let mut full = cfg;
    full.scope = Scope::Full;
    assert_eq!(
        Adapter::new(&model, full, store(), state()).err(),
        Some(TrainError::BadConfig)
    );
    assert_eq!(
        Adapter::new(&model, cfg, vec![0.0; 3], state()).err(),
        Some(TrainError::Storage)
    );
    let mut a = Adapter::new(&model, cfg, store(), state()).unwrap();
    let mut work = vec![0.0; shape.work_len()];
    // Too few directions for a step.
    assert_eq!(a.step(&mut rng).err(), Some(TrainError::NotEnoughSamples));
    let seg0 = a.segmenter().to_vec();
    // Non-finite and wrong-length samples and directions are refused and not stored.
    let mut x = [0.5f32; D];
    x[3] = f32::NAN;
    assert!(a.push(&model, &x, &mut work).is_err());
    assert!(a.push(&model, &[0.5; 3], &mut work).is_err());
    assert!(a.push_direction(&[1.0, 0.0]).is_err());
    assert!(a.push_direction(&[2.0, 0.0, 0.0]).is_err());
    assert!(a.push_direction(&[f32::INFINITY, 0.0, 0.0]).is_err());
    assert!(a
        .set_segmenter(&vec![f32::NAN; shape.segmenter_len()])
        .is_err());
    assert!(a.is_empty());
    assert_eq!(a.segmenter(), &seg0[..]);
    a.push_direction(&[0.0, 1.0, 0.0]).unwrap();
    assert_eq!(a.len(), 1);
}
