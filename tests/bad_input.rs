//! Bad input on the device path: every case returns a typed error and changes nothing
//! (model parameters, optimiser state, trainer buffer all bit-identical afterwards).

use hvae::infer::model::{InferError, Model, ModelError};
use hvae::shape::{Scope, Shape, TensorId};
use hvae::train::loss::{loss_and_grad, Batch, LossBuffers, LossConfig, LossError, RandomDraws};
use hvae::train::optim::state_len;
use hvae::train::trainer::{OnlineTrainer, TrainConfig, TrainError};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const S: Shape = Shape::new(4, &[6], 3, 2);

fn model() -> Model<f32, Vec<f32>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut m = Model::new(S, vec![0.0f32; S.param_len()]).unwrap();
    m.init(&mut rng);
    m
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn model_construction_is_checked() {
    assert_eq!(
        Model::<f32, _>::new(S, vec![0.0; S.param_len() - 1]).err(),
        Some(ModelError::ParamLength)
    );
    let mut p = vec![0.0f32; S.param_len()];
    p[7] = f32::NAN;
    assert_eq!(
        Model::<f32, _>::new(S, p).err(),
        Some(ModelError::NonFinite)
    );
    let bad = Shape::new(4, &[6], 1, 2);
    assert!(matches!(
        Model::<f32, _>::new(bad, vec![0.0; bad.param_len()]),
        Err(ModelError::Shape(_))
    ));
}

#[test]
fn inference_rejects_bad_input() {
    let m = model();
    let mut work = vec![0.0f32; S.work_len()];
    assert_eq!(
        m.segment(&[0.0; 3], &mut work).err(),
        Some(InferError::InputLength)
    );
    assert_eq!(
        m.segment(&[0.0, f32::NAN, 0.0, 0.0], &mut work).err(),
        Some(InferError::NonFiniteInput)
    );
    assert_eq!(
        m.segment(&[0.0, f32::INFINITY, 0.0, 0.0], &mut work).err(),
        Some(InferError::NonFiniteInput)
    );
    let mut short = vec![0.0f32; S.work_len() - 1];
    assert_eq!(
        m.segment(&[0.0; 4], &mut short).err(),
        Some(InferError::BufferLength)
    );
    let mut out = [0.0f32; 3];
    assert_eq!(
        m.reconstruct(&[0.0; 4], &mut work, &mut out).err(),
        Some(InferError::BufferLength)
    );
    // Inputs so large that the network overflows: an error, not a NaN label.
    assert!(m.segment(&[1e38, -1e38, 1e38, 1e38], &mut work).is_err());
}

#[test]
fn degenerate_directions_are_errors() {
    let mut m = model();
    let mut work = vec![0.0f32; S.work_len()];
    // A zero direction head: mu = 0 / 0.
    let wmu = S.find(TensorId::MuWeight).unwrap().range();
    let bmu = S.find(TensorId::MuBias).unwrap().range();
    let saved = m.params().to_vec();
    m.params_mut()[wmu].fill(0.0);
    m.params_mut()[bmu].fill(0.0);
    assert_eq!(
        m.encode(&[0.1, 0.2, 0.3, 0.4], &mut work).err(),
        Some(InferError::ZeroDirection)
    );
    // A zero centre.
    m.params_mut().copy_from_slice(&saved);
    let c = S.find(TensorId::Centres).unwrap().range();
    m.params_mut()[c.start..c.start + 3].fill(0.0);
    assert_eq!(
        m.segment(&[0.1, 0.2, 0.3, 0.4], &mut work).err(),
        Some(InferError::ZeroCentre)
    );
}

#[test]
fn inference_only_models_refuse_decoder_work() {
    let full = model();
    let prefix = full.params()[..S.inference_param_len()].to_vec();
    let m = Model::new(S, prefix).unwrap();
    assert!(!m.has_decoder());
    let mut work = vec![0.0f32; S.work_len()];
    let x = [0.1, 0.2, 0.3, 0.4];
    // Inference agrees bit for bit with the full model.
    let a = m.segment(&x, &mut work).unwrap().probs.to_vec();
    let b = full.segment(&x, &mut work).unwrap().probs.to_vec();
    assert_eq!(bits(&a), bits(&b));
    let mut out = [0.0f32; 4];
    assert_eq!(
        m.reconstruct(&x, &mut work, &mut out).err(),
        Some(InferError::NoDecoder)
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut store = vec![0.0; LossBuffers::<f32>::storage_len(&S, Scope::Full, 1)];
    let mut bufs = LossBuffers::new(&S, Scope::Full, 1, &mut store).unwrap();
    let batch = Batch {
        inputs: &x,
        labels: &[],
        pairs: &[],
    };
    let cfg = LossConfig::default();
    let r = loss_and_grad(&m, &batch, &cfg, &mut RandomDraws(&mut rng), &mut bufs);
    assert_eq!(r.err(), Some(LossError::Infer(InferError::NoDecoder)));
}

#[test]
fn malformed_batches_are_rejected() {
    let m = model();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut store = vec![0.0; LossBuffers::<f32>::storage_len(&S, Scope::Full, 2)];
    let mut bufs = LossBuffers::new(&S, Scope::Full, 2, &mut store).unwrap();
    let x = [0.1f32; 8];
    let cfg = LossConfig::default();
    type Case<'a> = (&'a [f32], &'a [Option<u8>], &'a [(u16, u16)]);
    let cases: [Case; 5] = [
        (&x[..7], &[], &[]),            // not a multiple of D
        (&[], &[], &[]),                // empty
        (&x, &[Some(0)], &[]),          // labels not B long
        (&x, &[Some(0), Some(2)], &[]), // label >= K
        (&x, &[], &[(0, 2)]),           // pair out of range
    ];
    for (inputs, labels, pairs) in cases {
        bufs.marginal_mut().fill(0.5);
        let batch = Batch {
            inputs,
            labels,
            pairs,
        };
        let r = loss_and_grad(&m, &batch, &cfg, &mut RandomDraws(&mut rng), &mut bufs);
        assert_eq!(r.err(), Some(LossError::BadBatch));
        assert_eq!(bufs.marginal(), [0.5, 0.5]);
    }
    // Buffers for fewer rows than the batch, or for another shape.
    let batch = Batch {
        inputs: &x,
        labels: &[],
        pairs: &[],
    };
    let mut one = vec![0.0; LossBuffers::<f32>::storage_len(&S, Scope::Full, 1)];
    let mut one = LossBuffers::new(&S, Scope::Full, 1, &mut one).unwrap();
    let r = loss_and_grad(&m, &batch, &cfg, &mut RandomDraws(&mut rng), &mut one);
    assert_eq!(r.err(), Some(LossError::BufferLength));
    let other = Shape::new(4, &[3], 2, 2).with_activation(hvae::Activation::Tanh);
    let mut o = vec![0.0; LossBuffers::<f32>::storage_len(&other, Scope::Full, 2)];
    let mut o = LossBuffers::new(&other, Scope::Full, 2, &mut o).unwrap();
    let r = loss_and_grad(&m, &batch, &cfg, &mut RandomDraws(&mut rng), &mut o);
    assert_eq!(r.err(), Some(LossError::BufferLength));
    // Storage of the wrong length makes no buffers.
    let mut short = vec![0.0; store.len() - 1];
    assert!(LossBuffers::new(&S, Scope::Full, 2, &mut short).is_none());
}

type Trainer = OnlineTrainer<f32, 4, 16, Vec<f32>, Vec<f32>>;

fn trainer() -> Trainer {
    let mut cfg = TrainConfig::new(1e-2f32);
    cfg.batch = 4;
    cfg.warmup_steps = 0;
    let scratch = vec![0.0; TrainConfig::<f32>::storage_len(&S, Scope::Full, 4, 16)];
    let state = vec![0.0; state_len(cfg.optim.optimiser.kind(), S.scope_range(Scope::Full).len())];
    Trainer::new(&S, cfg, scratch, state).unwrap()
}

/// Sample `i` of a clean cycle of 16.
fn clean(i: usize) -> [f32; 4] {
    let v = (i % 16) as f32 / 16.0;
    [v, 1.0 - v, v * v, 0.5]
}

/// A [`trainer`] with the 16 clean samples after `steps` steps of [`model`] with the
/// generator of `seed`: the trainer, the model and the generator.
fn trained(seed: u64, steps: usize) -> (Trainer, Model<f32, Vec<f32>>, Xoshiro256PlusPlus) {
    let mut t = trainer();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut m = model();
    for i in 0..16 {
        t.push(&clean(i)).unwrap();
    }
    for _ in 0..steps {
        t.step(&mut m, &mut rng).unwrap();
    }
    (t, m, rng)
}

#[test]
fn trainer_rejects_bad_samples_without_change() {
    let mut t = trainer();
    t.push(&[0.1, 0.2, 0.3, 0.4]).unwrap();
    assert_eq!(t.push(&[0.1, 0.2, 0.3]).err(), Some(TrainError::BadSample));
    assert_eq!(
        t.push(&[0.1, f32::NAN, 0.3, 0.4]).err(),
        Some(TrainError::BadSample)
    );
    assert_eq!(
        t.push(&[0.1, f32::NEG_INFINITY, 0.3, 0.4]).err(),
        Some(TrainError::BadSample)
    );
    assert_eq!(t.len(), 1);
    let mut m = model();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    assert_eq!(
        t.step(&mut m, &mut rng).err(),
        Some(TrainError::NotEnoughSamples)
    );
}

#[test]
fn a_diverging_step_changes_nothing() {
    // A few good steps so the optimiser has state.
    let (mut t, mut m, mut rng) = trained(4, 5);
    // Now samples whose reconstruction error overflows f32: the loss is infinite.
    for _ in 0..16 {
        t.push(&[3e19, -3e19, 3e19, -3e19]).unwrap();
    }
    let params = bits(m.params());
    let state = bits(t.optimiser().storage());
    let steps = t.optimiser().steps();
    let marginal = bits(t.marginal(&S));
    let err = t.step(&mut m, &mut rng).unwrap_err();
    assert!(
        matches!(err, TrainError::Loss(_) | TrainError::Optim(_)),
        "{err:?}"
    );
    assert_eq!(bits(m.params()), params);
    assert_eq!(bits(t.optimiser().storage()), state);
    assert_eq!(t.optimiser().steps(), steps);
    assert_eq!(bits(t.marginal(&S)), marginal);
}

#[test]
fn trainer_configuration_is_checked() {
    let mut cfg = TrainConfig::new(1e-2f32);
    let scratch = vec![0.0; TrainConfig::<f32>::storage_len(&S, Scope::Full, cfg.batch, 16)];
    let state = vec![0.0; state_len(cfg.optim.optimiser.kind(), S.scope_range(Scope::Full).len())];
    assert_eq!(
        Trainer::new(&S, cfg, scratch[1..].to_vec(), state.clone()).err(),
        Some(TrainError::Storage)
    );
    assert_eq!(
        Trainer::new(&S, cfg, scratch.clone(), state[1..].to_vec()).err(),
        Some(TrainError::Storage)
    );
    cfg.batch = 0;
    assert_eq!(
        Trainer::new(&S, cfg, scratch.clone(), state.clone()).err(),
        Some(TrainError::BadConfig)
    );
    let other = Shape::new(5, &[6], 3, 2);
    cfg.batch = 8;
    assert_eq!(
        Trainer::new(&other, cfg, scratch, state).err(),
        Some(TrainError::BadConfig)
    );
}

#[test]
fn the_guard_rejects_spikes_and_asks_for_a_restore() {
    // Arm the guard (20 accepted steps by default).
    let (mut t, mut m, mut rng) = trained(5, 30);
    assert_eq!(t.rejections_in_a_row(), 0);
    // Finite spikes: the loss is finite but orders of magnitude above its average.
    for i in 0..16 {
        t.push(&[1e4 * (i as f32 - 7.5), -1e4, 1e4, 3e3]).unwrap();
    }
    let params = bits(m.params());
    let state = bits(t.optimiser().storage());
    let max = t.config().guard.max_rejections;
    for r in 1..=max {
        assert_eq!(t.step(&mut m, &mut rng).err(), Some(TrainError::Diverged));
        assert_eq!(t.rejections_in_a_row(), r);
        assert_eq!(t.needs_restore(), r >= max);
    }
    assert_eq!(bits(m.params()), params);
    assert_eq!(bits(t.optimiser().storage()), state);
    // Clean data again: accepted, and the count resets.
    for i in 0..16 {
        t.push(&clean(i)).unwrap();
    }
    t.restored();
    t.step(&mut m, &mut rng).unwrap();
    assert_eq!(t.rejections_in_a_row(), 0);
    assert!(!t.needs_restore());
}
