//! `hvae device-train` against a simulated learning device: the firmware's `learn`
//! engine (compiled for the host from the firmware's source) served in a thread. The
//! device and the host reference run the same engine on the same requests, so the
//! weights must come back bit-identical; the engine itself must train (ACC well above
//! chance) and refuse bad settings and samples.

mod common;

use hvae::protocol::{Request, TrainOptimiser, TrainScope, TrainSettings};
use hvae::Model;
use hvae::Posterior;
use hvae::Shape;
use hvae_host::commands::device_train::{train_on, with_fitted_normalisation, DeviceTrainArgs};
use hvae_host::data;
use hvae_host::device::learn_host::{host_learner, spawn};
use hvae_host::device::{Device, Timeouts};
use hvae_host::model_io::{self, LoadedModel};
use rand_core::SeedableRng;

const DIGITS: Shape = Shape::new(64, &[32], 8, 10).with_posterior(Posterior::PowerSpherical);

/// A freshly initialised digits model, as the firmware's compiled-in one is made.
fn initial() -> LoadedModel {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
    let mut m = Model::<f32, Vec<f32>>::with_shape(DIGITS, &mut rng).unwrap();
    m.set_normalisation(&[8.0; 64], &[0.125; 64]).unwrap();
    model_io::from_bytes(&model_io::to_bytes(&m).unwrap()).unwrap()
}

/// The command line's defaults, with a learning rate of 3e-3 and `steps` steps.
fn args(steps: u32) -> DeviceTrainArgs {
    let steps = steps.to_string();
    DeviceTrainArgs::parse_from(["--device", "qemu", "--lr", "3e-3", "--steps", &steps]).unwrap()
}

#[test]
fn simulated_device_matches_the_host_bit_for_bit_in_every_scope() {
    let data = data::load(&common::digits_path()).unwrap();
    let model = with_fitted_normalisation(&initial(), &data).unwrap();
    // The device starts from other weights: the command loads the initial model first.
    let other = initial_with(8);
    let link = spawn(host_learner(other.model.clone(), other.crc).unwrap()).unwrap();
    let mut dev = Device::new(link, Timeouts::default());
    let report = train_on(&mut dev, &model, &data, &args(1200)).unwrap();
    assert!(report.pass);
    assert_eq!(report.scopes.len(), 3);
    for s in &report.scopes {
        assert!(s.bit_identical, "{s:?}");
        assert_eq!(s.first_divergent_request, None, "{s:?}");
        assert_eq!(s.acc_diff, 0.0);
        assert_eq!(s.steps, 1200, "{s:?}");
        assert!(s.final_loss.is_finite());
    }
    // Trained, not untouched: well above the 0.1 of chance on 10 balanced classes; the
    // adaptation scopes start from the Full result and keep most of it.
    for s in &report.scopes {
        assert!(s.device.acc > 0.2, "{s:?}");
    }
}

fn initial_with(seed: u64) -> LoadedModel {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut m = Model::<f32, Vec<f32>>::with_shape(DIGITS, &mut rng).unwrap();
    m.set_normalisation(&[8.0; 64], &[0.125; 64]).unwrap();
    model_io::from_bytes(&model_io::to_bytes(&m).unwrap()).unwrap()
}

/// Settings every request here trains with unless it tests others: the whole model,
/// Adam, batches of 8.
const ADAM_FULL: TrainSettings = TrainSettings {
    scope: TrainScope::Full,
    optimiser: TrainOptimiser::Adam,
    lr: 1e-3,
    batch: 8,
};

#[test]
fn engine_refuses_bad_settings_and_samples_and_keeps_serving() {
    let model = initial();
    let mut eng = host_learner(model.model.clone(), model.crc).unwrap();
    let ok = ADAM_FULL;
    let code = |r| match r {
        hvae::protocol::Response::Error(c) => Some(c),
        _ => None,
    };
    let sample = |v: f32| heapless::Vec::from_slice(&[v; 64]).unwrap();
    use hvae::protocol::ErrorCode::*;
    // No settings yet.
    let r = eng.handle(&Request::TrainBatch {
        samples: sample(1.0),
        steps: 1,
        settings: None,
    });
    assert_eq!(code(r), Some(Train));
    for bad in [
        TrainSettings { lr: 0.0, ..ok },
        TrainSettings { lr: f32::NAN, ..ok },
        TrainSettings { batch: 9, ..ok },
        TrainSettings { batch: 0, ..ok },
        TrainSettings {
            optimiser: TrainOptimiser::Sgd { momentum: 1.0 },
            ..ok
        },
    ] {
        let r = eng.handle(&Request::TrainBatch {
            samples: sample(1.0),
            steps: 1,
            settings: Some(bad),
        });
        assert_eq!(code(r), Some(Train), "{bad:?}");
    }
    let r = eng.handle(&Request::TrainBatch {
        samples: sample(f32::INFINITY),
        steps: 1,
        settings: Some(ok),
    });
    assert_eq!(code(r), Some(NonFiniteInput));
    let r = eng.handle(&Request::TrainBatch {
        samples: heapless::Vec::from_slice(&[1.0; 63]).unwrap(),
        steps: 1,
        settings: Some(ok),
    });
    assert_eq!(code(r), Some(InputLength));
    // One sample is too few for a step: buffered, no step, no error.
    let r = eng.handle(&Request::TrainBatch {
        samples: sample(3.0),
        steps: 1,
        settings: Some(ok),
    });
    match r {
        hvae::protocol::Response::Trained {
            buffered,
            steps,
            loss,
        } => {
            assert_eq!((buffered, steps), (1, 0));
            assert!(loss.is_nan());
        }
        other => panic!("{other:?}"),
    }
    // The weights did not move, and the CRC is still the model's.
    assert_eq!(eng.crc(), model.crc);
    // A second, different sample: now a step is taken and the CRC changes.
    let r = eng.handle(&Request::TrainBatch {
        samples: sample(5.0),
        steps: 1,
        settings: None,
    });
    assert!(
        matches!(r, hvae::protocol::Response::Trained { steps: 1, .. }),
        "{r:?}"
    );
    assert_ne!(eng.crc(), model.crc);
    // Reading past the parameters is refused; the last values are there.
    let n = DIGITS.param_len() as u32;
    assert_eq!(
        code(eng.handle(&Request::ReadWeights {
            offset: n - 1,
            count: 2
        })),
        Some(OutOfRange)
    );
    assert!(matches!(
        eng.handle(&Request::ReadWeights {
            offset: n - 1,
            count: 1
        }),
        hvae::protocol::Response::Weights { .. }
    ));
}

#[test]
fn checkpoints_survive_a_reboot_bit_for_bit() {
    use hvae::device::{Engine, CHECKPOINT_EVERY};
    let data = data::load(&common::digits_path()).unwrap();
    let model = with_fitted_normalisation(&initial(), &data).unwrap();
    let mut eng = host_learner(model.model.clone(), model.crc).unwrap();
    let ok = ADAM_FULL;
    let rows: Vec<&[f32]> = data.rows().collect();
    let mut first = true;
    // Past one periodic checkpoint, then one on request.
    for i in 0..(CHECKPOINT_EVERY as usize + 60) / 4 {
        let mut samples = heapless::Vec::new();
        for r in &rows[4 * i..4 * i + 4] {
            samples.extend_from_slice(r).unwrap();
        }
        let r = eng.handle(&Request::TrainBatch {
            samples,
            steps: 4,
            settings: first.then_some(ok),
        });
        first = false;
        assert!(
            matches!(r, hvae::protocol::Response::Trained { .. }),
            "{r:?}"
        );
    }
    let saved = eng.model().params().to_vec();
    let crc = eng.crc();
    let r = eng.handle(&Request::Checkpoint);
    assert_eq!(
        r,
        hvae::protocol::Response::Checkpointed { weights_crc: crc }
    );
    // "Reboot": a new engine on the initial weights, with the same flash.
    let store = eng.into_store();
    let mut eng2: hvae_host::device::learn_host::HostLearner =
        Engine::new(model.model.clone(), model.crc, store, 0).unwrap();
    assert_eq!(eng2.crc(), model.crc);
    let seq = eng2.restore().unwrap().expect("a checkpoint");
    assert_eq!(seq, 2, "one periodic save, one on request");
    assert!(eng2
        .model()
        .params()
        .iter()
        .zip(&saved)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(eng2.crc(), crc);
    // A blank flash has nothing to restore.
    let mut eng3 = host_learner(model.model.clone(), model.crc).unwrap();
    assert_eq!(eng3.restore().unwrap(), None);
    // Without training, a checkpoint holds the weights alone and restores too.
    assert!(matches!(
        eng3.handle(&Request::Checkpoint),
        hvae::protocol::Response::Checkpointed { .. }
    ));
    let mut eng4: hvae_host::device::learn_host::HostLearner =
        Engine::new(saved_model(&saved), 0, eng3.into_store(), 0).unwrap();
    assert_eq!(eng4.restore().unwrap(), Some(1));
    assert_eq!(eng4.crc(), model.crc);
}

fn saved_model(p: &[f32]) -> hvae::VecModel<f32> {
    Model::new(DIGITS, p.to_vec()).unwrap()
}
